"""Message history: the real daemon records each message's life in
<spool>/history.db, and the real relayctl history reads it back.

Messages go in with smtplib and out to the fake Graph: one sent, one
Graph refuses (send_as_deny: failed), one expired (503s past a short
lifetime), one deleted with relayctl; then every filter, --id with and
without <>, the --json fields, the table, [queue] history = 0, [log]
subjects = no, a raw 8-bit Subject, pruning past the retention, a broken
database moved aside, an outcome whose queued row predates history, and
a kill -9 during intake that loses no message.
"""
import json
import os
import re
import stat
import smtplib
import sqlite3
import threading
import time
from email.message import EmailMessage

from relaydtest.graph import graph_relayd, graph_sections
from relaydtest.smtp import QUEUED_RE, SENDER, smtp_send
from relaydtest.wait import wait_for

TIMEOUT = 15
FIELDS = ["id", "received", "client", "user", "sender", "mailbox",
          "recipients", "message_id", "subject", "size", "status",
          "attempts", "graph_status", "graph_code", "request_id", "sent"]
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
SLOW = "slow@contoso.test"


def message(subject, msgid=None, frm=SENDER, to="rcpt@fabrikam.test"):
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = to
    msg["Subject"] = subject
    if msgid:
        msg["Message-ID"] = msgid
    msg.set_content("Hello.\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def history(d, *args):
    """relayctl history --json ARGS: the list."""
    r = d.relayctl("history", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def ids(d, *args):
    return [m["id"] for m in history(d, *args)]


def wait_status(d, qid, status, timeout=TIMEOUT):
    def row():
        rows = history(d, "--id", qid)
        return rows[0] if rows and rows[0]["status"] == status else None
    wait_for(row, timeout, "history of %s: %s" % (qid, status))
    return row()


def test_history_lives_and_filters(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.config(send_as_deny="strict")
    fake.faults([{"kind": "graph", "mailbox": SLOW, "status": 503,
                  "retry_after": "60", "count": -1}])
    d = graph_relayd(relayd_factory, fake)
    sent = smtp_send(d, message("=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= history",
                                   "<hist-a@contoso.test>"),
                        rcpts=["rcpt@fabrikam.test", "Other@Fabrikam.test"])
    failed = smtp_send(d, message("not mine", "<hist-b@contoso.test>",
                                     frm="ceo@contoso.test"))
    kept = smtp_send(d, message("slow one", "<hist-c@contoso.test>"),
                        mail_from=SLOW, rcpts=["third@fabrikam.test"])

    a = wait_status(d, sent, "sent")
    assert list(a) == FIELDS                      # exactly, in this order
    assert a["client"] == "127.0.0.1" and a["user"] is None
    assert (a["sender"], a["mailbox"]) == (SENDER, SENDER)
    assert a["recipients"] == ["rcpt@fabrikam.test", "Other@Fabrikam.test"]
    assert a["message_id"] == "<hist-a@contoso.test>"
    assert a["subject"] == "Grüße history"         # RFC 2047 decoded
    assert (a["attempts"], a["graph_status"], a["graph_code"]) == (1, 202,
                                                                 None)
    reqs = [r for r in fake.requests() if r["kind"] == "graph"
            and r["status"] == 202]
    assert a["request_id"] == reqs[0]["request_id"]
    assert ISO.match(a["received"]) and ISO.match(a["sent"])
    assert a["received"] <= a["sent"]

    b = wait_status(d, failed, "failed")
    assert (b["graph_status"], b["graph_code"], b["attempts"]) == (
        403, "ErrorSendAsDenied", 1)
    assert b["request_id"] and b["mailbox"] == SENDER

    # the third waits (503, retry in 60 s): queued, no outcome yet
    wait_for(lambda: any(l for l in d.log.splitlines()
                         if " %s graph deferred " % kept in l), TIMEOUT,
             "the slow one deferred")
    c = history(d, "--id", kept)[0]
    assert (c["status"], c["sent"], c["graph_status"]) == ("queued", None,
                                                            None)
    # one size everywhere: the spooled record, the queued line, history
    size = d.spool_file(kept).size
    assert c["size"] == size
    d.wait_log(r" %s smtp queued .* size=%d " % (kept, size))
    r = d.relayctl("delete", kept)
    assert r.returncode == 0, r.stderr
    c = wait_status(d, kept, "deleted")
    assert c["sent"] is not None

    # the sent and failed lines say the size history says
    m = d.wait_log(r" %s graph sent .* size=(\d+) " % sent)
    assert int(m.group(1)) == a["size"]
    m = d.wait_log(r" %s graph failed .* size=(\d+) " % failed)
    assert int(m.group(1)) == b["size"]

    # newest first, and every filter
    assert ids(d) == [kept, failed, sent]
    assert ids(d, "--since", "1h") == [kept, failed, sent]
    assert ids(d, "--sender", SENDER.upper()) == [failed, sent]
    assert ids(d, "--sender", SLOW) == [kept]
    assert ids(d, "--rcpt", "other@fabrikam.test") == [sent]
    assert ids(d, "--rcpt", "third@fabrikam.test") == [kept]
    assert ids(d, "--rcpt", "nobody@fabrikam.test") == []
    assert ids(d, "--client", "127.0.0.1") == [kept, failed, sent]
    assert ids(d, "--client", "10.9.9.9") == []
    assert ids(d, "--status", "sent") == [sent]
    assert ids(d, "--status", "failed") == [failed]
    assert ids(d, "--status", "deleted") == [kept]
    assert ids(d, "--status", "expired") == []
    assert ids(d, "--id", sent) == [sent]
    assert ids(d, "--id", "<hist-b@contoso.test>") == [failed]
    assert ids(d, "--id", "hist-b@contoso.test") == [failed]
    assert ids(d, "--sender", SENDER, "--status", "sent") == [sent]
    assert ids(d, "--limit", "2") == [kept, failed]

    # the table: a line per message, the footer says when more matched
    r = d.relayctl("history")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["RECEIVED", "ID", "STATUS"]
    assert re.match(r"^\S+Z +%s +sent +1 +%d <%s> -> rcpt@fabrikam.test, "
                    r"Other@Fabrikam.test \(%s\) \"Grüße history\"$"
                    % (sent, a["size"], re.escape(SENDER), re.escape(SENDER)),
                    [l for l in lines if sent in l][0])
    assert any("graph 403 ErrorSendAsDenied request-id %s" % b["request_id"]
               in l for l in lines)
    assert lines[-1] == "-- 3 message(s)"
    r = d.relayctl("history", "--limit", "1")
    assert r.stdout.splitlines()[-1].startswith(
        "-- the newest 1 shown; more matched")
    r = d.relayctl("history", "--status", "bounced")
    assert r.returncode == 64 and "--status is one of" in r.stderr
    r = d.relayctl("history", "--since", "yesterday")
    assert r.returncode == 64 and "--since wants a duration" in r.stderr

    # the database: in the spool, private
    db = d.spool / "history.db"
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600


def test_history_expired(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "status": 503, "retry_after": "1",
                  "count": -1}])
    d = graph_relayd(relayd_factory, fake, queue={"lifetime": "1s"})
    qid = smtp_send(d, message("too late"))
    e = wait_status(d, qid, "expired")
    assert e["graph_status"] == 503 and e["attempts"] >= 2
    assert e["graph_code"] == "serviceNotAvailable"


def test_history_off(relayd_factory):
    d = relayd_factory(sections={"queue": {"history": "0"}})
    smtp_send(d, message("no history"))
    assert not (d.spool / "history.db").exists()
    r = d.relayctl("history")
    assert r.returncode == 1
    assert "history is off ([queue] history = 0" in r.stderr


def test_history_without_subjects(relayd_factory):
    d = relayd_factory(sections={"log": {"subjects": "no"}})
    qid = smtp_send(d, message("secret plans", "<s@contoso.test>"))
    rows = []
    wait_for(lambda: rows.extend(history(d, "--id", qid)) or rows, TIMEOUT,
             "the queued row")
    assert rows[0]["subject"] is None
    assert rows[0]["message_id"] == "<s@contoso.test>"
    # not stored at all, not just not shown
    assert b"secret plans" not in b"".join(
        p.read_bytes() for p in d.spool.glob("history.db*"))


def test_history_pruned_past_retention(relayd_factory):
    """Rows older than [queue] history go (at start, then hourly), with
    their recipients; younger ones stay."""
    d = relayd_factory(sections={"queue": {"history": "3s"}})
    old = smtp_send(d, message("old one"), rcpts=["a@fabrikam.test",
                                                     "b@fabrikam.test"])
    wait_for(lambda: ids(d) == [old], TIMEOUT, "the old row")
    time.sleep(3.2)
    young = smtp_send(d, message("young one"))
    wait_for(lambda: ids(d) == [young, old], TIMEOUT, "both rows")
    d.restart()
    d.wait_log(r"history: 1 message\(s\) older than \[queue\] history "
               r"removed")
    assert ids(d) == [young]
    db = sqlite3.connect("file:%s?mode=ro" % (d.spool / "history.db"),
                         uri=True)
    try:
        assert db.execute("SELECT rcpt FROM recipients").fetchall() == [
            ("rcpt@fabrikam.test",)]
    finally:
        db.close()


def test_broken_database_moved_aside(relayd_factory):
    """A history.db that is not a database: relayd says so and what to
    do, moves it aside, starts a fresh one, and mail flows."""
    d = relayd_factory(start=False)
    d.spool.mkdir(parents=True, exist_ok=True)
    (d.spool / "history.db").write_bytes(b"garbage " * 512)
    d.start()
    d.wait_log(r"history: \S+/history\.db cannot be used \(file is not a "
               r"database\): moved to \S+/history\.db\.broken-\d{8}T\d{6}Z "
               r"and a new one begun; mail is not affected")
    [aside] = list(d.spool.glob("history.db.broken-*"))
    assert aside.read_bytes() == b"garbage " * 512
    qid = smtp_send(d, message("after the move"))
    wait_for(lambda: ids(d) == [qid], TIMEOUT, "the new row")


def test_history_subject_8bit(relayd_factory):
    """A raw windows-1252 Subject is kept as UTF-8 (JSON needs it)."""
    d = relayd_factory()
    qid = smtp_send(d, b"From: <sender@contoso.test>\r\n"
                          b"Subject: caf\xe9 ready\r\n\r\nbody\r\n")
    rows = []
    wait_for(lambda: rows.extend(history(d, "--id", qid)) or rows, TIMEOUT,
             "the queued row")
    assert rows[0]["subject"] == "caf\u00e9 ready"


def test_outcome_without_queued_row(relayd_factory, shared_fake_graph):
    """A message queued while history was off (or before an upgrade) gets
    a row at its outcome with what the queue knows."""
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "status": 503, "retry_after": "60",
                  "count": -1}])
    d = graph_relayd(relayd_factory, fake, queue={"history": "0"})
    qid = smtp_send(d, message("from before"))
    d.wait_log(r" %s graph deferred " % qid)
    size = d.spool_file(qid).size
    d.stop()
    fake.faults([])
    del d.sections["queue"]["history"]
    d.start()
    r = d.relayctl("retry", qid)
    row = wait_status(d, qid, "sent")
    assert (row["sender"], row["size"], row["mailbox"]) == (SENDER, size,
                                                           SENDER)
    assert row["attempts"] == 2 and row["graph_status"] == 202
    assert ISO.match(row["received"]) and row["client"] is None


