"""AUTH that just works (issue 15): EHLO offers only mechanisms every user
in the users file can log in with, so that real clients (curl, swaks,
smtplib, msmtp), which take the strongest mechanism offered, log in with
the right password; a client trying its mechanisms in turn with one wrong
password fails once, not once per mechanism; every failed AUTH is logged
with its reason and never its password; lockouts are logged, shown by
`relayctl status` and lifted by `relayctl unlock`; and a listener's own
`require_auth`.
"""
import json
import re
import smtplib
import ssl
import subprocess

import pytest

from relaydtest.auth import (ALICE, BAD_535, BOB, DAVE, OK_235, User,
                             assert_no_secrets, b64, conf_line, connect,
                             send_and_check, start_authd, users_text,
                             write_private)
from relaydtest.daemon import need, run
from relaydtest.env import RELAYCTL_BIN
from relaydtest.smtp import smtp_send

# crypt= only (a line written by hand, or an old one): no SCRAM keys
CYRIL = User("cyril", "Cyr1l/crypt^only", crypt="y", scram=False)
# the mixed file of issue 15: crypt only, relayctl passwd --cram-md5 (all
# three secrets) and cram-md5 only
MIXED = (CYRIL, BOB, DAVE)

FAILED_RE = r"smtp auth failed "


def assert_no_failures(d):
    """The client's first choice worked: no AUTH failed on the way."""
    assert not re.search(FAILED_RE, d.log), \
        [l for l in d.log.splitlines() if "smtp auth failed" in l]


# --------------------------------------------------------------------------
# what EHLO offers, and what is logged about it

def test_mixed_file_offers_plain_and_login_and_says_why(relayd_factory,
                                                        tls_ca):
    d = start_authd(relayd_factory, tls_ca, users=MIXED)
    with connect(d) as c:
        assert c.mechs == {"PLAIN", "LOGIN"}
    d.wait_log(r"auth: SCRAM-SHA-256 not offered: users cyril, dave have "
               r"no scram-sha-256 secret \(still accepted when a client "
               r"asks for it by name\)")
    d.wait_log(r"auth: CRAM-MD5 not offered: user cyril has no cram-md5 "
               r"secret")
    d.wait_log(r'auth: users_file=\S+ mechanisms="PLAIN LOGIN"')


def test_mechanisms_follow_the_users_file_on_reload(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca, users=(BOB, DAVE))
    with connect(d) as c:
        assert c.mechs == {"PLAIN", "LOGIN", "CRAM-MD5"}
    write_private(d.users_file, users_text(MIXED))
    d.proc.send_signal(1)       # SIGHUP
    d.wait_log(r"reload: \S+ in force")
    d.wait_log(r'auth: users_file=\S+ mechanisms="PLAIN LOGIN"$')
    d.wait_log(r"auth: CRAM-MD5 not offered: user cyril has no cram-md5")
    with connect(d) as c:
        assert c.mechs == {"PLAIN", "LOGIN"}


# --------------------------------------------------------------------------
# real clients pick the strongest mechanism offered, and it works

def curl_send(d, tls_ca, tmp_path, user, password):
    curl = need("curl")
    msg = tmp_path / "mail.txt"
    msg.write_bytes(b"From: curl@a.test\r\nTo: c@b.test\r\n"
                    b"Subject: curl auto\r\n\r\nuploaded by curl\r\n")
    # no --login-options: curl picks the mechanism
    return run([curl, "-sS", "--max-time", "20", "--ssl-reqd",
                "smtp://127.0.0.1:%d" % d.port, "--cacert",
                str(tls_ca.ca_file), "--user", "%s:%s" % (user, password),
                "--mail-from", "curl@a.test", "--mail-rcpt", "c@b.test",
                "--upload-file", str(msg)])


def swaks_send(d, tls_ca, tmp_path, user, password):
    swaks = need("swaks")
    # --auth without a type: swaks takes what the server offers
    return run([swaks, "--server", "127.0.0.1:%d" % d.port, "--tls",
                "--tls-verify", "--tls-ca-path", str(tls_ca.ca_file),
                "--auth", "--auth-user", user, "--auth-password", password,
                "--from", "swaks@a.test", "--to", "t@b.test",
                "--helo", "swaks.test", "--timeout", "20"])


def msmtp_send(d, tls_ca, tmp_path, user, password):
    msmtp = need("msmtp")
    rc = tmp_path / ("msmtprc-" + user)
    rc.write_text("account default\nhost 127.0.0.1\nport %d\n"
                  "tls on\ntls_starttls on\ntls_trust_file %s\n"
                  "auth on\nuser %s\npassword %s\nfrom msmtp@a.test\n"
                  "domain msmtp.test\ntimeout 20\n"
                  % (d.port, tls_ca.ca_file, user, password))
    rc.chmod(0o600)
    return run([msmtp, "-C", str(rc), "m@b.test"],
               input=b"Subject: msmtp auto\n\nsent with msmtp\n")


