"""The systemd units: they verify, and the service's exposure stays low.

systemd-analyze reads the unit files offline (no systemd needed). The
unit names /usr/sbin/relayd; a copy pointing at the built daemon is
verified, since verify checks that the programs exist.
"""
import re
import subprocess

import pytest

from conftest import RELAYD_BIN, SRCDIR, need

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
