"""Delivery through Graph: the real daemon, real SMTP clients (smtplib,
swaks) and the fake Graph (tests/fakegraph.py).

What reaches Graph (whole request bodies, compared exactly), what the log
and the spool say afterwards, and what relayd does when Graph throttles,
fails, hangs, refuses for good, or when relayd itself is stopped or killed.
The mapping rules have their golden cases (tests/data/map, checked by the C
unit tests); here a few messages go the whole way to show that the pieces
fit: SMTP in, spool, mapping, token, HTTP, result, spool again.

Timing: retries use a small [queue] retry_min; waits poll with deadlines.
"""
import base64
import json
import os
import re
import smtplib
import subprocess
import time
from datetime import datetime, timezone
from email.header import Header
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr

import pytest

from relaydtest.delivery import (DELIVERY_TIMEOUT, log_lines, max_overlap,
                                 reason_fields, started, wait_queue_empty)
from relaydtest.graph import graph_relayd, graph_sections
from relaydtest.smtp import SENDER, simple, smtp_send
from relaydtest.spool import SpoolFile
from relaydtest.wait import holds, wait_for


# A 3x2 PNG and a small PDF with binary bytes in it (as real ones have).
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAMAAAACCAIAAAASFvFNAAAAH0lEQVR4AQEUAOv/AABQoABQ"
    "oABQoAAAUKAAUKAAUKA0lAWhNvCdiQAAAABJRU5ErkJggg==")
PDF = (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
       b"1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
       b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
       b"stream\n" + bytes(range(256)) + b"\r\n.\r\n\x00\nendstream\n"
       b"trailer<</Root 1 0 R>>\n%%EOF\n")


# --------------------------------------------------------------------------
# helpers


def addr(address, name=None):
    ea = {"address": address}
    if name is not None:
        ea["name"] = name
    return {"emailAddress": ea}


def file_attachment(name, ctype, data, inline=False, cid=None):
    a = {"@odata.type": "#microsoft.graph.fileAttachment", "name": name,
         "contentType": ctype,
         "contentBytes": base64.b64encode(data).decode("ascii"),
         "isInline": inline}
    if cid is not None:
        a["contentId"] = cid
    return a


def sendmail_requests(fake):
    return [r for r in fake.requests() if r["kind"] == "graph"]


# --------------------------------------------------------------------------
# 1. what Graph receives

def test_plain_text_exact(relayd_factory, shared_fake_graph,
                          sendmail_schema):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake)
    msg = EmailMessage()
    msg["From"] = "Scanner <scanner@contoso.test>"
    msg["To"] = "Alice <alice@fabrikam.test>, bob@fabrikam.test"
    msg["Subject"] = "Scan to mail"
    msg["Message-ID"] = "<scan-0001@contoso.test>"
    msg["X-Scanner-Job"] = "0001"
    msg.set_content("Scanned page follows.\n.leading dot line\nEnd.\n")
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        assert s.send_message(msg) == {}
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert rec["mailbox"] == "scanner@contoso.test"     # MAIL FROM
    assert rec["format"] == "json"
    assert rec["headers"]["Content-Type"] == "application/json"
    assert rec["headers"]["Authorization"].startswith("Bearer fake.")
    assert rec["body"] == {
        "message": {
            "subject": "Scan to mail",
            "from": addr("scanner@contoso.test", "Scanner"),
            "toRecipients": [addr("alice@fabrikam.test", "Alice"),
                             addr("bob@fabrikam.test")],
            "internetMessageId": "<scan-0001@contoso.test>",
            "internetMessageHeaders": [{"name": "X-Scanner-Job",
                                        "value": "0001"}],
            "body": {"contentType": "text",
                     "content": "Scanned page follows.\r\n"
                                ".leading dot line\r\nEnd.\r\n"},
        },
        "saveToSentItems": True,
    }
    wait_queue_empty(d)
    sendmail_schema(rec["body"])


