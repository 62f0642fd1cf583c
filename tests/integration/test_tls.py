"""TLS on the SMTP listener: STARTTLS, implicit TLS (tls listeners), tls_min,
certificates in the config, and the STARTTLS injection defence.

Listeners are written as listen lines, "127.0.0.1:PORT [tls] [cert=PATH]
[key=PATH] [tls_min=V]", with ports picked here (tls_relayd); [smtp]
tls_cert/tls_key/tls_min are the defaults for listeners that say nothing.
The certificates come from the session's test CA (conftest's tls_ca): a
server certificate for localhost/127.0.0.1/::1, keys mode 0600.

Clients verify relayd's certificate against the test CA unless a test says
otherwise.
"""
import os
import re
import shutil
import smtplib
import socket
import ssl
import warnings

import pytest

from relaydtest.daemon import need, run, run_relayd
from relaydtest.env import HOSTNAME, IO_TIMEOUT
from relaydtest.ports import free_port
from relaydtest.smtp import SMTPClosed, SMTPConn
from relaydtest.wait import wait_for

READY = "220 2.0.0 Ready to start TLS"
PLAIN_HELLO_LOG = "TLS handshake on a plain listener"


# --------------------------------------------------------------------------
# helpers

class Conn(SMTPConn):
    """SMTPConn that can switch to TLS: starttls() after a 220, or
    implicit() for a tls listener. A TLS close without close_notify counts
    as an ordinary close."""

    tls_version = None

    @classmethod
    def implicit(cls, port, ctx, hostname="localhost", **kw):
        c = cls(port, greeting=False, **kw)
        try:
            c.wrap(ctx, hostname)
            c.greeting = c.reply()
        except BaseException:
            c.close()
            raise
        return c

    def _fill(self, deadline):
        try:
            return super()._fill(deadline)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            self.eof = True
            return False

    def wrap(self, ctx, hostname="localhost", session=None):
        assert self.buf == b"", (
            "bytes from the server before the TLS handshake: %r" % self.buf)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=hostname,
                                    session=session)
        self.tls_version = self.sock.version()
        self.transcript.append(("C", b"<TLS handshake: %s %s>" % (
            self.sock.version().encode(), self.sock.cipher()[0].encode())))

    def starttls(self, ctx, hostname="localhost", session=None):
        r = self.cmd("STARTTLS")
        assert r.text == READY, r
        self.wrap(ctx, hostname, session)
        return r


def client_ctx(tls_ca, maximum=None, minimum=None):
    """A client context that verifies relayd with the test CA. maximum /
    minimum: TLS versions (ssl.TLSVersion); below 1.2 the security level
    is lowered, as OpenSSL 3 on Debian refuses TLS 1.0/1.1 at level 1+."""
    ctx = ssl.create_default_context(cafile=str(tls_ca.ca_file))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if maximum is not None and maximum < ssl.TLSVersion.TLSv1_2:
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            ctx.minimum_version = ssl.TLSVersion.TLSv1
        if minimum is not None:
            ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
    return ctx


def need_old_tls(version):
    """Skips unless this Python/OpenSSL can itself speak `version`."""
    have = {ssl.TLSVersion.TLSv1: ssl.HAS_TLSv1,
            ssl.TLSVersion.TLSv1_1: ssl.HAS_TLSv1_1}[version]
    if not have:
        pytest.skip("this OpenSSL cannot speak %s as a client" % version.name)


def tls_relayd(relayd_factory, listeners, smtp=None, start=True, **kw):
    """A relayd with one 127.0.0.1 listener per entry of `listeners` (the
    options after ADDR:PORT, "" for a plain one), each on its own free
    port. Returns (daemon, ports); daemon.port is ports[0], so
    d.connect()/d.assert_serves() use the first listener. A start that
    lost a race for a port is retried with other ports."""
    for attempt in range(5):
        ports = []
        while len(ports) < len(listeners):
            p = free_port()
            if p not in ports:
                ports.append(p)
        lines = [("127.0.0.1:%d %s" % (p, o)).strip()
                 for p, o in zip(ports, listeners)]
        d = relayd_factory(listen=lines, smtp=smtp, start=False, **kw)
        d.port = ports[0]
        if not start:
            d.write_config()
            return d, ports
        try:
            d.start()
        except AssertionError:
            d.expect_dead = True
            if "Address already in use" in d.current_log() and attempt < 4:
                continue
            raise
        return d, ports
    raise AssertionError("unreachable")


def cert_opts(cert, key):
    return "cert=%s key=%s" % (cert, key)


def default_cert(tls_ca):
    """[smtp] keys that give every listener the test server certificate."""
    return {"tls_cert": str(tls_ca.cert_file), "tls_key": str(tls_ca.key_file)}


def extensions(reply):
    """EHLO keywords (upper case, without parameters), greeting line
    left out."""
    return [l[4:].split(" ")[0].upper() for l in reply.lines[1:]]


def tls_log_re(version, cipher=None, client="127.0.0.1"):
    return (r"\bsmtp tls client=%s\b.*\bversion=%s\b.*\bcipher=%s"
            % (re.escape(client), re.escape(version),
               re.escape(cipher) + r"(\s|$)" if cipher else r"\S+"))


def received_with(f):
    """The 'with' protocol in a spool file's Received: header."""
    m = re.search(rb"\bwith (\S+)", f.received_header)
    assert m, f.received_header
    return m.group(1).decode()


def only_message(d):
    files = d.queued_files()
    assert len(files) == 1, [f.path.name for f in files]
    return files[0]


def client_hello():
    """The bytes of a real TLS ClientHello (what a client configured for
    implicit TLS sends first)."""
    ctx = ssl.create_default_context()
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = out.read()
    assert hello[:1] == b"\x16", hello[:10]
    return hello


