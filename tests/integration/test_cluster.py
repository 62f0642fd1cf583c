"""[cluster]: three relayd instances share Graph's per-mailbox limits
through a real redis-server (started here on a free loopback port, no
persistence) in front of one fake Graph, which counts requests in flight
per mailbox across all of them and answers 429 MailboxConcurrency above 4
(tests/fakegraph.py: max_concurrency, latency_ms, /_fake/stats)."""
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from relaydtest.delivery import MAILBOX_A, graph_requests, max_overlap
from relaydtest.graph import graph_sections
from relaydtest.ports import free_port
from relaydtest.smtp import RCPT, simple
from relaydtest.wait import wait_for

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(
    REDIS is None, reason="redis-server is not installed (Debian: apt-get "
    "install redis-server; tests/deps.sh does)")


class Redis:
    """A redis-server of our own: loopback, no persistence, foreground."""

    def __init__(self, workdir, args=()):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(False)
        self.args = list(args)
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--dir", str(self.dir)] + self.args,
            stdout=open(self.dir / "redis.log", "ab"),
            stderr=subprocess.STDOUT)
        wait_for(self.pings, 10, "redis-server answering PING")
        return self

    def pings(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), 1) as s:
                s.sendall(b"PING\r\n")
                # +PONG, or -NOAUTH with requirepass: it is up.
                return s.recv(64)[:1] in (b"+", b"-")
        except OSError:
            return False

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port

    def command(self, *args):
        """One command in RESP: its reply (integer, bytes or list)."""
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        with socket.create_connection(("127.0.0.1", self.port), 5) as s:
            s.sendall(out)
            return read_reply(s.makefile("rb"))


def read_reply(f):
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        return None if int(rest) < 0 else f.read(int(rest) + 2)[:-2]
    if kind == b"*":
        return [read_reply(f) for _ in range(int(rest))]
    return rest


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path / "redis").start()
    yield r
    r.stop()


def nodes(relayd_factory, fake, redis, n=3, cluster=True, queue=None,
          timeout="3s", first=0, **cluster_keys):
    """n relayd instances delivering to fake, each its own spool, port
    and node name (n<first>...); with [cluster] on redis (and these keys)
    unless cluster is False."""
    out = []
    for i in range(first, first + n):
        sections = graph_sections(fake, timeout=timeout)
        sections["queue"] = dict({"retry_min": "200ms", "retry_max": "1s",
                                  "messages_per_minute": "0"},
                                 **(queue or {}))
        if cluster:
            sections["cluster"] = dict({"redis": redis.url,
                                        "node": "n%d" % i}, **cluster_keys)
        out.append(relayd_factory(sections=sections, name="node%d" % i))
    return out


def submit(d, count, sender=MAILBOX_A, tag="m"):
    with d.connect() as c:
        c.ehlo()
        for i in range(count):
            r = c.send_mail(sender, [RCPT], simple("%s %s %d"
                                                   % (tag, d.name, i)))
            assert r.qid, r


def submit_within_four(fake, ds, count):
    """count messages to each node, all sent with never more than 4 in
    flight for the mailbox and no 429; the fake's figures."""
    for d in ds:
        submit(d, count)
    total = count * len(ds)
    wait_for(lambda: sent_total(fake) == total, 60, "%d sent" % total)
    stats = fake.stats()
    assert stats["throttled"] == 0, stats
    assert stats["max_concurrency"][MAILBOX_A] <= 4, stats
    return stats


def sent_total(fake):
    return fake.stats()["sent"]


def cluster_of(d):
    return d.ctl("status")["cluster"]


def joined(ds, timeout=10):
    """Every node on Redis (past its rejoin wait), seeing all the others."""
    wait_for(lambda: all(cluster_of(d)["reachable"] for d in ds), timeout,
             "every node on Redis")
    names = sorted(cluster_of(d)["node"] for d in ds)
    wait_for(lambda: all(sorted(cluster_of(d)["nodes"]) == names
                         for d in ds), timeout, "every node seen")


def joined_nodes(relayd_factory, fake, redis, latency_ms, **kw):
    """nodes() answered by a Graph that takes latency_ms, once joined."""
    fake.config(latency_ms=latency_ms)
    ds = nodes(relayd_factory, fake, redis, **kw)
    joined(ds)
    return ds


