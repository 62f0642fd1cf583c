"""Access policy: allow_networks (no open relay), listener networks=,
require_auth, [senders] (envelope and From:, DATA and BDAT) and
recipient_domains; config errors in them.

Clients act as different hosts by binding to other 127.0.0.0/8 source
addresses (Linux routes all of 127/8 to lo).
"""
import base64
import os
import re
import socket
import ssl
import subprocess

import pytest

from relaydtest.env import BUILDDIR, HOSTNAME
from relaydtest.ports import free_port, ipv6_available
from relaydtest.smtp import SMTPConn

RELAYCTL_BIN = BUILDDIR / "relayd" / "relayctl"

NOT_QUEUED = "nothing may be queued after a refusal"


# --------------------------------------------------------------------------
# helpers

def users_file(d, users):
    """[auth] users_file with a line per (name, password), made by
    `relayctl passwd NAME`; sets d.sections["auth"]."""
    lines = []
    for name, pw in users:
        r = subprocess.run([str(RELAYCTL_BIN), "passwd", name],
                           input=pw + "\n", capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, (r.stdout, r.stderr)
        lines.append(r.stdout.strip())
    path = d.workdir / "users"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    d.sections["auth"] = {"users_file": str(path)}
    return path


def auth_plain(c, user, password):
    token = base64.b64encode(("\0%s\0%s" % (user, password)).encode())
    return c.cmd(b"AUTH PLAIN " + token)


def ehlo_auth(c, user=None, password=None):
    c.ehlo()
    if user is not None:
        r = auth_plain(c, user, password)
        assert r.text == "235 2.7.0 Authentication successful", r


def data_tx(c, mail_from, body, rcpt="r@b.test"):
    """MAIL (must get 250), RCPT, DATA with body; returns the final reply."""
    r = c.cmd("MAIL FROM:<%s>" % mail_from)
    assert r.text == "250 2.1.0 Ok", r
    r = c.cmd("RCPT TO:<%s>" % rcpt)
    assert r.code == 250, r
    assert c.cmd("DATA").code == 354
    c.send(body + b".\r\n")
    return c.reply()


def bdat_tx(c, mail_from, chunks, rcpt="r@b.test"):
    """The same over BDAT (one command per chunk, the last one LAST);
    returns the final reply."""
    r = c.cmd("MAIL FROM:<%s>" % mail_from)
    assert r.text == "250 2.1.0 Ok", r
    assert c.cmd("RCPT TO:<%s>" % rcpt).code == 250
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        c.send(b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"")
               + chunk)
        r = c.reply()
        if not last:
            assert r.text.startswith("250"), r
    return r


def config_line(d, text):
    """The 1-based number of the line of d's config file that is text."""
    lines = d.conf_path.read_text().splitlines()
    return lines.index(text) + 1


def assert_config_error(d, bad_line, message):
    r = d.check_config()
    assert r.returncode == 78, (r.returncode, r.stdout, r.stderr)
    prefix = "%s:%d: " % (d.conf_path, config_line(d, bad_line))
    want = prefix + message
    assert any(l.startswith(prefix) and message in l
               for l in r.stderr.splitlines()), \
        "expected %r in stderr:\n%s" % (want, r.stderr)
    assert "configuration OK" not in r.stdout


# --------------------------------------------------------------------------
# allow_networks: no open relay

# Syntactically valid paths to another domain: each must be refused with
# 554 5.7.1 from outside allow_networks.
RELAY_VALID = [
    "<b@b.test>",
    "<B@B.TEST>",
    "<Mixed.Case@Outside.Test>",
    "<postmaster@b.test>",
    "<@a.test:x@b.test>",                   # source route
    "<@a.test,@c.test:x@b.test>",           # source route, two hops
    "<x%b.test@a.test>",                    # percent hack
    "<x%b.test%c.test@a.test>",
    "<b.test!x@a.test>",                    # bang path
    '<"x@b.test"@a.test>',                  # quoted local parts
    '<"x"@b.test>',
    '<"x y"@b.test>',
    '<"x\\@b.test"@a.test>',
    "<x@[10.1.2.3]>",                       # address literals
    "<x@[127.0.0.1]>",
    "<x@[IPv6:::1]>",
    "<x@[IPv6:2001:db8::1]>",
    "<x@b.test.>",                          # trailing dot
    "<x@localhost>",
    "<x@relayd.test>",                      # our own host name
]
# Paths relayd may refuse as bad syntax (501) instead: never 250.
RELAY_MALFORMED = [
    "<x@b.test@a.test>",
    "<x@>",
    "<@b.test>",
    "<x>",
    "<postmaster>",
    "<>",
    "<x@@b.test>",
    "<@a.test:x>",
    "x@b.test",                             # no angle brackets
    "<x@b.test",
    "<x@[10.1.2.3>",
]


