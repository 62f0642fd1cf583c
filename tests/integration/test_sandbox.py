"""The SMTP process (the one that parses SMTP, TLS, AUTH, PROXY) and the
delivery process (MIME -> Graph) each confine themselves after start-up
(issue 18): no_new_privs, a seccomp filter of their role, Landlock
(relayd/sandbox.c). The parent and the token process are not in it.

The probes that act from inside the running daemon come from a small
library the test builds and preloads (LD_PRELOAD): on SIGUSR1 it opens the
paths in $RELAYD_PROBE_OPEN and writes what became of each to stderr (the
log); on SIGUSR2 it makes a system call no relayd process needs (mount);
on SIGWINCH it connects to $RELAYD_PROBE_CONNECT (127.0.0.1:PORT). relayd
itself has no test switch.
"""
import os
import re
import signal
import subprocess
import time

import pytest

from relaydtest.auth import start_authd
from relaydtest.daemon import need, process_children
from relaydtest.env import VALGRIND
from relaydtest.graph import graph_relayd, graph_sections
from relaydtest.ports import free_port
from relaydtest.wait import wait_for

PROBE_C = r"""
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

static void
probe_open(int sig)
{
	const char *list = getenv("RELAYD_PROBE_OPEN");
	char buf[4096], line[4200], *p, *save = NULL;
	int fd, n;

	(void)sig;
	if (list == NULL || strlen(list) >= sizeof(buf))
		return;
	memcpy(buf, list, strlen(list) + 1);
	for (p = strtok_r(buf, ":", &save); p != NULL;
	    p = strtok_r(NULL, ":", &save)) {
		fd = open(p, O_RDONLY | O_CLOEXEC);
		n = snprintf(line, sizeof(line), "probe: open %s: %s\n", p,
		    fd >= 0 ? "ok" : errno == EACCES ? "EACCES" : "other");
		if (fd >= 0)
			close(fd);
		if (write(2, line, (size_t)n) < 0)
			return;
	}
}

static void
probe_forbidden(int sig)
{
	(void)sig;
	syscall(SYS_mount, "none", "/nonexistent", "tmpfs", 0, NULL);
}

static void
probe_connect(int sig)
{
	const char *port = getenv("RELAYD_PROBE_CONNECT");
	struct sockaddr_in sin;
	char line[128];
	int fd, rc, n;

	(void)sig;
	if (port == NULL)
		return;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((unsigned short)atoi(port));
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
		rc = errno;
	else
		rc = connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 ?
		    0 : errno;
	if (fd != -1)
		close(fd);
	n = snprintf(line, sizeof(line), "probe: connect %d: %s\n", getpid(),
	    rc == 0 ? "ok" : rc == EACCES ? "EACCES" : strerror(rc));
	if (write(2, line, (size_t)n) < 0)
		return;
}

__attribute__((constructor)) static void
probe_init(void)
{
	signal(SIGUSR1, probe_open);
	signal(SIGUSR2, probe_forbidden);
	signal(SIGWINCH, probe_connect);
}
"""


ROLES = ["smtp", "deliver"]


def child_pid(d, role, timeout=10):
    """The pid of relayd's process "relayd: ROLE" (its title in comm)."""
    def find():
        for pid in process_children(d.pid):
            try:
                with open("/proc/%d/comm" % pid) as f:
                    if f.read().strip() == "relayd: " + role:
                        return pid
            except FileNotFoundError:
                pass
        return None
    return wait_for(find, timeout, "relayd's %s process" % role)


def status_fields(pid):
    with open("/proc/%d/status" % pid) as f:
        text = f.read()
    return {k: v.strip() for k, v in
            (l.split(":", 1) for l in text.splitlines() if ":" in l)}


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """Preloads the probe library into the daemons this test starts."""
    need("gcc")
    src = tmp_path / "probe.c"
    lib = tmp_path / "probe.so"
    src.write_text(PROBE_C)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)],
                   check=True)
    monkeypatch.setenv("LD_PRELOAD", str(lib))
    # ASan wants its runtime first in the list; this library has no
    # allocations for it to watch.
    monkeypatch.setenv("ASAN_OPTIONS", os.environ.get(
        "ASAN_OPTIONS", "") + ":verify_asan_link_order=0")
    return lib


def own_secret(tmp_path, value):
    path = tmp_path / "client_secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, (value + "\n").encode())
    os.close(fd)
    return path


def test_status_shows_no_new_privs_and_seccomp(relayd_factory,
                                               shared_fake_graph):
    d = graph_relayd(relayd_factory, shared_fake_graph)
    for role in ROLES:
        st = status_fields(child_pid(d, role))
        assert st["NoNewPrivs"] == "1", (role, st)
        if not VALGRIND:
            assert st["Seccomp"] == "2", (role, st)
            d.wait_log(r"sandbox: seccomp on \(%s(, sanitizer calls too)?"
                       r"\), landlock ABI \d+ on" % role, current=False)
    if VALGRIND:
        # valgrind 3.19 answers ENOSYS to seccomp(2) and Landlock's calls
        d.wait_log(r"sandbox: no_new_privs only: valgrind", current=False)
    # entered before the first thread: Landlock binds them all
    assert "threads already run" not in d.log
    # and it still relays
    with d.connect() as c:
        c.ehlo()
        assert c.send_mail("scanner@contoso.test", ["a@fabrikam.test"],
                           body=b"Subject: x\r\n\r\ny\r\n").qid
    shared_fake_graph.wait_sent(1)


