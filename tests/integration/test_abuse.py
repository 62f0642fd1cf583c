"""Abuse: thousands of idle connections, megabyte command lines, floods of
bad commands, idle and stalled clients. After each, the limit held and an
ordinary client was served within a second meanwhile.

The abusers connect from 127.0.0.2, the ordinary client from 127.0.0.3.
"""
import re
import resource
import selectors
import socket
import threading
import time

import pytest

from relaydtest.env import HOSTNAME
from relaydtest.smtp import SMTPConn
from relaydtest.wait import wait_for
from relaydtest.procs import cpu_seconds, open_fds, rss_kb

ABUSER = "127.0.0.2"
GOOD = "127.0.0.3"
SERVED_WITHIN = 1.0         # seconds for a good client's whole delivery


def timed_delivery(d, source=GOOD, subject=b"good client"):
    """(seconds from connect to the 250 queued, greeting seconds, qid) for
    an ordinary client."""
    t0 = time.monotonic()
    with d.connect(source=source) as c:
        greeted = time.monotonic() - t0
        assert c.greeting.code == 220, c.greeting
        c.ehlo()
        r = c.send_mail(body=b"Subject: " + subject + b"\r\n\r\nhi\r\n")
        assert r.qid, r
        took = time.monotonic() - t0
        c.cmd("QUIT")
    return took, greeted, r.qid


def assert_served_quickly(d, what):
    took, greeted, qid = timed_delivery(d)
    assert took < SERVED_WITHIN, (
        "an ordinary client took %.2f s (greeting after %.2f s) to deliver "
        "while %s" % (took, greeted, what))
    assert qid in d.queued()
    return took


@pytest.fixture
def many_fds():
    """Raises our RLIMIT_NOFILE for ~2,100 sockets (relayd, started later,
    inherits it); skips if the hard limit does not allow it."""
    need = 2200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip("RLIMIT_NOFILE hard limit is %d; 2,000 client sockets "
                    "need ~%d" % (hard, need))
    if soft != resource.RLIM_INFINITY and soft < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        except (ValueError, OSError) as e:
            pytest.skip("cannot raise RLIMIT_NOFILE to %d: %s" % (need, e))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def first_lines(socks, timeout=10):
    """{sock: (first line or None, closed after it)} for sockets that were
    sent a line and maybe closed; waits for each line (and, for a 421, the
    close)."""
    sel = selectors.DefaultSelector()
    bufs = {s: b"" for s in socks}
    eof = {s: False for s in socks}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    pending = set(socks)
    deadline = time.monotonic() + timeout

    def done(s):
        if eof[s]:
            return True
        # a greeting (220) stays open; anything else must be closed
        return bufs[s].startswith(b"220 ") and b"\r\n" in bufs[s]

    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            if data:
                bufs[s] += data
            else:
                eof[s] = True
                sel.unregister(s)
            if done(s):
                pending.discard(s)
    sel.close()
    out = {}
    for s in socks:
        line = bufs[s].split(b"\r\n")[0].decode() if b"\r\n" in bufs[s] \
            else None
        out[s] = (line, eof[s])
    return out


# --------------------------------------------------------------------------
# thousands of connections that send nothing

