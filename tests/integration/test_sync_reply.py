"""Synchronous replies (issue 16): [smtp] reply_after = graph.

The reply to DATA (or BDAT LAST) waits for Graph's answer to the first
attempt: 250 once Graph took the message, 5xx naming Graph's error when it
refused it for good (and relayd keeps no copy), 250 after a temporary
failure or reply_timeout (the message stays queued and is retried). The
message is on disk before Graph is called: kill -9 while the client waits
loses nothing. The real daemon, smtplib or raw SMTP, the fake Graph.
"""
import re
import signal
import smtplib
import time

import pytest

from relaydtest.delivery import DELIVERY_TIMEOUT, log_lines, wait_queue_empty
from relaydtest.graph import graph_sections
from relaydtest.ports import free_port
from relaydtest.smtp import SENDER, SMTPConn, simple
from relaydtest.wait import wait_for

RCPT = "rcpt@fabrikam.test"
OTHER_FROM = "ceo@contoso.test"         # a From: the mailbox may not use
SENT_RE = re.compile(r"^250 2\.0\.0 Ok: sent as ([0-9A-F]{16})$")
QUEUED_RE = re.compile(r"^250 2\.0\.0 Ok: queued as ([0-9A-F]{16})$")


def sync_relayd(relayd_factory, fake, smtp=None, listen=None, queue=None,
                start=True):
    """A daemon delivering to fake with reply_after = graph (unless smtp
    says otherwise); retries after 200 ms, no pacing."""
    sections = graph_sections(fake)
    sections["queue"] = dict({"retry_min": "200ms",
                              "messages_per_minute": "0"}, **(queue or {}))
    opts = {"reply_after": "graph"}
    opts.update(smtp or {})
    return relayd_factory(sections=sections, smtp=opts, listen=listen,
                          start=start)


