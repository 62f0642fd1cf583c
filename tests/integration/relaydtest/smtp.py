"""SMTP clients for the tests: a raw socket client that sends exact bytes
and reads replies (SMTPConn), and smtp_send(), the one helper that sends a
whole message.

smtp_send() goes through smtplib (a real client: it dot-stuffs, adds the
final CRLF.CRLF, does STARTTLS and AUTH) unless raw=True, where it goes
through SMTPConn and the bytes are sent exactly as given."""
import re
import smtplib
import socket
import time
from email.message import EmailMessage

from relaydtest.env import IO_TIMEOUT

QID_RE = re.compile(r"^[0-9A-F]{16}$")
QUEUED_RE = re.compile(r"^250 2\.0\.0 Ok: queued as ([0-9A-F]{16})$")

SENDER = "sender@contoso.test"          # the envelope sender most tests use
RCPT = "rcpt@fabrikam.test"             # and the recipient


class Reply:
    """One (possibly multi-line) SMTP reply."""

    def __init__(self, lines):
        self.lines = lines                  # text lines without CRLF
        self.code = int(lines[-1][:3])

    @property
    def text(self):
        """The last line, e.g. '250 2.0.0 Ok'."""
        return self.lines[-1]

    @property
    def qid(self):
        m = QUEUED_RE.match(self.text)
        return m.group(1) if m else None

    def __repr__(self):
        return "Reply(%r)" % ("\\n".join(self.lines),)


class SMTPClosed(Exception):
    pass


