"""National clouds and the outbound proxy.

[graph] cloud picks the token service and Graph hosts (the scope follows
the Graph URL in use); explicit login_url / graph_url still win. [graph]
proxy carries the token and Graph requests through an HTTP proxy (CONNECT,
optionally with Basic authentication); without it curl's environment
variables (https_proxy, no_proxy...) apply. The proxy here is a small
CONNECT proxy in the test process; for the clouds it sends every tunnel to
a fake Graph over TLS whose certificate names the cloud's hosts, so that
relayd talks to "login.microsoftonline.us" and "graph.microsoft.us" without
leaving this machine."""
import base64
import re
import select
import socket
import threading
import types
from urllib.parse import urlsplit

import pytest

from relaydtest.daemon import run_relayd
from relaydtest.delivery import DELIVERY_TIMEOUT, kinds
from relaydtest.env import EX_CONFIG
from relaydtest.graph import graph_relayd
from relaydtest.smtp import simple, smtp_send
from relaydtest.wait import wait_for

CLOUDS = {
    "global": ("https://login.microsoftonline.com",
               "https://graph.microsoft.com"),
    "usgov": ("https://login.microsoftonline.us",
              "https://graph.microsoft.us"),
    "usgov-dod": ("https://login.microsoftonline.us",
                  "https://dod-graph.microsoft.us"),
    "china": ("https://login.chinacloudapi.cn",
              "https://microsoftgraph.chinacloudapi.cn"),
}
PROXY_ENV = ("http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy",
             "ALL_PROXY", "no_proxy", "NO_PROXY")
PROXY_USER, PROXY_PASSWORD = "relayd", "pr0xy-Pa55"


class ConnectProxy:
    """A CONNECT proxy on loopback, a thread per connection. Tunnels each
    CONNECT to its target, or to `route` (host, port) whatever the target;
    keeps the targets asked for in `connects`. With auth=(user, password)
    it wants that Basic Proxy-Authorization and answers 407 without it
    (counted in `refused`)."""

    def __init__(self, auth=None, route=None):
        self.auth = auth
        self.route = route
        self.connects = []
        self.refused = 0
        self.lock = threading.Lock()
        self.socks = []
        self.closed = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, user=None, password=None):
        cred = "%s:%s@" % (user, password) if user else ""
        return "http://%s127.0.0.1:%d" % (cred, self.port)

    def close(self):
        self.closed.set()
        self.sock.close()
        with self.lock:
            for s in self.socks:
                s.close()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.socks.append(c)
            threading.Thread(target=self._serve, args=(c,),
                             daemon=True).start()

    def _answer(self, c, status):
        c.sendall(b"HTTP/1.1 %s\r\n%sContent-Length: 0\r\n"
                  b"Connection: close\r\n\r\n" % (
                      status, b'Proxy-Authenticate: Basic realm="test"\r\n'
                      if status.startswith(b"407") else b""))

    def _serve(self, c):
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 16384:
                data = c.recv(4096)
                if not data:
                    return
                head += data
            head, _, rest = head.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target = lines[0].split(" ")[:2]
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (l.partition(":") for l in lines[1:])}
            if method != "CONNECT":
                return self._answer(c, b"405 Method Not Allowed")
            if self.auth and headers.get("proxy-authorization") != \
                    "Basic " + base64.b64encode(
                        ("%s:%s" % self.auth).encode()).decode():
                with self.lock:
                    self.refused += 1
                return self._answer(c, b"407 Proxy Authentication Required")
            host, _, port = target.rpartition(":")
            up = socket.create_connection(
                self.route or (host.strip("[]"), int(port)), timeout=5)
            up.settimeout(None)
            with self.lock:
                self.connects.append(target)
                self.socks.append(up)
            c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                up.sendall(rest)
            self._pump(c, up)
        except OSError:
            pass
        finally:
            c.close()

    def _pump(self, a, b):
        try:
            while not self.closed.is_set():
                ready, _, _ = select.select([a, b], [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        finally:
            b.close()


@pytest.fixture
def connect_proxy():
    """connect_proxy(auth=None, route=None) -> ConnectProxy, closed at the
    end of the test."""
    made = []

    def make(**kw):
        made.append(ConnectProxy(**kw))
        return made[-1]
    yield make
    for p in made:
        p.close()


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch):
    """relayd inherits the environment: none of curl's proxy variables
    unless a test sets them."""
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)


