"""The fake Microsoft Graph itself (tests/fakegraph.py), without relayd:
the token endpoint, sendMail's checks, throttling, faults, TLS and the
fixtures that relayd's tests use."""
import base64
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import stat
import threading
import time
import urllib.parse
import uuid

import pytest

from relaydtest.graph import FakeGraph, graph_schema_path, graph_sections
from relaydtest.wait import wait_for

MAILBOX = "scanner@contoso.test"
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def message(**extra):
    m = {"subject": "Test",
         "body": {"contentType": "Text", "content": "Hello."},
         "toRecipients": [{"emailAddress": {"address": "rcpt@fabrikam.test"}}]}
    m.update(extra)
    return {"message": m, "saveToSentItems": False}


@pytest.fixture
def fake(shared_fake_graph):
    """The module's fake (conftest), reset and checked after each test."""
    return shared_fake_graph


def token_request(fake, tenant=None, headers=None, **form):
    body = urllib.parse.urlencode(fake.token_form(**form))
    hdrs = {"Content-Type": "application/x-www-form-urlencoded"}
    hdrs.update(headers or {})
    status, h, data = fake.request(
        "POST", "/%s/oauth2/v2.0/token" % (tenant or fake.tenant), body, hdrs)
    return status, h, json.loads(data)


def assert_graph_error(status, headers, body, want_status, want_code):
    assert status == want_status, (status, body)
    err = body["error"]
    assert err["code"] == want_code, body
    inner = err["innerError"]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$", inner["date"])
    assert inner["request-id"] == headers["request-id"]
    assert inner["client-request-id"] == headers["client-request-id"]
    assert headers["Content-Type"].startswith("application/json")
    return err


# --------------------------------------------------------------------------
# token endpoint

