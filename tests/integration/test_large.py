"""The draft path: messages whose sendMail body would pass Graph's 4 MB.

relayd creates a draft (POST /users/{id}/messages), attaches parts under
3 MB with one POST each, uploads larger ones through upload sessions
(ordered PUTs of at most 4 MB, no Authorization header), then sends the
draft. The fake Graph hashes what arrives; these tests compare the hashes
with the generated attachments, so every byte is checked.
"""
import base64
import hashlib
import random

import pytest

from relaydtest.graph import graph_sections
from relaydtest.smtp import smtp_send

MiB = 1024 * 1024
MB = 1000 * 1000
TIMEOUT = 120


def blob(n, seed):
    """n reproducible bytes that do not compress."""
    return random.Random(seed).randbytes(n)


def part(data, name, ctype="application/pdf", cid=None, inline=False):
    b64 = base64.encodebytes(data).replace(b"\n", b"\r\n")
    head = ["Content-Type: %s; name=\"%s\"" % (ctype, name),
            "Content-Transfer-Encoding: base64",
            "Content-Disposition: %s; filename=\"%s\""
            % ("inline" if inline else "attachment", name)]
    if cid:
        head.append("Content-ID: <%s>" % cid)
    return ("\r\n".join(head) + "\r\n\r\n").encode() + b64


def message(parts, html=None, subject="Scan", frm="scanner@contoso.test",
            to="boss@contoso.test"):
    """A multipart/mixed (or related, with html) message."""
    kind = "related" if html else "mixed"
    out = [("From: Scanner <%s>\r\nTo: %s\r\nSubject: %s\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/%s; "
            "boundary=\"BOUNDARY\"\r\n\r\n" % (frm, to, subject, kind)
            ).encode()]
    first = (b"Content-Type: text/html; charset=utf-8\r\n\r\n" +
             html.encode() if html else
             b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
             b"Scanned document attached.\r\n")
    for p in [first] + list(parts):
        out.append(b"--BOUNDARY\r\n" + p + b"\r\n")
    out.append(b"--BOUNDARY--\r\n")
    return b"".join(out)


def large_relayd(relayd_factory, fake, queue=None, **graph):
    sections = graph_sections(fake, **graph)
    sections["queue"] = dict({"retry_min": "200ms",
                              "messages_per_minute": "0"}, **(queue or {}))
    return relayd_factory(smtp={"max_message_size": "256M"},
                          sections=sections)


def send(d, data, frm="scanner@contoso.test", rcpts=("boss@contoso.test",)):
    smtp_send(d, data, frm, rcpts, timeout=60)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def drafts_made(fake):
    return [r for r in fake.requests() if r["method"] == "POST" and
            r["path"].endswith("/messages") and r["status"] == 201]


def uploads_ok(fake):
    """Every PUT to an uploadUrl: no Authorization, at most 4 MB, whole
    320 KiB units but for the last of a session."""
    ups = [u for u in fake.uploads() if u["method"] == "PUT"]
    for u in ups:
        assert not u["authorization"], u
        assert u["length"] <= 4 * MiB, u
        if u["end"] + 1 < u["total"]:
            assert u["length"] % (320 * 1024) == 0, u
    return ups


@pytest.mark.parametrize("size", [3 * MiB, 10 * MB, 40 * MB, 150 * MB],
                         ids=["3MiB", "10MB", "40MB", "150MB"])
