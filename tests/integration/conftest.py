"""
Integration test harness for relayd.

Every test gets its own daemon (or several) through the `relayd` factory
fixture: a config file in the test's tmp dir, a free loopback port, a private
spool_dir, stderr captured to a log file. Nothing here sleeps for a fixed
time longer than a polling step; waits poll with deadlines.

The fake Microsoft Graph (tests/fakegraph.py) runs as its own process per
test through `fake_graph` / `fake_graph_tls` (or `fake_graph_factory`);
`graph_sections(fake)` gives the [graph] config that points relayd at it.

Environment:
  RELAYD_BUILDDIR  where relayd/relayd was built (default: the repo root)
  RELAYD_SRCDIR    the source tree (default: the repo root)
  RELAYD_GRAPH_SCHEMA  graph-mail-v1.0.schema.json for the fake (default:
                   shared/graph/schemas/ beside or above the source tree)
"""
import errno
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
BUILDDIR = Path(os.environ.get("RELAYD_BUILDDIR") or REPO_ROOT)
SRCDIR = Path(os.environ.get("RELAYD_SRCDIR") or REPO_ROOT)
RELAYD_BIN = BUILDDIR / "relayd" / "relayd"
RELAYCTL_BIN = BUILDDIR / "relayd" / "relayctl"

HOSTNAME = "relayd.test"
QID_RE = re.compile(r"^[0-9A-F]{16}$")
QUEUED_RE = re.compile(r"^250 2\.0\.0 Ok: queued as ([0-9A-F]{16})$")

# RELAYD_VALGRIND=1 (tests/valgrind-run): every daemon runs under
# valgrind memcheck, which is about ten times slower: the waits stretch.
VALGRIND = os.environ.get("RELAYD_VALGRIND", "") not in ("", "0")
SLOW = 4.0 if VALGRIND else 1.0
VALGRIND_CMD = ["valgrind", "-q", "--leak-check=full",
                "--show-leak-kinds=definite",
                "--errors-for-leak-kinds=definite", "--num-callers=30"]

POLL = 0.01            # seconds between polls
START_TIMEOUT = 10.0 * SLOW     # daemon start-up
STOP_TIMEOUT = 10.0 * SLOW      # daemon shutdown after SIGTERM
IO_TIMEOUT = 5.0 * SLOW         # default wait for a reply


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
# spool files: segments of records (format version 2)
#
# A segment file in queue/ holds one or more records back to back and is
# named by the queue id of its first record. A record:
#
#   "RELAYD-SPOOL 2\n"                                          15 bytes
#   "state: S attempts=NNNNN next=NNNNNNNNNNNNN error=TEXT   \n"  200 bytes
#   "size: <20 digits>\n"                                        27 bytes
#   "id: QID\n" "arrival: ...\n" ... "rcpt: ...\n" "\n"          the envelope
#   <size bytes of message>
#   "RELAYD-END <20 digits>\n"                                   32 bytes
#
# S is Q (queued), H (held), D (delivered) or X (dead-lettered). As the
# daemon does, a state line that does not parse (a torn in-place write)
# reads as queued. The daemon allocates its current segment ahead, so a
# segment may end in NUL bytes where the next record would start.

SPOOL_MAGIC = b"RELAYD-SPOOL 2\n"
SPOOL_STATE_LEN = 200
SPOOL_SIZE_LEN = 27
SPOOL_TRAILER_LEN = 32
SPOOL_STATE_RE = re.compile(
    rb"^state: ([QHDX]) attempts=(\d{5}) next=(\d{13}) error=([^\n]*)\n$")
SPOOL_SIZE_RE = re.compile(rb"^size: (\d{20})\n$")
SPOOL_TRAILER_RE = re.compile(rb"^RELAYD-END (\d{20})\n$")
LIVE_STATES = ("Q", "H")


