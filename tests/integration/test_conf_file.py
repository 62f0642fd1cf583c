"""conf/relayd.conf is generated from relayd's key table; it must not drift."""
import subprocess

from relaydtest.env import RELAYD_BIN, SRCDIR


def test_example_config_matches_key_table():
    shipped = (SRCDIR / "conf" / "relayd.conf").read_text()
    body = shipped[shipped.index("\n[smtp]\n") + 1:]
    generated = subprocess.run([str(RELAYD_BIN), "-D"], check=True,
                               capture_output=True, text=True).stdout
    assert body == generated, (
        "conf/relayd.conf differs from `relayd -D`; regenerate its key "
        "section with relayd -D")


def test_every_key_is_documented_with_a_comment():
    generated = subprocess.run([str(RELAYD_BIN), "-D"], check=True,
                               capture_output=True, text=True).stdout
    lines = generated.splitlines()
    keys = [l for l in lines if l.startswith("#") and not l.startswith("# ")]
    assert len(keys) >= 21
    for k in keys:
        i = lines.index(k)
        assert lines[i - 1].startswith("# "), k