def effective_graph(d):
    """`relayd -n -d`'s [graph] line as a dict."""
    r = d.check_config()            # writes the config file
    assert r.returncode == 0, r.stderr
    r = run_relayd("-n", "-d", "-c", str(d.conf_path))
    assert r.returncode == 0, r.stderr
    [line] = [l for l in r.stdout.splitlines() if l.startswith("graph: ")]
    return dict(kv.split("=", 1) for kv in line[len("graph: "):].split())


# --------------------------------------------------------------------------
# clouds

@pytest.mark.parametrize("cloud", [None] + sorted(CLOUDS))
def test_cloud_defaults(relayd_factory, shared_fake_graph, cloud):
    d = graph_relayd(relayd_factory, shared_fake_graph, start=False,
                     login_url=None, graph_url=None,
                     **({"cloud": cloud} if cloud else {}))
    login, graph = CLOUDS[cloud or "global"]
    g = effective_graph(d)
    assert (g["cloud"], g["login_url"], g["url"], g["scope"]) == (
        cloud or "global", login, graph, graph + "/.default")
    assert "proxy" not in g


def test_explicit_urls_override_the_cloud(relayd_factory, shared_fake_graph):
    d = graph_relayd(relayd_factory, shared_fake_graph, start=False,
                     cloud="china", login_url=None,
                     graph_url="https://graph.example.test/")
    g = effective_graph(d)
    assert (g["login_url"], g["url"], g["scope"]) == (
        "https://login.chinacloudapi.cn", "https://graph.example.test",
        "https://graph.example.test/.default")
    d.sections["graph"].update(login_url="https://login.example.test",
                               graph_url=None)
    del d.sections["graph"]["graph_url"]
    g = effective_graph(d)
    assert (g["login_url"], g["url"], g["scope"]) == (
        "https://login.example.test", "https://microsoftgraph.chinacloudapi.cn",
        "https://microsoftgraph.chinacloudapi.cn/.default")


def test_unknown_cloud_refused(relayd_factory, shared_fake_graph):
    d = graph_relayd(relayd_factory, shared_fake_graph, start=False,
                     cloud="germany")
    r = d.check_config()
    assert r.returncode == EX_CONFIG
    assert '"cloud" must be one of global, usgov, usgov-dod, china, not ' \
        '"germany"' in r.stderr, r.stderr


@pytest.fixture(scope="module")
def cloud_tls(tls_ca):
    """A server certificate for every cloud's hosts (and 127.0.0.1, for the
    fake's control API), as the fake's tls= argument."""
    hosts = sorted({urlsplit(u).hostname for pair in CLOUDS.values()
                    for u in pair})
    cert, key = tls_ca.issue("clouds", dns=hosts, ips=("127.0.0.1",))
    return types.SimpleNamespace(cert_file=cert, key_file=key,
                                 ca_file=tls_ca.ca_file)


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_cloud_end_to_end(relayd_factory, fake_graph_factory, cloud_tls,
                          connect_proxy, cloud):
    """Only cloud = X in [graph]: the token request goes to X's login host
    with X's Graph scope, sendMail to X's Graph host, both through the
    proxy (which hands every tunnel to the fake, as X's hosts)."""
    login, graph = CLOUDS[cloud]
    fake = fake_graph_factory(tls=cloud_tls, args=["--base-url", login])
    fake.config(scope=graph + "/.default")
    proxy = connect_proxy(route=("127.0.0.1", fake.port))
    d = graph_relayd(relayd_factory, fake, cloud=cloud, login_url=None,
                     graph_url=None, proxy=proxy.url())
    smtp_send(d, simple("to " + cloud))
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert rec["body"]["message"]["subject"] == "to " + cloud
    assert kinds(fake) == [("token", 200), ("graph", 202)]
    [tok] = [r for r in fake.requests() if r["kind"] == "token"]
    assert tok["token"]["scope"] == graph + "/.default"
    assert tok["path"] == "/%s/oauth2/v2.0/token" % fake.tenant
    assert set(proxy.connects) == {urlsplit(login).hostname + ":443",
                                   urlsplit(graph).hostname + ":443"}
    assert "login_url=%s scope=%s/.default cloud=%s" % (login, graph,
                                                         cloud) in d.log


# --------------------------------------------------------------------------
# proxy

def test_delivery_through_proxy(relayd_factory, fake_graph_tls,
                                connect_proxy):
    fake = fake_graph_tls
    proxy = connect_proxy()
    d = graph_relayd(relayd_factory, fake, proxy=proxy.url())
    for i in range(3):
        smtp_send(d, simple("proxied %d" % i))
    fake.wait_sent(3, DELIVERY_TIMEOUT)
    assert proxy.connects and set(proxy.connects) == {
        "127.0.0.1:%d" % fake.port}
    assert " proxy=%s" % proxy.url() in d.log