def test_alternative_related_inline_image_and_pdf_exact(
        relayd_factory, shared_fake_graph, sendmail_schema):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake)
    html = ('<html><body><p>Hello Bob,</p>\n'
            '<p><img src="cid:logo.1@contoso.test" alt="logo"></p>\n'
            '<p>the report is attached.</p></body></html>\n')
    msg = EmailMessage()
    msg["From"] = "Alice Example <alice@contoso.test>"
    msg["To"] = "Bob <bob@fabrikam.test>"
    msg["Cc"] = "carol@fabrikam.test"
    msg["Subject"] = "Quarterly report"
    msg["Message-ID"] = "<report-1@contoso.test>"
    msg.set_content("Hello Bob,\n\nthe report is attached.\n")
    msg.add_alternative(html, subtype="html")
    msg.get_payload()[1].add_related(
        PNG, "image", "png", cid="<logo.1@contoso.test>",
        filename="logo.png", disposition="inline")
    msg.add_attachment(PDF, maintype="application", subtype="pdf",
                       filename="report Q3.pdf")
    # mixed[alternative[plain, related[html, png]], pdf]
    assert msg.get_content_type() == "multipart/mixed"
    alt = msg.get_payload()[0]
    assert [p.get_content_type() for p in alt.get_payload()] == [
        "text/plain", "multipart/related"]
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        assert s.send_message(msg) == {}
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert rec["mailbox"] == "alice@contoso.test"
    body = rec["body"]
    atts = body["message"].get("attachments", [])
    # the bytes first, for a readable failure
    assert [base64.b64decode(a["contentBytes"]) for a in atts] == [PNG, PDF]
    assert body == {
        "message": {
            "subject": "Quarterly report",
            "from": addr("alice@contoso.test", "Alice Example"),
            "toRecipients": [addr("bob@fabrikam.test", "Bob")],
            "ccRecipients": [addr("carol@fabrikam.test")],
            "internetMessageId": "<report-1@contoso.test>",
            # the HTML alternative; the plain one is dropped
            "body": {"contentType": "html",
                     "content": html.replace("\n", "\r\n")},
            "attachments": [
                file_attachment("logo.png", "image/png", PNG, inline=True,
                                cid="logo.1@contoso.test"),
                file_attachment("report Q3.pdf", "application/pdf", PDF),
            ],
        },
        "saveToSentItems": True,
    }
    wait_queue_empty(d)
    [line] = log_lines(d, "sent")
    assert re.search(r" mailbox=alice@contoso\.test rcpts=2 size=\d+ "
                     r"message_id=<report-1@contoso\.test> attachments=2 "
                     r"graph_status=202 request_id=%s ms=\d+$"
                     % rec["request_id"], line), line
    sendmail_schema(body)


def test_latin1_quoted_printable_and_rfc2047_exact(
        relayd_factory, shared_fake_graph, sendmail_schema):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake)
    text = ("Gr\u00fc\u00dfe aus K\u00f6ln!\n"
            "Diese Zeile ist l\u00e4nger als sechsundsiebzig Zeichen, "
            "enth\u00e4lt \u00e4\u00f6\u00fc \u00c4\u00d6\u00dc \u00df und "
            "wird deshalb weich umbrochen.\n"
            "Summe = 12 \u00a7 3\n")
    msg = MIMEText(text, "plain", "iso-8859-1")
    msg["From"] = formataddr(("J\u00f6rg M\u00fcller",
                              "joerg@contoso.test"), "iso-8859-1")
    msg["To"] = "rcpt@fabrikam.test"
    msg["Subject"] = Header("Caf\u00e9 cr\u00e8me \u00e0 Z\u00fcrich",
                            "iso-8859-1")
    wire = msg.as_string()
    # what this test is about: QP body, RFC 2047 words in ISO-8859-1
    assert "Content-Transfer-Encoding: quoted-printable" in wire
    assert "=\n" in wire and "=3D" in wire and "K=F6ln" in wire
    assert "Subject: =?iso-8859-1?q?Caf=E9_cr=E8me_=E0_Z=FCrich?=" in wire
    assert "From: =?iso-8859-1?q?J=F6rg_M=FCller?=" in wire
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        assert s.send_message(msg) == {}
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert rec["body"] == {
        "message": {
            "subject": "Caf\u00e9 cr\u00e8me \u00e0 Z\u00fcrich",
            "from": addr("joerg@contoso.test", "J\u00f6rg M\u00fcller"),
            "toRecipients": [addr("rcpt@fabrikam.test")],
            "body": {"contentType": "text",
                     "content": text.replace("\n", "\r\n")},
        },
        "saveToSentItems": True,
    }
    sendmail_schema(rec["body"])


