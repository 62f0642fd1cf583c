"""relayctl import DIR (issue 20, "A dead node's queue"): a stopped or dead
relayd's spool is taken into a running relayd's, each message durable
here before it is marked done there, against the real daemons and the
fake Graph.

The source spool is made by a relayd of its own: first with a Graph that
refuses every From: (so dead letters), then without [graph] (it only
queues), stopped or SIGKILLed.
"""
import random
import re
import subprocess
import time

from relaydtest.daemon import process_children
from relaydtest.env import RELAYCTL_BIN
from relaydtest.graph import graph_relayd, graph_sections
from relaydtest.smtp import simple, smtp_send
from relaydtest.wait import wait_for

TIMEOUT = 20
NOT_MINE = "ceo@contoso.test"       # a From: the fake refuses when strict


def subjects(fake):
    return [rec["body"]["message"]["subject"] for rec in fake.sent()]


def dead_source(relayd_factory, fake, n):
    """A node that dead-lettered n messages ("dead i"); stopped."""
    fake.config(send_as_deny="strict")
    a = graph_relayd(relayd_factory, fake)
    for i in range(n):
        smtp_send(a, simple("dead %d" % i, frm=NOT_MINE))
    wait_for(lambda: len([f for f in a.dead() if "." not in f]) == n,
             TIMEOUT, "%d dead letters" % n)
    a.stop()
    fake.config(send_as_deny=None)
    return a.spool