class SpoolRecord:
    """One message record, parsed from `data` at `offset` (a segment's
    bytes). Raises ValueError, saying where and why, if it is not whole and
    well formed. `.fields` holds the envelope without the state and size
    lines; `.raw` is the record's own bytes; `.end` is where the next one
    begins."""

    def __init__(self, data, offset=0, segment=None):
        self.segment = Path(segment) if segment is not None else None
        self.offset = offset
        where = "%s: record at byte %d" % (segment, offset)

        def bad(why, *args):
            raise ValueError("%s: %s" % (where, why % args))

        o = offset
        if data[o:o + len(SPOOL_MAGIC)] != SPOOL_MAGIC:
            if SPOOL_MAGIC.startswith(data[o:]):
                bad("cut off in the first line (%d bytes)", len(data) - o)
            bad("bad first line %r", data[o:o + 20])
        o += len(SPOOL_MAGIC)
        state = data[o:o + SPOOL_STATE_LEN]
        nl = data.find(b"\n", o)
        if nl < 0:
            bad("cut off in the state line (%d bytes of %d)",
                len(data) - o, SPOOL_STATE_LEN)
        if nl != o + SPOOL_STATE_LEN - 1:
            bad("state line is %d bytes, not %d", nl + 1 - o, SPOOL_STATE_LEN)
        self.state_line = state
        m = SPOOL_STATE_RE.match(state)
        self.state_ok = m is not None
        if m:
            self.state = m.group(1).decode()
            self.attempts = int(m.group(2))
            self.next_ms = int(m.group(3))
            self.error = m.group(4).decode("utf-8", "replace").rstrip(" ")
        else:                               # torn: queued, as the daemon
            self.state, self.attempts, self.next_ms, self.error = (
                "Q", 0, 0, "")
        o += SPOOL_STATE_LEN
        sizeline = data[o:o + SPOOL_SIZE_LEN]
        m = SPOOL_SIZE_RE.match(sizeline)
        if not m:
            bad("bad size line %r", sizeline)
        self.size = int(m.group(1))
        o += SPOOL_SIZE_LEN
        self.fields = []                    # [(key, value)] in order
        while True:
            nl = data.find(b"\n", o)
            if nl < 0:
                bad("no blank line after the envelope")
            line = data[o:nl]
            o = nl + 1
            if not line:
                break
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                bad("envelope line %r is not UTF-8", line)
            key, sep, value = text.partition(": ")
            if not sep:
                if text.endswith(":"):      # "key:" with an empty value
                    key, value = text[:-1], ""
                else:
                    bad("bad envelope line %r", text)
            self.fields.append((key, value))
        if not QID_RE.match(self.id or ""):
            bad("no valid id in the envelope (id=%r)", self.id)
        if o + self.size + SPOOL_TRAILER_LEN > len(data):
            bad("size line says %d message bytes, %d bytes are left for "
                "message and trailer", self.size, len(data) - o)
        self.message = data[o:o + self.size]
        o += self.size
        trailer = data[o:o + SPOOL_TRAILER_LEN]
        m = SPOOL_TRAILER_RE.match(trailer)
        if not m:
            bad("bad trailer %r after %d message bytes", trailer, self.size)
        if int(m.group(1)) != self.size:
            bad("trailer says %d bytes, size line %d",
                int(m.group(1)), self.size)
        self.end = o + SPOOL_TRAILER_LEN
        self.raw = data[offset:self.end]

    @property
    def path(self):
        """The file holding the record (its segment)."""
        return self.segment

    @property
    def live(self):
        return self.state in LIVE_STATES

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

    def __repr__(self):
        return "<record %s state=%s at %s:%d>" % (
            self.id, self.state,
            self.segment.name if self.segment else "?", self.offset)


