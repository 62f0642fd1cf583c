"""Privilege separation: relayd is a parent ("relayd: parent") with three
children it forked, "relayd: token" (the only process that reads the
client secret or the private key, and hands out access tokens), "relayd:
smtp" (SMTP, TLS, AUTH, PROXY, spool intake: never a token) and "relayd:
deliver" (the queue, MIME -> Graph, status, history: access tokens, never
the credential). Proven from outside: the process tree and titles, the
process memory read through /proc (the suite runs as root), each child
killed under load (restarted, SMTP answers within 5 s, nothing
acknowledged lost, a message in flight delivered after), the parent
killed (no orphans), and start-up errors of the credential (exit 78 with
the text `relayd -n` prints)."""
import os
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

from relaydtest.credentials import cert_relayd, make_cert, register
from relaydtest.daemon import Relayd, process_children, wait_processes_gone
from relaydtest.env import RELAYD_BIN, START_TIMEOUT, VALGRIND
from relaydtest.graph import graph_relayd
from relaydtest.wait import wait_for

EX_CONFIG = 78
TITLES = {"relayd: token", "relayd: smtp", "relayd: deliver"}
HUGE = 1 << 32          # a mapping this big is no heap, stack or image

pytestmark = pytest.mark.skipif(
    VALGRIND, reason="under valgrind the titles and memory are valgrind's")


# --------------------------------------------------------------------------
# helpers

def title(pid):
    """(cmdline, comm) of a process, as ps and top show them."""
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        cmdline = f.read().rstrip(b"\0").decode()
    with open("/proc/%d/comm" % pid) as f:
        comm = f.read().strip()
    return cmdline, comm


def ppid(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"^PPid:\s+(\d+)$", f.read(), re.M).group(1))


def children(d):
    """{title: pid} of relayd's children now."""
    got = {}
    for p in process_children(d.pid):
        try:
            got[title(p)[0]] = p
        except FileNotFoundError:
            pass
    return got


def tree(d):
    """{title: pid} of relayd's children, checking there are exactly three
    and that each is a child of the parent."""
    kids = process_children(d.pid)
    got = children(d)
    assert set(got) == TITLES and len(kids) == 3, (kids, got)
    return got


def memory_has(pid, needles):
    """Which of needles (bytes) occur in any readable mapping of pid's
    memory (/proc/PID/maps and /proc/PID/mem)."""
    found = set()
    longest = max(len(n) for n in needles)
    with open("/proc/%d/maps" % pid) as maps:
        regions = [l.split() for l in maps]
    fd = os.open("/proc/%d/mem" % pid, os.O_RDONLY)
    try:
        for r in regions:
            if "r" not in r[1] or (len(r) > 5 and r[5] in (
                    "[vvar]", "[vsyscall]", "[vvar_vclock]")):
                continue
            start, end = (int(x, 16) for x in r[0].split("-"))
            if end - start > HUGE:
                continue        # ASan's shadow: reserved, never written
            tail = b""
            for off in range(start, end, 1 << 20):
                try:
                    chunk = os.pread(fd, min(1 << 20, end - off), off)
                except OSError:
                    break
                buf = tail + chunk
                for n in needles:
                    if n in buf:
                        found.add(n)
                tail = buf[-longest:]
    finally:
        os.close(fd)
    return found


def unique_secret_relayd(relayd_factory, fake):
    """A daemon whose secret occurs nowhere else: (daemon, secret)."""
    secret = "privsep-%s-secret" % uuid.uuid4().hex
    fake.config(clients={fake.client_id: {"secret": secret}})
    return graph_relayd(relayd_factory, fake, secret=secret), secret


def send_acked(d, subject):
    """One message; its queue id if acknowledged with 250, else None."""
    try:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=15) as s:
            s.ehlo("client.test")
            s.mail("scanner@contoso.test")
            s.rcpt("alice@fabrikam.test")
            code, text = s.data(("Subject: %s\r\n\r\nbody\r\n" % subject)
                                .encode())
            return text.decode() if code == 250 else None
    except (OSError, smtplib.SMTPException):
        return None


