#!/usr/bin/python3
"""
fakegraph: a fake Microsoft Graph (mail) and Entra ID token service for
relayd's integration tests and benchmarks.

One port serves
    POST /{tenant}/oauth2/v2.0/token        client credentials (secret, HTTP
                                            Basic, or a certificate's JWT
                                            client assertion)
    POST /v1.0/users/{mailbox}/sendMail     JSON or base64 MIME (text/plain)
and the large-message path (FACTS.md section 3):
    POST   /v1.0/users/{mb}/messages        create a draft (JSON, or base64
                                            MIME as text/plain) -> 201
    GET    /v1.0/users/{mb}/messages/{id}   the draft -> 200
    DELETE /v1.0/users/{mb}/messages/{id}   -> 204
    POST   .../messages/{id}/attachments    fileAttachment JSON -> 201
    GET    .../messages/{id}/attachments    the draft's attachments -> 200
                                            (no contentBytes; $select)
    POST   .../messages/{id}/attachments/createUploadSession
                                            {"AttachmentItem": {...}} -> 201
    POST   .../messages/{id}/send           Content-Length: 0 -> 202
    PUT    {uploadUrl}                      a byte range -> 200, last 201
    GET    {uploadUrl}                      session status -> 200
    DELETE {uploadUrl}                      cancel -> 204
so relayd's login_url and graph_url can both be this server's base URL.
The uploadUrl lies on this server (or on upload_base_url), at
/api/v2.0/Users('{mb}')/Messages('{id}')/AttachmentSessions('{sid}')
?authtoken=..., as Outlook's does; it refuses an Authorization header (401
InvalidAudience). A POST or PUT without Content-Length (and not chunked)
gets 411, as Graph's front end answers it. Requests to an uploadUrl count
against the mailbox's concurrency limit like Graph's own. Config keys
beyond the sendMail ones: max_message_size (bytes a draft and its
attachments may reach, 400 ErrorMessageSizeExceeded past it; null: no
limit but 150 MB per upload session), upload_session_lifetime (s, 900),
upload_base_url (null: this server), expired_session_status (404 or 401).

A control API without authentication:
    GET  /_fake/sent       accepted messages (below)
    GET  /_fake/requests   every request: method, path, status, code, kind,
                           mailbox, ...; a token request's "token": its
                           scope and the client assertion's header and
                           claims; an uploadUrl request's "upload": session,
                           content_range, start, end, total, length,
                           authorization (whether one was sent)
    GET  /_fake/drafts     drafts not sent or deleted yet
    GET  /_fake/sessions   upload sessions still open
    GET  /_fake/stats      counters, highest concurrency seen per mailbox
    GET  /_fake/config     the behaviour now in force
    POST /_fake/config     change it (JSON object of the keys to change)
    POST /_fake/reset      forget records, counters, faults, drafts and
                           upload sessions; back to the start-up config
                           ({"tokens": true} also revokes every token)
    GET  /_fake/faults     fault rules and how often each may still fire
    POST /_fake/faults     replace the fault rules (JSON list)

A sent record: mailbox, format ("json" | "mime"), path ("sendMail" |
"draft"), mime (bool), body (the sendMail JSON; a JSON draft as
{"message": draft}; the decoded MIME text), headers (of the sendMail or
send request), recipients {"to", "cc", "bcc"} (address lists; from the
MIME headers for MIME), from, subject, attachments [{id, name, size,
contentType, isInline, contentId, sha256, via ("inline" | "post" |
"upload" | "mime")}], time, request_id, client_request_id; MIME also
raw_base64 (decodes to the exact MIME bytes), mime_size, mime_sha256; a
draft also draft_id, draft_created. Uploaded bytes are hashed as they
come, never kept.

Fault rules (POST /_fake/faults, a JSON list) are tried in order; the first
that matches a request and has firings left is used up once ("count",
default 1, -1 = forever). Match keys, all optional: "kind" ("token",
"graph" or "upload": a request to an uploadUrl), "path" (regex searched in
the path, without the query), "mailbox" (case-insensitive), "method",
"skip" (N: let the first N requests that match go by, e.g. fail the third
PUT with "skip": 2; requests an earlier rule takes do not reach it), "p"
(0..1: the chance that the rule fires for a request it matches; when it
does not, the request goes on to the next rules and the rule's count is
not used up). Actions: {"status": N,
"code", "message", "retry_after", "headers", "aadsts"} answers with that
error (Graph or Entra shaped by kind; a 429 gets Retry-After =
throttle_retry_after unless "retry_after" is given, null for none);
{"drop": true} closes without an answer (FIN), {"reset": true} with an
RST; {"delay_ms": N} waits, then goes on normally (or with the rule's other
action); {"expire_token": true} expires the token presented (401, and it
stays expired); {"hang": true} never answers until the client leaves or
the server stops; {"expire_session": true} (uploadUrl requests only)
expires that upload session, which then answers as an expired one does
(expired_session_status); {"draft_404": N} (draft creation only) creates
the draft, which then answers 404 ErrorItemNotFound to the next N
requests naming it (eventual consistency). {"commit": true} with an
action on an uploadUrl PUT stores the range first, then carries out the
action: the bytes were taken but the answer is lost or an error, and the
client must ask (GET uploadUrl) where to go on (a PUT refused before its
range is stored uses such a rule up without the action).

Concurrency (what test_cluster.py judges several relayd instances by):
the requests in flight to a mailbox are counted across all clients, so
several relays sharing one fake are counted together. Above
max_concurrency (--max-concurrency, 4; 0: no limit) the fake answers 429
{"error": {"code": "ApplicationThrottled", "message": "Application is over
its MailboxConcurrency limit."}} (FACTS.md section 4) with Retry-After
throttle_retry_after. /_fake/stats: "max_concurrency" is the highest
count seen per mailbox (the refused request included), "inflight" the
count now, "throttled" how many got that 429. latency_ms (--latency-ms)
makes every Graph answer that slow, so that concurrency builds up.

Behaviour follows shared/graph/FACTS.md (sections 1 to 5 and 7); choices
the sources do not settle are said where they are made (Handler._upload
and friends). Not modelled: /me, $batch, PATCH of drafts, item and
reference attachments in upload sessions, rate limits other than the
per-mailbox concurrency limit (the 150 MB / 5 min upload budget is not).

Start-up: parses arguments, compiles the JSON Schema validators once, binds,
writes the port to --port-file (atomically) and serves until SIGTERM or
SIGINT. Connection threads are daemons: a hung request never delays exit.
A Python traceback on stderr means a bug in this file; client disconnects
and failed TLS handshakes are not reported as tracebacks.

Needs Debian's /usr/bin/python3 (python3-jsonschema; python3-cryptography
only for client assertions).
"""
import argparse
import base64
import binascii
import email
import email.header
import email.parser
import email.policy
import email.utils
import hashlib
import json
import math
import os
import random
import re
import secrets
import select
import signal
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import traceback
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, parse_qsl, quote, unquote, unquote_plus, \
    urlsplit

import jsonschema
import jsonschema.exceptions

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA_REL = os.path.join("shared", "graph", "schemas",
                          "graph-mail-v1.0.schema.json")


def default_schema():
    """$RELAYD_GRAPH_SCHEMA, else ../shared/... beside the repository, else
    the first shared/... found in a directory above it (a distcheck tree
    lives inside the checkout)."""
    env = os.environ.get("RELAYD_GRAPH_SCHEMA")
    if env:
        return env
    first = os.path.join(REPO_ROOT, "..", SCHEMA_REL)
    d = os.path.dirname(REPO_ROOT)
    while True:
        cand = os.path.join(d, SCHEMA_REL)
        if os.path.exists(cand):
            return cand
        parent = os.path.dirname(d)
        if parent == d:
            return first
        d = parent


MAX_REQUEST_BYTES = 4 * 1024 * 1024     # Graph's per-request limit
MAX_DISCARD_BYTES = 64 * 1024 * 1024    # beyond this, answer and close
MAX_HEADERS_PER_MESSAGE = 5             # internetMessageHeaders
MIN_UPLOAD_SIZE = 3 * 1024 * 1024       # smaller: one POST .../attachments
MAX_UPLOAD_SIZE = 150 * 1024 * 1024     # an upload session's attachment
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_SKEW_S = 300                  # clock skew allowed on nbf/exp
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"

TOKEN_RE = re.compile(r"^/([^/]+)/oauth2/v2\.0/token$")
USERS_RE = re.compile(r"^/v1\.0/users/([^/]+)(/.*)?$", re.I)
# What follows /v1.0/users/{mailbox}: route name, regex (group 1: the
# message id). Segments are case-insensitive; actions may carry their
# namespace (microsoft.graph.send), as OData allows.
GRAPH_ROUTES = [
    ("sendMail", re.compile(r"^/(?:microsoft\.graph\.)?sendmail$", re.I)),
    ("messages", re.compile(r"^/messages$", re.I)),
    ("message", re.compile(r"^/messages/([^/]+)$", re.I)),
    ("attachments", re.compile(r"^/messages/([^/]+)/attachments$", re.I)),
    ("createUploadSession", re.compile(
        r"^/messages/([^/]+)/attachments/(?:microsoft\.graph\.)?"
        r"createuploadsession$", re.I)),
    ("send", re.compile(r"^/messages/([^/]+)/(?:microsoft\.graph\.)?send$",
                        re.I)),
]
# An uploadUrl, in Outlook's shape (outlook-large-attachments.md).
UPLOAD_RE = re.compile(r"^/api/v2\.0/Users\('([^'/]+)'\)"
                       r"/Messages\('([^'/]+)'\)"
                       r"/AttachmentSessions\('([^'/]+)'\)$")
CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$", re.I)

MAILBOX_ERRORS = {
    "ErrorInvalidUser": "The requested user '%s' is invalid.",
    "MailboxNotEnabledForRESTAPI":
        "The mailbox is either inactive, soft-deleted, or is hosted "
        "on-premise.",
    "ResourceNotFound": "Resource could not be discovered.",
}

# Default body for a fault rule that gives only a status.
FAULT_DEFAULTS = {
    400: ("BadRequest", "Bad request."),
    401: ("InvalidAuthenticationToken", "Access token validation failure."),
    403: ("ErrorAccessDenied",
          "Access is denied. Check credentials and try again."),
    404: ("ErrorInvalidUser", "The requested user is invalid."),
    409: ("ErrorIrresolvableConflict", "Conflict."),
    413: ("RequestEntityTooLarge",
          "The request size exceeds the maximum limit."),
    429: ("TooManyRequests", "Please retry again later."),
    500: ("generalException", "An unspecified error has occurred."),
    502: ("badGateway", "Bad gateway."),
    503: ("serviceNotAvailable",
          "The service is temporarily unavailable. Try again later."),
    504: ("gatewayTimeout", "The gateway did not receive a response in "
          "time."),
}

REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 202: "Accepted",
    204: "No Content", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 411: "Length Required",
    413: "Request Entity Too Large", 415: "Unsupported Media Type",
    416: "Requested Range Not Satisfiable",
    429: "Too Many Requests", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}

