"""[graph] mode: the MIME form of sendMail, and when relayd chooses it.

The MIME form sends the message itself (base64, Content-Type text/plain).
The envelope decides the recipients (To/Cc keep envelope recipients only,
the others become Bcc), every other byte is kept, so S/MIME signatures
verify at the far end. auto (the default) takes it for signed or
encrypted mail, calendar invitations and replies (In-Reply-To or
References, which the JSON form can't carry) that fit in 4 MB.

Mozilla's S/MIME samples come from ../shared/corpus; those tests skip,
naming the path, where it is absent.
"""
import base64
import subprocess

import pytest

from relaydtest.daemon import need
from relaydtest.env import SRCDIR
from relaydtest.graph import graph_relayd
from relaydtest.smtp import smtp_send

CORPUS = SRCDIR.parent / "shared" / "corpus" / "mozilla-comm-central"
SMIME = ["alice.dsig.SHA256.multipart.eml", "alice.sig.SHA256.opaque.eml"]
TIMEOUT = 15


def send(d, mail_from, rcpts, data):
    smtp_send(d, data, mail_from, rcpts)


def delivered(fake, n=1):
    fake.wait_sent(n, TIMEOUT)
    return fake.sent()


def mime_bytes(rec):
    assert rec["format"] == "mime" and rec["mime"], rec.get("format")
    return base64.b64decode(rec["raw_base64"])


def split(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def smime_sample(name):
    path = CORPUS / name
    if not path.exists():
        pytest.skip("S/MIME sample not found at %s" % path)
    return path.read_bytes()


@pytest.mark.parametrize("name", SMIME)
def test_smime_sample_arrives_intact(relayd_factory, shared_fake_graph,
                                     tmp_path, name):
    """auto: the signed sample goes as MIME; every byte after the header
    is what the client sent, and the signature still verifies."""
    fake = shared_fake_graph
    data = smime_sample(name)
    d = graph_relayd(relayd_factory, fake)
    send(d, "alice@example.com", ["Bob@example.com"], data)
    [rec] = delivered(fake)
    raw = mime_bytes(rec)
    assert split(raw)[1] == split(data)[1]
    assert rec["recipients"]["to"] == ["Bob@example.com"]
    # header fields other than the address ones are kept byte for byte
    for line in split(data)[0].split(b"\r\n"):
        if not line.lower().startswith((b"from:", b"to:", b"cc:")):
            assert line in raw, line
    need("openssl")
    out = tmp_path / "received.eml"
    out.write_bytes(raw)
    r = subprocess.run(["openssl", "smime", "-verify", "-noverify", "-in",
                        str(out), "-out", "/dev/null"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and "Verification successful" in r.stderr, \
        r.stderr


def test_envelope_decides_recipients(relayd_factory, shared_fake_graph):
    """To keeps envelope recipients, Cc too, the rest of the envelope is
    Bcc; header recipients outside the envelope and the old Bcc go."""
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake, mode="mime")
    data = (b"From: Scanner <scan@contoso.test>, other@contoso.test\r\n"
            b"To: Alice <alice@fabrikam.test>, bob@fabrikam.test\r\n"
            b"Cc: carol@fabrikam.test\r\n"
            b"Bcc: hidden@fabrikam.test\r\n"
            b"Subject: envelope rules\r\n\r\nbody\r\n")
    send(d, "scan@contoso.test", ["alice@fabrikam.test",
                                  "carol@fabrikam.test",
                                  "dave@fabrikam.test"], data)
    [rec] = delivered(fake)
    raw = mime_bytes(rec)
    assert rec["recipients"] == {"to": ["alice@fabrikam.test"],
                                 "cc": ["carol@fabrikam.test"],
                                 "bcc": ["dave@fabrikam.test"]}
    assert rec["from"] == "scan@contoso.test"
    for gone in (b"bob@", b"hidden@", b"other@"):
        assert gone not in raw, raw
    assert b"To: Alice <alice@fabrikam.test>\r\n" in raw
    assert split(raw)[1] == b"body\r\n"
    assert rec["headers"]["Content-Type"].startswith("text/plain"), \
        rec["headers"]


CALENDAR = (b"From: boss@contoso.test\r\nTo: team@fabrikam.test\r\n"
            b"Subject: meeting\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/calendar; method=REQUEST; charset=utf-8\r\n"
            b"\r\nBEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n")
PLAIN = (b"From: boss@contoso.test\r\nTo: team@fabrikam.test\r\n"
         b"Subject: plain\r\n\r\nhello\r\n")
# A ticket system's reply: JSON can't carry In-Reply-To or References.
REPLY = (b"From: helpdesk@contoso.test\r\nTo: team@fabrikam.test\r\n"
         b"Subject: Re: [#4711] printer jam\r\n"
         b"Message-ID: <r2@contoso.test>\r\n"
         b"In-Reply-To: <q1@fabrikam.test>\r\n"
         b"References: <q0@fabrikam.test>\r\n <q1@fabrikam.test>\r\n"
         b"\r\nfixed\r\n")
REFS = REPLY.replace(b"In-Reply-To: <q1@fabrikam.test>\r\n", b"")


@pytest.mark.parametrize("mode, data, want", [
    ("auto", CALENDAR, "mime"),
    ("auto", PLAIN, "json"),
    ("mime", PLAIN, "mime"),
    ("json", CALENDAR, "json"),
    ("auto", REPLY, "mime"),
    ("auto", REFS, "mime"),
    ("json", REPLY, "json"),
])
def test_mode_choice(relayd_factory, shared_fake_graph, mode, data, want):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake, mode=mode)
    send(d, "boss@contoso.test", ["team@fabrikam.test"], data)
    [rec] = delivered(fake)
    assert rec["format"] == want, (mode, rec["format"])
    if want == "mime":
        head, body = split(mime_bytes(rec))
        assert body == split(data)[1]
        if data is REPLY:
            # The thread survives: both headers byte for byte.
            assert b"\r\nIn-Reply-To: <q1@fabrikam.test>\r\n" in head
            assert (b"\r\nReferences: <q0@fabrikam.test>\r\n"
                    b" <q1@fabrikam.test>") in head


def test_too_big_for_mime_goes_json(relayd_factory, shared_fake_graph):
    """A message whose base64 would pass 4 MB goes as JSON (here 3.5 MB
    raw: 4.7 MB as MIME base64, 3.5 MB as JSON)."""
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake, mode="mime")
    attachment = base64.encodebytes(b"x" * (5 * 512 * 1024))
    data = (b"From: boss@contoso.test\r\nTo: team@fabrikam.test\r\n"
            b"Subject: big\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            b"--b\r\nContent-Type: application/octet-stream; name=x.bin\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + attachment.replace(b"\n", b"\r\n") + b"--b--\r\n")
    send(d, "boss@contoso.test", ["team@fabrikam.test"], data)
    [rec] = delivered(fake)
    assert rec["format"] == "json"


