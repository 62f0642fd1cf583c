"""Dead letters (issue 16): relayctl dead, show, retry, export and delete
on messages Graph refused for good, and the operator's digest ([queue]
notify), against the real daemon and the fake Graph.

The fake refuses a From: that is not the sending mailbox (send_as_deny
"strict": 403 ErrorSendAsDenied) until the test lifts that.
"""
import json
import os
import re
import subprocess
import time
from datetime import datetime, timezone
from email.message import EmailMessage

import pytest

from relaydtest.daemon import run_relayd
from relaydtest.delivery import log_lines
from relaydtest.env import RELAYCTL_BIN, SENDMAIL_BIN
from relaydtest.graph import graph_relayd
from relaydtest.ports import free_port
from relaydtest.smtp import SENDER, simple, smtp_send
from relaydtest.wait import wait_for

TIMEOUT = 15
FIELDS = {"id", "time", "sender", "mailbox", "recipients", "subject",
          "message_id", "reason"}
NOT_MINE = "ceo@contoso.test"       # From: the sender may not send as


def refused(subject, msgid=None, body="Hello.\n"):
    msg = EmailMessage()
    msg["From"] = NOT_MINE
    msg["To"] = "rcpt@fabrikam.test"
    msg["Subject"] = subject
    msg["Date"] = "Sun, 06 Dec 2026 10:00:00 +0000"
    if msgid:
        msg["Message-ID"] = msgid
    msg.set_content(body)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def dead_letter(d, data, rcpts=("rcpt@fabrikam.test",)):
    qid = smtp_send(d, data, rcpts=rcpts)
    wait_for(lambda: {qid, qid + ".reason"} <= set(d.dead()), TIMEOUT,
             "%s in dead/" % qid)
    wait_for(lambda: qid not in [r.id for r in d.records()
                                 if r.state != "X"], TIMEOUT,
             "%s out of the queue" % qid)
    return qid


