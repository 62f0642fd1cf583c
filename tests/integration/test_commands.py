"""The SMTP command set, EHLO, pipelining, listeners, -n and BDAT."""
import socket
import threading
import time

import pytest

from relaydtest.daemon import run_relayd
from relaydtest.env import HOSTNAME, SRCDIR
from relaydtest.ports import ipv6_available
from relaydtest.smtp import QID_RE


def test_greeting(relayd):
    with relayd.connect() as c:
        assert c.greeting.lines == ["220 %s ESMTP relayd" % HOSTNAME]


def test_ehlo_extensions(relayd_factory):
    d = relayd_factory(smtp={"max_message_size": "1M"})
    with d.connect() as c:
        r = c.cmd("EHLO client.test")
        assert r.code == 250
        assert r.lines[0].startswith("250-%s Hello " % HOSTNAME)
        assert r.lines[1:] == [
            "250-PIPELINING",
            "250-SIZE 1048576",
            "250-8BITMIME",
            "250-SMTPUTF8",
            "250-ENHANCEDSTATUSCODES",
            "250 CHUNKING",
        ]


def test_ehlo_size_default_is_35M(relayd):
    with relayd.connect() as c:
        assert "250-SIZE %d" % (35 * 1024 * 1024) in c.ehlo().lines


def test_full_transaction(relayd):
    with relayd.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<sender@a.test>").text == "250 2.1.0 Ok"
        assert c.cmd("RCPT TO:<rcpt@b.test>").text == "250 2.1.5 Ok"
        assert (c.cmd("DATA").text ==
                "354 End data with <CR><LF>.<CR><LF>")
        c.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        r = c.reply()
        assert r.qid and QID_RE.match(r.qid), r
        assert c.cmd("QUIT").text.startswith("221")
        assert c.wait_closed()
    assert relayd.queued() == [r.qid]
    f = relayd.spool_file(r.qid)
    assert f.id == r.qid
    assert f.body == b"Subject: hi\r\n\r\nbody\r\n"
    # size: the message as spooled (with relayd's Received: line), as in
    # the sent and failed lines and in history
    assert f.size > len(b"Subject: hi\r\n\r\nbody\r\n")
    relayd.wait_log(r"^.*%s smtp queued session=\S+ client=127\.0\.0\.1 "
                    r"from=<sender@a\.test> nrcpt=1 size=%d "
                    % (r.qid, f.size))


@pytest.mark.parametrize("log_rcpts", ["yes", "no"])
def test_queued_line_message_id_and_recipients(relayd_factory, log_rcpts):
    """The queued line carries the Message-ID (folded, as Exchange's
    message trace shows it) and, unless [log] recipients = no, the first
    ten recipients and how many more."""
    d = relayd_factory(sections={"log": {"recipients": log_rcpts}})
    rcpts = ["r%d@b.test" % i for i in range(12)]
    with d.connect() as c:
        c.ehlo()
        r = c.send_mail("s@a.test", rcpts, body=(
            b"Subject: trace\r\nMessage-ID:\r\n <abc.123@device.test>"
            b"\r\nX-Other: Message-ID: no\r\n\r\nhi\r\n"))
        assert r.qid, r
    m = d.wait_log(r"%s smtp queued .* nrcpt=12 size=\d+ (.*)$" % r.qid)
    if log_rcpts == "yes":
        assert m.group(1) == ("message_id=<abc.123@device.test> rcpts=%s,"
                              "+2 more" % ",".join(rcpts[:10]))
    else:
        assert m.group(1) == "message_id=<abc.123@device.test>"


def test_two_messages_in_one_session(relayd):
    with relayd.connect() as c:
        c.ehlo()
        q1 = c.send_mail(body=b"one\r\n").qid
        q2 = c.send_mail(body=b"two\r\n").qid
    assert q1 and q2 and q1 != q2
    assert sorted(relayd.queued()) == sorted([q1, q2])
    assert relayd.spool_file(q1).body == b"one\r\n"
    assert relayd.spool_file(q2).body == b"two\r\n"


def test_helo_only_client(relayd):
    with relayd.connect() as c:
        r = c.cmd("HELO oldclient.test")
        assert r.lines == ["250 %s Hello oldclient.test [127.0.0.1]"
                           % HOSTNAME]
        r = c.send_mail(body=b"Subject: old\r\n\r\nplain SMTP\r\n")
        assert r.qid, r
        assert c.cmd("QUIT").code == 221
    f = relayd.spool_file(r.qid)
    assert f.get("helo") == "oldclient.test"
    assert f.body == b"Subject: old\r\n\r\nplain SMTP\r\n"