def parse_records(data, segment=None, strict=True):
    """The records in a segment's bytes, in order, up to NUL bytes that
    fill the rest (space allocated ahead). strict: any damage raises
    ValueError; otherwise the whole records before it are returned (what
    the daemon keeps queued from a damaged segment)."""
    records, o = [], 0
    if not data and strict:
        raise ValueError("%s: empty segment" % segment)
    while o < len(data):
        if records and data[o] == 0:
            if not data[o:].strip(b"\0"):
                break                       # allocated ahead, unused
            if not strict:
                break
            raise ValueError("%s: NUL bytes at byte %d after %d record(s), "
                             "then other bytes" % (segment, o, len(records)))
        if (records and data[o:o + len(SPOOL_MAGIC)] != SPOOL_MAGIC
                and not SPOOL_MAGIC.startswith(data[o:])):
            if not strict:
                break
            raise ValueError("%s: %d bytes of trailing garbage at byte %d "
                             "after %d record(s): %r"
                             % (segment, len(data) - o, o, len(records),
                                data[o:o + 20]))
        try:
            r = SpoolRecord(data, o, segment)
        except ValueError:
            if strict:
                raise
            break
        records.append(r)
        o = r.end
    return records


def parse_segment(path, strict=True):
    """The records of a segment file, in order; ValueError on any framing
    problem (see parse_records for strict=False). FileNotFoundError if the
    file is not there."""
    path = Path(path)
    return parse_records(path.read_bytes(), path, strict)


class SpoolFile(SpoolRecord):
    """A file holding exactly one record, such as dead/QID."""

    def __init__(self, path):
        path = Path(path)
        data = path.read_bytes()
        super().__init__(data, 0, path)
        if self.end != len(data):
            raise ValueError("%s: %d bytes after its one record"
                             % (path, len(data) - self.end))


def parse_spool_file(path):
    return SpoolFile(path)


def make_record(qid, mail_from="sender@a.test", rcpts=("rcpt@b.test",),
                message=b"Subject: planted\r\n\r\nplanted\r\n", state="Q",
                attempts=0, next_ms=0, error="", arrival=None,
                client="127.0.0.1", listener="127.0.0.1:25",
                helo="client.test", user="", mail_params="", extra=()):
    """The bytes of one record in the spool format, for tests that plant
    files. `extra` is [(key, value)] added after the rcpt lines. An error
    too long for the state line is cut."""
    if arrival is None:
        arrival = "%.6f" % time.time()
    state_line = (b"state: %s attempts=%05u next=%013u error=%s"
                  % (state.encode(), attempts, next_ms, error.encode()))
    room = SPOOL_STATE_LEN - 1
    state_line = state_line[:room].ljust(room) + b"\n"
    env = [("id", qid), ("arrival", arrival), ("client", client),
           ("listener", listener), ("helo", helo), ("user", user),
           ("mail-from", mail_from), ("mail-params", mail_params)]
    env += [("rcpt", r) for r in rcpts]
    env += list(extra)
    head = b"".join(b"%s: %s\n" % (k.encode(), v.encode()) for k, v in env)
    return (SPOOL_MAGIC + state_line + b"size: %020u\n" % len(message)
            + head + b"\n" + message + b"RELAYD-END %020u\n" % len(message))


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
        if VALGRIND:
            cmd = VALGRIND_CMD + ["--log-file=%s" % (
                self.workdir / "valgrind.%p.log")] + cmd
        return cmd

    def valgrind_reports(self):
        """What memcheck said about each process (empty logs: nothing)."""
        out = []
        for p in sorted(self.workdir.glob("valgrind.*.log")):
            text = p.read_text(errors="replace").strip()
            if text:
                out.append("%s:\n%s" % (p.name, text))
        return out

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


# --------------------------------------------------------------------------
# the fake Microsoft Graph (tests/fakegraph.py) and a test CA for it

FAKEGRAPH = SRCDIR / "tests" / "fakegraph.py"
FAKE_TENANT = "contoso-tenant"
FAKE_CLIENT_ID = "relayd-client"
FAKE_SECRET = "s3cret"