def test_sandbox_off(relayd_factory):
    d = relayd_factory(sections={"security": {"sandbox": "no"}})
    for role in ROLES:
        st = status_fields(child_pid(d, role))
        assert st["NoNewPrivs"] == "0", st
        assert st["Seccomp"] == "0", st
    d.wait_log(r"sandbox: off \(\[security\] sandbox = no\)", current=False)


@pytest.mark.skipif(VALGRIND, reason="no seccomp filter under valgrind")
@pytest.mark.parametrize("role", ROLES)
def test_forbidden_call_stops_it_with_a_clear_line(relayd_factory, probe,
                                                   role):
    """A call outside the filter ends the process with a line that names
    it; the parent starts a new one, and mail goes on."""
    d = relayd_factory()
    pid = child_pid(d, role)
    os.kill(pid, signal.SIGUSR2)
    d.wait_log(r"^relayd: seccomp: system call \d+ \(mount\) not "
               r"allowed; please report this", current=False)
    d.wait_log(r"%s process pid=%d exited with status 70" % (role, pid),
               current=False)
    wait_for(lambda: child_pid(d, role) != pid, 10, "a new %s process" % role)
    assert d.running()
    d.assert_serves()


@pytest.mark.skipif(VALGRIND, reason="no seccomp filter under valgrind")
def test_smtp_process_cannot_connect_out(relayd_factory, shared_fake_graph,
                                         probe, monkeypatch):
    """The SMTP process gets EACCES from connect(2) (it has no one to call);
    the delivery process, which calls Graph, connects to the same port."""
    fake = shared_fake_graph
    monkeypatch.setenv("RELAYD_PROBE_CONNECT", str(fake.port))
    d = graph_relayd(relayd_factory, fake)
    for role, want in (("deliver", "ok"), ("smtp", "EACCES")):
        pid = child_pid(d, role)
        os.kill(pid, signal.SIGWINCH)
        d.wait_log(r"probe: connect %d: " % pid)
        assert "probe: connect %d: %s" % (pid, want) in d.log, (role, d.log)
    assert d.running()


def probe_opens(d, role, monkeypatch, paths):
    """Starts d; its role process tries to open paths, then /etc/hosts,
    and logs "probe: open PATH: ok|EACCES" for each. Skips without
    Landlock."""
    monkeypatch.setenv("RELAYD_PROBE_OPEN", ":".join(
        str(p) for p in list(paths) + ["/etc/hosts"]))
    d.start()
    if "landlock ABI" not in d.log:     # valgrind, or an old kernel
        pytest.skip("no Landlock here: %s" % d.log)
    os.kill(child_pid(d, role), signal.SIGUSR1)
    d.wait_log(r"probe: open /etc/hosts")


@pytest.mark.parametrize("role", ROLES)
def test_landlock_keeps_the_secret_out(relayd_factory, shared_fake_graph,
                                      tmp_path, probe, monkeypatch, role):
    """The secret lies beside relayd.conf: that opens, the secret does
    not, nor a file elsewhere (in the SMTP and the delivery process)."""
    fake = shared_fake_graph
    workdir = tmp_path / "relayd"
    workdir.mkdir()
    secret = own_secret(workdir, fake.secret)
    d = graph_relayd(relayd_factory, fake, start=False,
                     client_secret_file=str(secret))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "file").write_text("x")
    probe_opens(d, role, monkeypatch,
                [secret, d.conf_path, elsewhere / "file"])
    assert "probe: open %s: EACCES" % secret in d.log
    assert "probe: open %s: ok" % d.conf_path in d.log
    assert "probe: open %s: EACCES" % (elsewhere / "file") in d.log
    assert "probe: open /etc/hosts: ok" in d.log
    # SIGHUP: the configuration is read again (the secret only by the
    # token process).
    os.kill(d.pid, signal.SIGHUP)
    d.wait_log(r"reload: credentials re-read: client_secret_file=")
    d.wait_log(r"reload: .* in force for new sessions")
    assert fake.secret not in d.log