def test_mail_before_helo(relayd):
    with relayd.connect() as c:
        r = c.cmd("MAIL FROM:<a@a.test>")
        assert r.code == 503, r
        # and the session goes on normally
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250


def test_rcpt_before_mail(relayd):
    with relayd.connect() as c:
        c.ehlo()
        assert c.cmd("RCPT TO:<b@b.test>").code == 503


def test_data_before_mail(relayd):
    with relayd.connect() as c:
        c.ehlo()
        assert c.cmd("DATA").code == 503


def test_data_without_rcpt(relayd):
    with relayd.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        r = c.cmd("DATA")
        assert r.code in (503, 554), r
        # No 354: the next line is a command again.
        assert c.cmd("NOOP").code == 250
    assert relayd.queued() == []


def test_nested_mail(relayd):
    with relayd.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        assert c.cmd("MAIL FROM:<b@a.test>").code == 503


@pytest.mark.parametrize("line,expect", [
    ("RSET", "250"),
    ("NOOP", "250"),
    ("HELP", "214"),
    ("VRFY postmaster", "252"),
    ("EXPN staff", "502"),
    ("STARTTLS", "502"),
    ("AUTH PLAIN AGxvZ2luAHBhc3M=", "502"),
    ("XYZZY", "500 5.5.2"),
    ("", "500 5.5.2"),
])
def test_simple_commands(relayd, line, expect):
    with relayd.connect() as c:
        c.ehlo()
        r = c.cmd(line)
        assert r.text.startswith(expect), r
        # the session carries on
        assert c.cmd("NOOP").code == 250


def test_quit_closes(relayd):
    with relayd.connect() as c:
        r = c.cmd("QUIT")
        assert r.code == 221
        assert c.wait_closed()


def test_rset_ends_transaction(relayd):
    with relayd.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        assert c.cmd("RCPT TO:<b@b.test>").code == 250
        assert c.cmd("RSET").code == 250
        assert c.cmd("RCPT TO:<b@b.test>").code == 503
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250


def test_verbs_are_case_insensitive(relayd):
    with relayd.connect() as c:
        assert c.cmd("ehlo client.test").code == 250
        assert c.cmd("mail from:<a@a.test>").text == "250 2.1.0 Ok"
        assert c.cmd("RcPt To:<b@b.test>").text == "250 2.1.5 Ok"
        assert c.cmd("nOoP").code == 250
        assert c.cmd("data").code == 354
        c.send(b"lower case\r\n.\r\n")
        r = c.reply()
        assert r.qid, r
        assert c.cmd("hElO other.test").code == 250
        assert c.cmd("quit").code == 221
    assert relayd.queued() == [r.qid]


def test_mail_params(relayd):
    with relayd.connect() as c:
        c.ehlo()
        for params in ("BODY=7BIT", "BODY=8BITMIME", "SMTPUTF8",
                       "SIZE=100", "size=100 body=8bitmime smtputf8"):
            r = c.cmd("MAIL FROM:<a@a.test> " + params)
            assert r.code == 250, (params, r)
            assert c.cmd("RSET").code == 250
        r = c.cmd("MAIL FROM:<a@a.test> FOO=bar")
        assert r.code == 555, r
        r = c.cmd("MAIL FROM:<a@a.test> BODY=BINARYMIME")
        assert r.code // 100 == 5, r