def test_proxy_basic_auth(relayd_factory, fake_graph_tls, connect_proxy):
    fake = fake_graph_tls
    proxy = connect_proxy(auth=(PROXY_USER, PROXY_PASSWORD))
    d = graph_relayd(relayd_factory, fake,
                     proxy=proxy.url(PROXY_USER, PROXY_PASSWORD))
    assert effective_graph(d)["proxy"] == "http://%s@127.0.0.1:%d" % (
        PROXY_USER, proxy.port)
    smtp_send(d, simple("authenticated"))
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert rec["body"]["message"]["subject"] == "authenticated"
    assert proxy.connects and proxy.refused == 0
    assert re.search(r" proxy=http://%s@127\.0\.0\.1:%d$" % (
        PROXY_USER, proxy.port), d.log, re.M), d.log
    assert PROXY_PASSWORD not in d.log


def test_proxy_wrong_password(relayd_factory, fake_graph_tls, connect_proxy):
    fake = fake_graph_tls
    proxy = connect_proxy(auth=(PROXY_USER, PROXY_PASSWORD))
    d = graph_relayd(relayd_factory, fake,
                     proxy=proxy.url(PROXY_USER, "not-the-password"))
    qid = smtp_send(d, simple("refused by the proxy"))
    m = d.wait_log(r"^\S+ relayd: (token: .*)$", DELIVERY_TIMEOUT)
    assert m.group(1) == (
        "token: no answer from the token service (the proxy refused the "
        "tunnel: HTTP 407 proxy authentication required (check the user "
        "and password in [graph] proxy)); next attempt in 5s")
    d.wait_log(r" %s graph deferred " % qid)
    assert d.queued() == [qid] and d.dead() == []
    assert proxy.refused >= 1 and proxy.connects == []
    assert fake.stats()["requests"] == 0
    assert "not-the-password" not in d.log


@pytest.mark.parametrize("var", ["https_proxy", "HTTPS_PROXY"])
def test_proxy_from_environment(relayd_factory, fake_graph_tls,
                                connect_proxy, monkeypatch, var):
    """[graph] proxy unset: curl's environment variables apply."""
    fake = fake_graph_tls
    proxy = connect_proxy()
    monkeypatch.setenv(var, proxy.url())
    d = graph_relayd(relayd_factory, fake)
    smtp_send(d, simple("via " + var))
    fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert set(proxy.connects) == {"127.0.0.1:%d" % fake.port}


def test_no_proxy_from_environment(relayd_factory, fake_graph_tls,
                                   connect_proxy, monkeypatch):
    fake = fake_graph_tls
    proxy = connect_proxy()
    monkeypatch.setenv("https_proxy", proxy.url())
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    d = graph_relayd(relayd_factory, fake)
    smtp_send(d, simple("direct"))
    fake.wait_sent(1, DELIVERY_TIMEOUT)
    wait_for(lambda: d.queued() == [], 5, "an empty queue/")
    assert proxy.connects == []


@pytest.mark.parametrize("value,shown,why", [
    ("127.0.0.1:3128", None, "must start with http:// or https://"),
    ("socks5://u:hunter2@h.example:1080", "socks5://u@h.example:1080",
     "must start with http:// or https://"),
    ("http://proxy.example", None, "must be http://HOST:PORT (the port "
     "too)"),
    ("http://u:hunter2@proxy.example/", "http://u@proxy.example/",
     "must be http://HOST:PORT (the port too)"),
    ("http://[::1]", None, "must be http://HOST:PORT (the port too)"),
    ("http://proxy.example:31x8", None, "must be http://HOST:PORT (the "
     "port too)"),
])
def test_bad_proxy_refused(relayd_factory, shared_fake_graph, value, shown,
                           why):
    d = graph_relayd(relayd_factory, shared_fake_graph, start=False,
                     proxy=value)
    r = d.check_config()
    assert r.returncode == EX_CONFIG, r
    assert re.search(r':\d+: proxy "%s" %s' % (re.escape(shown or value),
                                               re.escape(why)), r.stderr), \
        r.stderr
    assert "hunter2" not in r.stderr


@pytest.mark.parametrize("value", [
    "http://[::1]:3128", "https://proxy.example:8443",
    "http://user:p%40ss@proxy.example:3128/",
])
def test_good_proxy_accepted(relayd_factory, shared_fake_graph, value):
    d = graph_relayd(relayd_factory, shared_fake_graph, start=False,
                     proxy=value)
    r = d.check_config()
    assert r.returncode == 0, r.stderr