def test_no_open_relay(relayd_factory):
    d = relayd_factory(smtp={"allow_networks": "10.0.0.0/8, 127.0.0.2/32",
                             "max_errors": 1000})
    with d.connect() as c:          # from 127.0.0.1: outside
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        bad = []
        for rcpt in RELAY_VALID:
            r = c.cmd("RCPT TO:" + rcpt)
            if not (r.text.startswith("554 5.7.1 <") and r.text.endswith(
                    ">: Relay access denied (client 127.0.0.1 is not in "
                    "allow_networks)")):
                bad.append((rcpt, r.text))
        for rcpt in RELAY_MALFORMED:
            r = c.cmd("RCPT TO:" + rcpt)
            if not (r.text.startswith("554 5.7.1 ") or
                    r.text.startswith("501 5.1.3 ")):
                bad.append((rcpt, r.text))
        # SMTPUTF8 addresses too
        assert c.cmd("RSET").code == 250
        assert c.cmd("MAIL FROM:<a@a.test> SMTPUTF8").code == 250
        for rcpt in ["<j\u00f6rg@b\u00fccher.test>", "<x@xn--bcher-kva.test>"]:
            r = c.cmd(rcpt.join(["RCPT TO:", ""]).encode())
            if not r.text.startswith("554 5.7.1 "):
                bad.append((rcpt, r.text))
        assert not bad, "relayed for an outside client:\n" + "\n".join(
            "%s -> %s" % b for b in bad)
        r = c.cmd("DATA")
        assert r.code in (503, 554), r
        # BDAT without a recipient is refused as well
        c.send(b"BDAT 4 LAST\r\nhi\r\n")
        assert c.reply().code in (503, 554)
        assert c.cmd("QUIT").code == 221
    assert d.queued() == [], NOT_QUEUED
    d.wait_log(r"smtp connect client=127\.0\.0\.1 .*relay=no")
    d.wait_log(r"client=127\.0\.0\.1 .*554 5\.7\.1 <b@b\.test>: Relay "
               r"access denied")

    # A client inside allow_networks relays the same paths: the difference
    # is the address alone.
    with d.connect(source="127.0.0.2") as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        for rcpt in RELAY_VALID:
            r = c.cmd("RCPT TO:" + rcpt)
            assert r.code == 250, (rcpt, r)
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: inside\r\n\r\nhi\r\n.\r\n")
        r = c.reply()
        assert r.qid, r
    assert d.queued() == [r.qid]
    f = d.spool_file(r.qid)
    assert f.get("client") == "127.0.0.2"
    assert "b@b.test" in f.rcpts
    d.wait_log(r"smtp connect client=127\.0\.0\.2 .*relay=yes")


def test_relay_denied_is_per_client_not_per_session_state(relayd_factory):
    """HELO names, AUTH parameters on MAIL and RSET do not unlock relaying
    for an outside client."""
    d = relayd_factory(smtp={"allow_networks": "10.0.0.0/8",
                             "max_errors": 1000})
    with d.connect() as c:
        for helo in ("EHLO localhost", "EHLO [127.0.0.2]", "HELO relayd.test",
                     "EHLO [10.0.0.1]"):
            assert c.cmd(helo).code == 250
            for mail in ("MAIL FROM:<a@a.test>",
                         "MAIL FROM:<a@a.test> AUTH=<>",
                         "MAIL FROM:<a@a.test> AUTH=a@a.test",
                         "MAIL FROM:<>"):
                assert c.cmd(mail).code == 250, mail
                r = c.cmd("RCPT TO:<b@b.test>")
                assert r.text.startswith("554 5.7.1"), (helo, mail, r)
                assert c.cmd("RSET").code == 250
    assert d.queued() == []


# --------------------------------------------------------------------------
# listener networks=

ACCESS_DENIED = ("554 5.7.1 %s Access denied: your address is not allowed "
                 "here" % HOSTNAME)


