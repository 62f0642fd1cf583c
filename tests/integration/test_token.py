"""The access token and the [graph] credentials, end to end: the real daemon
asks the fake token service (tests/fakegraph.py) and delivers with what it
gets; wrong credentials are named in the log and cost no message; a broken
[graph] configuration stops relayd before it starts (exit 78)."""
import os
import re
import smtplib
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from relaydtest.delivery import DELIVERY_TIMEOUT, kinds, token_lines
from relaydtest.env import EX_CONFIG, RELAYD_BIN
from relaydtest.graph import graph_relayd, graph_sections
from relaydtest.smtp import SENDER, simple, smtp_send
from relaydtest.wait import wait_for


# --------------------------------------------------------------------------
# helpers


def assert_secret_not_logged(d, *secrets):
    log = d.log
    for s in secrets:
        for form in {s, urllib.parse.quote(s, safe=""),
                     urllib.parse.quote_plus(s)}:
            assert form not in log, "the secret %r is in the log" % form


class TokenRecorder:
    """An HTTP server in the test process between relayd and the fake's
    token endpoint (relayd's login_url): keeps every request as relayd sent
    it, hands it on to the fake and relays the answer. The fake itself
    checks a token request but does not keep it."""

    def __init__(self, fake):
        self.records = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                recorder.records.append({"path": self.path,
                                         "headers": dict(self.headers),
                                         "body": body})
                status, headers, data = fake.request(
                    "POST", self.path, body,
                    {"Content-Type": self.headers.get("Content-Type", "")})
                self.send_response(status)
                self.send_header("Content-Type", headers["Content-Type"])
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def token_recorder(shared_fake_graph):
    r = TokenRecorder(shared_fake_graph)
    yield r
    r.close()


# --------------------------------------------------------------------------
# 3. one token, refreshed in time, renewed after a 401

def test_one_token_for_many_messages(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake)
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        s.ehlo("client.test")
        for i in range(20):
            smtp_send(d, simple("many %d" % i), conn=s)
    fake.wait_sent(20, DELIVERY_TIMEOUT)
    wait_for(lambda: d.queued() == [], 5, "an empty queue/")
    st = fake.stats()
    assert st["token_requests"] == 1 and st["tokens_issued"] == 1, st
    assert st["status_counts"] == {"200": 1, "202": 20}, st
    assert token_lines(d) == ["token: new access token expires_in=3599s"]


def test_token_refreshed_before_expiry(relayd_factory, shared_fake_graph):
    """Tokens that live 3 s, a message every 0.5 s for 5.5 s: relayd gets a
    new token before the old one expires, so Graph never says 401."""
    fake = shared_fake_graph
    fake.config(token_lifetime=3)
    d = graph_relayd(relayd_factory, fake)
    t0 = time.monotonic()
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        s.ehlo("client.test")
        for i in range(12):
            # paced by the clock, not by sleeps that add up
            wait_for(lambda: time.monotonic() >= t0 + i * 0.5, 2,
                     "message %d's turn" % i)
            smtp_send(d, simple("paced %d" % i), conn=s)
    fake.wait_sent(12, DELIVERY_TIMEOUT)
    reqs = fake.requests()
    assert [r["status"] for r in reqs if r["kind"] == "graph"] == [202] * 12
    tokens = [r for r in reqs if r["kind"] == "token"]
    assert len(tokens) >= 2, kinds(fake)
    assert all(r["status"] == 200 for r in tokens)
    # every sendMail went out with a token less than 3 s old
    for g in (r for r in reqs if r["kind"] == "graph"):
        start = g["time"] - g["ms"] / 1000.0
        issued = [t["time"] for t in tokens if t["time"] <= start]
        assert issued and start - issued[-1] < 3.0, (g, tokens)
    assert token_lines(d) == ["token: new access token expires_in=3s"] * \
        len(tokens)


@pytest.mark.parametrize("rejections", [1, 2])
def test_expired_token_renewed_once(relayd_factory, shared_fake_graph,
                                    rejections):
    """A 401 InvalidAuthenticationToken: one new token and one more try
    right away. A second 401 in a row defers the message (no loop); the
    next attempt starts with a fresh token again."""
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "expire_token": True,
                  "count": rejections}])
    d = graph_relayd(relayd_factory, fake)
    qid = smtp_send(d, simple("expired"))
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    wait_for(lambda: d.queued() == [], 5, "an empty queue/")
    want = [("token", 200), ("graph", 401)] * rejections + \
        [("token", 200), ("graph", 202)]
    assert kinds(fake) == want
    assert [r["code"] for r in fake.requests() if r["status"] == 401] == \
        ["InvalidAuthenticationToken"] * rejections
    assert rec["body"]["message"]["subject"] == "expired"
    assert fake.stats()["sent"] == 1
    deferred = re.findall(r" %s graph deferred (.*)$" % qid, d.log, re.M)
    if rejections == 1:
        assert deferred == []
    else:
        [line] = deferred
        assert line.startswith(
            "mailbox=%s graph_status=401 code=InvalidAuthenticationToken "
            % SENDER), line
    assert len(re.findall(r" %s graph sent " % qid, d.log)) == 1
    assert len(token_lines(d)) == rejections + 1


