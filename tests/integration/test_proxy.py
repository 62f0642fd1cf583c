"""PROXY protocol listeners: real HAProxy in front of two relayd instances
(send-proxy and send-proxy-v2, health checks), and headers written by hand
(v1, v2, IPv4, IPv6, LOCAL/UNKNOWN, split, missing, garbage, stalled,
per-client limits by the real address).

Clients act as different hosts by binding to 127.0.0.2, 127.0.0.3 ...;
HAProxy and the hand-written headers reach relayd from 127.0.0.1, which no
test lets relay: whatever relayd lets through, it did by the address in the
header.
"""
import re
import signal
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pytest

from relaydtest.daemon import need
from relaydtest.env import HOSTNAME
from relaydtest.ports import free_port
from relaydtest.smtp import SMTPConn
from relaydtest.wait import wait_for
from relaydtest.procs import cpu_seconds

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
ACCESS_DENIED = ("554 5.7.1 %s Access denied: your address is not allowed "
                 "here" % HOSTNAME)
PROXY_TIMEOUT = 10          # relayd's SMTP_PROXY_TIMEOUT_SEC


# --------------------------------------------------------------------------
# headers

def v1(src, dst=None, sport=40000, dport=25):
    fam = "TCP6" if ":" in src else "TCP4"
    dst = dst or ("::1" if fam == "TCP6" else "127.0.0.1")
    return ("PROXY %s %s %s %d %d\r\n" % (fam, src, dst, sport,
                                          dport)).encode()


def v2(src=None, dst=None, sport=40000, dport=25, command=1, family=None,
       tlvs=b"", version=2):
    """A v2 header; src=None makes an address-less (LOCAL or UNSPEC)
    one."""
    if src is None:
        body, fam = b"", 0x00
    elif ":" in src:
        fam = 0x21
        body = (socket.inet_pton(socket.AF_INET6, src) +
                socket.inet_pton(socket.AF_INET6, dst or "::1") +
                struct.pack("!HH", sport, dport))
    else:
        fam = 0x11
        body = (socket.inet_pton(socket.AF_INET, src) +
                socket.inet_pton(socket.AF_INET, dst or "127.0.0.1") +
                struct.pack("!HH", sport, dport))
    if family is not None:
        fam = family
    body += tlvs
    return (V2_SIG + bytes([(version << 4) | command, fam]) +
            struct.pack("!H", len(body)) + body)