def test_2000_idle_connections(relayd_factory, many_fds):
    d = relayd_factory()            # default limits: 1000 and 100 per client
    rss0 = rss_kb(d.pid)
    socks = []
    try:
        t0 = time.monotonic()
        for _ in range(2000):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((ABUSER, 0))
            s.settimeout(10)
            s.connect(("127.0.0.1", d.port))
            socks.append(s)
        connect_secs = time.monotonic() - t0
        # an ordinary client meanwhile: its greeting and a message in < 1 s
        took = assert_served_quickly(
            d, "2,000 connections from %s sat idle" % ABUSER)
        # what the 2,000 got
        got = first_lines(socks)
        served = [s for s, (line, eof) in got.items()
                  if line is not None and line.startswith("220 ")]
        refused = [s for s, (line, eof) in got.items()
                   if line == "421 4.7.0 %s Too many connections from your "
                   "address, try again later" % HOSTNAME and eof]
        other = [got[s] for s in socks
                 if s not in set(served) and s not in set(refused)]
        assert len(served) == 100, (
            "%d of 2,000 idle connections from one address were greeted; "
            "max_connections_per_client is 100" % len(served))
        assert len(refused) == 1900 and not other, (
            "%d refused with 421, others: %r" % (len(refused), other[:10]))
        # relayd holds the 100, not 2,000, and little memory for them
        fds = open_fds(d.pid)
        assert fds < 100 + 60, "relayd has %d descriptors open" % fds
        rss1 = rss_kb(d.pid)
        assert rss1 - rss0 < 32 * 1024 and rss1 < 128 * 1024, (
            "relayd's RSS grew from %d kB to %d kB" % (rss0, rss1))
        d.wait_log(r'smtp refused client=127\.0\.0\.2 listener=\S+ reason='
                   r'"too many connections from this client '
                   r'\(max_connections_per_client=100\)"')
        assert connect_secs < 20, connect_secs
        assert took < SERVED_WITHIN
    finally:
        for s in socks:
            s.close()
    # once they are gone, the abuser's address is served again
    d.assert_serves_soon(source=ABUSER)
    wait_for(lambda: open_fds(d.pid) < 60, 5, "relayd to close the 100")


# --------------------------------------------------------------------------
# a megabyte command line

def test_megabyte_command_line(relayd_factory):
    d = relayd_factory(smtp={"command_timeout": "10s"})
    rss0 = rss_kb(d.pid)
    big = SMTPConn(d.port, source=ABUSER, timeout=10)
    with big:
        big.ehlo()
        sent = [0]
        half = threading.Event()
        errors = []

        def stream():
            try:
                big.sock.sendall(b"NOOP ")
                chunk = b"x" * 16384
                for i in range(64):            # 1 MiB, no CRLF
                    big.sock.sendall(chunk)
                    sent[0] += len(chunk)
                    if sent[0] >= 512 * 1024:
                        half.set()
                    time.sleep(0.002)
            except OSError as e:
                errors.append(e)
                half.set()
        t = threading.Thread(target=stream)
        t.start()
        assert half.wait(10), "could not send half a megabyte"
        took = assert_served_quickly(d, "another client was sending a 1 MB "
                                     "command line")
        t.join(20)
        assert not t.is_alive() and not errors, errors
        assert sent[0] == 1 << 20
        # one 500 (relayd may say it once the line passes the limit, before
        # its end), then the session goes on
        big.send(b"\r\nNOOP\r\n")
        rs = big.replies(2)
        assert rs[0].text.startswith("500 5.5.2 Line too long"), rs
        assert rs[1].text == "250 2.0.0 Ok", rs
        assert big.quiet(0.1), "more replies: %r" % big.buf
        r = big.send_mail(body=b"Subject: after the long line\r\n\r\nhi\r\n")
        assert r.qid, r
    rss1 = rss_kb(d.pid)
    assert rss1 - rss0 < 8 * 1024, (
        "relayd's RSS grew by %d kB for one long line" % (rss1 - rss0))
    assert took < SERVED_WITHIN


def test_megabyte_lines_in_a_row(relayd_factory):
    """Several clients, several megabyte lines each: each gets one 500 per
    line, and others are served meanwhile."""
    d = relayd_factory(smtp={"command_timeout": "10s"})
    clients = [SMTPConn(d.port, source=ABUSER, timeout=10) for _ in range(4)]
    errors = []

    def abuse(c):
        try:
            for _ in range(2):
                c.send(b"HELO " + b"y" * (1 << 20) + b"\r\n")
                r = c.reply()
                if not r.text.startswith("500 5.5.2"):
                    errors.append(r)
            if c.cmd("NOOP").code != 250:
                errors.append("no NOOP")
        except Exception as e:      # reported below
            errors.append(e)
    try:
        ts = [threading.Thread(target=abuse, args=(c,)) for c in clients]
        for t in ts:
            t.start()
        time.sleep(0.05)
        took = assert_served_quickly(d, "4 clients sent 1 MB lines")
        for t in ts:
            t.join(30)
        assert not errors, errors
    finally:
        for c in clients:
            c.close()
    assert took < SERVED_WITHIN