def test_listener_networks(relayd_factory):
    p1, p2 = free_port(), free_port()
    d = relayd_factory(listen=[
        "127.0.0.1:%d networks=127.0.0.2/32" % p1,
        "127.0.0.1:%d networks=127.0.0.4/31,127.0.0.8/30" % p2])
    # allowed
    qid = None
    with SMTPConn(p1, source="127.0.0.2") as c:
        assert c.greeting.code == 220, c.greeting
        c.ehlo()
        r = c.send_mail(body=b"Subject: via networks=\r\n\r\nhi\r\n")
        assert r.qid, r
        qid = r.qid
    assert d.spool_file(qid).get("client") == "127.0.0.2"
    # refused, with the exact text, and closed
    for port, source in [(p1, "127.0.0.3"), (p1, "127.0.0.1"),
                         (p2, "127.0.0.2"), (p2, "127.0.0.6"),
                         (p2, "127.0.0.12")]:
        with SMTPConn(port, source=source) as c:
            assert c.greeting.text == ACCESS_DENIED, (port, source,
                                                     c.greeting)
            assert c.greeting.lines == [ACCESS_DENIED]
            assert c.wait_closed()
        d.wait_log(r'smtp refused client=%s listener=127\.0\.0\.1:%d '
                   r'reason="not in this listener\'s networks"'
                   % (re.escape(source), port))
    for source in ("127.0.0.4", "127.0.0.5", "127.0.0.8", "127.0.0.11"):
        with SMTPConn(p2, source=source) as c:
            assert c.greeting.code == 220, (source, c.greeting)
    assert d.queued() == [qid]
    # a refused client never got a session
    assert not re.search(r"smtp connect client=127\.0\.0\.3 ", d.log)


def test_listener_networks_refused_client_says_nothing(relayd_factory):
    """A refused client's commands are not read: it cannot get anything
    done by talking first."""
    p = free_port()
    d = relayd_factory(listen=["127.0.0.1:%d networks=127.0.0.2/32" % p])
    with SMTPConn(p, source="127.0.0.3", greeting=False) as c:
        try:
            c.send(b"EHLO x\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\n"
                   b"DATA\r\nSubject: x\r\n\r\nx\r\n.\r\n")
        except OSError:
            pass
        rs = c.read_all()
        assert [r.text for r in rs] in ([ACCESS_DENIED], []), rs
    assert d.queued() == []
    d.assert_alive()


def test_listener_networks_ipv6(relayd_factory):
    if not ipv6_available():
        pytest.skip("IPv6 loopback (::1) is not usable here")
    p1, p2 = free_port(ipv6_too=True), free_port(ipv6_too=True)
    d = relayd_factory(listen=["[::1]:%d networks=::1/128" % p1,
                               "[::1]:%d networks=2001:db8::/32,127.0.0.1/32"
                               % p2])
    with SMTPConn(p1, host="::1") as c:
        assert c.greeting.code == 220, c.greeting
        c.ehlo()
        r = c.send_mail(body=b"Subject: v6\r\n\r\nhi\r\n")
        assert r.qid, r
    assert d.spool_file(r.qid).get("client") == "::1"
    with SMTPConn(p2, host="::1") as c:
        assert c.greeting.text == ACCESS_DENIED, c.greeting
        assert c.wait_closed()
    d.wait_log(r'smtp refused client=::1 listener=\[::1\]:%d '
               r'reason="not in this listener\'s networks"' % p2)


def test_listener_networks_tls_closes_without_text(relayd_factory, tls_ca):
    p = free_port()
    d = relayd_factory(
        smtp={"tls_cert": tls_ca.cert_file, "tls_key": tls_ca.key_file},
        listen=["127.0.0.1:%d tls networks=127.0.0.2/32" % p])
    ctx = ssl.create_default_context(cafile=str(tls_ca.ca_file))
    # refused: no bytes at all, not even a TLS alert
    s = socket.create_connection(("127.0.0.1", p), timeout=5,
                                 source_address=("127.0.0.3", 0))
    try:
        got = b""
        while True:
            try:
                data = s.recv(4096)
            except ConnectionResetError:
                break
            if not data:
                break
            got += data
        assert got == b"", "a refused tls client got %r" % got
    finally:
        s.close()
    d.wait_log(r'smtp refused client=127\.0\.0\.3 listener=127\.0\.0\.1:%d '
               r'reason="not in this listener\'s networks"' % p)
    # and a TLS handshake from there fails
    raw = socket.create_connection(("127.0.0.1", p), timeout=5,
                                   source_address=("127.0.0.3", 0))
    with pytest.raises((ssl.SSLError, OSError)):
        with ctx.wrap_socket(raw, server_hostname="localhost") as t:
            t.recv(100)
    raw.close()
    # allowed: the handshake works and the greeting comes over TLS
    raw = socket.create_connection(("127.0.0.1", p), timeout=5,
                                   source_address=("127.0.0.2", 0))
    with ctx.wrap_socket(raw, server_hostname="localhost") as t:
        f = t.makefile("rb")
        assert f.readline().startswith(b"220 "), "no greeting over TLS"
        t.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"221 ")
        f.close()


# --------------------------------------------------------------------------
# require_auth

ALICE = ("alice", "Al1ce-pw:7x")
BOB = ("bob", "B0b-pw:q9")