def tlv(kind, value):
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def proxied(port, header, source=None, pieces=1, gap=0.0, greeting=True,
            timeout=5):
    """An SMTPConn that sent header (in `pieces` writes, `gap` seconds
    apart) before anything else; greeting read unless greeting=False."""
    c = SMTPConn(port, source=source, greeting=False, timeout=timeout)
    step = max(1, -(-len(header) // pieces))
    for i in range(0, len(header), step):
        if i:
            time.sleep(gap)
        c.send(header[i:i + step])
    if greeting:
        c.greeting = c.reply()
    return c


def proxyd(relayd_factory, smtp=None, opts="", **kw):
    """A relayd whose only listener is `127.0.0.1:PORT proxy OPTS`."""
    d = relayd_factory(smtp=smtp, start=False, **kw)
    d.port = free_port()
    d.listen_lines = lambda: ["127.0.0.1:%d proxy%s" % (
        d.port, (" " + opts) if opts else "")]
    return d.start()


def timed_delivery(port, header=None, source=None, subject=b"timed"):
    """Seconds a client takes from connect to its 250 queued (through a
    PROXY header if given); returns (seconds, qid)."""
    t0 = time.monotonic()
    if header is not None:
        c = proxied(port, header, source=source)
    else:
        c = SMTPConn(port, source=source)
    with c:
        assert c.greeting.code == 220, c.greeting
        c.ehlo()
        r = c.send_mail(body=b"Subject: " + subject + b"\r\n\r\nhi\r\n")
        assert r.qid, r
        return time.monotonic() - t0, r.qid


# --------------------------------------------------------------------------
# HAProxy

def listening(port):
    """True if something listens on 127.0.0.1:port (from /proc/net/tcp, so
    that asking does not make a connection HAProxy would forward)."""
    want = "0100007F:%04X" % port
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1] == want and f[3] == "0A":
            return True
    return False


class HAProxy:
    """`haproxy -f CFG -db` in mode tcp: a frontend on a free loopback port,
    one backend (roundrobin) of relayd servers, a stats socket."""

    def __init__(self, workdir, servers, send_proxy="send-proxy",
                 check=False):
        self.bin = need("haproxy")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cfg = self.dir / "haproxy.cfg"
        self.log_path = self.dir / "haproxy.log"
        self.sock = self.dir / "haproxy.sock"
        if len(str(self.sock)) > 100:       # sun_path holds 108 bytes
            import tempfile
            self.sock = Path(tempfile.mkdtemp(prefix="haproxy-")) / "sock"
        self.port = free_port()
        self.servers = servers          # [(name, port)]
        self.send_proxy = send_proxy
        self.check = check
        self.proc = None
        self.logf = None

    def write_config(self):
        check = (" check check-send-proxy inter 100ms fall 1 rise 1"
                 if self.check else "")
        out = ["global",
               "    maxconn 4096",
               "    stats socket %s level admin" % self.sock,
               "defaults",
               "    mode tcp",
               "    timeout connect 2s",
               "    timeout client 30s",
               "    timeout server 30s",
               "frontend smtp",
               "    bind 127.0.0.1:%d" % self.port,
               "    default_backend relayd",
               "backend relayd",
               "    balance roundrobin"]
        out += ["    server %s 127.0.0.1:%d %s%s" % (name, port,
                                                     self.send_proxy, check)
                for name, port in self.servers]
        self.cfg.write_text("\n".join(out) + "\n")

    def start(self):
        self.write_config()
        r = subprocess.run([self.bin, "-c", "-f", str(self.cfg)],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, "haproxy -c: %s%s" % (r.stdout, r.stderr)
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.bin, "-f", str(self.cfg), "-db"],
                                     stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf)

        def up():
            if self.proc.poll() is not None:
                raise AssertionError("haproxy exited with %s:\n%s"
                                     % (self.proc.returncode, self.log))
            return listening(self.port) and self.sock.exists()
        wait_for(up, 10, "haproxy to listen")
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)       # soft stop
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.logf is not None:
            self.logf.close()
            self.logf = None

    @property
    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def command(self, line):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(str(self.sock))
            s.sendall(line.encode() + b"\n")
            out = b""
            while True:
                data = s.recv(65536)
                if not data:
                    return out.decode()
                out += data
        finally:
            s.close()

    def server_states(self):
        """{server name: operational state} (2 is UP)."""
        states = {}
        for line in self.command("show servers state relayd").splitlines():
            f = line.split()
            if len(f) > 5 and not line.startswith("#") and f[1] == "relayd":
                states[f[3]] = int(f[5])
        return states

    def connect(self, source):
        return SMTPConn(self.port, source=source)


@pytest.fixture
def haproxy_factory(request, tmp_path):
    need("haproxy")
    made = []

    def make(servers, **kw):
        h = HAProxy(tmp_path / ("haproxy%d" % len(made)), servers, **kw)
        made.append(h)
        return h.start()

    yield make
    failed = getattr(request.node, "_relayd_call_failed", False)
    for h in made:
        h.stop()
        if failed:
            print("== haproxy log (%s) ==\n%s" % (h.log_path, h.log))


def backend_pair(relayd_factory, **smtp):
    """Two relayd (hostnames r1.test and r2.test) with proxy listeners:
    127.0.0.2 may relay and send as *@contoso.test; HAProxy's own address
    127.0.0.1 may send as anyone (so a relayd that took the connection's
    address for the client's would let everything through [senders])."""
    ds = []
    for i in (1, 2):
        opts = {"hostname": "r%d.test" % i, "allow_networks": "127.0.0.2/32"}
        opts.update(smtp)
        d = relayd_factory(smtp=opts, start=False, name="r%d" % i)
        d.sections["senders"] = {"127.0.0.2": "*@contoso.test",
                                 "127.0.0.1": "*"}
        d.port = free_port()
        d.listen_lines = (lambda d=d: ["127.0.0.1:%d proxy" % d.port])
        d.start()
        ds.append(d)
    return ds