# --------------------------------------------------------------------------
# floods of bad commands

BAD = [b"XYZZY", b"RCPT TO:<a@b.test>", b"MAIL FROM:<no-domain>", b"DATA",
       b"\x01\x02", b"AUTH PLAIN", b"STARTTLS"]


def test_bad_command_flood(relayd_factory):
    d = relayd_factory()                # max_errors: default 10
    flood = b"".join(BAD[i % len(BAD)] + b"\r\n" for i in range(5000))
    flooders = []
    try:
        for _ in range(20):
            c = SMTPConn(d.port, source=ABUSER, timeout=10)
            c.ehlo()
            flooders.append(c)
        for c in flooders:
            try:
                c.sock.sendall(flood)
            except OSError:
                pass                    # closed on us already: fine
        took = assert_served_quickly(d, "20 clients flooded bad commands")
        for c in flooders:
            rs = c.read_all(timeout=10)
            codes = [r.code for r in rs]
            assert len(rs) == 11 and all(400 <= x < 600 and x != 421
                                         for x in codes[:10]), rs
            assert rs[-1].text.startswith("421 4.7.0") and \
                "Too many errors" in rs[-1].text, rs[-1]

        def closed():
            return len(re.findall(r'disconnect client=127\.0\.0\.2 msgs=0 '
                                  r'reason="too many errors"', d.log))
        # A session is freed once its client has gone or the 2 s linger
        # after the 421 is over, so the lines come in over a moment.
        wait_for(lambda: closed() >= 20, 5, "20 disconnect lines")
        assert closed() == 20
    finally:
        for c in flooders:
            c.close()
    assert took < SERVED_WITHIN
    assert len(d.queued()) == 1     # the ordinary client's


def test_pipelined_noop_flood_is_throttled(relayd_factory):
    """Good commands do not count as errors: a client that pipelines
    megabytes of NOOP and never reads its replies is held back by its own
    unread replies (relayd does not buffer them without end), and others
    are served meanwhile."""
    d = relayd_factory()
    rss0 = rss_kb(d.pid)
    c = SMTPConn(d.port, source=ABUSER, timeout=5)
    with c:
        c.ehlo()
        c.sock.settimeout(0.5)
        chunk = b"NOOP\r\n" * 10000
        sent, t0 = 0, time.monotonic()
        try:
            while time.monotonic() - t0 < 3 and sent < 64 * 1024 * 1024:
                sent += c.sock.send(chunk)
        except socket.timeout:
            pass                        # relayd stopped reading: good
        assert sent < 64 * 1024 * 1024, "relayd read 64 MB of NOOPs " \
            "without its replies being read"
        took = assert_served_quickly(d, "a client pipelined %d MB of NOOP"
                                     % (sent >> 20))
        rss1 = rss_kb(d.pid)
        assert rss1 - rss0 < 32 * 1024, (
            "relayd's RSS grew from %d kB to %d kB" % (rss0, rss1))
    assert took < SERVED_WITHIN


# --------------------------------------------------------------------------
# idle and stalled clients

