"""Credentials rotate without a restart (issue 15).

Rotating an Entra secret is: write the new value, `systemctl reload
relayd` (SIGHUP). relayd re-reads the credential, the next token request
uses it at once (also after refusals, whose backoff would otherwise make
messages wait minutes), and the messages that waited for a token are
tried within seconds. [graph] client_secret_expires gives warnings from 30
days before; relayctl status and the metrics carry each known expiry.
"""
import os
import re
import signal
import subprocess
import time
from datetime import date, timedelta

import pytest

from relaydtest.daemon import run_relayd
from relaydtest.graph import graph_relayd
from relaydtest.smtp import smtp_send

MSG = b"Subject: rotation\r\n\r\nscan attached\r\n"


def send(d):
    return smtp_send(d, MSG, "scanner@contoso.test", ["alice@fabrikam.test"],
                     raw=True)


def write_secret(path, value):
    with open(path, "w") as f:
        f.write(value + "\n")


def own_secret(tmp_path, value):
    """A secret file of this test's own (the fake's are shared)."""
    path = tmp_path / "client_secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    write_secret(path, value)
    return str(path)


def test_rotated_secret_taken_on_reload(relayd_factory, shared_fake_graph,
                                       tmp_path):
    """A wrong (expired, rotated) secret: the message waits, token requests
    back off. The new secret and a SIGHUP: delivered within seconds."""
    fake = shared_fake_graph
    secret = own_secret(tmp_path, "the-old-secret")
    d = graph_relayd(relayd_factory, fake, client_secret_file=secret)
    send(d)
    # Two refusals: the next attempt is 10 s away.
    d.wait_log(r"token: .*AADSTS7000215.*next attempt in 5s")
    d.wait_log(r"token: .*AADSTS7000215.*next attempt in 10s", timeout=15)
    assert fake.sent() == []
    write_secret(secret, fake.secret)
    t0 = time.monotonic()
    os.kill(d.pid, signal.SIGHUP)
    fake.wait_sent(1, timeout=8)
    took = time.monotonic() - t0
    assert took < 5, took
    d.wait_log(r"reload: credentials re-read: client_secret_file=%s "
               r"\(changed\)" % re.escape(secret))
    d.wait_log(r"reload: the next token request uses the new credential; "
               r"1 message\(s\) waiting on a token tried now")
    assert "the-old-secret" not in d.log and fake.secret not in d.log


def test_unchanged_secret_on_reload(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake)
    os.kill(d.pid, signal.SIGHUP)
    d.wait_log(r"reload: credentials re-read: client_secret_file=.* "
               r"\(unchanged\)")
    send(d)
    fake.wait_sent(1)


def test_unreadable_new_secret_keeps_the_old(relayd_factory,
                                             shared_fake_graph, tmp_path):
    """An empty file is refused by the reload's check: the secret in use
    stays and mail goes on."""
    fake = shared_fake_graph
    secret = own_secret(tmp_path, fake.secret)
    d = graph_relayd(relayd_factory, fake, client_secret_file=secret)
    write_secret(secret, "")
    os.kill(d.pid, signal.SIGHUP)
    d.wait_log(r"reload: .*client_secret_file .* is empty")
    d.wait_log(r"reload refused")
    send(d)
    fake.wait_sent(1)


# ---- expiry dates

def expires_in(days):
    return (date.today() + timedelta(days=days)).isoformat()


def test_secret_expiry_warned(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake,
                     client_secret_expires=expires_in(10))
    d.wait_log(r"warning: client_secret_expires: the client secret expires "
               r"on \d{4}-\d\d-\d\d .*\(in (9|10) days\); make a new secret "
               r"in Entra", current=False)
    r = d.relayctl("status")
    assert r.returncode == 0, r.stderr
    assert re.search(r"^credential client_secret: expires "
                     r"\d{4}-\d\d-\d\dT", r.stdout, re.M), r.stdout
    assert re.search(r"^warning: client_secret expires in (9|10) days$",
                     r.stdout, re.M), r.stdout
    st = d.ctl("status")
    [c] = st["credentials"]
    assert c["credential"] == "client_secret"
    assert 8 * 86400 < c["seconds"] <= 10 * 86400
    m = d.relayctl("metrics").stdout
    v = re.search(r'^relayd_credential_expiry_seconds\{credential='
                  r'"client_secret"\} (-?\d+)$', m, re.M)
    assert v and 8 * 86400 < int(v.group(1)) <= 10 * 86400, m


def test_secret_expiry_far_is_quiet(relayd_factory, shared_fake_graph):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake,
                     client_secret_expires=expires_in(200))
    assert "client_secret_expires" not in d.log
    r = d.relayctl("status")
    assert "warning:" not in r.stdout
    assert "credential client_secret: expires" in r.stdout


def test_secret_expiry_date_updated_on_reload(relayd_factory,
                                              shared_fake_graph):
    fake = shared_fake_graph
    d = graph_relayd(relayd_factory, fake,
                     client_secret_expires=expires_in(5))
    assert "warning: client_secret expires" in d.relayctl("status").stdout
    d.sections["graph"]["client_secret_expires"] = expires_in(300)
    d.write_config()
    os.kill(d.pid, signal.SIGHUP)
    d.wait_log(r"reload: .* in force for new sessions")
    assert "warning:" not in d.relayctl("status").stdout


@pytest.mark.parametrize("value", ["2027-13-01", "1.1.2027", "soon"])
def test_secret_expiry_bad_date(tmp_path, value):
    spool = tmp_path / "spool"
    spool.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("x\n")
    secret.chmod(0o600)
    conf = tmp_path / "r.conf"
    conf.write_text("[queue]\nspool_dir = %s\n[graph]\ntenant = t\n"
                    "client_id = c\nclient_secret_file = %s\n"
                    "client_secret_expires = %s\n" % (spool, secret, value))
    r = run_relayd("-n", "-c", str(conf))
    assert r.returncode == 78
    assert "%s:7: client_secret_expires \"%s\" is not a date" % (
        conf, value) in r.stderr, r.stderr


def test_tls_and_certificate_expiry_metrics(relayd_factory, tls_ca,
                                            shared_fake_graph):
    cert, key = tls_ca.issue("mx", days=20)
    fake = shared_fake_graph
    d = relayd_factory(smtp={"tls_cert": str(cert), "tls_key": str(key)})
    m = d.relayctl("metrics").stdout
    v = re.search(r'^relayd_credential_expiry_seconds\{credential='
                  r'"tls_cert"\} (\d+)$', m, re.M)
    assert v and 18 * 86400 < int(v.group(1)) <= 20 * 86400, m
    assert "client_secret" not in m
    assert re.search(r"^warning: tls_cert expires in (19|20) days$",
                     d.relayctl("status").stdout, re.M)