def test_cluster_keeps_four_in_flight_across_nodes(relayd_factory,
                                                   fake_graph, redis):
    ds = joined_nodes(relayd_factory, fake_graph, redis, 300)
    stats = submit_within_four(fake_graph, ds, 15)
    assert max_overlap(graph_requests(fake_graph, MAILBOX_A)) <= 4
    # All four were used together (no fixed split per node).
    assert stats["max_concurrency"][MAILBOX_A] == 4, stats
    st = ds[0].relayctl("status", check=True).stdout
    assert "cluster: node n0, Redis 127.0.0.1:%d/0 reachable" % redis.port \
        in st, st
    assert "n0" in st and "n1" in st and "n2" in st, st
    metrics = ds[1].relayctl("metrics", check=True).stdout
    assert "relayd_redis_up 1" in metrics
    assert "relayd_cluster_nodes 3" in metrics


def test_without_cluster_the_same_load_gets_429s(relayd_factory,
                                                 fake_graph, redis):
    """The counterpart: the same three nodes alone overrun the mailbox,
    so the test above can fail."""
    fake_graph.config(latency_ms=300)
    ds = nodes(relayd_factory, fake_graph, redis, cluster=False)
    for d in ds:
        submit(d, 15)
    wait_for(lambda: fake_graph.stats()["throttled"] > 0, 30, "a 429")
    assert fake_graph.stats()["max_concurrency"][MAILBOX_A] > 4
    assert ds[0].ctl("status")["cluster"] is None


def test_redis_stopped_and_restarted_loses_nothing(relayd_factory,
                                                   fake_graph, redis):
    ds = joined_nodes(relayd_factory, fake_graph, redis, 200)
    for d in ds:
        submit(d, 8, tag="before")
    redis.stop()
    wait_for(lambda: not any(cluster_of(d)["reachable"] for d in ds), 10,
             "every node without Redis")
    for d in ds:
        submit(d, 8, tag="during")
        d.wait_log(r"cluster: Redis at 127\.0\.0\.1:%d/0 unreachable"
                   % redis.port)
        assert "relayd_redis_up 0" in d.relayctl("metrics").stdout
        assert "UNREACHABLE" in d.relayctl("status").stdout
    # Alone, each node takes 4 / 3 nodes = 1 slot: still within Graph's 4.
    wait_for(lambda: sent_total(fake_graph) >= 30, 30, "delivery going on")
    redis.start()
    back = time.monotonic()
    wait_for(lambda: all(cluster_of(d)["reachable"] for d in ds), 5,
             "every node back on Redis within 5 s")
    assert time.monotonic() - back <= 5
    for d in ds:
        submit(d, 8, tag="after")
    wait_for(lambda: sent_total(fake_graph) == 72, 60, "72 messages sent")
    stats = fake_graph.stats()
    assert stats["throttled"] == 0, stats
    assert stats["max_concurrency"][MAILBOX_A] <= 4, stats
    for d in ds:
        assert len(d.log.split("unreachable (")) == 2, \
            "one warning per outage:\n" + d.log
        wait_for(lambda: d.queued() == [], 10, "%s's queue empty" % d.name)


def test_dead_node_slots_come_back_with_the_lease(relayd_factory,
                                                  fake_graph, redis):
    # [graph] timeout 3s: leases of 13 s.
    a, b = joined_nodes(relayd_factory, fake_graph, redis, 2500, n=2)
    submit(a, 4, tag="dying")
    wait_for(lambda: cluster_of(a)["slots_held"] == 4, 10,
             "node a holding 4 slots")
    a.kill()
    killed = time.monotonic()
    a.expect_dead = True
    submit(b, 4, tag="survivor")
    # b waits for the dead node's leases, then has all four slots.
    wait_for(lambda: any(m["slots"].get("n0") for m in
                         cluster_of(b)["mailboxes"]), 5,
             "b sees n0's slots")
    wait_for(lambda: len([s for s in fake_graph.sent()
                          if "survivor" in s["subject"]]) == 4, 25,
             "b's 4 messages sent once the leases ended")
    took = time.monotonic() - killed
    assert took <= 13 + 5, took
    stats = fake_graph.stats()
    assert stats["throttled"] == 0, stats
    firsts = [s["time"] for s in fake_graph.sent()
              if "survivor" in s["subject"]]
    # Nothing of b's went while n0's four leases were alive (~10 s).
    assert min(firsts) - killed >= 8, (min(firsts) - killed)


