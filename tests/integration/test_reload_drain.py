"""SIGHUP reloads the configuration; SIGTERM drains. Real daemon, real
clients, nothing acknowledged may be lost.
"""
import signal
import threading
import time

from relaydtest.graph import graph_relayd
from relaydtest.smtp import SMTPConn, simple, smtp_send
from relaydtest.wait import wait_for

TIMEOUT = 15


def hup(d):
    d.proc.send_signal(signal.SIGHUP)


def test_reload_applies_allow_list_to_new_sessions(relayd_factory):
    d = relayd_factory()
    old = d.connect()
    old.ehlo()
    d.smtp_opts["allow_networks"] = "192.0.2.0/24"
    d.write_config()
    hup(d)
    d.wait_log(r"reload: .* in force for new sessions", 5)
    # a new session is not allowed to relay any more
    with d.connect() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@b.test>").code == 250
        r = c.cmd("RCPT TO:<x@y.test>")
        assert r.code == 554 and "Relay access denied" in r.text, r
    # the session opened before keeps what it started with
    r = old.send_mail()
    assert r.code == 250 and r.qid, r
    old.close()
    d.assert_alive()


def test_reload_refuses_a_broken_config(relayd_factory):
    d = relayd_factory()
    good = d.conf_path.read_text()
    d.conf_path.write_text(good + "\n[smtp]\nclinet_id = x\nmax_errors = "
                           "banana\n")
    hup(d)
    d.wait_log(r"reload refused: .* has errors; the configuration in "
               r"force stays", 5)
    assert 'unknown key "clinet_id"' in d.log
    d.assert_alive()
    assert d.send_one()         # still serving, on the old config
    # a users_file that cannot be read refuses the reload too
    d.conf_path.write_text(good + "\n[auth]\nusers_file = /nonexistent\n")
    hup(d)
    wait_for(lambda: d.log.count("reload refused") == 2, 5, "2nd refusal")
    assert d.send_one()


def test_reload_restart_only_keys_are_named(relayd_factory,
                                            shared_fake_graph):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake)
    d.sections["queue"]["retry_max"] = "7m"
    d.write_config()
    hup(d)
    d.wait_log(r"reload: \[queue\] retry_max changed: takes effect at "
               r"restart", 5)
    d.wait_log(r"in force for new sessions", 5)


def test_reload_under_load_loses_nothing(relayd_factory, shared_fake_graph):
    """Messages flow while relayd is told to reload ten times, one of
    them a broken file: every 250 is delivered, no session is dropped."""
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake)
    good = d.conf_path.read_text()
    qids, errors = [], []
    stop = threading.Event()

    def sender(t):
        n = 0
        while not stop.is_set():
            n += 1
            try:
                qids.append(smtp_send(d, simple("load %d-%d" % (t, n))))
            except Exception as e:      # noqa: BLE001 - reported below
                errors.append(repr(e))
    threads = [threading.Thread(target=sender, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(10):
            time.sleep(0.2)
            if i == 5:
                d.conf_path.write_text(good + "\n[smtp]\nbogus = 1\n")
            else:
                d.conf_path.write_text(good)
            hup(d)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    assert len(qids) > 10
    fake.wait_sent(len(qids), 60)
    sent = {r["subject"] for r in fake.sent()}
    assert len(sent) == len(qids)
    assert d.log.count("reload refused") == 1
    assert d.log.count("in force for new sessions") == 9
    d.assert_alive()


def test_sigterm_drains(relayd_factory, shared_fake_graph):
    """SIGTERM: an idle session hears 421 at once, a new client is told
    421 (or finds the port closed once relayd is gone), a session in
    DATA finishes its message (250), which is on disk; relayd then exits
    0 and the message is delivered after a restart."""
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "status": 503, "count": -1}])
    d = graph_relayd(relayd_factory, fake)
    idle = d.connect()
    idle.ehlo()
    busy = d.connect()
    busy.ehlo()
    assert busy.cmd("MAIL FROM:<sender@contoso.test>").code == 250
    assert busy.cmd("RCPT TO:<rcpt@fabrikam.test>").code == 250
    assert busy.cmd("DATA").code == 354
    busy.send(b"Subject: in flight at SIGTERM\r\n\r\nfirst half\r\n")
    d.proc.send_signal(signal.SIGTERM)
    r = idle.reply()
    assert r.code == 421 and "shutting down" in r.text, r
    d.wait_log(r"signal 15, stopping: new clients get 421", 5)
    with SMTPConn(d.port) as late:
        assert late.greeting.code == 421, late.greeting
    time.sleep(0.5)
    assert d.running()          # still waiting for the session in DATA
    busy.send(b"second half\r\n.\r\n")
    r = busy.reply()
    assert r.code == 250 and r.qid, r
    r = busy.reply()            # and then it is told to go
    assert r.code == 421, r
    assert d.proc.wait(10) == 0
    d.expect_dead = True
    fake.faults([])
    d.start()
    [rec] = fake.wait_sent(1, TIMEOUT)
    assert rec["subject"] == "in flight at SIGTERM"


def test_sigterm_drain_timeout(relayd_factory):
    """A session that never finishes does not keep relayd up past
    drain_timeout; a second SIGTERM stops at once."""
    d = relayd_factory(smtp={"drain_timeout": "1s"})
    c = d.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@b.test>").code == 250
    assert c.cmd("RCPT TO:<x@y.test>").code == 250
    assert c.cmd("DATA").code == 354
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(10) == 0
    assert 0.9 <= time.monotonic() - t0 < 5
    assert "drain_timeout: 1 session(s) still open" in d.log
    d.expect_dead = True
    d2 = relayd_factory(name="second", smtp={"drain_timeout": "60s"})
    c = d2.connect()
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@b.test>").code == 250
    d2.proc.send_signal(signal.SIGTERM)
    d2.wait_log("stopping: new clients get 421", 5)
    d2.proc.send_signal(signal.SIGTERM)
    assert d2.proc.wait(5) == 0
    assert "again, stopping now" in d2.log
    d2.expect_dead = True
