"""Real SMTP clients deliver through relayd."""
import re
import smtplib
from email.message import EmailMessage

import pytest

from relaydtest.daemon import need, run
from relaydtest.smtp import QUEUED_RE


def only_message(d):
    files = d.queued_files()
    assert len(files) == 1, [f.path.name for f in files]
    return files[0]


# ---- Python smtplib

def test_smtplib_sendmail(relayd):
    with smtplib.SMTP("127.0.0.1", relayd.port, timeout=10) as s:
        code, _ = s.ehlo("py.test")
        assert code == 250
        assert s.has_extn("pipelining") and s.has_extn("chunking")
        assert int(s.esmtp_features["size"]) == 35 * 1024 * 1024
        refused = s.sendmail("py@a.test", ["r1@b.test", "r2@b.test"],
                             b"Subject: smtplib\r\n\r\nsent by smtplib\r\n"
                             b".leading dot\r\n")
        assert refused == {}
    f = only_message(relayd)
    assert f.mail_from == "py@a.test"
    assert f.rcpts == ["r1@b.test", "r2@b.test"]
    assert f.get("helo") == "py.test"
    assert b"sent by smtplib\r\n.leading dot\r\n" in f.body


def test_smtplib_send_message(relayd):
    msg = EmailMessage()
    msg["From"] = "Alice <alice@a.test>"
    msg["To"] = "bob@b.test, carol@b.test"
    msg["Cc"] = "dave@b.test"
    msg["Subject"] = "send_message"
    msg.set_content("Hello from send_message.\n")
    with smtplib.SMTP("127.0.0.1", relayd.port, timeout=10) as s:
        assert s.send_message(msg) == {}
    f = only_message(relayd)
    assert f.mail_from == "alice@a.test"
    assert sorted(f.rcpts) == ["bob@b.test", "carol@b.test", "dave@b.test"]
    assert b"Hello from send_message.\r\n" in f.body
    assert b"Subject: send_message\r\n" in f.body


def test_smtplib_send_message_smtputf8(relayd):
    msg = EmailMessage()
    msg["From"] = "j\u00f6rg@a.test"
    msg["To"] = "m\u00fcller@b.test"
    msg["Subject"] = "gr\u00fc\u00dfe"
    msg.set_content("\u00dcmlaute\n")
    with smtplib.SMTP("127.0.0.1", relayd.port, timeout=10) as s:
        assert s.send_message(msg) == {}
    f = only_message(relayd)
    assert f.mail_from == "j\u00f6rg@a.test"
    assert f.rcpts == ["m\u00fcller@b.test"]
    assert "SMTPUTF8" in f.get("mail-params")


def test_smtplib_pipelined_transaction(relayd):
    """The envelope and DATA in one write, as a PIPELINING client does,
    then the replies read one by one with smtplib."""
    with smtplib.SMTP("127.0.0.1", relayd.port, timeout=10) as s:
        s.ehlo("pipe.test")
        assert s.does_esmtp and s.has_extn("pipelining")
        s.send(b"MAIL FROM:<pipe@a.test>\r\n"
               b"RCPT TO:<x1@b.test>\r\n"
               b"RCPT TO:<x2@b.test>\r\n"
               b"DATA\r\n")
        codes = [s.getreply()[0] for _ in range(4)]
        assert codes == [250, 250, 250, 354]
        s.send(b"Subject: pipelined\r\n\r\npipelined body\r\n.\r\n"
               b"MAIL FROM:<pipe@a.test>\r\nRCPT TO:<x3@b.test>\r\n"
               b"DATA\r\n")
        code, text = s.getreply()
        assert code == 250 and QUEUED_RE.match("250 " + text.decode())
        codes = [s.getreply()[0] for _ in range(3)]
        assert codes == [250, 250, 354]
        s.send(b"second\r\n.\r\n")
        assert s.getreply()[0] == 250
    files = sorted(relayd.queued_files(), key=lambda f: f.rcpts)
    assert len(files) == 2
    assert files[0].rcpts == ["x1@b.test", "x2@b.test"]
    assert files[0].body == b"Subject: pipelined\r\n\r\npipelined body\r\n"
    assert files[1].rcpts == ["x3@b.test"]
    assert files[1].body == b"second\r\n"