class SMTPConn:
    """A raw SMTP client: send exact bytes, read replies."""

    def __init__(self, port, host="127.0.0.1", source=None, timeout=IO_TIMEOUT,
                 greeting=True):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.timeout = timeout
        self.buf = b""
        self.eof = False
        self.transcript = []        # ("C"|"S", bytes) for failure messages
        self.greeting = self.reply() if greeting else None

    # -- low level
    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.transcript.append(("C", data))
        self.sock.sendall(data)

    def cmd(self, line, timeout=None):
        """Sends one command line (CRLF added) and returns its reply."""
        self.send(line.encode() + b"\r\n" if isinstance(line, str)
                  else line + b"\r\n")
        return self.reply(timeout)

    def _fill(self, deadline):
        """Reads more bytes; False on EOF. Raises socket.timeout."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("no reply in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.transcript.append(("S", data))
        self.buf += data
        return True

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            if self.eof or not self._fill(deadline):
                raise SMTPClosed("connection closed; unread %r" % self.buf)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def reply(self, timeout=None):
        """Reads one whole reply; raises SMTPClosed or socket.timeout."""
        deadline = time.monotonic() + (timeout or self.timeout)
        lines = []
        while True:
            line = self._line(deadline)
            if not re.match(r"^[2-5]\d\d([ -]|$)", line):
                raise AssertionError("malformed reply line %r" % line)
            lines.append(line)
            if len(line) == 3 or line[3] == " ":
                return Reply(lines)

    def replies(self, n, timeout=None):
        return [self.reply(timeout) for _ in range(n)]

    def read_until(self, code, timeout=None):
        """Replies up to and including the first one with this code (int or
        prefix string such as '250 2.0.0 Ok: queued')."""
        deadline = time.monotonic() + (timeout or self.timeout)
        got = []
        while True:
            r = self.reply(max(deadline - time.monotonic(), 0.001))
            got.append(r)
            if (r.code == code if isinstance(code, int)
                    else r.text.startswith(code)):
                return got

    def read_all(self, timeout=None):
        """Every reply until the server closes (or timeout: raises)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        got = []
        while True:
            try:
                got.append(self.reply(max(deadline - time.monotonic(), 0.001)))
            except SMTPClosed:
                return got

    def wait_closed(self, timeout=None):
        """True once the server closed; leftover bytes must be nothing."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.eof:
            self._fill(deadline)
        return self.buf == b""

    def quiet(self, timeout=0.2):
        """True if the server neither sent anything nor closed meanwhile."""
        if self.buf or self.eof:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536, socket.MSG_PEEK)
        except socket.timeout:
            return True
        except ConnectionResetError:
            return False
        return False

    # -- conveniences
    def ehlo(self, name="client.test"):
        r = self.cmd("EHLO " + name)
        assert r.code == 250, r
        return r

    def send_mail(self, mail_from="sender@a.test", rcpts=("rcpt@b.test",),
                  body=b"Subject: test\r\n\r\nHello.\r\n"):
        """A whole transaction over DATA; returns the final reply. body is
        sent as is (dot-stuffing is the caller's business), followed by
        .CRLF."""
        r = self.cmd("MAIL FROM:<%s>" % mail_from)
        assert r.text == "250 2.1.0 Ok", r
        for rc in rcpts:
            r = self.cmd("RCPT TO:<%s>" % rc)
            assert r.code == 250, r
        r = self.cmd("DATA")
        assert r.code == 354, r
        self.send(body + b".\r\n")
        return self.reply()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


# --------------------------------------------------------------------------
# whole messages

def simple(subject, body="Hello.\n", frm=SENDER, to=RCPT):
    """A small text message (bytes, CRLF line ends) with this Subject."""
    msg = EmailMessage()
    msg["From"] = frm
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(body)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def smtp_send(target, data, mail_from=SENDER, rcpts=(RCPT,), *, conn=None,
              raw=False, host="127.0.0.1", source=None, helo="client.test",
              starttls=None, login=None, timeout=None, expect="queued"):
    """Sends one message in one transaction; by default asserts that it
    was queued and returns its queue id.

    target   a Relayd (its .port is used) or a port number.
    data     the message: bytes with CRLF line ends.
    mail_from, rcpts
             the envelope (MAIL FROM and one RCPT TO each; each must get a
             250: "" is the null sender).
    conn     an open, greeted smtplib.SMTP to send on (and leave open);
             host, source, helo, starttls, login and timeout then do
             nothing.
    raw      True: a raw SMTPConn (source= binds it to a local address)
             that sends data exactly as given, without dot-stuffing,
             followed by .CRLF, then QUIT (which must get 221); else
             smtplib, which dot-stuffs data and ends it with CRLF.CRLF.
    starttls an ssl.SSLContext: STARTTLS with it after EHLO, then EHLO
             again (smtplib only).
    login    (user, password): smtplib's login(), which tries the
             strongest mechanism it knows; it must get 235.
    timeout  seconds per reply: 10 for smtplib, IO_TIMEOUT raw.
    expect   "queued": the reply to DATA must be 250 ... queued as QID;
             the QID is returned. An int: that reply's code must be it;
             None: no check. With an int or None, (code, text) of the
             reply to DATA is returned."""
    port = target if isinstance(target, int) else target.port
    if raw:
        with SMTPConn(port, host=host, source=source,
                      timeout=timeout or IO_TIMEOUT) as c:
            assert c.greeting.code == 220, c.greeting
            c.ehlo(helo)
            r = c.send_mail(mail_from, rcpts, data)
            out = _expected(r.code, r.text[4:], expect)
            assert c.cmd("QUIT").code == 221
            return out
    if conn is not None:
        return _expected(*_transaction(conn, data, mail_from, rcpts), expect)
    with smtplib.SMTP(host, port, timeout=timeout or 10,
                      source_address=(source, 0) if source else None) as s:
        s.ehlo(helo)
        if starttls is not None:
            s.starttls(context=starttls)
            s.ehlo(helo)
        if login is not None:
            assert s.login(*login)[0] == 235
        return _expected(*_transaction(s, data, mail_from, rcpts), expect)


def _expected(code, text, expect):
    """Checks the reply to DATA as smtp_send's expect= says."""
    if expect == "queued":
        m = QUEUED_RE.match("%d %s" % (code, text))
        assert m, "expected a 250 queued reply, got %r" % ((code, text),)
        return m.group(1)
    if expect is not None:
        assert code == expect, (code, text)
    return code, text


def _transaction(s, data, mail_from, rcpts):
    """MAIL, RCPT and DATA on an smtplib.SMTP: (code, text) of DATA."""
    assert s.mail(mail_from)[0] == 250
    for r in rcpts:
        assert s.rcpt(r)[0] == 250
    code, text = s.data(data)
    return code, text.decode()
