"""The status socket and relayctl: every command, against the real daemon.

relayd listens on [status] socket (the fixture puts it in the test's work
directory); relayctl -s talks to it. The fake Graph supplies the states:
a 503 defers a message, a 429 throttles a mailbox, an unreachable Graph
(a hang) keeps one in flight.
"""
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import time
import urllib.request

import pytest

from relaydtest.env import RELAYCTL_BIN
from relaydtest.graph import graph_relayd
from relaydtest.ports import free_port
from relaydtest.smtp import SENDER, simple, smtp_send
from relaydtest.wait import wait_for

TIMEOUT = 15


def queue(d):
    return {m["id"]: m for m in d.ctl("queue")["queue"]}


def wait_state(d, qid, state, timeout=TIMEOUT):
    wait_for(lambda: queue(d).get(qid, {}).get("state") == state, timeout,
             "%s %s" % (qid, state))
    return queue(d)[qid]


def test_status_answers(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake)
    smtp_send(d, simple("one"))
    fake.wait_sent(1, TIMEOUT)
    wait_for(lambda: d.ctl("status")["totals"]["sent"] == 1, TIMEOUT,
             "sent=1")
    st = d.ctl("status")
    assert re.match(r"\d+\.\d+", st["version"])
    assert st["pid"] == d.pid and st["uptime"] >= 0
    assert st["listeners"] == ["127.0.0.1:%d" % d.port]
    assert st["connections"] == 0
    assert st["queue"] == {"queued": 0, "in_flight": 0, "deferred": 0,
                           "throttled": 0, "held": 0, "graph_held": 0,
                           "dead": 0}
    assert st["token"]["state"] == "valid" and st["token"]["failures"] == 0
    assert st["graph"] == {"state": "ok", "held_until": None, "failures": 0}
    assert st["totals"] == {"sent": 1, "deferred": 0, "failed": 0}
    assert st["delivery"] == "on"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$",
                    st["token_expires"])
    assert st["throttled_mailboxes"] == [] and st["recent_errors"] == []
    # the socket: a socket, mode 0660
    mode = os.stat(d.sections["status"]["socket"]).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
    # relayctl's summary says the same
    r = d.relayctl("status")
    assert r.returncode == 0, r.stderr
    assert "queue: 0 queued, 0 in flight, 0 deferred, 0 throttled, 0 " \
        "held, 0 dead" in r.stdout
    assert "since start: 1 sent, 0 deferred attempts, 0 failed" in r.stdout
    assert "delivery: on\n" in r.stdout
    assert re.search(r"^token: expires \S+Z$", r.stdout, re.M), r.stdout
    j = json.loads(d.relayctl("status", "--json").stdout)
    assert j["totals"]["sent"] == 1
    # -c: the socket named in relayd.conf
    r = subprocess.run([str(RELAYCTL_BIN), "-c", str(d.conf_path), "status",
                        "--json"], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 0 and json.loads(r.stdout)["pid"] == d.pid


def test_queue_show_and_errors(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "status": 503, "count": -1,
                  "retry_after": "60"}])
    d = graph_relayd(relayd_factory, fake)
    qid = smtp_send(d, simple("deferred one"),
                    rcpts=["a@b.test", "c@d.test"])
    m = wait_state(d, qid, "deferred")
    assert m["attempts"] == 1 and m["rcpts"] == 2
    assert m["sender"] == SENDER and m["mailbox"]
    assert m["last_error"].startswith("serviceNotAvailable") or \
        "503" in m["last_error"], m
    assert m["next_attempt"] and m["size"] > 0 and m["age"] >= 0
    st = d.ctl("status")
    assert st["queue"]["deferred"] == 1
    assert st["totals"]["deferred"] == 1
    [e] = st["recent_errors"]
    assert e["id"] == qid and e["status"] == 503 and not e["permanent"]
    assert m["recipients"] == ["a@b.test", "c@d.test"]
    shown = d.ctl("show " + qid)
    assert shown["recipients"] == ["a@b.test", "c@d.test"]
    assert shown["headers"]["Subject"] == "deferred one"
    # relayctl: the table and show
    r = d.relayctl("queue")
    assert r.returncode == 0 and qid in r.stdout and "deferred" in r.stdout
    assert "last error:" in r.stdout and "-- 1 message(s)" in r.stdout
    row = [x for x in r.stdout.splitlines() if x.startswith(qid)][0]
    assert "<%s> -> a@b.test, c@d.test (" % SENDER in row, row
    rows = json.loads(d.relayctl("queue", "--json").stdout)["queue"]
    assert [x["id"] for x in rows] == [qid]
    assert rows[0]["recipients"] == ["a@b.test", "c@d.test"]
    # show: a readable view; --json (either place) the JSON
    r = d.relayctl("show", qid)
    assert r.returncode == 0, r.stderr
    view = dict((k.strip(), v.strip()) for k, v in (
        line.split(":", 1) for line in r.stdout.splitlines()
        if not line.startswith(" ")))
    assert view["id"] == qid and view["state"] == "deferred"
    assert view["sender"] == "<%s>" % SENDER
    assert re.search(r"^recipients:\s+a@b\.test\n\s+c@d\.test$", r.stdout,
                     re.M), r.stdout
    assert view["attempts"] == "1" and view["Subject"] == "deferred one"
    assert view["size"] == "%d bytes" % m["size"]
    assert view["last error"] == m["last_error"]
    assert re.match(r"\d+s \(arrived \d{4}-", view["age"]), view
    assert view["next attempt"] == m["next_attempt"]
    for args in (("show", "--json", qid), ("show", qid, "--json")):
        j = json.loads(d.relayctl(*args).stdout)
        assert j["id"] == qid and j["recipients"] == ["a@b.test", "c@d.test"]
    # an unknown id: exit 1 with a clear message
    r = d.relayctl("show", "0123456789ABCDEF")
    assert r.returncode == 1 and "no such message" in r.stderr