def test_large_attachment_arrives_whole(relayd_factory, shared_fake_graph,
                                        size):
    fake = shared_fake_graph
    d = large_relayd(relayd_factory, fake)
    pdf = blob(size, size)
    send(d, message([part(pdf, "scan.pdf")]))
    [rec] = fake.wait_sent(1, TIMEOUT)
    assert rec["path"] == "draft", rec["path"]
    assert rec["recipients"]["to"] == ["boss@contoso.test"]
    assert rec["subject"] == "Scan"
    [att] = rec["attachments"]
    assert (att["name"], att["size"], att["via"]) == ("scan.pdf", size,
                                                      "upload")
    assert att["sha256"] == sha(pdf)
    assert att["contentType"] == "application/pdf"
    ups = uploads_ok(fake)
    assert len(ups) == -(-size // (12 * 320 * 1024))
    assert fake.drafts() == [] and fake.sessions() == []
    [line] = [l for l in d.log.splitlines() if " graph sent " in l]
    assert " path=draft" in line and " attachments=1 " in line, line


def test_small_parts_posted_large_uploaded(relayd_factory, shared_fake_graph):
    """Several parts: under 3 MB by POST, the others by upload session,
    in the message's order, each byte for byte."""
    fake = shared_fake_graph
    d = large_relayd(relayd_factory, fake)
    datas = [blob(5 * MB, 1), blob(200 * 1024, 2), blob(12 * MB, 3),
             blob(3 * MB, 4)]
    names = ["a.pdf", "b.png", "c.pdf", "d.pdf"]
    send(d, message([part(x, n) for x, n in zip(datas, names)]))
    [rec] = fake.wait_sent(1, TIMEOUT)
    got = {a["name"]: a for a in rec["attachments"]}
    assert sorted(got) == sorted(names)
    for x, n in zip(datas, names):
        assert got[n]["sha256"] == sha(x), n
        assert got[n]["size"] == len(x), n
        assert got[n]["via"] == ("upload" if len(x) >= 3 * MiB else "post")
    uploads_ok(fake)
    assert fake.drafts() == []


def test_large_inline_image(relayd_factory, shared_fake_graph):
    """An inline image the HTML refers to keeps isInline and contentId
    through the upload session."""
    fake = shared_fake_graph
    d = large_relayd(relayd_factory, fake)
    img = blob(6 * MB, 7)
    html = '<p>Plan:</p><img src="cid:plan@scan">'
    send(d, message([part(img, "plan.png", "image/png", cid="plan@scan",
                          inline=True)], html=html))
    [rec] = fake.wait_sent(1, TIMEOUT)
    [att] = rec["attachments"]
    assert att["isInline"] is True and att["contentId"] == "plan@scan", att
    assert att["sha256"] == sha(img) and att["via"] == "upload"


def test_chunk_failure_resumes(relayd_factory, shared_fake_graph):
    """A PUT that fails (503) and one whose range was stored before the
    connection broke: relayd asks the session where to go on and sends
    each byte once."""
    fake = shared_fake_graph
    fake.faults([{"kind": "upload", "status": 503, "skip": 2},
                 {"kind": "upload", "commit": True, "drop": True,
                  "skip": 4}])
    d = large_relayd(relayd_factory, fake)
    pdf = blob(20 * MB, 11)
    send(d, message([part(pdf, "scan.pdf")]))
    [rec] = fake.wait_sent(1, TIMEOUT)
    [att] = rec["attachments"]
    assert att["sha256"] == sha(pdf)
    ups = [u for u in fake.uploads() if u["method"] == "PUT"]
    taken = [u for u in ups if u["status"] in (200, 201)]
    assert sum(u["length"] for u in taken) <= 20 * MB
    gets = [u for u in fake.uploads() if u["method"] == "GET"]
    assert len(gets) >= 2, fake.uploads()
    assert len(drafts_made(fake)) == 1
    assert fake.drafts() == [] and fake.sessions() == []


@pytest.mark.parametrize("parts", [1, 2], ids=["one", "same-name"])
def test_last_chunk_answer_lost(relayd_factory, shared_fake_graph, parts):
    """The last PUT of a session is stored but its 201 never comes: the
    session is gone then, as an expired one would be. relayd asks the
    draft's attachments instead of uploading the part again; with two
    parts of one name, the first does not count for the second."""
    fake = shared_fake_graph
    fake.faults([{"kind": "upload", "method": "PUT", "commit": True,
                  "drop": True, "skip": 2 * parts - 1}])
    d = large_relayd(relayd_factory, fake)
    pdfs = [blob(5 * MB, 20 + i) for i in range(parts)]
    send(d, message([part(x, "scan.pdf") for x in pdfs]))
    [rec] = fake.wait_sent(1, TIMEOUT)
    assert sorted(a["sha256"] for a in rec["attachments"]) == \
        sorted(sha(x) for x in pdfs)
    made = [r for r in fake.requests()
            if r["path"].endswith("/createUploadSession")]
    assert len(made) == parts, made
    listed = [r for r in fake.requests() if r["method"] == "GET" and
              r["path"].endswith("/attachments?$select=name")]
    assert [r["status"] for r in listed] == [200], listed
    # Stored: answered 200/201, or dropped after the commit (0). libcurl
    # may send the dropped PUT once more itself: the gone session's 404.
    ups = [u for u in fake.uploads() if u["method"] == "PUT"]
    assert sum(u["length"] for u in ups if u["status"] in (0, 200, 201)) \
        == parts * 5 * MB, ups
    assert len(drafts_made(fake)) == 1
    assert fake.drafts() == [] and fake.sessions() == []
    assert "scan.pdf was taken whole" in d.log


def test_expired_session_starts_over(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.faults([{"kind": "upload", "expire_session": True, "skip": 1}])
    d = large_relayd(relayd_factory, fake)
    pdf = blob(9 * MB, 12)
    send(d, message([part(pdf, "scan.pdf")]))
    [rec] = fake.wait_sent(1, TIMEOUT)
    [att] = rec["attachments"]
    assert att["sha256"] == sha(pdf)
    assert fake.sessions() == [] and fake.drafts() == []
    made = [r for r in fake.requests()
            if r["path"].endswith("/createUploadSession")]
    assert [r["status"] for r in made] == [201, 201]
    ups = fake.uploads()
    assert [u["status"] for u in ups if u["status"] not in (200, 201)] \
        == [404, 404], ups


def test_draft_404_for_a_moment(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "method": "POST", "path": "/messages$",
                  "draft_404": 2}])
    d = large_relayd(relayd_factory, fake)
    pdf = blob(5 * MB, 13)
    send(d, message([part(pdf, "scan.pdf")]))
    [rec] = fake.wait_sent(1, TIMEOUT)
    assert rec["attachments"][0]["sha256"] == sha(pdf)
    assert "deferred" not in d.log


