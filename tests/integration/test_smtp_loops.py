"""SMTP sessions on several event loops: [smtp] loops.

Loop 0 accepts and hands clients round robin to the loops; their commits
come back to the loop that made them, and their counters and departures
to loop 0. RELAYD_SMTP_LOOPS overrides the key (tests/tsan-run runs the
SMTP test files on 2 loops with it).
"""
import os
import re
import select
import signal
import smtplib
import socket
import threading
import time

import pytest

from relaydtest.env import VALGRIND
from relaydtest.freeze import frozen, state, thread_id
from relaydtest.smtp import QUEUED_RE
from relaydtest.wait import wait_for

CLIENTS = 8
PER_CLIENT = 5


def threads(pid):
    return len(os.listdir("/proc/%d/task" % pid))


def client(port, n, replies):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo("loops.test")
        for i in range(PER_CLIENT):
            code, text = s.docmd("MAIL", "FROM:<c%d@a.test>" % n)
            assert code == 250
            assert s.docmd("RCPT", "TO:<r@b.test>")[0] == 250
            assert s.docmd("DATA")[0] == 354
            s.send(b"Subject: loop %d/%d\r\n\r\nbody\r\n.\r\n" % (n, i))
            code, text = s.getreply()
            assert QUEUED_RE.match("%d %s" % (code, text.decode())), text
            replies.append((code, text))


def wakes(pid, tid):
    """How many times the thread went to sleep and was woken."""
    with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
        m = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", f.read(), re.M)
    return int(m.group(1))


def received(d):
    m = re.search(r"^relayd_messages_received_total (\d+)$",
                  d.relayctl("metrics", check=True).stdout, re.M)
    return int(m.group(1))