def test_token_success(fake):
    status, h, body = token_request(fake)
    assert status == 200, body
    assert set(body) == {"token_type", "expires_in", "ext_expires_in",
                         "access_token"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == body["ext_expires_in"] == 3599
    assert re.match(UUID_RE, h["request-id"])
    assert "no-store" in h["Cache-Control"]
    status, h, _ = fake.send_mail(MAILBOX, message(),
                                  token=body["access_token"])
    assert status == 202
    assert fake.stats()["token_requests"] == 1


def test_token_http_basic_client_auth(fake):
    cred = "%s:%s" % (urllib.parse.quote_plus(fake.client_id),
                      urllib.parse.quote_plus(fake.secret))
    basic = "Basic " + base64.b64encode(cred.encode()).decode()
    status, _, body = token_request(fake, headers={"Authorization": basic},
                                    client_id=None, client_secret=None)
    assert status == 200, body
    status, _, body = token_request(
        fake, headers={"Authorization": "Basic " + base64.b64encode(
            b"relayd-client:wrong").decode()},
        client_id=None, client_secret=None)
    assert (status, body["error_codes"]) == (401, [7000215])


@pytest.mark.parametrize("tenant,form,config,status,error,code", [
    ("other-tenant", {}, None, 400, "invalid_request", 90002),
    (None, {"client_id": "nobody"}, None, 400, "unauthorized_client", 700016),
    (None, {"client_secret": "wrong"}, None, 401, "invalid_client", 7000215),
    (None, {}, {"relayd-client": {"secret": "s3cret", "expired": True}},
     401, "invalid_client", 7000222),
    (None, {"scope": "https://graph.microsoft.com/.default"}, None,
     400, "invalid_scope", 70011),
    (None, {"client_secret": None}, None, 401, "invalid_client", 7000218),
    (None, {"grant_type": "password"}, None, 400, "unsupported_grant_type",
     70003),
    (None, {"grant_type": None}, None, 400, "invalid_request", 900144),
], ids=["tenant", "client", "secret", "expired", "scope", "no-credential",
        "grant-type", "no-grant-type"])
def test_token_errors(fake, tenant, form, config, status, error, code):
    if config:
        fake.config(clients=config)
    got, h, body = token_request(fake, tenant=tenant, **form)
    assert got == status, body
    assert set(body) == {"error", "error_description", "error_codes",
                         "timestamp", "trace_id", "correlation_id",
                         "error_uri"}
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert re.match(r"^AADSTS%d: .+\r\nTrace ID: %s\r\nCorrelation ID: %s\r\n"
                    r"Timestamp: \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$"
                    % (code, UUID_RE, UUID_RE), body["error_description"],
                    re.S), body["error_description"]
    assert body["trace_id"] in body["error_description"]
    assert body["error_uri"].endswith("/error?code=%d" % code)
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$", body["timestamp"])
    assert fake.stats()["tokens_issued"] == 0


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_assertion(key, cert_pem, client_id, aud, alg="RS256", exp=600):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(
        serialization.Encoding.DER)
    header = {"alg": alg, "typ": "JWT"}
    if alg == "RS256":
        header["x5t"] = _b64url(hashlib.sha1(der).digest())
        pad = padding.PKCS1v15()
    else:
        header["x5t#S256"] = _b64url(hashlib.sha256(der).digest())
        pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    now = int(time.time())
    claims = {"aud": aud, "iss": client_id, "sub": client_id,
              "jti": str(uuid.uuid4()), "nbf": now, "iat": now,
              "exp": now + exp}
    signing_input = "%s.%s" % (_b64url(json.dumps(header).encode()),
                               _b64url(json.dumps(claims).encode()))
    sig = key.sign(signing_input.encode(), pad, hashes.SHA256())
    return signing_input + "." + _b64url(sig)


def test_token_client_assertion(fake, tls_ca):
    from cryptography.hazmat.primitives import serialization
    cert_path, key_path = tls_ca.issue("client-cert", server=False)
    other_cert, other_key_path = tls_ca.issue("other-cert", server=False)
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    other_key = serialization.load_pem_private_key(
        other_key_path.read_bytes(), None)
    pem = cert_path.read_text()
    cid = fake.client_id
    aud = "%s/%s/oauth2/v2.0/token" % (fake.url, fake.tenant)

    def ask(assertion):
        return token_request(
            fake, client_secret=None, client_assertion=assertion,
            client_assertion_type="urn:ietf:params:oauth:client-assertion-"
                                  "type:jwt-bearer")

    # No certificate registered for the client yet.
    status, _, body = ask(make_assertion(key, pem, cid, aud))
    assert (status, body["error"], body["error_codes"]) == (
        401, "invalid_client", [700027])
    fake.config(clients={cid: {"certificates": [pem]}})
    for alg in ("RS256", "PS256"):
        status, _, body = ask(make_assertion(key, pem, cid, aud, alg))
        assert status == 200, body
    # Signed with another key, thumbprint of the registered certificate.
    status, _, body = ask(make_assertion(other_key, pem, cid, aud))
    assert (status, body["error_codes"]) == (401, [700027])
    status, _, body = ask(make_assertion(key, pem, cid, aud + "x"))
    assert (status, body["error_codes"]) == (400, [700023])
    status, _, body = ask(make_assertion(key, pem, cid, aud, exp=-3600))
    assert (status, body["error_codes"]) == (400, [700024])
    status, _, body = ask(make_assertion(key, pem, "someone-else", aud))
    assert (status, body["error_codes"]) == (400, [700021])
    status, _, body = ask("not.a-jwt")
    assert (status, body["error_codes"]) == (400, [50027])
    # A secret no longer works: the client has none.
    status, _, body = token_request(fake)
    assert (status, body["error_codes"]) == (401, [7000215])


# --------------------------------------------------------------------------
# sendMail

def test_sendmail_accepted_and_recorded(fake):
    mailbox = "Scanner.Two@Contoso.test"
    doc = {"Message": {
        "subject": "Report",
        "body": {"contentType": "HTML", "content": "<p>Hi</p>"},
        "from": {"emailAddress": {"address": "scanner.two@contoso.test",
                                  "name": "Scanner"}},
        "toRecipients": [{"emailAddress": {"address": "a@fabrikam.test"}}],
        "ccRecipients": [{"emailAddress": {"address": "b@fabrikam.test",
                                           "name": "B"}}],
        "bccRecipients": [{"emailAddress": {"address": "c@fabrikam.test"}}],
        "replyTo": [{"emailAddress": {"address": "d@fabrikam.test"}}],
        "importance": "Low",
        "internetMessageId": "<1@contoso.test>",
        "internetMessageHeaders": [{"name": "X-Relayd-Queue-Id",
                                    "value": "4F2A91C"},
                                   {"name": "x-mailer", "value": "t"}],
        "attachments": [{"@odata.type": "#microsoft.graph.fileAttachment",
                         "name": "a.txt", "contentType": "text/plain",
                         "contentBytes": base64.b64encode(b"att").decode()}],
    }, "SaveToSentItems": "false"}
    crid = str(uuid.uuid4())
    status, h, body = fake.send_mail(mailbox, doc,
                                     headers={"client-request-id": crid})
    assert status == 202 and body is None
    assert h["Content-Length"] == "0"
    assert h["client-request-id"] == crid
    [rec] = fake.wait_sent(1)
    assert rec["mailbox"] == mailbox            # URL-decoded
    assert rec["format"] == "json"
    assert rec["body"] == doc
    assert rec["request_id"] == h["request-id"]
    assert rec["headers"]["Authorization"].startswith("Bearer ")
    assert rec["time"] == pytest.approx(time.time(), abs=5)
    reqs = [r for r in fake.requests() if r["kind"] == "graph"]
    assert [(r["method"], r["status"], r["mailbox"]) for r in reqs] == [
        ("POST", 202, mailbox)]


def test_sendmail_keep_alive(fake):
    tok = fake.token()
    conn = fake.connection()
    try:
        for i in range(3):
            status, h, _ = fake.send_mail(MAILBOX, message(subject=str(i)),
                                          token=tok, conn=conn)
            assert status == 202
            assert re.match(UUID_RE, h["client-request-id"])
    finally:
        conn.close()
    assert [m["body"]["message"]["subject"] for m in fake.sent()] == [
        "0", "1", "2"]


def need_schema(fake):
    if not fake.stats()["validating"]:
        pytest.skip("the shared Graph schema (../shared/graph/schemas) is "
                    "not here: the fake does not validate bodies")


def test_sendmail_schema_errors(fake):
    need_schema(fake)
    tok = fake.token()
    st, h, body = fake.send_mail(MAILBOX, message(foo=1), token=tok)
    err = assert_graph_error(st, h, body, 400, "RequestBodyRead")
    assert "The property 'foo' does not exist on type " \
           "'Microsoft.OutlookServices.Message'" in err["message"]
    doc = message()
    doc["bogus"] = True
    st, h, body = fake.send_mail(MAILBOX, doc, token=tok)
    err = assert_graph_error(st, h, body, 400, "RequestBodyRead")
    assert "'bogus'" in err["message"]
    st, h, body = fake.send_mail(MAILBOX, message(subject=5), token=tok)
    err = assert_graph_error(st, h, body, 400, "BadRequest")
    assert "message/subject" in err["message"]
    st, h, body = fake.send_mail(MAILBOX, b"{not json", token=tok,
                                 headers={"Content-Type": "application/json"})
    assert_graph_error(st, h, body, 400, "BadRequest")
    st, h, body = fake.send_mail(MAILBOX, message(), token=tok,
                                 headers={"Content-Type": "text/html"})
    assert_graph_error(st, h, body, 415, "UnsupportedMediaType")
    assert fake.stats()["sent"] == 0


def test_sendmail_unauthorized(fake):
    st, h, body = fake.send_mail(MAILBOX, message(), token=" ")
    err = assert_graph_error(st, h, body, 401, "InvalidAuthenticationToken")
    assert err["message"] == "Access token is empty."
    assert h["WWW-Authenticate"].startswith('Bearer realm=""')
    st, h, body = fake.send_mail(MAILBOX, message(), token="eyJforged")
    err = assert_graph_error(st, h, body, 401, "InvalidAuthenticationToken")
    assert err["message"] == "Access token validation failure."
    fake.config(token_lifetime=0.2)
    status, _, tok = token_request(fake)
    assert tok["expires_in"] == 1           # rounded up to whole seconds
    time.sleep(0.25)
    st, h, body = fake.send_mail(MAILBOX, message(),
                                 token=tok["access_token"])
    err = assert_graph_error(st, h, body, 401, "InvalidAuthenticationToken")
    assert err["message"] == "Access token has expired or is not yet valid."


def test_mailbox_concurrency_limit(fake):
    """Five requests at once to one mailbox: the fifth is throttled; another
    mailbox is not affected."""
    fake.config(latency_ms=400)
    tok = fake.token()
    mailboxes = ["busy@contoso.test"] * 5 + ["other@contoso.test"] * 3
    barrier = threading.Barrier(len(mailboxes))
    results = [None] * len(mailboxes)

    def send(i):
        conn = fake.connection()
        try:
            barrier.wait()
            results[i] = fake.send_mail(mailboxes[i], message(), token=tok,
                                        conn=conn)
        finally:
            conn.close()
    threads = [threading.Thread(target=send, args=(i,))
               for i in range(len(mailboxes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    busy = sorted(r[0] for r in results[:5])
    assert busy == [202, 202, 202, 202, 429]
    assert [r[0] for r in results[5:]] == [202, 202, 202]
    [(st, h, body)] = [r for r in results if r[0] == 429]
    err = assert_graph_error(st, h, body, 429, "ApplicationThrottled")
    assert err["message"] == \
        "Application is over its MailboxConcurrency limit."
    assert err["innerError"]["code"] == "429"
    assert err["innerError"]["status"] == "429"
    assert float(h["Retry-After"]) > 0
    stats = fake.stats()
    assert stats["max_concurrency"] == {"busy@contoso.test": 5,
                                        "other@contoso.test": 3}
    assert stats["throttled"] == 1


def test_back_to_back_requests_within_the_limit(fake):
    """Four clients that each send their next request the moment they have
    the last answer stay within the limit: the fake takes a request off the
    mailbox's count before it writes the answer (a guard, not a sure
    detector: the window is narrow)."""
    tok = fake.token()
    body = json.dumps(message()).encode()
    req = ("POST /v1.0/users/tight%%40contoso.test/sendMail HTTP/1.1\r\n"
           "Host: x\r\nAuthorization: Bearer %s\r\n"
           "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
           % (tok, len(body))).encode() + body
    statuses = []

    def client():
        with socket.create_connection(("127.0.0.1", fake.port),
                                      timeout=5) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = b""
            for _ in range(50):
                s.sendall(req)
                while True:         # one answer: head + Content-Length
                    end = buf.find(b"\r\n\r\n")
                    if end >= 0:
                        n = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)",
                                          buf[:end + 2]).group(1))
                        if len(buf) >= end + 4 + n:
                            break
                    got = s.recv(65536)
                    assert got, "the fake closed the connection"
                    buf += got
                statuses.append(int(buf[9:12]))
                buf = buf[end + 4 + n:]
    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [202] * 200
    stats = fake.stats()
    assert stats["max_concurrency"]["tight@contoso.test"] <= 4
    assert stats["sent"] == 200 and stats["inflight"] == {}


def test_request_size_limit(fake):
    tok = fake.token()
    limit = 4 * 1024 * 1024
    doc = message()
    doc["message"]["body"]["content"] = ""
    pad = limit - len(json.dumps(doc))
    doc["message"]["body"]["content"] = "x" * pad
    assert len(json.dumps(doc)) == limit
    conn = fake.connection()
    try:
        st, h, body = fake.send_mail(MAILBOX, doc, token=tok, conn=conn)
        assert st == 202, body
        doc["message"]["body"]["content"] += "x"
        st, h, body = fake.send_mail(MAILBOX, doc, token=tok, conn=conn)
        assert_graph_error(st, h, body, 413, "RequestEntityTooLarge")
        # The body was read: the connection still works.
        st, _, _ = fake.send_mail(MAILBOX, message(), token=tok, conn=conn)
        assert st == 202
    finally:
        conn.close()
    # With Expect: 100-continue the body is refused before it is sent.
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as s:
        s.sendall(("POST /v1.0/users/%s/sendMail HTTP/1.1\r\nHost: x\r\n"
                   "Authorization: Bearer %s\r\nContent-Type: "
                   "application/json\r\nContent-Length: %d\r\n"
                   "Expect: 100-continue\r\n\r\n"
                   % (MAILBOX, tok, limit + 1)).encode())
        data = b""
        while True:
            got = s.recv(65536)
            if not got:
                break
            data += got
    assert data.startswith(b"HTTP/1.1 413 "), data[:200]
    assert b"\r\nConnection: close\r\n" in data
    assert fake.stats()["sent"] == 2


def test_internet_message_headers(fake):
    tok = fake.token()

    def hdrs(*names):
        return message(internetMessageHeaders=[{"name": n, "value": "v"}
                                                for n in names])
    st, h, body = fake.send_mail(MAILBOX, hdrs("X-A", "List-Unsubscribe"),
                                 token=tok)
    err = assert_graph_error(st, h, body, 400, "InvalidInternetMessageHeader")
    assert err["message"] == ("The internet message header name "
                              "'List-Unsubscribe' should start with 'x-' or "
                              "'X-'.")
    st, h, body = fake.send_mail(MAILBOX, hdrs(*["x-h%d" % i
                                                 for i in range(6)]),
                                 token=tok)
    err = assert_graph_error(st, h, body, 400,
                             "InvalidInternetMessageHeaderCollection")
    assert "less than or equal to 5" in err["message"]
    st, h, body = fake.send_mail(MAILBOX, hdrs(), token=tok)
    assert_graph_error(st, h, body, 400,
                       "InvalidInternetMessageHeaderCollection")
    st, _, _ = fake.send_mail(MAILBOX, hdrs(*["x-h%d" % i for i in range(5)]),
                              token=tok)
    assert st == 202


def test_recipients_mailboxes_send_as(fake):
    tok = fake.token()
    st, h, body = fake.send_mail(MAILBOX, message(toRecipients=[]),
                                 token=tok)
    err = assert_graph_error(st, h, body, 400, "ErrorInvalidRecipients")
    assert "contains no recipients" in err["message"]
    bcc_only = message(toRecipients=[], bccRecipients=[
        {"emailAddress": {"address": "hidden@fabrikam.test"}}])
    assert fake.send_mail(MAILBOX, bcc_only, token=tok)[0] == 202

    fake.config(unknown_mailboxes={
        "gone@contoso.test": "ErrorInvalidUser",
        "onprem@contoso.test": "MailboxNotEnabledForRESTAPI"})
    st, h, body = fake.send_mail("Gone@Contoso.test", message(), token=tok)
    err = assert_graph_error(st, h, body, 404, "ErrorInvalidUser")
    assert "Gone@Contoso.test" in err["message"]
    st, h, body = fake.send_mail("onprem@contoso.test", message(), token=tok)
    assert_graph_error(st, h, body, 404, "MailboxNotEnabledForRESTAPI")

    def from_(addr):
        return message(**{"from": {"emailAddress": {"address": addr}}})
    # Default: any From is allowed.
    assert fake.send_mail(MAILBOX, from_("boss@contoso.test"),
                          token=tok)[0] == 202
    fake.config(send_as_deny=[[MAILBOX, "Boss@contoso.test"]])
    st, h, body = fake.send_mail(MAILBOX.upper(), from_("boss@contoso.test"),
                                 token=tok)
    err = assert_graph_error(st, h, body, 403, "ErrorSendAsDenied")
    assert "Cannot submit message." in err["message"]
    assert fake.send_mail(MAILBOX, from_("other@contoso.test"),
                          token=tok)[0] == 202
    fake.config(send_as_deny="strict")
    assert fake.send_mail(MAILBOX, from_("other@contoso.test"),
                          token=tok)[0] == 403
    assert fake.send_mail(MAILBOX, from_(MAILBOX.upper()),
                          token=tok)[0] == 202


def test_sendmail_mime(fake):
    tok = fake.token()
    mime = ("From: scanner@contoso.test\r\nTo: a@fabrikam.test\r\n"
            "Subject: scan\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            "Gr\u00fc\u00dfe " + "x" * 100 + "\r\n")
    b64 = base64.encodebytes(mime.encode()).replace(b"\n", b"\r\n")
    assert b64.count(b"\r\n") > 1                   # wrapped at 76
    st, h, _ = fake.send_mail(MAILBOX, b64, token=tok,
                              headers={"Content-Type": "text/plain"})
    assert st == 202
    [rec] = fake.sent()
    assert rec["format"] == "mime"
    assert rec["body"] == mime
    assert base64.b64decode(rec["raw_base64"]) == mime.encode()
    st, h, body = fake.send_mail(MAILBOX, b"Zm9v!!!", token=tok,
                                 headers={"Content-Type": "text/plain"})
    assert_graph_error(st, h, body, 400,
                       "ErrorMimeContentInvalidBase64String")
    no_rcpt = base64.b64encode(b"Subject: none\r\n\r\nbody\r\n")
    st, h, body = fake.send_mail(MAILBOX, no_rcpt, token=tok,
                                 headers={"Content-Type": "text/plain"})
    assert_graph_error(st, h, body, 400, "ErrorInvalidRecipients")
    bcc = base64.b64encode(b"Bcc: x@fabrikam.test\r\nSubject: b\r\n\r\nb\r\n")
    assert fake.send_mail(MAILBOX, bcc, token=tok,
                          headers={"Content-Type": "text/plain"})[0] == 202


# --------------------------------------------------------------------------
# MIME records, drafts and upload sessions (FACTS.md sections 2 and 3)

MIB = 1024 * 1024
SLICE = 12 * 320 * 1024         # 3,932,160 B: <= 4 MB, a multiple of 320 KiB


def graph_call(fake, method, tail, body=None, token=None, headers=None,
               mailbox=MAILBOX, conn=None):
    """A request to /v1.0/users/{mailbox}{tail}; returns (status, headers,
    parsed JSON or None)."""
    hdrs = {"Authorization": "Bearer %s" % (token or fake.token())}
    hdrs.update(headers or {})
    status, h, data = fake.request(
        method, "/v1.0/users/%s%s" % (urllib.parse.quote(mailbox), tail),
        body, hdrs, conn=conn)
    return status, h, (json.loads(data) if data else None)


def draft_tail(draft_id, rest=""):
    return "/messages/%s%s" % (urllib.parse.quote(draft_id, safe=""), rest)


def new_draft(fake, tok, mailbox=MAILBOX, **extra):
    msg = message(**extra)["message"]
    st, h, body = graph_call(fake, "POST", "/messages", msg, tok,
                             mailbox=mailbox)
    assert st == 201, body
    return body


def new_session(fake, tok, draft_id, size, key="AttachmentItem",
                mailbox=MAILBOX, **item):
    item = dict({"attachmentType": "file", "name": "big.bin",
                 "size": size}, **item)
    st, h, body = graph_call(fake, "POST", draft_tail(
        draft_id, "/attachments/createUploadSession"), {key: item}, tok,
        mailbox=mailbox)
    assert st == 201, body
    return body


def upload_path(url):
    """The path and query of an uploadUrl (the fake is its host)."""
    u = urllib.parse.urlsplit(url)
    return u.path + "?" + u.query


def put_range(fake, url, data, start, total, headers=None, conn=None):
    hdrs = {"Content-Type": "application/octet-stream",
            "Content-Range": "bytes %d-%d/%d" % (start, start + len(data) - 1,
                                                 total)}
    hdrs.update(headers or {})
    status, h, body = fake.request("PUT", upload_path(url), data, hdrs,
                                   conn=conn)
    return status, h, (json.loads(body) if body else None)


def schema_defs():
    """{name: validator} for the shared schema's $defs, or None."""
    import jsonschema
    path = graph_schema_path()
    if not path.is_file():
        return None
    root = json.loads(path.read_text(encoding="utf-8"))

    def validator(name):
        return jsonschema.Draft202012Validator(
            {"$schema": root["$schema"], "$defs": root["$defs"],
             "$ref": "#/$defs/" + name})
    return validator


def assert_schema(name, doc):
    validator = schema_defs()
    if validator is not None:
        errors = list(validator(name).iter_errors(doc))
        assert not errors, (name, [e.message for e in errors], doc)


def test_sendmail_mime_record(fake):
    """A MIME message's record: the exact bytes, recipients from To, Cc and
    Bcc, From, Subject (RFC 2047 decoded) and the MIME attachments."""
    tok = fake.token()
    att = bytes(range(256)) * 40
    mime = (b"From: Scanner <scanner@contoso.test>\r\n"
            b"To: A <a@fabrikam.test>, b@fabrikam.test\r\n"
            b"Cc: c@fabrikam.test\r\nBcc: d@fabrikam.test\r\n"
            b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
            b"--b1\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xfc\xdfe \r\n"
            b"--b1\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=\"scan.bin\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(att).replace(b"\n", b"\r\n") +
            b"--b1--\r\n")
    st, h, _ = fake.send_mail(MAILBOX, base64.encodebytes(mime), token=tok,
                              headers={"Content-Type": "text/plain"})
    assert st == 202
    [rec] = fake.sent()
    assert (rec["format"], rec["mime"], rec["path"]) == ("mime", True,
                                                         "sendMail")
    assert base64.b64decode(rec["raw_base64"]) == mime     # byte for byte
    assert rec["mime_size"] == len(mime)
    assert rec["mime_sha256"] == hashlib.sha256(mime).hexdigest()
    assert rec["recipients"] == {"to": ["a@fabrikam.test", "b@fabrikam.test"],
                                 "cc": ["c@fabrikam.test"],
                                 "bcc": ["d@fabrikam.test"]}
    assert rec["from"] == "scanner@contoso.test"
    assert rec["subject"] == "Gr\u00fc\u00dfe"
    [a] = rec["attachments"]
    assert (a["name"], a["size"], a["sha256"], a["via"]) == (
        "scan.bin", len(att), hashlib.sha256(att).hexdigest(), "mime")
    # The JSON form has the same fields.
    assert fake.send_mail(MAILBOX, message(), token=tok)[0] == 202
    rec = fake.sent()[1]
    assert (rec["mime"], rec["path"], rec["subject"], rec["from"]) == (
        False, "sendMail", "Test", None)
    assert rec["recipients"] == {"to": ["rcpt@fabrikam.test"], "cc": [],
                                 "bcc": []}


def test_sendmail_mime_errors_and_size(fake):
    tok = fake.token()
    mime_hdrs = {"Content-Type": "text/plain"}
    st, h, body = fake.send_mail(MAILBOX, b"Zm9v!!!", token=tok,
                                 headers=mime_hdrs)
    err = assert_graph_error(st, h, body, 400,
                             "ErrorMimeContentInvalidBase64String")
    assert err["message"] == "Invalid base64 string for MIME content."
    st, h, body = fake.send_mail(
        MAILBOX, base64.b64encode(b"Subject: x\r\nX-A: b\r\n\r\nbody\r\n"),
        token=tok, headers=mime_hdrs)
    err = assert_graph_error(st, h, body, 400, "ErrorInvalidRecipients")
    assert err["message"] == ("At least one recipient is not valid., A "
                              "message can't be sent because it contains no "
                              "recipients.")
    # 4 MB counts the base64 body: exactly 4 MiB of it is taken, more 413.
    head = b"To: a@fabrikam.test\r\nSubject: big\r\n\r\n"
    raw = head + b"x" * (3 * MIB - len(head))
    b64 = base64.b64encode(raw)
    assert len(b64) == 4 * MIB
    assert fake.send_mail(MAILBOX, b64, token=tok,
                          headers=mime_hdrs)[0] == 202
    st, h, body = fake.send_mail(MAILBOX, base64.b64encode(raw + b"yyy"),
                                 token=tok, headers=mime_hdrs)
    assert_graph_error(st, h, body, 413, "RequestEntityTooLarge")
    assert fake.stats()["sent"] == 1


def test_post_without_content_length(fake):
    """Graph's front end answers 411 to a POST with no Content-Length and
    no chunked body (message send is where clients meet it)."""
    tok = fake.token()
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as s:
        s.sendall(("POST /v1.0/users/%s/messages/x/send HTTP/1.1\r\n"
                   "Host: x\r\nAuthorization: Bearer %s\r\n\r\n"
                   % (MAILBOX, tok)).encode())
        data = b""
        while b"</HTML>" not in data:
            got = s.recv(65536)
            assert got, data
            data += got
    assert data.startswith(b"HTTP/1.1 411 Length Required\r\n"), data
    assert b"HTTP Error 411. The request must be chunked or have a content " \
           b"length." in data
    assert [r["status"] for r in fake.requests()
            if r["kind"] == "graph"] == [411]


def test_draft_json_send(fake):
    """Draft, a small attachment by POST, send: 201, 201, 202; the message
    is recorded like sendMail's, with path "draft"."""
    tok = fake.token()
    draft = new_draft(fake, tok, ccRecipients=[
        {"emailAddress": {"address": "cc@fabrikam.test"}}],
        internetMessageHeaders=[{"name": "X-Relayd-Queue-Id",
                                 "value": "Q1"}])
    assert draft["isDraft"] is True
    assert draft["subject"] == "Test"
    assert draft["hasAttachments"] is False
    assert re.match(r"^[A-Za-z0-9_=-]+$", draft["id"])
    assert_schema("microsoft.graph.message", draft)
    data = os.urandom(100000)
    st, h, att = graph_call(fake, "POST", draft_tail(draft["id"],
                                                     "/attachments"), {
        "@odata.type": "#microsoft.graph.fileAttachment", "name": "a.pdf",
        "contentType": "application/pdf",
        "contentBytes": base64.b64encode(data).decode()}, tok)
    assert st == 201, att
    assert (att["name"], att["size"], att["isInline"]) == ("a.pdf",
                                                           len(data), False)
    assert_schema("microsoft.graph.fileAttachment", att)
    st, h, got = graph_call(fake, "GET", draft_tail(draft["id"]), None, tok)
    assert st == 200 and got["hasAttachments"] is True
    # The list: metadata, never contentBytes; $select narrows it.
    st, h, got = graph_call(fake, "GET", draft_tail(draft["id"],
                                                    "/attachments"), None, tok)
    assert st == 200, got
    [item] = got["value"]
    assert (item["name"], item["size"], item["id"]) == ("a.pdf", len(data),
                                                        att["id"])
    assert "contentBytes" not in item
    st, h, got = graph_call(fake, "GET", draft_tail(
        draft["id"], "/attachments?$select=name"), None, tok)
    assert st == 200 and got["value"] == [{
        "@odata.type": "#microsoft.graph.fileAttachment", "id": att["id"],
        "name": "a.pdf"}], got
    [d] = fake.drafts()
    assert d["id"] == draft["id"] and d["attachments"][0]["size"] == len(data)
    st, h, body = graph_call(fake, "POST", draft_tail(draft["id"], "/send"),
                             None, tok, headers={"Content-Length": "0"})
    assert (st, body) == (202, None)
    [rec] = fake.sent()
    assert (rec["format"], rec["path"], rec["mime"]) == ("json", "draft",
                                                         False)
    assert rec["body"]["message"]["internetMessageHeaders"] == [
        {"name": "X-Relayd-Queue-Id", "value": "Q1"}]
    assert rec["draft_id"] == draft["id"]
    assert rec["recipients"] == {"to": ["rcpt@fabrikam.test"],
                                 "cc": ["cc@fabrikam.test"], "bcc": []}
    [a] = rec["attachments"]
    assert (a["name"], a["size"], a["sha256"], a["via"]) == (
        "a.pdf", len(data), hashlib.sha256(data).hexdigest(), "post")
    # Sent: the draft is gone.
    for method, tail in (("POST", "/send"), ("GET", ""), ("DELETE", "")):
        st, h, body = graph_call(fake, method, draft_tail(draft["id"], tail),
                                 None, tok)
        err = assert_graph_error(st, h, body, 404, "ErrorItemNotFound")
        assert err["message"] == \
            "The specified object was not found in the store."
    assert fake.drafts() == []


def test_draft_errors(fake):
    need_schema(fake)
    tok = fake.token()
    st, h, body = graph_call(fake, "POST", "/messages", message(), tok)
    err = assert_graph_error(st, h, body, 400, "RequestBodyRead")
    assert "The property 'message' does not exist on type " \
           "'Microsoft.OutlookServices.Message'" in err["message"]
    st, h, body = graph_call(fake, "POST", "/messages",
                             message(isDraft=True)["message"], tok)
    assert_graph_error(st, h, body, 400, "RequestBodyRead")
    st, h, body = graph_call(fake, "POST", "/messages", message(
        internetMessageHeaders=[{"name": "Reply-By", "value": "x"}])[
            "message"], tok)
    assert_graph_error(st, h, body, 400, "InvalidInternetMessageHeader")
    st, h, body = graph_call(fake, "PUT", "/messages", {}, tok)
    assert_graph_error(st, h, body, 405, "Request_BadRequest")
    # No recipients: the draft is fine, sending it is not.
    draft = new_draft(fake, tok, toRecipients=[])
    st, h, body = graph_call(fake, "POST", draft_tail(draft["id"], "/send"),
                             None, tok)
    assert_graph_error(st, h, body, 400, "ErrorInvalidRecipients")
    st, h, body = graph_call(fake, "POST", draft_tail(draft["id"], "/send"),
                             {"saveToSentItems": True}, tok)
    assert_graph_error(st, h, body, 400, "RequestBodyRead")
    # Another mailbox does not see it; DELETE removes it.
    st, h, body = graph_call(fake, "GET", draft_tail(draft["id"]), None, tok,
                             mailbox="other@contoso.test")
    assert_graph_error(st, h, body, 404, "ErrorItemNotFound")
    st, h, body = graph_call(fake, "DELETE", draft_tail(draft["id"]), None,
                             tok)
    assert (st, body) == (204, None)
    assert "Content-Length" not in h
    assert graph_call(fake, "DELETE", draft_tail(draft["id"]), None,
                      tok)[0] == 404
    st, h, body = graph_call(fake, "POST", draft_tail("AAMkADnope=",
                                                      "/bogus"), {}, tok)
    err = assert_graph_error(st, h, body, 400, "BadRequest")
    assert "'bogus'" in err["message"]
    # An attachment POST over 4 MB is refused whole (3 MB as base64 is 4).
    draft = new_draft(fake, tok)
    big = {"@odata.type": "#microsoft.graph.fileAttachment", "name": "b",
           "contentBytes": base64.b64encode(b"x" * (3 * MIB)).decode()}
    st, h, body = graph_call(fake, "POST", draft_tail(draft["id"],
                                                      "/attachments"),
                             big, tok)
    assert_graph_error(st, h, body, 413, "RequestEntityTooLarge")
    st, h, body = graph_call(fake, "POST", draft_tail(draft["id"],
                                                      "/attachments"),
                             {"name": "no-type"}, tok)
    assert st == 400
    assert fake.stats()["sent"] == 0


def test_draft_mime_send(fake):
    tok = fake.token()
    mime = (b"From: scanner@contoso.test\r\nTo: a@fabrikam.test\r\n"
            b"Subject: mime draft\r\n\r\nbody\r\n")
    st, h, draft = graph_call(fake, "POST", "/messages",
                              base64.encodebytes(mime), tok,
                              headers={"Content-Type": "text/plain"})
    assert st == 201, draft
    assert draft["isDraft"] is True and draft["subject"] == "mime draft"
    assert draft["toRecipients"][0]["emailAddress"]["address"] == \
        "a@fabrikam.test"
    assert_schema("microsoft.graph.message", draft)
    st, _, _ = graph_call(fake, "POST", draft_tail(draft["id"], "/send"),
                          None, tok)
    assert st == 202
    [rec] = fake.sent()
    assert (rec["format"], rec["path"], rec["mime"]) == ("mime", "draft",
                                                         True)
    assert base64.b64decode(rec["raw_base64"]) == mime
    assert rec["recipients"]["to"] == ["a@fabrikam.test"]


def test_upload_session(fake):
    """createUploadSession, two PUTs, send: the shapes of FACTS.md section
    3 (and outlook-large-attachments.md), and the records tests use."""
    tok = fake.token()
    draft = new_draft(fake, tok)
    data = os.urandom(3483322)              # the docs' example size
    sess = new_session(fake, tok, draft["id"], len(data), key="attachmentItem",
                       contentType="image/jpeg", isInline=True,
                       contentId="flower")
    assert set(sess) == {"@odata.context", "uploadUrl", "expirationDateTime",
                         "nextExpectedRanges"}
    assert sess["@odata.context"].endswith(
        "/v1.0/$metadata#microsoft.graph.uploadSession")
    assert sess["nextExpectedRanges"] == ["0-"]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$",
                    sess["expirationDateTime"])
    url = sess["uploadUrl"]
    assert url.startswith(fake.url + "/api/v2.0/Users('%s')/Messages('%s')/"
                          "AttachmentSessions('" % (MAILBOX, draft["id"]))
    assert "?authtoken=" in url
    assert_schema("graph.uploadSessionResponse", sess)
    [s] = fake.sessions()
    assert (s["name"], s["size"], s["next"], s["expired"]) == (
        "big.bin", len(data), 0, False)

    st, h, body = put_range(fake, url, data[:2 * MIB], 0, len(data))
    assert st == 200, body
    assert set(body) == {"@odata.context", "ExpirationDateTime",
                         "nextExpectedRanges"}
    assert body["nextExpectedRanges"] == [str(2 * MIB)]
    assert body["ExpirationDateTime"] == sess["expirationDateTime"]
    assert body["@odata.context"].endswith("/AttachmentSessions/$entity")
    assert_schema("graph.uploadSessionResponse", body)
    st, h, body = fake.request("GET", upload_path(url))
    assert st == 200
    assert json.loads(body)["nextExpectedRanges"] == ["%d-" % (2 * MIB)]
    st, h, body = put_range(fake, url, data[2 * MIB:], 2 * MIB, len(data))
    assert (st, body) == (201, None)
    assert h["Content-Length"] == "0"
    assert re.match(r"^%s/api/v2\.0/Users\('%s'\)/Messages\('%s'\)/"
                    r"Attachments\('[A-Za-z0-9_=-]+'\)$"
                    % (re.escape(fake.url), re.escape(MAILBOX),
                       re.escape(draft["id"])), h["Location"])
    assert fake.sessions() == []
    ups = fake.uploads()
    assert [(u["method"], u["status"], u["start"], u["length"],
             u["authorization"]) for u in ups] == [
        ("PUT", 200, 0, 2 * MIB, False), ("GET", 200, None, None, False),
        ("PUT", 201, 2 * MIB, len(data) - 2 * MIB, False)]
    assert fake.stats()["uploaded_bytes"] == len(data)
    assert graph_call(fake, "POST", draft_tail(draft["id"], "/send"), None,
                      tok)[0] == 202
    [rec] = fake.sent()
    [a] = rec["attachments"]
    assert a == {"id": h["Location"].split("Attachments('")[1][:-2],
                 "type": "fileAttachment", "name": "big.bin",
                 "size": len(data), "contentType": "image/jpeg",
                 "isInline": True, "contentId": "flower",
                 "sha256": hashlib.sha256(data).hexdigest(),
                 "via": "upload"}


def test_upload_session_errors(fake):
    tok = fake.token()
    draft = new_draft(fake, tok)
    tail = draft_tail(draft["id"], "/attachments/createUploadSession")

    def create(item):
        return graph_call(fake, "POST", tail, {"AttachmentItem": item}, tok)
    item = {"attachmentType": "file", "name": "x"}
    st, h, body = create(dict(item, size=3 * MIB - 1))
    assert_graph_error(st, h, body, 400,
                       "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize")
    st, h, body = create(dict(item, size=150 * MIB + 1))
    assert_graph_error(st, h, body, 400, "ErrorMessageSizeExceeded")
    fake.config(max_message_size=35 * 1000 * 1000)
    st, h, body = create(dict(item, size=35 * 1000 * 1000))
    err = assert_graph_error(st, h, body, 400, "ErrorMessageSizeExceeded")
    assert err["message"] == ("The message exceeds the maximum supported "
                              "size., Cannot save changes made to an item to "
                              "store.")
    if fake.stats()["validating"]:
        st, h, body = graph_call(fake, "POST", tail, {"Item": item}, tok)
        err = assert_graph_error(st, h, body, 400, "RequestBodyRead")
        assert "operation 'createUploadSession'" in err["message"]
    st, h, body = graph_call(fake, "POST", draft_tail(
        "AAMkADnone=", "/attachments/createUploadSession"),
        {"AttachmentItem": dict(item, size=4 * MIB)}, tok)
    assert_graph_error(st, h, body, 404, "ErrorItemNotFound")

    size = 5 * MIB
    url = new_session(fake, tok, draft["id"], size)["uploadUrl"]
    chunk = b"a" * MIB
    # The Graph token must not go to the uploadUrl.
    st, h, body = put_range(fake, url, chunk, 0, size,
                            {"Authorization": "Bearer " + tok})
    err = assert_graph_error(st, h, body, 401, "InvalidAudience")
    assert err["message"] == "The audience claim value is invalid 'aud'."
    assert fake.uploads()[-1]["authorization"] is True
    bad = url.replace("authtoken=", "authtoken=x")
    st, h, body = put_range(fake, bad, chunk, 0, size)
    assert_graph_error(st, h, body, 401, "InvalidAuthenticationToken")
    st, h, body = put_range(fake, url, chunk, 0, size,
                            {"Content-Range": "bytes 0-/5"})
    assert_graph_error(st, h, body, 400, "BadRequest")
    st, h, body = put_range(fake, url, chunk, 0, size + 1)
    err = assert_graph_error(st, h, body, 400, "BadRequest")
    assert "declares a total of %d" % (size + 1) in err["message"]
    st, h, body = put_range(fake, url, chunk, 0, size,
                            {"Content-Range": "bytes 0-9/%d" % size})
    assert_graph_error(st, h, body, 400, "BadRequest")
    # Out of order: ahead of the next byte, then a range sent again.
    st, h, body = put_range(fake, url, chunk, MIB, size)
    err = assert_graph_error(st, h, body, 416, "invalidRange")
    assert "out of order" in err["message"]
    assert put_range(fake, url, chunk, 0, size)[0] == 200
    st, h, body = put_range(fake, url, chunk, 0, size)
    err = assert_graph_error(st, h, body, 416, "invalidRange")
    assert "overlaps" in err["message"]
    # More than 4 MB in one PUT.
    st, h, body = put_range(fake, url, b"b" * (4 * MIB + 1), MIB, size + MIB)
    assert_graph_error(st, h, body, 413, "RequestEntityTooLarge")
    st, h, body = fake.request("POST", upload_path(url), b"", {})
    assert_graph_error(st, h, json.loads(body), 405, "Request_BadRequest")
    # Cancelled: DELETE 204, then the session is not found.
    st, h, body = fake.request("DELETE", upload_path(url))
    assert (st, body) == (204, b"")
    st, h, body = put_range(fake, url, chunk, MIB, size)
    assert_graph_error(st, h, body, 404, "ErrorItemNotFound")
    # Deleting the draft ends its sessions.
    url = new_session(fake, tok, draft["id"], size)["uploadUrl"]
    assert graph_call(fake, "DELETE", draft_tail(draft["id"]), None,
                      tok)[0] == 204
    assert put_range(fake, url, chunk, 0, size)[0] == 404
    assert fake.sessions() == [] and fake.drafts() == []


def test_upload_session_expiry(fake):
    tok = fake.token()
    fake.config(upload_session_lifetime=0.3)
    draft = new_draft(fake, tok)
    size = 4 * MIB
    url = new_session(fake, tok, draft["id"], size)["uploadUrl"]
    assert put_range(fake, url, b"a" * MIB, 0, size)[0] == 200
    time.sleep(0.35)
    st, h, body = put_range(fake, url, b"a" * MIB, MIB, size)
    assert_graph_error(st, h, body, 404, "ErrorItemNotFound")
    assert fake.sessions()[0]["expired"] is True
    fake.config(expired_session_status=401)
    st, h, body = fake.request("GET", upload_path(url))
    assert_graph_error(st, h, json.loads(body), 401,
                       "InvalidAuthenticationToken")
    # The fault: the second request to the session finds it expired.
    fake.config(upload_session_lifetime=900, expired_session_status=404)
    url = new_session(fake, tok, draft["id"], size)["uploadUrl"]
    fake.faults([{"expire_session": True, "skip": 1}])
    assert put_range(fake, url, b"a" * MIB, 0, size)[0] == 200
    assert put_range(fake, url, b"a" * MIB, MIB, size)[0] == 404
    assert put_range(fake, url, b"a" * MIB, MIB, size)[0] == 404
    assert fake.faults()[0]["fired"] == 1


def upload_all(fake, url, data, slice_size=SLICE, conn=None):
    """PUTs data in slices, each from the session's next expected byte,
    asking the session (GET) after a failure, as a client should."""
    total, pos, tries = len(data), 0, 0
    while pos < total:
        tries += 1
        assert tries < 50, "no progress"
        try:
            st, h, body = put_range(fake, url, data[pos:pos + slice_size],
                                    pos, total, conn=conn)
        except (http.client.HTTPException, ConnectionError):
            st, body = 0, None
            if conn is not None:
                conn.close()
        if st == 200:
            pos = int(body["nextExpectedRanges"][0].split("-")[0])
        elif st == 201:
            return h
        else:
            st, _, body = fake.request("GET", upload_path(url))
            assert st == 200, body
            pos = int(json.loads(body)["nextExpectedRanges"][0]
                      .split("-")[0])
    raise AssertionError("the upload ended without a 201")


def test_upload_faults_resume(fake):
    """A 500, a 429 with Retry-After, and a PUT whose range is stored but
    whose answer is lost: the client resumes from nextExpectedRanges and the
    bytes arrive whole. A rule's "skip" counts the requests that reach it:
    those an earlier rule takes do not."""
    tok = fake.token()
    draft = new_draft(fake, tok)
    data = os.urandom(5 * SLICE + 1000)
    url = new_session(fake, tok, draft["id"], len(data))["uploadUrl"]
    fake.faults([{"kind": "upload", "method": "PUT", "skip": 1,
                  "status": 500},
                 {"kind": "upload", "method": "PUT", "skip": 2,
                  "status": 429, "retry_after": "0.5"},
                 {"kind": "upload", "method": "PUT", "skip": 3,
                  "drop": True, "commit": True}])
    upload_all(fake, url, data)
    assert [r["fired"] for r in fake.faults()] == [1, 1, 1]
    ups = [u for u in fake.uploads() if u["method"] == "PUT"]
    assert [(u["start"] // SLICE, u["status"], u["code"]) for u in ups] == [
        (0, 200, ""), (1, 500, "generalException"), (1, 200, ""),
        (2, 429, "TooManyRequests"), (2, 200, ""), (3, 0, "drop"),
        (4, 200, ""), (5, 201, "")]
    assert graph_call(fake, "POST", draft_tail(draft["id"], "/send"), None,
                      tok)[0] == 202
    assert fake.sent()[0]["attachments"][0]["sha256"] == \
        hashlib.sha256(data).hexdigest()
    # Sent again after a lost answer, a range is refused (416), not taken
    # twice: the client must ask where to go on.
    draft = new_draft(fake, tok)
    url = new_session(fake, tok, draft["id"], len(data))["uploadUrl"]
    fake.faults([{"kind": "upload", "drop": True, "commit": True}])
    with pytest.raises((http.client.RemoteDisconnected,
                        ConnectionResetError)):
        put_range(fake, url, data[:SLICE], 0, len(data))
    assert put_range(fake, url, data[:SLICE], 0, len(data))[0] == 416


def test_draft_404_after_creation(fake):
    """{"draft_404": N}: the draft is made, then answers 404 to the next N
    requests naming it (eventual consistency); sendMail does not use the
    rule up."""
    tok = fake.token()
    fake.faults([{"draft_404": 2}])
    assert fake.send_mail(MAILBOX, message(), token=tok)[0] == 202
    assert fake.faults()[0]["count"] == 1
    draft = new_draft(fake, tok)
    size = 4 * MIB
    for _ in range(2):
        st, h, body = graph_call(fake, "POST", draft_tail(
            draft["id"], "/attachments/createUploadSession"),
            {"AttachmentItem": {"attachmentType": "file", "name": "x",
                                "size": size}}, tok)
        assert_graph_error(st, h, body, 404, "ErrorItemNotFound")
    new_session(fake, tok, draft["id"], size)
    assert fake.faults()[0]["fired"] == 1
    for bad in ({"draft_404": -1}, {"draft_404": 1, "status": 500},
                {"skip": True, "status": 500}, {"kind": "upl", "drop": True}):
        with pytest.raises(AssertionError, match="400"):
            fake.faults([bad])


def test_upload_concurrency_and_throttling(fake):
    """Requests to uploadUrls count against the mailbox's four concurrent
    requests, like Graph's own."""
    tok = fake.token()
    draft = new_draft(fake, tok)
    url = new_session(fake, tok, draft["id"], 4 * MIB)["uploadUrl"]
    fake.config(latency_ms=400)
    barrier = threading.Barrier(5)
    results = []

    def get():
        conn = fake.connection()
        try:
            barrier.wait()
            st, h, body = fake.request("GET", upload_path(url), conn=conn)
            results.append((st, h, json.loads(body)))
        finally:
            conn.close()
    threads = [threading.Thread(target=get) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r[0] for r in results) == [200, 200, 200, 200, 429]
    [throttled] = [r for r in results if r[0] == 429]
    assert_graph_error(*throttled, 429, "ApplicationThrottled")
    assert fake.stats()["max_concurrency"][MAILBOX] == 5


def test_upload_base_url(fake):
    """upload_base_url puts uploadUrls on another host name (the relay
    must use the URL as given, and keep its token to Graph's host)."""
    tok = fake.token()
    other = "http://localhost:%d" % fake.port
    fake.config(upload_base_url=other)
    draft = new_draft(fake, tok)
    sess = new_session(fake, tok, draft["id"], 3 * MIB)
    assert sess["uploadUrl"].startswith(other + "/api/v2.0/")
    conn = http.client.HTTPConnection("localhost", fake.port, timeout=5)
    try:
        st, h, _ = put_range(fake, sess["uploadUrl"], b"z" * (3 * MIB), 0,
                             3 * MIB, conn=conn)
    finally:
        conn.close()
    assert st == 201 and h["Location"].startswith(other + "/api/v2.0/")
    with pytest.raises(AssertionError, match="upload_base_url"):
        fake.config(upload_base_url="ftp://x/")


def vm_hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M).group(1))