# How a client's going away or a refused TLS handshake shows in a traceback:
# not a bug in the fake.
DISCONNECT_EXC_RE = re.compile(
    r"^(ConnectionResetError|BrokenPipeError|ConnectionAbortedError|"
    r"TimeoutError|socket\.timeout|ssl\.SSL\w*Error|ssl\.SSLError)\b")


class CertAuthority:
    """A throw-away CA made at test time with python3-cryptography, and the
    certificates it signs. Files in `directory`: ca.pem (relayd's
    [graph] ca_file), ca.key, and NAME.pem/NAME.key per issued certificate.
    A server certificate for localhost, 127.0.0.1 and ::1 is issued at once:
    cert_file, key_file."""

    def __init__(self, directory):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        key = self._new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                             "relayd test CA")])
        now = self._now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - self._delta(hours=1))
                .not_valid_after(now + self._delta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0),
                               critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False,
                    key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256()))
        self.key, self.cert = key, cert
        self.ca_file, self.ca_key_file = self._write("ca", cert, key)
        self.cert_file, self.key_file = self.issue("server")

    @staticmethod
    def _now():
        from datetime import datetime, timezone
        return datetime.now(timezone.utc)

    @staticmethod
    def _delta(**kw):
        from datetime import timedelta
        return timedelta(**kw)

    @staticmethod
    def _new_key():
        from cryptography.hazmat.primitives.asymmetric import rsa
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def _write(self, name, cert, key):
        from cryptography.hazmat.primitives import serialization
        cert_path = self.dir / (name + ".pem")
        key_path = self.dir / (name + ".key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
        return cert_path, key_path

    def issue(self, name, dns=("localhost",), ips=("127.0.0.1", "::1"),
              days=400, expired=False, server=True):
        """Signs a new certificate; returns (cert_path, key_path). expired:
        valid only until yesterday. server=False makes a plain client
        certificate (e.g. for JWT client assertions)."""
        import ipaddress
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
        key = self._new_key()
        now = self._now()
        if expired:
            start, end = now - self._delta(days=3), now - self._delta(days=1)
        else:
            start, end = now - self._delta(hours=1), now + self._delta(
                days=days)
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(
                 NameOID.COMMON_NAME, (list(dns) or [name])[0])]))
             .issuer_name(self.cert.subject)
             .public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(start).not_valid_after(end)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                            critical=True)
             .add_extension(x509.AuthorityKeyIdentifier
                            .from_issuer_public_key(self.key.public_key()),
                            critical=False)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                 key.public_key()), critical=False))
        if server:
            sans = [x509.DNSName(d) for d in dns] + [
                x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            b = (b.add_extension(x509.SubjectAlternativeName(sans),
                                 critical=False)
                 .add_extension(x509.KeyUsage(
                     digital_signature=True, content_commitment=False,
                     key_encipherment=True, data_encipherment=False,
                     key_agreement=False, key_cert_sign=False,
                     crl_sign=False, encipher_only=False,
                     decipher_only=False), critical=True)
                 .add_extension(x509.ExtendedKeyUsage(
                     [ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        cert = b.sign(self.key, hashes.SHA256())
        return self._write(name, cert, key)


class FakeGraph:
    """One tests/fakegraph.py process and a client for its control API.

    url is the base URL (token endpoint and Graph alike). Records are
    JSON: sent() -> [{"mailbox", "format" ("json"|"mime"), "body" (parsed
    JSON or the decoded MIME text), "headers", "time", "request_id", ...}],
    requests() -> [{"method", "path", "status", "code", "kind", "mailbox",
    ...}], stats() -> {"sent", "token_requests", "max_concurrency":
    {mailbox: n}, "status_counts", ...}."""

    def __init__(self, workdir, tls=None, args=(), name="fakegraph"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.tls = tls                  # a CertAuthority, or None
        self.args = list(args)
        self.log_path = self.workdir / (name + ".log")
        self.port_file = self.workdir / (name + ".port")
        self.tenant = FAKE_TENANT
        self.client_id = FAKE_CLIENT_ID
        self.secret = FAKE_SECRET
        self.proc = None
        self.logf = None
        self.port = None
        self.url = None
        self.expect_dead = False
        self._secret_files = {}

    # -- process
    def start(self):
        try:
            self.port_file.unlink()
        except FileNotFoundError:
            pass
        cmd = [sys.executable, str(FAKEGRAPH), "--listen", "127.0.0.1:0",
               "--port-file", str(self.port_file), "--verbose"]
        if self.tls is not None:
            cmd += ["--tls-cert", str(self.tls.cert_file),
                    "--tls-key", str(self.tls.key_file)]
        cmd += self.args
        if self.logf is None:
            self.logf = open(self.log_path, "ab")
        self.expect_dead = False
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf,
                                     close_fds=True)

        def port():
            if self.proc.poll() is not None:
                raise AssertionError("fake graph exited with %s at start:\n%s"
                                     % (self.proc.returncode, self.log))
            try:
                return int(self.port_file.read_text())
            except (FileNotFoundError, ValueError):
                return None
        self.port = wait_for(port, START_TIMEOUT, "the fake graph's port")
        self.url = "%s://127.0.0.1:%d" % ("https" if self.tls else "http",
                                          self.port)
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT):
        self.expect_dead = True
        if not self.running():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("fake graph did not stop %ss after SIGTERM"
                                 % timeout)

    def close(self):
        if self.logf is not None:
            self.logf.close()
            self.logf = None

    @property
    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tracebacks(self, since=0):
        """Python tracebacks in the log (from character `since` on), except
        those that end in a client disconnect or a TLS error."""
        lines = self.log[since:].splitlines()
        found, i = [], 0
        while i < len(lines):
            if not lines[i].startswith("Traceback (most recent call last)"):
                i += 1
                continue
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ")
                                      or not lines[j]):
                j += 1
            last = lines[j] if j < len(lines) else ""
            if not DISCONNECT_EXC_RE.match(last):
                found.append("\n".join(lines[i:j + 1]))
            i = j + 1
        return found

    # -- HTTP to the fake
    def ssl_context(self):
        """Verifies the fake with the test CA (None for plain HTTP)."""
        if self.tls is None:
            return None
        return ssl.create_default_context(cafile=str(self.tls.ca_file))

    def connection(self, timeout=IO_TIMEOUT, context=None):
        """A new http.client connection to the fake."""
        if self.tls is not None:
            return http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=timeout,
                context=context or self.ssl_context())
        return http.client.HTTPConnection("127.0.0.1", self.port,
                                          timeout=timeout)

    def request(self, method, path, body=None, headers=None,
                timeout=IO_TIMEOUT, conn=None):
        """One request; returns (status, headers, body bytes). body may be
        a dict/list (sent as JSON), str or bytes. Uses conn if given (and
        leaves it open), else a new connection."""
        hdrs = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        c = conn or self.connection(timeout)
        try:
            c.request(method, path, body=body, headers=hdrs)
            r = c.getresponse()
            data = r.read()
            return r.status, r.headers, data
        finally:
            if conn is None:
                c.close()

    def _call(self, method, what, obj=None):
        status, _, data = self.request(method, "/_fake/" + what,
                                       body=obj if obj is not None else None)
        out = json.loads(data) if data else None
        if status != 200:
            raise AssertionError("fake graph: %s /_fake/%s -> %s %s"
                                 % (method, what, status, out))
        return out

    def sent(self):
        return self._call("GET", "sent")

    def requests(self):
        return self._call("GET", "requests")

    def stats(self):
        return self._call("GET", "stats")

    def reset(self, tokens=False):
        """Forgets records, counters and faults; start-up config again.
        tokens=True also revokes every token issued."""
        return self._call("POST", "reset", {"tokens": bool(tokens)})

    def config(self, **kw):
        """Changes behaviour, e.g. config(latency_ms=200,
        unknown_mailboxes=["gone@contoso.test"], send_as_deny="strict",
        clients={"relayd-client": {"secret": "s3cret", "expired": True}}).
        Returns the whole config in force."""
        return self._call("POST", "config", kw) if kw else \
            self._call("GET", "config")

    def faults(self, rules=None):
        """Replaces the fault rules (a list; [] clears them) and returns
        them; with no argument, returns the rules left."""
        if rules is None:
            return self._call("GET", "faults")
        return self._call("POST", "faults", list(rules))

    def drafts(self):
        """Drafts not yet sent or deleted (fakegraph's /_fake/drafts)."""
        return self._call("GET", "drafts")

    def sessions(self):
        """Upload sessions still open (fakegraph's /_fake/sessions)."""
        return self._call("GET", "sessions")

    def uploads(self):
        """The requests to uploadUrls, in order: each record's "upload"
        (session, content_range, start, end, total, length, authorization)
        with its method and status."""
        return [dict(r["upload"], method=r["method"], status=r["status"],
                     code=r["code"])
                for r in self.requests() if r["kind"] == "upload"]

    def wait_sent(self, n, timeout=IO_TIMEOUT):
        """Polls until at least n messages were accepted; returns them."""
        wait_for(lambda: self.stats()["sent"] >= n, timeout,
                 "%d message(s) accepted by the fake graph" % n,
                 interval=0.02)
        return self.sent()

    # -- as relayd's client would
    def token_form(self, **kw):
        form = {"client_id": self.client_id, "client_secret": self.secret,
                "grant_type": "client_credentials",
                "scope": self.url + "/.default"}
        form.update(kw)
        return {k: v for k, v in form.items() if v is not None}

    def token(self, **kw):
        """A fresh access token (form fields can be overridden)."""
        import urllib.parse
        status, _, data = self.request(
            "POST", "/%s/oauth2/v2.0/token" % self.tenant,
            urllib.parse.urlencode(self.token_form(**kw)),
            {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200, (status, data)
        return json.loads(data)["access_token"]

    def send_mail(self, mailbox, doc, token=None, headers=None, conn=None,
                  timeout=IO_TIMEOUT):
        """POSTs sendMail (doc: dict as JSON, or bytes/str as given);
        returns (status, headers, parsed JSON body or None)."""
        import urllib.parse
        hdrs = {"Authorization": "Bearer %s" % (token or self.token())}
        hdrs.update(headers or {})
        status, h, data = self.request(
            "POST", "/v1.0/users/%s/sendMail" % urllib.parse.quote(mailbox),
            doc, hdrs, timeout=timeout, conn=conn)
        return status, h, (json.loads(data) if data else None)

    def graph_sections(self, **overrides):
        return graph_sections(self, **overrides)

    def secret_file(self, secret=None):
        """A 0600 file holding the secret (no newline); one per value."""
        secret = self.secret if secret is None else secret
        path = self._secret_files.get(secret)
        if path is None:
            path = self.workdir / ("client_secret.%d"
                                   % len(self._secret_files))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret)
            self._secret_files[secret] = path
        return path


def graph_sections(fake, secret=None, **overrides):
    """relayd config sections pointing [graph] at a FakeGraph: use as
    relayd_factory(sections=graph_sections(fake)). Overrides set keys (a
    value of None removes the key); secret="..." writes a different secret
    to client_secret_file."""
    g = {"tenant": fake.tenant, "client_id": fake.client_id,
         "client_secret_file": str(fake.secret_file(secret)),
         "login_url": fake.url, "graph_url": fake.url}
    if fake.tls is not None:
        g["ca_file"] = str(fake.tls.ca_file)
    for k, v in overrides.items():
        if v is None:
            g.pop(k, None)
        else:
            g[k] = v
    return {"graph": g}


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
        for f in getattr(item, "_fake_graphs", []):
            rep.sections.append(("fake graph log: %s (%s)"
                                 % (f.name, f.log_path), f.log or "(empty)"))


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
    for d in daemons:
        reports = d.valgrind_reports() if VALGRIND else []
        if reports:
            record_valgrind(request.node.nodeid, reports)
            problems.append("valgrind memcheck (relayd %s):\n%s"
                            % (d.name, "\n".join(reports)[:20000]))
    if problems and not getattr(request.node, "_relayd_call_failed", False):
        pytest.fail("; ".join(problems) + "\n\n" +
                    "\n".join("== %s ==\n%s" % (d.name, d.log)
                              for d in daemons))


def record_valgrind(test, reports):
    """Appends memcheck's reports to $RELAYD_VALGRIND_REPORT (the run's
    summary reads it), whatever became of the test."""
    path = os.environ.get("RELAYD_VALGRIND_REPORT")
    if path:
        # One write(2) with O_APPEND: tests/valgrind-run runs two pytest
        # workers, whose lines must not interleave.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps({"test": test, "reports": reports})
                          + "\n").encode())
        finally:
            os.close(fd)


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


@pytest.fixture
def powercut(tmp_path):
    """powercut() -> a tests/powercutfs.py file system mounted on
    tmp_path/pc-mnt over tmp_path/pc-backing (its .cut() is a power cut;
    call powercut() again to mount the survivor). Request it BEFORE
    relayd_factory so that daemons stop before the unmount. Skips without
    root, /dev/fuse or python3-fusepy."""
    sys.path.insert(0, str(SRCDIR / "tests"))
    import powercutfs
    why = powercutfs.available()
    if why:
        pytest.skip(why)
    backing, mnt = tmp_path / "pc-backing", tmp_path / "pc-mnt"
    backing.mkdir()
    mnt.mkdir()
    mounts = []

    def make(**kw):
        fs = powercutfs.mount(backing, mnt, **kw)
        mounts.append(fs)
        return fs
    make.backing, make.mountpoint = backing, mnt
    try:
        yield make
    finally:
        for fs in mounts:
            fs.unmount()


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory):
    """A test CA and a server certificate (localhost, 127.0.0.1, ::1) it
    signed, made once per session: .ca_file, .cert_file, .key_file,
    .issue(name, ...) for more."""
    return CertAuthority(tmp_path_factory.mktemp("tls-ca"))