def test_bcc_only_envelope_decides(relayd_factory, shared_fake_graph,
                                   sendmail_schema):
    """The envelope says who receives it: recipients absent from To/Cc are
    Bcc, and a To address that is not in the envelope gets nothing."""
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake)
    data = simple("Bcc only", "Only the envelope knows.\n",
                  to="Listed Person <listed@fabrikam.test>")
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        assert s.sendmail(SENDER, ["hidden1@fabrikam.test",
                                   "hidden2@northwind.test"], data) == {}
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert rec["body"] == {
        "message": {
            "subject": "Bcc only",
            "from": addr(SENDER),
            "bccRecipients": [addr("hidden1@fabrikam.test"),
                              addr("hidden2@northwind.test")],
            "body": {"contentType": "text",
                     "content": "Only the envelope knows.\r\n"},
        },
        "saveToSentItems": True,
    }
    assert "listed@fabrikam.test" not in str(rec["body"])
    wait_queue_empty(d)
    [line] = log_lines(d, "sent")
    assert " rcpts=2 " in line
    sendmail_schema(rec["body"])


def test_swaks_binary_attachment_exact(relayd_factory, shared_fake_graph,
                                       sendmail_schema, tmp_path):
    swaks = "/usr/bin/swaks"
    if not os.path.exists(swaks):
        pytest.skip("swaks is not installed (tests/deps.sh installs it)")
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake)
    blob = (bytes(range(256)) * 3 + b"\r\n.\r\n.\n\x00\xff" +
            bytes(range(255, -1, -1)))
    path = tmp_path / "firmware.bin"
    path.write_bytes(blob)
    r = subprocess.run(
        [swaks, "--server", "127.0.0.1:%d" % d.port, "--timeout", "10",
         "--from", SENDER, "--to", "rcpt@fabrikam.test",
         "--helo", "swaks.test",
         "--header", "Subject: swaks attachment",
         "--header", "Message-Id: <swaks-1@contoso.test>",
         "--header", "X-Mailer: swaks (test)",
         "--body", "see attached\n",
         "--attach", str(path), "--suppress-data"],
        capture_output=True, timeout=30)
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    atts = rec["body"]["message"].get("attachments", [])
    assert [base64.b64decode(a["contentBytes"]) for a in atts] == [blob]
    assert rec["body"] == {
        "message": {
            "subject": "swaks attachment",
            "from": addr(SENDER),
            "toRecipients": [addr("rcpt@fabrikam.test")],
            "internetMessageId": "<swaks-1@contoso.test>",
            "internetMessageHeaders": [{"name": "X-Mailer",
                                        "value": "swaks (test)"}],
            "body": {"contentType": "text", "content": "see attached\r\n"},
            "attachments": [file_attachment(
                "firmware.bin", "application/octet-stream", blob)],
        },
        "saveToSentItems": True,
    }
    sendmail_schema(rec["body"])


@pytest.mark.parametrize("mode,want", [
    ("envelope", "bounces@relay.contoso.test"),
    ("from", "boss@contoso.test"),
    ("shared@contoso.test", "shared@contoso.test"),
], ids=["envelope", "from", "fixed"])
def test_sending_mailbox(relayd_factory, shared_fake_graph, sendmail_schema,
                         mode, want):
    """[graph] mailbox picks the {id} of /users/{id}/sendMail; the message
    (From included) is the same whichever it is."""
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake, mailbox=mode)
    data = simple("mailbox %s" % mode, frm="The Boss <boss@contoso.test>")
    qid = smtp_send(d, data, mail_from="bounces@relay.contoso.test")
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert rec["mailbox"] == want
    assert [r["path"] for r in sendmail_requests(fake)] == [
        "/v1.0/users/%s/sendMail" % want]
    assert rec["body"]["message"]["from"] == addr("boss@contoso.test",
                                                  "The Boss")
    wait_queue_empty(d)
    [line] = log_lines(d, "sent", qid)
    assert " mailbox=%s " % want in line
    sendmail_schema(rec["body"])


