"""relayd-sendmail: the sendmail(8) local programs call (issue 15).

The real binary, run as cron runs it (`env -i` and a PATH, nothing else),
against a real relayd: either one delivering to the fake Graph (what the
mailbox finally gets), or one without [graph], which only queues, so that
the spool shows exactly what relayd-sendmail handed over (a record in the
spool is what exit 0 promises). Exit codes are sysexits, with one line on
standard error.
"""
import os
import re
import socket
import subprocess
import threading

import pytest

from relaydtest.env import RELAYCTL_BIN, RELAYD_BIN, SENDMAIL_BIN
from relaydtest.graph import graph_sections
from relaydtest.ports import free_port
from relaydtest.wait import wait_for

SENDER = "server1@contoso.test"
ENV = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
DELIVERY_TIMEOUT = 10

CRON_MAIL = (b"From: root (Cron Daemon)\n"
             b"To: root\n"
             b"Subject: Cron <root@web1> /usr/local/bin/backup\n"
             b"MIME-Version: 1.0\n"
             b"Content-Type: text/plain; charset=UTF-8\n"
             b"Content-Transfer-Encoding: 8bit\n"
             b"X-Cron-Env: <SHELL=/bin/sh>\n"
             b"\n"
             b"backup done: 3 files, 12 MB\n"
             b"caf\xc3\xa9 ok\n")


def sendmail(conf, *args, data=b"", timeout=90):
    """relayd-sendmail -C conf ARGS < data, with cron's bare environment:
    CompletedProcess (bytes)."""
    return subprocess.run(ENV + [str(SENDMAIL_BIN), "-C", str(conf)]
                          + list(args), input=data, capture_output=True,
                          timeout=timeout)


def one_line(r):
    """The one line a failure writes on standard error."""
    err = r.stderr.decode()
    assert err.startswith("relayd-sendmail: ") and err.count("\n") == 1, \
        repr(err)
    assert r.stdout == b""
    return err


def spool_relayd(relayd_factory, sender=SENDER, smtp=None, sections=None,
                 **kw):
    """A relayd without [graph]: it only queues, so the spool shows what
    arrived."""
    secs = {"sendmail": {"sender": sender}} if sender else {}
    secs.update(sections or {})
    return relayd_factory(smtp=smtp, sections=secs, **kw)


def the_record(d):
    [rec] = wait_for(d.queued_files, 5, "the message in the spool")
    return rec


def header_block(body):
    return body[:body.index(b"\r\n\r\n") + 2]


def headers(body, name):
    """The values of every `name:` field of the header (unfolded)."""
    text = header_block(body).decode("utf-8", "replace")
    text = re.sub(r"\r\n[ \t]", " ", text)
    return [l.split(":", 1)[1].strip() for l in text.split("\r\n")
            if l.lower().startswith(name.lower() + ":")]


def message_body(rec):
    b = rec.body
    return b[b.index(b"\r\n\r\n") + 4:]


def addr(address, name=None):
    ea = {"address": address}
    if name is not None:
        ea["name"] = name
    return {"emailAddress": ea}


# --------------------------------------------------------------------------
# cron, end to end

def test_cron_mail_reaches_graph_as_the_sender_mailbox(relayd_factory,
                                                       shared_fake_graph):
    """Debian's cron: `sendmail -FCronDaemon -i -B8BITMIME -oem root`, From:
    root (Cron Daemon). The [sendmail] sender mailbox sends it, the display
    name kept, and root's mail goes to that mailbox."""
    fake = shared_fake_graph
    sections = graph_sections(fake)
    sections["queue"] = {"retry_min": "200ms", "messages_per_minute": "0"}
    sections["sendmail"] = {"sender": SENDER}
    d = relayd_factory(sections=sections)
    r = sendmail(d.conf_path, "-FCronDaemon", "-i", "-B8BITMIME", "-oem",
                 "root", data=CRON_MAIL)
    assert (r.returncode, r.stderr) == (0, b"")
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert rec["mailbox"] == SENDER
    msg = rec["body"]["message"]
    assert msg["from"] == addr(SENDER, "Cron Daemon")
    assert msg["toRecipients"] == [addr(SENDER)]
    assert msg["subject"] == "Cron <root@web1> /usr/local/bin/backup"
    assert msg["body"]["content"] == \
        "backup done: 3 files, 12 MB\r\ncaf\u00e9 ok\r\n"
    assert re.match(r"^<\d+\.[0-9a-f]{16}@relayd\.test>$",
                    msg["internetMessageId"]), msg["internetMessageId"]


