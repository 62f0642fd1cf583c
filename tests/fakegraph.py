#!/usr/bin/python3
"""
fakegraph: a fake Microsoft Graph (sendMail) and Entra ID token service for
relayd's integration tests and benchmarks.

One port serves both
    POST /{tenant}/oauth2/v2.0/token        client credentials (secret, HTTP
                                            Basic, or a certificate's JWT
                                            client assertion)
    POST /v1.0/users/{mailbox}/sendMail     JSON or base64 MIME (text/plain)
so relayd's login_url and graph_url can both be this server's base URL, and
a control API without authentication:
    GET  /_fake/sent       accepted messages
    GET  /_fake/requests   every request: method, path, status, code, ...;
                           a token request's "token": its scope and the
                           client assertion's header and claims
    GET  /_fake/stats      counters, highest concurrency seen per mailbox
    GET  /_fake/config     the behaviour now in force
    POST /_fake/config     change it (JSON object of the keys to change)
    POST /_fake/reset      forget records, counters and faults; back to the
                           start-up config ({"tokens": true} also revokes
                           every token issued)
    GET  /_fake/faults     fault rules and how often each may still fire
    POST /_fake/faults     replace the fault rules (JSON list)

Fault rules (POST /_fake/faults, a JSON list) are tried in order; the first
that matches a request and has firings left is used up once ("count",
default 1, -1 = forever). Match keys, all optional: "kind" ("token" or
"graph"), "path" (regex searched in the path), "mailbox" (case-insensitive),
"method", "p" (0..1: the chance that the rule fires for a request it
matches; when it does not, the request goes on to the next rules and the
rule's count is not used up). Actions: {"status": N, "code", "message", "retry_after",
"headers", "aadsts"} answers with that error (Graph or Entra shaped by
kind; a 429 gets Retry-After = throttle_retry_after unless "retry_after" is
given, null for none); {"drop": true} closes without an answer (FIN),
{"reset": true} with an RST; {"delay_ms": N} waits, then goes on normally
(or with the rule's other action); {"expire_token": true} expires the token
presented (401, and it stays expired); {"hang": true} never answers until
the client leaves or the server stops.

Behaviour follows shared/graph/FACTS.md (sections 1, 2, 4, 5 and 7). Not
modelled: drafts and upload sessions, /me, $batch, rate limits other than
the per-mailbox concurrency limit.

Start-up: parses arguments, compiles the JSON Schema validator once, binds,
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
import email.parser
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
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

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
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_SKEW_S = 300                  # clock skew allowed on nbf/exp
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"

TOKEN_RE = re.compile(r"^/([^/]+)/oauth2/v2\.0/token$")
USERS_RE = re.compile(r"^/v1\.0/users/([^/]+)(/.*)?$", re.I)
SENDMAIL_TAIL_RE = re.compile(r"^/sendmail$", re.I)

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
    100: "Continue", 200: "OK", 202: "Accepted", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict",
    413: "Request Entity Too Large", 415: "Unsupported Media Type",
    429: "Too Many Requests", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}

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


class BadConfig(ValueError):
    pass


# --------------------------------------------------------------------------
# schema

def load_validator(path):
    """A Draft 2020-12 validator for graph.sendMailRequest, built once."""
    with open(path, encoding="utf-8") as f:
        root = json.load(f)
    schema = {"$schema": root.get("$schema"), "$defs": root["$defs"],
              "$ref": "#/$defs/graph.sendMailRequest"}
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    return cls(schema)


def describe_schema_error(doc, err):
    """(code, message) for a body the schema rejects. Unknown property names
    get Graph's RequestBodyRead wording; anything else names the schema
    error and where it happened."""
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
        if not err.absolute_path:
            return ("RequestBodyRead",
                    "The parameter '%s' in the request payload is not a "
                    "valid parameter for the operation 'sendMail'. "
                    "[schema: %s at %s]" % (name, err.message, where))
        return ("RequestBodyRead",
                "The property '%s' does not exist on type '%s'. Make sure "
                "to only use property names that are defined by the type "
                "or mark the type as open type. [schema: %s at %s]"
                % (name, owner, err.message, where))
    return ("BadRequest", "Invalid request body: %s at %s [schema rule %s]"
            % (err.message, where, err.validator))


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
            "throttle_retry_after", "scope")

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
        }


FAULT_KEYS = {"count", "path", "mailbox", "kind", "method", "status", "code",
              "message", "retry_after", "headers", "drop", "reset",
              "delay_ms", "expire_token", "hang", "aadsts", "p"}


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
    if r.get("kind") not in (None, "token", "graph"):
        raise BadConfig('fault kind must be "token" or "graph"')
    if "p" in r and (isinstance(r["p"], bool)
                     or not isinstance(r["p"], (int, float))
                     or not 0 <= r["p"] <= 1):
        raise BadConfig("fault p must be a number from 0 to 1")
    actions = [a for a in ("status", "drop", "reset", "expire_token",
                           "hang") if r.get(a)]
    if len(actions) > 1:
        raise BadConfig("fault rule has more than one action: %s" % actions)
    if not actions and not r.get("delay_ms"):
        raise BadConfig("fault rule needs an action: status, drop, reset, "
                        "delay_ms, expire_token or hang")
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

    def take_fault(self, kind, method, path, mailbox):
        """The first rule that matches and may still fire, used up once."""
        with self.lock:
            for r in self.faults:
                if r["count"] == 0:
                    continue
                if r.get("kind") and r["kind"] != kind:
                    continue
                if r.get("method") and r["method"].upper() != method:
                    continue
                if r["_path_re"] is not None and not r["_path_re"].search(
                        path):
                    continue
                if r.get("mailbox") and (mailbox is None or r[
                        "mailbox"].lower() != mailbox.lower()):
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
                 validator, verbose):
        self.address_family = family
        self.state = state
        self.ssl_context = ssl_context
        self.base_url = base_url
        self.validator = validator
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
        self.path_only = urlsplit(self.path).path
        if self.path_only.startswith("/_fake/"):
            return self._control()
        m = TOKEN_RE.match(self.path_only)
        if m:
            self.kind = "token"
        else:
            self.kind = "graph"
            um = USERS_RE.match(self.path_only)
            if um:
                self.mailbox = unquote(um.group(1))
        try:
            self._serve(m)
        except Drop:
            pass
        finally:
            self._book()

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
                st.requests.append({
                    "time": time.time(), "method": self.command,
                    "path": self.path, "status": status, "code": code,
                    "kind": self.kind, "mailbox": self.mailbox,
                    "request_id": self.rid, "client_request_id": self.crid,
                    "ms": round((time.monotonic() - self.t0) * 1000, 3),
                    "token": self.token_info})
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
               "client-request-id: %s" % self.crid,
               "Content-Length: %d" % len(body)]
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
        True if the request was answered (or dropped), False to go on."""
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

    def _graph_rest(self, body, mb):
        st = self.server.state
        cfg = st.config
        rule = st.take_fault("graph", self.command, self.path_only,
                             self.mailbox)
        expire = False
        if rule:
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
        if not SENDMAIL_TAIL_RE.match(tail.group(2)):
            seg = tail.group(2).strip("/").split("/", 1)[0]
            return self.graph_error(400, "BadRequest",
                                    "Resource not found for the segment "
                                    "'%s'." % seg)
        if self.command != "POST":
            return self.graph_error(405, "Request_BadRequest",
                                    "The HTTP method '%s' is not allowed for "
                                    "sendMail." % self.command)
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype.lower() == "application/json":
            return self._sendmail_json(body, cfg)
        if ctype.lower() == "text/plain":
            return self._sendmail_mime(body, cfg)
        return self.graph_error(415, "UnsupportedMediaType",
                                "Content-Type '%s' is not supported: use "
                                "application/json or text/plain (base64 "
                                "MIME)." % ctype)

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

    def _accepted(self, fmt, record_body, extra=None):
        st = self.server.state
        with st.lock:
            st.sent_count += 1
            if st.record:
                rec = {"mailbox": self.mailbox, "format": fmt,
                       "body": record_body, "headers": dict(self.headers),
                       "time": time.time(), "request_id": self.rid,
                       "client_request_id": self.crid}
                rec.update(extra or {})
                st.sent.append(rec)
        self.result = (202, "")
        self._send(202)

    def _sendmail_json(self, body, cfg):
        try:
            doc = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            return self.graph_error(
                400, "BadRequest", "Unable to read JSON request payload. "
                "Please ensure Content-Type header is set and payload is of "
                "valid JSON format. (%s)" % e)
        msg = None
        if isinstance(doc, dict):
            msg = doc.get("message", doc.get("Message"))
        if isinstance(msg, dict):
            hdrs = msg.get("internetMessageHeaders")
            if isinstance(hdrs, list):
                if len(hdrs) > MAX_HEADERS_PER_MESSAGE or not hdrs:
                    return self.graph_error(
                        400, "InvalidInternetMessageHeaderCollection",
                        "Maximum number of headers in one message should be "
                        "less than or equal to 5." if hdrs else
                        "The internet message header collection is empty.")
                for h in hdrs:
                    name = h.get("name") if isinstance(h, dict) else None
                    if isinstance(name, str) and not name.lower().startswith(
                            "x-"):
                        return self.graph_error(
                            400, "InvalidInternetMessageHeader",
                            "The internet message header name '%s' should "
                            "start with 'x-' or 'X-'." % name)
        validator = self.server.validator
        if validator is not None and not validator.is_valid(doc):
            err = jsonschema.exceptions.best_match(validator.iter_errors(doc))
            code, text = describe_schema_error(doc, err)
            return self.graph_error(400, code, text)
        rcpts = sum(len(msg.get(k) or ()) for k in
                    ("toRecipients", "ccRecipients", "bccRecipients"))
        if rcpts == 0:
            return self.graph_error(
                400, "ErrorInvalidRecipients",
                "At least one recipient is not valid., A message can't be "
                "sent because it contains no recipients.")
        sender = ((msg.get("from") or {}).get("emailAddress") or {}).get(
            "address")
        if not self._send_as_ok(cfg, self.mailbox.lower(), sender):
            return self._send_as_denied()
        self._accepted("json", doc)

    def _send_as_denied(self):
        self.graph_error(
            403, "ErrorSendAsDenied",
            "The user account which was used to submit this request does not "
            "have the right to send mail on behalf of the specified sending "
            "account. Cannot submit message.")

    def _sendmail_mime(self, body, cfg):
        compact = b"".join(body.split())
        try:
            if not compact or len(compact) % 4:
                raise binascii.Error("bad length")
            mime = base64.b64decode(compact, validate=True)
        except binascii.Error:
            return self.graph_error(400, "ErrorMimeContentInvalidBase64String",
                                    "Invalid base64 string for MIME "
                                    "content.")
        head = mime.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        msg = email.parser.BytesHeaderParser().parsebytes(head + b"\n\n")
        if not mime.strip() or not msg.keys():
            return self.graph_error(
                400, "ErrorMimeContentInvalid",
                "MIME content does not contain all required information, "
                "malformed formatting, or empty.")
        fields = []
        for h in ("To", "Cc", "Bcc"):
            fields += [str(v) for v in msg.get_all(h) or ()]
        rcpts = [a for _, a in email.utils.getaddresses(fields) if "@" in a]
        if not rcpts:
            return self.graph_error(
                400, "ErrorInvalidRecipients",
                "At least one recipient is not valid., A message can't be "
                "sent because it contains no recipients.")
        froms = email.utils.getaddresses([str(v) for v in
                                          msg.get_all("From") or ()])
        sender = froms[0][1] if froms else None
        if not self._send_as_ok(cfg, self.mailbox.lower(), sender):
            return self._send_as_denied()
        self._accepted("mime", mime.decode("utf-8", "surrogateescape"),
                       {"raw_base64": compact.decode("ascii")})

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
    validator = None
    if os.path.exists(schema):
        validator = load_validator(schema)
        # Compile the validator's lazily built parts now, not in the first
        # request's time.
        validator.is_valid({"message": {"toRecipients": [
            {"emailAddress": {"address": "a@b.c"}}]}})
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
                             validator, args.verbose)
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