def test_upload_150_mb(fake):
    """150 MB in slices of 12 x 320 KiB: the SHA-256 matches, the fake's
    peak RSS grows by less than 50 MB (it hashes, never keeps, the bytes),
    and its records show every slice in order."""
    tok = fake.token()
    total = 150 * MIB
    draft = new_draft(fake, tok)
    url = new_session(fake, tok, draft["id"], total)["uploadUrl"]
    hwm0 = vm_hwm_kib(fake.proc.pid)
    block = os.urandom(SLICE)
    want = hashlib.sha256()
    conn = fake.connection(timeout=30)
    try:
        for i, pos in enumerate(range(0, total, SLICE)):
            data = i.to_bytes(4, "big") + block[4:total - pos]
            want.update(data)
            st, h, body = put_range(fake, url, data, pos, total, conn=conn)
            assert st == (201 if pos + len(data) == total else 200), body
    finally:
        conn.close()
    grew = vm_hwm_kib(fake.proc.pid) - hwm0
    assert grew < 50 * 1024, "the fake's peak RSS grew by %d KiB" % grew
    assert graph_call(fake, "POST", draft_tail(draft["id"], "/send"), None,
                      tok)[0] == 202
    [a] = fake.sent()[0]["attachments"]
    assert (a["size"], a["sha256"]) == (total, want.hexdigest())
    ups = fake.uploads()
    assert [u["start"] for u in ups] == list(range(0, total, SLICE))
    assert all(u["length"] <= 4 * MIB and u["length"] % (320 * 1024) == 0
               for u in ups[:-1])
    assert not any(u["authorization"] for u in ups)
    assert sum(u["length"] for u in ups) == total


