"""The metrics move: each counter and gauge, provoked by real clients.

smtplib sends, is refused for each reason (relay denied, AUTH failed,
too big, policy, smuggling) and fails AUTH into a lockout; the fake Graph
defers, accepts and refuses. After each step `relayctl metrics` (and at
the end the HTTP /metrics of [status] metrics_listen) must show exactly
the counts that step moved, and no other.
"""
import base64
import smtplib
import time
import urllib.request

from relaydtest.auth import ALICE, users_text, write_private
from relaydtest.graph import graph_relayd
from relaydtest.ports import free_port
from relaydtest.smtp import SENDER, simple
from relaydtest.wait import wait_for

TIMEOUT = 15
RCPT = "rcpt@fabrikam.test"
REASONS = ("relay_denied", "auth_failed", "too_big", "policy", "smuggling")


def metrics(text):
    """Prometheus text: {"name{labels}": value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def ctl_metrics(d):
    r = d.relayctl("metrics")
    assert r.returncode == 0, r.stderr
    return metrics(r.stdout)


def counts(m):
    """The SMTP side's counters, by short name."""
    c = {"received": m["relayd_messages_received_total"],
         "auth_failures": m["relayd_auth_failures_total"],
         "lockouts": m["relayd_auth_lockouts_total"],
         "locked": m["relayd_auth_locked_addresses"]}
    for r in REASONS:
        c[r] = m['relayd_smtp_refusals_total{reason="%s"}' % r]
    return c


class Expect:
    """What the counters should say: a running tally of the steps."""

    def __init__(self, d):
        self.d = d
        self.want = dict.fromkeys(["received", "auth_failures", "lockouts",
                                   "locked"] + list(REASONS), 0)

    def step(self, **moved):
        for k, v in moved.items():
            self.want[k] += v
        got = counts(ctl_metrics(self.d))
        assert got == self.want, (moved, got)


def client(d, source="127.0.0.1"):
    c = smtplib.SMTP("127.0.0.1", d.port, timeout=10,
                     source_address=(source, 0))
    c.ehlo("metrics.test")
    return c


def refusal_daemon(relayd_factory, fake):
    port = free_port()
    d = graph_relayd(relayd_factory, fake, start=False)
    d.smtp_opts.update({"allow_networks": "127.0.0.1/32",
                        "recipient_domains": "fabrikam.test",
                        "max_message_size": "10K"})
    d.sections["status"]["metrics_listen"] = "127.0.0.1:%d" % port
    d.sections["auth"] = {
        "users_file": str(write_private(d.workdir / "users",
                                        users_text([ALICE]))),
        "max_failures": "2", "lockout": "1h"}
    d.listen_lines = lambda: ["127.0.0.1:%d auth_plaintext=yes" % d.port]
    d.start()
    d.metrics_port = port
    return d


def plain(user, password):
    return "PLAIN " + base64.b64encode(
        ("\0%s\0%s" % (user, password)).encode()).decode()


def test_refusals_and_auth_are_counted(relayd_factory, shared_fake_graph):
    d = refusal_daemon(relayd_factory, shared_fake_graph)
    e = Expect(d)
    e.step()                    # all 0 to begin with
    # received: a message queued
    with client(d) as c:
        c.sendmail(SENDER, [RCPT], simple("counted"))
    e.step(received=1)
    # relay denied: 127.0.0.2 is not in allow_networks
    with client(d, source="127.0.0.2") as c:
        assert c.mail(SENDER)[0] == 250
        assert c.rcpt(RCPT)[0] == 554
    e.step(relay_denied=1)
    # policy: a domain outside recipient_domains
    with client(d) as c:
        assert c.mail(SENDER)[0] == 250
        assert c.rcpt("someone@elsewhere.test")[0] == 550
    e.step(policy=1)
    # too big: announced with SIZE=, and sent past the limit
    with client(d) as c:
        assert c.docmd("MAIL", "FROM:<%s> SIZE=100000" % SENDER)[0] == 552
        assert c.mail(SENDER)[0] == 250
        assert c.rcpt(RCPT)[0] == 250
        code, _ = c.data(b"Subject: big\r\n\r\n" +
                         (b"y" * 998 + b"\r\n") * 12)
        assert code == 552
    e.step(too_big=2)
    # smuggling: a bare LF in the data (smtplib would repair it: raw)
    with client(d) as c:
        assert c.mail(SENDER)[0] == 250
        assert c.rcpt(RCPT)[0] == 250
        assert c.docmd("DATA")[0] == 354
        c.send(b"Subject: smuggled\r\n\r\nbare\nLF\r\n.\r\n")
        assert c.getreply()[0] == 550
    e.step(smuggling=1)
    # AUTH: two failures lock the address out; the next AUTH gets 454
    with client(d) as c:
        assert c.docmd("AUTH", plain("alice", "wrong"))[0] == 535
    e.step(auth_failed=1, auth_failures=1)
    with client(d) as c:
        assert c.docmd("AUTH", plain("alice", "wrong again"))[0] == 535
        assert c.docmd("AUTH", plain("alice", ALICE.password))[0] == 454
    e.step(auth_failed=2, auth_failures=1, lockouts=1, locked=1)
    # unlocked: the gauge falls, the counter stays
    assert d.relayctl("unlock", "127.0.0.1").returncode == 0
    e.step(locked=-1)
    # /metrics over HTTP says the same
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics"
                                % d.metrics_port, timeout=10) as resp:
        assert counts(metrics(resp.read().decode())) == e.want


def test_delivery_counters_and_oldest_age(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "status": 503, "retry_after": "60"}])
    d = graph_relayd(relayd_factory, fake)
    m = ctl_metrics(d)
    assert m["relayd_queue_oldest_age_seconds"] == 0
    with client(d) as c:
        c.sendmail(SENDER, [RCPT], simple("deferred first"))
    wait_for(lambda: ctl_metrics(d)["relayd_delivery_deferrals_total"] == 1,
             TIMEOUT, "a deferral")
    time.sleep(1.2)
    m = ctl_metrics(d)
    assert 1.2 <= m["relayd_queue_oldest_age_seconds"] < 60, m
    assert m["relayd_messages_sent_total"] == 0
    assert m["relayd_messages_received_total"] == 1
    # sent now: the queue is empty, so no oldest message
    assert d.relayctl("retry", "all").returncode == 0
    fake.wait_sent(1, TIMEOUT)
    wait_for(lambda: ctl_metrics(d)["relayd_queue_oldest_age_seconds"] == 0,
             TIMEOUT, "an empty queue")
    m = ctl_metrics(d)
    assert m["relayd_messages_sent_total"] == 1
    assert m["relayd_messages_failed_total"] == 0
    # refused for good: failed
    fake.faults([{"kind": "graph", "status": 400,
                  "code": "ErrorInvalidRecipients",
                  "message": "At least one recipient is not valid."}])
    with client(d) as c:
        c.sendmail(SENDER, [RCPT], simple("refused"))
    wait_for(lambda: ctl_metrics(d)["relayd_messages_failed_total"] == 1,
             TIMEOUT, "a failure")
    m = ctl_metrics(d)
    assert m["relayd_messages_received_total"] == 2
    assert m["relayd_messages_sent_total"] == 1
    assert m["relayd_delivery_deferrals_total"] == 1