def test_queue_names_the_first_recipients(relayd_factory, shared_fake_graph):
    """Six recipients: the queue names the first three and counts the
    rest; show lists them all."""
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "status": 503, "count": -1,
                  "retry_after": "60"}])
    d = graph_relayd(relayd_factory, fake)
    rcpts = ["r%d@fabrikam.test" % i for i in range(6)]
    qid = smtp_send(d, simple("six"), rcpts=rcpts)
    m = wait_state(d, qid, "deferred")
    assert m["rcpts"] == 6 and m["recipients"] == rcpts[:3]
    r = d.relayctl("queue")
    assert "-> r0@fabrikam.test, r1@fabrikam.test, r2@fabrikam.test +3 (" \
        in r.stdout, r.stdout
    r = d.relayctl("show", qid)
    assert all(re.search(r"\s%s$" % re.escape(a), r.stdout, re.M)
               for a in rcpts), r.stdout
    # after a restart the queue is read back from disk: the same
    d.restart()
    assert queue(d)[qid]["recipients"] == rcpts[:3]


def test_status_says_why_the_token_fails(relayd_factory, shared_fake_graph):
    """A wrong secret: status says since when the token fails, Entra's
    code and what to do, never "none yet"."""
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake, secret="wrong")
    before = time.time()
    qid = smtp_send(d, simple("no token"))
    wait_for(lambda: d.ctl("status")["token"]["state"] == "failing",
             TIMEOUT, "the token failing")
    t = d.ctl("status")["token"]
    assert t["failures"] >= 1 and t["expires"] is None
    assert t["last_error"].startswith("AADSTS7000215 "), t
    assert "client_secret_file" in t["last_error"]
    since = time.mktime(time.strptime(t["failing_since"],
                                      "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert before - 1 <= since <= time.time() + 1, (before, t)
    assert t["next_attempt"] > t["failing_since"]
    r = d.relayctl("status")
    assert "none yet" not in r.stdout, r.stdout
    line = [x for x in r.stdout.splitlines() if x.startswith("token:")][0]
    assert line.startswith("token: failing since %s: AADSTS7000215 invalid "
                           "client secret (check client_secret_file"
                           % t["failing_since"]), line
    assert qid in queue(d)


def test_status_shows_a_graph_wide_hold(relayd_factory, shared_fake_graph):
    """3 failures in a row from two mailboxes hold every delivery: status
    says so, with until when, and the waiting messages are not counted as
    throttled."""
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "status": 503, "retry_after": None,
                  "count": -1}])
    d = graph_relayd(relayd_factory, fake)
    # failures of two mailboxes: Graph's trouble, not one mailbox's
    smtp_send(d, simple("first"))
    smtp_send(d, simple("second", frm="other@contoso.test"),
              mail_from="other@contoso.test")
    d.wait_log(r"graph unavailable: 3 failures in a row", TIMEOUT)
    qid = smtp_send(d, simple("during the hold"))
    st = d.ctl("status")
    assert st["graph"]["state"] == "held", st["graph"]
    # 3 make the hold; an answer to a request sent before it may add one
    assert st["graph"]["failures"] >= 3 and st["graph"]["held_until"]
    assert st["queue"]["throttled"] == 0 and st["queue"]["graph_held"] >= 1
    assert st["throttled_mailboxes"] == []
    held = queue(d)[qid]
    assert held["state"] == "graph held" and held["next_attempt"], held
    r = d.relayctl("status")
    assert re.search(r"^graph: unavailable, all deliveries held until "
                     r"\S+Z \([3-9] failures in a row\)$", r.stdout, re.M), \
        r.stdout
    assert "0 throttled" in r.stdout and "waiting for Graph" in r.stdout
    assert 'relayd_queue_messages{state="throttled"} 0' in \
        d.relayctl("metrics").stdout


