"""Delivery holds and relayctl's actions on them (issue 16): the real daemon,
the real relayctl and the fake Graph.

1. One mailbox's own 503s hold only that mailbox; 503s from two mailboxes
   hold everything (test_retry.py has the Graph-wide probe in detail).
2. retry ID on a message waiting on a mailbox's hold says so, and what
   lifts it; retry --mailbox lifts it.
3. hold ID on a message in flight: the hold wins before the request goes,
   else relayctl says it is being sent now, never "held".
4. hold, release, retry, delete take ID, all, --mailbox, --sender; queue
   takes the filters too; replies count what was done to each kind.
5. pause and resume: no new request while paused, across a restart.
6. queue shows each waiting message's hold and its end.

Times come from the fake's request records (started(): when it began to
read a request) and the wall clock; lower bounds exact, upper generous.
"""
import json
import os
import pwd
import re
import time

from relaydtest.delivery import (DELIVERY_TIMEOUT, MAILBOX_A, MAILBOX_B,
                                 graph_requests, send_many, started)
from relaydtest.graph import graph_relayd
from relaydtest.smtp import simple, smtp_send
from relaydtest.wait import holds, wait_for

MAILBOX_C = "scanner-c@contoso.test"
TIMEOUT = 15
ISO_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"


def queue(d, *filters):
    return {m["id"]: m for m in d.ctl(" ".join(("queue",) + filters))[
        "queue"]}


def wait_state(d, qid, state, timeout=TIMEOUT):
    wait_for(lambda: queue(d).get(qid, {}).get("state") == state, timeout,
             "%s %s" % (qid, state))
    return queue(d)[qid]


def iso_ts(text):
    """An ISO 8601 UTC time of the status socket as a Unix time."""
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")) - \
        time.timezone


def faulty_relayd(relayd_factory, fake, *rules):
    """A daemon delivering to fake, which answers by these fault rules."""
    fake.faults(list(rules))
    return graph_relayd(relayd_factory, fake)


def send_from(d, mailbox, subject):
    return smtp_send(d, simple(subject, frm=mailbox), mail_from=mailbox)


# --------------------------------------------------------------------------
# 1. a mailbox's own failures hold that mailbox, not Graph

def test_one_mailbox_503s_hold_only_that_mailbox(relayd_factory,
                                                 shared_fake_graph):
    fake = shared_fake_graph
    d = faulty_relayd(relayd_factory, fake, {
        "kind": "graph", "mailbox": MAILBOX_A, "status": 503,
        "retry_after": None, "count": -1})
    send_from(d, MAILBOX_A, "A 0")
    d.wait_log(r"graph mailbox unavailable: mailbox=%s 3 failures in a "
                   r"row, only this mailbox's; its deliveries wait 5\.0s, "
                   r"then one request probes" % re.escape(MAILBOX_A),
                   DELIVERY_TIMEOUT)
    fails = graph_requests(fake, MAILBOX_A)
    assert [r["status"] for r in fails] == [503] * 3
    hold_end = fails[-1]["time"] + 5.0
    a1 = send_from(d, MAILBOX_A, "A 1")
    # B is not A: it goes at once while A is held
    t0 = time.time()
    b0 = send_from(d, MAILBOX_B, "B 0")
    [rec] = fake.wait_sent(1, TIMEOUT)
    assert rec["mailbox"] == MAILBOX_B
    [b_req] = graph_requests(fake, MAILBOX_B)
    waited = started(b_req) - t0
    assert waited < 1.0, waited
    assert started(b_req) < hold_end
    st = d.ctl("status")
    assert st["delivery"] == "on" and "graph unavailable:" not in d.log
    assert st["throttled_mailboxes"] == []      # not Graph's throttling
    # queue: A's messages wait on the mailbox's hold, with its end
    q = queue(d)
    assert b0 not in q or q[b0]["state"] == "in flight"
    assert q[a1]["state"] == "throttled", q[a1]
    assert q[a1]["hold"] == "mailbox unavailable"
    assert abs(iso_ts(q[a1]["hold_until"]) - hold_end) < 2.0, (q[a1],
                                                               hold_end)
    table = d.relayctl("queue").stdout
    assert re.search(r"^ +waits: mailbox unavailable until %s$"
                     % re.escape(q[a1]["hold_until"]), table, re.M), table
    # then one request probes, still 503: the hold doubles
    d.wait_log(r"graph mailbox unavailable: mailbox=%s 4 failures in a "
               r"row, only this mailbox's; its deliveries wait 10\.0s"
               % re.escape(MAILBOX_A), 15)
    after = [r for r in graph_requests(fake, MAILBOX_A)
             if started(r) >= hold_end - 0.05]
    assert len(after) == 1, after
    assert all(started(r) >= hold_end for r in after), (hold_end, after)
    # the probe went alone: nothing else of A's in flight with it
    time.sleep(0.3)
    assert len(graph_requests(fake, MAILBOX_A)) == 4
    # retry --mailbox lifts A's hold; Graph answers again
    fake.faults([])
    r = d.relayctl("retry", "--mailbox", MAILBOX_A)
    assert r.returncode == 0, r.stderr
    assert "2 matched: 2 to be tried now; 1 mailbox hold(s) lifted" in \
        r.stdout, r.stdout
    fake.wait_sent(3, TIMEOUT)
    wait_for(lambda: not queue(d), TIMEOUT, "an empty queue")
    d.wait_log(r"graph mailbox answering again: mailbox=%s"
               % re.escape(MAILBOX_A), TIMEOUT)