def authd(relayd_factory, smtp=None, senders=None, users=(ALICE, BOB)):
    """A relayd with a users_file, an auth_plaintext=yes listener (d.port)
    and the default allow_networks (127.0.0.0/8)."""
    d = relayd_factory(smtp=smtp, start=False)
    users_file(d, users)
    if senders:
        d.sections["senders"] = senders
    d.listen_lines = lambda: ["127.0.0.1:%d auth_plaintext=yes" % d.port]
    d.start()
    return d


def test_require_auth(relayd_factory):
    d = authd(relayd_factory, smtp={"require_auth": "yes",
                                    "allow_networks": "127.0.0.0/8"})
    # from allow_networks, no AUTH: 530 at MAIL, and nothing goes through
    with d.connect() as c:
        c.ehlo()
        r = c.cmd("MAIL FROM:<a@a.test>")
        assert r.text == "530 5.7.0 Authentication required", r
        r = c.cmd("MAIL FROM:<>")
        assert r.text == "530 5.7.0 Authentication required", r
        assert c.cmd("RCPT TO:<b@b.test>").code == 503
        assert c.cmd("DATA").code in (503, 554)
        # a failed AUTH changes nothing
        r = auth_plain(c, ALICE[0], "wrong")
        assert r.code == 535, r
        r = c.cmd("MAIL FROM:<a@a.test>", timeout=20)
        assert r.text == "530 5.7.0 Authentication required", r
    with d.connect(source="127.0.0.2") as c:
        c.ehlo()
        c.send(b"BDAT 4 LAST\r\nhi\r\n")
        assert c.reply().code in (503, 530, 554)
    assert d.queued() == [], NOT_QUEUED
    # after AUTH: accepted
    with d.connect() as c:
        ehlo_auth(c, *ALICE)
        r = c.send_mail(body=b"Subject: authed\r\n\r\nhi\r\n")
        assert r.qid, r
        r2 = c.send_mail(mail_from="", body=b"Subject: bounce\r\n\r\nhi\r\n")
        assert r2.qid, r2
    assert sorted(d.queued()) == sorted([r.qid, r2.qid])
    assert d.spool_file(r.qid).get("user") == "alice"


def test_require_auth_without_users_file(relayd_factory):
    d = relayd_factory(smtp={"require_auth": "yes"}, start=False)
    assert_config_error(d, "require_auth = yes",
                        "require_auth needs [auth] users_file")


def test_auth_lets_outside_client_relay(relayd_factory):
    """Outside allow_networks: 554 before AUTH, 250 after."""
    d = authd(relayd_factory, smtp={"allow_networks": "10.0.0.0/8"})
    with d.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        assert c.cmd("RCPT TO:<b@b.test>").text.startswith("554 5.7.1")
        assert c.cmd("RSET").code == 250
        r = auth_plain(c, *BOB)
        assert r.code == 235, r
        r = c.send_mail(body=b"Subject: bob\r\n\r\nhi\r\n")
        assert r.qid, r
    assert d.spool_file(r.qid).get("user") == "bob"


# --------------------------------------------------------------------------
# [senders]

SENDERS = {
    # scanners on 127.0.0.2: one address and a printer domain
    "127.0.0.2": "scanner@contoso.test, *@printers.contoso.test",
    # 127.0.0.4/31: a whole domain
    "127.0.0.4/31": "*@contoso.test",
    # users
    "alice": "alice@contoso.test *@alice.test",
}
SCANNER = "127.0.0.2"


def senders_denied(addr, who):
    return ("550 5.7.1 <%s>: Sender address not allowed for %s (see "
            "[senders])" % (addr, who))


def from_denied(addr, who):
    return "550 5.7.1 From: <%s> not allowed for %s (see [senders])" % (
        addr, who)


@pytest.fixture
def sendersd(relayd_factory):
    return authd(relayd_factory, senders=SENDERS,
                 smtp={"max_errors": 1000})


def test_senders_envelope_by_network(sendersd):
    d = sendersd
    allowed = ["scanner@contoso.test", "SCANNER@CONTOSO.TEST",
               "Scanner@Contoso.Test", "a@printers.contoso.test",
               "B.C@PRINTERS.Contoso.TEST"]
    denied = ["ceo@contoso.test", "scanner@contoso.test.evil.test",
              "scanner@evilcontoso.test", "scanner2@contoso.test",
              "xscanner@contoso.test", "a@evilprinters.contoso.test",
              "a@sub.printers.contoso.test", "a@printers.contoso.test.evil",
              "a@printers-contoso.test", "printers.contoso.test@evil.test",
              "a@contoso.test"]
    with d.connect(source=SCANNER) as c:
        c.ehlo()
        for a in allowed:
            r = c.cmd("MAIL FROM:<%s>" % a)
            assert r.text == "250 2.1.0 Ok", (a, r)
            assert c.cmd("RSET").code == 250
        for a in denied:
            r = c.cmd("MAIL FROM:<%s>" % a)
            assert r.text == senders_denied(a, "client " + SCANNER), (a, r)
            # no transaction was started
            assert c.cmd("RCPT TO:<r@b.test>").code == 503, a
        # the 250 path queues
        r = data_tx(c, "Scanner@Contoso.Test",
                    b"From: scanner@contoso.test\r\nSubject: ok\r\n\r\nhi\r\n")
        assert r.qid, r
    assert d.queued() == [r.qid]
    assert d.spool_file(r.qid).mail_from == "Scanner@Contoso.Test"
    d.wait_log(r"smtp refused sender=<ceo@contoso\.test> client=127\.0\.0\.2 "
               r"user=- reason=senders")


