"""SMTP sessions on several event loops: [smtp] loops.

Loop 0 accepts and hands clients round robin to the loops; their commits
come back to the loop that made them, and their counters and departures
to loop 0. RELAYD_SMTP_LOOPS overrides the key (tests/tsan-run runs the
SMTP test files on 2 loops with it).
"""
import os
import re
import signal
import smtplib
import threading
import time

import pytest

from relaydtest.smtp import QUEUED_RE

CLIENTS = 8
PER_CLIENT = 5


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


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