def subjects(d):
    out = {}
    for f in d.queued_files():
        m = re.search(rb"^Subject: (.*)\r$", f.body, re.M)
        out[m.group(1).decode()] = f
    return out


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_haproxy_real_client_address(relayd_factory, haproxy_factory,
                                     send_proxy):
    r1, r2 = backend_pair(relayd_factory)
    by_host = {"r1.test": r1, "r2.test": r2}
    h = haproxy_factory([("r1", r1.port), ("r2", r2.port)],
                        send_proxy=send_proxy)
    sent = {}                           # subject -> relayd
    for i in range(4):
        with h.connect("127.0.0.2") as c:
            assert c.greeting.code == 220, c.greeting
            d = by_host[c.greeting.text.split()[1]]
            r = c.ehlo()
            assert r.lines[0].endswith("[127.0.0.2]"), r
            subj = "via haproxy %d" % i
            r = c.send_mail("user%d@contoso.test" % i,
                            body=("From: user%d@contoso.test\r\nSubject: %s"
                                  "\r\n\r\nhi\r\n" % (i, subj)).encode())
            assert r.qid, r
            sent[subj] = d
            # [senders] by the real address: 127.0.0.2 is not 127.0.0.1
            r = c.cmd("MAIL FROM:<ceo@evil.test>")
            assert r.text == ("550 5.7.1 <ceo@evil.test>: Sender address not "
                              "allowed for client 127.0.0.2 (see [senders])"),\
                r
            assert c.cmd("QUIT").code == 221
    # 127.0.0.3 may not relay, whichever backend it reaches
    seen3 = set()
    for i in range(2):
        with h.connect("127.0.0.3") as c:
            seen3.add(c.greeting.text.split()[1])
            c.ehlo()
            assert c.cmd("MAIL FROM:<x@contoso.test>").code == 250
            r = c.cmd("RCPT TO:<b@b.test>")
            assert r.text == ("554 5.7.1 <b@b.test>: Relay access denied "
                              "(client 127.0.0.3 is not in allow_networks)"), r
    assert seen3 == {"r1.test", "r2.test"}, "roundrobin: %s" % seen3
    # both backends got traffic; each message is in its own relayd's queue
    assert set(sent.values()) == {r1, r2}, sent
    for d in (r1, r2):
        got = subjects(d)
        assert set(got) == {s for s, x in sent.items() if x is d}, got
        for f in got.values():
            assert f.get("client") == "127.0.0.2", f.raw[:400]
        log = d.log
        assert re.search(r"smtp connect client=127\.0\.0\.2 ", log), log
        assert re.search(r"smtp connect client=127\.0\.0\.3 ", log), log
        assert not re.search(r"client=127\.0\.0\.1\b", log), \
            "HAProxy's address was taken for the client's:\n" + log
        assert "smtp refused peer=" not in log, log


@pytest.mark.parametrize("send_proxy", ["send-proxy", "send-proxy-v2"])
def test_haproxy_health_checks(relayd_factory, haproxy_factory, send_proxy,
                               monkeypatch):
    # JOURNAL_STREAM makes relayd prefix each line with its syslog level.
    monkeypatch.setenv("JOURNAL_STREAM", "0:0")
    r1, r2 = backend_pair(relayd_factory)
    h = haproxy_factory([("r1", r1.port), ("r2", r2.port)],
                        send_proxy=send_proxy, check=True)
    checks = re.compile(r"smtp connect client=127\.0\.0\.1 ")
    for d in (r1, r2):
        wait_for(lambda: len(checks.findall(d.log)) >= 5, 10,
                 "5 health checks on %s" % d.name)
    assert h.server_states() == {"r1": 2, "r2": 2}, \
        "servers not UP: %s\n%s" % (h.server_states(), h.log)
    # clients still get through with their own address
    for i in range(2):
        with h.connect("127.0.0.2") as c:
            assert c.greeting.code == 220
            c.ehlo()
            r = c.send_mail("a@contoso.test", body=b"Subject: hc %d\r\n\r\n"
                            b"hi\r\n" % i)
            assert r.qid, r
    for d in (r1, r2):
        d.assert_alive(0)
        assert [f.get("client") for f in d.queued_files()] == ["127.0.0.2"]
        log = d.log
        since_start = log[log.index("relayd started"):]
        bad = [l for l in since_start.splitlines()
               if re.match(r"<[0-4]>", l)]
        assert not bad, "health checks made errors or warnings:\n" + \
            "\n".join(bad[:20])
        assert "smtp refused" not in log, log
        assert re.search(r"smtp connect client=127\.0\.0\.2 ", log)
    assert h.server_states() == {"r1": 2, "r2": 2}