def smtp_answers_within(d, seconds):
    """The time until a new connection gets its greeting and EHLO."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        try:
            with smtplib.SMTP("127.0.0.1", d.port, timeout=seconds) as s:
                if s.ehlo("client.test")[0] == 250:
                    return time.monotonic() - t0
        except (OSError, smtplib.SMTPException):
            time.sleep(0.05)
    raise AssertionError("SMTP did not answer within %ss" % seconds)


# --------------------------------------------------------------------------
# the tree

def test_process_tree_and_titles(relayd_factory, shared_fake_graph):
    d, _ = unique_secret_relayd(relayd_factory, shared_fake_graph)
    assert title(d.pid) == ("relayd: parent", "relayd: parent")
    for name, pid in tree(d).items():
        assert title(pid) == (name, name)
        assert ppid(pid) == d.pid


@pytest.mark.parametrize("stopped", [False, True], ids=["running",
                                                       "stopped"])
def test_parent_killed_takes_children(relayd_factory, shared_fake_graph,
                                      stopped):
    """kill -9 of the parent: the children go too. Stopped children (that
    can't see their control socket close) are killed by the kernel
    (PR_SET_PDEATHSIG)."""
    d, _ = unique_secret_relayd(relayd_factory, shared_fake_graph)
    kids = list(tree(d).values())
    for pid in kids if stopped else ():
        os.kill(pid, signal.SIGSTOP)
    d.expect_dead = True
    os.kill(d.pid, signal.SIGKILL)
    d.proc.wait()
    t0 = time.monotonic()
    wait_processes_gone(kids, timeout=5)
    assert time.monotonic() - t0 < 5


# --------------------------------------------------------------------------
# who holds what

def test_secret_and_token_only_where_they_belong(relayd_factory,
                                                 shared_fake_graph):
    fake = shared_fake_graph
    d, secret = unique_secret_relayd(relayd_factory, fake)
    assert send_acked(d, "privsep memory")
    sent = fake.wait_sent(1)
    auth = sent[0]["headers"].get("Authorization") or \
        sent[0]["headers"].get("authorization")
    access = auth.split(" ", 1)[1].encode()
    kids = tree(d)
    s = secret.encode()
    assert memory_has(kids["relayd: token"], [s]) == {s}  # the scan works
    assert memory_has(kids["relayd: deliver"], [s, access]) == {access}
    # The process that parses SMTP never holds a token, nor the secret.
    assert memory_has(kids["relayd: smtp"], [s, access]) == set()
    assert memory_has(d.pid, [s, access]) == set()
    # Nor is the secret file open anywhere but (perhaps) the token process.
    path = os.path.realpath(fake.secret_file(secret))
    for pid in (d.pid, kids["relayd: smtp"], kids["relayd: deliver"]):
        fds = "/proc/%d/fd" % pid
        links = [os.readlink(os.path.join(fds, f)) for f in os.listdir(fds)]
        assert path not in links, (pid, links)


def test_private_key_only_in_token_process(relayd_factory,
                                           shared_fake_graph, tmp_path):
    from cryptography.hazmat.primitives import serialization
    fake = shared_fake_graph
    cert, key, pem = make_cert(tmp_path)
    register(fake, pem)
    d = cert_relayd(relayd_factory, fake, cert, key)
    assert send_acked(d, "privsep key")
    fake.wait_sent(1)
    lines = key.read_text().splitlines()[1:-1]
    body = [l.encode() for l in lines[2:-2]]   # whole lines of base64
    priv = serialization.load_pem_private_key(key.read_bytes(), None)
    d_le = priv.private_numbers().d.to_bytes(256, "little")[:48]
    kids = tree(d)
    # OpenSSL keeps the private exponent as little-endian words.
    assert d_le in memory_has(kids["relayd: token"], [d_le])
    for pid in (d.pid, kids["relayd: smtp"], kids["relayd: deliver"]):
        assert memory_has(pid, body + [d_le]) == set(), pid


# --------------------------------------------------------------------------
# a child dies

def test_children_killed_under_load(relayd_factory, shared_fake_graph):
    """SIGKILL the SMTP process, the delivery process, then the token
    process, while messages are being sent: each is logged and restarted,
    SMTP answers again within 5 s, and every message acknowledged with 250
    reaches Graph."""
    fake = shared_fake_graph
    d, _ = unique_secret_relayd(relayd_factory, fake)
    acked, stop = [], threading.Event()

    def sender():
        i = 0
        while not stop.is_set():
            i += 1
            if send_acked(d, "load %d" % i):
                acked.append("load %d" % i)

    t = threading.Thread(target=sender)
    t.start()
    try:
        wait_for(lambda: len(acked) >= 5, 10, "messages before the kill")
        for name in ("relayd: smtp", "relayd: deliver", "relayd: token"):
            pid = tree(d)[name]
            os.kill(pid, signal.SIGKILL)
            d.wait_log(r"relayd: %s process pid=%d killed by signal 9 "
                       r"\(Killed\); restarted in 0\.5s"
                       % (name.split()[1], pid))
            took = smtp_answers_within(d, 5)
            print("SMTP answered %.2fs after the kill of %s" % (took, name))
            assert took < 5, took
            wait_for(lambda: children(d).get(name, pid) != pid, 5,
                     "a new %s process" % name)
            n = len(acked)
            wait_for(lambda: len(acked) >= n + 5, 15,
                     "messages after the kill of %s" % name)
    finally:
        stop.set()
        t.join()
    want = set(acked)
    wait_for(lambda: want <= {m["subject"] for m in fake.sent()}, 30,
             "every acknowledged message at the fake graph")
    assert "relayd started" in d.log


def test_in_flight_at_death_is_delivered_after(relayd_factory,
                                               shared_fake_graph):
    """The delivery process is killed while Graph has the message's
    request (it hangs): the new one sends it again, logged
    possible_duplicate=yes (Graph may have taken the first)."""
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake)
    fake.faults([{"kind": "graph", "method": "POST", "hang": True}])
    assert send_acked(d, "in flight")
    wait_for(lambda: fake.faults()[0]["fired"] == 1, 10,
             "the request held at Graph")
    pid = tree(d)["relayd: deliver"]
    os.kill(pid, signal.SIGKILL)
    d.wait_log(r"deliver process pid=%d killed by signal 9" % pid)
    wait_for(lambda: "in flight" in subjects(fake), 30,
             "delivery after the restart")
    d.wait_log(r"graph sent .* possible_duplicate=yes$")


def test_token_process_dies_repeatedly_backs_off(relayd_factory,
                                                 shared_fake_graph):
    d, _ = unique_secret_relayd(relayd_factory, shared_fake_graph)
    pid = tree(d)["relayd: token"]
    os.kill(pid, signal.SIGKILL)
    d.wait_log(r"token process pid=%d killed by signal 9 .*restarted in "
               r"0\.5s" % pid)
    pid = wait_for(lambda: children(d).get("relayd: token", pid) != pid and
                   children(d)["relayd: token"], 5, "a new token process")
    os.kill(pid, signal.SIGKILL)
    d.wait_log(r"token process pid=%d killed by signal 9 .*restarted in "
               r"1\.0s" % pid)


# --------------------------------------------------------------------------
# the credential at start

def start_fails(d):
    """Runs the daemon (not -n) on d's config: (exit code, stderr)."""
    p = subprocess.Popen(d.command(), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        out, err = p.communicate(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError("relayd did not stop at once: it restarts?")
    return p.returncode, err


def test_credential_errors_stop_start_with_the_check_text(
        relayd_factory, shared_fake_graph, tmp_path):
    fake = shared_fake_graph
    secret = tmp_path / "client_secret"
    secret.write_text("s3cret\n")
    os.chmod(secret, 0o644)
    ec_cert, ec_key, _ = make_cert(tmp_path, "ec", ec=True)
    cert, _, _ = make_cert(tmp_path)
    cases = [
        graph_relayd(relayd_factory, fake, start=False,
                     client_secret_file=str(secret)),
        cert_relayd(relayd_factory, fake, cert, ec_key, start=False),
    ]
    for d in cases:
        check = d.check_config()
        rc, err = start_fails(d)
        assert rc == EX_CONFIG and check.returncode == EX_CONFIG, err
        assert check.stderr.strip() and check.stderr in err, (err,
                                                               check.stderr)
        assert "relayd started" not in err


# --------------------------------------------------------------------------
# the token connection

def subjects(fake):
    return {m["subject"] for m in fake.sent()}


def test_new_token_process_serves_delivery(relayd_factory,
                                            shared_fake_graph):
    """After the token process is restarted, delivery asks the new one
    (on the connection the parent passed): Graph refuses the cached token
    and delivery goes on with a new one."""
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake)
    assert send_acked(d, "before")
    fake.wait_sent(1)
    pid = tree(d)["relayd: token"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: children(d).get("relayd: token", pid) != pid, 5,
             "a new token process")
    fake.reset(tokens=True)     # the token delivery holds is refused
    assert send_acked(d, "after")
    wait_for(lambda: "after" in subjects(fake), 15, "delivery after")
    assert len(re.findall(r"token: new access token", d.log)) == 2, d.log


def test_stuck_token_process_does_not_hang_delivery(relayd_factory,
                                                    shared_fake_graph):
    """A token process that does not answer (stopped): the delivery thread
    gives up after the token request's timeouts and some slack (1 s + 1 s
    + 5 s here), SMTP and the status socket go on, and the message goes
    out once it answers again."""
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake, timeout="1s",
                     connect_timeout="1s")
    assert send_acked(d, "warm")
    fake.wait_sent(1)
    pid = tree(d)["relayd: token"]
    os.kill(pid, signal.SIGSTOP)
    try:
        fake.reset(tokens=True)
        assert send_acked(d, "stuck")
        d.wait_log(r"token: the token process did not answer within 7s",
                   timeout=20)
        assert d.relayctl("status").returncode == 0
        assert send_acked(d, "still taken")
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: {"stuck", "still taken"} <= subjects(fake), 30,
             "delivery once the token process answers")