def test_pacing_across_nodes(relayd_factory, fake_graph, redis):
    """messages_per_minute = 30 for the mailbox across 3 nodes: a burst
    of 30, then one every 2 s, whichever node sends."""
    ds = joined_nodes(relayd_factory, fake_graph, redis, 0,
                      queue={"messages_per_minute": "30"})
    start = time.time()
    for d in ds:
        submit(d, 20, tag="paced")
    window = 6
    time.sleep(window - (time.time() - start))
    n = len([s for s in fake_graph.sent()
             if s["time"] - start <= window])
    # 30 at once, then 30/min: 3 more in 6 s (one of slack).
    assert 30 <= n <= 30 + window // 2 + 1, n


def test_a_429_hold_applies_on_every_node(relayd_factory, fake_graph,
                                          redis):
    a, b = joined_nodes(relayd_factory, fake_graph, redis, 0, n=2)
    fake_graph.faults([{"kind": "graph", "status": 429, "retry_after": "4",
                        "count": 1}])
    submit(a, 1, tag="first")
    a.wait_log(r"graph deferred mailbox=%s graph_status=429" % MAILBOX_A)
    held = time.time()
    submit(b, 1, tag="second")
    # b has never had a 429; the hold is a's, through Redis.
    wait_for(lambda: [m for m in b.ctl("status")["throttled_mailboxes"]
                      if m["mailbox"] == MAILBOX_A], 5,
             "b holding the mailbox too")
    wait_for(lambda: sent_total(fake_graph) == 2, 15, "both sent")
    second = [s["time"] for s in fake_graph.sent()
              if "second" in s["subject"]]
    assert second[0] - held >= 3.5, second[0] - held


def test_redis_password_file(relayd_factory, fake_graph, tmp_path):
    r = Redis(tmp_path / "redis-auth", args=["--requirepass", "s3cret"])
    r.start()
    try:
        good = tmp_path / "redis.pw"
        bad = tmp_path / "wrong.pw"
        for path, text in ((good, "s3cret\n"), (bad, "nope\n")):
            path.write_text(text)
            path.chmod(0o600)
        a, = nodes(relayd_factory, fake_graph, r, n=1,
                   password_file=str(good))
        b, = nodes(relayd_factory, fake_graph, r, n=1, first=1,
                   password_file=str(bad))
        wait_for(lambda: cluster_of(a)["reachable"], 10, "a on Redis")
        b.wait_log(r"cluster: Redis at 127\.0\.0\.1:%d/0 unreachable "
                   r"\(WRONGPASS" % r.port)
        assert not cluster_of(b)["reachable"]
        assert "s3cret" not in a.log and "nope" not in b.log
        submit(b, 1)    # alone, b still delivers
        wait_for(lambda: sent_total(fake_graph) == 1, 10, "b delivering")
    finally:
        r.stop()


def test_redis_that_stops_answering_counts_as_away(relayd_factory,
                                                   fake_graph, redis):
    """SIGSTOP: the connection stays open, nothing answers. After 3 s the
    nodes go on alone; SIGCONT, and they share again."""
    ds = joined_nodes(relayd_factory, fake_graph, redis, 50, n=2)
    redis.proc.send_signal(signal.SIGSTOP)
    try:
        for d in ds:
            d.wait_log(r"cluster: Redis at .* unreachable \(no answer for "
                       r"3s\)", timeout=10)
        for d in ds:
            submit(d, 3, tag="stalled")
        wait_for(lambda: sent_total(fake_graph) == 6, 15,
                 "delivery without an answer from Redis")
    finally:
        redis.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: all(cluster_of(d)["reachable"] for d in ds), 10,
             "both nodes back on Redis")
    assert fake_graph.stats()["throttled"] == 0