def test_kill9_during_intake_loses_no_message(relayd_factory):
    """History is written off the intake path: a kill -9 in the middle of
    a burst loses no acknowledged message (history may lose its last
    moments, and has nothing that was not acknowledged)."""
    d = relayd_factory()
    acked, stop = [], threading.Event()

    def client(n):
        while not stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", d.port, timeout=5) as s:
                    s.ehlo("client.test")
                    s.mail(SENDER)
                    s.rcpt("rcpt%d@fabrikam.test" % n)
                    code, text = s.data(message("burst %d" % n))
                m = QUEUED_RE.match("%d %s" % (code, text.decode()))
                if m:
                    acked.append(m.group(1))
            except (OSError, smtplib.SMTPException):
                return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 40, TIMEOUT, "40 messages acknowledged")
    early = list(acked)
    time.sleep(1.6)             # history's batch (1 s) of the first ones
    d.kill()
    stop.set()
    for t in threads:
        t.join(10)
    d.start()
    queued = set(d.queued())
    assert set(acked) <= queued, "acknowledged messages lost"
    recorded = set(ids(d, "--limit", "10000"))
    assert recorded <= queued          # nothing unacknowledged recorded
    assert set(early) <= recorded      # older than a batch: written


def test_history_of_dead_letters_and_refusals(relayd_factory,
                                              shared_fake_graph):
    """A dead letter deleted with relayctl is 'deleted'; one retried gets a
    row of its own for its new id, which ends 'sent'; a synchronous
    refusal (reply_after = graph) is 'refused'; the metric counts rows."""
    fake = shared_fake_graph
    fake.config(send_as_deny="strict")
    d = graph_relayd(relayd_factory, fake)
    gone = smtp_send(d, message("delete me", "<hist-del@contoso.test>",
                                   frm="ceo@contoso.test"))
    again = smtp_send(d, message("again", "<hist-again@contoso.test>",
                                    frm="ceo@contoso.test"))
    wait_status(d, gone, "failed")
    wait_status(d, again, "failed")
    wait_for(lambda: {gone, again} <= set(d.dead()), TIMEOUT, "dead/")
    assert d.relayctl("delete", gone).returncode == 0
    assert wait_status(d, gone, "deleted")["attempts"] == 1
    fake.config(send_as_deny=None)
    r = d.relayctl("retry", again)
    assert r.returncode == 0, r.stderr
    new = r.stdout.split()[-1]
    row = wait_status(d, new, "sent")
    assert (row["client"], row["sender"], row["subject"],
            row["message_id"], row["recipients"]) == (
        "relayd", SENDER, "again", "<hist-again@contoso.test>",
        ["rcpt@fabrikam.test"]), row
    # the old id keeps its own story
    assert history(d, "--id", again)[0]["status"] == "failed"
    m = re.search(r"^relayd_history_entries (\d+)$",
                  d.relayctl("metrics").stdout, re.M)
    assert m and int(m.group(1)) == 3, m

    fake.config(send_as_deny="strict")
    s = relayd_factory(sections=graph_sections(fake),
                       smtp={"reply_after": "graph"})
    with smtplib.SMTP("127.0.0.1", s.port, timeout=30) as c:
        c.ehlo("client.test")
        c.mail(SENDER)
        c.rcpt("rcpt@fabrikam.test")
        code, text = c.data(message("refuse me", "<hist-ref@contoso.test>",
                                    frm="ceo@contoso.test"))
    assert code == 550, (code, text)
    [row] = wait_for(lambda: [x for x in history(s, "--status", "refused")],
                     TIMEOUT, "a refused row")
    assert (row["message_id"], row["graph_status"], row["graph_code"]) == (
        "<hist-ref@contoso.test>", 403, "ErrorSendAsDenied"), row