def test_save_to_sent_items_no(relayd_factory, shared_fake_graph,
                               sendmail_schema):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake, save_to_sent_items="no")
    smtp_send(d, simple("no copy", "Not kept.\n"))
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert rec["body"] == {
        "message": {
            "subject": "no copy",
            "from": addr(SENDER),
            "toRecipients": [addr("rcpt@fabrikam.test")],
            "body": {"contentType": "text", "content": "Not kept.\r\n"},
        },
        "saveToSentItems": False,
    }
    sendmail_schema(rec["body"])


# --------------------------------------------------------------------------
# 2. the log line and the spool after a delivery

def test_sent_log_line_and_queue_file_removed(relayd_factory,
                                              shared_fake_graph):
    fake = shared_fake_graph
    # The answer takes 400 ms: time to look at the queue file meanwhile.
    fake.faults([{"kind": "graph", "delay_ms": 400}])
    d = graph_relayd(relayd_factory, fake)
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = "a@fabrikam.test, b@fabrikam.test"
    msg["Subject"] = "log line"
    msg["Message-ID"] = "<log-line-1@contoso.test>"
    msg.set_content("With one attachment.\n")
    msg.add_attachment(b"col1,col2\r\n1,2\r\n", maintype="text",
                       subtype="csv", filename="data.csv")
    qid = smtp_send(d, msg.as_bytes(policy=msg.policy.clone(
        linesep="\r\n")), rcpts=["a@fabrikam.test", "b@fabrikam.test"])
    size = d.spool_file(qid).size       # still queued: no answer yet
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    m = d.wait_log(r"^\S+ relayd: %s graph sent (.*)$" % qid)
    ms = re.search(r" ms=(\d+)$", m.group(1))
    assert ms and 400 <= int(ms.group(1)) < 5000, m.group(1)
    assert m.group(1) == (
        "mailbox=%s rcpts=2 size=%d message_id=<log-line-1@contoso.test> "
        "attachments=1 graph_status=202 request_id=%s ms=%s"
        % (SENDER, size, rec["request_id"], ms.group(1)))
    wait_queue_empty(d)
    # its record is marked delivered (D), or its segment already removed
    wait_for(lambda: [(r.id, r.state) for r in d.records()]
             in ([], [(qid, "D")]), 5, "the record to be marked delivered")
    assert d.dead() == []
    assert len(log_lines(d, "sent")) == 1
    assert log_lines(d, "deferred") == [] and log_lines(d, "failed") == []


# --------------------------------------------------------------------------
# 5. temporary failures: throttling, errors, no answer

def test_429_retry_after_honoured(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "status": 429, "retry_after": "1.5"}])
    d = graph_relayd(relayd_factory, fake)
    qid = smtp_send(d, simple("throttled"))
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    wait_queue_empty(d)
    first, second = sendmail_requests(fake)
    assert (first["status"], first["code"]) == (429, "TooManyRequests")
    assert second["status"] == 202 and second["request_id"] == \
        rec["request_id"]
    gap = started(second) - first["time"]
    # Retry-After, not retry_min (200ms) and not much later either
    assert 1.5 <= gap < 3.0, gap
    [line] = log_lines(d, "deferred", qid)
    assert line.endswith(
        'graph deferred mailbox=%s graph_status=429 code=TooManyRequests '
        'message="Please retry again later." attempts=1 retry_in=1.500s '
        'mailbox_held=yes' % SENDER)
    assert len(log_lines(d, "sent", qid)) == 1


def test_dropped_connection_deferred(relayd_factory, shared_fake_graph):
    """The fake reads the request and closes without an answer. On a
    kept-alive connection libcurl itself sends the request again once on a
    new one, so two drops are set up: the second (or the first, on a fresh
    connection) reaches relayd, which defers the message."""
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "drop": True, "count": 2}])
    d = graph_relayd(relayd_factory, fake)
    qid = smtp_send(d, simple("dropped"))
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    wait_queue_empty(d)
    assert [r["code"] or r["status"] for r in sendmail_requests(fake)] == [
        "drop", "drop", 202]
    deferred = log_lines(d, "deferred", qid)
    assert deferred, d.log
    for line in deferred:
        assert " graph_status=0 code=no_answer " in line, line
    assert len(log_lines(d, "sent", qid)) == 1


