"""relayd through power cuts: its spool on tests/powercutfs.py.

test_crash.py kills relayd with SIGKILL, but the kernel's page cache
outlives a killed process: a spool that forgot an fsync, or synced a file
and not the directory naming it, passes that test and loses mail when the
power fails. Here the spool lies on powercutfs, which keeps only what the
strictest reading of POSIX lets survive a power cut (contents as of their
last fsync/fdatasync, names once their directory was fsynced, a rename
between directories once both were). SMTP clients send continuously
(test_crash's Clients; one message in ten is 100 kB, more than relayd
holds in memory, so it is spilled into a segment file of its own) while
relayd delivers to the fake Graph, which answers after 20-80 ms. At random
moments (0.3 to 2.5 s of load apart) relayd is killed (SIGKILL), the power
is cut (powercutfs drops all that was not durable), the file system is
mounted again and relayd started on the survivor: 30 times with
powercutfs's rename rule "both", 10 with "each" (CUTS; bench/powercut runs
the same test with hundreds of cuts). Under "both" a rename from tmp/ to
queue/ survives once both directories were fsynced (the issue's reading),
under "each" once the directory holding the name was (as ext4 and xfs
behave). powercutfs has no O_TMPFILE, so relayd writes new
segments in tmp/ and renames them into queue/. At the end relayd drains
its queue and:

- lost: messages that got a 250 and never reached Graph. Must be 0.
- corrupt: deliveries whose subject or body differ from what was sent
  (the message was rebuilt from a damaged record). Must be 0.
- restarts: relayd must start after every cut (Relayd.start fails the
  test otherwise).
- duplicates: deliveries beyond the first. A repeat whose earlier delivery
  Graph took more than LATE s before a cut is "late": SIGKILL alone cannot
  kill); it comes from delivery progress that was not synced. relayd
  syncs it (the "D" mark and retry state, pwrites, and the removal of
  emptied segments) within PROGRESS_SYNC_MS (500 ms, relayd/spool.c), so
  there must be none.

The spool directory itself is made on the backing directory before the
first mount: relayd's own mkdir of spool_dir is never made durable (its
parent is not fsynced), which test_power_cut_after_first_start shows on
its own.

Storage faults (powercutfs's fault rules): a failed fdatasync or fsync of
queue/ must be answered 451, ENOSPC 452 4.3.1, with what was acknowledged
surviving a cut; a segment that cannot be read at start must not keep
relayd from starting, and a message that cannot be read at delivery is
deferred, not dropped (relayd reads the spool with pread, so a read error
is EIO, not SIGBUS).
"""
import hashlib
import json
import os
import random
import re
import time

import pytest

from relaydtest.load import Clients, latency_rules
from relaydtest.powercut import delivered_text, message, relayd_on
from relaydtest.smtp import simple
from relaydtest.wait import wait_for

CUTS = {"both": 30, "each": 10}     # power cuts per rename rule
RUN_BETWEEN = (0.3, 2.5)    # s of load between two cuts
LOAD_AFTER = 1.0            # s of load after the last restart
LATE = 2.0                  # s: a repeat of a delivery older than this at
                            # the cut comes from unsynced delivery progress
BIG_EVERY = 10              # one message in BIG_EVERY is spilled (100 kB)
DRAIN_TIMEOUT = 90
SUBJECT_RE = re.compile(r"^powercut (\d+-\d+)$")


def env_setting(name, default, kind=int):
    """RELAYD_POWERCUT_<name> from the environment (bench/powercut sets
    them for the long form), else default."""
    v = os.environ.get("RELAYD_POWERCUT_" + name)
    return default if v in (None, "") else kind(v)


def payload(token):
    """The text of a message: lines derived from its token, so that a
    delivery can be checked byte for byte against it."""
    n = int(token.split("-")[1])
    lines = 1500 if n % BIG_EVERY == 0 else 12
    h = hashlib.sha256(token.encode()).hexdigest()
    return "".join("%s %05d %s\n" % (token, i, h) for i in range(lines))


class PowerCutClients(Clients):
    def message(self, token, sender):
        return simple("powercut " + token, body=payload(token), frm=sender)