def test_mail_params_recorded_in_spool(relayd):
    with relayd.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test> BODY=8BITMIME SIZE=20").code == 250
        assert c.cmd("RCPT TO:<b@b.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"8bit: \xc3\xa9t\xc3\xa9\r\n.\r\n")
        r = c.reply()
        assert r.qid, r
    f = relayd.spool_file(r.qid)
    assert f.get("mail-params") == "BODY=8BITMIME SIZE=20"
    assert f.body == b"8bit: \xc3\xa9t\xc3\xa9\r\n"


def test_null_sender(relayd):
    with relayd.connect() as c:
        c.ehlo()
        r = c.send_mail(mail_from="", body=b"bounce\r\n")
        assert r.qid, r
    assert relayd.spool_file(r.qid).mail_from == ""


def test_non_ascii_address_needs_smtputf8(relayd):
    with relayd.connect() as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<j\u00f6rg@a.test>".encode())
        assert r.text.startswith("553 5.6.7"), r
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        r = c.cmd("RCPT TO:<m\u00fcller@b.test>".encode())
        assert r.text.startswith("553 5.6.7"), r
        assert c.cmd("RSET").code == 250
        # With SMTPUTF8 both are fine.
        r = c.cmd("MAIL FROM:<j\u00f6rg@a.test> SMTPUTF8".encode())
        assert r.code == 250, r
        r = c.cmd("RCPT TO:<m\u00fcller@b.test>".encode())
        assert r.code == 250, r
        assert c.cmd("DATA").code == 354
        c.send(b"utf8\r\n.\r\n")
        r = c.reply()
        assert r.qid, r
    f = relayd.spool_file(r.qid)
    assert f.mail_from == "j\u00f6rg@a.test"
    assert f.rcpts == ["m\u00fcller@b.test"]


def test_pipelining_answers_in_order(relayd):
    with relayd.connect() as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a@a.test>\r\n"
               b"RCPT TO:<b1@b.test>\r\n"
               b"RCPT TO:<not an address>\r\n"
               b"RCPT TO:<b2@b.test>\r\n"
               b"DATA\r\n")
        rs = c.replies(5)
        assert [r.code for r in rs] == [250, 250, 501, 250, 354], rs
        assert rs[0].text == "250 2.1.0 Ok"
        # The data, its end and the next commands in one write.
        c.send(b"Subject: p\r\n\r\npipelined\r\n.\r\n"
               b"NOOP\r\nVRFY x\r\nMAIL FROM:<c@a.test>\r\nRSET\r\nQUIT\r\n")
        rs = c.read_all()
        assert [r.code for r in rs] == [250, 250, 252, 250, 250, 221], rs
        qid = rs[0].qid
        assert qid
    f = relayd.spool_file(qid)
    assert f.rcpts == ["b1@b.test", "b2@b.test"]
    assert f.body == b"Subject: p\r\n\r\npipelined\r\n"


def test_pipelining_whole_session_in_one_write(relayd):
    with relayd.connect() as c:
        c.send(b"EHLO client.test\r\n"
               b"MAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\nDATA\r\n"
               b"first\r\n.\r\n"
               b"MAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\nDATA\r\n"
               b"second\r\n.\r\n"
               b"QUIT\r\n")
        rs = c.read_all()
    assert [r.code for r in rs] == [250, 250, 250, 354, 250,
                                    250, 250, 354, 250, 221], rs
    q1, q2 = rs[4].qid, rs[8].qid
    assert q1 and q2
    assert relayd.spool_file(q1).body == b"first\r\n"
    assert relayd.spool_file(q2).body == b"second\r\n"


def test_ipv4_and_ipv6_listeners(relayd_factory):
    if not ipv6_available():
        pytest.skip("::1 is not available on this machine")
    d = relayd_factory(ipv6=True)
    d.wait_log(r"smtp listening listener=127\.0\.0\.1:%d$" % d.port)
    d.wait_log(r"smtp listening listener=\[::1\]:%d$" % d.port)
    q4 = d.send_one(body=b"over IPv4\r\n")
    q6 = d.send_one(body=b"over IPv6\r\n", host="::1")
    f4, f6 = d.spool_file(q4), d.spool_file(q6)
    assert f4.get("client") == "127.0.0.1"
    assert f4.get("listener") == "127.0.0.1:%d" % d.port
    assert f6.get("client") == "::1"
    assert f6.get("listener") == "[::1]:%d" % d.port
    assert f6.body == b"over IPv6\r\n"
    # Both at once.
    with d.connect() as a, d.connect(host="::1") as b:
        assert a.greeting.code == 220 and b.greeting.code == 220
        assert "[::1]" in b.cmd("EHLO v6.test").lines[0]


# ---- relayd -n