def test_cron_mail_in_the_spool(relayd_factory):
    """What cron's message became, byte for byte around the fixed-up
    fields: envelope from the [sendmail] sender, CRLF line ends, 8BITMIME,
    the other header fields untouched."""
    d = spool_relayd(relayd_factory)
    r = sendmail(d.conf_path, "-FCronDaemon", "-i", "-B8BITMIME", "-oem",
                 "root", data=CRON_MAIL)
    assert (r.returncode, r.stderr) == (0, b"")
    rec = the_record(d)
    assert rec.mail_from == SENDER
    assert rec.rcpts == [SENDER]
    assert "BODY=8BITMIME" in rec.get("mail-params")
    body = rec.body
    assert headers(body, "From") == ["Cron Daemon <%s>" % SENDER]
    assert headers(body, "To") == [SENDER]
    for line in CRON_MAIL.split(b"\n")[2:7]:
        assert line + b"\r\n" in header_block(body), line
    assert message_body(rec) == b"backup done: 3 files, 12 MB\r\ncaf\xc3\xa9 ok\r\n"


# --------------------------------------------------------------------------
# the message

def test_t_takes_recipients_from_the_header_and_drops_bcc(relayd_factory):
    d = spool_relayd(relayd_factory)
    data = (b"From: Reports <reports@contoso.test>\n"
            b"To: alice@fabrikam.test\n"
            b"Cc: \"Doe, John\" <john@fabrikam.test>,\n"
            b"\tcarol@fabrikam.test\n"
            b"Bcc: hidden@fabrikam.test\n"
            b"Subject: weekly\n\nnumbers\n")
    r = sendmail(d.conf_path, "-t", "-i", data=data)
    assert (r.returncode, r.stderr) == (0, b"")
    rec = the_record(d)
    assert rec.rcpts == ["alice@fabrikam.test", "john@fabrikam.test",
                         "carol@fabrikam.test", "hidden@fabrikam.test"]
    assert headers(rec.body, "Bcc") == []
    assert b"hidden" not in rec.body
    # a From: of a real mailbox stays; the envelope is the sender mailbox
    assert rec.mail_from == SENDER
    assert (b"From: Reports <reports@contoso.test>\r\n"
            b"To: alice@fabrikam.test\r\n"
            b"Cc: \"Doe, John\" <john@fabrikam.test>,\r\n"
            b"\tcarol@fabrikam.test\r\n"
            b"Subject: weekly\r\n") in rec.body


@pytest.mark.parametrize("given, want", [
    ("root (Cron Daemon)", "Cron Daemon <%s>" % SENDER),
    ("Cron Daemon <root>", "Cron Daemon <%s>" % SENDER),
    ("\"mdadm monitoring\" <root@localhost>",
     "mdadm monitoring <%s>" % SENDER),
    ("root@relayd.test", "Backup Job <%s>" % SENDER),      # -F's name
    ("=?utf-8?q?J=C3=B6rg?= <www-data>", "=?UTF-8?b?SsO2cmc=?= <%s>"
     % SENDER),
    ("Alerts <alerts@contoso.test>", "Alerts <alerts@contoso.test>"),
])
def test_a_local_from_becomes_the_sender_mailbox(relayd_factory, given,
                                                 want):
    d = spool_relayd(relayd_factory)
    r = sendmail(d.conf_path, "-F", "Backup Job", "alice@fabrikam.test",
                 data=b"From: %s\nSubject: x\n\nx\n" % given.encode())
    assert (r.returncode, r.stderr) == (0, b"")
    assert headers(the_record(d).body, "From") == [want]


