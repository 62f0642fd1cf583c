"""The daemon under test: one relayd process (Relayd) with its own config,
port, spool and log, and running relayd's other programs."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from relaydtest import valgrind
from relaydtest.env import (HOSTNAME, IO_TIMEOUT, POLL, RELAYCTL_BIN,
                            RELAYD_BIN, START_TIMEOUT, STOP_TIMEOUT,
                            VALGRIND)
from relaydtest.ports import free_port
from relaydtest.smtp import SMTPConn, smtp_send
from relaydtest.spool import list_dir, parse_segment
from relaydtest.wait import wait_for


def process_children(pid):
    """The pids of a process's children (relayd's token, smtp, deliver)."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return []


def process_gone(pid):
    """No such process, or only its zombie left."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def wait_processes_gone(pids, timeout=10):
    """Waits until every pid has exited (the port and the spool are free
    for a restart); fails naming those left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if not process_gone(p)]
        if not left:
            return
        time.sleep(0.02)
    raise AssertionError("relayd's children %s still run %ss after it "
                         "exited" % (left, timeout))


class Relayd:
    """One relayd process with its own config, port, spool and log."""

    def __init__(self, workdir, smtp=None, sections=None, listen=None,
                 spool_dir=None, ipv6=False, name="relayd"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.conf_path = self.workdir / (name + ".conf")
        self.log_path = self.workdir / (name + ".log")
        self.spool = Path(spool_dir) if spool_dir else self.workdir / "spool"
        self.ipv6 = ipv6
        self.port = None
        self._listen = listen
        # SIGTERM drains sessions in a transaction: 5 s, not 30, within
        # STOP_TIMEOUT for tests that leave one open
        self.smtp_opts = {"hostname": HOSTNAME, "drain_timeout": "5s"}
        self.smtp_opts.update(smtp or {})
        self.sections = {"log": {"level": "debug"},
                         "status": {"socket": str(self.status_path())}}
        for sec, kv in (sections or {}).items():
            self.sections.setdefault(sec, {}).update(kv)
        self.proc = None
        self.logf = None
        self.exits = []         # return codes of processes that ended
        self.expect_dead = False
        self._log_offset = 0    # where the current process's log begins

    def command(self):
        cmd = [str(RELAYD_BIN), "-c", str(self.conf_path)]
        return valgrind.wrap(cmd, self.workdir) if VALGRIND else cmd

    def valgrind_reports(self):
        """What memcheck said about each process (empty logs: nothing)."""
        return valgrind.reports(self.workdir)

    def status_path(self):
        """The status socket: in the work directory, or (a UNIX socket
        path has 108 bytes) a short one under /tmp."""
        path = self.workdir / "status.sock"
        if len(str(path)) > 100:
            path = Path("/tmp") / ("relayd-%d-%x.sock"
                                   % (os.getpid(), id(self)))
        return path

    def ctl(self, command, timeout=10):
        """One command on the status socket: the JSON answer."""
        path = self.sections["status"]["socket"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(path)
            s.sendall(command.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)

    def relayctl(self, *args, check=False, timeout=30, env=None):
        """relayctl -s <this relayd's socket> ARGS: CompletedProcess."""
        return subprocess.run(
            [str(RELAYCTL_BIN), "-s", self.sections["status"]["socket"]]
            + [str(a) for a in args], capture_output=True, text=True,
            timeout=timeout, check=check, env=env)

    # -- config
    def listen_lines(self):
        if self._listen is not None:
            return list(self._listen)
        lines = ["127.0.0.1:%d" % self.port]
        if self.ipv6:
            lines.append("[::1]:%d" % self.port)
        return lines

    def write_config(self):
        out = ["[smtp]"]
        for l in self.listen_lines():
            out.append("listen = %s" % l)
        for k, v in self.smtp_opts.items():
            out.append("%s = %s" % (k, v))
        out += ["", "[queue]", "spool_dir = %s" % self.spool]
        for sec, kv in self.sections.items():
            out += ["", "[%s]" % sec]
            out += ["%s = %s" % (k, v) for k, v in kv.items()]
        self.conf_path.write_text("\n".join(out) + "\n")

    # -- process
    def start(self):
        assert self.proc is None or self.proc.poll() is not None
        if not RELAYD_BIN.exists():
            pytest.fail("relayd binary not found at %s (build it, or set "
                        "RELAYD_BUILDDIR)" % RELAYD_BIN)
        for attempt in range(5):
            if self.port is None or attempt > 0:
                self.port = free_port(self.ipv6)
            self.write_config()
            if self.logf is None:
                self.logf = open(self.log_path, "ab")
            self._log_offset = self.log_path.stat().st_size
            self.expect_dead = False
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL, stdout=self.logf,
                stderr=self.logf, close_fds=True)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if "relayd started" in self.current_log():
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(POLL)
            else:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("relayd did not start in %ss:\n%s"
                                     % (START_TIMEOUT, self.log))
            self.exits.append(self.proc.returncode)
            if ("Address already in use" in self.current_log()
                    and self._listen is None):
                continue        # lost a race for the port: take another
            raise AssertionError("relayd exited with %s at start:\n%s"
                                 % (self.proc.returncode, self.log))
        raise AssertionError("could not find a port relayd could bind")

    @property
    def pid(self):
        return self.proc.pid

    @property
    def smtp_pid(self):
        """The process that accepts SMTP connections ("relayd: smtp"): stop
        it (SIGSTOP) to have input wait at accept. The parent if no child
        shows the title (under valgrind the titles are its own)."""
        for pid in process_children(self.pid):
            for name in ("comm", "cmdline"):
                try:
                    with open("/proc/%d/%s" % (pid, name), "rb") as f:
                        if f.read().startswith(b"relayd: smtp"):
                            return pid
                except OSError:
                    pass
        return self.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self, grace=0.3):
        """Fails if the process exits within grace seconds (a crash right
        after a client's EOF may still be in progress when we look)."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not self.running():
                break
            time.sleep(POLL)
        assert self.running(), "relayd died (status %s); see its log" % (
            self.proc.returncode,)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM and wait (for its children too); returns the exit
        status."""
        self.expect_dead = True
        if not self.running():
            return self.proc.returncode if self.proc else None
        children = process_children(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("relayd did not stop %ss after SIGTERM"
                                 % timeout)
        wait_processes_gone(children)
        self.exits.append(rc)
        return rc

    def kill(self):
        """SIGKILL and wait (its children die with it: wait for them)."""
        self.expect_dead = True
        if self.running():
            children = process_children(self.proc.pid)
            self.proc.kill()
            self.exits.append(self.proc.wait())
            wait_processes_gone(children)

    def freeze(self):
        """SIGSTOP relayd and its children (the relay process accepts and
        serves): whatever a client sends meanwhile waits in the socket."""
        self.frozen = [p for p in [self.pid] + process_children(self.pid)]
        for pid in self.frozen:
            os.kill(pid, signal.SIGSTOP)

    def thaw(self):
        """SIGCONT what freeze() stopped."""
        for pid in getattr(self, "frozen", []):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.frozen = []

    def restart(self):
        if self.running():
            self.stop()
        return self.start()

    # -- log
    @property
    def log(self):
        """The whole log of every process this object started."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def current_log(self):
        """The log of the process now (or last) running."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout=IO_TIMEOUT, current=True):
        """Waits for a regex to appear in the log; returns the match."""
        rx = re.compile(pattern, re.M)
        return wait_for(lambda: rx.search(self.current_log() if current
                                          else self.log),
                        timeout, "log line /%s/" % pattern)

    # -- spool
    @property
    def queue_dir(self):
        return self.spool / "queue"

    @property
    def tmp_dir(self):
        return self.spool / "tmp"

    @property
    def corrupt_dir(self):
        return self.spool / "corrupt"

    def segments(self):
        """Names of the segment files in queue/."""
        return list_dir(self.queue_dir)

    def segment_records(self, name, settle=2.0):
        """The records of queue/NAME in order; [] if the daemon removed it
        meanwhile. ValueError if it is damaged, unless a copy of it is in
        corrupt/ (the daemon keeps the whole records before the damage
        queued): then those records. ValueError too if the name is not the
        first record's id.

        The daemon appends commit batches to its current segment in place,
        so a running daemon's last segment may end in a record still being
        written: damage is only reported if it lasts `settle` seconds."""
        path = self.queue_dir / name
        known_bad = any(c == name or c.startswith(name + ".")
                        for c in list_dir(self.corrupt_dir))
        deadline = time.monotonic() + settle
        while True:
            try:
                records = parse_segment(path, strict=not known_bad)
                break
            except FileNotFoundError:
                return []
            except ValueError:
                if not self.running() or time.monotonic() > deadline:
                    raise
                time.sleep(POLL)
        if records and records[0].id != name:
            raise ValueError("%s: named %s but its first record is %s"
                             % (path, name, records[0].id))
        return records

    def records(self):
        """Every record in queue/, whatever its state, segment by segment
        (sorted by name) and in order within each."""
        return [r for name in self.segments()
                for r in self.segment_records(name)]

    def queued_files(self):
        """The queued records (state Q or H), sorted by queue id."""
        return sorted((r for r in self.records() if r.live),
                      key=lambda r: r.id)

    def queued(self):
        """Queue ids of the queued records (state Q or H), sorted."""
        return [r.id for r in self.queued_files()]

    def spool_file(self, qid):
        """The record with that queue id in queue/, whatever its state."""
        for r in self.records():
            if r.id == qid:
                return r
        raise FileNotFoundError("no record %s in any segment of %s (%s)"
                                % (qid, self.queue_dir, self.segments()))

    def tmp_files(self):
        return list_dir(self.tmp_dir)

    def partial_sizes(self):
        """Sizes of the messages being written: files in tmp/, or the
        daemon's anonymous (O_TMPFILE) files in queue/, which have no name
        until they are whole. Small messages may have no file at all yet."""
        sizes = [(self.tmp_dir / f).stat().st_size for f in self.tmp_files()]
        fds = []
        if self.running():      # the relay process writes them
            for pid in [self.pid] + process_children(self.pid):
                try:
                    fds += list(Path("/proc/%d/fd" % pid).iterdir())
                except OSError:
                    pass
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith(str(self.queue_dir) + "/#"):
                try:
                    sizes.append(fd.stat().st_size)
                except OSError:
                    pass
        return sizes

    @property
    def dead_dir(self):
        return self.spool / "dead"

    def dead(self):
        """Names in dead/: messages Graph refused and their .reason files."""
        return list_dir(self.dead_dir)

    def check_config(self, env=None):
        """Writes the config and runs `relayd -n` on it: CompletedProcess
        (text)."""
        if self.port is None:
            self.port = free_port(self.ipv6)
        self.write_config()
        return subprocess.run(
            [str(RELAYD_BIN), "-n", "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=20, env=env)

    # -- clients
    def connect(self, **kw):
        kw.setdefault("host", "127.0.0.1")
        return SMTPConn(self.port, **kw)

    def send_one(self, mail_from="sender@a.test", rcpts=("rcpt@b.test",),
                 body=b"Subject: test\r\n\r\nHello.\r\n", host="127.0.0.1",
                 source=None):
        """A new raw client delivers one message (body as is); returns its
        queue id. smtp_send(d, ..., raw=True) with other defaults."""
        return smtp_send(self, body, mail_from, rcpts, raw=True, host=host,
                         source=source)

    def assert_serves(self, source=None):
        """A fresh client gets a message queued: the server still works."""
        before = set(self.queued())
        qid = self.send_one(body=b"Subject: still serving\r\n\r\nok\r\n",
                            source=source)
        assert qid in set(self.queued()) - before
        self.assert_alive(0)
        return qid

    def assert_serves_soon(self, timeout=5, source=None):
        """Like assert_serves, but first waits (polling) until connections
        are no longer refused with 421: for when clients were just closed
        and the server may not have seen it yet."""
        def let_in():
            with self.connect(source=source) as c:
                if c.greeting.code == 421:
                    return False
                assert c.greeting.code == 220, c.greeting
                return True
        wait_for(let_in, timeout, "a connection to be let in")
        # let_in's own connection may still count for a moment
        return wait_for(lambda: self._try_serve(source), timeout,
                        "a message to be accepted")

    def _try_serve(self, source):
        try:
            return self.assert_serves(source=source)
        except AssertionError as e:
            if "421" in str(e):
                return None
            raise

    def close(self):
        if self.logf is not None:
            self.logf.close()
            self.logf = None


TOOL_TIMEOUT = 30


def need(tool):
    """The path of a client program, or skip the test saying what to do."""
    path = shutil.which(tool) or (tool if os.path.exists(tool) else None)
    if path is None:
        pytest.skip("%s is not installed (tests/deps.sh installs it)" % tool)
    return path


def run(args, **kw):
    """A client program, with a timeout and its output captured."""
    kw.setdefault("timeout", TOOL_TIMEOUT)
    kw.setdefault("capture_output", True)
    return subprocess.run(args, **kw)


def run_relayd(*args, timeout=20):
    """Runs the binary with arguments (not as a daemon)."""
    return subprocess.run([str(RELAYD_BIN)] + list(args),
                          stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)