def test_check_mode_good_file(relayd_factory):
    d = relayd_factory(start=False)
    d.port = 2525
    d.write_config()
    r = run_relayd("-n", "-c", str(d.conf_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "%s: configuration OK" % d.conf_path
    assert not d.spool.exists(), "-n must not create the spool"


def test_check_mode_every_key(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    conf = tmp_path / "full.conf"
    conf.write_text(
        "# every key, each set once\n"
        "[smtp]\n"
        "listen = 127.0.0.1:2525\n"
        "listen = [::1]:2525\n"
        "hostname = mx.example.test\n"
        "max_message_size = 150M\n"
        "max_recipients = 1\n"
        "max_line_length = 1048576\n"
        "command_timeout = 30s\n"
        "data_timeout = 250000ms\n"
        "max_connections = 10\n"
        "max_connections_per_client = 2\n"
        "max_errors = 1\n"
        "greeting_delay = 2s\n"
        "bare_lf = normalize\n"
        "allow_networks = 10.0.0.0/8, 192.0.2.0/24 2001:db8::/32\n"
        "\n[queue]\nspool_dir = %s\n"
        "\n; graph keys are not used yet but are accepted\n"
        "[graph]\ntenant = example.onmicrosoft.com\n"
        "client_id = 00000000-0000-0000-0000-000000000000\n"
        "client_secret_file = %s\n"
        "login_url = https://login.example.test\n"
        "graph_url = https://graph.example.test\n"
        "ca_file = /etc/ssl/certs/ca-certificates.crt\n"
        "\n[status]\nsocket = %s\n"
        "\n[log]\nlevel = warning\n"
        % (tmp_path / "spool", secret, tmp_path / "status.sock"))
    r = run_relayd("-n", "-c", str(conf))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "%s: configuration OK" % conf


def test_check_mode_unknown_key(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[smtp]\nlisten = 127.0.0.1:2525\n\n[graph]\n"
                    "tenant = example.onmicrosoft.com\n"
                    "clinet_id = 0000\n")
    r = run_relayd("-n", "-c", str(conf))
    assert r.returncode == 78, (r.stdout, r.stderr)
    assert '%s:6: unknown key "clinet_id"' % conf in r.stderr, r.stderr
    assert "configuration OK" not in r.stdout


@pytest.mark.parametrize("text,line,words", [
    ("[smtp]\nmax_recipients = 501\n", 2, "max_recipients"),
    ("[smtp]\nmax_message_size = 257M\n", 2, "max_message_size"),
    ("[smtp]\nmax_message_size = 1000\n", 2, "max_message_size"),
    ("[smtp]\nmax_line_length = 100\n", 2, "max_line_length"),
    ("[smtp]\ncommand_timeout = 500ms\n", 2, "command_timeout"),
    ("[smtp]\nbare_lf = maybe\n", 2, "bare_lf"),
    ("[smtp]\nmax_errors = 3\nmax_errors = 4\n", 3, "max_errors"),
    ("[smtp]\nlisten = localhost\n", 2, "listen"),
    ("[smtp]\nallow_networks = 10.0.0.0/33\n", 2, "allow_networks"),
    ("[smpt]\nlisten = 127.0.0.1:25\n", 1, "smpt"),
    ("[log]\nlevel = verbose\n", 2, "level"),
    ("# comment\n[queue]\nspool = /tmp/x\n", 3, "spool"),
])
def test_check_mode_errors(tmp_path, text, line, words):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    r = run_relayd("-n", "-c", str(conf))
    assert r.returncode == 78, (r.stdout, r.stderr)
    prefix = "%s:%d: " % (conf, line)
    assert any(l.startswith(prefix) and words in l
               for l in r.stderr.splitlines()), r.stderr


def test_check_mode_reports_every_error(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[smtp]\nmax_recipients = 0\nmax_errorz = 1\n"
                    "[graph]\nclinet_id = x\n")
    r = run_relayd("-n", "-c", str(conf))
    assert r.returncode == 78
    lines = [l for l in r.stderr.splitlines() if l.startswith(str(conf))]
    assert [l.split(":")[1] for l in lines] == ["2", "3", "5"], r.stderr


def test_bad_config_refuses_to_start(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[smtp]\nlisten = 127.0.0.1:2525\nclinet_id = 1\n")
    r = run_relayd("-c", str(conf))
    assert r.returncode == 78
    assert "%s:3: unknown key" % conf in r.stderr


def test_shipped_example_config_is_valid():
    conf = SRCDIR / "conf" / "relayd.conf"
    if not conf.exists():
        pytest.skip("%s not found" % conf)
    r = run_relayd("-n", "-c", str(conf))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "%s: configuration OK" % conf


# ---- BDAT

def test_bdat_chunks(relayd):
    with relayd.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        assert c.cmd("RCPT TO:<b@b.test>").code == 250
        c.send(b"BDAT 12\r\nSubject: x\r\n")
        assert c.reply().text == "250 2.0.0 12 bytes received, 12 in total"
        c.send(b"BDAT 8\r\n\r\nhello ")
        assert c.reply().text == "250 2.0.0 8 bytes received, 20 in total"
        # A chunk may hold anything, including CRLF.CRLF and commands.
        chunk = b"world\r\n.\r\nQUIT\r\n"
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        r = c.reply()
        assert r.qid, r
        assert c.cmd("NOOP").code == 250
    f = relayd.spool_file(r.qid)
    assert f.body == b"Subject: x\r\n\r\nhello world\r\n.\r\nQUIT\r\n"


def test_bdat_pipelined_with_envelope(relayd):
    with relayd.connect() as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\n"
               b"BDAT 5\r\nhelloBDAT 0 LAST\r\nQUIT\r\n")
        rs = c.read_all()
    assert [r.code for r in rs] == [250, 250, 250, 250, 221], rs
    assert rs[2].text == "250 2.0.0 5 bytes received, 5 in total"
    assert relayd.spool_file(rs[3].qid).body == b"hello"


def test_bdat_without_transaction_consumes_bytes(relayd):
    with relayd.connect() as c:
        c.ehlo()
        c.send(b"BDAT 10 LAST\r\nNOOP\r\nNOOP")
        r = c.reply()
        assert r.code == 503, r
        # The 10 bytes were data, not commands: exactly one more reply.
        assert c.cmd("RSET").code == 250
        assert c.quiet(0.2)
    assert relayd.queued() == []


def test_bdat_with_mail_but_no_rcpt(relayd):
    with relayd.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        c.send(b"BDAT 4 LAST\r\nabcd")
        assert c.reply().code == 503
        assert c.cmd("NOOP").code == 250
    assert relayd.queued() == []


def test_bdat_before_helo_does_not_skip_helo(relayd):
    """BDAT is refused before HELO too; it must not count as a greeting,
    and what follows must not crash the daemon."""
    with relayd.connect() as c:
        c.send(b"BDAT 5 LAST\r\nhello")
        assert c.reply().code == 503
        c.send(b"MAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\nDATA\r\n"
               b"x\r\n.\r\nQUIT\r\n")
        rs = c.read_all()
    relayd.assert_alive()
    assert [r.code for r in rs[:3]] == [503, 503, 503], \
        "MAIL/RCPT/DATA accepted without HELO/EHLO: %r" % (rs,)
    assert relayd.queued() == []
    relayd.assert_serves()


def test_data_after_bdat_refused(relayd):
    with relayd.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        assert c.cmd("RCPT TO:<b@b.test>").code == 250
        c.send(b"BDAT 3\r\nabc")
        assert c.reply().code == 250
        assert c.cmd("DATA").code == 503
        c.send(b"BDAT 3 LAST\r\ndef")
        r = c.reply()
        assert r.qid, r
    assert relayd.spool_file(r.qid).body == b"abcdef"


def test_pipelining_flood_answered_in_order(relayd):
    """Thousands of pipelined commands sent before reading any reply are
    all answered, in order (the server may pause reading meanwhile)."""
    n = 20000
    cmds = b"".join(b"NOOP %d\r\n" % i if i % 2 else b"VRFY u%d\r\n" % i
                    for i in range(n))
    with relayd.connect() as c:
        c.ehlo()
        sender = threading.Thread(target=c.sock.sendall, args=(cmds,))
        sender.start()
        try:
            rs = c.replies(n, timeout=20)
        finally:
            sender.join(20)
        assert [r.code for r in rs] == [252 if i % 2 == 0 else 250
                                        for i in range(n)]
        assert c.cmd("QUIT").code == 221
    relayd.assert_serves()


def test_unread_replies_around_a_commit(relayd):
    """A client that pipelines a flood of commands, a message and another
    flood without reading: the server stops reading while replies pile up
    and resumes once the client reads. Everything is answered, in order,
    and the message is queued. (Whether the pause falls inside the few
    milliseconds of the commit is up to timing; the code resumes input in
    either case.)"""
    n = 40000
    flood = b"NOOP\r\n" * n
    msg = (b"MAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\nDATA\r\n"
           b"Subject: amid a flood\r\n\r\nbody\r\n.\r\n")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", relayd.port))
    s.settimeout(20)
    greeting = b""
    while not greeting.endswith(b"\r\n"):     # talking first is refused
        greeting += s.recv(512)
    assert greeting.startswith(b"220 "), greeting
    sender = threading.Thread(
        target=s.sendall, args=(b"EHLO x\r\n" + flood + msg + flood +
                                b"QUIT\r\n",))
    sender.start()
    try:
        time.sleep(1.0)         # let replies pile up unread
        data = b""
        while not data.endswith(b"221 2.0.0 Bye\r\n"):
            chunk = s.recv(65536)
            assert chunk, "closed before QUIT was answered"
            data += chunk
    finally:
        sender.join(20)
        s.close()
    lines = data.split(b"\r\n")
    codes = [l[:3] for l in lines if l[:3].isdigit() and l[3:4] == b" "]
    # EHLO, n NOOPs, MAIL, RCPT, 354, 250 queued, n NOOPs, 221
    assert len(codes) == 2 * n + 6, len(codes)
    assert codes[1 + n:1 + n + 4] == [b"250", b"250", b"354", b"250"]
    assert len(relayd.queued()) == 1