# ---- swaks

@pytest.mark.parametrize("pipeline", [False, True], ids=["plain", "pipeline"])
def test_swaks(relayd, pipeline):
    swaks = need("swaks")
    args = [swaks, "--server", "127.0.0.1:%d" % relayd.port,
            "--from", "swaks@a.test", "--to", "t1@b.test,t2@b.test",
            "--helo", "swaks.test", "--header", "Subject: swaks test",
            "--body", "swaks body line\n..two dots\n", "--timeout", "10"]
    if pipeline:
        args.append("--pipeline")
    r = run(args)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    assert "250 2.0.0 Ok: queued as" in out
    if pipeline:
        # swaks sent MAIL/RCPT/RCPT/DATA together
        assert "PIPELINING" in out
    f = only_message(relayd)
    assert f.mail_from == "swaks@a.test"
    assert f.rcpts == ["t1@b.test", "t2@b.test"]
    assert f.get("helo") == "swaks.test"
    assert b"swaks body line\r\n" in f.body
    assert b"Subject: swaks test\r\n" in f.body


# ---- curl

def test_curl(relayd, tmp_path):
    curl = need("curl")
    msg = tmp_path / "mail.txt"
    msg.write_bytes(b"From: curl@a.test\r\nTo: c@b.test\r\n"
                    b"Subject: curl test\r\n\r\nuploaded by curl\r\n"
                    b".dot line\r\n")
    r = run([curl, "-sS", "--max-time", "10",
             "smtp://127.0.0.1:%d" % relayd.port,
             "--mail-from", "curl@a.test", "--mail-rcpt", "c@b.test",
             "--mail-rcpt", "d@b.test", "--upload-file", str(msg)])
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    f = only_message(relayd)
    assert f.mail_from == "curl@a.test"
    assert f.rcpts == ["c@b.test", "d@b.test"]
    # curl dot-stuffs, relayd unstuffs: the body comes back as it was.
    assert f.body.endswith(b"\r\nuploaded by curl\r\n.dot line\r\n")


# ---- msmtp

def test_msmtp(relayd, tmp_path):
    msmtp = need("msmtp")
    rc = tmp_path / "msmtprc"
    rc.write_text("defaults\n"
                  "account default\n"
                  "host 127.0.0.1\n"
                  "port %d\n"
                  "auth off\n"
                  "tls off\n"
                  "from msmtp@a.test\n"
                  "domain msmtp.test\n"
                  "timeout 10\n" % relayd.port)
    rc.chmod(0o600)
    r = run([msmtp, "-C", str(rc), "m1@b.test", "m2@b.test"],
            input=b"Subject: msmtp test\n\nsent with msmtp\n.dot\n")
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")
    f = only_message(relayd)
    assert f.mail_from == "msmtp@a.test"
    assert f.rcpts == ["m1@b.test", "m2@b.test"]
    assert f.get("helo") == "msmtp.test"
    assert f.body.endswith(b"sent with msmtp\r\n.dot\r\n")


# ---- Postfix smtp-source

def test_smtp_source(relayd):
    src = need("/usr/sbin/smtp-source")
    r = run([src, "-s", "4", "-m", "50", "-l", "2048",
             "-f", "source@a.test", "-t", "sink@b.test",
             "127.0.0.1:%d" % relayd.port], timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")
    files = relayd.queued_files()
    assert len(files) == 50
    assert len({f.id for f in files}) == 50
    bodies = set()
    for f in files:
        assert f.mail_from == "source@a.test"
        assert f.rcpts == ["sink@b.test"]
        assert b"\r\nTo: <sink@b.test>\r\n" in f.body
        # -l 2048: about 2k of "<digit>XXXX...X" lines after the headers
        body = f.body[f.body.index(b"\r\n\r\n") + 4:]
        assert 2000 <= len(body) <= 2200, len(body)
        assert re.fullmatch(rb"(?:\d*X+\r\n)+", body), body[:200]
        bodies.add(body)
    assert len(bodies) == 1, "smtp-source sends the same body each time"
    logged = relayd.log.count(" smtp queued session=")
    assert logged == 50