# --------------------------------------------------------------------------
# headers by hand

@pytest.mark.parametrize("header,client", [
    (v1("127.0.0.2"), "127.0.0.2"),
    (v1("2001:db8::7"), "2001:db8::7"),
    (v1("::ffff:127.0.0.2"), "127.0.0.2"),
    (v2("127.0.0.2"), "127.0.0.2"),
    (v2("2001:db8::7"), "2001:db8::7"),
    (v2("::ffff:127.0.0.2"), "127.0.0.2"),
    (v2("127.0.0.2", tlvs=tlv(0x01, b"smtp") + tlv(0x02, b"mx.test") +
        tlv(0x04, b"") + tlv(0x05, b"unique-id-123") +
        tlv(0x20, b"\x00" + b"\x00" * 4)), "127.0.0.2"),
    (v2("127.0.0.2", tlvs=tlv(0xE0, b"x" * 3000)), "127.0.0.2"),
], ids=["v1-ipv4", "v1-ipv6", "v1-v4mapped", "v2-ipv4", "v2-ipv6",
        "v2-v4mapped", "v2-tlvs", "v2-big-tlv"])
def test_header_gives_client_address(relayd_factory, header, client):
    d = proxyd(relayd_factory, smtp={"allow_networks":
                                     "127.0.0.2/32 2001:db8::/32"})
    with proxied(d.port, header) as c:
        assert c.greeting.code == 220, c.greeting
        r = c.ehlo()
        assert r.lines[0].endswith("[%s]" % client), r
        r = c.send_mail(body=b"Subject: proxied\r\n\r\nhi\r\n")
        assert r.qid, r
    assert d.spool_file(r.qid).get("client") == client
    d.wait_log(r"smtp connect client=%s listener=127\.0\.0\.1:%d "
               % (re.escape(client), d.port))
    assert "client=127.0.0.1" not in d.log


@pytest.mark.parametrize("header,client", [
    (v1("127.0.0.9"), "127.0.0.9"), (v2("127.0.0.9"), "127.0.0.9"),
    (v1("2001:db8:1::9"), "2001:db8:1::9"),
    (v2("2001:db8:1::9"), "2001:db8:1::9")],
    ids=["v1-ipv4", "v2-ipv4", "v1-ipv6", "v2-ipv6"])
def test_header_address_outside_allow_networks(relayd_factory, header,
                                               client):
    """The TCP peer (127.0.0.1) may relay; the client in the header not."""
    d = proxyd(relayd_factory, smtp={"allow_networks":
                                     "127.0.0.1/32 2001:db8::/48"})
    with proxied(d.port, header) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        r = c.cmd("RCPT TO:<b@b.test>")
        assert r.text == ("554 5.7.1 <b@b.test>: Relay access denied (client "
                          "%s is not in allow_networks)" % client), r
    assert d.queued() == []


@pytest.mark.parametrize("header", [
    v2(command=0),                                  # LOCAL
    v2("127.0.0.2", command=0),                     # LOCAL with addresses
    v2(command=1, family=0x00),                     # PROXY, UNSPEC
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN 127.0.0.2 127.0.0.1 40000 25\r\n",
], ids=["v2-local", "v2-local-with-addresses", "v2-unspec", "v1-unknown",
        "v1-unknown-with-addresses"])
def test_local_and_unknown_keep_peer_address(relayd_factory, header):
    d = proxyd(relayd_factory, smtp={"allow_networks": "127.0.0.2/32"})
    with proxied(d.port, header, source="127.0.0.3") as c:
        assert c.greeting.code == 220, c.greeting
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        r = c.cmd("RCPT TO:<b@b.test>")
        assert "client 127.0.0.3 is not in allow_networks" in r.text, r
    d.wait_log(r"smtp connect client=127\.0\.0\.3 ")
    assert "client=127.0.0.2" not in d.log


@pytest.mark.parametrize("header,pieces", [
    (v1("127.0.0.2"), 5), (v2("127.0.0.2"), 5), (v2("127.0.0.2"), 28),
    (v1("2001:db8::7"), 9)],
    ids=["v1-5", "v2-5", "v2-bytewise", "v1-ipv6-9"])
