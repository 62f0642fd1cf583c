"""A spool written by an older relayd is recovered and delivered as it was.

tests/data/spool-v2/ was written by relayd before the record format moved
into spool_record.c (main at b21f6c3), see its README.md: queue/ holds a
segment of three records (delivered D, deferred Q with its retry state,
dead-lettered X) and one of three queued records (delivery off, two with
ESMTP parameters or several recipients, one with a null sender); dead/
the dead letter of the X record. The bytes must keep reading the same."""
import shutil

from relaydtest.env import SRCDIR
from relaydtest.graph import graph_relayd
from relaydtest.wait import wait_for

FIXTURE = SRCDIR / "tests" / "data" / "spool-v2"
DEFERRED = "661F674056CAD000"       # Q, attempts 1, after a 503
QUEUED = ["661F68DFA44A2000", "661F68DFA4942000", "661F68DFA52D5000"]
DEAD = "661F6740572AE000"


def plant(d):
    shutil.copytree(FIXTURE, d.spool, ignore=shutil.ignore_patterns(
        "README.md"))
    for p in [d.spool, *d.spool.rglob("*")]:
        p.chmod(0o700 if p.is_dir() else 0o600)


def test_old_spool_recovers_and_delivers(relayd_factory, fake_graph):
    # Delivery off: the four queued messages are found, none set aside,
    # and each one's bytes read back.
    d = relayd_factory(start=False)
    plant(d)
    d.start()
    d.wait_log(r"spool: 4 queued message\(s\) found")
    assert "corrupt" not in d.log and not d.corrupt_dir.exists()
    r = d.relayctl("queue")
    assert "4 message(s) wait in the spool" in r.stdout + r.stderr, r
    exports = {}
    for qid in [DEFERRED] + QUEUED:
        r = d.relayctl("export", qid)
        assert r.returncode == 0, (qid, r.stderr)
        exports[qid] = r.stdout
    assert "Subject: two\n\nsecond\n" in exports[DEFERRED]
    # dot-unstuffed as received (relayctl reads text: CRLF shows as LF)
    assert "Subject: four\n\n.dot-stuffed line\nfourth\n" in \
        exports[QUEUED[0]]
    assert exports[QUEUED[1]].endswith("Subject: five\n\nfifth\n")
    r = d.relayctl("dead")
    assert DEAD in r.stdout and "three" in r.stdout, r
    d.stop()
    # Reading rewrote nothing.
    for seg in ("661F674055F80000", "661F68DFA44A2000"):
        assert (d.queue_dir / seg).read_bytes() == \
            (FIXTURE / "queue" / seg).read_bytes(), seg

    # Delivery on, same spool: the deferred one keeps its attempt, and
    # every message goes as it was received.
    # It starts paused (as after `relayctl pause`): its due time passed
    # long ago, and delivered it would be gone before show sees it.
    g = graph_relayd(relayd_factory, fake_graph, start=False)
    g.spool = d.spool
    (g.spool / "paused").write_text("test\n")
    g.start()
    r = g.relayctl("show", "--json", DEFERRED)
    assert '"attempts":1' in r.stdout.replace(" ", ""), r
    g.relayctl("resume", check=True)
    sent = fake_graph.wait_sent(3)
    got = sorted((m["mailbox"], m["subject"]) for m in sent)
    assert got == [("b@a.test", "two"), ("carol@a.test", "four"),
                   ("frank@a.test", "five")], got
    four = next(m for m in sent if m["subject"] == "four")
    assert sorted(a["emailAddress"]["address"] for a in
                  four["body"]["message"]["bccRecipients"]) == \
        ["dave@b.test", "erin@c.test"]
    # The null sender without a From: is refused, as the first was.
    wait_for(lambda: QUEUED[2] in g.relayctl("dead").stdout, 10,
             "the null-sender message dead-lettered")
    wait_for(lambda: g.ctl("status")["queue"]["queued"] == 0, 10,
             "an empty queue")