def test_retry_now(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "status": 503, "retry_after": "300"}])
    d = graph_relayd(relayd_factory, fake)
    qid = smtp_send(d, simple("retry me"))
    wait_state(d, qid, "deferred")
    r = d.relayctl("retry", qid)
    assert r.returncode == 0 and "1 message(s)" in r.stdout
    fake.wait_sent(1, TIMEOUT)
    wait_for(lambda: qid not in queue(d), TIMEOUT, "delivered")


def test_retry_all_lifts_throttling(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "status": 429, "retry_after": "300"}])
    d = graph_relayd(relayd_factory, fake)
    qid = smtp_send(d, simple("throttled"))
    wait_for(lambda: d.ctl("status")["throttled_mailboxes"], TIMEOUT,
             "a throttled mailbox")
    [t] = d.ctl("status")["throttled_mailboxes"]
    assert t["mailbox"] == SENDER.lower() and t["resume"]
    assert queue(d)[qid]["state"] == "throttled"
    assert d.relayctl("retry", "all").returncode == 0
    fake.wait_sent(1, TIMEOUT)
    wait_for(lambda: d.ctl("status")["throttled_mailboxes"] == [], TIMEOUT,
             "no throttled mailbox")


def test_hold_release_survives_restart(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "status": 503, "retry_after": "1",
                  "count": -1}])
    d = graph_relayd(relayd_factory, fake)
    qid = smtp_send(d, simple("hold me"))
    wait_state(d, qid, "deferred")
    r = d.relayctl("hold", qid)
    assert r.returncode == 0 and "held" in r.stdout
    assert queue(d)[qid]["state"] == "held"
    assert d.ctl("status")["queue"]["held"] == 1
    n = len(fake.requests())
    time.sleep(1.5)             # past its Retry-After: still no attempt
    assert len(fake.requests()) == n
    # retry refuses a held message; release is the way
    r = d.relayctl("retry", qid)
    assert r.returncode == 1 and "held" in r.stderr
    d.restart()
    assert queue(d)[qid]["state"] == "held"
    fake.faults([])
    assert d.relayctl("release", qid).returncode == 0
    fake.wait_sent(1, TIMEOUT)
    r = d.relayctl("release", qid)
    assert r.returncode == 1


def test_delete(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "status": 503, "retry_after": "300"}])
    d = graph_relayd(relayd_factory, fake)
    qid = smtp_send(d, simple("delete me"))
    wait_state(d, qid, "deferred")
    r = d.relayctl("delete", qid)
    assert r.returncode == 0 and "deleted" in r.stdout
    assert qid not in queue(d)
    assert re.search(r"%s deleted by relayctl" % qid, d.log)
    d.restart()                 # gone for good
    assert qid not in queue(d)
    assert d.relayctl("delete", qid).returncode == 1


def test_in_flight_and_hold_while_in_flight(relayd_factory,
                                            shared_fake_graph):
    fake = shared_fake_graph
    fake.faults([{"kind": "graph", "delay_ms": 2000, "status": 503,
                  "retry_after": "300"}])
    d = graph_relayd(relayd_factory, fake)
    qid = smtp_send(d, simple("slow"))
    wait_state(d, qid, "in flight")
    r = d.relayctl("delete", qid)
    assert r.returncode == 1 and "being delivered" in r.stderr
    # the request went: relayctl says so, and never "held" while it is
    # sent; Graph's 503 comes back, and then the hold applies
    r = d.relayctl("hold", qid)
    assert r.returncode == 1 and "being sent now" in r.stderr, r
    assert "held" not in r.stdout
    wait_state(d, qid, "held")