# What Graph's front end (HTTP.sys) answers a POST without Content-Length.
LENGTH_REQUIRED_PAGE = (
    b'<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN""http://www.w3.org/TR'
    b'/html4/strict.dtd">\r\n<HTML><HEAD><TITLE>Length Required</TITLE>\r\n'
    b'<META HTTP-EQUIV="Content-Type" Content="text/html; charset=us-ascii">'
    b'</HEAD>\r\n<BODY><h2>Length Required</h2>\r\n<hr><p>HTTP Error 411. '
    b'The request must be chunked or have a content length.</p>\r\n</BODY>'
    b'</HTML>\r\n')
DRAFTS_FOLDER_ID = "AQMkADAwATM0MDAAMS1iNTcwLWI2NTEtMDACLTAwCgAuAAADDrafts="
NO_JSON = object()      # _parse_json: the body was not JSON (answered)

# Exceptions that only mean the client went away or spoke bad TLS.
QUIET_ERRORS = (ConnectionError, TimeoutError, ssl.SSLError,
                socket.timeout, EOFError)


def utc_now():
    return datetime.now(timezone.utc)


def graph_date():
    """innerError.date, as Graph writes it: 2020-08-18T12:51:51."""
    return utc_now().strftime("%Y-%m-%dT%H:%M:%S")


def aad_timestamp():
    return utc_now().strftime("%Y-%m-%d %H:%M:%SZ")


def b64url_decode(s):
    s = s.encode("ascii") if isinstance(s, str) else s
    return base64.urlsafe_b64decode(s + b"=" * (-len(s) % 4))


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def outlook_id():
    """An id shaped like Outlook's REST ids (base64, ends in '=')."""
    return "AAMkAD" + secrets.token_urlsafe(30) + "AAA="


def graph_datetime(t):
    """A message's dates: 2019-09-24T23:27:43Z."""
    return datetime.fromtimestamp(t, timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def session_datetime(t):
    """expirationDateTime as Outlook writes it: 2019-09-25T01:09:30.7671707Z
    (seven fractional digits)."""
    d = datetime.fromtimestamp(t, timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + "%07dZ" % (d.microsecond * 10)


class BadConfig(ValueError):
    pass


# --------------------------------------------------------------------------
# schema

# Request bodies checked against the shared schema: request -> (the $def,
# what Graph names in a RequestBodyRead message for an unknown top-level
# name: ("operation", action) or ("type", entity type)).
SCHEMA_DEFS = {
    "sendMail": ("graph.sendMailRequest", ("operation", "sendMail")),
    "draft": ("graph.createDraftRequest",
              ("type", "Microsoft.OutlookServices.Message")),
    "attachment": ("relay.attachmentForSend",
                   ("type", "Microsoft.OutlookServices.FileAttachment")),
    "createUploadSession": ("graph.createUploadSessionRequest",
                            ("operation", "createUploadSession")),
}


def load_validators(path):
    """Draft 2020-12 validators for each of SCHEMA_DEFS, built once."""
    with open(path, encoding="utf-8") as f:
        root = json.load(f)
    cls = jsonschema.Draft202012Validator
    out = {}
    for name, (ref, _) in SCHEMA_DEFS.items():
        schema = {"$schema": root.get("$schema"), "$defs": root["$defs"],
                  "$ref": "#/$defs/" + ref}
        cls.check_schema(schema)
        out[name] = cls(schema)
    return out


def describe_schema_error(doc, err, top=("operation", "sendMail")):
    """(code, message) for a body the schema rejects. Unknown property names
    get Graph's RequestBodyRead wording (top says what the body's top level
    is: an action's parameters or an entity type); anything else names the
    schema error and where it happened."""
    where = "/".join(str(p) for p in err.absolute_path) or "(top)"
    if err.validator == "additionalProperties" and isinstance(err.instance,
                                                              dict):
        known = set(err.schema.get("properties", {}))
        pats = [re.compile(p) for p in err.schema.get("patternProperties",
                                                      {})]
        extra = [k for k in err.instance
                 if k not in known and not any(p.search(k) for p in pats)]
        name = extra[0] if extra else "?"
        owner = ("Microsoft.OutlookServices.Message"
                 if list(err.absolute_path)[-1:] in (["message"],
                                                    ["Message"])
                 else "the type at '%s'" % where)
        if not err.absolute_path and top[0] == "operation":
            return ("RequestBodyRead",
                    "The parameter '%s' in the request payload is not a "
                    "valid parameter for the operation '%s'. "
                    "[schema: %s at %s]" % (name, top[1], err.message,
                                            where))
        if not err.absolute_path:
            owner = top[1]
        return ("RequestBodyRead",
                "The property '%s' does not exist on type '%s'. Make sure "
                "to only use property names that are defined by the type "
                "or mark the type as open type. [schema: %s at %s]"
                % (name, owner, err.message, where))
    return ("BadRequest", "Invalid request body: %s at %s [schema rule %s]"
            % (err.message, where, err.validator))


# --------------------------------------------------------------------------
# what a message says: recipients, From, Subject, attachments

def _field(obj, *keys):
    """obj[k1][k2]..., or None where a level is missing or not an object."""
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


def _addresses(recipients):
    if not isinstance(recipients, list):
        return []
    return [a for a in (_field(r, "emailAddress", "address")
                        for r in recipients) if isinstance(a, str) and a]


def json_summary(msg):
    """Recipients (address lists), From and Subject of a message resource."""
    return {"recipients": {"to": _addresses(msg.get("toRecipients")),
                           "cc": _addresses(msg.get("ccRecipients")),
                           "bcc": _addresses(msg.get("bccRecipients"))},
            "from": _field(msg, "from", "emailAddress", "address"),
            "subject": msg.get("subject")}


def attachment_record(att, via, new_id=False):
    """What the records keep of an attachment resource: its metadata, the
    size and SHA-256 of contentBytes (never the bytes)."""
    data = None
    if isinstance(att.get("contentBytes"), str):
        try:
            data = base64.b64decode(att["contentBytes"], validate=True)
        except (binascii.Error, ValueError):
            data = None
    kind = str(att.get("@odata.type") or "#microsoft.graph.fileAttachment")
    return {"id": outlook_id() if new_id else None,
            "type": kind.rsplit(".", 1)[-1],
            "name": att.get("name"), "contentType": att.get("contentType"),
            "size": len(data) if data is not None else att.get("size"),
            "isInline": bool(att.get("isInline")),
            "contentId": att.get("contentId"),
            "sha256": hashlib.sha256(data).hexdigest()
            if data is not None else None,
            "via": via}


def json_attachments(msg, via, new_id=False):
    return [attachment_record(a, via, new_id)
            for a in msg.get("attachments") or () if isinstance(a, dict)]


def decode_subject(raw):
    if raw is None:
        return None
    try:
        return str(email.header.make_header(email.header.decode_header(
            str(raw))))
    except (LookupError, ValueError, UnicodeError):
        return str(raw)


def mime_summary(mime):
    """Recipients (from To, Cc and Bcc), From and Subject of an RFC 5322
    message; None if it has no header at all."""
    head = mime.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    msg = email.parser.BytesHeaderParser().parsebytes(head + b"\n\n")
    if not mime.strip() or not msg.keys():
        return None

    def addrs(name):
        fields = [str(v) for v in msg.get_all(name) or ()]
        return [a for _, a in email.utils.getaddresses(fields) if "@" in a]
    froms = addrs("From")
    return {"recipients": {"to": addrs("To"), "cc": addrs("Cc"),
                           "bcc": addrs("Bcc")},
            "from": froms[0] if froms else None,
            "subject": decode_subject(msg.get("Subject"))}


def mime_attachments(mime):
    """The MIME parts that are attachments (a filename or Content-
    Disposition: attachment), as attachment records; S/MIME's smime.p7s is
    one of them."""
    try:
        msg = email.message_from_bytes(mime, policy=email.policy.default)
        out = []
        for part in msg.walk():
            if part.is_multipart():
                continue
            disp = part.get_content_disposition()
            name = part.get_filename()
            if disp != "attachment" and not name:
                continue
            data = part.get_payload(decode=True) or b""
            cid = part.get("Content-ID")
            out.append({"id": None, "type": "fileAttachment", "name": name,
                        "contentType": part.get_content_type(),
                        "size": len(data), "isInline": disp == "inline",
                        "contentId": str(cid).strip().strip("<>")
                        if cid else None,
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "via": "mime"})
        return out
    except Exception as e:      # a fake must not die of a client's MIME
        return [{"error": "%s: %s" % (type(e).__name__, e)}]


def mime_fields(mime, compact):
    """A MIME message's record fields: raw_base64 decodes to the exact
    bytes (S/MIME signatures can be checked on them)."""
    return {"mime": True, "raw_base64": compact.decode("ascii"),
            "mime_size": len(mime),
            "mime_sha256": hashlib.sha256(mime).hexdigest()}


def decode_mime_body(body):
    """(MIME bytes, the base64 without whitespace) of a text/plain body, or
    None if it is not base64 (line-wrapped base64 is fine)."""
    compact = b"".join(body.split())
    try:
        if not compact or len(compact) % 4:
            raise binascii.Error("bad length")
        return base64.b64decode(compact, validate=True), compact
    except binascii.Error:
        return None


# --------------------------------------------------------------------------
# client certificates (JWT client assertions)

class ClientCert:
    """A certificate registered for a client: its thumbprints and key."""

    def __init__(self, pem):
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
        der = cert.public_bytes(Encoding.DER)
        self.pem = pem
        self.x5t = b64url(hashlib.sha1(der).digest())
        self.x5t_s256 = b64url(hashlib.sha256(der).digest())
        self.key = cert.public_key()


def parse_jwt(assertion):
    """(header, claims, signing input, signature) of a compact JWT; raises
    ValueError saying what is wrong with it."""
    parts = assertion.split(".")
    if len(parts) != 3:
        raise ValueError("not three dot-separated parts")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        sig = b64url_decode(parts[2])
    except (ValueError, binascii.Error):
        raise ValueError("bad base64url or JSON")
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("header and claims must be JSON objects")
    return header, claims, (parts[0] + "." + parts[1]).encode("ascii"), sig


def verify_signature(cert, alg, signing_input, sig):
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    if alg == "RS256":
        pad = padding.PKCS1v15()
    else:       # PS256: RFC 7518 says salt length = hash length
        pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                          salt_length=32)
    try:
        cert.key.verify(sig, signing_input, pad, hashes.SHA256())
        return True
    except (InvalidSignature, TypeError, ValueError):
        return False


# --------------------------------------------------------------------------
# state shared by every connection thread

class Config:
    """The behaviour in force. Everything is replaced whole, key by key."""

    KEYS = ("latency_ms", "token_lifetime", "tenants", "clients",
            "unknown_mailboxes", "send_as_deny", "max_concurrency",
            "throttle_retry_after", "scope", "max_message_size",
            "upload_session_lifetime", "upload_base_url",
            "expired_session_status")

    def __init__(self):
        self.latency_ms = 0.0
        self.token_lifetime = 3599.0
        self.tenants = {}               # lower-case -> as configured
        self.clients = {}               # lower-case id -> client dict
        self.unknown_mailboxes = {}     # lower-case -> error code
        self.send_as_deny = set()       # {(mailbox, from)} lower-case
        self.send_as_strict = False
        self.max_concurrency = 4        # 0: no limit
        self.throttle_retry_after = "1"
        self.scope = None               # None: "{base url}/.default"
        self.max_message_size = None    # bytes a draft may grow to; None:
                                        # only the 150 MB per upload
        self.upload_session_lifetime = 900.0    # seconds
        self.upload_base_url = None     # None: this server's base URL
        self.expired_session_status = 404

    def copy(self):
        c = Config()
        c.__dict__.update({k: (v.copy() if hasattr(v, "copy") else v)
                           for k, v in self.__dict__.items()})
        return c

    def update(self, kw):
        for key in kw:
            if key not in self.KEYS:
                raise BadConfig("unknown config key %r (known: %s)"
                                % (key, ", ".join(self.KEYS)))
        for key, v in kw.items():
            getattr(self, "_set_" + key)(v)

    @staticmethod
    def _number(key, v, minimum=0):
        if isinstance(v, bool) or not isinstance(v, (int, float)) \
                or v < minimum:
            raise BadConfig("%s must be a number >= %s" % (key, minimum))
        return float(v)

    def _set_latency_ms(self, v):
        self.latency_ms = self._number("latency_ms", v)

    def _set_token_lifetime(self, v):
        self.token_lifetime = self._number("token_lifetime", v)

    def _set_tenants(self, v):
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
            raise BadConfig("tenants must be a list of strings")
        self.tenants = {t.lower(): t for t in v}

    def _set_clients(self, v):
        if not isinstance(v, dict):
            raise BadConfig("clients must be an object {id: {secret, "
                            "expired, certificates}}")
        clients = {}
        for cid, spec in v.items():
            if not isinstance(spec, dict):
                raise BadConfig("clients[%r] must be an object" % cid)
            bad = set(spec) - {"secret", "expired", "certificates"}
            if bad:
                raise BadConfig("clients[%r]: unknown keys %s"
                                % (cid, sorted(bad)))
            secret = spec.get("secret")
            if secret is None:
                secrets_ = []
            elif isinstance(secret, str):
                secrets_ = [secret]
            elif isinstance(secret, list):
                secrets_ = [str(s) for s in secret]
            else:
                raise BadConfig("clients[%r].secret must be a string or a "
                                "list" % cid)
            certs = []
            for pem in spec.get("certificates") or []:
                try:
                    certs.append(ClientCert(pem))
                except Exception as e:
                    raise BadConfig("clients[%r]: bad certificate: %s"
                                    % (cid, e))
            clients[cid.lower()] = {"id": cid, "secrets": secrets_,
                                    "expired": bool(spec.get("expired")),
                                    "certificates": certs}
        self.clients = clients

    def _set_unknown_mailboxes(self, v):
        if isinstance(v, list):
            v = {m: "ErrorInvalidUser" for m in v}
        if not isinstance(v, dict):
            raise BadConfig("unknown_mailboxes must be a list or an object "
                            "{mailbox: code}")
        for m, code in v.items():
            if code not in MAILBOX_ERRORS:
                raise BadConfig("unknown_mailboxes[%r]: code must be one of "
                                "%s" % (m, sorted(MAILBOX_ERRORS)))
        self.unknown_mailboxes = {m.lower(): c for m, c in v.items()}

    def _set_send_as_deny(self, v):
        self.send_as_strict = False
        self.send_as_deny = set()
        if v in (None, False, "none", []):
            return
        if v == "strict":
            self.send_as_strict = True
            return
        if not isinstance(v, list):
            raise BadConfig('send_as_deny must be "strict" or a list of '
                            '[mailbox, from] pairs')
        for pair in v:
            if (not isinstance(pair, list) or len(pair) != 2
                    or not all(isinstance(x, str) for x in pair)):
                raise BadConfig("send_as_deny: %r is not a [mailbox, from] "
                                "pair" % (pair,))
            self.send_as_deny.add((pair[0].lower(), pair[1].lower()))

    def _set_max_concurrency(self, v):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise BadConfig("max_concurrency must be an integer >= 0")
        self.max_concurrency = v

    def _set_throttle_retry_after(self, v):
        if v is not None and not isinstance(v, (str, int, float)):
            raise BadConfig("throttle_retry_after must be a string, a "
                            "number or null")
        self.throttle_retry_after = None if v is None else str(v)

    def _set_scope(self, v):
        if v is not None and not isinstance(v, str):
            raise BadConfig("scope must be a string or null")
        self.scope = v

    def _set_max_message_size(self, v):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                              or v < 1):
            raise BadConfig("max_message_size must be a positive integer "
                            "(bytes) or null")
        self.max_message_size = v

    def _set_upload_session_lifetime(self, v):
        self.upload_session_lifetime = self._number(
            "upload_session_lifetime", v)

    def _set_upload_base_url(self, v):
        if v is not None and (not isinstance(v, str)
                              or not re.match(r"^https?://[^/]+$",
                                              v.rstrip("/"))):
            raise BadConfig("upload_base_url must be scheme://host[:port] "
                            "or null")
        self.upload_base_url = v.rstrip("/") if v else None

    def _set_expired_session_status(self, v):
        if v not in (401, 404):
            raise BadConfig("expired_session_status must be 404 or 401")
        self.expired_session_status = v

    def as_json(self):
        return {
            "latency_ms": self.latency_ms,
            "token_lifetime": self.token_lifetime,
            "tenants": sorted(self.tenants.values()),
            "clients": {c["id"]: {"secret": c["secrets"][0]
                                  if len(c["secrets"]) == 1
                                  else c["secrets"],
                                  "expired": c["expired"],
                                  "certificates": [x.pem for x in
                                                   c["certificates"]]}
                        for c in self.clients.values()},
            "unknown_mailboxes": dict(self.unknown_mailboxes),
            "send_as_deny": ("strict" if self.send_as_strict
                             else sorted([list(p) for p in
                                          self.send_as_deny])),
            "max_concurrency": self.max_concurrency,
            "throttle_retry_after": self.throttle_retry_after,
            "scope": self.scope,
            "max_message_size": self.max_message_size,
            "upload_session_lifetime": self.upload_session_lifetime,
            "upload_base_url": self.upload_base_url,
            "expired_session_status": self.expired_session_status,
        }