def test_503s_from_two_mailboxes_hold_everything(relayd_factory,
                                                 shared_fake_graph):
    fake = shared_fake_graph
    d = faulty_relayd(relayd_factory, fake, {
        "kind": "graph", "status": 503, "retry_after": None, "count": -1})
    send_many(d, [(MAILBOX_A, "A 0", MAILBOX_A),
                  (MAILBOX_B, "B 0", MAILBOX_B)])
    d.wait_log(r"graph unavailable: 3 failures in a row; all deliveries "
               r"wait 5\.0s", DELIVERY_TIMEOUT)
    n = len(graph_requests(fake))
    # a third mailbox waits too, and queue says on what
    c0 = send_from(d, MAILBOX_C, "C 0")
    m = wait_state(d, c0, "graph held")
    assert m["hold"] == "Graph-wide" and re.match(ISO_RE, m["hold_until"])
    st = d.ctl("status")
    assert st["delivery"] == "held: Graph unavailable"
    assert abs(iso_ts(m["hold_until"]) - iso_ts(st["graph_resume"])) <= 1
    # retry C0 says why it still waits
    r = d.relayctl("retry", c0)
    assert r.returncode == 1
    assert "Graph unavailable for several mailboxes: every delivery waits " \
        "until" in r.stderr and "relayctl retry all lifts the hold" in \
        r.stderr, r.stderr
    holds(lambda: len(graph_requests(fake)) <= n + 1, 1.0,
          "a request during the Graph-wide hold")
    assert "graph mailbox unavailable" not in d.log


# --------------------------------------------------------------------------
# 2. retry tells the truth

def test_retry_on_throttled_mailbox_says_so(relayd_factory,
                                            shared_fake_graph):
    fake = shared_fake_graph
    d = faulty_relayd(relayd_factory, fake, {
        "kind": "graph", "mailbox": MAILBOX_A, "status": 429,
        "retry_after": "300"})
    a0 = send_from(d, MAILBOX_A, "A 0")
    wait_for(lambda: d.ctl("status")["throttled_mailboxes"], TIMEOUT,
             "a throttled mailbox")
    a1 = send_from(d, MAILBOX_A, "A 1")
    m = wait_state(d, a1, "throttled")
    assert m["hold"] == "mailbox throttled"
    until = iso_ts(m["hold_until"])
    assert 290 < until - time.time() <= 301, m
    r = d.relayctl("retry", a1)
    assert r.returncode == 1, r
    assert "tried now" not in r.stdout
    assert re.search(r"mailbox %s throttled by Graph until %sZ; relayctl "
                     r"retry --mailbox %s lifts the hold"
                     % (re.escape(MAILBOX_A), ISO_RE, re.escape(MAILBOX_A)),
                     r.stderr), r.stderr
    holds(lambda: len(graph_requests(fake)) == 1, 1.0,
          "retry ID lifted the mailbox's hold")
    assert queue(d)[a0]["hold"] == "mailbox throttled"
    # the way out it named
    r = d.relayctl("retry", "--mailbox", MAILBOX_A.upper())
    assert r.returncode == 0 and "2 matched: 2 to be tried now; 1 " \
        "mailbox hold(s) lifted" in r.stdout, r
    fake.wait_sent(2, TIMEOUT)