def test_metrics_socket_and_http(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    port = free_port()
    d = graph_relayd(relayd_factory, fake, start=False)
    d.sections["status"]["metrics_listen"] = "127.0.0.1:%d" % port
    d.start()
    smtp_send(d, simple("count me"))
    fake.wait_sent(1, TIMEOUT)
    wait_for(lambda: "relayd_messages_sent_total 1" in
             d.relayctl("metrics").stdout, TIMEOUT, "sent_total 1")
    text = d.relayctl("metrics").stdout
    for name in ("relayd_info", "relayd_uptime_seconds",
                 "relayd_smtp_connections", "relayd_queue_messages",
                 "relayd_delivery_deferrals_total",
                 "relayd_messages_failed_total",
                 "relayd_token_expiry_seconds"):
        assert "# TYPE %s " % name in text, name
    assert 'relayd_queue_messages{state="dead"} 0' in text
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                timeout=10) as resp:
        body = resp.read().decode()
        assert resp.headers["Content-Type"].startswith("text/plain")
    assert "relayd_messages_sent_total 1" in body


def public_socket(d, tmp_path):
    """A socket path nobody can reach through the directories."""
    sock = "/tmp/relayd-st-%d-%s.sock" % (os.getpid(), tmp_path.name[-12:])
    d.sections["status"]["socket"] = sock
    return sock