def test_failure_deletes_the_draft(relayd_factory, shared_fake_graph):
    """Graph fails the send: the draft and its session go before the
    retry, which makes a new draft and succeeds; none is left over."""
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "path": "/send$", "status": 503,
                  "retry_after": None}])
    d = large_relayd(relayd_factory, fake)
    pdf = blob(5 * MB, 14)
    send(d, message([part(pdf, "scan.pdf")]))
    [rec] = fake.wait_sent(1, TIMEOUT)
    assert rec["attachments"][0]["sha256"] == sha(pdf)
    dels = [r for r in fake.requests() if r["method"] == "DELETE"]
    assert any(r["status"] == 204 for r in dels), dels
    assert fake.drafts() == []
    assert len(drafts_made(fake)) == 2
    assert "graph deferred" in d.log


def test_no_mail_readwrite_explained(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "method": "POST", "path": "/messages$",
                  "status": 403,
                  "code": "ErrorAccessDenied",
                  "message": "Access is denied. Check credentials and try "
                             "again."}])
    d = large_relayd(relayd_factory, fake)
    send(d, message([part(blob(5 * MB, 15), "scan.pdf")]))
    d.wait_log(r"graph failed .*Mail\.ReadWrite", TIMEOUT)
    assert fake.drafts() == []


def test_upload_outage_cancels_session_and_draft(relayd_factory,
                                                  shared_fake_graph):
    """The uploadUrl fails every PUT after the first: relayd gives up on
    this attempt, cancels the session (DELETE uploadUrl), deletes the
    draft, and the later attempt sends the message whole."""
    fake = shared_fake_graph
    fake.faults([{"kind": "upload", "method": "PUT", "status": 503,
                  "skip": 1, "count": -1}])
    d = large_relayd(relayd_factory, fake)
    pdf = blob(12 * MB, 16)
    send(d, message([part(pdf, "scan.pdf")]))
    d.wait_log(r"graph deferred .*upload of scan\.pdf at byte 3932160",
               TIMEOUT)
    assert fake.drafts() == [] and fake.sessions() == []
    ups = fake.uploads()
    assert [u["status"] for u in ups if u["method"] == "DELETE"] == [204]
    dels = [r for r in fake.requests() if r["method"] == "DELETE" and
            r["kind"] == "graph"]
    assert [r["status"] for r in dels] == [204]
    fake.faults([])
    [rec] = fake.wait_sent(1, TIMEOUT)
    assert rec["attachments"][0]["sha256"] == sha(pdf)
    assert len(drafts_made(fake)) == 2
    assert fake.drafts() == []