def test_senders_domain_pattern_not_lookalikes(sendersd):
    """127.0.0.4/31 may use *@contoso.test: exactly that domain."""
    d = sendersd
    with d.connect(source="127.0.0.5") as c:
        c.ehlo()
        for a in ["x@contoso.test", "X@CONTOSO.TEST", "ceo@Contoso.Test"]:
            assert c.cmd("MAIL FROM:<%s>" % a).code == 250, a
            assert c.cmd("RSET").code == 250
        for a in ["x@evilcontoso.test", "x@contoso.test.evil.test",
                  "x@sub.contoso.test", "x@contoso.testx", "x@contoso-test",
                  "x@ontoso.test", "contoso.test@evil.test",
                  '"x@contoso.test"@evil.test', "x%contoso.test@evil.test"]:
            r = c.cmd("MAIL FROM:<%s>" % a)
            assert r.code == 550, (a, r)
            assert r.text.startswith("550 5.7.1 "), (a, r)
            assert "client 127.0.0.5" in r.text
    assert d.queued() == []


def test_senders_null_sender_checks_from(sendersd):
    d = sendersd
    with d.connect(source=SCANNER) as c:
        c.ehlo()
        r = data_tx(c, "", b"From: ceo@contoso.test\r\nSubject: x\r\n\r\nhi"
                    b"\r\n")
        assert r.text == from_denied("ceo@contoso.test", "client " + SCANNER)
        assert d.queued() == [], NOT_QUEUED
        r = data_tx(c, "", b"From: scanner@contoso.test\r\nSubject: x\r\n"
                    b"\r\nhi\r\n")
        assert r.qid, r
    assert d.spool_file(r.qid).mail_from == ""


# From: headers from the scanner (envelope scanner@contoso.test).
FROM_ALLOWED = {
    "plain": b"From: scanner@contoso.test\r\n",
    "upper-case": b"FROM: SCANNER@CONTOSO.TEST\r\n",
    "lower-case-name": b"from: a@printers.contoso.test\r\n",
    "display-name": b'From: "Scanner 3rd floor" <scanner@contoso.test>\r\n',
    "display-name-looks-like-address":
        b'From: "ceo@contoso.test" <scanner@contoso.test>\r\n',
    "several": b"From: scanner@contoso.test, b@printers.contoso.test\r\n",
    "folded": b'From: "Scanner"\r\n <scanner@contoso.test>\r\n',
    "folded-tab": b"From:\r\n\tscanner@contoso.test\r\n",
    "rfc2047-name":
        b"From: =?utf-8?q?Sc=C3=A4nner_=E2=80=93_3_OG?= "
        b"<scanner@contoso.test>\r\n",
    "rfc2047-name-looks-like-address":
        b"From: =?utf-8?q?ceo=40contoso=2Etest?= <scanner@contoso.test>\r\n",
    "comment": b"From: scanner@contoso.test (ceo@contoso.test)\r\n",
    "no-from": b"",
    "from-only-in-body": None,      # see build_message
    "from-after-other-headers":
        b"X-A: 1\r\nX-B: ceo@contoso.test\r\nFrom: scanner@contoso.test\r\n",
    "sender-header-not-checked":
        b"From: scanner@contoso.test\r\nSender: ceo@contoso.test\r\n"
        b"Reply-To: ceo@contoso.test\r\n",
}