def test_local_recipients_go_to_the_sender_mailbox(relayd_factory):
    """root, www-data@localhost and a bare name on the command line: the
    [sendmail] sender mailbox, in the envelope and the header; a quoted
    comma in a name is no list separator."""
    d = spool_relayd(relayd_factory)
    data = (b"To: root, \"Doe, John\" <john@fabrikam.test>\n"
            b"Cc: www-data@localhost\n"
            b"Subject: local\n\nx\n")
    r = sendmail(d.conf_path, "-t", "admin", data=data)
    assert (r.returncode, r.stderr) == (0, b"")
    rec = the_record(d)
    assert rec.rcpts == [SENDER, "john@fabrikam.test"]
    assert headers(rec.body, "To") == [
        '%s, "Doe, John" <john@fabrikam.test>' % SENDER]
    assert headers(rec.body, "Cc") == [SENDER]


def test_t_without_recipients_is_refused(relayd_factory):
    d = spool_relayd(relayd_factory)
    r = sendmail(d.conf_path, "-t", data=b"Subject: to nobody\n\nx\n")
    assert r.returncode == 65
    assert "no recipients" in one_line(r)
    assert d.queued() == []


def test_f_overrides_the_sender_and_f_without_at_does_not(relayd_factory):
    d = spool_relayd(relayd_factory)
    r = sendmail(d.conf_path, "-f", "shop@contoso.test", "-F", "Web Shop",
                 "alice@fabrikam.test", data=b"Subject: order\n\nthanks\n")
    assert (r.returncode, r.stderr) == (0, b"")
    rec = the_record(d)
    assert rec.mail_from == "shop@contoso.test"
    assert headers(rec.body, "From") == ["Web Shop <shop@contoso.test>"]

    d2 = spool_relayd(relayd_factory, name="second")
    r = sendmail(d2.conf_path, "-f", "www-data", "alice@fabrikam.test",
                 data=b"From: www-data\nSubject: x\n\nx\n")
    assert (r.returncode, r.stderr) == (0, b"")
    rec = the_record(d2)
    assert rec.mail_from == SENDER
    assert headers(rec.body, "From") == [SENDER]


def test_without_a_sender_user_at_hostname_is_used(relayd_factory):
    """No [sendmail] sender, no -f: the invoking user's name@hostname,
    which relayd may take (no [senders] rule here)."""
    import pwd
    user = pwd.getpwuid(os.getuid()).pw_name
    d = spool_relayd(relayd_factory, sender=None)
    r = sendmail(d.conf_path, "alice@fabrikam.test",
                 data=b"Subject: x\n\nx\n")
    assert (r.returncode, r.stderr) == (0, b"")
    rec = the_record(d)
    assert rec.mail_from == "%s@relayd.test" % user
    assert headers(rec.body, "From") == ["%s@relayd.test" % user]


def test_date_and_message_id_added_only_when_missing(relayd_factory):
    d = spool_relayd(relayd_factory)
    r = sendmail(d.conf_path, "alice@fabrikam.test",
                 data=b"Subject: bare\n\nx\n")
    assert (r.returncode, r.stderr) == (0, b"")
    rec = the_record(d)
    [date] = headers(rec.body, "Date")
    assert re.match(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|"
                    r"May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
                    r"\d\d:\d\d:\d\d [+-]\d{4}$", date), date
    [mid] = headers(rec.body, "Message-ID")
    assert re.match(r"^<\d+\.[0-9a-f]{16}@relayd\.test>$", mid), mid
    [frm] = headers(rec.body, "From")
    assert frm == SENDER

    d2 = spool_relayd(relayd_factory, name="second")
    given = (b"Date: Mon, 03 Mar 2025 10:00:00 +0000\n"
             b"Message-Id: <given@contoso.test>\n"
             b"Subject: dated\n\nx\n")
    r = sendmail(d2.conf_path, "alice@fabrikam.test", data=given)
    assert (r.returncode, r.stderr) == (0, b"")
    rec = the_record(d2)
    assert headers(rec.body, "Date") == ["Mon, 03 Mar 2025 10:00:00 +0000"]
    assert headers(rec.body, "Message-ID") == ["<given@contoso.test>"]