def send(port, data, mail_from=SENDER):
    """One transaction with smtplib; (code, text, seconds DATA took)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.test")
        assert s.mail(mail_from)[0] == 250
        assert s.rcpt(RCPT)[0] == 250
        t0 = time.monotonic()
        code, text = s.data(data)
        took = time.monotonic() - t0
    return code, text.decode(), took


def start_data(d, subject):
    """A raw connection that has sent a whole message and not yet read
    the reply to it."""
    c = SMTPConn(d.port, timeout=15)
    c.ehlo()
    assert c.cmd("MAIL FROM:<%s>" % SENDER).code == 250
    assert c.cmd("RCPT TO:<%s>" % RCPT).code == 250
    assert c.cmd("DATA").code == 354
    c.send(simple(subject) + b".\r\n")
    return c


def graph_posts(fake):
    return [r for r in fake.requests() if r["kind"] == "graph"]


def subjects(fake):
    return [r["subject"] for r in fake.sent()]


# --------------------------------------------------------------------------
# 1. 250 only once Graph has the message

def test_250_after_graph_took_it(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.config(latency_ms=500)
    d = sync_relayd(relayd_factory, fake)
    code, text, took = send(d.port, simple("sync sent"))
    # At the moment of the 250 the fake has booked the message.
    assert subjects(fake) == ["sync sent"]
    assert code == 250 and SENT_RE.match("250 " + text), text
    assert took >= 0.5, took
    qid = SENT_RE.match("250 " + text).group(1)
    assert d.queued() == [] and d.dead() == []
    [line] = log_lines(d, "sent", qid)
    assert " graph_status=202 " in line


def test_reply_after_spool_answers_before_graph(relayd_factory,
                                                shared_fake_graph):
    """The default: 250 once on disk, Graph later (the contrast that makes
    the test above mean something)."""
    fake = shared_fake_graph
    fake.config(latency_ms=500)
    d = sync_relayd(relayd_factory, fake, smtp={"reply_after": "spool"})
    code, text, took = send(d.port, simple("spool first"))
    assert code == 250 and QUEUED_RE.match("250 " + text), text
    assert subjects(fake) == []
    fake.wait_sent(1, DELIVERY_TIMEOUT)


# --------------------------------------------------------------------------
# 2. a permanent refusal: 5xx, no copy, one request

REFUSALS = [
    # (fault rule or None for the fake's own Send As check, reply start,
    #  Graph's code, words from graph_explain)
    (None, "550 5.7.1 ", "ErrorSendAsDenied", "Send As rights"),
    ({"status": 404, "code": "ErrorInvalidUser",
      "message": "The requested user is invalid."},
     "550 5.1.7 ", "ErrorInvalidUser", "no such mailbox in the tenant"),
    ({"status": 400, "code": "ErrorMessageSizeExceeded",
      "message": "The message exceeds the maximum supported size."},
     "552 5.3.4 ", "ErrorMessageSizeExceeded", "MaxSendSize"),
    ({"status": 400, "code": "ErrorSomethingNew",
      "message": "Weird \u00e9 thing."},
     "554 5.6.0 ", "ErrorSomethingNew", "Weird "),
]


@pytest.mark.parametrize("rule,start,code,words", REFUSALS,
                         ids=[r[2] for r in REFUSALS])
def test_permanent_refusal_is_5xx_and_kept_nowhere(
        relayd_factory, shared_fake_graph, rule, start, code, words):
    fake = shared_fake_graph
    if rule is None:
        fake.config(send_as_deny=[[SENDER, OTHER_FROM]])
    else:
        fake.faults([dict(rule, kind="graph", mailbox=SENDER, count=-1)])
    d = sync_relayd(relayd_factory, fake)
    msg = (b"Message-ID: <refused.1@contoso.test>\r\n" +
           simple("refused", frm=OTHER_FROM if rule is None else SENDER))
    code_, text, _ = send(d.port, msg)
    reply = "%d %s" % (code_, text)
    assert reply.startswith(start), reply
    assert ("Graph refused the message: %s: " % code) in reply, reply
    assert words in reply, reply
    assert "\n" not in reply and len(reply) + 2 <= 512
    assert all(0x20 <= ord(c) < 0x7f for c in reply), reply
    # relayd keeps no copy: not queued, no dead letter, no bounce.
    assert d.queued() == [] and d.dead() == []
    [line] = d.wait_log(r"^\S+ relayd: ([0-9A-F]{16}) graph refused .*$"
                        ).group(0).splitlines()
    assert " code=%s " % code in line and " kept=no" in line, line
    assert " message_id=<refused.1@contoso.test> " in line, line
    time.sleep(1.0)     # retry_min is 200 ms: a retry would be there now
    assert len(graph_posts(fake)) == 1
    assert fake.sent() == [] and d.dead() == [] and d.queued() == []
    assert log_lines(d, "failed") == []


def test_refusal_after_client_left_is_a_dead_letter(relayd_factory,
                                                    shared_fake_graph):
    """No one to tell: the normal path, a dead letter (nothing lost)."""
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "delay_ms": 1000, "status": 403,
                  "code": "ErrorSendAsDenied", "message": "denied"}])
    d = sync_relayd(relayd_factory, fake)
    c = start_data(d, "left early")
    d.wait_log(r"smtp queued ")
    time.sleep(0.3)                 # the request is at the fake
    c.close()
    qid = d.wait_log(r"([0-9A-F]{16}) graph failed ").group(1)
    wait_for(lambda: qid in d.dead(), 5, "the dead letter")
    assert log_lines(d, "refused") == []


# --------------------------------------------------------------------------
# 3. temporary failure or no answer in time: 250, retried

def test_temporary_failure_is_250_and_retried(relayd_factory,
                                              shared_fake_graph):
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "status": 503, "retry_after": "1"}])
    d = sync_relayd(relayd_factory, fake)
    code, text, took = send(d.port, simple("try again"))
    m = QUEUED_RE.match("%d %s" % (code, text))
    assert m, (code, text)
    assert took < 5, took           # at Graph's 503, not reply_timeout
    assert fake.sent() == [] and d.queued() != []
    fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert subjects(fake) == ["try again"]
    wait_queue_empty(d)
    assert len(log_lines(d, "deferred", m.group(1))) == 1


def test_reply_timeout_is_250_and_delivered_later(relayd_factory,
                                                  shared_fake_graph):
    fake = shared_fake_graph
    fake.config(latency_ms=2500)
    d = sync_relayd(relayd_factory, fake, smtp={"reply_timeout": "1s"})
    code, text, took = send(d.port, simple("slow graph"))
    m = QUEUED_RE.match("%d %s" % (code, text))
    assert m, (code, text)
    assert 0.9 <= took < 2.4, took
    assert fake.sent() == []
    d.wait_log(r"%s smtp reply_timeout .* reply=250" % m.group(1))
    fake.wait_sent(1, DELIVERY_TIMEOUT)
    wait_queue_empty(d)
    assert subjects(fake) == ["slow graph"]     # once


# --------------------------------------------------------------------------
# 4. the listen-line option

def test_listener_option_on_one_listener_only(relayd_factory,
                                              shared_fake_graph):
    fake = shared_fake_graph
    fake.config(latency_ms=500)
    p_sync, p_spool = free_port(), free_port()
    d = sync_relayd(relayd_factory, fake, smtp={"reply_after": "spool"},
                    listen=["127.0.0.1:%d reply_after=graph" % p_sync,
                            "127.0.0.1:%d" % p_spool])
    code, text, _ = send(p_spool, simple("via spool listener"))
    assert QUEUED_RE.match("%d %s" % (code, text)), text
    assert subjects(fake) == []
    fake.wait_sent(1, DELIVERY_TIMEOUT)
    code, text, _ = send(p_sync, simple("via graph listener"))
    assert SENT_RE.match("%d %s" % (code, text)), text
    assert sorted(subjects(fake)) == ["via graph listener",
                                      "via spool listener"]
    d.stop()


def test_reload_switches_new_sessions(relayd_factory, shared_fake_graph):
    """SIGHUP: [smtp] reply_after, then the listen line's option, for new
    sessions."""
    fake = shared_fake_graph
    fake.config(latency_ms=300)
    d = sync_relayd(relayd_factory, fake, smtp={"reply_after": "spool"})
    code, text, _ = send(d.port, simple("before"))
    assert QUEUED_RE.match("%d %s" % (code, text)), text
    d.smtp_opts["reply_after"] = "graph"
    d.write_config()
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log(r"reload: .* in force for new sessions", 5)
    code, text, _ = send(d.port, simple("after"))
    assert SENT_RE.match("%d %s" % (code, text)), text
    d._listen = ["127.0.0.1:%d reply_after=spool" % d.port]
    d.write_config()
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: d.current_log().count("in force for new sessions")
             == 2, 5, "the second reload")
    code, text, _ = send(d.port, simple("listener says spool"))
    assert QUEUED_RE.match("%d %s" % (code, text)), text


def test_listener_option_bad_value(relayd_factory):
    d = relayd_factory(start=False, listen=["127.0.0.1:2525 "
                                            "reply_after=later"])
    d.write_config()
    r = d.check_config()
    assert r.returncode != 0
    assert "reply_after must be spool or graph, not \"later\"" in (
        r.stdout + r.stderr)


# --------------------------------------------------------------------------
# 5. kill -9 while the client waits: nothing lost

def test_kill_while_waiting_loses_nothing(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "hang": True}])
    d = sync_relayd(relayd_factory, fake)
    c = start_data(d, "survives kill -9")
    d.wait_log(r"smtp queued ")
    assert c.quiet(0.5)             # no reply yet: it waits for Graph
    d.kill()
    with pytest.raises(Exception):
        c.reply(timeout=2)
    c.close()
    assert len(d.queued()) == 1
    d.start()
    fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert subjects(fake) == ["survives kill -9"]
    wait_queue_empty(d)


# --------------------------------------------------------------------------
# 6. BDAT LAST, and commands pipelined behind it

def test_bdat_last_waits_and_pipelined_commands_wait(relayd_factory,
                                                     shared_fake_graph):
    fake = shared_fake_graph
    fake.config(send_as_deny=[[SENDER, OTHER_FROM]], latency_ms=300)
    d = sync_relayd(relayd_factory, fake)
    c = SMTPConn(d.port)
    assert "CHUNKING" in "\n".join(c.ehlo().lines)
    bad = simple("bdat refused", frm=OTHER_FROM)
    good = simple("bdat sent")
    c.send(b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nBDAT %d LAST\r\n%s"
           b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nBDAT %d LAST\r\n%sNOOP\r\n"
           % (SENDER.encode(), RCPT.encode(), len(bad), bad,
              SENDER.encode(), RCPT.encode(), len(good), good))
    r = c.replies(7, timeout=15)
    texts = [x.text for x in r]
    assert texts[0:2] == ["250 2.1.0 Ok", "250 2.1.5 Ok"], texts
    assert texts[2].startswith("550 5.7.1 Graph refused the message: "
                               "ErrorSendAsDenied: "), texts
    assert texts[3:5] == ["250 2.1.0 Ok", "250 2.1.5 Ok"], texts
    assert SENT_RE.match(texts[5]), texts
    assert texts[6].startswith("250 "), texts
    assert subjects(fake) == ["bdat sent"]
    c.close()


# --------------------------------------------------------------------------
# 7. SIGTERM while a client waits: it gets its answer before relayd exits

def test_drain_answers_waiting_client(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.config(latency_ms=6000)
    d = sync_relayd(relayd_factory, fake, smtp={"drain_timeout": "2s"})
    c = start_data(d, "drained")
    d.wait_log(r"smtp queued ")
    time.sleep(0.2)
    t0 = time.monotonic()
    d.proc.send_signal(15)
    r = c.reply(timeout=5)
    took = time.monotonic() - t0
    assert QUEUED_RE.match(r.text), r
    assert took < 2.0, took
    assert d.stop(timeout=20) == 0
    c.close()