# (header lines, the address the 550 names)
FROM_DENIED = {
    "plain": (b"From: ceo@contoso.test\r\n", "ceo@contoso.test"),
    "display-name": (b'From: "Scanner" <ceo@contoso.test>\r\n',
                     "ceo@contoso.test"),
    "display-name-spoof": (b'From: "scanner@contoso.test" <ceo@contoso.test>'
                           b'\r\n', "ceo@contoso.test"),
    "several-one-bad": (b"From: scanner@contoso.test, ceo@contoso.test\r\n",
                        "ceo@contoso.test"),
    "several-first-bad": (b"From: <ceo@contoso.test>, scanner@contoso.test"
                          b"\r\n", "ceo@contoso.test"),
    "folded": (b'From: "Scanner"\r\n <ceo@contoso.test>\r\n',
               "ceo@contoso.test"),
    "folded-twice": (b"From: scanner@contoso.test,\r\n\tb@printers.contoso"
                     b".test,\r\n ceo@contoso.test\r\n", "ceo@contoso.test"),
    "rfc2047-name": (b"From: =?utf-8?b?U2NhbsOkbmVy?= <ceo@contoso.test>\r\n",
                     "ceo@contoso.test"),
    "lower-case-name": (b"from: ceo@contoso.test\r\n", "ceo@contoso.test"),
    "upper-case-name": (b"FROM: ceo@contoso.test\r\n", "ceo@contoso.test"),
    "lookalike-domain": (b"From: x@evilprinters.contoso.test\r\n",
                         "x@evilprinters.contoso.test"),
    "lookalike-suffix": (b"From: scanner@contoso.test.evil.test\r\n",
                         "scanner@contoso.test.evil.test"),
    "second-from-header": (b"From: scanner@contoso.test\r\nSubject: a\r\n"
                           b"From: ceo@contoso.test\r\n", "ceo@contoso.test"),
    "group": (b"From: Board: ceo@contoso.test, cfo@contoso.test;\r\n",
              "ceo@contoso.test"),
    "angle-in-comment": (b"From: (scanner@contoso.test) ceo@contoso.test"
                         b"\r\n", "ceo@contoso.test"),
    # RFC 5322 4.5: obsolete WSP between the field name and the colon must
    # be accepted by parsers, and GMime (which maps From: for Graph) does.
    "space-before-colon": (b"From : ceo@contoso.test\r\n",
                           "ceo@contoso.test"),
    "tab-before-colon": (b"From\t: ceo@contoso.test\r\n", "ceo@contoso.test"),
}


def build_message(headers, case=None):
    if case == "from-only-in-body":
        return (b"Subject: body from\r\n\r\nFrom: ceo@contoso.test\r\n"
                b"From: ceo@contoso.test\r\n")
    return headers + b"Subject: senders test\r\n\r\nhello\r\n"


@pytest.mark.parametrize("case", sorted(FROM_ALLOWED))
def test_senders_from_allowed(sendersd, case):
    d = sendersd
    body = build_message(FROM_ALLOWED[case], case)
    with d.connect(source=SCANNER) as c:
        c.ehlo()
        r = data_tx(c, "scanner@contoso.test", body)
        assert r.qid, r
    assert d.queued() == [r.qid]
    assert d.spool_file(r.qid).body == body


@pytest.mark.parametrize("case", sorted(FROM_DENIED))
def test_senders_from_denied(sendersd, case):
    d = sendersd
    headers, addr = FROM_DENIED[case]
    body = build_message(headers)
    with d.connect(source=SCANNER) as c:
        c.ehlo()
        r = data_tx(c, "scanner@contoso.test", body)
        assert r.text == from_denied(addr, "client " + SCANNER), r
        assert d.queued() == [], NOT_QUEUED
        # the session goes on
        r = data_tx(c, "scanner@contoso.test",
                    build_message(b"From: scanner@contoso.test\r\n"))
        assert r.qid, r
    d.wait_log(r"smtp refused from=<%s> client=127\.0\.0\.2 user=- "
               r"reason=senders" % re.escape(addr))
    assert d.queued() == [r.qid]


def test_senders_from_after_a_large_header(sendersd):
    """The From: check must see a From: that comes after 64k of other
    header fields: GMime (and so Graph's "from") does."""
    d = sendersd
    pad = b"".join(b"X-Pad-%04d: %s\r\n" % (i, b"p" * 70)
                   for i in range(1000))
    assert len(pad) > 64 * 1024
    body = pad + b"From: ceo@contoso.test\r\nSubject: late from\r\n\r\nhi\r\n"
    with d.connect(source=SCANNER) as c:
        c.ehlo()
        r = data_tx(c, "scanner@contoso.test", body)
        assert r.code >= 500 and not r.qid, (
            "a From: ceo@contoso.test after %d bytes of header was not "
            "checked: %r" % (len(pad), r))
    assert d.queued() == [], NOT_QUEUED


def test_senders_free_session(sendersd):
    """No line applies to 127.0.0.1 without AUTH, nor to bob: any sender,
    any From:."""
    d = sendersd
    qids = []
    with d.connect() as c:
        c.ehlo()
        r = data_tx(c, "ceo@contoso.test",
                    b"From: someone@anywhere.test\r\n\r\nhi\r\n")
        assert r.qid, r
        qids.append(r.qid)
    with d.connect() as c:
        ehlo_auth(c, *BOB)
        r = data_tx(c, "whoever@else.test",
                    b"From: ceo@contoso.test\r\n\r\nhi\r\n")
        assert r.qid, r
        qids.append(r.qid)
    assert sorted(d.queued()) == sorted(qids)