def test_a_dot_line_ends_the_input_without_i(relayd_factory):
    d = spool_relayd(relayd_factory)
    r = sendmail(d.conf_path, "alice@fabrikam.test",
                 data=b"Subject: dot\n\nfirst\n.\nnot part of it\n")
    assert (r.returncode, r.stderr) == (0, b"")
    assert message_body(the_record(d)) == b"first\r\n"


@pytest.mark.parametrize("flag", ["-i", "-oi"])
def test_a_dot_line_is_text_with_i(relayd_factory, flag):
    """With -i the lone dot and a line starting with one arrive as sent
    (dot-stuffed on the wire, unstuffed by relayd)."""
    d = spool_relayd(relayd_factory)
    r = sendmail(d.conf_path, flag, "alice@fabrikam.test",
                 data=b"Subject: dot\n\nfirst\n.\n.hidden\n..two\nlast")
    assert (r.returncode, r.stderr) == (0, b"")
    assert message_body(the_record(d)) == \
        b"first\r\n.\r\n.hidden\r\n..two\r\nlast\r\n"


def test_line_ends_become_crlf(relayd_factory):
    """LF, CRLF and a progress bar's lone CR all end a line; relayd would
    refuse a bare CR."""
    d = spool_relayd(relayd_factory)
    r = sendmail(d.conf_path, "-i", "alice@fabrikam.test",
                 data=b"Subject: ends\r\n\r\nlf\ncrlf\r\n10%\r50%\r100%\n")
    assert (r.returncode, r.stderr) == (0, b"")
    assert message_body(the_record(d)) == \
        b"lf\r\ncrlf\r\n10%\r\n50%\r\n100%\r\n"


def test_a_large_message_arrives_intact(relayd_factory):
    """1 MiB of lines, some starting with a dot, one of 5000 bytes."""
    d = spool_relayd(relayd_factory)
    lines = [(b"." if i % 7 == 0 else b"") + b"%06d " % i + os.urandom(30)
             .hex().encode() for i in range(16000)]
    lines.append(b"x" * 5000)
    body = b"\n".join(lines) + b"\n"
    assert len(body) > 1024 * 1024
    r = sendmail(d.conf_path, "-i", "alice@fabrikam.test",
                 data=b"Subject: big\n\n" + body)
    assert (r.returncode, r.stderr) == (0, b"")
    assert message_body(the_record(d)) == body.replace(b"\n", b"\r\n")


# --------------------------------------------------------------------------
# which listener

def test_the_first_plain_loopback_or_wildcard_listener(relayd_factory):
    """A proxy listener (it wants a PROXY header first) and one on another
    address are passed over; 0.0.0.0 is reached on 127.0.0.1."""
    p1, p2 = free_port(), free_port()
    while p2 == p1:
        p2 = free_port()
    d = spool_relayd(relayd_factory, listen=[
        "127.0.0.1:%d proxy" % p1, "0.0.0.0:%d networks=127.0.0.0/8" % p2])
    r = sendmail(d.conf_path, "alice@fabrikam.test", data=b"Subject: x\n\nx\n")
    assert (r.returncode, r.stderr) == (0, b"")
    assert the_record(d).get("listener") == "0.0.0.0:%d" % p2


def test_no_usable_listener_is_a_config_error(tmp_path):
    conf = tmp_path / "relayd.conf"
    conf.write_text("[smtp]\nlisten = 127.0.0.1:2525 proxy\n")
    r = sendmail(conf, "alice@fabrikam.test", data=b"Subject: x\n\nx\n")
    assert r.returncode == 78
    assert "%s: no listener relayd-sendmail can use" % conf in one_line(r)


# --------------------------------------------------------------------------
# failures: exit code, one line, nothing half sent

def test_relayd_down_is_a_temporary_failure(relayd_factory):
    d = spool_relayd(relayd_factory)
    d.stop()
    r = sendmail(d.conf_path, "-i", "alice@fabrikam.test",
                 data=b"Subject: lost?\n\nx\n")
    assert r.returncode == 75
    assert "cannot reach relayd at 127.0.0.1:%d: Connection refused" \
        % d.port in one_line(r)
    d.start()
    assert d.queued() == []