FAULT_KEYS = {"count", "path", "mailbox", "kind", "method", "status", "code",
              "message", "retry_after", "headers", "drop", "reset",
              "delay_ms", "expire_token", "hang", "aadsts", "p", "skip",
              "expire_session", "draft_404", "commit"}
FAULT_KINDS = ("token", "graph", "upload")
# Actions that only make sense for one kind of request: the rule matches
# nothing else. action -> (route, method or None).
FAULT_ROUTES = {"expire_session": ("upload", None),
                "draft_404": ("messages", "POST")}


def parse_fault(rule):
    """Checks one fault rule and returns the stored form."""
    if not isinstance(rule, dict):
        raise BadConfig("a fault rule must be an object: %r" % (rule,))
    bad = set(rule) - FAULT_KEYS
    if bad:
        raise BadConfig("fault rule: unknown keys %s (known: %s)"
                        % (sorted(bad), sorted(FAULT_KEYS)))
    r = dict(rule)
    r.setdefault("count", 1)
    if not isinstance(r["count"], int) or r["count"] == 0 or r["count"] < -1:
        raise BadConfig("fault count must be a positive integer or -1")
    if r.get("kind") not in (None,) + FAULT_KINDS:
        raise BadConfig('fault kind must be "token", "graph" or "upload"')
    for key in ("skip", "draft_404"):
        v = r.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise BadConfig("fault %s must be an integer >= 0" % key)
    if "p" in r and (isinstance(r["p"], bool)
                     or not isinstance(r["p"], (int, float))
                     or not 0 <= r["p"] <= 1):
        raise BadConfig("fault p must be a number from 0 to 1")
    actions = [a for a in ("status", "drop", "reset", "expire_token",
                           "hang", "expire_session", "draft_404")
               if r.get(a)]
    if len(actions) > 1:
        raise BadConfig("fault rule has more than one action: %s" % actions)
    if not actions and not r.get("delay_ms"):
        raise BadConfig("fault rule needs an action: status, drop, reset, "
                        "delay_ms, expire_token, hang, expire_session or "
                        "draft_404")
    if "status" in r and (not isinstance(r["status"], int)
                          or not 100 <= r["status"] <= 599):
        raise BadConfig("fault status must be an HTTP status code")
    try:
        r["_path_re"] = re.compile(r["path"]) if r.get("path") else None
    except re.error as e:
        raise BadConfig("fault path %r: %s" % (r["path"], e))
    r["fired"] = 0
    return r


class State:
    """Everything the connection threads share, under one lock."""

    def __init__(self, initial_config, record=True):
        self.lock = threading.Lock()
        self.initial = initial_config
        self.config = initial_config.copy()
        self.record = record
        self.tokens = {}        # token -> [expires (monotonic), tenant, id]
        self.faults = []
        self.inflight = {}      # mailbox (lower-case) -> requests now; live
                                # state, so clear() leaves it alone
        self.clear()

    def clear(self):
        self.sent = []
        self.requests = []
        self.sent_count = 0
        self.request_count = 0
        self.token_requests = 0
        self.tokens_issued = 0
        self.status_counts = {}
        self.code_counts = {}
        self.max_inflight = {}  # mailbox -> highest ever (incl. refused)
        self.throttled = 0
        self.uploaded_bytes = 0
        self.drafts = {}        # id -> draft (Handler._new_draft)
        self.sessions = {}      # id -> upload session (Handler._new_session)

    def take_fault(self, kind, method, path, mailbox, route=None):
        """The first rule that matches and may still fire, used up once."""
        with self.lock:
            for r in self.faults:
                if r["count"] == 0:
                    continue
                if r.get("kind") and r["kind"] != kind:
                    continue
                if any(r.get(a) and (want != route or (m and m != method))
                       for a, (want, m) in FAULT_ROUTES.items()):
                    continue
                if r.get("method") and r["method"].upper() != method:
                    continue
                if r["_path_re"] is not None and not r["_path_re"].search(
                        path):
                    continue
                if r.get("mailbox") and (mailbox is None or r[
                        "mailbox"].lower() != mailbox.lower()):
                    continue
                if r.get("skip"):
                    r["skip"] -= 1
                    continue
                if "p" in r and random.random() >= r["p"]:
                    continue
                if r["count"] > 0:
                    r["count"] -= 1
                r["fired"] += 1
                return r
        return None

    def faults_json(self):
        with self.lock:
            return [{k: v for k, v in r.items() if not k.startswith("_")}
                    for r in self.faults]


# --------------------------------------------------------------------------
# the server

class FakeGraphServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, addr, family, state, ssl_context, base_url,
                 validators, verbose):
        self.address_family = family
        self.state = state
        self.ssl_context = ssl_context
        self.base_url = base_url
        self.validators = validators            # {} without the schema
        self.validator = validators.get("sendMail")
        self.verbose = verbose
        self.stopping = threading.Event()
        super().__init__(addr, Handler)

    def server_bind(self):
        # HTTPServer.server_bind would look up the host's FQDN: not needed.
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                                   1)
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.server_address[0]
        self.server_port = self.server_address[1]

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.ssl_context is not None:
            # The handshake happens in the connection's own thread.
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, QUIET_ERRORS):
            if self.verbose:
                log("connection from %s ended: %s: %s"
                    % (client_address[0], type(exc).__name__, exc))
            return
        log("unexpected error on a connection from %s:" % (client_address,))
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()


def log(msg):
    sys.stderr.write("fakegraph: %s\n" % msg)
    sys.stderr.flush()


class Drop(Exception):
    """Ends the request without an answer."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakegraph/1"
    sys_version = ""
    disable_nagle_algorithm = True

    # -- plumbing

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()

    def log_message(self, fmt, *args):
        log("%s %s" % (self.client_address[0], fmt % args))

    def log_request(self, code="-", size="-"):
        pass

    def handle_expect_100(self):
        # A body too large for Graph is refused before it is sent.
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            n = 0
        if n > MAX_REQUEST_BYTES:
            self._too_large_early = True
            return True
        return super().handle_expect_100()

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

    def _dispatch(self):
        self.t0 = time.monotonic()
        self.rid = str(uuid.uuid4())
        self.crid = self.headers.get("client-request-id") or str(
            uuid.uuid4())
        self.kind = None
        self.mailbox = None
        self.result = (0, "")
        self.inflight_key = None    # mailbox counted in st.inflight
        self.booked = False
        self.token_info = None      # a token request's, for the records
        self.rec_extra = {}         # more fields for the request's record
        self.route = None           # GRAPH_ROUTES name, or "upload"
        self.msg_id = None          # the message (draft) id in the path
        self.session_id = None      # the upload session's, in an uploadUrl
        self.fault_rule = None      # the fault rule that fired, if any
        self.fault_tag = None       # what _apply_fault left to do later
        self.after_commit = None    # a "commit" rule, carried out later
        self.path_only = urlsplit(self.path).path
        if self.path_only.startswith("/_fake/"):
            return self._control()
        m = TOKEN_RE.match(self.path_only)
        up = UPLOAD_RE.match(self.path_only)
        if m:
            self.kind = "token"
        elif up:
            self.kind = "upload"
            self._classify_upload(up)
        else:
            self.kind = "graph"
            um = USERS_RE.match(self.path_only)
            if um:
                self.mailbox = unquote(um.group(1))
                for name, rx in GRAPH_ROUTES:
                    rm = rx.match(um.group(2) or "")
                    if rm:
                        self.route = name
                        if rx.groups:
                            self.msg_id = unquote(rm.group(1))
                        break
        try:
            self._serve(m)
        except Drop:
            pass
        finally:
            self._book()

    def _classify_upload(self, up):
        """An uploadUrl request: its mailbox, draft and session, and what
        its record says of it (range, length, Authorization or not)."""
        self.route = "upload"
        self.mailbox = unquote(up.group(1))
        self.msg_id = unquote(up.group(2))
        self.session_id = unquote(up.group(3))
        cr = self.headers.get("Content-Range")
        rm = CONTENT_RANGE_RE.match(cr or "")
        try:
            length = int(self.headers.get("Content-Length"))
        except (TypeError, ValueError):
            length = None
        self.rec_extra["upload"] = {
            "session": self.session_id, "content_range": cr,
            "start": int(rm.group(1)) if rm else None,
            "end": int(rm.group(2)) if rm else None,
            "total": int(rm.group(3)) if rm else None,
            "length": length,
            "authorization": "Authorization" in self.headers}

    def _book(self):
        """Counts and records the request and ends its time in flight, once.
        Runs before the answer is written: a client that has its answer
        must find it in the records, and may send its next request at once
        without being counted twice against the mailbox's limit."""
        if self.booked or self.kind == "control":
            return
        self.booked = True
        st = self.server.state
        status, code = self.result
        with st.lock:
            if self.inflight_key is not None:
                st.inflight[self.inflight_key] -= 1
            st.request_count += 1
            key = str(status)
            st.status_counts[key] = st.status_counts.get(key, 0) + 1
            if code:
                st.code_counts[code] = st.code_counts.get(code, 0) + 1
            if st.record:
                rec = {
                    "time": time.time(), "method": self.command,
                    "path": self.path, "status": status, "code": code,
                    "kind": self.kind, "mailbox": self.mailbox,
                    "request_id": self.rid, "client_request_id": self.crid,
                    "ms": round((time.monotonic() - self.t0) * 1000, 3),
                    "token": self.token_info}
                rec.update(self.rec_extra)
                st.requests.append(rec)
        if self.server.verbose:
            log("%s %s %s %s rid=%s" % (self.command, self.path, status,
                                        code or "-", self.rid))

    def _read_body(self):
        """The request body, or None if it is larger than Graph allows (it
        is read and thrown away then, or the connection is closed)."""
        if getattr(self, "_too_large_early", False):
            self.close_connection = True
            return None
        te = self.headers.get("Transfer-Encoding", "").lower()
        if "chunked" in te:
            parts, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise ConnectionResetError("EOF in a chunked body")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n",
                                                             b""):
                        pass
                    break
                data = self.rfile.read(size)
                self.rfile.readline(3)
                total += len(data)
                if total <= MAX_REQUEST_BYTES:
                    parts.append(data)
                elif total > MAX_DISCARD_BYTES:
                    self.close_connection = True
                    return None
            self.body_size = total
            return b"".join(parts) if total <= MAX_REQUEST_BYTES else None
        try:
            n = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            n = -1
        if n < 0:
            self.close_connection = True
            raise BadRequest("Invalid Content-Length.")
        self.body_size = n
        if n > MAX_REQUEST_BYTES:
            if n > MAX_DISCARD_BYTES:
                self.close_connection = True
                return None
            left = n
            while left > 0:
                got = self.rfile.read(min(left, 1 << 20))
                if not got:
                    raise ConnectionResetError("EOF in the body")
                left -= len(got)
            return None
        data = self.rfile.read(n) if n else b""
        if len(data) != n:
            raise ConnectionResetError("EOF in the body")
        return data

    def _send(self, status, body=b"", ctype=None, headers=()):
        out = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Status")),
               "Date: %s" % self.date_time_string(),
               "request-id: %s" % self.rid,
               "client-request-id: %s" % self.crid]
        if status != 204:       # RFC 9110 8.6: none in a 204
            out.append("Content-Length: %d" % len(body))
        if ctype:
            out.append("Content-Type: %s" % ctype)
        for k, v in headers:
            out.append("%s: %s" % (k, v))
        if self.close_connection:
            out.append("Connection: close")
        data = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
        if self.command != "HEAD":
            data += body
        self._book()
        self.wfile.write(data)

    def _json(self, status, obj, headers=(), code=""):
        self.result = (status, code)
        self._send(status, json.dumps(obj, separators=(",", ":")).encode(),
                   "application/json; charset=utf-8", headers)

    def graph_error(self, status, code, message, retry_after=None,
                    headers=()):
        inner = {"date": graph_date(), "request-id": self.rid,
                 "client-request-id": self.crid}
        hdrs = list(headers)
        if status == 429:
            inner.update({"code": "429", "status": "429",
                          "message": "Please retry after"})
        if retry_after is not None:
            hdrs.append(("Retry-After", str(retry_after)))
        if status == 401:
            hdrs.append(("WWW-Authenticate",
                         'Bearer realm="", authorization_uri="%s/common/'
                         'oauth2/authorize", client_id="%s"'
                         % (self.server.base_url, GRAPH_APP_ID)))
        self._json(status, {"error": {"code": code, "message": message,
                                      "innerError": inner}}, hdrs, code)

    def aad_error(self, status, error, aadsts, text, headers=()):
        trace, corr = str(uuid.uuid4()), self.crid
        ts = aad_timestamp()
        desc = ("AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\n"
                "Timestamp: %s" % (aadsts, text, trace, corr, ts))
        self._json(status, {
            "error": error, "error_description": desc,
            "error_codes": [aadsts], "timestamp": ts, "trace_id": trace,
            "correlation_id": corr,
            "error_uri": "%s/error?code=%d" % (self.server.base_url, aadsts),
        }, [("Cache-Control", "no-store, no-cache"),
            ("x-ms-request-id", self.rid)] + list(headers),
            "AADSTS%d" % aadsts)

    # -- faults

    def _apply_fault(self, rule):
        """Carries out a fault rule. Returns "expire" for expire_token,
        True if the request was answered (or dropped), False to go on
        (fault_tag then says what the request's handler is to do:
        "expire_session" or "draft_404")."""
        self.fault_rule = rule
        if rule.get("delay_ms"):
            time.sleep(rule["delay_ms"] / 1000.0)
        if rule.get("drop") or rule.get("reset"):
            self.result = (0, "reset" if rule.get("reset") else "drop")
            self.close_connection = True
            if rule.get("reset"):
                # Close now with SO_LINGER 0 (an RST); socketserver's own
                # shutdown would send a FIN first.
                try:
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER,
                        struct.pack("ii", 1, 0))
                    os.close(self.connection.detach())
                except OSError:
                    pass
            raise Drop()
        if rule.get("hang"):
            self.result = (0, "hang")
            self.close_connection = True
            self._hang()
            raise Drop()
        if rule.get("expire_token"):
            return "expire"
        for tag in ("expire_session", "draft_404"):
            if rule.get(tag):
                self.fault_tag = tag
                return False
        status = rule.get("status")
        if not status:
            return False
        hdrs = list((rule.get("headers") or {}).items())
        if self.kind == "token":
            transient = status >= 500 or status == 429
            error = rule.get("code") or ("temporarily_unavailable"
                                         if transient else "invalid_request")
            aadsts = rule.get("aadsts") or (90033 if transient else 900144)
            text = rule.get("message") or (
                "A transient error has occurred. Please try again."
                if transient else "Fault injected by the test.")
            if rule.get("retry_after") is not None:
                hdrs.append(("Retry-After", str(rule["retry_after"])))
            self.aad_error(status, error, aadsts, text, hdrs)
            return True
        code, msg = FAULT_DEFAULTS.get(status, ("UnknownError",
                                                "Fault injected."))
        if "retry_after" in rule:       # null: no Retry-After at all
            retry_after = rule["retry_after"]
        elif status == 429:
            retry_after = self.server.state.config.throttle_retry_after
        else:
            retry_after = None
        self.graph_error(status, rule.get("code") or code,
                         rule.get("message") or msg,
                         retry_after=retry_after, headers=hdrs)
        return True

    def _hang(self):
        """Waits until the client disconnects or the server stops."""
        sock = self.connection
        while not self.server.stopping.is_set():
            try:
                r, _, _ = select.select([sock], [], [], 0.1)
                if r and not sock.recv(65536):
                    return
            except (OSError, ValueError):
                return

    # -- requests

    def _serve(self, token_match):
        st = self.server.state
        if self.kind != "token" and self._length_required():
            return
        try:
            body = self._read_body()
        except BadRequest as e:
            return self.graph_error(400, "BadRequest", str(e))
        if self.kind == "token":
            with st.lock:
                st.token_requests += 1
            rule = st.take_fault("token", self.command, self.path_only, None)
            if rule and self._apply_fault(rule) is True:
                return
            if body is None:
                return self.aad_error(413, "invalid_request", 900144,
                                      "The request is too large.")
            return self._token(token_match.group(1), body)
        if self.mailbox is None:
            return self._graph_rest(body, None)
        # Outlook's limits are per mailbox, uploads to an uploadUrl included.
        mb = self.mailbox.lower()
        cfg = st.config
        with st.lock:
            n = st.inflight.get(mb, 0) + 1
            st.inflight[mb] = n
            self.inflight_key = mb      # _book() takes it off again
            if n > st.max_inflight.get(mb, 0):
                st.max_inflight[mb] = n
            if cfg.max_concurrency and n > cfg.max_concurrency:
                st.throttled += 1
                over = True
            else:
                over = False
        if over:
            return self.graph_error(
                429, "ApplicationThrottled",
                "Application is over its MailboxConcurrency limit.",
                retry_after=cfg.throttle_retry_after)
        return self._graph_rest(body, mb)

    def _length_required(self):
        """Graph's front end refuses a POST or PUT with neither a
        Content-Length nor a chunked body, with its own HTML page (observed
        for message send: microsoft-graph-docs PR #2262, graph-rs-sdk#524).
        True if so answered."""
        if self.command not in ("POST", "PUT", "PATCH") or \
                "Content-Length" in self.headers or \
                "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return False
        self.result = (411, "LengthRequired")
        self._send(411, LENGTH_REQUIRED_PAGE, "text/html; charset=us-ascii")
        return True

    def _graph_rest(self, body, mb):
        st = self.server.state
        cfg = st.config
        rule = st.take_fault(self.kind, self.command, self.path_only,
                             self.mailbox, self.route)
        expire = False
        if rule and rule.get("commit") and self.route == "upload" and \
                self.command == "PUT":
            self.after_commit = rule    # _upload_put carries it out
        elif rule:
            done = self._apply_fault(rule)
            if done is True:
                return
            expire = done == "expire"
        if cfg.latency_ms:
            time.sleep(cfg.latency_ms / 1000.0)
        if body is None:
            return self.graph_error(413, "RequestEntityTooLarge",
                                    "The request size exceeds the maximum "
                                    "limit.")
        if self.kind == "upload":
            return self._upload(body, mb, cfg)
        why = self._check_token(expire)
        if why:
            return self.graph_error(401, "InvalidAuthenticationToken", why)
        tail = USERS_RE.match(self.path_only)
        if mb is None or not tail.group(2):
            seg = self.path_only.rstrip("/").rsplit("/", 1)[-1]
            return self.graph_error(400, "BadRequest",
                                    "Resource not found for the segment "
                                    "'%s'." % seg)
        code = cfg.unknown_mailboxes.get(mb)
        if code:
            msg = MAILBOX_ERRORS[code]
            return self.graph_error(404, code, msg % self.mailbox
                                    if "%s" in msg else msg)
        if self.route is None:
            segs = tail.group(2).strip("/").split("/")
            seg = segs[2] if len(segs) > 2 and segs[0].lower() == \
                "messages" else segs[0]
            return self.graph_error(400, "BadRequest",
                                    "Resource not found for the segment "
                                    "'%s'." % seg)
        return getattr(self, "_r_" + self.route)(body, cfg, mb)

    def _method_ok(self, allowed, what):
        """True if the method is one of allowed, else answers 405."""
        if self.command in allowed:
            return True
        self.graph_error(405, "Request_BadRequest",
                         "The HTTP method '%s' is not allowed for %s."
                         % (self.command, what),
                         headers=[("Allow", ", ".join(allowed))])
        return False

    def _ctype(self):
        return self.headers.get("Content-Type", "").split(";")[0].strip() \
            .lower()

    def _unsupported_type(self, what="application/json or text/plain "
                          "(base64 MIME)"):
        self.graph_error(415, "UnsupportedMediaType",
                         "Content-Type '%s' is not supported: use %s."
                         % (self.headers.get("Content-Type", ""), what))

    def _parse_json(self, body):
        """The JSON body, or NO_JSON after answering 400."""
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            self.graph_error(
                400, "BadRequest", "Unable to read JSON request payload. "
                "Please ensure Content-Type header is set and payload is of "
                "valid JSON format. (%s)" % e)
            return NO_JSON

    def _invalid(self, name, doc):
        """True (answered 400) if the shared schema rejects doc as a body of
        request name (SCHEMA_DEFS); False if it passes or there is no
        schema."""
        validator = self.server.validators.get(name)
        if validator is None or validator.is_valid(doc):
            return False
        err = jsonschema.exceptions.best_match(validator.iter_errors(doc))
        code, text = describe_schema_error(doc, err, SCHEMA_DEFS[name][1])
        self.graph_error(400, code, text)
        return True

    def _bad_headers(self, msg):
        """True (answered 400) if a message's internetMessageHeaders break
        Graph's rules: names x-/X-, one to five of them."""
        hdrs = msg.get("internetMessageHeaders") if isinstance(msg, dict) \
            else None
        if not isinstance(hdrs, list):
            return False
        if len(hdrs) > MAX_HEADERS_PER_MESSAGE or not hdrs:
            self.graph_error(
                400, "InvalidInternetMessageHeaderCollection",
                "Maximum number of headers in one message should be "
                "less than or equal to 5." if hdrs else
                "The internet message header collection is empty.")
            return True
        for h in hdrs:
            name = h.get("name") if isinstance(h, dict) else None
            if isinstance(name, str) and not name.lower().startswith("x-"):
                self.graph_error(
                    400, "InvalidInternetMessageHeader",
                    "The internet message header name '%s' should start "
                    "with 'x-' or 'X-'." % name)
                return True
        return False

    def _no_recipients(self):
        self.graph_error(
            400, "ErrorInvalidRecipients",
            "At least one recipient is not valid., A message can't be "
            "sent because it contains no recipients.")

    def _mime_invalid(self):
        self.graph_error(
            400, "ErrorMimeContentInvalid",
            "MIME content does not contain all required information, "
            "malformed formatting, or empty.")

    def _decode_mime(self, body):
        """decode_mime_body, or None after answering 400."""
        got = decode_mime_body(body)
        if got is None:
            self.graph_error(400, "ErrorMimeContentInvalidBase64String",
                             "Invalid base64 string for MIME content.")
        return got

    def _check_token(self, expire):
        """None if the bearer token is good, else the 401 message."""
        st = self.server.state
        auth = self.headers.get("Authorization", "")
        scheme, _, tok = auth.strip().partition(" ")
        tok = tok.strip()
        if not tok or scheme.lower() != "bearer":
            return "Access token is empty."
        with st.lock:
            entry = st.tokens.get(tok)
            if entry is None:
                return "Access token validation failure."
            if expire:
                entry[0] = 0.0
            if time.monotonic() >= entry[0]:
                return "Access token has expired or is not yet valid."
        return None

    def _send_as_ok(self, cfg, mb, sender):
        if not sender or sender.lower() == mb:
            return True
        if cfg.send_as_strict:
            return False
        return (mb, sender.lower()) not in cfg.send_as_deny

    def _accepted(self, fmt, record_body, extra):
        """Records a message as sent and answers 202. extra() gives the
        record's other fields; it is called only when records are kept."""
        st = self.server.state
        more = extra() if st.record else None
        with st.lock:
            st.sent_count += 1
            if st.record:
                rec = {"mailbox": self.mailbox, "format": fmt,
                       "body": record_body, "headers": dict(self.headers),
                       "time": time.time(), "request_id": self.rid,
                       "client_request_id": self.crid}
                rec.update(more)
                st.sent.append(rec)
        self.result = (202, "")
        self._send(202)

    def _send_as_denied(self):
        self.graph_error(
            403, "ErrorSendAsDenied",
            "The user account which was used to submit this request does not "
            "have the right to send mail on behalf of the specified sending "
            "account. Cannot submit message.")

    # -- sendMail

    def _r_sendMail(self, body, cfg, mb):
        if not self._method_ok(("POST",), "sendMail"):
            return
        ctype = self._ctype()
        if ctype == "application/json":
            return self._sendmail_json(body, cfg, mb)
        if ctype == "text/plain":
            return self._sendmail_mime(body, cfg, mb)
        return self._unsupported_type()

    def _sendmail_json(self, body, cfg, mb):
        doc = self._parse_json(body)
        if doc is NO_JSON:
            return
        msg = doc.get("message", doc.get("Message")) \
            if isinstance(doc, dict) else None
        if self._bad_headers(msg) or self._invalid("sendMail", doc):
            return
        if not isinstance(msg, dict):   # only without the schema
            return self.graph_error(400, "BadRequest",
                                    "The parameter 'message' is missing.")
        summary = json_summary(msg)
        if not any(summary["recipients"].values()):
            return self._no_recipients()
        if not self._send_as_ok(cfg, mb, summary["from"]):
            return self._send_as_denied()
        self._accepted("json", doc, lambda: dict(
            summary, path="sendMail", mime=False,
            attachments=json_attachments(msg, "inline")))

    def _sendmail_mime(self, body, cfg, mb):
        got = self._decode_mime(body)
        if got is None:
            return
        mime, compact = got
        summary = mime_summary(mime)
        if summary is None:
            return self._mime_invalid()
        if not any(summary["recipients"].values()):
            return self._no_recipients()
        if not self._send_as_ok(cfg, mb, summary["from"]):
            return self._send_as_denied()
        self._accepted("mime", mime.decode("utf-8", "surrogateescape"),
                       lambda: dict(summary, path="sendMail",
                                    attachments=mime_attachments(mime),
                                    **mime_fields(mime, compact)))

    # -- drafts (FACTS.md section 3)

    def _new_draft(self, fmt, summary, size, doc=None, mime=None,
                   compact=None, attachments=()):
        """Stores a new draft of this request's mailbox and returns it."""
        d = {"id": outlook_id(), "mailbox": self.mailbox,
             "mailbox_key": self.mailbox.lower(), "format": fmt,
             "summary": summary, "size": size, "doc": doc, "mime": mime,
             "compact": compact, "attachments": list(attachments),
             "created": time.time(), "changeKey": b64url(os.urandom(12)),
             "conversationId": outlook_id(), "hidden": 0}
        if self.fault_tag == "draft_404":
            d["hidden"] = self.fault_rule["draft_404"]
        st = self.server.state
        with st.lock:
            st.drafts[d["id"]] = d
        return d

    def _find_draft(self, mb):
        """The draft named in the path, or None after answering 404.

        Graph answers 404 ErrorItemNotFound "The specified object was not
        found in the store." for an id it does not find (observed:
        microsoft/MHA#77, msgraph-sdk-dotnet#259; those add ", The process
        failed to get the correct properties." on a GET). A draft sent or
        deleted is gone; so is a draft hidden by a draft_404 fault, for its
        next N requests."""
        st = self.server.state
        with st.lock:
            d = st.drafts.get(self.msg_id)
            if d is not None and d["mailbox_key"] != mb:
                d = None
            if d is not None and d["hidden"] > 0:
                d["hidden"] -= 1
                d = None
        if d is None:
            self._not_found()
        return d

    def _not_found(self, why=""):
        self.graph_error(404, "ErrorItemNotFound",
                         "The specified object was not found in the store."
                         + why)

    def _size_exceeded(self):
        self.graph_error(400, "ErrorMessageSizeExceeded",
                         "The message exceeds the maximum supported size., "
                         "Cannot save changes made to an item to store.")

    def _too_big(self, cfg, d, more):
        """True (answered 400 ErrorMessageSizeExceeded, FACTS.md section 3)
        if the draft would grow past max_message_size with `more` bytes."""
        if cfg.max_message_size is None:
            return False
        size = d["size"] + sum(a.get("size") or 0 for a in d["attachments"])
        if size + more <= cfg.max_message_size:
            return False
        self._size_exceeded()
        return True

    def _draft_json(self, d):
        """The message resource Graph answers for a draft."""
        made = graph_datetime(d["created"])
        summary = d["summary"]

        def rcpts(addrs):
            return [{"emailAddress": {"name": a, "address": a}}
                    for a in addrs]
        out = {
            "@odata.context": "%s/v1.0/$metadata#users('%s')/messages/"
                              "$entity" % (self.server.base_url,
                                           quote(d["mailbox"], safe="")),
            "@odata.etag": 'W/"%s"' % d["changeKey"],
            "id": d["id"], "createdDateTime": made,
            "lastModifiedDateTime": made, "changeKey": d["changeKey"],
            "categories": [], "receivedDateTime": made, "sentDateTime": made,
            "hasAttachments": bool(d["attachments"]),
            "internetMessageId": "<%s@fakegraph.local>" % d["changeKey"],
            "subject": summary["subject"] or "", "bodyPreview": "",
            "importance": "normal", "parentFolderId": DRAFTS_FOLDER_ID,
            "conversationId": d["conversationId"],
            "isDeliveryReceiptRequested": False,
            "isReadReceiptRequested": False, "isRead": True, "isDraft": True,
            "webLink": "https://outlook.office365.com/owa/?ItemID=%s"
                       "&exvsurl=1&viewmodel=ReadMessageItem"
                       % quote(d["id"], safe=""),
            "inferenceClassification": "focused",
            "body": {"contentType": "text", "content": ""},
            "toRecipients": rcpts(summary["recipients"]["to"]),
            "ccRecipients": rcpts(summary["recipients"]["cc"]),
            "bccRecipients": rcpts(summary["recipients"]["bcc"]),
            "replyTo": [], "flag": {"flagStatus": "notFlagged"}}
        if summary["from"]:
            out["from"] = out["sender"] = {"emailAddress": {
                "name": summary["from"], "address": summary["from"]}}
        for k, v in (d["doc"] or {}).items():
            if k != "attachments" and not k.startswith("@"):
                out[k] = v
        return out

    def _r_messages(self, body, cfg, mb):
        """POST /users/{id}/messages: a draft from JSON or base64 MIME
        (user-post-messages.md; FACTS.md sections 2 and 3) -> 201."""
        if not self._method_ok(("POST",), "the messages collection"):
            return
        ctype = self._ctype()
        if ctype == "application/json":
            doc = self._parse_json(body)
            if doc is NO_JSON or self._bad_headers(doc) or \
                    self._invalid("draft", doc):
                return
            if not isinstance(doc, dict):   # only without the schema
                return self.graph_error(400, "BadRequest",
                                        "A message object is expected.")
            atts = json_attachments(doc, "inline", new_id=True)
            new = {"size": len(body), "attachments": atts}
            if self._too_big(cfg, new, 0):
                return
            d = self._new_draft("json", json_summary(doc), len(body),
                                doc=doc, attachments=atts)
        elif ctype == "text/plain":
            got = self._decode_mime(body)
            if got is None:
                return
            summary = mime_summary(got[0])
            if summary is None:
                return self._mime_invalid()
            if self._too_big(cfg, {"size": len(got[0]), "attachments": []},
                             0):
                return
            d = self._new_draft("mime", summary, len(got[0]), mime=got[0],
                                compact=got[1])
        else:
            return self._unsupported_type()
        self._json(201, self._draft_json(d))

    def _r_message(self, body, cfg, mb):
        """GET (200) or DELETE (204) a draft."""
        if not self._method_ok(("GET", "DELETE"), "a message"):
            return
        d = self._find_draft(mb)
        if d is None:
            return
        if self.command == "GET":
            return self._json(200, self._draft_json(d))
        self._drop_draft(d)
        self.result = (204, "")
        self._send(204)

    def _drop_draft(self, d):
        """Forgets a draft and its upload sessions; False if it was gone
        already (sent or deleted meanwhile)."""
        st = self.server.state
        with st.lock:
            gone = st.drafts.pop(d["id"], None) is None
            for sid in [k for k, s in st.sessions.items()
                        if s["draft_id"] == d["id"]]:
                del st.sessions[sid]
        return not gone

    def _draft_post(self, body, mb, what):
        """(draft, JSON body) of a POST to something of a draft, or (None,
        None) once answered (405, 404, 415 or 400)."""
        if not self._method_ok(("POST",), what):
            return None, None
        d = self._find_draft(mb)
        if d is None:
            return None, None
        if self._ctype() != "application/json":
            self._unsupported_type("application/json")
            return None, None
        doc = self._parse_json(body)
        return (None, None) if doc is NO_JSON else (d, doc)

    def _r_attachments(self, body, cfg, mb):
        """POST .../messages/{id}/attachments: a fileAttachment with
        contentBytes (message-post-attachments.md) -> 201. Under 3 MB in
        the docs' words; no check of its own here: 3 MB as base64 is the
        4 MB request limit, which answers 413 above it."""
        if self.command == "GET":
            return self._list_attachments(mb)
        d, doc = self._draft_post(body, mb, "attachments")
        if d is None or self._invalid("attachment", doc):
            return
        if not isinstance(doc, dict) or not doc.get("name"):
            return self.graph_error(400, "BadRequest",  # without the schema
                                    "An attachment needs a name and "
                                    "contentBytes.")
        att = attachment_record(doc, "post", new_id=True)
        if self._too_big(cfg, d, att["size"] or 0):
            return
        with self.server.state.lock:
            d["attachments"].append(att)
        out = {"@odata.context": "%s/v1.0/$metadata#users('%s')/messages('%s')"
                                 "/attachments/$entity"
                                 % (self.server.base_url,
                                    quote(d["mailbox"], safe=""),
                                    quote(d["id"], safe="")),
               "@odata.type": doc.get("@odata.type"),
               "id": att["id"],
               "lastModifiedDateTime": graph_datetime(time.time()),
               "name": att["name"], "contentType": att["contentType"],
               "size": att["size"] or 0, "isInline": att["isInline"]}
        if att["type"].lower() == "fileattachment":
            out.update({"@odata.mediaContentType": att["contentType"],
                        "contentId": att["contentId"],
                        "contentLocation": None,
                        "contentBytes": doc.get("contentBytes")})
        self._json(201, out)

    def _list_attachments(self, mb):
        """GET .../messages/{id}/attachments (message-list-attachments.md)
        -> 200 {"value": [...]}: each attachment's metadata; contentBytes
        are never listed here (the records keep only their hash). $select
        keeps the named properties, with id and @odata.type."""
        d = self._find_draft(mb)
        if d is None:
            return
        sel = parse_qs(urlsplit(self.path).query).get("$select")
        keep = {k.strip().lower() for k in sel[0].split(",")} if sel \
            else None
        with self.server.state.lock:
            atts = list(d["attachments"])
        out = []
        for a in atts:
            item = {"@odata.type": "#microsoft.graph." + (a["type"] or
                                                          "fileAttachment"),
                    "id": a["id"], "name": a["name"],
                    "contentType": a["contentType"], "size": a["size"] or 0,
                    "isInline": a["isInline"]}
            if keep is not None:
                item = {k: v for k, v in item.items()
                        if k in ("@odata.type", "id") or k.lower() in keep}
            out.append(item)
        self._json(200, {"@odata.context": "%s/v1.0/$metadata#users('%s')/"
                         "messages('%s')/attachments" % (
                             self.server.base_url,
                             quote(d["mailbox"], safe=""),
                             quote(d["id"], safe="")),
                         "value": out})

    def _r_send(self, body, cfg, mb):
        """POST .../messages/{id}/send, no body (message-send.md) -> 202;
        the draft is then gone (it moved to Sent Items)."""
        if not self._method_ok(("POST",), "send"):
            return
        d = self._find_draft(mb)
        if d is None:
            return
        if body.strip():
            # An action without parameters: an empty JSON object is read
            # as none; anything else is a parameter it does not have.
            try:
                doc = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                doc = None
            if doc != {}:
                return self.graph_error(
                    400, "RequestBodyRead", "The action 'send' takes no "
                    "parameters: send no body (Content-Length: 0).")
        summary = d["summary"]
        if not any(summary["recipients"].values()):
            return self._no_recipients()
        if not self._send_as_ok(cfg, mb, summary["from"]):
            return self._send_as_denied()
        if not self._drop_draft(d):
            return self._not_found()

        def extra(mime_atts=()):
            return dict(summary, path="draft", draft_id=d["id"],
                        draft_created=d["created"],
                        attachments=list(mime_atts) + d["attachments"])
        if d["format"] == "json":
            return self._accepted("json", {"message": d["doc"]},
                                  lambda: dict(extra(), mime=False))
        self._accepted("mime", d["mime"].decode("utf-8", "surrogateescape"),
                       lambda: dict(extra(mime_attachments(d["mime"])),
                                    **mime_fields(d["mime"], d["compact"])))

    # -- upload sessions (FACTS.md section 3; outlook-large-attachments.md)

    def _r_createUploadSession(self, body, cfg, mb):
        """POST .../attachments/createUploadSession -> 201 uploadSession.
        Under 3 MB: 400 ErrorAttachmentSizeShouldNotBeLessThanMinimumSize
        (the docs' Errors section gives the code, no message); over 150 MB
        or past max_message_size: 400 ErrorMessageSizeExceeded."""
        d, doc = self._draft_post(body, mb, "createUploadSession")
        if d is None:
            return
        item = None
        if isinstance(doc, dict):
            item = doc.get("AttachmentItem", doc.get("attachmentItem"))
        size = item.get("size") if isinstance(item, dict) else None
        if isinstance(size, int) and not isinstance(size, bool):
            if size < MIN_UPLOAD_SIZE:
                return self.graph_error(
                    400, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                    "The attachment size %d is less than the minimum size "
                    "for an upload session (3 MB): attach it with one POST "
                    "to the attachments collection." % size)
            if size > MAX_UPLOAD_SIZE:
                return self._size_exceeded()
            if self._too_big(cfg, d, size):
                return
        if self._invalid("createUploadSession", doc):
            return
        if not isinstance(item, dict) or not isinstance(size, int) or \
                not isinstance(item.get("name"), str):    # no schema
            return self.graph_error(400, "BadRequest",
                                    "AttachmentItem needs attachmentType, "
                                    "name and size.")
        if str(item.get("attachmentType")).lower() != "file":
            return self.graph_error(400, "BadRequest",
                                    "The fake takes attachmentType 'file' "
                                    "only.")
        s = self._new_session(d, item, cfg)
        self._json(201, {
            "@odata.context": "%s/v1.0/$metadata#microsoft.graph."
                              "uploadSession" % self.server.base_url,
            "uploadUrl": s["url"],
            "expirationDateTime": session_datetime(s["expires_wall"]),
            "nextExpectedRanges": ["0-"]})

    def _new_session(self, d, item, cfg):
        sid = outlook_id()
        now = time.time()
        base = cfg.upload_base_url or self.server.base_url
        prefix = "%s/api/v2.0/Users('%s')/Messages('%s')" % (
            base, quote(d["mailbox"], safe="@"), quote(d["id"], safe="="))
        s = {"id": sid, "draft_id": d["id"], "mailbox": d["mailbox"],
             "mailbox_key": d["mailbox_key"],
             "authtoken": "eyJ0eXAiOiJKV1Qi." + secrets.token_urlsafe(48),
             "item": {"name": item["name"], "size": item["size"],
                      "contentType": item.get("contentType"),
                      "isInline": bool(item.get("isInline")),
                      "contentId": item.get("contentId")},
             "prefix": prefix,
             "expires": time.monotonic() + cfg.upload_session_lifetime,
             "expires_wall": now + cfg.upload_session_lifetime,
             "expired": False, "next": 0, "sha": hashlib.sha256(),
             "lock": threading.Lock(), "created": now}
        s["url"] = "%s/AttachmentSessions('%s')?authtoken=%s" % (
            prefix, quote(sid, safe="="), s["authtoken"])
        with self.server.state.lock:
            self.server.state.sessions[sid] = s
        return s

    def _session_status(self, s, open_ended=False):
        """A PUT's 200 body (outlook-large-attachments.md: PascalCase
        ExpirationDateTime, nextExpectedRanges ["<next>"], no uploadUrl);
        a GET's has "<next>-" as OneDrive's status answer does."""
        ctx = "%s/api/v2.0/$metadata#Users('%s')/Messages('%s')/" \
              "AttachmentSessions/$entity" % (
                  s["prefix"].split("/api/", 1)[0],
                  quote(s["mailbox"], safe=""), quote(s["draft_id"], safe=""))
        nxt = "%d-" % s["next"] if open_ended else "%d" % s["next"]
        return {"@odata.context": ctx,
                "ExpirationDateTime": session_datetime(s["expires_wall"]),
                "nextExpectedRanges": [nxt]}

    def _upload(self, body, mb, cfg):
        """A request to an uploadUrl: PUT a range, GET the status, DELETE
        (cancel) the session.

        Choices the sources leave open (say so when they are learnt):
        - GET {uploadUrl} answers the session's status: Outlook does not
          document it; the SDKs' upload task resumes that way for any
          upload session (msgraph-sdk-design tasks/FileUploadTask.md).
        - A range that does not start at the next expected byte: 416
          invalidRange "Uploaded fragment is out of order." (or "...
          overlaps with existing data."), OneDrive's answer (onedrive-api-
          docs#79); Outlook's is undocumented. Ranges must come in order
          (the docs say so), and a range sent again is refused, not
          skipped: a client that lost an answer asks GET {uploadUrl}.
        - An expired session: 404 ErrorItemNotFound (expired_session_status
          404), or 401 InvalidAuthenticationToken (401): the docs say the
          URL's token expires at expirationDateTime, not what follows.
        - Each PUT over 4 MB: 413 like any request (the docs: "keep each
          byte range less than 4 MB")."""
        st = self.server.state
        if "Authorization" in self.headers:
            # FACTS.md section 3: the URL is pre-authenticated; a Graph
            # bearer token there fails on its audience (observed).
            return self.graph_error(401, "InvalidAudience",
                                    "The audience claim value is invalid "
                                    "'aud'.")
        with st.lock:
            s = st.sessions.get(self.session_id)
        if s is None or s["mailbox_key"] != mb or \
                s["draft_id"] != self.msg_id:
            return self._not_found()
        tok = (parse_qs(urlsplit(self.path).query).get("authtoken")
               or [""])[0]
        if tok != s["authtoken"]:
            return self.graph_error(401, "InvalidAuthenticationToken",
                                    "Access token validation failure."
                                    if tok else "Access token is empty.")
        if self.fault_tag == "expire_session":
            s["expired"] = True
        if s["expired"] or time.monotonic() >= s["expires"]:
            if cfg.expired_session_status == 401:
                return self.graph_error(401, "InvalidAuthenticationToken",
                                        "Access token has expired or is not "
                                        "yet valid.")
            return self._not_found(" (The upload session has expired.)")
        if self.command == "GET":
            return self._json(200, self._session_status(s, open_ended=True))
        if self.command == "DELETE":
            with st.lock:
                st.sessions.pop(s["id"], None)
            self.result = (204, "")
            return self._send(204)
        if not self._method_ok(("PUT", "GET", "DELETE"), "an upload session"):
            return
        return self._upload_put(body, s)

    def _upload_put(self, body, s):
        st = self.server.state
        m = CONTENT_RANGE_RE.match(self.headers.get("Content-Range", ""))
        if not m:
            return self.graph_error(400, "BadRequest",
                                    "The Content-Range header is missing or "
                                    "malformed: expected 'bytes {start}-"
                                    "{end}/{total}'.")
        start, end, total = (int(x) for x in m.groups())
        size = s["item"]["size"]
        if total != size:
            return self.graph_error(400, "BadRequest",
                                    "The upload session is for %d total "
                                    "bytes, but the Content-Range header "
                                    "declares a total of %d." % (size, total))
        if end < start or end >= total:
            return self.graph_error(400, "BadRequest",
                                    "The Content-Range header's range is not "
                                    "within the file.")
        if end - start + 1 != len(body):
            return self.graph_error(400, "BadRequest",
                                    "The Content-Range header length does "
                                    "not match the provided number of "
                                    "bytes.")
        with s["lock"]:
            nxt = s["next"]
            if start == nxt:
                s["sha"].update(body)
                s["next"] = nxt = end + 1
                took = True
            else:
                took = False
        if not took:
            return self.graph_error(
                416, "invalidRange",
                "Uploaded fragment %s. nextExpectedRanges: [\"%d\"]"
                % ("overlaps with existing data" if start < nxt
                   else "is out of order", nxt))
        d = None
        with st.lock:
            st.uploaded_bytes += len(body)
            if nxt == total:
                st.sessions.pop(s["id"], None)
                d = st.drafts.get(s["draft_id"])
                att = dict(s["item"], id=outlook_id(), type="fileAttachment",
                           sha256=s["sha"].hexdigest(), via="upload")
                if d is not None:
                    d["attachments"].append(att)
        if self.after_commit is not None and \
                self._apply_fault(self.after_commit) is True:
            return
        if nxt < total:
            return self._json(200, self._session_status(s))
        if d is None:       # sent or deleted while uploading
            return self._not_found()
        self.result = (201, "")
        self._send(201, b"", None, [("Location", "%s/Attachments('%s')" % (
            s["prefix"], quote(att["id"], safe="=")))])

    def _token(self, tenant, body):
        st = self.server.state
        cfg = st.config
        if self.command != "POST":
            return self.aad_error(400, "invalid_request", 900561,
                                  "The endpoint only accepts POST requests. "
                                  "Received a %s request." % self.command)
        form = {}
        for k, v in parse_qsl(body.decode("utf-8", "replace"),
                              keep_blank_values=True):
            form.setdefault(k, v)
        self.token_info = {"fields": sorted(form),
                           "scope": form.get("scope"),
                           "client_assertion_type":
                           form.get("client_assertion_type"),
                           "assertion": None}
        try:
            h, c, _, _ = parse_jwt(form.get("client_assertion") or "")
            self.token_info["assertion"] = {"header": h, "claims": c}
        except ValueError:
            pass
        basic_id = basic_secret = None
        auth = self.headers.get("Authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                raw = base64.b64decode(auth[6:].strip(),
                                       validate=True).decode("utf-8")
                i, sep, s = raw.partition(":")
                if not sep:
                    raise ValueError("no colon")
                basic_id, basic_secret = unquote_plus(i), unquote_plus(s)
            except (ValueError, binascii.Error, UnicodeDecodeError):
                return self.aad_error(401, "invalid_client", 7000215,
                                      "The Authorization header is not "
                                      "valid HTTP Basic client "
                                      "authentication.")
        if tenant.lower() not in cfg.tenants:
            return self.aad_error(
                400, "invalid_request", 90002,
                "Tenant '%s' not found. Check to make sure you have the "
                "correct tenant ID and are signing into the correct cloud. "
                "Check with your subscription administrator, this may happen "
                "if there are no active subscriptions for the tenant."
                % tenant)
        grant = form.get("grant_type")
        if not grant:
            return self._missing("grant_type")
        if grant != "client_credentials":
            return self.aad_error(400, "unsupported_grant_type", 70003,
                                  "The app requested an unsupported grant "
                                  "type '%s'." % grant)
        cid = form.get("client_id")
        if basic_id is not None:
            if cid is not None and cid != basic_id:
                return self.aad_error(
                    400, "invalid_request", 900144,
                    "The client_id in the request body does not match the "
                    "client identifier in the Authorization header.")
            cid = basic_id
        if not cid:
            return self._missing("client_id")
        client = cfg.clients.get(cid.lower())
        if client is None:
            return self.aad_error(
                400, "unauthorized_client", 700016,
                "Application with identifier '%s' was not found in the "
                "directory '%s'. This can happen if the application has not "
                "been installed by the administrator of the tenant or "
                "consented to by any user in the tenant. You may have sent "
                "your authentication request to the wrong tenant."
                % (cid, tenant))
        secret = form.get("client_secret")
        if basic_secret is not None:
            if secret is not None:
                return self.aad_error(
                    400, "invalid_request", 900144,
                    "Only one client authentication method may be used: "
                    "HTTP Basic or client_secret in the body.")
            secret = basic_secret
        atype = form.get("client_assertion_type")
        assertion = form.get("client_assertion")
        if secret is not None and (atype or assertion):
            return self.aad_error(
                400, "invalid_request", 7000218,
                "The request body must contain only one of the following "
                "parameters: 'client_assertion' or 'client_secret'.")
        if secret is None and not assertion:
            return self.aad_error(
                401, "invalid_client", 7000218,
                "The request body must contain the following parameter: "
                "'client_assertion' or 'client_secret'.")
        if secret is not None:
            if secret not in client["secrets"]:
                return self.aad_error(
                    401, "invalid_client", 7000215,
                    "Invalid client secret provided. Ensure the secret being "
                    "sent in the request is the client secret value, not the "
                    "client secret ID, for a secret added to app '%s'."
                    % client["id"])
            if client["expired"]:
                return self.aad_error(
                    401, "invalid_client", 7000222,
                    "The provided client secret keys for app '%s' are "
                    "expired. Visit the Azure portal to create new keys for "
                    "your app: https://aka.ms/NewClientSecret, or consider "
                    "using certificate credentials for added security: "
                    "https://aka.ms/certCreds." % client["id"])
        else:
            if atype != JWT_BEARER:
                if not atype:
                    return self._missing("client_assertion_type")
                return self.aad_error(
                    400, "invalid_request", 50027,
                    "Unsupported client_assertion_type '%s'; expected '%s'."
                    % (atype, JWT_BEARER))
            bad = self._check_assertion(assertion, client, tenant)
            if bad:
                return self.aad_error(*bad)
        scope = form.get("scope")
        if not scope:
            return self._missing("scope")
        want = cfg.scope or self.server.base_url + "/.default"
        if scope != want:
            return self.aad_error(
                400, "invalid_scope", 70011,
                "The provided value for the input parameter 'scope' is not "
                "valid. The scope %s is not valid." % scope)
        tok = "fake." + secrets.token_urlsafe(32)
        life = cfg.token_lifetime
        with st.lock:
            st.tokens[tok] = [time.monotonic() + life, tenant, client["id"]]
            st.tokens_issued += 1
        n = int(math.ceil(life))
        self._json(200, {"token_type": "Bearer", "expires_in": n,
                         "ext_expires_in": n, "access_token": tok},
                   [("Cache-Control", "no-store, no-cache"),
                    ("x-ms-request-id", self.rid)])

    def _missing(self, param):
        return self.aad_error(400, "invalid_request", 900144,
                              "The request body must contain the following "
                              "parameter: '%s'." % param)

    def _check_assertion(self, assertion, client, tenant):
        """None if the JWT client assertion is good, else the arguments of
        aad_error."""
        def malformed(why):
            return (400, "invalid_request", 50027,
                    "JWT token is invalid or malformed. (%s)" % why)
        try:
            header, claims, signing_input, sig = parse_jwt(assertion)
        except ValueError as e:
            return malformed(str(e))
        alg = header.get("alg")
        if alg not in ("RS256", "PS256"):
            return malformed("unsupported alg %r" % (alg,))
        thumb = header.get("x5t#S256") or header.get("x5t")
        cert = None
        for c in client["certificates"]:
            if header.get("x5t#S256") == c.x5t_s256 or \
                    header.get("x5t") == c.x5t:
                cert = c
                break
        if cert is None:
            return (401, "invalid_client", 700027,
                    "Client assertion contains an invalid signature. [Reason "
                    "- The key was not found., Thumbprint of key used by "
                    "client: '%s', Please visit the Azure Portal, Graph "
                    "Explorer or directly use MS Graph to see configured "
                    "keys for app Id '%s'.]" % (thumb, client["id"]))
        if not verify_signature(cert, alg, signing_input, sig):
            return (401, "invalid_client", 700027,
                    "Client assertion contains an invalid signature. [Reason "
                    "- The provided signature value did not match the "
                    "expected signature value., Thumbprint of key used by "
                    "client: '%s']" % thumb)
        if claims.get("iss") != client["id"] or \
                claims.get("sub") != client["id"]:
            return (400, "invalid_client", 700021,
                    "Client assertion application identifier doesn't match "
                    "'client_id' parameter.")
        aud = "%s/%s/oauth2/v2.0/token" % (self.server.base_url, tenant)
        if claims.get("aud") != aud:
            return (400, "invalid_client", 700023,
                    "Client assertion audience claim does not match Realm "
                    "issuer. Review the documentation at "
                    "https://aka.ms/certCreds. (aud %r, expected %r)"
                    % (claims.get("aud"), aud))
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf", now)
        if not isinstance(exp, (int, float)) or \
                not isinstance(nbf, (int, float)) or \
                exp + ASSERTION_SKEW_S < now or nbf - ASSERTION_SKEW_S > now:
            return (400, "invalid_client", 700024,
                    "Client assertion is not within its valid time range. "
                    "Current time: %s, assertion valid from %s, expiry time "
                    "of assertion %s." % (now, nbf, exp))
        if not claims.get("jti"):
            return malformed("no jti claim")
        return None

    # -- control API

    def _control(self):
        st = self.server.state
        self.kind = "control"
        try:
            body = self._read_body()
        except BadRequest as e:
            return self._json(400, {"error": str(e)})
        what = self.path_only[len("/_fake/"):].strip("/")
        try:
            arg = json.loads(body) if body else None
        except ValueError as e:
            return self._json(400, {"error": "bad JSON: %s" % e})
        get = self.command == "GET"
        post = self.command == "POST"
        try:
            if what == "sent" and get:
                with st.lock:
                    out = list(st.sent)
                return self._json(200, out)
            if what == "requests" and get:
                with st.lock:
                    out = list(st.requests)
                return self._json(200, out)
            if what == "stats" and get:
                return self._json(200, self._stats())
            if what == "drafts" and get:
                with st.lock:
                    out = [self._draft_info(d) for d in st.drafts.values()]
                return self._json(200, out)
            if what == "sessions" and get:
                with st.lock:
                    out = [self._session_info(x)
                           for x in st.sessions.values()]
                return self._json(200, out)
            if what == "config" and (get or post):
                if post:
                    if not isinstance(arg, dict):
                        raise BadConfig("config needs a JSON object")
                    new = st.config.copy()
                    new.update(arg)
                    st.config = new     # readers see old or new, whole
                return self._json(200, st.config.as_json())
            if what == "faults" and (get or post):
                if post:
                    if not isinstance(arg, list):
                        raise BadConfig("faults needs a JSON list of rules")
                    rules = [parse_fault(r) for r in arg]
                    with st.lock:
                        st.faults = rules
                return self._json(200, st.faults_json())
            if what == "reset" and post:
                with st.lock:
                    st.clear()
                    st.faults = []
                    st.config = st.initial.copy()
                    if isinstance(arg, dict) and arg.get("tokens"):
                        st.tokens.clear()
                return self._json(200, {"ok": True})
        except BadConfig as e:
            return self._json(400, {"error": str(e)})
        return self._json(404, {"error": "no such control call: %s %s"
                                % (self.command, self.path_only)})

    @staticmethod
    def _draft_info(d):
        return dict(d["summary"], id=d["id"], mailbox=d["mailbox"],
                    format=d["format"], size=d["size"], created=d["created"],
                    hidden=d["hidden"],
                    attachments=[dict(a) for a in d["attachments"]])

    @staticmethod
    def _session_info(x):
        return dict(x["item"], id=x["id"], draft_id=x["draft_id"],
                    mailbox=x["mailbox"], uploadUrl=x["url"],
                    next=x["next"], created=x["created"],
                    expirationDateTime=session_datetime(x["expires_wall"]),
                    expired=x["expired"]
                    or time.monotonic() >= x["expires"])

    def _stats(self):
        st = self.server.state
        with st.lock:
            return {
                "requests": st.request_count,
                "sent": st.sent_count,
                "token_requests": st.token_requests,
                "tokens_issued": st.tokens_issued,
                "status_counts": dict(st.status_counts),
                "code_counts": dict(st.code_counts),
                "max_concurrency": dict(st.max_inflight),
                "inflight": {k: v for k, v in st.inflight.items() if v},
                "throttled": st.throttled,
                "drafts": len(st.drafts),
                "upload_sessions": len(st.sessions),
                "uploaded_bytes": st.uploaded_bytes,
                "faults_fired": sum(r["fired"] for r in st.faults),
                "validating": self.server.validator is not None,
            }