@pytest.fixture
def fake_graph_factory(request, tmp_path):
    """fake_graph_factory(tls=None|CertAuthority, args=[...], name=...,
    start=True) -> FakeGraph. Every fake is stopped at teardown; the test
    fails if one died or logged a Python traceback."""
    fakes = []
    request.node._fake_graphs = fakes

    def make(tls=None, args=(), name=None, start=True):
        name = name or ("fakegraph%d" % len(fakes) if fakes else "fakegraph")
        f = FakeGraph(tmp_path / name, tls=tls, args=args, name=name)
        fakes.append(f)
        if start:
            f.start()
        return f

    yield make

    problems = []
    for f in fakes:
        if f.proc is None:
            f.close()
            continue
        if not f.running() and not f.expect_dead:
            problems.append("fake graph %s died with status %s"
                            % (f.name, f.proc.returncode))
        try:
            f.stop()
        except AssertionError as e:
            problems.append(str(e))
        tbs = f.tracebacks()
        if tbs:
            problems.append("fake graph %s logged a traceback:\n%s"
                            % (f.name, "\n\n".join(tbs)))
        f.close()
    if problems and not getattr(request.node, "_relayd_call_failed", False):
        pytest.fail("; ".join(problems))


@pytest.fixture
def fake_graph(fake_graph_factory):
    """A fake Graph + token server over plain HTTP."""
    return fake_graph_factory()