# --------------------------------------------------------------------------
# faults

def test_fault_429_retry_after(fake):
    tok = fake.token()
    rules = fake.faults([{"status": 429, "retry_after": "1.5",
                          "mailbox": MAILBOX.upper()}])
    assert rules[0]["count"] == 1
    st, h, body = fake.send_mail("someone@contoso.test", message(), token=tok)
    assert st == 202                    # the rule matches one mailbox
    st, h, body = fake.send_mail(MAILBOX, message(), token=tok)
    err = assert_graph_error(st, h, body, 429, "TooManyRequests")
    assert h["Retry-After"] == "1.5"
    assert err["innerError"]["code"] == "429"
    assert err["innerError"]["status"] == "429"
    assert fake.send_mail(MAILBOX, message(), token=tok)[0] == 202
    [left] = fake.faults()
    assert (left["count"], left["fired"]) == (0, 1)


def test_fault_count_kind_and_path(fake):
    tok = fake.token()
    fake.faults([{"status": 503, "count": 2, "kind": "graph"},
                 {"status": 504, "path": "nomatch"}])
    got = [fake.send_mail(MAILBOX, message(), token=tok)
           for _ in range(3)]
    assert [g[0] for g in got] == [503, 503, 202]
    assert "Retry-After" not in got[0][1]
    assert_graph_error(*got[0], 503, "serviceNotAvailable")
    # A 429 has a Retry-After unless the rule says null.
    fake.faults([{"status": 429}, {"status": 429, "retry_after": None}])
    st, h, body = fake.send_mail(MAILBOX, message(), token=tok)
    assert (st, h["Retry-After"]) == (429, "1")
    st, h, body = fake.send_mail(MAILBOX, message(), token=tok)
    assert st == 429 and "Retry-After" not in h
    fake.faults([{"status": 503, "kind": "token", "retry_after": 2},
                 {"status": 500, "count": -1, "path": "/sendMail$"}])
    status, h, body = token_request(fake)
    assert status == 503
    assert body["error"] == "temporarily_unavailable"
    assert h["Retry-After"] == "2"
    tok = fake.token()
    for _ in range(3):
        st, h, body = fake.send_mail(MAILBOX, message(), token=tok)
        assert_graph_error(st, h, body, 500, "generalException")
    assert fake.faults()[1]["count"] == -1
    fake.faults([])
    assert fake.send_mail(MAILBOX, message(), token=tok)[0] == 202
    with pytest.raises(AssertionError, match="unknown keys"):
        fake.faults([{"statuz": 500}])
    with pytest.raises(AssertionError, match="unknown config key"):
        fake.config(latency=5)