def test_a_4xx_keeps_nothing(relayd_factory):
    """relayd's 452 to the second recipient: exit 75, and the first one
    got nothing either (no DATA)."""
    d = spool_relayd(relayd_factory, smtp={"max_recipients": "1"})
    r = sendmail(d.conf_path, "alice@fabrikam.test", "bob@fabrikam.test",
                 data=b"Subject: x\n\nx\n")
    assert r.returncode == 75
    assert "452 4.5.3" in one_line(r)
    assert d.queued() == []


def test_a_connection_lost_in_data_sends_nothing(tmp_path):
    """A server that drops the connection in the middle of DATA: exit 75,
    "not sent", and it never saw the end of the data."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    got = []

    def serve():
        c, _ = srv.accept()
        f = c.makefile("rwb")
        f.write(b"220 fake\r\n")
        f.flush()
        for reply in (b"250 ok", b"250 ok", b"250 ok", b"354 go"):
            got.append(f.readline())
            f.write(reply + b"\r\n")
            f.flush()
        got.append(f.read(1000))
        f.close()
        c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    conf = tmp_path / "relayd.conf"
    conf.write_text("[smtp]\nlisten = 127.0.0.1:%d\n" % port)
    # more than the socket buffers hold: the write fails before the end
    r = sendmail(conf, "-i", "alice@fabrikam.test",
                 data=b"Subject: x\n\n" + (b"y" * 999 + b"\n") * 16000)
    t.join(10)
    srv.close()
    assert r.returncode == 75
    assert "not sent" in one_line(r)
    assert got[0].startswith(b"EHLO ")
    assert got[1].startswith(b"MAIL FROM:<") and b" SIZE=" in got[1]
    assert not got[-1].endswith(b"\r\n.\r\n")


def test_a_refused_recipient_domain_is_no_permission(relayd_factory):
    d = spool_relayd(relayd_factory,
                     smtp={"recipient_domains": "contoso.test"})
    r = sendmail(d.conf_path, "it@contoso.test", "alice@fabrikam.test",
                 data=b"Subject: x\n\nx\n")
    assert r.returncode == 77
    err = one_line(r)
    assert "refused a recipient <alice@fabrikam.test>: 550 5.7.1" in err
    assert d.queued() == []


def test_a_sender_relayd_refuses_is_reported(relayd_factory):
    """[senders] lets loopback send as contoso.test only: -f outside it is
    refused by relayd, and the one line says so."""
    d = spool_relayd(relayd_factory,
                     sections={"senders": {"127.0.0.1": "*@contoso.test"}})
    r = sendmail(d.conf_path, "-f", "someone@fabrikam.test",
                 "alice@fabrikam.test", data=b"Subject: x\n\nx\n")
    assert r.returncode == 77
    assert ("relayd refused the sender: 550 5.7.1 <someone@fabrikam.test>: "
            "Sender address not allowed") in one_line(r)
    assert d.queued() == []


def test_a_bad_recipient_is_no_user(relayd_factory):
    """An address relayd cannot take (too long for it)."""
    d = spool_relayd(relayd_factory)
    r = sendmail(d.conf_path, "a" * 300 + "@fabrikam.test",
                 data=b"Subject: x\n\nx\n")
    assert r.returncode == 67
    assert "501 5.1.3 Bad recipient address: address too long" in one_line(r)
    assert d.queued() == []


def test_auth_required_is_said_clearly(relayd_factory, tmp_path):
    line = subprocess.run([str(RELAYCTL_BIN), "passwd", "alice"],
                          input="secret\n", capture_output=True, text=True,
                          check=True).stdout
    users = tmp_path / "users"
    fd = os.open(users, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(line)
    d = spool_relayd(relayd_factory, smtp={"require_auth": "yes"},
                     sections={"auth": {"users_file": str(users)}})
    r = sendmail(d.conf_path, "alice@fabrikam.test",
                 data=b"Subject: x\n\nx\n")
    assert r.returncode == 77
    assert "requires AUTH (530 5.7.0" in one_line(r)


def test_a_message_too_large_is_a_data_error(relayd_factory):
    d = spool_relayd(relayd_factory, smtp={"max_message_size": "4k"})
    r = sendmail(d.conf_path, "-i", "alice@fabrikam.test",
                 data=b"Subject: x\n\n" + b"z" * 5000 + b"\n")
    assert r.returncode == 65
    assert "max_message_size 4096" in one_line(r)
    assert d.queued() == []


def test_no_input(relayd_factory):
    d = spool_relayd(relayd_factory)
    r = sendmail(d.conf_path, "alice@fabrikam.test", data=b"")
    assert r.returncode == 66
    assert "no message on standard input" in one_line(r)
    r = subprocess.run(ENV + [str(SENDMAIL_BIN), "-C", str(d.conf_path),
                              "alice@fabrikam.test"],
                       stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=30, preexec_fn=lambda: os.close(0))
    assert r.returncode == 66
    assert "standard input is closed" in one_line(r)
    assert d.queued() == []


@pytest.mark.parametrize("args, why", [
    (["-X", "a@b.test"], "unsupported option -X"),
    (["-q"], "unsupported option -q"),
    (["-bp"], "-bp is not supported"),
    (["-o", "x"], "-ox is not supported"),
    (["-B", "BINARYMIME", "a@b.test"], "-B BINARYMIME"),
    (["--verbose"], "unsupported option --verbose"),
    (["-f"], "-f needs an argument"),
    (["alice@"], "\"alice@\" is not an address"),
    ([], "no recipients"),
])
def test_usage_errors(tmp_path, args, why):
    conf = tmp_path / "relayd.conf"
    conf.write_text("[smtp]\nlisten = 127.0.0.1:1\n")
    r = sendmail(conf, *args, data=b"Subject: x\n\nx\n")
    assert r.returncode == 64
    assert why in one_line(r)


def test_help(tmp_path):
    r = subprocess.run([str(SENDMAIL_BIN), "--help"], capture_output=True,
                       timeout=10)
    assert r.returncode == 0 and r.stderr == b""
    assert r.stdout.startswith(b"usage: relayd-sendmail ")


# --------------------------------------------------------------------------
# the config

def test_a_bad_sender_is_a_config_error_for_both(relayd_factory):
    d = spool_relayd(relayd_factory, sender="root", start=False)
    assert d.check_config().returncode == 78
    r = sendmail(d.conf_path, "alice@fabrikam.test", data=b"Subject: x\n\nx\n")
    assert r.returncode == 78
    assert re.search(r"relayd-sendmail: %s:\d+: sender \"root\" is not a "
                     r"mailbox address" % re.escape(str(d.conf_path)),
                     one_line(r))


def test_relayd_n_accepts_the_sendmail_section(relayd_factory):
    d = spool_relayd(relayd_factory, start=False)
    r = d.check_config()
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout


def test_reads_a_config_whose_secrets_it_cannot(relayd_factory,
                                                shared_fake_graph):
    """The installed config names the credentials as systemd credentials
    and a TLS key only relayd reads: cron's environment has neither, and
    relayd-sendmail needs neither."""
    fake = shared_fake_graph
    sections = graph_sections(fake)
    sections["queue"] = {"retry_min": "200ms", "messages_per_minute": "0"}
    sections["sendmail"] = {"sender": SENDER}
    d = relayd_factory(sections=sections)
    conf = d.workdir / "as-installed.conf"
    text = d.conf_path.read_text().replace(
        "client_secret_file = %s\n" % fake.secret_file(), "")
    conf.write_text(text + "\n[auth]\nusers_file = /nonexistent/users\n")
    check = subprocess.run([str(RELAYD_BIN), "-n", "-c", str(conf)],
                           capture_output=True, text=True, env={})
    assert check.returncode == 78, check.stdout + check.stderr
    r = sendmail(conf, "-i", "root", data=CRON_MAIL)
    assert (r.returncode, r.stderr) == (0, b"")
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert rec["mailbox"] == SENDER