# --------------------------------------------------------------------------
# 3. hold tells the truth

def test_hold_in_flight_being_sent_is_not_held(relayd_factory,
                                               shared_fake_graph):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake)
    send_from(d, MAILBOX_A, "warm up")      # the token is had
    fake.wait_sent(1, TIMEOUT)
    fake.config(latency_ms=2000)
    qid = send_from(d, MAILBOX_A, "slow")
    wait_state(d, qid, "in flight")
    time.sleep(0.5)                         # the POST is at the fake now
    r = d.relayctl("hold", qid)
    assert r.returncode == 1, r
    assert "being sent now: it cannot be held" in r.stderr, r.stderr
    assert "held" not in r.stdout
    sent = fake.wait_sent(2, TIMEOUT)
    assert sent[-1]["subject"] == "slow"
    wait_for(lambda: qid not in queue(d), TIMEOUT, "%s delivered" % qid)
    assert "%s held by relayctl" % qid not in d.log
    # in bulk the same is counted as such
    qid = send_from(d, MAILBOX_A, "slow 2")
    wait_state(d, qid, "in flight")
    time.sleep(0.5)
    r = d.relayctl("hold", "all")
    assert r.returncode == 0 and "1 matched: held 0, 1 being sent now" in \
        r.stdout, r


def test_hold_before_the_request_wins(relayd_factory, shared_fake_graph):
    """The token takes 2 s: a hold in that time keeps the request from
    going at all."""
    fake = shared_fake_graph
    d = faulty_relayd(relayd_factory, fake,
                      {"kind": "token", "delay_ms": 2000})
    qid = send_from(d, MAILBOX_A, "hold me first")
    wait_state(d, qid, "in flight")
    r = d.relayctl("hold", qid)
    assert r.returncode == 0 and r.stdout == "%s: held\n" % qid, r
    m = wait_state(d, qid, "held")
    assert m["attempts"] == 0
    holds(lambda: graph_requests(fake) == [], 1.5, "the held message went")
    assert "%s held by relayctl before its request went" % qid in d.log
    assert d.relayctl("release", qid).returncode == 0
    fake.wait_sent(1, TIMEOUT)


# --------------------------------------------------------------------------
# 4. bulk and filters

