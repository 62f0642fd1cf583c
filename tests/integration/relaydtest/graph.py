"""The fake Microsoft Graph (tests/fakegraph.py): FakeGraph runs one and
is a client for its control API; graph_sections() / graph_relayd() point
a relayd at it; sendmail_validator() checks sendMail bodies against the
shared schema.

RELAYD_GRAPH_SCHEMA  graph-mail-v1.0.schema.json for the fake (default:
                     shared/graph/schemas/ beside or above the source tree)
"""
import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
from pathlib import Path

from relaydtest.env import IO_TIMEOUT, SRCDIR, START_TIMEOUT, STOP_TIMEOUT
from relaydtest.wait import wait_for

FAKEGRAPH = SRCDIR / "tests" / "fakegraph.py"
FAKE_TENANT = "contoso-tenant"
FAKE_CLIENT_ID = "relayd-client"
FAKE_SECRET = "s3cret"

# How a client's going away or a refused TLS handshake shows in a traceback:
# not a bug in the fake.
DISCONNECT_EXC_RE = re.compile(
    r"^(ConnectionResetError|BrokenPipeError|ConnectionAbortedError|"
    r"TimeoutError|socket\.timeout|ssl\.SSL\w*Error|ssl\.SSLError)\b")


class FakeGraph:
    """One tests/fakegraph.py process and a client for its control API.

    url is the base URL (token endpoint and Graph alike). Records are
    JSON: sent() -> [{"mailbox", "format" ("json"|"mime"), "body" (parsed
    JSON or the decoded MIME text), "headers", "time", "request_id", ...}],
    requests() -> [{"method", "path", "status", "code", "kind", "mailbox",
    ...}], stats() -> {"sent", "token_requests", "max_concurrency":
    {mailbox: n}, "status_counts", ...}."""

    def __init__(self, workdir, tls=None, args=(), name="fakegraph"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.tls = tls                  # a CertAuthority, or None
        self.args = list(args)
        self.log_path = self.workdir / (name + ".log")
        self.port_file = self.workdir / (name + ".port")
        self.tenant = FAKE_TENANT
        self.client_id = FAKE_CLIENT_ID
        self.secret = FAKE_SECRET
        self.proc = None
        self.logf = None
        self.port = None
        self.url = None
        self.expect_dead = False
        self._secret_files = {}

    # -- process
    def start(self):
        try:
            self.port_file.unlink()
        except FileNotFoundError:
            pass
        cmd = [sys.executable, str(FAKEGRAPH), "--listen", "127.0.0.1:0",
               "--port-file", str(self.port_file), "--verbose"]
        if self.tls is not None:
            cmd += ["--tls-cert", str(self.tls.cert_file),
                    "--tls-key", str(self.tls.key_file)]
        cmd += self.args
        if self.logf is None:
            self.logf = open(self.log_path, "ab")
        self.expect_dead = False
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf,
                                     close_fds=True)

        def port():
            if self.proc.poll() is not None:
                raise AssertionError("fake graph exited with %s at start:\n%s"
                                     % (self.proc.returncode, self.log))
            try:
                return int(self.port_file.read_text())
            except (FileNotFoundError, ValueError):
                return None
        self.port = wait_for(port, START_TIMEOUT, "the fake graph's port")
        self.url = "%s://127.0.0.1:%d" % ("https" if self.tls else "http",
                                          self.port)
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT):
        self.expect_dead = True
        if not self.running():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("fake graph did not stop %ss after SIGTERM"
                                 % timeout)

    def close(self):
        if self.logf is not None:
            self.logf.close()
            self.logf = None

    @property
    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tracebacks(self, since=0):
        """Python tracebacks in the log (from character `since` on), except
        those that end in a client disconnect or a TLS error."""
        lines = self.log[since:].splitlines()
        found, i = [], 0
        while i < len(lines):
            if not lines[i].startswith("Traceback (most recent call last)"):
                i += 1
                continue
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ")
                                      or not lines[j]):
                j += 1
            last = lines[j] if j < len(lines) else ""
            if not DISCONNECT_EXC_RE.match(last):
                found.append("\n".join(lines[i:j + 1]))
            i = j + 1
        return found

    # -- HTTP to the fake
    def ssl_context(self):
        """Verifies the fake with the test CA (None for plain HTTP)."""
        if self.tls is None:
            return None
        return ssl.create_default_context(cafile=str(self.tls.ca_file))

    def connection(self, timeout=IO_TIMEOUT, context=None):
        """A new http.client connection to the fake."""
        if self.tls is not None:
            return http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=timeout,
                context=context or self.ssl_context())
        return http.client.HTTPConnection("127.0.0.1", self.port,
                                          timeout=timeout)

    def request(self, method, path, body=None, headers=None,
                timeout=IO_TIMEOUT, conn=None):
        """One request; returns (status, headers, body bytes). body may be
        a dict/list (sent as JSON), str or bytes. Uses conn if given (and
        leaves it open), else a new connection."""
        hdrs = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        c = conn or self.connection(timeout)
        try:
            c.request(method, path, body=body, headers=hdrs)
            r = c.getresponse()
            data = r.read()
            return r.status, r.headers, data
        finally:
            if conn is None:
                c.close()

    def _call(self, method, what, obj=None):
        status, _, data = self.request(method, "/_fake/" + what,
                                       body=obj if obj is not None else None)
        out = json.loads(data) if data else None
        if status != 200:
            raise AssertionError("fake graph: %s /_fake/%s -> %s %s"
                                 % (method, what, status, out))
        return out

    def sent(self):
        return self._call("GET", "sent")

    def requests(self):
        return self._call("GET", "requests")

    def stats(self):
        return self._call("GET", "stats")

    def reset(self, tokens=False):
        """Forgets records, counters and faults; start-up config again.
        tokens=True also revokes every token issued."""
        return self._call("POST", "reset", {"tokens": bool(tokens)})

    def config(self, **kw):
        """Changes behaviour, e.g. config(latency_ms=200,
        unknown_mailboxes=["gone@contoso.test"], send_as_deny="strict",
        clients={"relayd-client": {"secret": "s3cret", "expired": True}}).
        Returns the whole config in force."""
        return self._call("POST", "config", kw) if kw else \
            self._call("GET", "config")

    def faults(self, rules=None):
        """Replaces the fault rules (a list; [] clears them) and returns
        them; with no argument, returns the rules left."""
        if rules is None:
            return self._call("GET", "faults")
        return self._call("POST", "faults", list(rules))

    def drafts(self):
        """Drafts not yet sent or deleted (fakegraph's /_fake/drafts)."""
        return self._call("GET", "drafts")

    def sessions(self):
        """Upload sessions still open (fakegraph's /_fake/sessions)."""
        return self._call("GET", "sessions")

    def uploads(self):
        """The requests to uploadUrls, in order: each record's "upload"
        (session, content_range, start, end, total, length, authorization)
        with its method and status."""
        return [dict(r["upload"], method=r["method"], status=r["status"],
                     code=r["code"])
                for r in self.requests() if r["kind"] == "upload"]

    def wait_sent(self, n, timeout=IO_TIMEOUT):
        """Polls until at least n messages were accepted; returns them."""
        wait_for(lambda: self.stats()["sent"] >= n, timeout,
                 "%d message(s) accepted by the fake graph" % n,
                 interval=0.02)
        return self.sent()

    # -- as relayd's client would
    def token_form(self, **kw):
        form = {"client_id": self.client_id, "client_secret": self.secret,
                "grant_type": "client_credentials",
                "scope": self.url + "/.default"}
        form.update(kw)
        return {k: v for k, v in form.items() if v is not None}

    def token(self, **kw):
        """A fresh access token (form fields can be overridden)."""
        import urllib.parse
        status, _, data = self.request(
            "POST", "/%s/oauth2/v2.0/token" % self.tenant,
            urllib.parse.urlencode(self.token_form(**kw)),
            {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200, (status, data)
        return json.loads(data)["access_token"]

    def send_mail(self, mailbox, doc, token=None, headers=None, conn=None,
                  timeout=IO_TIMEOUT):
        """POSTs sendMail (doc: dict as JSON, or bytes/str as given);
        returns (status, headers, parsed JSON body or None)."""
        import urllib.parse
        hdrs = {"Authorization": "Bearer %s" % (token or self.token())}
        hdrs.update(headers or {})
        status, h, data = self.request(
            "POST", "/v1.0/users/%s/sendMail" % urllib.parse.quote(mailbox),
            doc, hdrs, timeout=timeout, conn=conn)
        return status, h, (json.loads(data) if data else None)

    def graph_sections(self, **overrides):
        return graph_sections(self, **overrides)

    def secret_file(self, secret=None):
        """A 0600 file holding the secret (no newline); one per value."""
        secret = self.secret if secret is None else secret
        path = self._secret_files.get(secret)
        if path is None:
            path = self.workdir / ("client_secret.%d"
                                   % len(self._secret_files))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret)
            self._secret_files[secret] = path
        return path


def graph_sections(fake, secret=None, **overrides):
    """relayd config sections pointing [graph] at a FakeGraph: use as
    relayd_factory(sections=graph_sections(fake)). Overrides set keys (a
    value of None removes the key); secret="..." writes a different secret
    to client_secret_file."""
    g = {"tenant": fake.tenant, "client_id": fake.client_id,
         "client_secret_file": str(fake.secret_file(secret)),
         "login_url": fake.url, "graph_url": fake.url}
    if fake.tls is not None:
        g["ca_file"] = str(fake.tls.ca_file)
    for k, v in overrides.items():
        if v is None:
            g.pop(k, None)
        else:
            g[k] = v
    return {"graph": g}


def graph_schema_path():
    """graph-mail-v1.0.schema.json where the fake finds it by default:
    $RELAYD_GRAPH_SCHEMA, else shared/graph/schemas/ beside the source tree
    or in a directory above it (a distcheck tree lives in the checkout)."""
    env = os.environ.get("RELAYD_GRAPH_SCHEMA")
    if env:
        return Path(env)
    rel = Path("shared") / "graph" / "schemas" / "graph-mail-v1.0.schema.json"
    for d in SRCDIR.resolve().parents:
        if (d / rel).is_file():
            return d / rel
    return SRCDIR.parent / rel


def graph_relayd(relayd_factory, fake, queue=None, start=True, **graph):
    """relayd_factory(...) for a daemon that delivers to fake: graph= keys
    override graph_sections() (None removes one; secret="..." for another
    secret), queue= keys go to [queue], where retry_min is 200ms and
    messages_per_minute 0 (no pacing) unless given: the defaults (30s, 30)
    are too slow for a test."""
    sections = graph_sections(fake, **graph)
    sections["queue"] = dict({"retry_min": "200ms",
                              "messages_per_minute": "0"}, **(queue or {}))
    return relayd_factory(sections=sections, start=start)


_sendmail_validators = {}


def sendmail_validator():
    """A jsonschema validator for graph.sendMailRequest, built once; None
    when the shared schema is absent."""
    path = graph_schema_path()
    if path not in _sendmail_validators:
        validator = None
        if path.is_file():
            import jsonschema
            root = json.loads(path.read_text(encoding="utf-8"))
            schema = {"$schema": root["$schema"], "$defs": root["$defs"],
                      "$ref": "#/$defs/graph.sendMailRequest"}
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            validator = cls(schema)
        _sendmail_validators[path] = validator
    return _sendmail_validators[path]


def assert_sendmail_valid(validator, doc):
    errors = sorted(validator.iter_errors(doc), key=str)
    assert not errors, "body fails graph.sendMailRequest: %s\n%s" % (
        "; ".join("%s at /%s" % (e.message, "/".join(
            map(str, e.absolute_path))) for e in errors),
        json.dumps(doc, indent=1)[:2000])