def test_header_in_pieces(relayd_factory, header, pieces):
    d = proxyd(relayd_factory, smtp={"allow_networks":
                                     "127.0.0.2/32 2001:db8::/32"})
    with proxied(d.port, header, pieces=pieces, gap=0.01) as c:
        assert c.greeting.code == 220, c.greeting
        c.ehlo()
        r = c.send_mail(body=b"Subject: pieces\r\n\r\nhi\r\n")
        assert r.qid, r
    client = d.spool_file(r.qid).get("client")
    assert client in ("127.0.0.2", "2001:db8::7")


def test_no_header_refused(relayd_factory):
    d = proxyd(relayd_factory)
    # an SMTP client that talks first
    with SMTPConn(d.port, greeting=False) as c:
        c.send(b"EHLO client.test\r\n")
        assert c.wait_closed(), "got %r" % c.buf
    d.wait_log(r'smtp refused peer=127\.0\.0\.1 listener=127\.0\.0\.1:%d '
               r'reason="no PROXY protocol header"' % d.port)
    # one that waits for a greeting gets none: the header comes first
    with SMTPConn(d.port, greeting=False, source="127.0.0.3") as c:
        assert c.quiet(0.3)
    # a proxy listener does not fall back to the peer's address
    assert not re.search(r"smtp connect client=", d.log)
    with proxied(d.port, v1("127.0.0.2")) as c:
        assert c.greeting.code == 220


GARBAGE = [
    ("http", b"GET / HTTP/1.0\r\n\r\n", "no PROXY protocol header"),
    ("tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 32,
     "no PROXY protocol header"),
    ("lower-case", b"proxy TCP4 127.0.0.2 127.0.0.1 1 25\r\n",
     "no PROXY protocol header"),
    ("binary", bytes(range(256)), "no PROXY protocol header"),
    ("v1-missing-port", b"PROXY TCP4 127.0.0.2 127.0.0.1 40000\r\n",
     "malformed PROXY v1 line"),
    ("v1-extra-field", b"PROXY TCP4 127.0.0.2 127.0.0.1 1 25 x\r\n",
     "malformed PROXY v1 line"),
    ("v1-port-too-big", b"PROXY TCP4 127.0.0.2 127.0.0.1 99999 25\r\n",
     "malformed PROXY v1 line"),
    ("v1-port-leading-zero", b"PROXY TCP4 127.0.0.2 127.0.0.1 040000 25\r\n",
     "malformed PROXY v1 line"),
    ("v1-bad-ipv4", b"PROXY TCP4 256.0.0.2 127.0.0.1 1 25\r\n",
     "bad address in PROXY v1 line"),
    ("v1-ipv6-as-tcp4", b"PROXY TCP4 ::1 ::1 1 25\r\n",
     "bad address in PROXY v1 line"),
    ("v1-ipv4-as-tcp6", b"PROXY TCP6 127.0.0.2 127.0.0.1 1 25\r\n",
     "bad address in PROXY v1 line"),
    ("v1-udp", b"PROXY UDP4 127.0.0.2 127.0.0.1 1 25\r\n",
     "PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN"),
    ("v1-lf-only", b"PROXY TCP4 127.0.0.2 127.0.0.1 1 25\n",
     "PROXY v1 line does not end in CRLF"),
    ("v1-too-long", b"PROXY TCP4 " + b"1" * 120 + b"\r\n",
     "PROXY v1 line longer than 107 bytes"),
    ("v2-version-1", v2("127.0.0.2", version=1),
     "PROXY v2 header with another version"),
    ("v2-command-2", v2("127.0.0.2", command=2),
     "PROXY v2 command is neither LOCAL nor PROXY"),
    ("v2-udp", v2("127.0.0.2", family=0x12),
     "PROXY v2 address family is not TCP over IPv4/IPv6"),
    ("v2-unix", v2("127.0.0.2", family=0x31),
     "PROXY v2 address family is not TCP over IPv4/IPv6"),
    ("v2-ipv4-short", V2_SIG + b"\x21\x11\x00\x04" + b"\x7f\0\0\x02",
     "PROXY v2 IPv4 block too short"),
    ("v2-ipv6-short", V2_SIG + b"\x21\x21\x00\x0c" + b"\0" * 12,
     "PROXY v2 IPv6 block too short"),
    ("v2-too-long", V2_SIG + b"\x21\x11\xff\xff" + b"\0" * 100,
     "PROXY v2 header too long"),
]