class Done:
    returncode = 0
    stdout = stderr = b""


def smtplib_send(d, tls_ca, tmp_path, user, password):
    ctx = ssl.create_default_context(cafile=str(tls_ca.ca_file))
    # login: smtplib's login(), the strongest mechanism it knows
    smtp_send(d, b"Subject: smtplib auto\r\n\r\nhi\r\n", "py@a.test",
              ["r@b.test"], helo="py.test", starttls=ctx,
              login=(user, password), timeout=20)
    return Done()


CLIENTS = {"curl": curl_send, "swaks": swaks_send, "msmtp": msmtp_send,
           "smtplib": smtplib_send}


@pytest.mark.parametrize("client", list(CLIENTS))
def test_every_client_logs_in_every_user(relayd_factory, tls_ca, tmp_path,
                                         client):
    """A crypt-only user beside CRAM-MD5 users: each client, left to pick,
    logs each of them in at the first try. (curl takes CRAM-MD5 over
    LOGIN and PLAIN, smtplib and swaks try CRAM-MD5 first: offering it
    here fails them. msmtp takes PLAIN whenever TLS is on, so for it the
    case guards PLAIN for dave, whose only secret is cram-md5=.)"""
    d = start_authd(relayd_factory, tls_ca, users=MIXED)
    for u in MIXED:
        r = CLIENTS[client](d, tls_ca, tmp_path, u.name, u.password)
        out = (r.stdout + r.stderr).decode(errors="replace") \
            if isinstance(r.stdout, bytes) else r.stdout + r.stderr
        assert r.returncode == 0, (u.name, out)
        d.wait_log(r"smtp auth client=127\.0\.0\.1 user=\"?%s\"? "
                   r"mech=(PLAIN|LOGIN)" % u.name)
    users = sorted(f.get("user") for f in d.queued_files())
    assert users == sorted(u.name for u in MIXED)
    assert_no_failures(d)
    assert_no_secrets(d, *(u.password for u in MIXED))


# --------------------------------------------------------------------------
# counting failures

ALL_THREE = (BOB, User("erin", "Er1n=all+three", crypt="y", cram=True))


def smtplib_login(d, tls_ca, user, password):
    """smtplib's login(): CRAM-MD5, then PLAIN, then LOGIN, each with the
    same password, until one works. The last reply code."""
    ctx = ssl.create_default_context(cafile=str(tls_ca.ca_file))
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        s.starttls(context=ctx)
        s.ehlo("py.test")
        assert s.esmtp_features["auth"].split() == [
            "PLAIN", "LOGIN", "SCRAM-SHA-256", "CRAM-MD5"]
        try:
            return s.login(user, password)[0]
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code


def lockouts(d):
    return d.ctl("status")["lockouts"]


def test_one_wrong_password_over_three_mechanisms_is_one_failure(
        relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca, users=ALL_THREE,
                    auth={"max_failures": "2", "lockout": "10m"})
    wrong = "Wr0ng-" + BOB.password
    # one session, three mechanisms, one wrong password: one failure
    assert smtplib_login(d, tls_ca, "bob", wrong) == 535
    fails = [l for l in d.log.splitlines() if "smtp auth failed" in l]
    assert [re.search(r"mech=(\S+)", l).group(1) for l in fails] == [
        "CRAM-MD5", "PLAIN", "LOGIN"], fails
    assert [re.search(r"counted=(\S+)", l).group(1) for l in fails] == [
        "yes", "no", "no"], fails
    assert lockouts(d) == []
    assert "locked out" not in d.log
    # the second such session reaches max_failures = 2
    assert smtplib_login(d, tls_ca, "bob", wrong) in (454, 535)
    m = d.wait_log(r"smtp auth address 127\.0\.0\.1 locked out until "
                   r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) after 2 failures")
    lk = lockouts(d)
    assert lk == [{"address": "127.0.0.1", "until": m.group(1),
                   "failures": 2}], lk
    # the right password no longer helps
    with connect(d) as c:
        assert c.auth_plain("bob", BOB.password).text.startswith("454 4.7.0")
    d.wait_log(r'smtp auth failed client=127\.0\.0\.1 user=- mech=PLAIN '
               r'reason="locked out until %s"' % m.group(1))
    assert_no_secrets(d, BOB.password, wrong)