def test_fault_drop_and_reset(fake):
    tok = fake.token()
    fake.faults([{"drop": True}, {"reset": True}])
    for _ in range(2):
        with pytest.raises((http.client.RemoteDisconnected,
                            ConnectionResetError)):
            fake.send_mail(MAILBOX, message(), token=tok)
    assert fake.send_mail(MAILBOX, message(), token=tok)[0] == 202

    def codes():
        return [(r["status"], r["code"]) for r in fake.requests()
                if r["kind"] == "graph"]
    # A dropped connection is booked when its handler ends, which may be
    # after the next request was answered: compare without the order.
    wait_for(lambda: len(codes()) >= 3, 5, "three graph requests recorded")
    assert sorted(codes()) == sorted([(0, "drop"), (0, "reset"), (202, "")])


def test_fault_delay_and_latency(fake):
    tok = fake.token()
    fake.faults([{"delay_ms": 300}])
    t0 = time.monotonic()
    assert fake.send_mail(MAILBOX, message(), token=tok)[0] == 202
    assert time.monotonic() - t0 >= 0.3
    fake.config(latency_ms=200)
    t0 = time.monotonic()
    tok = fake.token()
    assert time.monotonic() - t0 < 0.15         # tokens are not delayed
    t0 = time.monotonic()
    assert fake.send_mail(MAILBOX, message(), token=tok)[0] == 202
    assert time.monotonic() - t0 >= 0.2


