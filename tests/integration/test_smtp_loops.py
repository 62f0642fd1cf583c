"""SMTP sessions on several event loops (issue 19, a prototype).

RELAYD_SMTP_LOOPS (environment, tests only) spreads the sessions over that
many loops: loop 0 accepts and hands clients round robin to the others;
their commits come back to the loop that made them, and their counters
and departures to loop 0.
"""
import os
import re
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


def received(d):
    m = re.search(r"^relayd_messages_received_total (\d+)$",
                  d.relayctl("metrics", check=True).stdout, re.M)
    return int(m.group(1))


def test_sessions_on_two_loops(relayd_factory, monkeypatch):
    monkeypatch.delenv("RELAYD_SMTP_LOOPS", raising=False)
    one = relayd_factory(name="one")
    base = threads(one.smtp_pid)
    one.stop()
    monkeypatch.setenv("RELAYD_SMTP_LOOPS", "2")
    d = relayd_factory(name="two")
    assert "smtp: 2 event loops (RELAYD_SMTP_LOOPS)" in d.log
    assert threads(d.smtp_pid) == base + 1
    replies = []
    ts = [threading.Thread(target=client, args=(d.port, n, replies))
          for n in range(CLIENTS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert len(replies) == CLIENTS * PER_CLIENT
    assert all(code == 250 for code, _ in replies)
    qids = re.findall(r"^\S* ?.*?([0-9A-F]{16}) smtp queued ", d.log, re.M)
    assert len(set(qids)) == CLIENTS * PER_CLIENT, qids
    # Every message was answered 250 and counted once, on loop 0.
    wait_for(lambda: received(d) == CLIENTS * PER_CLIENT, 10,
             "received_total %d" % (CLIENTS * PER_CLIENT))
    # Sessions of both loops reported their departure to loop 0.
    wait_for(lambda: d.ctl("status")["connections"] == 0, 5, "no sessions")


def test_loops_out_of_range(relayd_factory, monkeypatch):
    monkeypatch.setenv("RELAYD_SMTP_LOOPS", "0")
    d = relayd_factory(start=False)
    with pytest.raises(AssertionError, match="exited with 71 at start"):
        d.start()
    d.expect_dead = True
    assert "RELAYD_SMTP_LOOPS=0: give 1 to 64" in d.log