def queue_source(relayd_factory, spool, n, name="node", runs=1):
    """A node without [graph] on spool holding n queued messages
    ("queued i"), SIGKILLed as a failing node would be; killed and
    started again runs times on the way (each run writes segments of its
    own)."""
    b = relayd_factory(spool_dir=spool, name=name)
    for i in range(n):
        if i > 0 and i % (n // runs) == 0:
            b.kill()
            b.start()
        smtp_send(b, simple("queued %d" % i))
    b.kill()
    return b


def import_again(d, where, kept, n):
    """The files kept put back in where (src/queue or src/dead), as a
    crash or a snapshot would leave them, and imported again: all n are
    known as taken before."""
    for name, data in kept.items():
        (where / name).write_bytes(data)
    src = where.parent
    r = d.relayctl("import", str(src))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "%s: 0 queued message(s) and 0 dead letter(s) " \
        "imported, %d taken before (an import that was cut short)\n" \
        % (src, n), r.stdout


def test_import_moves_queue_and_dead_letters(relayd_factory,
                                             shared_fake_graph):
    fake = shared_fake_graph
    src = dead_source(relayd_factory, fake, 2)
    queue_source(relayd_factory, src, 20)
    fake.reset()
    d = graph_relayd(relayd_factory, fake)
    kept = {f.name: f.read_bytes() for f in (src / "dead").iterdir()}
    r = d.relayctl("import", str(src))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("%s: 20 queued message(s) and 2 dead "
                               "letter(s) imported" % src), r.stdout
    wait_for(lambda: len(fake.sent()) >= 20, TIMEOUT, "20 sent")
    time.sleep(0.5)
    got = subjects(fake)
    assert sorted(got) == sorted("queued %d" % i for i in range(20)), got
    # the dead letters are this relayd's now, with their reasons
    r = d.relayctl("dead")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("reason:     Graph refused it: 403") == 2, r.stdout
    # nothing is left there: a second import finds nothing
    assert list((src / "queue").iterdir()) == []
    assert [p.name for p in (src / "dead").iterdir()] == []
    r = d.relayctl("import", str(src))
    assert r.returncode == 0, r.stderr
    assert "0 queued message(s) and 0 dead letter(s)" in r.stdout
    # relayctl killed after relayd took the dead letters, before it
    # removed them there: they are recognised, not taken twice
    import_again(d, src / "dead", kept, 2)
    assert d.relayctl("dead").stdout.count("reason:     ") == 2
    assert [p.name for p in (src / "dead").iterdir()] == []


def test_import_refuses_a_running_relayds_spool(relayd_factory, tmp_path):
    a = relayd_factory(name="alive")
    d = relayd_factory(name="survivor")
    r = d.relayctl("import", str(a.spool))
    assert r.returncode == 1
    # the pid of the process that holds the lock: a's delivery process
    m = re.search(r"is locked by a running relayd \(pid (\d+)\)", r.stderr)
    assert m and int(m.group(1)) in process_children(a.pid), r.stderr
    assert "stop it first" in r.stderr
    # not a spool at all
    (tmp_path / "empty").mkdir()
    r = d.relayctl("import", str(tmp_path / "empty"))
    assert r.returncode == 1
    assert "is not a relayd spool" in r.stderr, r.stderr
    # this relayd not running
    d.stop()
    a.stop()
    r = d.relayctl("import", str(a.spool))
    assert r.returncode == 69, r.stderr
    assert "is relayd running?" in r.stderr, r.stderr


def test_import_killed_at_random_points(relayd_factory, shared_fake_graph):
    """kill -9 of the importing relayd at random moments, restart, import
    again until nothing is left: nothing lost, nothing twice. The
    survivor queues only while it is killed (a relayd killed while Graph
    takes a message sends it again: that is not the import's doing),
    then delivers with [graph]."""
    n = 300
    fake = shared_fake_graph
    src = relayd_factory(name="src", start=False).spool
    queue_source(relayd_factory, src, n, name="node", runs=30)
    d = relayd_factory(name="survivor")
    rng = random.Random(20)
    kills = 0
    for attempt in range(40):
        p = subprocess.Popen(
            [str(RELAYCTL_BIN), "-s", d.sections["status"]["socket"],
             "import", str(src)], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        # the first imports are killed at a random moment (if still
        # running), the later ones may finish
        if attempt < 15:
            time.sleep(rng.uniform(0.0, 0.03))
        if attempt < 15 and p.poll() is None:
            d.kill()
            kills += 1
            p.communicate(timeout=TIMEOUT)
            d.start()
            continue
        out, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, (out, err)
        if out.startswith("%s: 0 queued" % src):
            break
    else:
        raise AssertionError("the import never finished")
    assert kills > 2
    assert list((src / "queue").iterdir()) == []
    d.stop()
    sections = graph_sections(fake)
    sections["queue"] = {"retry_min": "200ms", "messages_per_minute": "0"}
    e = relayd_factory(name="delivers", spool_dir=d.spool, sections=sections)
    # records imported before a kill wait their grace after a restart
    assert e.relayctl("retry", "all").returncode == 0
    wait_for(lambda: len(fake.sent()) >= n, TIMEOUT, "%d sent" % n)
    time.sleep(1)
    got = subjects(fake)
    twice = sorted(s for s in set(got) if got.count(s) > 1)
    assert twice == [], "sent twice: %s" % twice
    assert sorted(got) == sorted("queued %d" % i for i in range(n))


def test_import_again_of_a_restored_queue_takes_nothing_twice(
        relayd_factory, shared_fake_graph):
    """The source's queue put back as it was before the import (its marks
    lost: the dead node's disk from a snapshot, say), into the same
    relayd: every message is known as taken before, also after this
    relayd delivered it (the source ids imported are kept as imports
    commit, not read again from records of ours that are gone)."""
    fake = shared_fake_graph
    src = relayd_factory(name="src", start=False).spool
    queue_source(relayd_factory, src, 20, name="node", runs=4)
    kept = {f.name: f.read_bytes() for f in (src / "queue").iterdir()}
    fake.reset()
    d = graph_relayd(relayd_factory, fake)
    r = d.relayctl("import", str(src))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("%s: 20 queued message(s)" % src), r.stdout
    wait_for(lambda: len(fake.sent()) >= 20 and d.queued() == [], TIMEOUT,
             "20 sent, none left here")
    import_again(d, src / "queue", kept, 20)
    time.sleep(1)
    assert sorted(subjects(fake)) == sorted("queued %d" % i
                                            for i in range(20))
    assert d.queued() == []


def test_import_leaves_a_damaged_record_and_says_so(relayd_factory,
                                                    shared_fake_graph):
    fake = shared_fake_graph
    src = relayd_factory(name="src", start=False).spool
    queue_source(relayd_factory, src, 3)
    [seg] = sorted((src / "queue").iterdir())
    data = bytearray(seg.read_bytes())
    # the third record's end marker overwritten: it is damaged
    end = data.rindex(b"RELAYD-END ")
    data[end:end + 10] = b"XXXXXXXXXX"
    seg.write_bytes(bytes(data))
    d = graph_relayd(relayd_factory, fake)
    r = d.relayctl("import", str(src))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "%s: 2 queued message(s) and 0 dead letter(s) " \
        "imported" % src, r.stdout
    assert lines[1].startswith("%s: 1 skipped (damaged: left in %s), 0 "
                               "failed" % (src, src)), r.stdout
    assert "first: queue/%s at byte " % seg.name in lines[1], lines[1]
    wait_for(lambda: len(fake.sent()) >= 2, TIMEOUT, "2 sent")
    assert sorted(subjects(fake)) == ["queued 0", "queued 1"]
    # the damaged segment stays there for the admin
    assert seg.exists()


INFLIGHT = "in flight when delivery stopped: it may have gone out"


def test_import_keeps_that_a_message_was_in_flight(relayd_factory):
    """A record the dead node was sending when it died (its state line
    says so) stays a possible duplicate here: the note is kept."""
    src = relayd_factory(name="src", start=False).spool
    queue_source(relayd_factory, src, 2)
    [seg] = sorted((src / "queue").iterdir())
    data = bytearray(seg.read_bytes())
    at = data.index(b" error=") + len(b" error=")
    data[at:at + len(INFLIGHT)] = INFLIGHT.encode()
    seg.write_bytes(bytes(data))
    d = relayd_factory(name="survivor")
    r = d.relayctl("import", str(src))
    assert r.returncode == 0, r.stderr
    errors = sorted(rec.error for rec in d.records())
    assert errors == ["", INFLIGHT], errors