def test_timeout_deferred(relayd_factory, shared_fake_graph):
    """An answer slower than [graph] timeout: deferred, then delivered."""
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "hang": True}])
    d = graph_relayd(relayd_factory, fake, timeout="1s")
    qid = smtp_send(d, simple("slow"))
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    wait_queue_empty(d)
    hung, ok = sendmail_requests(fake)
    assert (hung["code"], ok["status"]) == ("hang", 202)
    assert 900 <= hung["ms"] < 3000, hung      # relayd gave up after ~1 s
    [line] = log_lines(d, "deferred", qid)
    # the whole request went out before the timeout: it may have been
    # sent, so the retry is marked
    m = re.search(r' graph_status=0 code=no_answer message="[^"]*'
                  r'[Tt]imed? ?out[^"]*" attempts=1 retry_in=([0-9.]+)s '
                  r'possible_duplicate=yes$', line)
    assert m and 0.1 <= float(m.group(1)) <= 0.2, line
    [sent] = log_lines(d, "sent", qid)
    assert sent.endswith(" possible_duplicate=yes"), sent


# --------------------------------------------------------------------------
# 6. permanent failures: dead letters

def test_send_as_denied_dead_letter(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.config(send_as_deny="strict")
    d = graph_relayd(relayd_factory, fake)
    data = simple("not mine", frm="ceo@contoso.test")
    qid = smtp_send(d, data)
    d.wait_log(r" %s graph failed " % qid, DELIVERY_TIMEOUT)
    wait_for(lambda: d.queued() == [], 5, "the message to leave queue/")
    assert d.dead() == [qid, qid + ".reason"]
    [req] = sendmail_requests(fake)
    assert (req["status"], req["code"]) == (403, "ErrorSendAsDenied")
    msg = ("The user account which was used to submit this request does "
           "not have the right to send mail on behalf of the specified "
           "sending account. Cannot submit message.")
    reason = reason_fields(d.dead_dir / (qid + ".reason"))
    # ISO 8601, UTC
    when = datetime.strptime(reason.pop("time"), "%Y-%m-%dT%H:%M:%SZ")
    assert abs(when.replace(tzinfo=timezone.utc).timestamp() -
               time.time()) < 60
    # Graph's whole answer, on one line
    body = json.loads(reason.pop("body"))
    assert body["error"]["code"] == "ErrorSendAsDenied"
    assert body["error"]["message"] == msg
    assert reason == {"reason": "refused", "mailbox": SENDER,
                      "status": "403",
                      "code": "ErrorSendAsDenied", "message": msg,
                      "request-id": req["request_id"], "attempts": "1"}
    # the message itself is kept whole, envelope and all
    dead = SpoolFile(d.dead_dir / qid)
    assert (dead.id, dead.mail_from, dead.rcpts, dead.body) == (
        qid, SENDER, ["rcpt@fabrikam.test"], data)
    assert dead.state == "X"
    # in queue/ its record is marked dead (X), or its segment removed
    wait_for(lambda: [(r.id, r.state) for r in d.records()]
             in ([], [(qid, "X")]), 5, "the record to be marked dead")
    [line] = log_lines(d, "failed", qid)
    assert line.endswith(
        'graph failed mailbox=%s rcpts=1 size=%d message_id=- '
        'graph_status=403 '
        'code=ErrorSendAsDenied message="%s" request_id=%s'
        % (SENDER, dead.size, msg, req["request_id"]))
    # no retry
    holds(lambda: len(sendmail_requests(fake)) == 1, 0.5,
          "a dead letter was sent again")
    assert log_lines(d, "deferred") == [] and fake.stats()["sent"] == 0
    # nor after a restart: dead/ is not the queue
    d.restart()
    assert "spool: 0 queued message(s) found" in d.current_log()
    assert d.segments() == []       # nothing queued in it: removed
    holds(lambda: len(sendmail_requests(fake)) == 1, 0.3,
          "a dead letter was sent again after a restart")
    assert d.dead() == [qid, qid + ".reason"]


@pytest.mark.parametrize("code,message", [
    ("ErrorInvalidUser", "The requested user 'gone@contoso.test' is "
     "invalid."),
    ("MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, "
     "soft-deleted, or is hosted on-premise."),
])
def test_unknown_mailbox_dead_letter(relayd_factory, shared_fake_graph,
                                     code, message):
    fake = shared_fake_graph
    fake.config(unknown_mailboxes={"gone@contoso.test": code})
    d = graph_relayd(relayd_factory, fake)
    qid = smtp_send(d, simple("to nowhere", frm="gone@contoso.test"),
                       mail_from="gone@contoso.test")
    good = smtp_send(d, simple("still fine"))
    d.wait_log(r" %s graph failed " % qid, DELIVERY_TIMEOUT)
    fake.wait_sent(1, DELIVERY_TIMEOUT)
    wait_queue_empty(d)
    assert d.dead() == [qid, qid + ".reason"]
    reason = reason_fields(d.dead_dir / (qid + ".reason"))
    assert (reason["status"], reason["code"], reason["message"],
            reason["mailbox"]) == ("404", code, message, "gone@contoso.test")
    assert [r["status"] for r in sendmail_requests(fake)
            if r["mailbox"] == "gone@contoso.test"] == [404]
    assert len(log_lines(d, "sent", good)) == 1


def test_too_deep_mime_dead_letter_without_request(relayd_factory,
                                                   shared_fake_graph):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake, max_mime_depth=3)
    inner = MIMEText("five multiparts down\n")
    for level in range(5):
        outer = MIMEMultipart("mixed")
        outer.attach(inner)
        inner = outer
    inner["From"] = SENDER
    inner["To"] = "rcpt@fabrikam.test"
    inner["Subject"] = "deep"
    data = inner.as_bytes().replace(b"\n", b"\r\n")
    assert data.count(b"Content-Type: multipart/mixed") == 5
    qid = smtp_send(d, data)
    d.wait_log(r" %s graph failed " % qid, DELIVERY_TIMEOUT)
    wait_for(lambda: d.dead() == [qid, qid + ".reason"], 5,
             "the message in dead/")
    # The record leaves queue/ just after the copy to dead/ (a moment
    # later under valgrind).
    wait_for(lambda: d.queued() == [], 5, "the message to leave queue/")
    reason = reason_fields(d.dead_dir / (qid + ".reason"))
    assert "max_mime_depth" in reason["message"], reason
    assert "3" in reason["message"], reason
    assert reason["attempts"] == "1"
    # refused before any request: not even a token was asked for
    holds(lambda: fake.stats()["requests"] == 0, 0.5,
          "a request was sent for an unmappable message")
    assert "max_mime_depth" in log_lines(d, "failed", qid)[0]