def test_sessions_on_two_loops(relayd_factory, monkeypatch):
    monkeypatch.delenv("RELAYD_SMTP_LOOPS", raising=False)
    one = relayd_factory(name="one", smtp={"loops": 1})
    assert re.search(r"smtp: 1 event loop \(\[smtp\] loops, \d+ cores\)",
                     one.log), one.log
    base = threads(one.smtp_pid)
    one.stop()
    d = relayd_factory(name="two", smtp={"loops": 2})
    assert re.search(r"smtp: 2 event loops \(\[smtp\] loops, \d+ cores\)",
                     d.log), d.log
    assert threads(d.smtp_pid) == base + 1
    names = {}
    for t in os.listdir("/proc/%d/task" % d.smtp_pid):
        with open("/proc/%d/task/%s/comm" % (d.smtp_pid, t)) as f:
            names[f.read().strip()] = t
    assert "smtp loop 1" in names, names
    woken = wakes(d.smtp_pid, names["smtp loop 1"])
    replies = []
    ts = [threading.Thread(target=client, args=(d.port, n, replies))
          for n in range(CLIENTS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    # Half the sessions were handed to loop 1, each waking it at least
    # once (it sleeps otherwise: only a heartbeat's call every 10 s).
    assert wakes(d.smtp_pid, names["smtp loop 1"]) - woken >= CLIENTS // 2
    assert len(replies) == CLIENTS * PER_CLIENT
    assert all(code == 250 for code, _ in replies)
    qids = re.findall(r"^\S* ?.*?([0-9A-F]{16}) smtp queued ", d.log, re.M)
    assert len(set(qids)) == CLIENTS * PER_CLIENT, qids
    # Every message was answered 250 and counted once, on loop 0.
    wait_for(lambda: received(d) == CLIENTS * PER_CLIENT, 10,
             "received_total %d" % (CLIENTS * PER_CLIENT))
    # Sessions of both loops reported their departure to loop 0.
    wait_for(lambda: d.ctl("status")["connections"] == 0, 5, "no sessions")


def test_loops_auto_is_one_per_core_but_one(relayd_factory, monkeypatch):
    monkeypatch.delenv("RELAYD_SMTP_LOOPS", raising=False)
    d = relayd_factory()
    ncpu = os.cpu_count()
    want = min(max(ncpu - 1, 1), 16)
    assert re.search(r"smtp: %d event loops? \(\[smtp\] loops auto: one "
                     r"per core but one, %d cores\)" % (want, ncpu),
                     d.log), d.log
    assert threads(d.smtp_pid) >= want


def test_loops_change_waits_for_a_restart(relayd_factory, monkeypatch):
    monkeypatch.delenv("RELAYD_SMTP_LOOPS", raising=False)
    d = relayd_factory(smtp={"loops": 2})
    n = threads(d.smtp_pid)
    d.smtp_opts["loops"] = 3
    d.write_config()
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log(r"reload: \[smtp\] loops changed: takes effect at "
               r"restart", 5)
    assert threads(d.smtp_pid) == n
    assert d.send_one()


def test_loops_out_of_range(relayd_factory, monkeypatch):
    monkeypatch.delenv("RELAYD_SMTP_LOOPS", raising=False)
    d = relayd_factory(start=False, smtp={"loops": 65})
    with pytest.raises(AssertionError, match="exited with"):
        d.start()
    d.expect_dead = True
    assert re.search(r'relayd.conf:\d+: "loops" = 65 is out of range '
                     r'\(0 to 64\)', d.log), d.log
    monkeypatch.setenv("RELAYD_SMTP_LOOPS", "0")
    d = relayd_factory(name="env", start=False)
    with pytest.raises(AssertionError, match="exited with 71 at start"):
        d.start()
    d.expect_dead = True
    assert "RELAYD_SMTP_LOOPS=0: give 1 to 64" in d.log


# valgrind runs one thread at a time: holding one still would hold all.
needs_threads = pytest.mark.skipif(VALGRIND, reason="valgrind serializes "
                                   "the threads: one cannot stop alone")


def said(sock, timeout, line=False):
    """What relayd sent on sock within timeout s (b"" if nothing); line:
    return at the first whole line."""
    out = b""
    deadline = time.monotonic() + timeout
    while not (line and out.endswith(b"\r\n")):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            return out
        data = sock.recv(4096)
        if not data:
            return out + b"<closed>"
        out += data
    return out


@needs_threads
def test_eviction_sees_sessions_on_their_way(relayd_factory, monkeypatch):
    """Under stress the session idle longest goes, even while it is still
    on its way to its loop. Loop 1 is held still (ptrace), so the clients
    handed to it wait in its call queue; when a new client needs room,
    loop 0 must ask loop 1 to close the oldest, not close its own newer
    one."""
    monkeypatch.delenv("RELAYD_SMTP_LOOPS", raising=False)
    d = relayd_factory(smtp={"loops": 2, "max_connections": 6,
                             "max_connections_per_client": 20,
                             "command_timeout": "60s",
                             "stress_timeout": "30s"})
    tid = thread_id(d.smtp_pid, "smtp loop 1")
    socks = []

    def connect():
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        socks.append(s)
        return s

    try:
        with frozen(tid):
            assert state(d.smtp_pid, tid) == "t"
            # Round robin: the next client goes to loop 1 once one has
            # gone to loop 0 (greeted at once; loop 1's never are).
            first = connect()
            if said(first, 2, line=True).startswith(b"220 "):
                first.close()
                socks.remove(first)
                wait_for(lambda: d.ctl("status")["connections"] == 0, 5,
                         "the first client gone")
                first = connect()
                assert said(first, 0.5) == b"", "loop 1 should be still"
            on0, on1 = [], [first]
            for i in range(5):
                s = connect()
                (on0 if i % 2 == 0 else on1).append(s)
                if s in on0:
                    assert said(s, 2, line=True).startswith(b"220 ")
            wait_for(lambda: d.ctl("status")["connections"] == 6, 5,
                     "6 sessions")
            # Full and under stress: this one needs room.
            connect()
            # The oldest is first (on loop 1): loop 0's stay.
            for s in on0:
                assert said(s, 0.5) == b"", "loop 0 evicted its own"
        # Loop 1 turns again: its sessions begin, and the oldest goes.
        got = said(first, 3)
        assert got.startswith(b"220 "), got
        assert b"\r\n421 4.7.0 " in got, got
        for s in on1[1:]:
            got = said(s, 1)
            assert got.startswith(b"220 ") and b"421" not in got, got
        wait_for(lambda: d.ctl("status")["stress"]["evicted"] == 1, 5,
                 "1 evicted in status")
    finally:
        for s in socks:
            s.close()


@needs_threads
def test_a_stuck_loop_stops_the_watchdog(relayd_factory, tmp_path,
                                         monkeypatch):
    """A loop that stops turning (held still with ptrace) stops the
    heartbeats to systemd's watchdog (so systemd restarts relayd if it
    stays stuck), with a warning naming it; when it turns again, they
    come back."""
    monkeypatch.delenv("RELAYD_SMTP_LOOPS", raising=False)
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")     # beats every 0.5 s
    try:
        d = relayd_factory(smtp={"loops": 2})

        def beats(seconds):
            """The notifications within seconds: (with WATCHDOG=1, all)."""
            n = w = 0
            deadline = time.monotonic() + seconds
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    return w, n
                m = sock.recv(4096).decode()
                n += 1
                w += "WATCHDOG=1" in m

        assert beats(1.5)[0] >= 2
        with frozen(thread_id(d.smtp_pid, "smtp loop 1")):
            d.wait_log(r"smtp loop 1: stuck for \d+\.\ds: no heartbeat to "
                       r"the watchdog while it is", 5)
            # The parent counts smtp's last beat for 2 s more.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                w, n = beats(0.6)
                if n and not w:
                    break
            else:
                pytest.fail("WATCHDOG=1 still sent with loop 1 stuck")
            w, n = beats(2)
            assert w == 0 and n >= 2, (w, n)
        d.wait_log(r"smtp loop 1: turning again", 5)
        assert beats(3)[0] >= 2
        assert d.send_one()
    finally:
        sock.close()