def test_token_request_form(relayd_factory, shared_fake_graph,
                            token_recorder):
    """The client-credentials request as relayd sends it, with a secret
    that needs URL encoding (Entra secrets hold ~ . _ -; this one more)."""
    fake = shared_fake_graph
    secret = "Xy7~Q.a_b-c+d/e=f&g%h i\u00e9"
    fake.config(clients={fake.client_id: {"secret": secret}})
    d = graph_relayd(relayd_factory, fake, secret=secret,
                     login_url=token_recorder.url)
    smtp_send(d, simple("form"))
    fake.wait_sent(1, DELIVERY_TIMEOUT)
    [rec] = token_recorder.records
    assert rec["path"] == "/%s/oauth2/v2.0/token" % fake.tenant
    assert rec["headers"]["Content-Type"] == \
        "application/x-www-form-urlencoded"
    pairs = urllib.parse.parse_qsl(rec["body"].decode("ascii"),
                                   keep_blank_values=True,
                                   strict_parsing=True)
    assert sorted(pairs) == sorted([
        ("grant_type", "client_credentials"),
        ("client_id", fake.client_id),
        ("scope", fake.url + "/.default"),
        ("client_secret", secret),
    ])
    st = fake.stats()
    assert st["tokens_issued"] == 1 and st["sent"] == 1
    assert_secret_not_logged(d, secret)


# --------------------------------------------------------------------------
# 4. token errors: named in the log, the message waits

TOKEN_ERRORS = {
    "wrong_secret": (
        {"secret": "not-the-secret-7f3a"}, None,
        "token: AADSTS7000215 invalid client secret (check "
        "client_secret_file: it must hold the secret's Value, not its ID)"),
    "unknown_tenant": (
        {"tenant": "fabrikam-tenant"}, None,
        "token: AADSTS90002 tenant not found (check tenant)"),
    "unknown_client": (
        {"client_id": "no-such-app"}, None,
        "token: AADSTS700016 application not found in the tenant (check "
        "client_id and tenant, and that admin consent was given)"),
    "expired_secret": (
        {}, {"clients": {"relayd-client": {"secret": "s3cret",
                                           "expired": True}}},
        "token: AADSTS7000222 client secret expired (create a new one "
        "under the app registration's Certificates & secrets, then update "
        "client_secret_file)"),
}


@pytest.mark.parametrize("case", sorted(TOKEN_ERRORS))
def test_token_error_keeps_message_queued(relayd_factory, shared_fake_graph,
                                          case):
    fake = shared_fake_graph
    graph, fake_config, hint = TOKEN_ERRORS[case]
    if fake_config:
        fake.config(**fake_config)
    d = graph_relayd(relayd_factory, fake, **graph)
    qid = smtp_send(d, simple("token " + case))
    m = d.wait_log(r"^\S+ relayd: (token: .*)$", DELIVERY_TIMEOUT)
    assert m.group(1) == hint + "; next attempt in 5s"
    line = d.wait_log(r" %s graph deferred (.*)$" % qid).group(1)
    assert line.startswith('mailbox=%s graph_status=0 code=token message="%s'
                           % (SENDER, hint[len("token: "):])), line
    # The message waits in queue/; Graph was not asked, the token service
    # once (the next attempt is 5 s away).
    assert d.queued() == [qid] and d.dead() == []
    assert kinds(fake) == [("token", 400 if case in (
        "unknown_tenant", "unknown_client") else 401)]
    assert fake.stats()["sent"] == 0
    # Put right and restarted, relayd delivers the waiting message.
    d.stop()
    if case == "expired_secret":        # a new secret replaces the old
        fake.config(clients={"relayd-client": {"secret": "n3w-s3cret"}})
        d.sections.update(graph_sections(fake, secret="n3w-s3cret"))
    else:
        d.sections.update(graph_sections(fake))
    d.start()
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert rec["body"]["message"]["subject"] == "token " + case
    wait_for(lambda: d.queued() == [], 5, "an empty queue/")
    assert_secret_not_logged(d, "s3cret", "n3w-s3cret", "not-the-secret-7f3a")


# --------------------------------------------------------------------------
# 10. [graph] configuration: refused before start