@pytest.mark.parametrize("data,reason", [g[1:] for g in GARBAGE],
                         ids=[g[0] for g in GARBAGE])
def test_garbage_refused(relayd_factory, data, reason):
    d = proxyd(relayd_factory, smtp={"allow_networks": "127.0.0.2/32"})
    with SMTPConn(d.port, greeting=False, source="127.0.0.3") as c:
        try:
            c.send(data + b"EHLO x\r\nMAIL FROM:<a@a.test>\r\n")
        except OSError:
            pass
        assert c.wait_closed(), "got %r" % c.buf
        assert c.buf == b""
    d.wait_log(r'smtp refused peer=127\.0\.0\.3 listener=127\.0\.0\.1:%d '
               r'reason="%s"' % (d.port, re.escape(reason)))
    assert "smtp connect client=" not in d.log
    assert timed_delivery(d.port, v1("127.0.0.2"))[0] < 1


def test_plain_listener_ignores_proxy_header(relayd_factory):
    """Only a proxy listener reads the header: elsewhere a client cannot
    claim another address with one."""
    d = relayd_factory(smtp={"allow_networks": "127.0.0.2/32",
                             "max_errors": 100})
    with d.connect() as c:
        assert c.greeting.code == 220
        r = c.cmd(v1("127.0.0.2").rstrip(b"\r\n"))
        assert r.code == 500, r
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        r = c.cmd("RCPT TO:<b@b.test>")
        assert "client 127.0.0.1 is not in allow_networks" in r.text, r
    # The v2 signature holds "QUIT\n" so that an SMTP server that does not
    # expect it ends the session (proxy-protocol.txt 2.2): relayd does.
    with d.connect() as c:
        c.send(v2("127.0.0.2") + b"\r\n")
        rs = c.read_all()
        assert rs and rs[-1].code == 221, rs
    # and one sent first is refused like any talk before the greeting
    d.freeze()
    try:
        c = SMTPConn(d.port, greeting=False)
        c.send(v1("127.0.0.2") + b"EHLO x\r\n")
    finally:
        d.thaw()
    with c:
        rs = c.read_all()
        assert [r.code for r in rs] == [554], rs
    assert "client=127.0.0.2" not in d.log


def test_proxy_and_tls_listener(relayd_factory, tls_ca):
    """`tls proxy`: the header comes before the TLS handshake."""
    d = relayd_factory(smtp={"allow_networks": "127.0.0.2/32",
                             "tls_cert": tls_ca.cert_file,
                             "tls_key": tls_ca.key_file}, start=False)
    d.port = free_port()
    d.listen_lines = lambda: ["127.0.0.1:%d tls proxy" % d.port]
    d.start()
    ctx = ssl.create_default_context(cafile=str(tls_ca.ca_file))
    for header in (v1("127.0.0.2"), v2("127.0.0.2")):
        raw = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        raw.sendall(header)
        with ctx.wrap_socket(raw, server_hostname="localhost") as t:
            f = t.makefile("rb")
            assert f.readline().startswith(b"220 ")
            t.sendall(b"EHLO c.test\r\n")
            line = f.readline()
            assert line.rstrip().endswith(b"[127.0.0.2]"), line
            while line[3:4] == b"-":
                line = f.readline()
            t.sendall(b"MAIL FROM:<a@a.test>\r\nRCPT TO:<b@b.test>\r\n")
            assert f.readline().startswith(b"250 ")
            assert f.readline().startswith(b"250 "), "relay refused"
            t.sendall(b"QUIT\r\n")
            f.readline()
            f.close()
    d.wait_log(r"smtp connect client=127\.0\.0\.2 ")


