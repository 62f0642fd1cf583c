"""The systemd units: they verify, and the service's exposure stays low.

systemd-analyze reads the unit files offline (no systemd needed). The
unit names /usr/sbin/relayd; a copy pointing at the built daemon is
verified, since verify checks that the programs exist.
"""
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from relaydtest.daemon import need
from relaydtest.env import RELAYD_BIN, SRCDIR
from relaydtest.ports import free_port

UNIT = SRCDIR / "systemd" / "relayd.service"
SYSUSERS = SRCDIR / "systemd" / "relayd.sysusers"
MAX_EXPOSURE = 2.0


def built_unit(tmp_path):
    path = tmp_path / "relayd.service"
    path.write_text(UNIT.read_text().replace("/usr/sbin/relayd",
                                             str(RELAYD_BIN)))
    return path


def analyze(*args):
    need("systemd-analyze")
    return subprocess.run(["systemd-analyze", *args], capture_output=True,
                          text=True, timeout=60)


def test_unit_verifies(tmp_path):
    # --man=no: the man pages are checked by the install tests
    r = analyze("verify", "--man=no", str(built_unit(tmp_path)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr.strip() == "", r.stderr


def test_exposure_at_most_2(tmp_path):
    r = analyze("security", "--offline=yes", "--no-pager",
                str(built_unit(tmp_path)))
    m = re.search(r"Overall exposure level for relayd\.service: ([0-9.]+)",
                  r.stdout)
    assert m, r.stdout + r.stderr
    print("systemd-analyze security: exposure %s" % m.group(1))
    assert float(m.group(1)) <= MAX_EXPOSURE, r.stdout


def test_unit_essentials():
    text = UNIT.read_text()
    keys = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            keys.setdefault(k, []).append(v)
    assert keys["Type"] == ["notify"]
    # the parent notifies, and gets the stop signal (it drains its children)
    assert keys["NotifyAccess"] == ["main"]
    assert keys["KillMode"] == ["mixed"]
    assert keys["WatchdogSec"] == ["30s"]
    assert keys["User"] == ["relayd"] and keys["Group"] == ["relayd"]
    assert keys["RestartPreventExitStatus"] == ["78"]
    assert keys["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert keys["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert keys["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert "client_secret:/etc/relayd/client_secret" in keys["LoadCredential"]
    for k in ("StateDirectory", "RuntimeDirectory", "ConfigurationDirectory"):
        assert keys[k] == ["relayd"], k
    # the config is checked before every start
    assert keys["ExecStartPre"] == [
        "/usr/sbin/relayd -n -c /etc/relayd/relayd.conf"]


def test_sysusers_line():
    lines = [l for l in SYSUSERS.read_text().splitlines()
             if l and not l.startswith("#")]
    assert len(lines) == 1
    fields = re.findall(r'"[^"]*"|\S+', lines[0])
    assert fields[:3] == ["u", "relayd", "-"], fields
    assert fields[4] == "/var/lib/relayd"


def test_notify_ready_status_watchdog_stopping(relayd_factory, tmp_path):
    """Type=notify as systemd runs it: a datagram socket in NOTIFY_SOCKET,
    WATCHDOG_USEC set. relayd says READY=1 once it listens, then
    WATCHDOG=1 with STATUS= (the queue depth) at half the interval, and
    STOPPING=1 on SIGTERM."""
    d = relayd_factory(start=False)
    d.port = d.port or free_port()
    d.write_config()
    sock_path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(5)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="1000000")
    proc = subprocess.Popen([str(RELAYD_BIN), "-c", str(d.conf_path)],
                            env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        got = []
        t0 = time.monotonic()
        while sum("WATCHDOG=1" in m for m in got) < 3:
            got.append(sock.recv(4096).decode())
        took = time.monotonic() - t0
        assert got[0] == "READY=1", got
        beats = [m for m in got if "WATCHDOG=1" in m]
        assert all("STATUS=0 message(s) queued" in m for m in beats), beats
        # three beats at 0.5 s intervals (the first at once)
        assert 0.8 <= took < 4, took
        d.send_one()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            m = sock.recv(4096).decode()
            if "STATUS=1 message(s) queued" in m:
                break
        else:
            pytest.fail("no STATUS with the new message")
        proc.send_signal(signal.SIGTERM)
        while True:
            m = sock.recv(4096).decode()
            if m == "STOPPING=1":
                break
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