def secret_file(tmp_path, mode, secret="s3cret", name="secret"):
    path = tmp_path / name
    path.write_text(secret)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_secret_file_open_to_others_refused(relayd_factory, shared_fake_graph,
                                            tmp_path, mode):
    fake = shared_fake_graph
    path = secret_file(tmp_path, mode)
    d = graph_relayd(relayd_factory, fake, start=False,
                     client_secret_file=str(path))
    want = ('client_secret_file "%s" is open to group or others (mode %04o);'
            ' run: chmod 600 %s' % (path, mode, path))
    r = d.check_config()
    assert r.returncode == EX_CONFIG, r
    assert want in r.stderr, r.stderr
    # and so does a real start, before it listens
    r = subprocess.run([str(RELAYD_BIN), "-c", str(d.conf_path)],
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == EX_CONFIG, r
    assert want in r.stderr, r.stderr
    assert "relayd started" not in r.stderr and "s3cret" not in r.stderr
    # chmod 600 as told, and it is fine
    os.chmod(path, 0o600)
    r = d.check_config()
    assert r.returncode == 0, r.stderr


def test_tenant_without_client_id_refused(relayd_factory, shared_fake_graph):
    d = graph_relayd(relayd_factory, shared_fake_graph, start=False,
                     client_id=None)
    r = d.check_config()
    assert r.returncode == EX_CONFIG, r
    assert "[graph] client_id is not set" in r.stderr, r.stderr


PLAIN_HTTP = "plain http is allowed only to this host; use https://"


@pytest.mark.parametrize("key,url,why", [
    ("graph_url", "http://graph.example.com", PLAIN_HTTP),
    ("login_url", "http://login.example.com", PLAIN_HTTP),
    # look-alikes of this host
    ("graph_url", "http://localhost.example.com", PLAIN_HTTP),
    ("login_url", "http://127.0.0.1.example.com", PLAIN_HTTP),
    # a user name: curl would connect to the host after the "@"
    ("login_url", "http://127.0.0.1@login.example.com",
     "no user name or password in the URL"),
    ("graph_url", "https://user:pw@graph.example.com",
     "no user name or password in the URL"),
])
def test_plain_http_only_to_this_host(relayd_factory, shared_fake_graph, key,
                                      url, why):
    """The client secret and the tokens must not cross a network in clear:
    http:// only to the loopback (tests, demos)."""
    d = graph_relayd(relayd_factory, shared_fake_graph, start=False,
                     **{key: url})
    r = d.check_config()
    assert r.returncode == EX_CONFIG, (url, r.stdout, r.stderr)
    assert '%s "%s": %s' % (key, url, why) in r.stderr, r.stderr


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080",
    "https://graph.example.com",
])
def test_loopback_http_and_https_accepted(relayd_factory, shared_fake_graph,
                                          url):
    d = graph_relayd(relayd_factory, shared_fake_graph, start=False,
                     graph_url=url, login_url=url)
    r = d.check_config()
    assert r.returncode == 0, r.stderr


def test_credentials_directory(relayd_factory, shared_fake_graph, tmp_path,
                               monkeypatch):
    """Without client_secret_file, $CREDENTIALS_DIRECTORY/client_secret
    (systemd's LoadCredential=client_secret) holds the secret."""
    fake = shared_fake_graph
    creds = tmp_path / "credentials"
    creds.mkdir()
    cred = secret_file(creds, 0o600, fake.secret + "\n",
                       name="client_secret")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    d = graph_relayd(relayd_factory, fake, start=False,
                     client_secret_file=None)
    r = d.check_config()
    assert r.returncode == EX_CONFIG, r
    assert "[graph] client_secret_file is not set and there is no systemd " \
        "credential" in r.stderr, r.stderr

    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    os.chmod(cred, 0o644)
    r = d.check_config()
    assert r.returncode == EX_CONFIG, r
    assert 'credential "%s" is open to group or others (mode 0644)' % cred \
        in r.stderr, r.stderr
    os.chmod(cred, 0o600)
    r = d.check_config()
    assert r.returncode == 0, r.stderr

    d.start()           # inherits CREDENTIALS_DIRECTORY
    smtp_send(d, simple("via credential"))
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert rec["body"]["message"]["subject"] == "via credential"
    assert fake.stats()["tokens_issued"] == 1
    assert_secret_not_logged(d, fake.secret)


def test_token_outage_with_requests_in_flight(relayd_factory,
                                              shared_fake_graph):
    """The token expires while many requests are in flight with it, and
    the token endpoint is down for a moment. Only the first 401 counts:
    one failed token request, then one after the backoff (5 s), and the
    queue drains. (Each 401 used to start its own token request and double
    the backoff: 5 minutes of silence after a 2 s outage.)"""
    fake = shared_fake_graph
    fake.config(latency_ms=300)
    try:
        d = graph_relayd(relayd_factory, fake, queue={"workers": 16})
        smtp_send(d, simple("first"))        # a token, then flowing
        fake.wait_sent(1, DELIVERY_TIMEOUT)
        fake.faults([{"kind": "token", "status": 503, "count": -1},
                      {"kind": "graph", "expire_token": True, "count": 1}])
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
            s.ehlo("client.test")
            for i in range(40):
                smtp_send(d, simple("burst %d" % i), conn=s)
        wait_for(lambda: any(r["kind"] == "token" and r["status"] == 503
                             for r in fake.requests()), 10,
                 "a token request during the outage")
        time.sleep(2)
        fake.faults([])
        wait_for(lambda: d.queued() == [], 30, "an empty queue/")
        tokens = [r["status"] for r in fake.requests()
                  if r["kind"] == "token"]
        assert tokens == [200, 503, 200], tokens
        waits = re.findall(r"token: .*; next attempt in (\d+)s", d.log)
        assert waits == ["5"], waits
        assert fake.stats()["sent"] == 41
    finally:
        fake.config(latency_ms=0)