# --------------------------------------------------------------------------
# not dumpable

NOBODY = 65534


def as_nobody(*cmd):
    return ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY,
            "--clear-groups"] + list(cmd)


@pytest.mark.skipif(VALGRIND, reason="under valgrind the processes are "
                    "valgrind's")
def test_processes_not_dumpable(tmp_path_factory):
    """Run as an unprivileged user (as systemd runs it), every relayd
    process is not dumpable: its /proc files belong to root, so another
    process of the same user can't read its memory or environment, nor
    attach a debugger (the token process holds the tenant's secret)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    # A directory of nobody's, with a copy of the binary: the build tree
    # may not be open to others (the sanitizer run's is mode 0700).
    top = tempfile.mkdtemp(prefix="relayd-nobody.")
    try:
        os.chmod(top, 0o755)
        binary = os.path.join(top, "relayd")
        shutil.copy2(str(RELAYD_BIN), binary)
        d = Relayd(os.path.join(top, "d"))
        os.chown(top, NOBODY, NOBODY)
        os.chown(str(d.workdir), NOBODY, NOBODY)
        d.command = lambda: as_nobody(binary, "-c", str(d.conf_path))
        d.start()
        try:
            pids = [d.pid] + process_children(d.pid)
            assert len(pids) >= 3, pids
            for pid in pids:
                with open("/proc/%d/status" % pid) as f:
                    uid = re.search(r"^Uid:\s+(\d+)", f.read(), re.M)
                assert int(uid.group(1)) == NOBODY, pid
                assert os.stat("/proc/%d/environ" % pid).st_uid == 0, pid
                r = subprocess.run(as_nobody("cat", "/proc/%d/environ" % pid),
                                   capture_output=True, timeout=10)
                assert r.returncode != 0, pid
                assert b"Permission denied" in r.stderr, r.stderr
            # Against a dumpable process of nobody's, the same reads work.
            r = subprocess.run(as_nobody("sh", "-c", 'stat -c %u '
                                         '/proc/$$/environ; cat '
                                         '/proc/$$/environ >/dev/null'),
                               capture_output=True, timeout=10)
            assert r.returncode == 0 and r.stdout.strip() == b"%d" % NOBODY
            assert d.send_one()
        finally:
            assert d.stop() == 0
            d.close()
    finally:
        shutil.rmtree(top, ignore_errors=True)