@pytest.fixture
def fake_graph_tls(fake_graph_factory, tls_ca):
    """A fake Graph + token server over HTTPS with a certificate from
    tls_ca; graph_sections() adds ca_file."""
    return fake_graph_factory(tls=tls_ca)


# --------------------------------------------------------------------------
# delivery through the fake Graph (test_delivery.py, test_token.py)

def graph_schema_path():
    """graph-mail-v1.0.schema.json where the fake finds it by default:
    $RELAYD_GRAPH_SCHEMA, else shared/graph/schemas/ beside the source tree
    or in a directory above it (a distcheck tree lives in the checkout)."""
    env = os.environ.get("RELAYD_GRAPH_SCHEMA")
    if env:
        return Path(env)
    rel = Path("shared") / "graph" / "schemas" / "graph-mail-v1.0.schema.json"
    for d in SRCDIR.resolve().parents:
        if (d / rel).is_file():
            return d / rel
    return SRCDIR.parent / rel


def graph_relayd(relayd_factory, fake, queue=None, start=True, **graph):
    """relayd_factory(...) for a daemon that delivers to fake: graph= keys
    override graph_sections() (None removes one; secret="..." for another
    secret), queue= keys go to [queue], where retry_min is 200ms and
    messages_per_minute 0 (no pacing) unless given: the defaults (30s, 30)
    are too slow for a test."""
    sections = graph_sections(fake, **graph)
    sections["queue"] = dict({"retry_min": "200ms",
                              "messages_per_minute": "0"}, **(queue or {}))
    return relayd_factory(sections=sections, start=start)