# --------------------------------------------------------------------------
# 7. concurrency

def test_mailbox_concurrency_is_four(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.config(latency_ms=300)
    d = graph_relayd(relayd_factory, fake, queue={"workers": 16})
    with d.connect() as c:
        c.ehlo()
        for i in range(12):
            assert c.send_mail(SENDER, ["rcpt@fabrikam.test"],
                               simple("burst %d" % i)).qid
    sent = fake.wait_sent(12, DELIVERY_TIMEOUT)
    assert sorted(r["body"]["message"]["subject"] for r in sent) == sorted(
        "burst %d" % i for i in range(12))
    st = fake.stats()
    assert st["max_concurrency"] == {SENDER: 4}
    assert st["throttled"] == 0 and "429" not in st["status_counts"]
    assert max_overlap(sendmail_requests(fake)) == 4
    wait_queue_empty(d)


@pytest.mark.parametrize("workers", [16, 3])
def test_mailboxes_in_parallel(relayd_factory, shared_fake_graph, workers):
    """Mailboxes do not wait for each other; [queue] workers caps the
    requests in flight over all of them."""
    fake = shared_fake_graph
    fake.config(latency_ms=300)
    d = graph_relayd(relayd_factory, fake, queue={"workers": workers})
    senders = ["s%d@contoso.test" % i for i in range(3)]
    with d.connect() as c:
        c.ehlo()
        for i in range(6):
            for s in senders:
                assert c.send_mail(s, ["rcpt@fabrikam.test"],
                                   simple("%s %d" % (s, i), frm=s)).qid
    fake.wait_sent(18, DELIVERY_TIMEOUT)
    st = fake.stats()
    assert st["throttled"] == 0 and "429" not in st["status_counts"]
    assert set(st["max_concurrency"]) == set(senders)
    assert all(n <= 4 for n in st["max_concurrency"].values()), st
    overall = max_overlap(sendmail_requests(fake))
    if workers == 16:
        assert overall > 4, overall
    else:
        assert overall == workers, overall
    wait_queue_empty(d)


@pytest.mark.parametrize("mode,other_sender", [
    ("from", "scanner-bounces@contoso.test"),
    ("envelope", ""),
], ids=["mailbox_from", "null_sender"])
def test_mailbox_concurrency_when_mailbox_known_late(
        relayd_factory, shared_fake_graph, mode, other_sender):
    """The sending mailbox can be known only once the message is read:
    with mailbox = from, or for a null sender (MAIL FROM:<>), whose
    mailbox is its From:. Messages for one mailbox that come under two
    envelope senders (the mailbox itself and another) still share its four
    places: never 5, no 429."""
    fake = shared_fake_graph
    fake.config(latency_ms=300)
    d = graph_relayd(relayd_factory, fake, mailbox=mode,
                     queue={"workers": 16})
    boss = "boss@contoso.test"
    with d.connect() as c:
        c.ehlo()
        for i in range(8):
            for env in (other_sender, boss):
                assert c.send_mail(env, ["rcpt@fabrikam.test"],
                                   simple("from <%s> %d" % (env, i),
                                          frm=boss)).qid
    fake.wait_sent(16, DELIVERY_TIMEOUT)
    st = fake.stats()
    assert set(st["max_concurrency"]) == {boss}
    assert st["throttled"] == 0 and "429" not in st["status_counts"], st
    assert st["max_concurrency"][boss] == 4, st
    assert max_overlap(sendmail_requests(fake)) == 4
    wait_queue_empty(d)


def test_sending_mailbox_decided_at_commit(relayd_factory, shared_fake_graph):
    """[graph] mailbox = from: the sending mailbox is decided once, when
    the message is committed, and stored with its envelope (the record's
    mailbox line); delivery sends from that mailbox and counts its limits
    by it. A null sender without From: has none ("<>") and fails with the
    reason. Delivery is paused meanwhile, so the records are looked at
    before any attempt."""
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake, mailbox="from")
    assert d.relayctl("pause").returncode == 0
    boss = "boss@contoso.test"
    nofrom = b"Subject: no From:\r\n\r\nx\r\n"
    cases = [("scanner@contoso.test", simple("a", frm=boss), boss),
             ("", simple("b", frm='"The Boss" <%s>' % boss), boss),
             ("app@contoso.test", nofrom, "app@contoso.test"),
             ("", nofrom, "<>")]
    for env, data, want in cases:
        qid = smtp_send(d, data, mail_from=env)
        assert d.spool_file(qid).mailbox == want, (env, data)
    assert fake.stats()["requests"] == 0
    assert d.relayctl("resume").returncode == 0
    sent = fake.wait_sent(3, DELIVERY_TIMEOUT)
    assert sorted(s["mailbox"].lower() for s in sent) == sorted(
        [boss, boss, "app@contoso.test"])
    d.wait_log(r"graph failed mailbox=<> .*no sending mailbox: null sender "
               r"and no From: address")