def test_senders_by_user(sendersd):
    d = sendersd
    with d.connect() as c:                      # 127.0.0.1: no network line
        ehlo_auth(c, *ALICE)
        for a in ["alice@contoso.test", "ALICE@contoso.test",
                  "x@alice.test", "y@ALICE.TEST"]:
            assert c.cmd("MAIL FROM:<%s>" % a).code == 250, a
            assert c.cmd("RSET").code == 250
        for a in ["bob@contoso.test", "scanner@contoso.test",
                  "x@evilalice.test", "x@alice.test.evil"]:
            r = c.cmd("MAIL FROM:<%s>" % a)
            assert r.text == senders_denied(a, "user alice"), (a, r)
        r = data_tx(c, "alice@contoso.test",
                    b"From: Bob <bob@contoso.test>\r\n\r\nhi\r\n")
        assert r.text == from_denied("bob@contoso.test", "user alice"), r
        assert d.queued() == [], NOT_QUEUED
        r = data_tx(c, "alice@contoso.test",
                    b"From: Alice <alice@contoso.test>\r\n\r\nhi\r\n")
        assert r.qid, r
    assert d.queued() == [r.qid]
    assert d.spool_file(r.qid).get("user") == "alice"
    d.wait_log(r"smtp refused sender=<bob@contoso\.test> client=127\.0\.0\.1 "
               r"user=alice reason=senders")
    d.wait_log(r"smtp refused from=<bob@contoso\.test> client=127\.0\.0\.1 "
               r"user=alice reason=senders")


def test_senders_user_and_network_lines_both_apply(sendersd):
    d = sendersd
    # alice on the scanner network: her addresses and the scanner's
    with d.connect(source=SCANNER) as c:
        ehlo_auth(c, *ALICE)
        for a in ["alice@contoso.test", "scanner@contoso.test",
                  "p@printers.contoso.test", "z@alice.test"]:
            assert c.cmd("MAIL FROM:<%s>" % a).code == 250, a
            assert c.cmd("RSET").code == 250
        r = c.cmd("MAIL FROM:<ceo@contoso.test>")
        assert r.text == senders_denied("ceo@contoso.test", "user alice"), r
        r = data_tx(c, "alice@contoso.test",
                    b"From: scanner@contoso.test, alice@contoso.test\r\n\r\n"
                    b"hi\r\n")
        assert r.qid, r
    # bob (no line of his own) on the scanner network: the network's line
    with d.connect(source=SCANNER) as c:
        ehlo_auth(c, *BOB)
        assert c.cmd("MAIL FROM:<scanner@contoso.test>").code == 250
        assert c.cmd("RSET").code == 250
        r = c.cmd("MAIL FROM:<bob@contoso.test>")
        assert r.text == senders_denied("bob@contoso.test", "user bob"), r
    assert len(d.queued()) == 1


def test_senders_bdat(sendersd):
    d = sendersd
    with d.connect(source=SCANNER) as c:
        c.ehlo()
        # one chunk, bad From:
        r = bdat_tx(c, "scanner@contoso.test",
                    [b"From: ceo@contoso.test\r\nSubject: b\r\n\r\nhi\r\n"])
        assert r.text == from_denied("ceo@contoso.test", "client " + SCANNER)
        # the From: split over chunks, the bad address in the second one
        r = bdat_tx(c, "scanner@contoso.test",
                    [b"Subject: split\r\nFr", b"om: scanner@contoso.test,\r\n",
                     b" ceo@contoso.", b"test\r\n\r\nbody\r\n"])
        assert r.text == from_denied("ceo@contoso.test", "client " + SCANNER)
        assert d.queued() == [], NOT_QUEUED
        # good ones queue
        r1 = bdat_tx(c, "scanner@contoso.test",
                     [b"From: scanner@contoso.test\r\n\r\nhi\r\n"])
        assert r1.qid, r1
        r2 = bdat_tx(c, "", [b"Fr", b"om: <a@printers.contoso.test>\r\n\r\n",
                             b"hi\r\n"])
        assert r2.qid, r2
        # the envelope is checked before any chunk
        r = c.cmd("MAIL FROM:<ceo@contoso.test>")
        assert r.text == senders_denied("ceo@contoso.test",
                                        "client " + SCANNER)
        c.send(b"BDAT 4 LAST\r\nhi\r\n")
        assert c.reply().code in (503, 554)
    assert sorted(d.queued()) == sorted([r1.qid, r2.qid])


