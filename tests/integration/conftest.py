"""
Integration test harness for relayd.

Every test gets its own daemon (or several) through the `relayd` factory
fixture: a config file in the test's tmp dir, a free loopback port, a private
spool_dir, stderr captured to a log file. Nothing here sleeps for a fixed
time longer than a polling step; waits poll with deadlines.

Environment:
  RELAYD_BUILDDIR  where relayd/relayd was built (default: the repo root)
  RELAYD_SRCDIR    the source tree (default: the repo root)
"""
import errno
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
BUILDDIR = Path(os.environ.get("RELAYD_BUILDDIR") or REPO_ROOT)
SRCDIR = Path(os.environ.get("RELAYD_SRCDIR") or REPO_ROOT)
RELAYD_BIN = BUILDDIR / "relayd" / "relayd"

HOSTNAME = "relayd.test"
QID_RE = re.compile(r"^[0-9A-F]{16}$")
QUEUED_RE = re.compile(r"^250 2\.0\.0 Ok: queued as ([0-9A-F]{16})$")

POLL = 0.01            # seconds between polls
START_TIMEOUT = 10.0   # daemon start-up
STOP_TIMEOUT = 10.0    # daemon shutdown after SIGTERM
IO_TIMEOUT = 5.0       # default wait for a reply


# --------------------------------------------------------------------------
# small utilities

def wait_for(pred, timeout, what="condition", interval=POLL):
    """Polls pred() until it returns a true value; returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout, what))
        time.sleep(interval)


def ipv6_available():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        s.bind(("::1", 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port(ipv6_too=False):
    """A TCP port that is free on 127.0.0.1 (and ::1 if asked) right now."""
    for _ in range(50):
        s4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s4.bind(("127.0.0.1", 0))
            port = s4.getsockname()[1]
            if not ipv6_too:
                return port
            s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            try:
                s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s6.bind(("::1", port))
                return port
            except OSError:
                continue
            finally:
                s6.close()
        finally:
            s4.close()
    raise RuntimeError("no free port found")


# --------------------------------------------------------------------------
# SMTP over a raw socket

class Reply:
    """One (possibly multi-line) SMTP reply."""

    def __init__(self, lines):
        self.lines = lines                  # text lines without CRLF
        self.code = int(lines[-1][:3])

    @property
    def text(self):
        """The last line, e.g. '250 2.0.0 Ok'."""
        return self.lines[-1]

    @property
    def qid(self):
        m = QUEUED_RE.match(self.text)
        return m.group(1) if m else None

    def __repr__(self):
        return "Reply(%r)" % ("\\n".join(self.lines),)


class SMTPClosed(Exception):
    pass


class SMTPConn:
    """A raw SMTP client: send exact bytes, read replies."""

    def __init__(self, port, host="127.0.0.1", source=None, timeout=IO_TIMEOUT,
                 greeting=True):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.timeout = timeout
        self.buf = b""
        self.eof = False
        self.transcript = []        # ("C"|"S", bytes) for failure messages
        self.greeting = self.reply() if greeting else None

    # -- low level
    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.transcript.append(("C", data))
        self.sock.sendall(data)

    def cmd(self, line, timeout=None):
        """Sends one command line (CRLF added) and returns its reply."""
        self.send(line.encode() + b"\r\n" if isinstance(line, str)
                  else line + b"\r\n")
        return self.reply(timeout)

    def _fill(self, deadline):
        """Reads more bytes; False on EOF. Raises socket.timeout."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("no reply in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.transcript.append(("S", data))
        self.buf += data
        return True

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            if self.eof or not self._fill(deadline):
                raise SMTPClosed("connection closed; unread %r" % self.buf)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def reply(self, timeout=None):
        """Reads one whole reply; raises SMTPClosed or socket.timeout."""
        deadline = time.monotonic() + (timeout or self.timeout)
        lines = []
        while True:
            line = self._line(deadline)
            if not re.match(r"^[2-5]\d\d([ -]|$)", line):
                raise AssertionError("malformed reply line %r" % line)
            lines.append(line)
            if len(line) == 3 or line[3] == " ":
                return Reply(lines)

    def replies(self, n, timeout=None):
        return [self.reply(timeout) for _ in range(n)]

    def read_until(self, code, timeout=None):
        """Replies up to and including the first one with this code (int or
        prefix string such as '250 2.0.0 Ok: queued')."""
        deadline = time.monotonic() + (timeout or self.timeout)
        got = []
        while True:
            r = self.reply(max(deadline - time.monotonic(), 0.001))
            got.append(r)
            if (r.code == code if isinstance(code, int)
                    else r.text.startswith(code)):
                return got

    def read_all(self, timeout=None):
        """Every reply until the server closes (or timeout: raises)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        got = []
        while True:
            try:
                got.append(self.reply(max(deadline - time.monotonic(), 0.001)))
            except SMTPClosed:
                return got

    def wait_closed(self, timeout=None):
        """True once the server closed; leftover bytes must be nothing."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.eof:
            self._fill(deadline)
        return self.buf == b""

    def quiet(self, timeout=0.2):
        """True if the server neither sent anything nor closed meanwhile."""
        if self.buf or self.eof:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536, socket.MSG_PEEK)
        except socket.timeout:
            return True
        except ConnectionResetError:
            return False
        return False

    # -- conveniences
    def ehlo(self, name="client.test"):
        r = self.cmd("EHLO " + name)
        assert r.code == 250, r
        return r

    def send_mail(self, mail_from="sender@a.test", rcpts=("rcpt@b.test",),
                  body=b"Subject: test\r\n\r\nHello.\r\n"):
        """A whole transaction over DATA; returns the final reply. body is
        sent as is (dot-stuffing is the caller's business), followed by
        .CRLF."""
        r = self.cmd("MAIL FROM:<%s>" % mail_from)
        assert r.text == "250 2.1.0 Ok", r
        for rc in rcpts:
            r = self.cmd("RCPT TO:<%s>" % rc)
            assert r.code == 250, r
        r = self.cmd("DATA")
        assert r.code == 354, r
        self.send(body + b".\r\n")
        return self.reply()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