def test_stalled_header(relayd_factory):
    """Clients that never complete their header (or never send one) are
    closed after relayd's 10 s, cost no CPU meanwhile, and do not keep
    others waiting."""
    d = proxyd(relayd_factory, smtp={"allow_networks": "127.0.0.2/32"})
    t0 = time.monotonic()
    stalled = {
        "nothing": SMTPConn(d.port, greeting=False, source="127.0.0.3"),
        "v1-partial": SMTPConn(d.port, greeting=False, source="127.0.0.4"),
        "v2-partial": SMTPConn(d.port, greeting=False, source="127.0.0.5"),
    }
    stalled["v1-partial"].send(b"PROXY TCP4 127.0.0.2 ")
    stalled["v2-partial"].send(v2("127.0.0.2")[:20])
    problems = []
    try:
        time.sleep(0.2)
        cpu0 = cpu_seconds(d.pid)
        time.sleep(1.0)
        cpu = cpu_seconds(d.pid) - cpu0
        if cpu > 0.3:
            problems.append("relayd used %.2f s of CPU in 1 s while clients "
                            "sat on a partial PROXY header" % cpu)
        secs, _ = timed_delivery(d.port, v1("127.0.0.2"))
        if secs >= 1:
            problems.append("another client took %.2f s to deliver" % secs)
        deadline = t0 + PROXY_TIMEOUT + 3
        for name, c in stalled.items():
            try:
                c.wait_closed(max(deadline - time.monotonic(), 0.01))
                took = time.monotonic() - t0
                if took < PROXY_TIMEOUT - 1:
                    problems.append("%s: closed after only %.1f s"
                                    % (name, took))
                if c.buf:
                    problems.append("%s: got %r" % (name, c.buf))
            except socket.timeout:
                problems.append("%s: still open after %.1f s (the PROXY "
                                "header timeout is %d s)"
                                % (name, time.monotonic() - t0,
                                   PROXY_TIMEOUT))
        if not problems:
            for src in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):
                d.wait_log(r'smtp refused peer=%s listener=127\.0\.0\.1:%d '
                           r'reason="timeout waiting for the PROXY header"'
                           % (re.escape(src), d.port), timeout=2)
    finally:
        for c in stalled.values():
            c.close()
    assert not problems, "; ".join(problems)
    d.assert_alive(0)


def test_per_client_limit_counts_real_address(relayd_factory):
    d = proxyd(relayd_factory, smtp={"max_connections_per_client": 2,
                                     "allow_networks": "127.0.0.2/32"})
    held = []
    try:
        for _ in range(2):
            c = proxied(d.port, v1("127.0.0.2"))
            assert c.greeting.code == 220, c.greeting
            held.append(c)
        c = proxied(d.port, v2("127.0.0.2"))
        with c:
            assert c.greeting.text.startswith("421 4.7.0") and \
                "Too many connections from your address" in c.greeting.text, \
                c.greeting
            assert c.wait_closed()
        d.wait_log(r'smtp refused client=127\.0\.0\.2 listener=127\.0\.0\.1:%d'
                   r' reason="too many connections from this client '
                   r'\(max_connections_per_client=2\)"' % d.port)
        # other real addresses behind the same proxy are not affected
        for src in ("127.0.0.3", "127.0.0.3", "2001:db8::3"):
            c = proxied(d.port, v1(src))
            assert c.greeting.code == 220, (src, c.greeting)
            held.append(c)
        # a slot freed by 127.0.0.2 is given back to 127.0.0.2
        held[0].cmd("QUIT")
        held[0].close()

        def again():
            with proxied(d.port, v1("127.0.0.2")) as c:
                return c.greeting.code == 220
        wait_for(again, 5, "127.0.0.2 to be let in again")
    finally:
        for c in held:
            c.close()


def test_listener_networks_on_proxy_listener(relayd_factory):
    """networks= is checked against the address in the header."""
    d = proxyd(relayd_factory, opts="networks=127.0.0.2/32,2001:db8::/32")
    with proxied(d.port, v1("127.0.0.2"), source="127.0.0.3") as c:
        assert c.greeting.code == 220, c.greeting
    for header, client in [(v1("127.0.0.3"), "127.0.0.3"),
                           (v2("10.1.2.3"), "10.1.2.3"),
                           (v2("2001:db9::1"), "2001:db9::1")]:
        with proxied(d.port, header, source="127.0.0.2") as c:
            assert c.greeting.text == ACCESS_DENIED, c.greeting
            assert c.wait_closed()
        d.wait_log(r'smtp refused client=%s listener=127\.0\.0\.1:%d '
                   r'reason="not in this listener\'s networks"'
                   % (re.escape(client), d.port))