def read_to_close(sock, timeout=IO_TIMEOUT):
    """Everything the peer sends until it closes (fails on timeout)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except socket.timeout:
            raise AssertionError("the server did not close the connection "
                                 "in %ss; got %r" % (timeout, data))
        if not chunk:
            return data
        data += chunk


def assert_only_smtp_lines(data):
    """data is nothing or plain SMTP reply lines: no TLS record (alert,
    handshake) from the server."""
    assert data[:1] not in (b"\x15", b"\x16", b"\x17"), data[:40]
    for line in data.split(b"\r\n")[:-1]:
        assert re.match(rb"^[2-5]\d\d([ -]|$)", line), data
    assert data.endswith(b"\r\n") or data == b"", data


def relayd_conf(tmp_path, text):
    conf = tmp_path / "tls.conf"
    conf.write_text(text + "\n[queue]\nspool_dir = %s\n"
                    % (tmp_path / "spool"))
    return conf


def copy_key(src, dst, mode):
    shutil.copyfile(src, dst)
    os.chmod(dst, mode)
    return dst


def check_error(conf, r, line, *words):
    """relayd -n failed with 78 and a FILE:LINE: message holding words."""
    assert r.returncode == 78, (r.returncode, r.stdout, r.stderr)
    assert "configuration OK" not in r.stdout
    prefix = "%s:%d: " % (conf, line)
    hits = [l for l in r.stderr.splitlines() if l.startswith(prefix)]
    assert hits, "no %r line in:\n%s" % (prefix, r.stderr)
    assert any(all(w in l for w in words) for l in hits), (words, r.stderr)


# --------------------------------------------------------------------------
# the test certificates themselves

def test_test_ca_keys_are_private(tls_ca):
    """relayd refuses keys open to group or others: the fixtures' keys are
    0600 (a failure here is the harness's, not relayd's)."""
    for key in (tls_ca.key_file, tls_ca.ca_key_file):
        assert os.stat(key).st_mode & 0o077 == 0, oct(os.stat(key).st_mode)


# --------------------------------------------------------------------------
# real clients deliver over TLS

def test_smtplib_starttls(relayd_factory, tls_ca):
    d, _ = tls_relayd(relayd_factory, [""], smtp=default_cert(tls_ca))
    ctx = client_ctx(tls_ca)
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        s.ehlo("before.test")
        assert s.has_extn("starttls")
        code, text = s.starttls(context=ctx)
        assert (code, text) == (220, b"2.0.0 Ready to start TLS")
        cipher = s.sock.cipher()[0]
        assert s.sock.version() == "TLSv1.3"
        s.ehlo("after.test")
        assert not s.has_extn("starttls")
        assert s.sendmail("py@a.test", ["r@b.test"],
                          b"Subject: starttls\r\n\r\nover STARTTLS\r\n") == {}
    f = only_message(d)
    assert f.mail_from == "py@a.test" and f.rcpts == ["r@b.test"]
    assert f.get("helo") == "after.test"
    assert received_with(f) == "ESMTPS"
    assert f.body == b"Subject: starttls\r\n\r\nover STARTTLS\r\n"
    d.wait_log(tls_log_re("TLSv1.3", cipher))


def test_smtplib_smtp_ssl(relayd_factory, tls_ca):
    d, _ = tls_relayd(relayd_factory, ["tls"], smtp=default_cert(tls_ca))
    ctx = client_ctx(tls_ca)
    with smtplib.SMTP_SSL("127.0.0.1", d.port, timeout=10,
                          context=ctx) as s:
        code, text = s.ehlo("implicit.test")
        assert code == 250
        assert not s.has_extn("starttls")
        cipher = s.sock.cipher()[0]
        assert s.sendmail("ssl@a.test", ["r@b.test"],
                          b"Subject: smtps\r\n\r\nover implicit TLS\r\n") == {}
    f = only_message(d)
    assert f.mail_from == "ssl@a.test"
    assert f.get("helo") == "implicit.test"
    assert received_with(f) == "ESMTPS"
    assert f.body == b"Subject: smtps\r\n\r\nover implicit TLS\r\n"
    d.wait_log(tls_log_re("TLSv1.3", cipher))


def swaks_can_tls():
    r = run(["perl", "-MNet::SSLeay", "-e", "1"])
    if r.returncode != 0:
        pytest.skip("swaks needs Net::SSLeay for TLS (Debian package "
                    "libnet-ssleay-perl, which tests/deps.sh's "
                    "--no-install-recommends leaves out)")


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_swaks(relayd_factory, tls_ca, mode):
    swaks = need("swaks")
    swaks_can_tls()
    d, _ = tls_relayd(relayd_factory, ["" if mode == "starttls" else "tls"],
                      smtp=default_cert(tls_ca))
    args = [swaks, "--server", "127.0.0.1:%d" % d.port,
            "--from", "swaks@a.test", "--to", "t@b.test",
            "--helo", "swaks.test", "--header", "Subject: swaks tls",
            "--body", "swaks over TLS\n", "--timeout", "10",
            "--tls" if mode == "starttls" else "--tls-on-connect",
            "--tls-verify", "--tls-ca-path", str(tls_ca.ca_file)]
    r = run(args)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    assert "TLS started" in out, out
    assert "250 2.0.0 Ok: queued as" in out, out
    f = only_message(d)
    assert f.mail_from == "swaks@a.test" and f.rcpts == ["t@b.test"]
    assert received_with(f) == "ESMTPS"
    assert b"swaks over TLS\r\n" in f.body


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_msmtp(relayd_factory, tls_ca, tmp_path, mode):
    msmtp = need("msmtp")
    d, _ = tls_relayd(relayd_factory, ["" if mode == "starttls" else "tls"],
                      smtp=default_cert(tls_ca))
    rc = tmp_path / "msmtprc"
    rc.write_text("account default\n"
                  "host 127.0.0.1\n"
                  "port %d\n"
                  "auth off\n"
                  "from msmtp@a.test\n"
                  "domain msmtp.test\n"
                  "timeout 10\n" % d.port)
    rc.chmod(0o600)
    r = run([msmtp, "-C", str(rc), "--tls=on",
             "--tls-starttls=%s" % ("on" if mode == "starttls" else "off"),
             "--tls-trust-file=%s" % tls_ca.ca_file, "m@b.test"],
            input=b"Subject: msmtp tls\n\nmsmtp over TLS\n")
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")
    f = only_message(d)
    assert f.mail_from == "msmtp@a.test" and f.rcpts == ["m@b.test"]
    assert f.get("helo") == "msmtp.test"
    assert received_with(f) == "ESMTPS"
    assert f.body.endswith(b"msmtp over TLS\r\n")


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_curl(relayd_factory, tls_ca, tmp_path, mode):
    curl = need("curl")
    d, _ = tls_relayd(relayd_factory, ["" if mode == "starttls" else "tls"],
                      smtp=default_cert(tls_ca))
    msg = tmp_path / "mail.txt"
    msg.write_bytes(b"From: curl@a.test\r\nTo: c@b.test\r\n"
                    b"Subject: curl tls\r\n\r\ncurl over TLS\r\n")
    url = ("smtp://127.0.0.1:%d" if mode == "starttls"
           else "smtps://127.0.0.1:%d") % d.port
    args = [curl, "-sS", "--max-time", "10", url, "--cacert",
            str(tls_ca.ca_file), "--mail-from", "curl@a.test",
            "--mail-rcpt", "c@b.test", "--upload-file", str(msg)]
    if mode == "starttls":
        args.append("--ssl-reqd")
    r = run(args)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    f = only_message(d)
    assert f.mail_from == "curl@a.test" and f.rcpts == ["c@b.test"]
    assert received_with(f) == "ESMTPS"
    assert f.body.endswith(b"\r\ncurl over TLS\r\n")


# --------------------------------------------------------------------------
# STARTTLS in the protocol

def test_starttls_advertised_only_before_tls(relayd_factory, tls_ca):
    d, _ = tls_relayd(relayd_factory, [""], smtp=default_cert(tls_ca))
    with Conn(d.port) as c:
        assert c.greeting.lines == ["220 %s ESMTP relayd" % HOSTNAME]
        before = c.ehlo()
        assert "STARTTLS" in extensions(before), before
        c.starttls(client_ctx(tls_ca))
        after = c.ehlo()
        assert "STARTTLS" not in extensions(after), after
        # Nothing else changes: the same extensions, STARTTLS left out.
        assert after.lines[0] == before.lines[0]
        assert extensions(after) == [e for e in extensions(before)
                                     if e != "STARTTLS"]
        # A second STARTTLS inside TLS is refused, and the session goes on.
        r = c.cmd("STARTTLS")
        assert 500 <= r.code < 600, r
        assert c.cmd("NOOP").code == 250
        assert c.send_mail(body=b"after a second STARTTLS\r\n").qid
    assert received_with(only_message(d)) == "ESMTPS"


def test_no_certificate_no_starttls(relayd_factory):
    """A plain listener without any certificate: no STARTTLS in EHLO, the
    command refused (not 220), and the session goes on in plain text."""
    d = relayd_factory()
    with d.connect() as c:
        r = c.ehlo()
        assert "STARTTLS" not in extensions(r), r
        r = c.cmd("STARTTLS")
        assert r.text.startswith("502 5.5.1") or r.code == 454, r
        assert c.cmd("EHLO again.test").code == 250
        q = c.send_mail(body=b"Subject: plain\r\n\r\nno TLS here\r\n").qid
        assert q
        assert c.cmd("QUIT").code == 221
    assert received_with(d.spool_file(q)) == "ESMTP"


def test_starttls_per_listener_certificate(relayd_factory, tls_ca):
    """No [smtp] tls_cert: the plain listener with cert=/key= on its line
    offers STARTTLS, the one without does not."""
    d, (with_cert, without) = tls_relayd(
        relayd_factory, [cert_opts(tls_ca.cert_file, tls_ca.key_file), ""])
    with Conn(without) as c:
        assert "STARTTLS" not in extensions(c.ehlo())
        r = c.cmd("STARTTLS")
        assert r.text.startswith("502 5.5.1") or r.code == 454, r
    with Conn(with_cert) as c:
        assert "STARTTLS" in extensions(c.ehlo())
        c.starttls(client_ctx(tls_ca))
        c.ehlo()
        r = c.send_mail(body=b"listener certificate\r\n")
        assert r.qid, r
    assert received_with(d.spool_file(r.qid)) == "ESMTPS"


def test_starttls_resets_the_session(relayd_factory, tls_ca):
    """RFC 3207: after the handshake the client starts over with EHLO;
    what it said before (EHLO name) is forgotten."""
    d, _ = tls_relayd(relayd_factory, [""], smtp=default_cert(tls_ca))
    with Conn(d.port) as c:
        c.ehlo("plain-name.test")
        c.starttls(client_ctx(tls_ca))
        r = c.cmd("MAIL FROM:<early@a.test>")
        assert r.code == 503, r
        assert c.cmd("RCPT TO:<r@b.test>").code == 503
        c.ehlo("tls-name.test")
        r = c.send_mail("late@a.test", body=b"Subject: reset\r\n\r\nok\r\n")
        assert r.qid, r
        assert c.cmd("QUIT").code == 221
    f = d.spool_file(r.qid)
    assert f.get("helo") == "tls-name.test"
    assert f.mail_from == "late@a.test"
    assert received_with(f) == "ESMTPS"


def test_helo_after_starttls(relayd_factory, tls_ca):
    """HELO is as good as EHLO to start over after the handshake."""
    d, _ = tls_relayd(relayd_factory, [""], smtp=default_cert(tls_ca))
    with Conn(d.port) as c:
        c.ehlo()
        c.starttls(client_ctx(tls_ca))
        assert c.cmd("HELO old.test").code == 250
        r = c.send_mail(body=b"after HELO\r\n")
        assert r.qid, r
    assert d.spool_file(r.qid).get("helo") == "old.test"


def test_starttls_with_parameter_refused(relayd_factory, tls_ca):
    """RFC 3207: STARTTLS takes no parameter (501); no handshake starts,
    and a correct STARTTLS still works afterwards."""
    d, _ = tls_relayd(relayd_factory, [""], smtp=default_cert(tls_ca))
    with Conn(d.port) as c:
        c.ehlo()
        r = c.cmd("STARTTLS now")
        assert r.code == 501, r
        assert c.cmd("NOOP").code == 250
        c.starttls(client_ctx(tls_ca))
        c.ehlo()
        assert c.send_mail(body=b"x\r\n").qid


def test_starttls_pipelined_after_ehlo(relayd_factory, tls_ca):
    """STARTTLS as the last command of a pipelined group (RFC 2920): EHLO
    is answered, then 220, and the handshake follows."""
    d, _ = tls_relayd(relayd_factory, [""], smtp=default_cert(tls_ca))
    with Conn(d.port) as c:
        c.send(b"EHLO pipe.test\r\nSTARTTLS\r\n")
        r1, r2 = c.replies(2)
        assert r1.code == 250 and "STARTTLS" in extensions(r1), r1
        assert r2.text == READY, r2
        c.wrap(client_ctx(tls_ca))
        c.ehlo("pipe.test")
        r = c.send_mail(body=b"pipelined STARTTLS\r\n")
        assert r.qid, r
    assert received_with(d.spool_file(r.qid)) == "ESMTPS"


@pytest.mark.parametrize("injected", [
    b"RSET\r\nMAIL FROM:<evil@x.test>\r\n",
    b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\n",
    b"MAIL FROM:<evil@x.test>",          # half a line, no CRLF
], ids=["rset-mail", "envelope", "partial-line"])
def test_starttls_injection_discarded(relayd_factory, tls_ca, injected):
    """CVE-2011-0411: bytes pipelined after STARTTLS in plain text must
    not be read as commands sent over TLS."""
    d, _ = tls_relayd(relayd_factory, [""], smtp=default_cert(tls_ca))
    with Conn(d.port) as c:
        c.ehlo()
        c.send(b"STARTTLS\r\n" + injected)
        r = c.reply()
        assert r.text == READY, r
        # No plain-text reply to the injected commands either: wrap()
        # checks that nothing followed the 220.
        c.wrap(client_ctx(tls_ca))
        # The first reply over TLS is the one to the first command sent
        # over TLS.
        r = c.cmd("EHLO tls.test")
        assert r.code == 250, r
        assert r.lines[0].startswith("250-%s Hello tls.test" % HOSTNAME), r
        # No transaction was opened by the injected MAIL: no nested-MAIL
        # 503.
        r = c.cmd("MAIL FROM:<good@a.test>")
        assert r.text == "250 2.1.0 Ok", r
        assert c.cmd("RCPT TO:<rcpt@b.test>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(b"Subject: clean\r\n\r\nclean\r\n.\r\n")
        r = c.reply()
        assert r.qid, r
        assert c.cmd("QUIT").code == 221
        assert c.buf == b"", "more after the 221: %r" % c.buf
    f = only_message(d)
    assert f.mail_from == "good@a.test"
    assert f.rcpts == ["rcpt@b.test"]
    assert b"evil" not in f.raw and b"victim" not in f.raw


# --------------------------------------------------------------------------
# implicit TLS

def test_implicit_tls_greeting_after_handshake(relayd_factory, tls_ca):
    d, _ = tls_relayd(relayd_factory, ["tls"], smtp=default_cert(tls_ca))
    with Conn.implicit(d.port, client_ctx(tls_ca)) as c:
        assert c.greeting.code == 220, c.greeting
        assert c.greeting.text.endswith("ESMTP relayd"), c.greeting
        assert c.greeting.lines == ["220 %s ESMTP relayd" % HOSTNAME]
        assert c.tls_version == "TLSv1.3"
        r = c.ehlo()
        assert "STARTTLS" not in extensions(r), r
        r = c.cmd("STARTTLS")
        assert 500 <= r.code < 600, r
        r = c.send_mail(body=b"Subject: implicit\r\n\r\nimplicit\r\n")
        assert r.qid, r
        assert c.cmd("QUIT").code == 221
    f = d.spool_file(r.qid)
    assert received_with(f) == "ESMTPS"
    assert f.get("listener") == "127.0.0.1:%d" % d.port
    d.wait_log(tls_log_re("TLSv1.3"))


def test_plain_client_on_implicit_listener(relayd_factory, tls_ca):
    """Not in the spec, what an admin expects: a plain-text client on a
    tls listener gets no greeting in clear; its first command ends the
    connection (a failed handshake), and the daemon goes on serving."""
    d, _ = tls_relayd(relayd_factory, ["tls"], smtp=default_cert(tls_ca))
    with Conn(d.port, greeting=False) as c:
        assert c.quiet(0.3), "plain-text bytes on a tls listener: %r" % (
            c.buf,)
        c.sock.sendall(b"EHLO plain.test\r\n")
        data = read_to_close(c.sock)
        assert not re.match(rb"^\d{3}", data), data
    d.assert_alive()
    with Conn.implicit(d.port, client_ctx(tls_ca)) as c:
        c.ehlo()
        assert c.send_mail(body=b"still serving\r\n").qid


# --------------------------------------------------------------------------
# a TLS client on a plain listener

def _count_plain_hello(d):
    return d.current_log().count(PLAIN_HELLO_LOG)


def test_client_hello_on_plain_listener(relayd_factory, tls_ca):
    d, _ = tls_relayd(relayd_factory, [""], smtp=default_cert(tls_ca))
    ctx = client_ctx(tls_ca)

    # 1. A TLS client (say, configured for port 465) on the plain port:
    # the handshake fails on the client's side; no reply over TLS.
    s = socket.create_connection(("127.0.0.1", d.port), timeout=IO_TIMEOUT)
    with s:
        with pytest.raises(OSError):        # ssl.SSLError and resets
            ctx.wrap_socket(s, server_hostname="localhost")
    wait_for(lambda: _count_plain_hello(d) >= 1, IO_TIMEOUT,
             "log line %r" % PLAIN_HELLO_LOG)

    # 2. A ClientHello after the greeting: closed, nothing but plain SMTP
    # text (if anything) comes back.
    with Conn(d.port) as c:
        assert c.greeting.code == 220
        c.sock.sendall(client_hello())
        assert_only_smtp_lines(read_to_close(c.sock))
    wait_for(lambda: _count_plain_hello(d) >= 2, IO_TIMEOUT,
             "a second log line %r" % PLAIN_HELLO_LOG)

    # 3. A ClientHello already waiting when relayd accepts the connection
    # (the early-talker path): recognised as TLS too.
    d.freeze()
    try:
        s = socket.create_connection(("127.0.0.1", d.port),
                                     timeout=IO_TIMEOUT)
        s.sendall(client_hello())
    finally:
        d.thaw()
    with s:
        assert_only_smtp_lines(read_to_close(s))
    wait_for(lambda: _count_plain_hello(d) >= 3, IO_TIMEOUT,
             "a third log line %r" % PLAIN_HELLO_LOG)

    # The daemon goes on: plain and STARTTLS clients are served.
    d.assert_serves()
    with Conn(d.port) as c:
        c.ehlo()
        c.starttls(ctx)
        c.ehlo()
        assert c.send_mail(body=b"after the hellos\r\n").qid


def test_broken_starttls_clients_do_not_hurt(relayd_factory, tls_ca):
    """Not in the spec, what an admin expects: a client that says STARTTLS
    and then goes away, or sends plain text instead of a ClientHello, or
    gives up half-way through the handshake, costs only its own
    session."""
    d, _ = tls_relayd(relayd_factory, [""], smtp=default_cert(tls_ca))
    with Conn(d.port) as c:                 # gone after the 220
        c.ehlo()
        assert c.cmd("STARTTLS").text == READY
    with Conn(d.port) as c:                 # plain text instead of TLS
        c.ehlo()
        assert c.cmd("STARTTLS").text == READY
        c.sock.sendall(b"MAIL FROM:<plain@a.test>\r\n")
        data = read_to_close(c.sock)
        assert not re.match(rb"^\d{3}", data), data
    with Conn(d.port) as c:                 # only the ClientHello
        c.ehlo()
        assert c.cmd("STARTTLS").text == READY
        c.sock.sendall(client_hello())
    d.assert_alive()
    d.assert_serves()
    with Conn(d.port) as c:
        c.ehlo()
        c.starttls(client_ctx(tls_ca))
        c.ehlo()
        assert c.send_mail(body=b"after broken clients\r\n").qid
    assert len(d.queued()) == 2


# --------------------------------------------------------------------------
# TLS versions

def _handshake_fails(port, ctx, implicit):
    """True if the TLS handshake (after STARTTLS's 220, or at connect)
    fails for the client."""
    c = Conn(port, greeting=not implicit)
    try:
        if not implicit:
            c.ehlo()
            assert c.cmd("STARTTLS").text == READY
        try:
            c.wrap(ctx)
            if implicit:
                c.greeting = c.reply()
        except (ssl.SSLError, OSError, SMTPClosed):
            return True
        return False
    finally:
        c.close()


def _deliver_over_tls(port, ctx, implicit, body):
    """One message over TLS; returns (queue id, TLS version, cipher)."""
    if implicit:
        c = Conn.implicit(port, ctx)
    else:
        c = Conn(port)
        c.ehlo()
        c.starttls(ctx)
    with c:
        assert c.greeting.code == 220, c.greeting
        c.ehlo()
        r = c.send_mail(body=body)
        assert r.qid, r
        return r.qid, c.sock.version(), c.sock.cipher()[0]


def test_tls_min_default_refuses_tls_1_1(relayd_factory, tls_ca):
    need_old_tls(ssl.TLSVersion.TLSv1_1)
    d, (plain, tls) = tls_relayd(relayd_factory, ["", "tls"],
                                 smtp=default_cert(tls_ca))
    old = client_ctx(tls_ca, maximum=ssl.TLSVersion.TLSv1_1)
    assert _handshake_fails(plain, old, implicit=False)
    assert _handshake_fails(tls, old, implicit=True)
    d.assert_alive()
    # TLS 1.2 is the default minimum, and 1.3 works too.
    for port, implicit in ((plain, False), (tls, True)):
        for ver in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = client_ctx(tls_ca, maximum=ver, minimum=ver)
            qid, got, cipher = _deliver_over_tls(port, ctx, implicit,
                                                 b"modern\r\n")
            assert got == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[
                ver.name]
            d.wait_log(tls_log_re(got))
            assert received_with(d.spool_file(qid)) == "ESMTPS"
    assert not re.search(r"tls_min\W*1\.[01]\b", d.current_log()), (
        "a warning about tls_min 1.0/1.1 without them:\n" + d.current_log())


@pytest.mark.parametrize("where", ["listen", "smtp"])
def test_tls_min_old_versions_allowed_with_warning(relayd_factory, tls_ca,
                                                   where):
    """tls_min = 1.0 on a listen line (or 1.1 in [smtp]): a TLS 1.1 client
    gets through, and relayd warns at start, naming tls_min and the
    listener."""
    need_old_tls(ssl.TLSVersion.TLSv1_1)
    if where == "listen":
        d, (plain, tls) = tls_relayd(
            relayd_factory, ["tls_min=1.0", "tls tls_min=1.0"],
            smtp=default_cert(tls_ca))
    else:
        d, (plain, tls) = tls_relayd(
            relayd_factory, ["", "tls"],
            smtp=dict(default_cert(tls_ca), tls_min="1.1"))
    for port in (plain, tls):
        d.wait_log(r"tls_min.*\b127\.0\.0\.1:%d\b|\b127\.0\.0\.1:%d\b.*"
                   r"tls_min" % (port, port), timeout=1)
    old = client_ctx(tls_ca, maximum=ssl.TLSVersion.TLSv1_1)
    for port, implicit in ((plain, False), (tls, True)):
        qid, got, _ = _deliver_over_tls(port, old, implicit,
                                        b"old printer\r\n")
        assert got == "TLSv1.1"
        assert received_with(d.spool_file(qid)) == "ESMTPS"
    d.wait_log(tls_log_re("TLSv1.1"))
    if where == "smtp" and ssl.HAS_TLSv1:
        # 1.1 is the floor here: TLS 1.0 is still refused.
        v10 = client_ctx(tls_ca, maximum=ssl.TLSVersion.TLSv1)
        assert _handshake_fails(plain, v10, implicit=False)
        assert _handshake_fails(tls, v10, implicit=True)
    # Modern clients still get TLS 1.3.
    _, got, _ = _deliver_over_tls(tls, client_ctx(tls_ca), True, b"new\r\n")
    assert got == "TLSv1.3"


def test_tls_min_1_3_and_listen_line_override(relayd_factory, tls_ca):
    """[smtp] tls_min = 1.3 refuses TLS 1.2; tls_min=1.2 on a listen line
    wins over it for that listener."""
    d, (strict, lax) = tls_relayd(relayd_factory, ["tls", "tls tls_min=1.2"],
                                  smtp=dict(default_cert(tls_ca),
                                            tls_min="1.3"))
    v12 = client_ctx(tls_ca, maximum=ssl.TLSVersion.TLSv1_2)
    assert _handshake_fails(strict, v12, implicit=True)
    _, got, _ = _deliver_over_tls(lax, v12, True, b"1.2\r\n")
    assert got == "TLSv1.2"
    _, got, _ = _deliver_over_tls(strict, client_ctx(tls_ca), True,
                                  b"1.3\r\n")
    assert got == "TLSv1.3"


# --------------------------------------------------------------------------
# session resumption

@pytest.mark.parametrize("version,mode", [
    ("1.2", "starttls"), ("1.2", "implicit"), ("1.3", "implicit"),
])
def test_session_resumption(relayd_factory, tls_ca, version, mode):
    d, _ = tls_relayd(relayd_factory, ["" if mode == "starttls" else "tls"],
                      smtp=default_cert(tls_ca))
    ver = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[
        version]
    ctx = client_ctx(tls_ca, maximum=ver, minimum=ver)

    def connect(session=None):
        if mode == "implicit":
            c = Conn(d.port, greeting=False)
            c.wrap(ctx, session=session)
            c.greeting = c.reply()
        else:
            c = Conn(d.port)
            c.ehlo()
            c.starttls(ctx, session=session)
        r = c.ehlo()            # (TLS 1.3: the ticket has been read)
        assert r.code == 250
        return c

    with connect() as first:
        assert first.sock.version() == "TLSv" + version
        assert not first.sock.session_reused
        session = first.sock.session
        assert session is not None
        assert first.cmd("QUIT").code == 221
    with connect(session) as second:
        assert second.sock.session_reused, "session not resumed"
        assert second.send_mail(body=b"resumed\r\n").qid
    assert received_with(only_message(d)) == "ESMTPS"


# --------------------------------------------------------------------------
# several listeners, data over TLS

def test_mixed_listeners(relayd_factory, tls_ca):
    """A plain listener with STARTTLS (the [smtp] certificate) and an
    implicit TLS listener with a certificate of its own, in one relayd."""
    other_cert, other_key = tls_ca.issue("other", dns=("other.localhost",))
    d, (plain, tls) = tls_relayd(
        relayd_factory, ["", "tls " + cert_opts(other_cert, other_key)],
        smtp=default_cert(tls_ca))
    d.wait_log(r"smtp listening listener=127\.0\.0\.1:%d\b" % plain)
    d.wait_log(r"smtp listening listener=127\.0\.0\.1:%d\b" % tls)
    ctx = client_ctx(tls_ca)

    def cn(sock):
        subject = dict(x[0] for x in sock.getpeercert()["subject"])
        return subject["commonName"]

    # the plain listener, upgraded
    with Conn(plain) as c:
        assert "STARTTLS" in extensions(c.ehlo())
        c.starttls(ctx)
        assert cn(c.sock) == "localhost"
        c.ehlo("starttls.test")
        q_starttls = c.send_mail(body=b"via STARTTLS\r\n").qid
    # the plain listener, not upgraded
    with Conn(plain) as c:
        c.ehlo("plain.test")
        q_plain = c.send_mail(body=b"in clear\r\n").qid
    # the tls listener, with its own certificate
    with Conn.implicit(tls, ctx, hostname="other.localhost") as c:
        assert cn(c.sock) == "other.localhost"
        assert "STARTTLS" not in extensions(c.ehlo("implicit.test"))
        q_implicit = c.send_mail(body=b"via implicit TLS\r\n").qid

    expect = {q_starttls: (plain, "ESMTPS", b"via STARTTLS\r\n"),
              q_plain: (plain, "ESMTP", b"in clear\r\n"),
              q_implicit: (tls, "ESMTPS", b"via implicit TLS\r\n")}
    assert sorted(d.queued()) == sorted(expect)
    for qid, (port, proto, body) in expect.items():
        f = d.spool_file(qid)
        assert f.get("listener") == "127.0.0.1:%d" % port, qid
        assert received_with(f) == proto, (qid, f.received_header)
        assert f.body == body
    assert len(re.findall(r"\bsmtp tls client=127\.0\.0\.1\b",
                          d.current_log())) == 2


def test_pipelining_and_large_message_over_tls(relayd_factory, tls_ca):
    """Commands that arrive in one TLS record are all answered, and a
    message far bigger than a TLS record (16k) arrives whole, over DATA
    and over BDAT."""
    d, _ = tls_relayd(relayd_factory, ["tls"], smtp=default_cert(tls_ca))
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
    big = b"Subject: big\r\n\r\n" + line * (2 * 1024 * 1024 // len(line))
    with Conn.implicit(d.port, client_ctx(tls_ca)) as c:
        c.ehlo()
        c.send(b"MAIL FROM:<pipe@a.test>\r\nRCPT TO:<r1@b.test>\r\n"
               b"RCPT TO:<r2@b.test>\r\nDATA\r\n")
        assert [r.code for r in c.replies(4)] == [250, 250, 250, 354]
        c.send(big + b".\r\nNOOP\r\n")
        r = c.reply(timeout=20)
        assert r.qid, r
        q1 = r.qid
        assert c.reply().code == 250
        c.send(b"MAIL FROM:<bdat@a.test>\r\nRCPT TO:<r3@b.test>\r\n"
               b"BDAT %d LAST\r\n" % len(big) + big)
        r1, r2, r3 = c.replies(3, timeout=20)
        assert (r1.code, r2.code) == (250, 250)
        assert r3.qid, r3
        q2 = r3.qid
        assert c.cmd("QUIT").code == 221
    assert d.spool_file(q1).body == big
    assert d.spool_file(q1).rcpts == ["r1@b.test", "r2@b.test"]
    assert d.spool_file(q2).body == big


def test_stop_with_tls_sessions_open(relayd_factory, tls_ca):
    """Not in the spec, what an admin expects: SIGTERM with idle TLS
    sessions (STARTTLS and implicit) open still ends relayd cleanly."""
    d, (plain, tls) = tls_relayd(relayd_factory, ["", "tls"],
                                 smtp=default_cert(tls_ca))
    ctx = client_ctx(tls_ca)
    a = Conn(plain)
    a.ehlo()
    a.starttls(ctx)
    b = Conn.implicit(tls, ctx)
    with a, b:
        a.ehlo()
        b.ehlo()
        assert d.stop() == 0


# --------------------------------------------------------------------------
# configuration (relayd -n)

def test_check_mode_good_tls_config(tmp_path, tls_ca):
    other_cert, other_key = tls_ca.issue("check-other")
    conf = relayd_conf(tmp_path, (
        "[smtp]\n"
        "listen = 127.0.0.1:2525\n"
        "listen = 127.0.0.1:4650 tls\n"
        "listen = 127.0.0.1:4651 tls cert=%s key=%s tls_min=1.3\n"
        "listen = 127.0.0.1:2526 tls_min=1.0\n"
        "tls_cert = %s\n"
        "tls_key = %s\n"
        "tls_min = 1.2\n"
        % (other_cert, other_key, tls_ca.cert_file, tls_ca.key_file)))
    r = run_relayd("-n", "-c", str(conf))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "%s: configuration OK" % conf


def test_check_mode_tls_listener_without_certificate(tmp_path):
    conf = relayd_conf(tmp_path, "[smtp]\n"
                                 "listen = 127.0.0.1:2525\n"
                                 "listen = 127.0.0.1:4650 tls\n")
    r = run_relayd("-n", "-c", str(conf))
    check_error(conf, r, 3, "127.0.0.1:4650", "tls_cert", "tls_key")
    # Not only -n: the daemon refuses to start the same way.
    r = run_relayd("-c", str(conf), timeout=10)
    assert r.returncode == 78, (r.returncode, r.stderr)
    assert "127.0.0.1:4650" in r.stderr


@pytest.mark.parametrize("where,mode", [
    ("listen", 0o644), ("smtp", 0o644), ("smtp", 0o640), ("listen", 0o604),
])
def test_check_mode_key_open_to_others(tmp_path, tls_ca, where, mode):
    key = copy_key(tls_ca.key_file, tmp_path / "open.key", mode)
    if where == "listen":
        conf = relayd_conf(tmp_path, "[smtp]\nlisten = 127.0.0.1:4650 tls "
                           "cert=%s key=%s\n" % (tls_ca.cert_file, key))
        line = 2
    else:
        conf = relayd_conf(tmp_path, "[smtp]\nlisten = 127.0.0.1:4650 tls\n"
                           "tls_cert = %s\ntls_key = %s\n"
                           % (tls_ca.cert_file, key))
        line = 4
    r = run_relayd("-n", "-c", str(conf))
    check_error(conf, r, line, str(key),
                "is open to group or others (mode %04o)" % mode,
                "run: chmod 600 %s" % key)


@pytest.mark.parametrize("problem", ["missing", "unreadable"])
def test_check_mode_cert_unreadable(tmp_path, tls_ca, problem):
    cert = tmp_path / "server.pem"
    if problem == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads a mode 000 file anyway")
        shutil.copyfile(tls_ca.cert_file, cert)
        cert.chmod(0)
    for text, line in (
            ("[smtp]\nlisten = 127.0.0.1:4650 tls cert=%s key=%s\n"
             % (cert, tls_ca.key_file), 2),
            ("[smtp]\nlisten = 127.0.0.1:2525\ntls_cert = %s\n"
             "tls_key = %s\n" % (cert, tls_ca.key_file), 3)):
        conf = relayd_conf(tmp_path, text)
        r = run_relayd("-n", "-c", str(conf))
        check_error(conf, r, line, str(cert))


def test_check_mode_key_missing(tmp_path, tls_ca):
    """Not in the spec, what an admin expects: a missing key file is named
    like a missing certificate."""
    key = tmp_path / "nowhere.key"
    conf = relayd_conf(tmp_path, "[smtp]\nlisten = 127.0.0.1:4650 tls "
                       "cert=%s key=%s\n" % (tls_ca.cert_file, key))
    r = run_relayd("-n", "-c", str(conf))
    check_error(conf, r, 2, str(key))


@pytest.mark.parametrize("problem", ["not-pem", "wrong-key"])
def test_check_mode_unusable_certificate(tmp_path, tls_ca, problem):
    """Not in the spec, what an admin expects: relayd -n (and so the
    start) fails, naming the file, when the certificate is not a PEM
    certificate or the key does not belong to it; not the first client."""
    cert, key = tls_ca.cert_file, tls_ca.key_file
    if problem == "not-pem":
        cert = tmp_path / "garbage.pem"
        cert.write_text("this is not a certificate\n")
    else:
        _, key = tls_ca.issue("unrelated")
    conf = relayd_conf(tmp_path, "[smtp]\nlisten = 127.0.0.1:4650 tls "
                       "cert=%s key=%s\n" % (cert, key))
    r = run_relayd("-n", "-c", str(conf))
    assert r.returncode == 78, (r.returncode, r.stdout, r.stderr)
    assert str(cert) in r.stderr or str(key) in r.stderr, r.stderr


@pytest.mark.parametrize("text,line,words", [
    # a certificate without its key, and the other way round
    ("[smtp]\nlisten = 127.0.0.1:2525\ntls_cert = {cert}\n", 3,
     ["tls_key"]),
    ("[smtp]\nlisten = 127.0.0.1:2525\ntls_key = {key}\n", 3, ["tls_cert"]),
    ("[smtp]\nlisten = 127.0.0.1:4650 tls cert={cert}\n", 2, ["key"]),
    # versions that do not exist
    ("[smtp]\nlisten = 127.0.0.1:2525\ntls_min = 1.4\n", 3, ["tls_min"]),
    ("[smtp]\nlisten = 127.0.0.1:2525 tls_min=TLSv1.2\n", 2, ["tls_min"]),
    # a typo on the listen line
    ("[smtp]\nlisten = 127.0.0.1:4650 tsl\n", 2, ["tsl"]),
], ids=["cert-without-key", "key-without-cert", "listen-cert-without-key",
        "tls_min-1.4", "listen-tls_min-name", "listen-typo"])
def test_check_mode_tls_errors(tmp_path, tls_ca, text, line, words):
    """Not spelled out in the spec, what an admin expects: these are
    config errors with FILE:LINE, like any other."""
    conf = relayd_conf(tmp_path, text.format(cert=tls_ca.cert_file,
                                             key=tls_ca.key_file))
    r = run_relayd("-n", "-c", str(conf))
    check_error(conf, r, line, *words)


# --------------------------------------------------------------------------
# certificate reload

def peer_cn(conn):
    cert = conn.sock.getpeercert()
    return dict(x[0] for x in cert["subject"])["commonName"]


def test_sighup_reloads_certificate_and_keeps_sessions(relayd_factory,
                                                        tls_ca, tmp_path):
    """A renewed certificate is taken up on SIGHUP: new sessions get it,
    a session that started before goes on with its own."""
    import shutil
    import signal as sig
    old_cert, old_key = tls_ca.issue("old", dns=("localhost",))
    new_cert, new_key = tls_ca.issue("new", dns=("renewed.localhost",
                                                 "localhost"))
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    shutil.copyfile(old_cert, cert)
    shutil.copyfile(old_key, key)
    os.chmod(key, 0o600)
    d, ports = tls_relayd(relayd_factory,
                          ["tls cert=%s key=%s" % (cert, key)])
    ctx = client_ctx(tls_ca)
    before = Conn.implicit(ports[0], ctx)
    assert peer_cn(before) == "localhost"
    shutil.copyfile(new_cert, cert)
    shutil.copyfile(new_key, key)
    os.kill(d.proc.pid, sig.SIGHUP)
    d.wait_log(r"certificate reloaded")
    after = Conn.implicit(ports[0], ctx)
    assert peer_cn(after) == "renewed.localhost"
    # The old session still works.
    assert before.cmd("EHLO old.example").code == 250
    assert after.cmd("EHLO new.example").code == 250
    before.close()
    after.close()

    # A broken file: the reload is refused (the config's check reads the
    # certificate), the working certificate stays, the log says why.
    cert.write_text("not a certificate\n")
    os.kill(d.proc.pid, sig.SIGHUP)
    d.wait_log(r"reload: .*live\.pem\" holds no PEM certificate.*no start line")
    d.wait_log(r"reload refused: .* the configuration in force stays")
    again = Conn.implicit(ports[0], ctx)
    assert peer_cn(again) == "renewed.localhost"
    again.close()


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_quit_sends_close_notify(relayd_factory, tls_ca, mode):
    """After QUIT relayd ends TLS properly: its close_notify comes before
    the TCP close, so the client's own TLS shutdown (unwrap) completes
    instead of meeting a bare EOF (a truncation attack, to a client)."""
    d, _ = tls_relayd(relayd_factory, ["" if mode == "starttls" else "tls"],
                      smtp=default_cert(tls_ca))
    ctx = client_ctx(tls_ca)
    c = (Conn.implicit(d.port, ctx) if mode == "implicit"
         else Conn(d.port))
    with c:
        if mode == "starttls":
            c.ehlo()
            c.starttls(ctx)
        c.ehlo()
        assert c.cmd("QUIT").code == 221
        c.sock.settimeout(5)
        plain = c.sock.unwrap()     # raises SSLEOFError without it
        assert plain.recv(1) == b""
    d.assert_alive()
