"""Stopping one thread of a running relayd, and only that one: ptrace's
SEIZE + INTERRUPT stops the thread named, the others run on (SIGSTOP would
stop the whole process). The tests use it to hold one SMTP event loop
still, as a loop stuck in a slow call or descheduled for long would be.

Needs CAP_SYS_PTRACE (the tests run as root). Every ptrace call is made
from the thread that attached, as the kernel requires: use it from the
test's own thread only."""
import contextlib
import ctypes
import ctypes.util
import os

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                         ctypes.c_void_p)


def _ptrace(req, tid):
    if _libc.ptrace(req, tid, None, None) == -1:
        e = ctypes.get_errno()
        raise OSError(e, "ptrace(%#x, %d): %s" % (req, tid, os.strerror(e)))


def thread_id(pid, name):
    """The id of pid's thread whose name (comm) is name."""
    for t in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/comm" % (pid, t)) as f:
            if f.read().strip() == name:
                return int(t)
    raise LookupError("no thread %r in process %d" % (name, pid))


@contextlib.contextmanager
def frozen(tid):
    """Holds thread tid stopped for the with block."""
    _ptrace(PTRACE_SEIZE, tid)
    try:
        _ptrace(PTRACE_INTERRUPT, tid)
        os.waitpid(tid, WALL)       # the thread is in its ptrace stop now
        yield tid
    finally:
        # DETACH needs the thread stopped: it is, unless it died.
        try:
            _ptrace(PTRACE_DETACH, tid)
        except OSError:
            pass


def state(pid, tid):
    """The thread's state letter: t while frozen here."""
    with open("/proc/%d/task/%d/stat" % (pid, tid)) as f:
        return f.read().rsplit(")", 1)[1].split()[0]