# --------------------------------------------------------------------------
# 8. restarts and crashes

def test_queued_without_graph_delivered_after_restart(relayd_factory,
                                                      shared_fake_graph):
    fake = shared_fake_graph
    d = relayd_factory()                        # no [graph]: queue only
    d.wait_log(r"graph: \[graph\] is not configured")
    qids = [smtp_send(d, simple("waiting %d" % i)) for i in range(5)]
    assert sorted(d.queued()) == sorted(qids)
    assert d.stop() == 0
    assert sorted(d.queued()) == sorted(qids)
    assert fake.stats()["requests"] == 0
    d.sections.update(graph_sections(fake))
    d.start()
    d.wait_log(r"spool: 5 queued message\(s\) found")
    sent = fake.wait_sent(5, DELIVERY_TIMEOUT)
    wait_queue_empty(d)
    assert sorted(r["body"]["message"]["subject"] for r in sent) == [
        "waiting %d" % i for i in range(5)]
    assert sorted(re.match(r"([0-9A-F]{16}) ", l).group(1)
                  for l in log_lines(d, "sent")) == sorted(qids)


def test_kill_9_while_graph_hangs(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "hang": True, "count": -1}])
    d = graph_relayd(relayd_factory, fake)
    qid = smtp_send(d, simple("crash"))
    wait_for(lambda: fake.stats()["inflight"].get(SENDER), 5,
             "the request to hang at the fake")
    d.kill()
    assert d.queued() == [qid]
    fake.faults([])
    d.start()
    sent = fake.wait_sent(1, DELIVERY_TIMEOUT)
    wait_queue_empty(d)
    # At least once: had Graph taken the message before the crash but not
    # answered yet, it would be sent again after the restart. That
    # duplicate is possible by design (a 250 must never lose a message).
    assert len(sent) >= 1
    assert all(r["body"]["message"]["subject"] == "crash" for r in sent)
    assert d.dead() == []