class BadRequest(Exception):
    pass


# --------------------------------------------------------------------------
# start-up

def parse_listen(s):
    m = re.match(r"^\[([^\]]+)\]:(\d+)$", s) or re.match(r"^([^:]+):(\d+)$",
                                                          s)
    if not m:
        raise SystemExit("fakegraph: --listen wants HOST:PORT or [V6]:PORT, "
                         "not %r" % s)
    return m.group(1), int(m.group(2))


def write_port_file(path, port):
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
    os.rename(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Fake Microsoft Graph sendMail + Entra token server.")
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT")
    ap.add_argument("--port-file", help="write the port here once listening")
    ap.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS")
    ap.add_argument("--tls-key", help="PEM private key for --tls-cert")
    ap.add_argument("--schema", default=None,
                    help="graph-mail-v1.0.schema.json (default: "
                    "$RELAYD_GRAPH_SCHEMA, else ../shared/graph/schemas/ "
                    "beside the repository or above it)")
    ap.add_argument("--latency-ms", type=float, default=0.0,
                    help="every Graph request waits this long")
    ap.add_argument("--token-lifetime", type=float, default=3599.0,
                    help="seconds a token is valid")
    ap.add_argument("--tenant", action="append",
                    help="known tenant (repeatable; default contoso-tenant)")
    ap.add_argument("--client-id", default="relayd-client")
    ap.add_argument("--client-secret", default="s3cret")
    ap.add_argument("--max-concurrency", type=int, default=4,
                    help="requests per mailbox at once; 0: no limit")
    ap.add_argument("--base-url", help="this server's URL as clients see it "
                    "(default: scheme://HOST:PORT from --listen)")
    ap.add_argument("--no-record", action="store_true",
                    help="count, but keep no sent messages or request list "
                    "(for benchmarks)")
    ap.add_argument("--verbose", action="store_true",
                    help="log one line per request to stderr")
    args = ap.parse_args(argv)

    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    host, port = parse_listen(args.listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    cfg = Config()
    cfg.update({
        "latency_ms": args.latency_ms,
        "token_lifetime": args.token_lifetime,
        "tenants": args.tenant or ["contoso-tenant"],
        "clients": {args.client_id: {"secret": args.client_secret}},
        "max_concurrency": args.max_concurrency,
    })
    schema = args.schema or default_schema()
    validators = {}
    if os.path.exists(schema):
        validators = load_validators(schema)
        # Compile the validators' lazily built parts now, not in the first
        # request's time.
        validators["sendMail"].is_valid({"message": {"toRecipients": [
            {"emailAddress": {"address": "a@b.c"}}]}})
        for v in validators.values():
            v.is_valid({})
    elif args.schema:
        raise SystemExit("fakegraph: schema %s not found" % schema)
    else:
        # A checkout without ../shared (a newcomer's demo): run, but say
        # plainly that bodies are not checked against Graph's schema.
        print("fakegraph: warning: schema %s not found; request bodies are "
              "NOT validated (give --schema or set RELAYD_GRAPH_SCHEMA)"
              % schema, file=sys.stderr, flush=True)

    ctx = None
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        ctx.set_alpn_protocols(["http/1.1"])    # no HTTP/2 here

    state = State(cfg, record=not args.no_record)
    server = FakeGraphServer((host, port), family, state, ctx, None,
                             validators, args.verbose)
    real_port = server.server_address[1]
    scheme = "https" if ctx else "http"
    server.base_url = (args.base_url.rstrip("/") if args.base_url else
                       "%s://%s:%d" % (scheme, "[%s]" % host if ":" in host
                                       else host, real_port))

    def stop(signum, frame):
        server.stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.port_file:
        write_port_file(args.port_file, real_port)
    log("listening on %s (schema %s)" % (server.base_url,
                                         os.path.normpath(schema)))
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