def test_the_same_mechanism_again_is_another_failure(relayd_factory,
                                                      tls_ca):
    """Guessing with one mechanism in one session counts every guess."""
    d = start_authd(relayd_factory, tls_ca, users=ALL_THREE,
                    auth={"max_failures": "2", "lockout": "10m"})
    with connect(d) as c:
        assert c.auth_plain("bob", "guess-1").text == BAD_535
        assert c.auth_plain("bob", "guess-2").text == BAD_535
        assert c.auth_plain("bob", BOB.password).text.startswith("454")
    d.wait_log(r"locked out until \S+ after 2 failures")
    # and another user named is another failure too
    with connect(d, source="127.0.0.2") as c:
        assert c.auth_plain("bob", "guess-3").text == BAD_535
        assert c.auth_login("erin", "guess-4").text == BAD_535
    assert {l["address"] for l in lockouts(d)} == {"127.0.0.1", "127.0.0.2"}


# --------------------------------------------------------------------------
# reasons in the log, never the password

def test_failures_logged_with_reasons(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca, users=(ALICE, BOB),
                    auth={"max_failures": "100"})
    wrong = "N0t-" + ALICE.password
    cases = [
        ("unknown user", "PLAIN", lambda c: c.auth_plain("zed", wrong)),
        ("wrong password", "PLAIN", lambda c: c.auth_plain("alice", wrong)),
        ("wrong password", "LOGIN", lambda c: c.auth_login("alice", wrong)),
        ("unknown user", "LOGIN", lambda c: c.auth_login("zed", wrong)),
        ("wrong password", "SCRAM-SHA-256",
         lambda c: c.auth_scram("alice", wrong)),
        ("unknown user", "SCRAM-SHA-256",
         lambda c: c.auth_scram("zed", wrong)),
        ("no secret for this mechanism", "CRAM-MD5",
         lambda c: c.auth_cram("alice", ALICE.password)),
        ("wrong password", "CRAM-MD5", lambda c: c.auth_cram("bob", wrong)),
        ("unknown user", "CRAM-MD5", lambda c: c.auth_cram("zed", wrong)),
        ("authorization identity is another user", "PLAIN",
         lambda c: c.auth_plain("alice", ALICE.password, authzid="bob")),
    ]
    for i, (why, mech, do) in enumerate(cases):
        with connect(d, source="127.0.0.%d" % (i + 2)) as c:
            r = do(c)
            assert r.text == BAD_535, (why, mech, r)
        d.wait_log(r'smtp auth failed client=127\.0\.0\.%d user=\S+ '
                   r'mech=%s reason="%s" counted=yes'
                   % (i + 2, mech, why))
    with connect(d) as c:
        assert c.cmd("AUTH PLAIN " + b64("no-nul-here")).code == 501
        assert c.cmd("AUTH LOGIN").code == 334
        assert c.cmd("%%%%").code == 501
        assert c.cmd("AUTH SCRAM-SHA-256").code == 334
        assert c.cmd("*").code == 501
    d.wait_log(r'smtp auth failed client=127\.0\.0\.1 user=- mech=PLAIN '
               r'reason="malformed exchange" counted=no')
    d.wait_log(r'smtp auth failed client=127\.0\.0\.1 user=- mech=LOGIN '
               r'reason="malformed exchange" counted=no')
    d.wait_log(r'mech=SCRAM-SHA-256 reason="cancelled by the client"')
    assert_no_secrets(d, ALICE.password, wrong, BOB.password)


# --------------------------------------------------------------------------
# relayctl status and unlock

def test_relayctl_shows_and_lifts_a_lockout(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca,
                    auth={"max_failures": "1", "lockout": "1h"})
    with connect(d) as c:
        assert c.auth_plain("alice", "bad").text == BAD_535
    m = d.wait_log(r"smtp auth address 127\.0\.0\.1 locked out until "
                   r"(\S+) after 1 failures")
    r = d.relayctl("status")
    assert r.returncode == 0, r.stderr
    assert "locked out: 127.0.0.1 until %s (1 failures)" % m.group(1) \
        in r.stdout.splitlines(), r.stdout
    r = d.relayctl("status", "--json")
    assert json.loads(r.stdout)["lockouts"] == [
        {"address": "127.0.0.1", "until": m.group(1), "failures": 1}]
    with connect(d) as c:
        assert c.auth_plain("alice", ALICE.password).code == 454
    # lifted
    r = d.relayctl("unlock", "127.0.0.1")
    assert (r.returncode, r.stdout) == (0, "127.0.0.1: unlocked\n"), r
    d.wait_log(r"auth: address 127\.0\.0\.1 unlocked by relayctl")
    assert "locked out" not in d.relayctl("status").stdout
    assert d.ctl("status")["lockouts"] == []
    with connect(d) as c:
        assert c.auth_plain("alice", ALICE.password).text == OK_235
        send_and_check(d, c, "alice")
    # not locked out (any more): exit 1, and says so
    r = d.relayctl("unlock", "127.0.0.1")
    assert r.returncode == 1, r
    assert "127.0.0.1 is not locked out" in r.stderr
    assert d.relayctl("unlock").returncode == 64
    r = subprocess.run([str(RELAYCTL_BIN), "--help"], capture_output=True,
                       text=True, timeout=10)
    assert "relayctl [-s socket] [-c config] unlock ADDRESS" in r.stdout