def test_fault_expire_token(fake):
    tok = fake.token()
    fake.faults([{"expire_token": True}])
    st, h, body = fake.send_mail(MAILBOX, message(), token=tok)
    err = assert_graph_error(st, h, body, 401, "InvalidAuthenticationToken")
    assert "expired" in err["message"]
    # The token stays expired; a new one works.
    assert fake.send_mail(MAILBOX, message(), token=tok)[0] == 401
    assert fake.send_mail(MAILBOX, message())[0] == 202


def test_fault_hang(fake):
    tok = fake.token()
    fake.faults([{"hang": True, "mailbox": "stuck@contoso.test"}])
    conn = fake.connection(timeout=0.3)
    with pytest.raises(socket.timeout):
        fake.send_mail("stuck@contoso.test", message(), token=tok, conn=conn)
    assert fake.stats()["inflight"] == {"stuck@contoso.test": 1}
    conn.close()
    wait_for(lambda: fake.stats()["inflight"] == {}, 5,
             "the hung request to end after the client left")
    assert fake.send_mail("stuck@contoso.test", message(), token=tok)[0] \
        == 202


def test_fault_probability(fake):
    """"p": a matching rule fires for that share of requests; one that does
    not fire is skipped (the next rules are tried) and keeps its count."""
    tok = fake.token()
    fake.faults([{"status": 503, "p": 0, "count": -1},
                 {"status": 429, "p": 0.5, "count": -1, "retry_after": None},
                 {"status": 500, "p": 1, "count": 1}])
    conn = fake.connection()
    try:
        got = [fake.send_mail(MAILBOX, message(), token=tok, conn=conn)[0]
               for _ in range(300)]
    finally:
        conn.close()
    assert got.count(503) == 0
    assert got.count(500) == 1          # the first request the 429 passed
    # Binomial(299 or 300, 0.5): 150 +- 8.7; this range is +-5.7 sigma.
    assert 100 <= got.count(429) <= 200, got.count(429)
    assert got.count(202) == 300 - 1 - got.count(429)
    never, half, once = fake.faults()
    assert (never["fired"], never["count"], never["p"]) == (0, -1, 0)
    assert (half["fired"], half["p"]) == (got.count(429), 0.5)
    assert (once["fired"], once["count"]) == (1, 0)
    for bad in (1.5, -0.1, "0.5", True, None):
        with pytest.raises(AssertionError, match="fault p must be"):
            fake.faults([{"status": 503, "p": bad}])


