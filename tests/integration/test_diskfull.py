"""A full disk under relayd's spool (issue 17), on tests/powercutfs.py:
its "write" fault answers ENOSPC once a given number of bytes more were
written, to every file under a path, as a file system out of space does.

- While relayd commits a message: that message gets 452 4.3.1, never 250,
  nothing of it is ever delivered (not even after a restart and a power
  cut), and intake goes on by itself once the space is back: the next
  message gets 250 with no restart.
- While relayd rewrites delivery state (a state line, "delivered") and
  syncs it: nothing is lost; at worst a message is sent again after a
  power cut.
- While relayd writes a dead letter (dead/<qid> and its .reason): the
  message stays queued, nothing partial is left in dead/, and once the
  space is back relayd dead-letters it without a restart.
"""
import time

import pytest

from relaydtest.powercut import delivered_text, message, relayd_on
from relaydtest.wait import wait_for

SETTLE = 1.5    # s: delivery progress is durable within 0.5 s (spool.c)
REFUSE = {"kind": "graph", "status": 400, "code": "ErrorInvalidRecipients",
          "message": "At least one recipient is not valid.", "count": -1}


def subjects(fake):
    return sorted(delivered_text(r)[0] for r in fake.sent())


def assert_intact(fake, numbers, big=(), once=True):
    """fake got a whole copy of each message in numbers (only one if once)
    and nothing else."""
    got = {}
    for rec in fake.sent():
        subject, body = delivered_text(rec)
        assert not (once and subject in got), "%s delivered twice" % subject
        got[subject] = body
    assert sorted(got) == sorted("fault %d" % n for n in numbers)
    for n in numbers:
        text = message(n, n in big).decode().split("\r\n\r\n", 1)[1]
        assert got["fault %d" % n].rstrip("\n") == \
            text.replace("\r\n", "\n").rstrip("\n"), \
            "message %d delivered with other bytes than were sent" % n


# (bytes written before ENOSPC, a big message spilled to its own file?)
COMMIT_FAULTS = [(0, False), (40, False), (300, False), (0, True),
                 (1000, True), (70000, True), (120000, True)]


def test_disk_full_at_commit(powercut, fake_graph, relayd_factory):
    """ENOSPC while a message is committed: 452 4.3.1 for it, the next one
    250 as soon as there is space (same relayd), and what Graph gets in
    the end is exactly the acknowledged messages, byte for byte."""
    fs, d = relayd_on(powercut, relayd_factory, fake_graph,
                      rename_rule="both")
    assert d.relayctl("pause").returncode == 0   # no state writes meanwhile
    acked, big = [], set()
    for n, (after, is_big) in enumerate(COMMIT_FAULTS, 1):
        fs.fault("write", path="spool/*", after=after)
        with d.connect() as c:
            c.ehlo()
            r = c.send_mail(body=message(n, is_big))
            assert r.text.startswith("452 4.3.1"), (after, is_big, r)
        fs.clear_faults()
        good = 100 + n
        d.send_one(body=message(good, is_big))      # no restart
        acked.append(good)
        if is_big:
            big.add(good)
    d.assert_alive(0)
    assert d.relayctl("resume").returncode == 0
    wait_for(lambda: len(fake_graph.sent()) >= len(acked), 20,
             "the acknowledged messages to be delivered")
    wait_for(lambda: d.queued() == [], 10, "an empty queue")
    time.sleep(SETTLE)
    # Whatever a restart on the survivor of a power cut finds must not
    # bring back one of the refused messages, whole or in part.
    d.kill()
    fs.cut()
    powercut(rename_rule="both")
    d.start()
    d.send_one(body=message(999))
    wait_for(lambda: d.queued() == [], 20, "an empty queue after the cut")
    assert_intact(fake_graph, acked + [999], big)
    assert d.dead() == []


@pytest.mark.parametrize("sync_fails", [False, True],
                         ids=["write", "write+sync"])
def test_disk_full_while_recording_progress(powercut, fake_graph,
                                            relayd_factory, sync_fails):
    """ENOSPC while relayd records delivery progress (the "delivered" marks
    of the messages Graph took and the retry state of those it deferred),
    and with write+sync its fdatasyncs and fsyncs fail with ENOSPC too.
    Nothing is lost: after a power cut the deferred ones are still queued
    and are delivered, whole, as are all others (at worst twice)."""
    fake_graph.faults([{"kind": "graph", "mailbox": "later@a.test",
                        "status": 503, "count": -1}])
    fs, d = relayd_on(powercut, relayd_factory, fake_graph,
                      rename_rule="each")
    assert d.relayctl("pause").returncode == 0
    numbers = list(range(1, 9))
    later = [n for n in numbers if n % 2]
    for n in numbers:
        d.send_one(mail_from="later@a.test" if n in later else
                   "sender@a.test", body=message(n, n % 4 == 0))
    fs.fault("write", path="spool/queue/*", after=0)
    if sync_fails:
        fs.fault("fsync", path="spool/queue*", errno="ENOSPC", dirs=True)
    assert d.relayctl("resume").returncode == 0
    wait_for(lambda: len(subjects(fake_graph)) == len(numbers) - len(later),
             20, "the other messages to reach Graph")
    d.wait_log(r"cannot mark it done")
    d.wait_log(r"cannot write its state")
    time.sleep(SETTLE)
    d.kill()
    fs.cut()
    powercut(rename_rule="each")
    fake_graph.faults([])
    d.start()
    wait_for(lambda: d.queued() == [], 20, "an empty queue after the cut")
    assert_intact(fake_graph, numbers, {n for n in numbers if n % 4 == 0},
                  once=False)
    assert d.dead() == []


@pytest.mark.parametrize("after", [0, 3000], ids=["reason", "copy"])
def test_disk_full_while_dead_lettering(powercut, fake_graph, relayd_factory,
                                        after):
    """ENOSPC while relayd writes dead/<qid>.reason (after=0) or the copy
    of the record (after=3000 bytes): the message stays queued, dead/ holds
    nothing of it, and once there is space again relayd dead-letters it
    by itself; after a power cut it is still there."""
    fake_graph.faults([REFUSE])
    fs, d = relayd_on(powercut, relayd_factory, fake_graph,
                      rename_rule="both", queue={"retry_max": "1s"})
    fs.fault("write", path="spool/dead/*", after=after)
    qid = d.send_one(body=message(1, big=True))
    d.wait_log(r"%s spool: cannot (write|copy it to) dead/" % qid)
    time.sleep(0.5)                 # a retry or two, still without space
    # (a retry may be writing its temporary .QID.tmp right now; what must
    # never be there is the letter or its reason)
    assert [p.name for p in d.dead_dir.iterdir()
            if not p.name.startswith(".")] == [], "a partial dead letter"
    assert qid in d.queued()
    fs.clear_faults()
    wait_for(lambda: sorted(d.dead()) == [qid, qid + ".reason"], 20,
             "the message to be dead-lettered once there is space")
    wait_for(lambda: d.queued() == [], 10, "an empty queue")
    assert "ErrorInvalidRecipients" in (d.dead_dir / (qid + ".reason")
                                        ).read_text()
    time.sleep(SETTLE)
    d.kill()
    fs.cut()
    powercut(rename_rule="both")
    d.start()
    assert sorted(d.dead()) == [qid, qid + ".reason"]
    assert d.queued() == []
    assert fake_graph.sent() == []