_sendmail_validators = {}


def sendmail_validator():
    """A jsonschema validator for graph.sendMailRequest, built once; None
    when the shared schema is absent."""
    path = graph_schema_path()
    if path not in _sendmail_validators:
        validator = None
        if path.is_file():
            import jsonschema
            root = json.loads(path.read_text(encoding="utf-8"))
            schema = {"$schema": root["$schema"], "$defs": root["$defs"],
                      "$ref": "#/$defs/graph.sendMailRequest"}
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            validator = cls(schema)
        _sendmail_validators[path] = validator
    return _sendmail_validators[path]


def assert_sendmail_valid(validator, doc):
    errors = sorted(validator.iter_errors(doc), key=str)
    assert not errors, "body fails graph.sendMailRequest: %s\n%s" % (
        "; ".join("%s at /%s" % (e.message, "/".join(
            map(str, e.absolute_path))) for e in errors),
        json.dumps(doc, indent=1)[:2000])


@pytest.fixture(scope="session")
def sendmail_schema():
    """check(doc, ...): validates sendMail bodies against
    graph.sendMailRequest, independently of the fake. Without the shared
    schema it skips the test, saying so: call it after the test's other
    assertions."""
    def check(*docs):
        validator = sendmail_validator()
        if validator is None:
            pytest.skip("schema check skipped: %s not found (../shared is "
                        "absent); the test's other assertions passed"
                        % graph_schema_path())
        for doc in docs:
            assert_sendmail_valid(validator, doc)
    return check


@pytest.fixture(scope="module")
def _module_fake_graph(tmp_path_factory):
    f = FakeGraph(tmp_path_factory.mktemp("fake"), name="fakegraph-module")
    f.start()
    yield f
    f.stop()
    f.close()


@pytest.fixture
def shared_fake_graph(_module_fake_graph, request):
    """One fake Graph process per test module (starting one costs ~0.2 s),
    reset for each test: no records, faults or tokens, start-up config.
    Its log is shown when the test fails; a traceback in it fails the
    test, and so does a body it accepted that graph.sendMailRequest does
    not (when the shared schema is there). Use fake_graph for a test that
    stops or breaks its fake."""
    f = _module_fake_graph
    assert f.running(), "the module's fake graph died:\n" + f.log
    f.reset(tokens=True)
    start = len(f.log)
    request.node._fake_graphs = [f]
    yield f
    tbs = f.tracebacks(since=start)
    assert not tbs, "the fake logged a traceback:\n" + "\n\n".join(tbs)
    validator = sendmail_validator()
    if validator is not None and f.running():
        for rec in f.sent():
            if rec["format"] == "json":
                assert_sendmail_valid(validator, rec["body"])