# --------------------------------------------------------------------------
# spool files

SPOOL_TRAILER_RE = re.compile(rb"^RELAYD-END (\d{20})\n$")


class SpoolFile:
    """A parsed spool file. Raises ValueError if it is not well formed."""

    def __init__(self, path):
        self.path = Path(path)
        data = self.path.read_bytes()
        self.raw = data
        if not data.startswith(b"RELAYD-SPOOL 1\n"):
            raise ValueError("%s: bad first line %r" % (path, data[:20]))
        head_end = data.find(b"\n\n")
        if head_end < 0:
            raise ValueError("%s: no blank line after the envelope" % path)
        head = data[len(b"RELAYD-SPOOL 1\n"):head_end + 1]
        self.fields = []                    # [(key, value)] in order
        for line in head.decode("utf-8").split("\n")[:-1]:
            key, sep, value = line.partition(": ")
            if not sep:
                if line.endswith(":"):      # "key:" with an empty value
                    key, value = line[:-1], ""
                else:
                    raise ValueError("%s: bad envelope line %r" % (path, line))
            self.fields.append((key, value))
        body_start = head_end + 2
        if len(data) < body_start + 32:
            raise ValueError("%s: too short for a trailer" % path)
        trailer = data[-32:]
        m = SPOOL_TRAILER_RE.match(trailer)
        if not m:
            raise ValueError("%s: bad trailer %r" % (path, trailer))
        self.size = int(m.group(1))
        self.message = data[body_start:-32]
        if self.size != len(self.message):
            raise ValueError("%s: trailer says %d bytes, file holds %d"
                             % (path, self.size, len(self.message)))

    def get(self, key, default=None):
        for k, v in self.fields:
            if k == key:
                return v
        return default

    def getall(self, key):
        return [v for k, v in self.fields if k == key]

    @property
    def id(self):
        return self.get("id")

    @property
    def mail_from(self):
        return self.get("mail-from")

    @property
    def rcpts(self):
        return self.getall("rcpt")

    @property
    def received_header(self):
        """Our Received: header, with its continuation lines."""
        assert self.message.startswith(b"Received: "), self.message[:80]
        end = 0
        while True:
            nl = self.message.index(b"\r\n", end) + 2
            end = nl
            if self.message[nl:nl + 1] not in (b"\t", b" "):
                return self.message[:end]

    @property
    def body(self):
        """The message as the client sent it (after our Received:)."""
        return self.message[len(self.received_header):]


def parse_spool_file(path):
    return SpoolFile(path)


def list_dir(path):
    p = Path(path)
    if not p.is_dir():
        return []
    return sorted(x.name for x in p.iterdir() if not x.name.startswith("."))