def test_stats_and_reset(fake):
    need_schema(fake)
    tok = fake.token()
    fake.send_mail(MAILBOX, message(), token=tok)
    fake.send_mail(MAILBOX, message(foo=1), token=tok)
    s = fake.stats()
    assert s["sent"] == 1 and s["token_requests"] == 1
    assert s["status_counts"] == {"200": 1, "202": 1, "400": 1}
    assert s["code_counts"] == {"RequestBodyRead": 1}
    fake.config(latency_ms=5)
    fake.reset()
    s = fake.stats()
    assert (s["sent"], s["requests"], s["status_counts"]) == (0, 0, {})
    assert fake.config()["latency_ms"] == 0
    assert fake.sent() == [] and fake.requests() == []
    assert fake.send_mail(MAILBOX, message(), token=tok)[0] == 202
    fake.reset(tokens=True)
    assert fake.send_mail(MAILBOX, message(), token=tok)[0] == 401


# --------------------------------------------------------------------------
# the fixtures, TLS

def test_fixture_and_graph_sections(fake_graph):
    sec = graph_sections(fake_graph)
    g = sec["graph"]
    assert set(g) == {"tenant", "client_id", "client_secret_file",
                      "login_url", "graph_url"}
    assert g["login_url"] == g["graph_url"] == fake_graph.url
    assert fake_graph.url.startswith("http://127.0.0.1:")
    assert stat.S_IMODE(os.stat(g["client_secret_file"]).st_mode) == 0o600
    with open(g["client_secret_file"]) as f:
        assert f.read() == "s3cret"
    g2 = fake_graph.graph_sections(secret="wrong", login_url=None,
                                   tenant="other")["graph"]
    assert "login_url" not in g2 and g2["tenant"] == "other"
    with open(g2["client_secret_file"]) as f:
        assert f.read() == "wrong"
    assert fake_graph.send_mail(MAILBOX, message())[0] == 202
    assert fake_graph.wait_sent(1, timeout=2)[0]["mailbox"] == MAILBOX