def test_idle_and_stalled_clients_time_out(relayd_factory):
    d = relayd_factory(smtp={"command_timeout": "2s"})
    cpu0 = cpu_seconds(d.pid)
    clients = {}
    t0 = time.monotonic()
    # idle right after the greeting
    clients["after-greeting"] = SMTPConn(d.port, source=ABUSER)
    # idle after EHLO
    c = SMTPConn(d.port, source=ABUSER)
    c.ehlo()
    clients["after-ehlo"] = c
    # idle in the middle of a transaction
    c = SMTPConn(d.port, source=ABUSER)
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@a.test>").code == 250
    assert c.cmd("RCPT TO:<b@b.test>").code == 250
    clients["mid-transaction"] = c
    # stalled in the middle of a command line
    c = SMTPConn(d.port, source=ABUSER)
    c.ehlo()
    c.send(b"MAIL FROM:<a@a.t")
    clients["partial-line"] = c
    # a slow one: a few commands, slowly, then nothing
    c = SMTPConn(d.port, source=ABUSER)
    for line in ("EHLO slow.test", "NOOP", "RSET"):
        time.sleep(0.3)
        assert c.cmd(line).code == 250
    clients["slow-then-idle"] = c
    # one that does not even read its greeting
    clients["never-reads"] = SMTPConn(d.port, source=ABUSER, greeting=False)
    problems = []
    try:
        # others are served meanwhile
        took = assert_served_quickly(d, "6 clients sat idle")
        for name, c in clients.items():
            try:
                rs = c.read_all(timeout=6)
            except socket.timeout:
                problems.append("%s: not closed 6 s after command_timeout "
                                "= 2s" % name)
                continue
            if name == "never-reads":
                rs = rs[1:]             # its greeting
            if len(rs) != 1 or not rs[0].text.startswith("421 4.4.2") or \
                    "Timeout" not in rs[0].text:
                problems.append("%s: got %r" % (name, rs))
        elapsed = time.monotonic() - t0
        if elapsed > 2 + 1.2 + 2:
            problems.append("took %.1f s to time them out" % elapsed)
        cpu = cpu_seconds(d.pid) - cpu0
        if cpu > 0.5:
            problems.append("relayd used %.2f s of CPU meanwhile" % cpu)
    finally:
        for c in clients.values():
            c.close()
    assert not problems, "; ".join(problems)

    def timeouts():
        return len(re.findall(r'disconnect client=127\.0\.0\.2 msgs=0 '
                              r'reason="timeout"', d.log))
    # The last session may be freed a moment after its client saw the 421.
    wait_for(lambda: timeouts() >= 6, 3, "6 timeout disconnects in the log")
    assert timeouts() == 6
    assert took < SERVED_WITHIN


def test_trickling_client_does_not_hold_others(relayd_factory):
    """A client that sends one byte of a command every 0.3 s: relayd's
    command_timeout is "idle time allowed while waiting for a command", so
    whether this client is timed out (421 4.4.2) or its line gets its 500
    when it passes max_line_length is left open; either way it must not
    cost CPU nor keep others waiting."""
    d = relayd_factory(smtp={"command_timeout": "1s",
                             "max_line_length": 512})
    c = SMTPConn(d.port, source=ABUSER)
    with c:
        c.ehlo()
        cpu0 = cpu_seconds(d.pid)
        c.send(b"NOOP ")
        for _ in range(8):
            time.sleep(0.3)
            c.send(b"z")
        took = assert_served_quickly(d, "a client trickled a command")
        assert cpu_seconds(d.pid) - cpu0 < 0.3
        try:
            c.send(b"z" * 600 + b"\r\n")
        except OSError:
            pass
        r = c.reply()
        assert r.text.startswith("500 5.5.2 Line too long") or \
            r.text.startswith("421 4.4.2"), r
    assert took < SERVED_WITHIN


def test_trickled_command_times_out(relayd_factory):
    """A command must be complete within command_timeout of its first
    byte: a client that sends one byte every 0.3 s is never idle, yet gets
    421 4.4.2 and is closed, and others are served meanwhile."""
    d = relayd_factory(smtp={"command_timeout": "1s"})
    c = SMTPConn(d.port, source=ABUSER)
    with c:
        c.ehlo()
        t0 = time.monotonic()
        c.send(b"N")
        r = None
        for ch in b"OOP trickle trickle trickle":
            time.sleep(0.3)
            try:
                c.send(bytes([ch]))
            except OSError:
                break
            if time.monotonic() - t0 > 1.6:
                break
        r = c.reply()
        assert r.text.startswith("421 4.4.2"), r
        assert "command not completed in time" in r.text
        assert time.monotonic() - t0 < 3.0
        assert_served_quickly(d, "a trickled command timed out")
    d.wait_log(r'reason="command too slow"')