def test_recipients_a_day_are_shared_and_defer(relayd_factory, fake_graph,
                                               redis):
    """10,000 recipients a day per mailbox across the nodes: node a
    spends them (20 x 500); node b's next message waits, queued, neither
    sent nor failed."""
    a, b = joined_nodes(relayd_factory, fake_graph, redis, 0, n=2)
    rcpts = ["rcpt%d@b.test" % i for i in range(500)]
    with a.connect() as c:
        c.ehlo()
        for i in range(20):
            assert c.send_mail(MAILBOX_A, rcpts, simple("day %d" % i)).qid
    wait_for(lambda: sent_total(fake_graph) == 20, 30, "10,000 recipients")
    with b.connect() as c:
        c.ehlo()
        assert c.send_mail(MAILBOX_A, rcpts, simple("one too many")).qid
    time.sleep(3)
    assert sent_total(fake_graph) == 20
    assert len(b.queued()) == 1 and b.dead() == []
    st = b.ctl("status")
    assert st["queue"]["queued"] == 1
    # Why it waits, and till when: a day's worth refills in 24 h.
    [q] = b.ctl("queue")["queue"]
    assert q["hold"] == "recipient budget spent (10,000 a day)", q
    assert q["hold_until"] and q["next_attempt"] == q["hold_until"], q
    assert [m["mailbox"] for m in st["recipient_budget_spent"]] == \
        [MAILBOX_A], st
    b.wait_log(r"mailbox=%s recipient budget spent: Exchange's 10000 "
               r"recipients a day per mailbox, counted across the nodes"
               % MAILBOX_A)
    waits = [l for l in b.relayctl("metrics").stdout.splitlines()
             if l.startswith("relayd_cluster_waits_total ")]
    assert int(waits[0].split()[1]) > 0, waits


def test_recipients_a_day_alone_keep_to_a_share(relayd_factory, fake_graph,
                                                redis):
    """Redis away: a node keeps to its share of the 10,000 recipients a
    day. 63 other nodes (written into Redis here, seen for the next hour)
    make the share 10,000 / 64 = 156: a message to 100 goes, the next one
    to 100 is deferred for hours, not failed, and says why."""
    a, = joined_nodes(relayd_factory, fake_graph, redis, 0, n=1)
    [key] = redis.command("KEYS", "relayd:*:nodes")
    for i in range(63):
        redis.command("ZADD", key.decode(), int(time.time() * 1000) +
                      3600 * 1000, "ghost%d" % i)
    wait_for(lambda: len(cluster_of(a)["nodes"]) == 64, 5, "64 nodes seen")
    redis.stop()
    wait_for(lambda: not cluster_of(a)["reachable"], 10, "Redis away")
    rcpts = ["rcpt%d@b.test" % i for i in range(100)]
    with a.connect() as c:
        c.ehlo()
        for i in range(2):
            assert c.send_mail(MAILBOX_A, rcpts, simple("alone %d" % i)).qid
    wait_for(lambda: sent_total(fake_graph) >= 1, 10, "the first sent")
    a.wait_log(r"mailbox=%s recipient budget spent: Redis is away, so this "
               r"node keeps to its share of Exchange's 10000 recipients a "
               r"day per mailbox \(156, 1/64\); 1 message\(s\) deferred"
               % MAILBOX_A)
    time.sleep(2.5)     # past a recheck: still waiting
    assert sent_total(fake_graph) == 1
    assert len(a.queued()) == 1 and a.dead() == []
    [q] = a.ctl("queue")["queue"]
    assert q["hold"] == "recipient budget spent (10,000 a day)", q
    # 44 recipients' worth of 1/156 of a day: about 6.8 hours.
    left = time.mktime(time.strptime(q["hold_until"], "%Y-%m-%dT%H:%M:%SZ")) \
        - time.mktime(time.gmtime())
    assert 6.5 * 3600 < left < 7 * 3600, q
    st = a.relayctl("status", check=True).stdout
    assert "recipient budget spent (Exchange: 10,000 a day per mailbox): " \
        "%s, its next message at " % MAILBOX_A in st, st
    r = a.relayctl("retry", q["id"])
    assert r.returncode == 1 and "has spent Exchange's 10000 recipients " \
        "a day: its next message goes at " in r.stderr, r.stderr


def one_node(relayd_factory, fake, url, start=True):
    """One relayd with [cluster] redis = url."""
    sections = graph_sections(fake, timeout="3s")
    sections["queue"] = {"retry_min": "200ms", "retry_max": "1s",
                         "messages_per_minute": "0"}
    sections["cluster"] = {"redis": url, "node": "n0"}
    return relayd_factory(sections=sections, start=start)