def status_as_nobody(relayd_factory, fake, tmp_path, **status):
    """relayd with a socket nobody can reach (mode 0666, so SO_PEERCRED
    decides) and relayctl status run as nobody: (relayd, result)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run relayctl as nobody")
    d = graph_relayd(relayd_factory, fake, start=False)
    d.sections["status"].update(status)
    sock = public_socket(d, tmp_path)
    d.start()
    os.chmod(sock, 0o666)
    nobody = pwd.getpwnam("nobody")

    def as_nobody():
        os.setgid(nobody.pw_gid)
        os.setgroups([])
        os.setuid(nobody.pw_uid)
    # The build tree may sit under a directory nobody cannot enter (CI's
    # sanitizer copy is mode 0700): run a copy from a public one.
    pub = tempfile.mkdtemp(prefix="relayctl-")
    try:
        os.chmod(pub, 0o755)
        ctl = os.path.join(pub, "relayctl")
        shutil.copy(RELAYCTL_BIN, ctl)
        os.chmod(ctl, 0o755)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ASAN_", "UBSAN_"))}
        return d, subprocess.run([ctl, "-s", sock, "status"],
                                 capture_output=True, text=True,
                                 timeout=10, preexec_fn=as_nobody, env=env)
    finally:
        shutil.rmtree(pub, ignore_errors=True)


def test_refuses_other_users(relayd_factory, shared_fake_graph, tmp_path):
    """Only root, relayd's user and [status] users/groups: nobody is
    refused with a line that says why, and relayctl exits 77."""
    d, r = status_as_nobody(relayd_factory, shared_fake_graph, tmp_path)
    assert r.returncode == 77, (r.returncode, r.stderr)
    assert "permission denied" in r.stderr
    assert re.search(r"status: refused uid=%d" % pwd.getpwnam(
        "nobody").pw_uid, d.log)


@pytest.mark.parametrize("status", [{"users": "nobody"},
                                    {"groups": "nogroup"}],
                         ids=["user", "group"])
def test_allowed_user(relayd_factory, shared_fake_graph, tmp_path, status):
    d, r = status_as_nobody(relayd_factory, shared_fake_graph, tmp_path,
                            **status)
    assert r.returncode == 0, r.stderr


def test_unknown_status_user_is_a_config_error(relayd_factory,
                                               shared_fake_graph):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake, start=False)
    d.sections["status"]["users"] = "no-such-user-here"
    with pytest.raises(AssertionError, match="exited with 78"):
        d.start()
    assert 'no user "no-such-user-here"' in d.log
    d.expect_dead = True


def test_relayctl_unreachable_and_usage(tmp_path):
    r = subprocess.run([str(RELAYCTL_BIN), "-s", str(tmp_path / "none"),
                        "status"], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 69 and "is relayd running" in r.stderr
    r = subprocess.run([str(RELAYCTL_BIN), "frobnicate"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 64 and "usage" in r.stderr


def test_unknown_command_on_the_socket(relayd_factory):
    d = relayd_factory()
    assert "unknown command" in d.ctl("frobnicate")["error"]
    # without [graph]: status works, actions say why not
    st = d.ctl("status")
    assert st["delivery"].startswith("off")
    assert "not configured" in d.ctl("retry all")["error"]
    d.send_one()
    assert "1 message(s) wait in the spool" in d.ctl("queue")["error"]


def relayctl_test(d, *args):
    return subprocess.run([str(RELAYCTL_BIN), "-c", str(d.conf_path),
                           "test"] + list(args), capture_output=True,
                          text=True, timeout=60)


def test_relayctl_test_sends(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake)
    r = relayctl_test(d)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "token: asking" in r.stdout and "ok (valid for" in r.stdout
    assert "no message sent" in r.stdout
    r = relayctl_test(d, "--to", "boss@contoso.test", "--from",
                      "scanner@contoso.test")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "accepted (202" in r.stdout
    [rec] = fake.wait_sent(1, TIMEOUT)
    assert rec["mailbox"].lower() == "scanner@contoso.test"
    assert rec["recipients"]["to"] == ["boss@contoso.test"]
    assert rec["subject"] == "relayctl test"


@pytest.mark.parametrize("rule,words", [
    ({"kind": "graph", "status": 403, "code": "ErrorAccessDenied",
      "message": "Access is denied. Check credentials and try again."},
     "Mail.Send application permission"),
    ({"kind": "graph", "status": 403, "code": "ErrorAccessDenied",
      "message": "Access to OData is disabled."},
     "application access policy"),
    ({"kind": "graph", "status": 403, "code": "ErrorSendAsDenied",
      "message": "The user account which was used to submit this "
                 "request does not have the right to send mail on behalf "
                 "of the specified sending account."},
     "Send As"),
    ({"kind": "graph", "status": 404,
      "code": "MailboxNotEnabledForRESTAPI",
      "message": "The mailbox is either inactive, soft-deleted, or is "
                 "hosted on-premise."},
     "Exchange Online licence"),
], ids=["no_mail_send", "access_policy", "send_as", "no_licence"])
def test_relayctl_test_explains_graph(relayd_factory, shared_fake_graph,
                                      rule, words):
    fake = shared_fake_graph
    fake.faults([rule])
    d = graph_relayd(relayd_factory, fake)
    r = relayctl_test(d, "--to", "boss@contoso.test")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "refused: HTTP %d %s" % (rule["status"], rule["code"]) in r.stdout
    assert "what to do:" in r.stdout and words in r.stdout, r.stdout


def test_relayctl_test_explains_token(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake, secret="wrong")
    r = relayctl_test(d, "--to", "boss@contoso.test")
    assert r.returncode == 1
    assert "refused" in r.stdout and "AADSTS7000215" in r.stdout, r.stdout
    assert "client_secret_file" in r.stdout
    # a broken config: 78 with the file's errors
    d.conf_path.write_text(d.conf_path.read_text() + "\n[graph]\nbogus = 1\n")
    r = relayctl_test(d)
    assert r.returncode == 78 and 'unknown key "bogus"' in r.stderr


def test_overlong_command_line_is_refused(relayd_factory):
    """A command line past 1024 bytes: the socket is closed (with an
    error line, unless the unread rest resets the connection first), no
    hang, and relayd goes on serving."""
    import socket as sk
    d = relayd_factory()
    with sk.socket(sk.AF_UNIX, sk.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(d.sections["status"]["socket"])
        s.sendall(b"x" * 5000)
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
    if data:
        assert json.loads(data)["error"] == "command line too long"
    assert d.ctl("status")["delivery"].startswith("off")
    d.assert_alive()


def test_silent_clients_take_only_their_slots(relayd_factory):
    """64 connections that say nothing: the 65th is told why it is
    refused, relayd goes on serving SMTP, and the socket is usable again
    once they leave."""
    import socket as sk
    d = relayd_factory()
    path = d.sections["status"]["socket"]
    silent = []
    try:
        for _ in range(64):
            s = sk.socket(sk.AF_UNIX, sk.SOCK_STREAM)
            s.connect(path)
            silent.append(s)
        # each was accepted (not only queued by the kernel) once relayd
        # refuses the next; the kernel's backlog (16) may still be full of
        # them for a moment (seen since relayd runs as a parent and its
        # children): wait for room
        with sk.socket(sk.AF_UNIX, sk.SOCK_STREAM) as s:
            s.settimeout(10)

            def connected():
                try:
                    s.connect(path)
                    return True
                except BlockingIOError:
                    return False
            wait_for(connected, 10, "room in the status socket's backlog")
            data = s.makefile("rb").readline()
        assert json.loads(data)["error"] == "too many status connections"
        d.send_one()
    finally:
        for s in silent:
            s.close()
    wait_for(lambda: "error" not in d.ctl("status"), TIMEOUT,
             "the status socket to answer again")
    d.assert_alive()