def test_smtp_keys_are_the_smtp_process_alone(relayd_factory, tls_ca,
                                              probe, monkeypatch):
    """The TLS key and the users file (password hashes) are the SMTP
    process's: the delivery process cannot open them, though the users
    file lies beside relayd.conf, which it can; the certificate (public)
    both can. A reload checks them where they are read (smtp), and the
    delivery process takes it without them."""
    d = start_authd(relayd_factory, tls_ca=tls_ca, start=False)
    paths = [tls_ca.key_file, d.users_file, tls_ca.cert_file, d.conf_path]
    monkeypatch.setenv("RELAYD_PROBE_OPEN", ":".join(str(p) for p in
                                                     paths + ["/etc/hosts"]))
    d.start()
    if "landlock ABI" not in d.log:     # valgrind, or an old kernel
        pytest.skip("no Landlock here: %s" % d.log)
    want = {"smtp": ["ok", "ok", "ok", "ok"],
            "deliver": ["EACCES", "EACCES", "ok", "ok"]}
    pids = [child_pid(d, role) for role in ROLES]
    for role in ROLES:
        mark = len(d.current_log())
        os.kill(child_pid(d, role), signal.SIGUSR1)
        wait_for(lambda: "probe: open /etc/hosts" in d.current_log()[mark:],
                 10, "the %s process's probe" % role)
        got = d.current_log()[mark:]
        for path, result in zip(paths, want[role]):
            assert "probe: open %s: %s" % (path, result) in got, (role, got)
    os.kill(d.pid, signal.SIGHUP)
    d.wait_log(r"reload: .* in force for new sessions")
    time.sleep(0.5)                     # deliver's, which logs only refusal
    assert "reload refused" not in d.current_log()
    assert "Permission denied" not in d.current_log()
    assert d.running()
    assert [child_pid(d, role) for role in ROLES] == pids   # none restarted


def test_users_file_replaced_by_rename_beside_the_secret(
        relayd_factory, shared_fake_graph, tls_ca):
    """The users file shares its directory with the client secret, so
    the SMTP process's Landlock rules grant it by inode. Replaced by
    rename, it is out of reach until a restart: the reload is refused,
    the users in force stay, and the log says why and what to do."""
    fake = shared_fake_graph
    d = start_authd(relayd_factory, tls_ca=tls_ca, start=False)
    secret = own_secret(d.workdir, fake.secret)
    d.sections.update(graph_sections(fake, client_secret_file=str(secret)))
    d.start()
    if "landlock ABI" not in d.log:     # valgrind, or an old kernel
        pytest.skip("no Landlock here: %s" % d.log)
    new = d.users_file.with_name("users.new")
    new.write_bytes(d.users_file.read_bytes())
    new.chmod(0o600)
    os.replace(new, d.users_file)
    os.kill(d.pid, signal.SIGHUP)
    d.wait_log(r"reload: a file replaced by rename .* beside a credential "
               r"is out of the sandbox's reach until relayd restarts")
    assert "reload refused" in d.current_log()
    assert d.running()
    # a restart takes it (the parent's check read it all along)
    assert d.stop() == 0
    d.start()
    assert "reload refused" not in d.current_log()


@pytest.mark.parametrize("role", ROLES)
def test_landlock_keeps_the_redis_password_out(relayd_factory,
                                              shared_fake_graph, tmp_path,
                                              probe, monkeypatch, role):
    """[cluster] password_file beside relayd.conf: the delivery process
    read it before entering the sandbox (it started); afterwards neither
    it nor the SMTP process can open it."""
    fake = shared_fake_graph
    workdir = tmp_path / "relayd"
    workdir.mkdir()
    password = workdir / "redis.pw"
    fd = os.open(password, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, b"s3cret\n")
    os.close(fd)
    d = graph_relayd(relayd_factory, fake, start=False)
    # Nobody listens there: the node goes on alone, which is enough.
    d.sections["cluster"] = {"redis": "redis://127.0.0.1:%d" % free_port(),
                             "password_file": str(password), "node": "n1"}
    probe_opens(d, role, monkeypatch, [password, d.conf_path])
    assert "probe: open %s: EACCES" % password in d.log
    assert "probe: open %s: ok" % d.conf_path in d.log
    assert "s3cret" not in d.log


def test_reload_of_a_config_replaced_by_rename(relayd_factory,
                                               shared_fake_graph, tmp_path):
    """The secret lies beside relayd.conf, so the relay's Landlock rules
    grant relayd.conf itself (its inode), not the directory. An editor
    (or sed -i, or a deployment tool) saves by rename: a new inode. The
    reload must still take it: the parent opens the file for the relay."""
    fake = shared_fake_graph
    workdir = tmp_path / "relayd"
    workdir.mkdir()
    secret = own_secret(workdir, fake.secret)
    d = graph_relayd(relayd_factory, fake, client_secret_file=str(secret))
    if "landlock ABI" not in d.log:     # valgrind, or an old kernel
        pytest.skip("no Landlock here: %s" % d.log)
    conf = d.conf_path
    text = conf.read_text() + "\n# edited\n"
    new = conf.with_name(conf.name + ".new")
    new.write_text(text)
    os.replace(new, conf)
    os.kill(d.pid, signal.SIGHUP)
    d.wait_log(r"reload: %s in force for new sessions" % re.escape(str(conf)))
    assert "cannot open" not in d.current_log()