def test_redis_by_host_name(relayd_factory, fake_graph, redis):
    """redis = redis://localhost:PORT: the name is looked up on the loop
    (/etc/hosts, read before the sandbox) and Redis reached at the
    address; status and the log keep the name."""
    d = one_node(relayd_factory, fake_graph,
                 "redis://localhost:%d/0" % redis.port)
    wait_for(lambda: cluster_of(d)["reachable"], 10, "on Redis by name")
    assert cluster_of(d)["redis"] == "localhost:%d/0" % redis.port
    d.wait_log(r"cluster: Redis at localhost:%d/0: node n0" % redis.port)
    submit(d, 2)
    wait_for(lambda: sent_total(fake_graph) == 2, 10, "delivered")
    assert "unreachable" not in d.log


def test_redis_name_dns_never_answers(relayd_factory, fake_graph,
                                      tmp_path):
    """redis = a name whose DNS never answers: a resolver on loopback that
    takes the queries and says nothing, in place of /etc/resolv.conf in
    relayd's own mount namespace (no network beyond loopback). The
    delivery loop never waits for the lookup: mail goes on the node's
    share, relayctl answers at once, and status and the log say that the
    name does not resolve. (A blocking getaddrinfo would stop the loop
    for 3 s x 2 attempts at each reconnect.)"""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        dns.bind(("127.0.0.153", 53))
    except OSError as e:
        pytest.skip("cannot play a silent DNS server on 127.0.0.153:53: "
                    "%s" % e)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.153\noptions timeout:3 "
                      "attempts:2\n")
    wrap = ["unshare", "-m", "sh", "-c",
            'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(resolv)]
    if subprocess.run(wrap + ["true"]).returncode != 0:
        pytest.skip("no mount namespace here (unshare -m, mount --bind)")
    name = "redis.relayd-test.invalid"
    try:
        d = one_node(relayd_factory, fake_graph, "redis://%s:6379/0" % name,
                     start=False)
        plain = d.command
        d.command = lambda: wrap + plain()
        d.start()
        d.wait_log(r"cluster: Redis at %s:6379/0 unreachable \(cannot "
                   r"resolve %s: no answer from DNS in 3s\)"
                   % (re.escape(name), re.escape(name)), timeout=10)
        assert dns.recv(512), "the lookup went to the silent resolver"
        start = time.monotonic()
        submit(d, 6, tag="no-dns")
        wait_for(lambda: sent_total(fake_graph) == 6, 10,
                 "delivery while DNS says nothing")
        took = time.monotonic() - start
        # The loop answers at once, again and again, over reconnects.
        slowest = 0
        for _ in range(12):
            t = time.monotonic()
            st = d.ctl("status", timeout=10)
            slowest = max(slowest, time.monotonic() - t)
            time.sleep(0.25)
        assert slowest < 1, slowest
        assert took < 5, took
        c = st["cluster"]
        assert not c["reachable"] and c["redis"] == "%s:6379/0" % name
        assert c["error"].startswith("cannot resolve %s" % name), c
        text = d.relayctl("status", check=True).stdout
        assert "Redis %s:6379/0 UNREACHABLE since" % name in text, text
        assert "(cannot resolve %s" % name in text, text
    finally:
        dns.close()


def test_two_relayds_with_one_node_name(relayd_factory, fake_graph, redis):
    """Two relayds given the same [cluster] node: each says so, in the log
    and in status, and their leases still stay apart (each carries the
    process's own token): never more than 4 in flight, no 429."""
    fake_graph.config(latency_ms=300)
    ds = nodes(relayd_factory, fake_graph, redis, n=2, node="twin")
    for d in ds:
        d.wait_log(r'cluster: another relayd uses the node name "twin" '
                   r'with Redis 127\.0\.0\.1:%d/0: give each relayd a '
                   r'\[cluster\] node of its own' % redis.port, timeout=15)
        assert cluster_of(d)["node_name_clash"] is True
    st = ds[0].relayctl("status", check=True).stdout
    assert "cluster: WARNING: another relayd uses the node name twin" in st
    wait_for(lambda: all(cluster_of(d)["reachable"] for d in ds), 10,
             "both on Redis")
    submit_within_four(fake_graph, ds, 12)


def test_a_restarted_node_is_not_taken_for_another(relayd_factory,
                                                   fake_graph, redis):
    """A node restarted at once finds its previous life's token in Redis
    (its key has not expired): that alone is no clash."""
    (d,) = nodes(relayd_factory, fake_graph, redis, n=1)
    joined([d])
    d.stop()
    d.start()
    joined([d])
    time.sleep(4)
    assert cluster_of(d)["node_name_clash"] is False
    assert "another relayd uses the node name" not in d.log