# --------------------------------------------------------------------------
# recipient_domains

def test_recipient_domains(relayd_factory):
    d = relayd_factory(smtp={"recipient_domains": "a.test, B.Test",
                             "max_errors": 1000})
    accepted = ["x@a.test", "X@A.TEST", "y@b.test", "z@B.TEST",
                "@c.test:w@a.test", "v%c.test@a.test", '"u@c.test"@a.test']
    refused = ["x@c.test", "x@sub.a.test", "x@evila.test", "x@a.test.evil",
               "x@a.testx", "x@b-test", "x@[127.0.0.1]", "x@[IPv6:::1]",
               "@a.test:x@c.test", "a.test@c.test", "x@a.test."]
    with d.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<s@s.test>").code == 250
        got = []
        for a in accepted:
            r = c.cmd("RCPT TO:<%s>" % a)
            if r.code != 250:
                got.append((a, r.text))
        for a in refused:
            r = c.cmd("RCPT TO:<%s>" % a)
            real = re.sub(r"^@[^:]*:", "", a)     # the route goes
            want = ("550 5.7.1 <%s>: Recipient domain not accepted here "
                    "(recipient_domains)" % real)
            if r.text != want:
                got.append((a, r.text))
        assert not got, "\n".join("%s -> %s" % g for g in got)
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: rd\r\n\r\nhi\r\n.\r\n")
        r = c.reply()
        assert r.qid, r
    rcpts = d.spool_file(r.qid).rcpts
    assert all(x.lower().split("@")[-1] in ("a.test", "b.test")
               for x in rcpts), rcpts
    # only refused recipients: nothing to send
    with d.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<s@s.test>").code == 250
        assert c.cmd("RCPT TO:<x@c.test>").code == 550
        assert c.cmd("DATA").code in (503, 554)
    assert d.queued() == [r.qid]


# --------------------------------------------------------------------------
# config errors

@pytest.mark.parametrize("case", [
    ("senders-bad-cidr", {"senders": {"10.0.0.0/33": "a@b.test"}},
     None, "10.0.0.0/33 = a@b.test",
     '[senders] "10.0.0.0/33" is neither a user name nor a network'),
    ("senders-bad-address", {"senders": {"300.1.2.3/8": "a@b.test"}},
     None, "300.1.2.3/8 = a@b.test",
     '[senders] "300.1.2.3/8" is neither a user name nor a network'),
    ("senders-pattern-without-at", {"senders": {"10.0.0.0/8": "a@b.test, "
                                                "nodomain"}},
     None, "10.0.0.0/8 = a@b.test, nodomain",
     '"nodomain" is not an address, *@domain or *'),
    ("senders-wildcard-domain", {"senders": {"alice": "*@*.b.test"}},
     None, "alice = *@*.b.test",
     '"*@*.b.test" is not an address, *@domain or *'),
    ("senders-no-patterns", {"senders": {"alice": ""}},
     None, "alice = ", "[senders] alice: no addresses"),
    ("networks-bad-prefix", {}, "networks=10.0.0.0/40",
     "listen = 127.0.0.1:{port} networks=10.0.0.0/40",
     'networks: "10.0.0.0/40" is not a network'),
    ("networks-not-an-address", {}, "networks=10.0.0.0/8,banana",
     "listen = 127.0.0.1:{port} networks=10.0.0.0/8,banana",
     'networks: "banana" is not a network'),
    ("unknown-listen-option", {}, "bogus",
     "listen = 127.0.0.1:{port} bogus", 'unknown option "bogus"'),
    ("proxy-takes-no-value", {}, "proxy=yes",
     "listen = 127.0.0.1:{port} proxy=yes", 'unknown option "proxy=yes"'),
], ids=lambda c: c[0])
def test_config_errors(relayd_factory, case):
    _, sections, listen_opt, line, message = case
    d = relayd_factory(sections=sections, start=False)
    if listen_opt is not None:
        d.port = free_port()
        d.listen_lines = lambda: ["127.0.0.1:%d %s" % (d.port, listen_opt)]
        line = line.format(port=d.port)
    assert_config_error(d, line, message)


@pytest.mark.parametrize("pattern", ["@contoso.test", "*@", "a@"])
def test_config_senders_pattern_with_empty_part(relayd_factory, pattern):
    """Patterns are a@b.c, *@b.c or *: one with an empty local part or
    domain can never match what the admin meant (a typo for *@domain) and
    is refused like one without @."""
    d = relayd_factory(sections={"senders": {"10.0.0.0/8": pattern}},
                       start=False)
    assert_config_error(d, "10.0.0.0/8 = %s" % pattern,
                        '"%s" is not an address, *@domain or *' % pattern)