def dead_list(d):
    r = d.relayctl("dead", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["dead"]


def test_dead_list_table_and_show(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.config(send_as_deny="strict")
    d = graph_relayd(relayd_factory, fake)
    assert dead_list(d) == []
    assert d.relayctl("dead").stdout == "No dead letters.\n"
    # an RFC 2047 subject is shown decoded
    data = refused("Rechnung f\u00fcr M\u00e4rz", "<inv-42@contoso.test>")
    assert b"=?utf-8?" in data
    qid = dead_letter(d, data, rcpts=["a@fabrikam.test", "b@fabrikam.test"])
    [x] = dead_list(d)
    assert set(x) == FIELDS
    when = datetime.strptime(x["time"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(when.replace(tzinfo=timezone.utc).timestamp() -
               time.time()) < 60
    assert (x["id"], x["sender"], x["mailbox"], x["recipients"],
            x["subject"], x["message_id"]) == (
        qid, SENDER, SENDER, ["a@fabrikam.test", "b@fabrikam.test"],
        "Rechnung f\u00fcr M\u00e4rz", "<inv-42@contoso.test>")
    # Graph's code and message in words, and graph_explain's advice
    assert x["reason"].startswith("Graph refused it: 403 "
                                  "ErrorSendAsDenied: The user account"), x
    assert "What to do: the app may send from the mailbox, but not as " \
        "this From: address" in x["reason"], x
    # the table says the same, readably
    r = d.relayctl("dead")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("%s  %s  <%s> -> a@fabrikam.test, "
                               "b@fabrikam.test" % (qid, x["time"], SENDER))
    assert "  subject:    Rechnung f\u00fcr M\u00e4rz" in lines
    assert "  message-id: <inv-42@contoso.test>" in lines
    assert "  reason:     " + x["reason"] in lines
    assert lines[-1].startswith("-- 1 dead letter(s)")
    # show: a dead letter's detail
    r = d.relayctl("show", qid)
    assert r.returncode == 0, r.stderr
    view = r.stdout.splitlines()
    assert "state:        dead" in view
    assert "reason:       " + x["reason"] in view
    assert "Message-ID:   <inv-42@contoso.test>" in view
    r = d.relayctl("show", "--json", qid)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["state"] == "dead" and shown["id"] == qid
    assert (shown["graph_status"], shown["code"], shown["attempts"]) == (
        403, "ErrorSendAsDenied", 1)
    assert json.loads(shown["graph_answer"])["error"]["code"] == \
        "ErrorSendAsDenied"
    # the stored size counts relayd's Received: field too
    assert shown["size"] > len(data)
    assert shown["date"] == "Sun, 06 Dec 2026 10:00:00 +0000"
    # the status count agrees
    assert d.ctl("status")["queue"]["dead"] == 1


def test_unknown_id_is_a_clear_error(relayd_factory, shared_fake_graph):
    d = graph_relayd(relayd_factory, shared_fake_graph)
    for verb in ("show", "retry", "delete", "export"):
        r = d.relayctl(verb, "0123456789ABCDEF")
        assert r.returncode == 1, (verb, r)
        assert "no such message in the queue" in r.stderr, (verb, r.stderr)
        assert r.stdout == "", verb
    # not a queue id at all: never a path into the spool
    r = d.relayctl("export", "../../etc/passwd")
    assert r.returncode == 1 and r.stdout == ""


def test_retry_dead_letter_is_a_fresh_message(relayd_factory,
                                              shared_fake_graph):
    fake = shared_fake_graph
    fake.config(send_as_deny="strict")
    d = graph_relayd(relayd_factory, fake)
    data = refused("try me again", "<again@contoso.test>")
    qid = dead_letter(d, data)
    # the refusal is lifted; Graph is busy once more, so the new message
    # waits in the queue where its attempts can be seen
    fake.config(send_as_deny=None)
    fake.faults([{"kind": "graph", "status": 503, "retry_after": "60"}])
    before = int(time.time())
    r = d.relayctl("retry", qid)
    assert r.returncode == 0, r.stderr
    m = re.match(r"^%s: requeued as ([0-9A-F]{16})$" % qid, r.stdout.strip())
    assert m, r.stdout
    new = m.group(1)
    assert new != qid
    # the dead copy went (after the new one was durable)
    assert qid not in d.dead() and qid + ".reason" not in d.dead()
    assert dead_list(d) == []
    wait_for(lambda: d.ctl("queue")["queue"] and
             d.ctl("queue")["queue"][0]["state"] == "deferred", TIMEOUT,
             "the requeued message deferred")
    [q] = d.ctl("queue")["queue"]
    # attempts and lifetime start again: 1 attempt (not 2), arrived now
    assert (q["id"], q["attempts"]) == (new, 1), q
    arrived = datetime.strptime(q["arrived"], "%Y-%m-%dT%H:%M:%SZ")
    assert arrived.replace(tzinfo=timezone.utc).timestamp() >= before
    r = d.relayctl("retry", new)
    assert r.returncode == 0 and "1 message(s)" in r.stdout
    [rec] = fake.wait_sent(1, TIMEOUT)
    assert rec["body"]["message"]["subject"] == "try me again"
    d.wait_log(r" %s graph sent " % new, TIMEOUT)
    assert len(log_lines(d, "sent", new)) == 1
    assert d.dead() == []
    d.wait_log(r" %s requeued as %s by relayctl" % (qid, new))


def big_message():
    msg = EmailMessage()
    msg["From"] = NOT_MINE
    msg["To"] = "rcpt@fabrikam.test"
    msg["Subject"] = "scan with a big attachment"
    msg.set_content("See the attachment.\n")
    blob = os.urandom(3 * 1024 * 1024)
    msg.add_attachment(blob, maintype="application",
                       subtype="octet-stream", filename="scan.bin")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def test_export_is_byte_identical(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.config(send_as_deny="strict")
    d = graph_relayd(relayd_factory, fake)
    data = big_message()
    qid = dead_letter(d, data)
    # relayd's own Received: field is stored before the client's bytes
    raw = (d.dead_dir / qid).read_bytes()
    assert b"(relayd) with " in raw
    r = subprocess.run([str(RELAYCTL_BIN), "-s",
                        d.sections["status"]["socket"], "export", qid],
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == data
    assert r.stderr == b""
    # a queued (held) message too
    fake.faults([{"kind": "graph", "status": 503, "count": -1,
                  "retry_after": "60"}])
    fake.config(send_as_deny=None)
    other = smtp_send(d, simple("queued one"))
    wait_for(lambda: any(m["id"] == other and m["state"] == "deferred"
                         for m in d.ctl("queue")["queue"]), TIMEOUT,
             "deferred")
    r = subprocess.run([str(RELAYCTL_BIN), "-s",
                        d.sections["status"]["socket"], "export", other],
                       capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout == simple("queued one")


def test_export_into_relayd_sendmail(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.config(send_as_deny="strict")
    d = graph_relayd(relayd_factory, fake)
    d.stop()
    d.sections["sendmail"] = {"sender": SENDER}
    d.start()
    data = refused("send me by hand", "<by-hand@contoso.test>")
    qid = dead_letter(d, data)
    fake.config(send_as_deny=None)
    sock = d.sections["status"]["socket"]
    r = subprocess.run("%s -s %s export %s | %s -C %s -f %s "
                       "rcpt@fabrikam.test" % (RELAYCTL_BIN, sock, qid,
                                               SENDMAIL_BIN, d.conf_path,
                                               SENDER),
                       shell=True, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    [rec] = fake.wait_sent(1, TIMEOUT)
    msg = rec["body"]["message"]
    assert msg["subject"] == "send me by hand"
    assert msg.get("internetMessageId") == "<by-hand@contoso.test>", msg


def test_delete_dead_letter(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.config(send_as_deny="strict")
    d = graph_relayd(relayd_factory, fake)
    qid = dead_letter(d, refused("delete me"))
    keep = dead_letter(d, refused("keep me"))
    r = d.relayctl("delete", qid)
    assert r.returncode == 0 and r.stdout == "%s: deleted\n" % qid
    assert d.dead() == [keep, keep + ".reason"]
    assert [x["id"] for x in dead_list(d)] == [keep]
    r = d.relayctl("delete", qid)
    assert r.returncode == 1 and "no such message" in r.stderr
    d.wait_log(r" %s dead letter deleted by relayctl" % qid)


def digest_records(fake, mailbox):
    return [r for r in fake.sent() if r["mailbox"] == mailbox]


def test_notify_digest_once_per_interval(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    ops = "ops@contoso.test"
    fake.config(send_as_deny="strict")
    d = graph_relayd(relayd_factory, fake,
                     queue={"notify": ops, "notify_interval": "6s"})
    a = smtp_send(d, refused("first"))
    b = smtp_send(d, refused("second"))
    d.wait_log(r"notify: digest queued=([0-9A-F]{16}) to=<%s> dead=2$"
               % re.escape(ops), TIMEOUT)
    wait_for(lambda: len(digest_records(fake, ops)) == 1, TIMEOUT,
             "the digest sent")
    [rec] = digest_records(fake, ops)
    msg = rec["body"]["message"]
    assert msg["subject"] == "relayd: 2 new dead letter(s)"
    assert [t["emailAddress"]["address"] for t in msg["toRecipients"]] == [
        ops]
    text = msg["body"]["content"]
    for qid, subject in ((a, "first"), (b, "second")):
        assert qid in text and "Subject:    " + subject in text, text
    assert "Sender:     <%s>" % SENDER in text
    assert "Recipients: rcpt@fabrikam.test" in text
    assert "Reason:     Graph refused it: 403 ErrorSendAsDenied" in text
    # a third within the interval waits for it, across a restart too:
    # <spool>/notify.last keeps when the last digest went out
    c = smtp_send(d, refused("third"))
    wait_for(lambda: c in d.dead(), TIMEOUT, "the third in dead/")
    assert (d.spool / "notify.last").is_file()
    d.restart()
    wait_for(lambda: len(digest_records(fake, ops)) == 2, TIMEOUT,
             "the second digest")
    assert re.search(r"notify: digest queued=[0-9A-F]{16} to=<%s> dead=1$"
                     % re.escape(ops), d.current_log(), re.M)
    second = digest_records(fake, ops)[1]
    assert second["time"] >= rec["time"] + 5.5
    text = second["body"]["message"]["body"]["content"]
    assert c in text and a not in text and b not in text


def test_a_dead_digest_is_not_reported(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    ops = "gone@contoso.test"
    fake.config(send_as_deny="strict",
                unknown_mailboxes={ops: "ErrorInvalidUser"})
    d = graph_relayd(relayd_factory, fake,
                     queue={"notify": ops, "notify_interval": "2s"})
    smtp_send(d, refused("dies"))
    m = d.wait_log(r"notify: digest queued=([0-9A-F]{16}) ", TIMEOUT)
    digest = m.group(1)
    wait_for(lambda: digest in d.dead(), TIMEOUT, "the digest in dead/")
    time.sleep(4.5)             # two intervals
    assert len(re.findall(r"notify: digest queued=", d.log)) == 1, d.log


@pytest.mark.parametrize("value", ["operator", "@contoso.test",
                                   "<ops@contoso.test>"])
def test_notify_must_be_an_address(tmp_path, value):
    spool = tmp_path / "spool"
    spool.mkdir()
    conf = tmp_path / "r.conf"
    conf.write_text("[smtp]\nlisten = 127.0.0.1:%d\n[queue]\nspool_dir = "
                    "%s\nnotify = %s\n" % (free_port(), spool, value))
    r = run_relayd("-n", "-c", str(conf))
    assert r.returncode == 78, r
    assert "%s:5: notify \"%s\" is not a mailbox address" % (conf, value) \
        in r.stderr, r.stderr
    conf.write_text("[smtp]\nlisten = 127.0.0.1:%d\n[queue]\nspool_dir = "
                    "%s\nnotify = ops@contoso.test\nnotify_interval = 10m\n"
                    % (free_port(), spool))
    r = run_relayd("-n", "-c", str(conf))
    assert r.returncode == 0, r.stderr