def test_tls(fake_graph_tls, tls_ca):
    fake = fake_graph_tls
    assert fake.url.startswith("https://127.0.0.1:")
    g = graph_sections(fake)["graph"]
    assert g["ca_file"] == str(tls_ca.ca_file)
    assert fake.send_mail(MAILBOX, message())[0] == 202
    # By name too: the certificate has localhost as well as the IPs.
    ctx = ssl.create_default_context(cafile=str(tls_ca.ca_file))
    c = http.client.HTTPSConnection("localhost", fake.port, timeout=5,
                                    context=ctx)
    c.request("GET", "/_fake/stats")
    assert c.getresponse().status == 200
    c.close()
    # Without the test CA the certificate is not trusted.
    with pytest.raises(ssl.SSLCertVerificationError):
        fake.request("GET", "/_fake/stats",
                     conn=fake.connection(
                         context=ssl.create_default_context()))
    assert fake.stats()["sent"] == 1


def test_traceback_filter(tmp_path):
    """The fixtures fail a test on the fake's tracebacks, but not on those
    of a client that went away."""
    f = FakeGraph(tmp_path, name="fg")
    f.log_path.write_text(
        "fakegraph: listening\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "    sock.recv()\n"
        "ConnectionResetError: [Errno 104] Connection reset by peer\n"
        "Traceback (most recent call last):\n"
        '  File "fakegraph.py", line 9, in _serve\n'
        "    st.inflight[mb] -= 1\n"
        "KeyError: 'a@b.c'\n"
        "fakegraph: stopped\n")
    [tb] = f.tracebacks()
    assert tb.endswith("KeyError: 'a@b.c'")
    assert f.tracebacks(since=len(f.log) - 20) == []