def test_bulk_actions_and_filters(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    d = faulty_relayd(
        relayd_factory, fake,
        {"kind": "graph", "mailbox": MAILBOX_A, "status": 408,
         "retry_after": "300", "count": -1},
        {"kind": "graph", "mailbox": MAILBOX_B, "status": 408,
         "retry_after": "300", "count": 1},
        {"kind": "graph", "mailbox": MAILBOX_C, "status": 429,
         "retry_after": "300", "count": 1})
    a0, a1, b0, c0 = send_many(d, [(MAILBOX_A, "A 0", MAILBOX_A),
                                   (MAILBOX_A, "A 1", MAILBOX_A),
                                   (MAILBOX_B, "B 0", MAILBOX_B),
                                   (MAILBOX_C, "C 0", MAILBOX_C)])
    for q in (a0, a1, b0):
        wait_state(d, q, "deferred")
    wait_state(d, c0, "throttled")
    c1 = send_from(d, MAILBOX_C, "C 1")
    wait_state(d, c1, "throttled")
    # queue's filters, on the socket and through relayctl
    assert set(queue(d, "--mailbox", MAILBOX_A)) == {a0, a1}
    assert set(queue(d, "--sender", MAILBOX_B.upper())) == {b0}
    r = d.relayctl("queue", "--mailbox", MAILBOX_C, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["queue"]
    assert {x["id"] for x in rows} == {c0, c1}
    assert {x["hold"] for x in rows} == {"mailbox throttled"}
    assert all(x["hold_until"] for x in rows)
    r = d.relayctl("queue", "--sender", MAILBOX_A)
    assert r.returncode == 0 and a0 in r.stdout and c0 not in r.stdout
    # hold: a throttled mailbox's messages, then everything
    r = d.relayctl("hold", "--mailbox", MAILBOX_C)
    assert r.returncode == 0 and r.stdout == "hold: 2 matched: held 2\n", r
    r = d.relayctl("hold", "all")
    assert r.stdout == "hold: 5 matched: held 3, 2 already held\n", r
    assert {m["state"] for m in queue(d).values()} == {"held"}
    assert all(m["hold"] is None for m in queue(d).values())
    # release one sender's: it goes (B's fault is used up)
    r = d.relayctl("release", "--sender", MAILBOX_B)
    assert r.stdout == "release: 1 matched: released 1\n", r
    fake.wait_sent(1, TIMEOUT)
    wait_for(lambda: b0 not in queue(d), TIMEOUT, "B 0 delivered")
    r = d.relayctl("release", "all")
    assert r.stdout == "release: 4 matched: released 4\n", r
    # C is still throttled: retry by sender says they wait, and on what
    r = d.relayctl("retry", "--sender", MAILBOX_C)
    assert r.returncode == 0
    assert r.stdout.startswith("retry: 2 matched: 0 to be tried now, 2 "
                               "waiting on a hold (mailbox %s throttled by "
                               "Graph until" % MAILBOX_C), r.stdout
    # retry --mailbox lifts the hold
    r = d.relayctl("retry", "--mailbox", MAILBOX_C)
    assert r.stdout == "retry: 2 matched: 2 to be tried now; 1 mailbox " \
        "hold(s) lifted\n", r
    fake.wait_sent(3, TIMEOUT)
    # A's went again (released), failed again: delete them by mailbox
    for q in (a0, a1):
        wait_state(d, q, "deferred")
    r = d.relayctl("delete", "--mailbox", MAILBOX_A)
    assert r.stdout == "delete: 2 matched: deleted 2\n", r
    wait_for(lambda: not queue(d), TIMEOUT, "an empty queue")
    # nothing matches: said, not an error; a bad filter is a usage error
    r = d.relayctl("retry", "--sender", "nobody@contoso.test")
    assert r.returncode == 0 and "0 matched" in r.stdout
    assert d.relayctl("hold", "--mailbox").returncode == 64
    assert d.relayctl("queue", "all").returncode == 64
    assert "unknown command" in d.ctl("hold --colour red")["error"]


# --------------------------------------------------------------------------
# 5. pause and resume

def test_pause_survives_restart_and_resume(relayd_factory,
                                           shared_fake_graph):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake)
    me = "uid %d (%s)" % (os.geteuid(), pwd.getpwuid(os.geteuid()).pw_name)
    # a request in flight when the pause comes finishes
    fake.config(latency_ms=1500)
    first = send_from(d, MAILBOX_A, "in flight")
    wait_state(d, first, "in flight")
    r = d.relayctl("pause")
    assert r.returncode == 0 and r.stdout.startswith("delivery paused"), r
    assert "delivery paused by relayctl (%s)" % me in d.log
    paused_file = d.spool / "paused"
    assert paused_file.read_text() == me + "\n"
    fake.wait_sent(1, TIMEOUT)
    fake.config(latency_ms=0)
    # new mail waits; queue says on what
    qid = send_from(d, MAILBOX_B, "after the pause")
    m = wait_state(d, qid, "queued")
    assert m["hold"] == "paused" and m["hold_until"] is None
    st = d.ctl("status")
    assert st["delivery"].startswith("paused by %s since " % me), st
    assert st["paused"]["by"] == me and re.match(ISO_RE,
                                                  st["paused"]["since"])
    r = d.relayctl("status")
    assert "delivery: paused by %s" % me in r.stdout, r.stdout
    r = d.relayctl("retry", qid)
    assert r.returncode == 1 and "relayctl resume" in r.stderr
    holds(lambda: len(fake.sent()) == 1, 1.0, "a request while paused")
    # a restart stays paused
    d.restart()
    assert d.ctl("status")["delivery"].startswith("paused by %s" % me)
    assert queue(d)[qid]["hold"] == "paused"
    holds(lambda: len(fake.sent()) == 1, 1.0, "a request after restart")
    r = d.relayctl("pause")
    assert r.returncode == 0 and "already" in r.stdout
    r = d.relayctl("resume")
    assert r.returncode == 0 and r.stdout == "delivery resumed\n", r
    assert "delivery resumed by relayctl (%s)" % me in d.log
    assert not paused_file.exists()
    fake.wait_sent(2, TIMEOUT)
    assert d.ctl("status")["delivery"] == "on"
    assert d.ctl("status")["paused"] is None