def test_draft_that_cannot_be_deleted_goes_later(relayd_factory,
                                                 shared_fake_graph):
    """The send fails and so does the DELETE of the draft: the next
    attempt deletes the draft left over before it makes a new one."""
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "path": "/send$", "status": 503,
                  "retry_after": None},
                 {"kind": "graph", "method": "DELETE", "status": 503,
                  "retry_after": None}])
    d = large_relayd(relayd_factory, fake)
    pdf = blob(4 * MB, 17)
    send(d, message([part(pdf, "scan.pdf")]))
    [rec] = fake.wait_sent(1, TIMEOUT)
    assert rec["attachments"][0]["sha256"] == sha(pdf)
    assert "could not be deleted now" in d.log
    d.wait_log(r"draft deleted mailbox=scanner@contoso\.test \(left by an "
               r"earlier attempt\)", 5)
    assert fake.drafts() == []
    dels = [r["status"] for r in fake.requests()
            if r["method"] == "DELETE" and r["kind"] == "graph"]
    assert dels == [503, 204]


def test_send_without_answer(relayd_factory, shared_fake_graph):
    """The send's connection drops before an answer: relayd looks for the
    draft; still there, so it was not sent: delete it and try again. One
    message arrives."""
    fake = shared_fake_graph
    # the first drop, on a kept-alive connection, libcurl answers by
    # sending again by itself; the second one reaches relayd
    fake.faults([{"kind": "graph", "path": "/send$", "drop": True,
                  "count": 2}])
    d = large_relayd(relayd_factory, fake)
    pdf = blob(4 * MB, 18)
    send(d, message([part(pdf, "scan.pdf")]))
    [rec] = fake.wait_sent(1, TIMEOUT)
    assert rec["attachments"][0]["sha256"] == sha(pdf)
    assert fake.stats()["sent"] == 1 and fake.drafts() == []
    assert len(drafts_made(fake)) == 2


def test_json_over_4mb_takes_draft_path(relayd_factory, shared_fake_graph):
    """Under 4 MB as received, over it as JSON (an 8bit CSV attachment
    grows by a third in base64): the draft path all the same."""
    fake = shared_fake_graph
    d = large_relayd(relayd_factory, fake)
    csv = b"".join(b"%08d;scanner;ok;%s\r\n" % (i, b"x" * 40)
                   for i in range(54000))        # 3.35 MB
    p = (b"Content-Type: text/csv; name=\"a.csv\"\r\n"
         b"Content-Transfer-Encoding: 8bit\r\n"
         b"Content-Disposition: attachment; filename=\"a.csv\"\r\n\r\n"
         + csv)
    data = message([p])
    assert len(data) < 4 * MiB
    send(d, data)
    [rec] = fake.wait_sent(1, TIMEOUT)
    assert rec["path"] == "draft"
    [att] = rec["attachments"]
    # csv's own last CRLF stays; the one message() adds before the
    # boundary belongs to the boundary
    assert (att["size"], att["sha256"]) == (len(csv), sha(csv)), att


def test_signed_over_4mb_goes_as_draft(relayd_factory, shared_fake_graph):
    """auto: a signed message takes the MIME form only when it fits in
    4 MB; a larger one is mapped to JSON and takes the draft path (the
    signature becomes an attachment)."""
    fake = shared_fake_graph
    d = large_relayd(relayd_factory, fake, mode="auto")
    pdf = blob(5 * MB, 20)
    inner = message([part(pdf, "scan.pdf")])
    inner = inner[inner.index(b"Content-Type: multipart/mixed"):]
    sig = part(b"not really a signature", "smime.p7s",
               "application/pkcs7-signature")
    data = (b"From: scanner@contoso.test\r\nTo: boss@contoso.test\r\n"
            b"Subject: signed scan\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/signed; protocol=\"application/"
            b"pkcs7-signature\"; micalg=sha-256; boundary=\"SIG\"\r\n\r\n"
            b"--SIG\r\n" + inner + b"\r\n--SIG\r\n" + sig + b"\r\n--SIG--\r\n")
    send(d, data)
    [rec] = fake.wait_sent(1, TIMEOUT)
    assert rec["path"] == "draft" and rec["format"] == "json"
    got = {a["name"]: a for a in rec["attachments"]}
    assert got["scan.pdf"]["sha256"] == sha(pdf)
    assert got["smime.p7s"]["via"] == "post"