# --------------------------------------------------------------------------
# the daemon

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
        self.smtp_opts = {"hostname": HOSTNAME}
        self.smtp_opts.update(smtp or {})
        self.sections = {"log": {"level": "debug"}}
        for sec, kv in (sections or {}).items():
            self.sections.setdefault(sec, {}).update(kv)
        self.proc = None
        self.logf = None
        self.exits = []         # return codes of processes that ended
        self.expect_dead = False
        self._log_offset = 0    # where the current process's log begins

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
                [str(RELAYD_BIN), "-c", str(self.conf_path)],
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
        """SIGTERM and wait; returns the exit status."""
        self.expect_dead = True
        if not self.running():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("relayd did not stop %ss after SIGTERM"
                                 % timeout)
        self.exits.append(rc)
        return rc

    def kill(self):
        """SIGKILL and wait."""
        self.expect_dead = True
        if self.running():
            self.proc.kill()
            self.exits.append(self.proc.wait())

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

    def queued(self):
        return list_dir(self.queue_dir)

    def tmp_files(self):
        return list_dir(self.tmp_dir)

    def partial_sizes(self):
        """Sizes of the messages being written: files in tmp/, or the
        daemon's anonymous (O_TMPFILE) files in queue/, which have no name
        until they are whole. Small messages may have no file at all yet."""
        sizes = [(self.tmp_dir / f).stat().st_size for f in self.tmp_files()]
        fds = Path("/proc/%d/fd" % self.pid)
        for fd in (list(fds.iterdir()) if self.running() else []):
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

    def queued_files(self):
        return [SpoolFile(self.queue_dir / q) for q in self.queued()]

    def spool_file(self, qid):
        return SpoolFile(self.queue_dir / qid)

    # -- clients
    def connect(self, **kw):
        kw.setdefault("host", "127.0.0.1")
        return SMTPConn(self.port, **kw)

    def send_one(self, mail_from="sender@a.test", rcpts=("rcpt@b.test",),
                 body=b"Subject: test\r\n\r\nHello.\r\n", host="127.0.0.1",
                 source=None):
        """A new client delivers one message; returns its queue id."""
        with self.connect(host=host, source=source) as c:
            assert c.greeting.code == 220, c.greeting
            c.ehlo()
            r = c.send_mail(mail_from, rcpts, body)
            assert r.qid, "expected a 250 queued reply, got %r" % (r,)
            assert c.cmd("QUIT").code == 221
            return r.qid

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


def run_relayd(*args, timeout=20):
    """Runs the binary with arguments (not as a daemon)."""
    return subprocess.run([str(RELAYD_BIN)] + list(args),
                          stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


# --------------------------------------------------------------------------
# fixtures

@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item._relayd_call_failed = rep.failed
    if rep.failed:
        for d in getattr(item, "_relayd_daemons", []):
            rep.sections.append(("relayd log: %s (%s)" % (d.name, d.log_path),
                                 d.log or "(empty)"))


@pytest.fixture
def relayd_factory(request, tmp_path):
    """relayd_factory(smtp={...}, sections={...}, listen=[...],
    spool_dir=..., ipv6=False, start=True) -> Relayd"""
    daemons = []
    request.node._relayd_daemons = daemons

    def make(start=True, **kw):
        kw.setdefault("name", "relayd%d" % len(daemons) if daemons
                      else "relayd")
        d = Relayd(tmp_path / kw["name"], **kw)
        daemons.append(d)
        if start:
            d.start()
        return d

    yield make

    problems = []
    for d in daemons:
        if d.proc is None:
            d.close()
            continue
        if not d.running() and not d.expect_dead:
            problems.append("relayd %s died unexpectedly with status %s"
                            % (d.name, d.proc.returncode))
        if d.running():
            try:
                rc = d.stop()
                if rc != 0:
                    problems.append("relayd %s exited with %s after SIGTERM"
                                    % (d.name, rc))
            except AssertionError as e:
                problems.append(str(e))
        d.close()
    if problems and not getattr(request.node, "_relayd_call_failed", False):
        pytest.fail("; ".join(problems) + "\n\n" +
                    "\n".join("== %s ==\n%s" % (d.name, d.log)
                              for d in daemons))


@pytest.fixture
def relayd(relayd_factory):
    """A daemon with the default test config."""
    return relayd_factory()


@pytest.fixture
def tmpfs_dir(tmp_path):
    """A 512k tmpfs, unmounted at teardown. Request it BEFORE relayd_factory
    so that the daemon is stopped before the unmount."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700",
                        "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % r.stderr.strip())
    try:
        yield mnt
    finally:
        r = subprocess.run(["umount", str(mnt)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            # Still busy (a process left behind?): detach it anyway.
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            pytest.fail("umount %s failed: %s" % (mnt, r.stderr.strip()))
