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

from conftest import FakeGraph, graph_sections, wait_for

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