def test_lockout_survives_a_reload(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca,
                    auth={"max_failures": "1", "lockout": "1h"})
    with connect(d) as c:
        assert c.auth_plain("alice", "bad").text == BAD_535
    d.wait_log(r"locked out until")
    d.proc.send_signal(1)
    d.wait_log(r"reload: \S+ in force")
    assert [l["address"] for l in lockouts(d)] == ["127.0.0.1"]
    with connect(d) as c:
        assert c.auth_plain("alice", ALICE.password).code == 454


def test_unlock_without_auth(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca, users_file=False)
    r = d.relayctl("unlock", "127.0.0.1")
    assert r.returncode == 1 and "AUTH is off" in r.stderr, r
    assert d.ctl("status")["lockouts"] == []


# --------------------------------------------------------------------------
# a listener's own require_auth

def test_listener_require_auth(relayd_factory, tls_ca):
    """Port 25 for the LAN's printers, 587 with AUTH for everything else:
    127.0.0.1 is in allow_networks, yet the require_auth listener wants
    AUTH."""
    d = start_authd(relayd_factory, tls_ca,
                    smtp={"allow_networks": "127.0.0.0/8"},
                    more_listeners=[" require_auth"])
    port587 = d.more_ports[0]
    with connect(d, tls=None) as c:
        r = c.send_mail(rcpts=("lan@b.test",))
        assert r.qid, r
    assert d.spool_file(r.qid).get("user") == ""
    with connect(d, port=port587) as c:
        assert c.cmd("MAIL FROM:<a@a.test>").text == \
            "530 5.7.0 Authentication required"
        assert c.cmd("RCPT TO:<b@b.test>").code == 503
        assert c.auth_plain("alice", ALICE.password).text == OK_235
        f = send_and_check(d, c, "alice")
        assert f.get("listener") == "127.0.0.1:%d" % port587
    with connect(d, tls=None, port=port587) as c:   # before STARTTLS too
        assert c.cmd("MAIL FROM:<a@a.test>").code == 530
    assert len(d.queued()) == 2


def test_listener_require_auth_needs_users_file(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca, users_file=False,
                    more_listeners=[" require_auth"], start=False)
    r = d.check_config()
    assert r.returncode == 78, (r.stdout, r.stderr)
    line = [n for n, l in enumerate(d.conf_path.read_text().splitlines(), 1)
            if l.endswith("require_auth")][0]
    assert "%s:%d: listen 127.0.0.1:%d require_auth needs [auth] " \
        "users_file" % (d.conf_path, line, d.more_ports[0]) in r.stderr, \
        r.stderr


def test_listener_require_auth_needs_a_way_to_auth(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca, cert=False,
                    more_listeners=[" require_auth"], start=False)
    r = d.check_config()
    assert r.returncode == 78, (r.stdout, r.stderr)
    assert "require_auth: AUTH needs TLS" in r.stderr, r.stderr
    d = start_authd(relayd_factory, tls_ca, cert=False, start=False,
                    more_listeners=[" require_auth auth_plaintext=yes"])
    r = d.check_config()
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("listeners,ok", [
    ([" require_auth"], False),
    ([" require_auth", " require_auth"], True)],
    ids=["one-listener-open", "every-listener"])
def test_open_networks_need_require_auth_everywhere(relayd_factory, tls_ca,
                                                    listeners, ok):
    main = listeners[0]
    d = start_authd(relayd_factory, tls_ca, listen=main,
                    more_listeners=listeners[1:] + ([""] if not ok else []),
                    smtp={"allow_networks": "0.0.0.0/0"}, start=False)
    r = d.check_config()
    if ok:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 78, r.stderr
        assert "%s:%d: allow_networks 0.0.0.0/0 covers every address" % (
            d.conf_path, conf_line(d, "smtp", "allow_networks")) \
            in r.stderr, r.stderr