# ---- broken MIME through the daemon (issue 14): relayd's own Received:
# line comes first in the spool and must hide nothing.

@pytest.mark.parametrize("data, subject, body, sender", [
    # No header at all: the whole text is the body.
    (b"Hello, the scan is ready.\r\nSecond line: here\r\n", "",
     "Hello, the scan is ready.\r\nSecond line: here\r\n", None),
    # A byte-order mark before the first header: From: stays.
    (b"\xef\xbb\xbfFrom: Scanner <scan@contoso.test>\r\n"
     b"To: team@fabrikam.test\r\nSubject: BOM\r\n\r\nbody\r\n", "BOM",
     "body\r\n", "scan@contoso.test"),
    # No blank line before the body.
    (b"From: scan@contoso.test\r\nTo: team@fabrikam.test\r\n"
     b"Subject: no blank\r\nThe text starts here\r\nand goes on\r\n",
     "no blank", "The text starts here\r\nand goes on\r\n",
     "scan@contoso.test"),
])
def test_broken_header_blocks_through_relayd(relayd_factory,
                                             shared_fake_graph, data,
                                             subject, body, sender):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake, mode="json")
    send(d, "scan@contoso.test", ["team@fabrikam.test"], data)
    [rec] = delivered(fake)
    msg = rec["body"]["message"]
    assert msg["subject"] == subject
    assert msg["body"]["content"] == body, msg["body"]
    if sender:
        assert msg["from"]["emailAddress"]["address"] == sender