@pytest.mark.parametrize("rename_rule", ["both", "each"])
def test_power_cut_loses_no_acknowledged_mail(powercut, fake_graph,
                                              relayd_factory, rename_rule):
    """The short form (CUTS); bench/powercut runs the long one by setting
    RELAYD_POWERCUT_CUTS, _SEED, _PROGRESS (a line every so many cuts),
    _SYNC_METHOD ([queue] sync_method), _PAUSE (s a client waits between
    two messages; slower, a long run keeps no backlog), _DRAIN (s allowed
    for the drain) and _REPORT (a JSON file for the figures, written
    before the checks)."""
    ncuts = env_setting("CUTS", CUTS[rename_rule])
    every = env_setting("PROGRESS", 0)  # print a line every so many cuts
    drain = env_setting("DRAIN", DRAIN_TIMEOUT)
    queue = {"workers": 8,
             "sync_method": env_setting("SYNC_METHOD", "fdatasync", str)}
    seed = env_setting("SEED", random.randrange(1 << 30))
    rng = random.Random(seed)
    fake = fake_graph
    fake.faults(latency_rules())
    fs, d = relayd_on(powercut, relayd_factory, fake,
                      rename_rule=rename_rule, queue=queue)
    clients = PowerCutClients(d)
    clients.pause = env_setting("PAUSE", clients.pause, float)
    t_begin = time.monotonic()
    clients.start()
    cuts = []                       # wall clock of each cut
    restarts = 0
    for _ in range(ncuts):
        time.sleep(rng.uniform(*RUN_BETWEEN))
        d.kill()
        cuts.append(time.time())
        fs.cut()
        fs = powercut(rename_rule=rename_rule)
        d.start()                   # fails the test if relayd cannot
        restarts += 1
        if every and restarts % every == 0:
            print("powercut: %d of %d cuts, %.0f s, %d accepted"
                  % (restarts, ncuts, time.monotonic() - t_begin,
                     len(clients.accepted)), flush=True)
    time.sleep(LOAD_AFTER)
    load_s = time.monotonic() - t_begin
    clients.join()
    assert not clients.errors, clients.errors[:5]
    wait_for(lambda: d.queued() == [], drain,
             "relayd to drain its queue", interval=0.2)
    wait_for(lambda: fake.stats()["inflight"] == {}, 10,
             "no request in flight at the fake")

    by_token = {}                   # token -> [delivery time]
    corrupt = []
    for rec in fake.sent():
        subject, body = delivered_text(rec)
        m = SUBJECT_RE.match(subject)
        if not m:
            corrupt.append(subject)
            continue
        token = m.group(1)
        if body.rstrip("\n") != payload(token).rstrip("\n"):
            corrupt.append(token)
        by_token.setdefault(token, []).append(rec["time"])
    accepted = clients.accepted
    lost = sorted(t for t in accepted if t not in by_token)
    duplicates = sum(len(v) - 1 for v in by_token.values())
    late = []
    for token, times in by_token.items():
        times.sort()
        for first, again in zip(times, times[1:]):
            cut = max((c for c in cuts if first < c < again), default=None)
            if cut is not None and cut - first > LATE:
                late.append((token, round(cut - first, 1)))
    unacked = sum(1 for t in by_token if t not in accepted)
    dead = d.dead()
    report = {
        "rename_rule": rename_rule, "sync_method": queue["sync_method"],
        "seed": seed, "cuts": len(cuts),
        "restarts": restarts, "load_s": round(load_s, 1),
        "accepted": len(accepted), "delivered": len(by_token),
        "delivered_unacked": unacked, "unanswered": clients.unanswered,
        "lost": len(lost), "corrupt": len(corrupt),
        "duplicates": duplicates, "late": len(late),
        "late_messages": len({t for t, _ in late}),
        "most_deliveries": max(map(len, by_token.values()), default=0),
        "dead": len(dead), "lost_examples": lost[:10],
        "corrupt_examples": corrupt[:10], "late_examples": late[:10]}
    if os.environ.get("RELAYD_POWERCUT_REPORT"):
        with open(os.environ["RELAYD_POWERCUT_REPORT"], "w") as f:
            json.dump(report, f)
    print("\npowercut (rename rule %s): seed %d, %d cuts, %d restarts in "
          "%.1f s; accepted (250) %d, delivered %d distinct (+%d without a "
          "250, %d DATA unanswered), lost %d, corrupt %d, duplicates %d of "
          "which late (> %.0f s before a cut) %d, of %d messages; at most "
          "%d deliveries of one message; dead letters %d"
          % (rename_rule, seed, len(cuts), restarts, load_s, len(accepted),
             len(by_token), unacked, clients.unanswered, len(lost),
             len(corrupt), duplicates, LATE, len(late),
             report["late_messages"], report["most_deliveries"], len(dead)))
    assert len(cuts) == ncuts and len(accepted) > 0
    assert not lost, "%d messages with a 250 lost by power cuts (rename " \
        "rule %s): %s" % (len(lost), rename_rule, [
            "%s (queue id %s)" % (t, accepted[t]) for t in lost[:10]])
    assert not corrupt, "deliveries that differ from what was sent: %s" % (
        corrupt[:10],)
    assert dead == []
    assert not late, (
        "%d deliveries repeated after a power cut although Graph took them "
        "more than %.0f s before it (e.g. %s): delivery progress (the D "
        "mark, removal of emptied segments) was not synced in time"
        % (len(late), LATE, late[:5]))


