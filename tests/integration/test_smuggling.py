"""SMTP smuggling: only CRLF.CRLF ends DATA.

Each case sends a message whose body holds a fake end-of-data sequence and,
after it, a second ("smuggled") transaction, then the real CRLF.CRLF and
QUIT, all in one write. A server that takes the fake sequence for the end
would answer the smuggled MAIL/RCPT/DATA and queue a second message from
evil@x.test.
"""
import pytest

# id -> the fake end sequence
FAKE_ENDS = {
    "LF.LF": b"\n.\n",
    "CR.CR": b"\r.\r",
    "CR.LF": b"\r.\n",
    "LF.CR": b"\n.\r",
    "LF.CRLF": b"\n.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.CR": b"\r\n.\r",
    "CRLF.CRCRLF": b"\r\n.\r\r\n",
    "CRCRLF.CRCRLF": b"\r\r\n.\r\r\n",
    "CRLF-NUL.CRLF": b"\r\n\0.\r\n",
    "CRLF.NUL-CRLF": b"\r\n.\0\r\n",
}

SENDER = "sender@a.test"
RCPT = "rcpt@b.test"
BODY = b"Subject: smuggling test\r\n\r\nbody text"
SMUGGLED = (b"MAIL FROM:<evil@x.test>\r\n"
            b"RCPT TO:<victim@y.test>\r\n"
            b"DATA\r\n"
            b"smuggled body\r\n")
REAL_END = b"\r\n.\r\n"


def has_bare_cr_or_lf(data):
    """True if data has a CR not followed by LF or an LF not preceded by
    CR."""
    for i, ch in enumerate(data):
        if ch == 0x0d and data[i + 1:i + 2] != b"\n":
            return True
        if ch == 0x0a and (i == 0 or data[i - 1] != 0x0d):
            return True
    return False


def smuggle(d, fake):
    """Runs one attempt; returns the replies that followed the 354."""
    with d.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<%s>" % SENDER).code == 250
        assert c.cmd("RCPT TO:<%s>" % RCPT).code == 250
        assert c.cmd("DATA").code == 354
        c.send(BODY + fake + SMUGGLED + REAL_END + b"QUIT\r\n")
        rs = c.read_all()
        assert c.buf == b"", "partial reply left: %r" % c.buf
    return rs


def assert_no_smuggled_replies(rs):
    for r in rs:
        assert r.code != 354, "a second DATA was accepted: %r" % (rs,)
        assert not r.text.startswith("250 2.1."), \
            "the smuggled MAIL/RCPT got a 250: %r" % (rs,)


def assert_no_evil(d):
    for f in d.queued_files():
        assert f.mail_from != "evil@x.test", f.raw[:300]
        assert "victim@y.test" not in f.rcpts, f.raw[:300]
    assert "from=<evil@x.test>" not in d.log


def test_cases_are_as_documented():
    """The two NUL cases are the only ones without a bare CR or LF."""
    clean = [k for k, v in FAKE_ENDS.items()
             if not has_bare_cr_or_lf(BODY + v + SMUGGLED + REAL_END)]
    assert clean == ["CRLF-NUL.CRLF", "CRLF.NUL-CRLF"]


@pytest.mark.parametrize("fake", list(FAKE_ENDS.values()),
                         ids=list(FAKE_ENDS))
def test_smuggling_reject(relayd_factory, fake):
    d = relayd_factory(smtp={"bare_lf": "reject"})
    rs = smuggle(d, fake)
    assert_no_smuggled_replies(rs)
    # Exactly one reply to the data, then QUIT's.
    assert len(rs) == 2, rs
    assert rs[1].code == 221, rs
    queued = d.queued()
    if has_bare_cr_or_lf(fake):
        assert rs[0].text.startswith("550 5.6.0"), rs
        assert queued == [], "a refused message was queued"
    else:
        assert rs[0].qid, rs
        assert queued == [rs[0].qid]
        f = d.spool_file(queued[0])
        assert f.mail_from == SENDER and f.rcpts == [RCPT]
        # The whole thing is one message, the fake end included as data
        # (a line starting with "." loses it: dot-unstuffing), and the CRLF
        # before the real end belongs to the message.
        assert f.body == (BODY + fake.replace(b"\r\n.", b"\r\n") +
                          SMUGGLED + b"\r\n")
    assert len(queued) <= 1
    assert_no_evil(d)
    assert d.tmp_files() == []


@pytest.mark.parametrize("fake", list(FAKE_ENDS.values()),
                         ids=list(FAKE_ENDS))
def test_smuggling_normalize(relayd_factory, fake):
    d = relayd_factory(smtp={"bare_lf": "normalize"})
    rs = smuggle(d, fake)
    assert_no_smuggled_replies(rs)
    assert len(rs) == 2, rs
    assert rs[0].qid, rs
    assert rs[1].code == 221, rs
    assert d.queued() == [rs[0].qid]
    f = d.spool_file(rs[0].qid)
    assert f.mail_from == SENDER
    assert f.rcpts == [RCPT]
    assert f.body.startswith(BODY)
    assert b"MAIL FROM:<evil@x.test>\r\n" in f.body
    assert b"RCPT TO:<victim@y.test>\r\n" in f.body
    assert f.body.endswith(b"DATA\r\nsmuggled body\r\n\r\n")
    # Normalized: no bare CR or LF is left in what was stored.
    assert not has_bare_cr_or_lf(f.message), f.message
    assert_no_evil(d)
    assert d.tmp_files() == []


@pytest.mark.parametrize("mode", ["reject", "normalize"])
@pytest.mark.parametrize("fake", list(FAKE_ENDS.values()),
                         ids=list(FAKE_ENDS))
def test_smuggling_byte_by_byte(relayd_factory, fake, mode):
    """The same, with every byte in a write of its own, so that the fake
    and the real end straddle reads."""
    d = relayd_factory(smtp={"bare_lf": mode})
    with d.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<%s>" % SENDER).code == 250
        assert c.cmd("RCPT TO:<%s>" % RCPT).code == 250
        assert c.cmd("DATA").code == 354
        for b in BODY[-4:] + fake + SMUGGLED[:30]:
            c.send(bytes([b]))
        c.send(SMUGGLED[30:])
        for b in REAL_END + b"QUIT\r\n":
            c.send(bytes([b]))
        rs = c.read_all()
    assert_no_smuggled_replies(rs)
    assert len(rs) == 2 and rs[1].code == 221, rs
    refused = mode == "reject" and has_bare_cr_or_lf(fake)
    if refused:
        assert rs[0].text.startswith("550 5.6.0"), rs
        assert d.queued() == []
    else:
        assert rs[0].qid, rs
        assert d.queued() == [rs[0].qid]
        f = d.spool_file(rs[0].qid)
        assert f.mail_from == SENDER and f.rcpts == [RCPT]
        assert b"smuggled body" in f.body
    assert_no_evil(d)
