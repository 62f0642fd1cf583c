"""Socket activation: relayd takes the listening sockets systemd passes
(LISTEN_FDS) for the listen lines they match, binds the others, and
closes a passed socket that matches none. systemd-socket-activate plays
systemd's part; systemd-analyze verifies relayd.socket."""
import shutil
import signal
import subprocess

import pytest

from relaydtest.env import RELAYD_BIN, SRCDIR
from relaydtest.ports import free_port
from relaydtest.smtp import SMTPConn
from relaydtest.wait import wait_for


def activate(d, addrs, log):
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate not installed (apt-get "
                    "install systemd)")
    args = [tool]
    for a in addrs:
        args += ["-l", a]
    return subprocess.Popen(args + [str(RELAYD_BIN), "-c",
                                    str(d.conf_path)],
                            stdout=log, stderr=log)


def test_passed_sockets_are_used(relayd_factory, tmp_path):
    d = relayd_factory(start=False)
    p1, p2, stray = free_port(), free_port(), free_port()
    d._listen = ["127.0.0.1:%d" % p1, "127.0.0.1:%d" % p2]
    d.port = p1
    d.write_config()
    logpath = tmp_path / "activated.log"
    with open(logpath, "wb") as log:
        # p1 and a stray address from "systemd"; p2 relayd binds itself
        proc = activate(d, ["127.0.0.1:%d" % p1, "127.0.0.1:%d" % stray],
                        log)
    try:
        # the tool binds, then starts relayd on the first connection
        wait_for(lambda: b"Listening on" in logpath.read_bytes(), 10,
                 "systemd-socket-activate listening")
        with SMTPConn(p1, timeout=15) as c:
            assert c.greeting.code == 220, c.greeting
            c.ehlo()
        wait_for(lambda: "relayd started" in logpath.read_text(), 10,
                 "relayd started")
        with SMTPConn(p2) as c:
            assert c.greeting.code == 220
        text = logpath.read_text()
        assert "smtp listener=127.0.0.1:%d: socket from systemd" % p1 \
            in text
        assert "listener=127.0.0.1:%d: socket from systemd" % p2 \
            not in text
        assert "matches no listen line of relayd.conf" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_socket_unit_verifies(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (apt-get install "
                    "systemd)")
    for name in ("relayd.socket", "relayd.service"):
        shutil.copy(SRCDIR / "systemd" / name, tmp_path / name)
    r = subprocess.run([tool, "verify", "--man=no",
                        str(tmp_path / "relayd.socket")],
                       capture_output=True, text=True, timeout=60)
    problems = [l for l in (r.stdout + r.stderr).splitlines()
                if "relayd.socket" in l]
    assert r.returncode == 0 or not problems, r.stdout + r.stderr