def test_fsync_failure_is_a_temporary_error(powercut, fake_graph,
                                            relayd_factory):
    """A failed fdatasync of a segment or a failed fsync of queue/ is
    answered 451, a full disk 452 4.3.1, never 250; relayd goes on and
    never appends to a segment whose fdatasync failed; what it
    acknowledged survives a cut."""
    fake_graph.faults([{"kind": "graph", "status": 503, "count": -1}])
    fs, d = relayd_on(powercut, relayd_factory, fake_graph,
                      rename_rule="each")
    acked = [d.send_one(body=message(0))]
    cases = [
        (dict(op="fsync", path="spool/*", count=1), False, "451 4.3.0"),
        (dict(op="fsync", path="spool/*", count=1), True, "451 4.3.0"),
        (dict(op="fsync", path="spool/queue", dirs="only", count=1), True,
         "451 4.3.0"),
        (dict(op="write", after=100), False, "452 4.3.1"),
        (dict(op="write", after=100), True, "452 4.3.1"),
    ]
    for n, (fault, big, reply) in enumerate(cases, 1):
        segments = set(d.segments())
        fs.fault(**fault)
        with d.connect() as c:
            c.ehlo()
            r = c.send_mail(body=message(n, big))
            assert r.text.startswith(reply), (fault, big, r,
                                              fs.call("faults"))
        fs.clear_faults()
        qid = d.send_one(body=message(100 + n, big))
        acked.append(qid)
        if n == 1:
            # the segment whose fdatasync failed takes no more records
            assert qid in set(d.segments()) - segments, (qid, segments)
    d.kill()
    fs.cut()
    powercut(rename_rule="each")
    d.start()
    assert sorted(d.queued()) == sorted(acked)


def test_unreadable_segment_does_not_stop_relayd(powercut, fake_graph,
                                                 relayd_factory):
    """A segment that cannot be read (EIO, a bad sector) at start: relayd
    must still start and serve, say which file it could not read, and keep
    the file: once it reads again, its message is queued."""
    fake_graph.faults([{"kind": "graph", "status": 503, "count": -1}])
    fs, d = relayd_on(powercut, relayd_factory, fake_graph)
    qid = d.send_one(body=message(1))
    d.stop()
    fs.fault("read", path="spool/queue/*")
    try:
        d.start()
    except AssertionError:
        d.expect_dead = True
        raise
    # (assert_serves would read the unreadable file itself)
    d.send_one(body=message(2))
    d.assert_alive(0)
    d.wait_log(r"cannot read queue/%s at byte 0: Input/output error; the "
               r"file stays" % qid)
    assert (d.queue_dir / qid).exists()
    fs.clear_faults()
    d.restart()
    assert qid in d.queued()


def test_unreadable_message_is_deferred(powercut, fake_graph,
                                        relayd_factory):
    """EIO reading a queued message at delivery: that message is deferred,
    logged with its queue id, never dropped (not dead-lettered), and other
    deliveries go on; once it reads again it is delivered."""
    fake_graph.faults([{"kind": "graph", "status": 503, "count": -1}])
    fs, d = relayd_on(powercut, relayd_factory, fake_graph)
    bad = d.send_one(body=message(1))
    d.restart()                 # what comes next goes to a new segment
    # The restarted relayd reads the message for its first attempt (503)
    # before the read fault is set; the attempt forced after it must fail
    # to read.
    d.wait_log(r"%s .*deferred" % bad)
    fs.fault("read", path="spool/queue/" + bad)
    fake_graph.faults([])
    d.relayctl("retry", bad, check=True)
    d.wait_log(r"%s .*cannot read: Input/output error" % bad)
    d.send_one(body=message(2))
    # (d.queued() would read the unreadable file itself)
    wait_for(lambda: fake_graph.sent(), 10, "the readable message to be "
             "delivered")
    subjects = [delivered_text(r)[0] for r in fake_graph.sent()]
    assert subjects == ["fault 2"], subjects
    assert d.dead() == []
    d.assert_alive()
    fs.clear_faults()
    assert bad in d.queued()
    d.relayctl("retry", bad)
    wait_for(lambda: d.queued() == [], 10, "the deferred message to be "
             "delivered once it reads")
    assert sorted(delivered_text(r)[0] for r in fake_graph.sent()) == [
        "fault 1", "fault 2"]


def test_power_cut_after_first_start(powercut, fake_graph, relayd_factory):
    """relayd makes spool_dir itself (the default /var/lib/relayd/spool
    lies in systemd's StateDirectory): what it acknowledged must survive a
    power cut soon after, which needs the new directory's name synced."""
    fake_graph.faults([{"kind": "graph", "status": 503, "count": -1}])
    fs, d = relayd_on(powercut, relayd_factory, fake_graph,
                      rename_rule="each", make_spool=False)
    acked = [d.send_one(body=message(n)) for n in range(3)]
    d.kill()
    fs.cut()
    powercut(rename_rule="each")
    d.start()
    assert sorted(d.queued()) == sorted(acked), (
        "a power cut after relayd created spool_dir lost what it had "
        "acknowledged: spool_open() does not fsync spool_dir's parent "
        "after mkdir (relayd/spool.c)")