# --------------------------------------------------------------------------
# 9. TLS

def test_tls_with_ca_file(relayd_factory, fake_graph_tls, sendmail_schema):
    fake = fake_graph_tls
    d = graph_relayd(relayd_factory, fake)
    assert d.sections["graph"]["ca_file"]
    assert d.sections["graph"]["graph_url"].startswith("https://")
    smtp_send(d, simple("over TLS"))
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert rec["body"]["message"]["subject"] == "over TLS"
    wait_queue_empty(d)
    sendmail_schema(rec["body"])


def test_tls_without_ca_file_deferred(relayd_factory, fake_graph_tls,
                                      sendmail_schema):
    fake = fake_graph_tls
    d = graph_relayd(relayd_factory, fake, ca_file=None)
    qid = smtp_send(d, simple("untrusted"))
    d.wait_log(r" %s graph deferred " % qid, DELIVERY_TIMEOUT)
    log = d.current_log()
    assert re.search(r"token: .*certificate", log), log
    assert fake.stats()["requests"] == 0        # no HTTP got through
    assert d.queued() == [qid] and d.dead() == []
    # nothing lost: with the CA the same message goes out
    d.stop()
    d.sections["graph"]["ca_file"] = str(fake.tls.ca_file)
    d.start()
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert rec["body"]["message"]["subject"] == "untrusted"
    wait_queue_empty(d)
    sendmail_schema(rec["body"])


# --------------------------------------------------------------------------
# 11. SIGTERM with requests in flight

def test_sigterm_with_requests_in_flight(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.config(latency_ms=2000)
    d = graph_relayd(relayd_factory, fake)
    qids = {}
    with d.connect() as c:
        c.ehlo()
        for i in range(8):
            qids["term %d" % i] = c.send_mail(
                SENDER, ["rcpt@fabrikam.test"], simple("term %d" % i)).qid
    wait_for(lambda: fake.stats()["inflight"].get(SENDER) == 4, 5,
             "4 requests in flight")
    t0 = time.monotonic()
    rc = d.stop()
    took = time.monotonic() - t0
    assert rc == 0
    assert took < 5, "relayd took %.1fs to stop" % took
    assert "relayd stopped" in d.current_log()
    # What Graph acknowledged left the queue; the rest is still there.
    accepted = {r["body"]["message"]["subject"] for r in fake.sent()}
    assert len(accepted) == 4, accepted
    assert sorted(d.queued()) == sorted(q for s, q in qids.items()
                                        if s not in accepted)
    for q in d.queued():
        d.spool_file(q)             # whole
    # and the next start sends only those: nothing twice
    fake.config(latency_ms=0)
    d.start()
    sent = fake.wait_sent(8, DELIVERY_TIMEOUT)
    wait_queue_empty(d)
    assert sorted(r["body"]["message"]["subject"] for r in sent) == sorted(
        qids)

