"""SMTP AUTH (RFC 4954): the users_file, when AUTH is offered (TLS or
auth_plaintext=yes), PLAIN / LOGIN / CRAM-MD5 / SCRAM-SHA-256, failures,
their delay and the lockout, relaying for authenticated clients, real
clients (smtplib, swaks, msmtp, curl) and `relayctl passwd`.

Most daemons here relay for nobody (allow_networks = 10.0.0.0/8), so a
message accepted from 127.0.0.1 proves that AUTH let it through. A failed
AUTH costs a second or more (the delay grows per client address): a test
makes at most a few of them, and uses other loopback source addresses
(127.0.0.2, ...) where it needs an address with a clean record.
"""
import hashlib
import os
import re
import smtplib
import ssl
import subprocess
import time

import pytest

from relaydtest.auth import (ALICE, BAD_535, BOB, CAROL, DAVE, FAIL_TIMEOUT,
                             OK_235, ScramClient, assert_no_secrets,
                             auth_log_re, authed, b64, conf_line, connect,
                             crypt_ok, hmac_sha256, scram_entry, scram_keys,
                             send_and_check, start_authd, unb64, write_private)
from relaydtest.daemon import need, run
from relaydtest.env import RELAYCTL_BIN


FIRST_DELAY = 0.9       # "first >= ~1 s"
QUICK = 0.5             # what "not delayed" means here

ENC_538 = "538 5.7.11 Encryption required for requested authentication " \
          "mechanism"
CANCEL_501 = "501 5.7.0 Authentication cancelled"
BASE_MECHS = {"PLAIN", "LOGIN", "SCRAM-SHA-256"}


def only_message(d):
    files = d.queued_files()
    assert len(files) == 1, [f.path.name for f in files]
    return files[0]


def timed(fn, *a, **kw):
    t0 = time.monotonic()
    r = fn(*a, **kw)
    return r, time.monotonic() - t0


# --------------------------------------------------------------------------
# the test's own SCRAM client against RFC 7677's example

def test_scram_client_matches_rfc7677_example():
    sc = ScramClient("user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    assert sc.first() == "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = sc.final("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert final == ("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)"
                     "hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    sc.check_server_final("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    # A users_file entry with that salt lets a server check the proof and
    # sign as RFC 7677 says, from StoredKey and ServerKey alone.
    entry = scram_entry("pencil", 4096, unb64("W22ZaJ0SNY7soEsUEjb6gQ=="))
    it, salt, stored, server = entry.split(":")
    assert (it, salt) == ("4096", "W22ZaJ0SNY7soEsUEjb6gQ==")
    auth_message = ",".join([
        "n=user,r=rOprNGfwEbeRWgbNEkqO",
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        final.rsplit(",p=", 1)[0]]).encode()
    proof = unb64(final.rsplit(",p=", 1)[1])
    signature = hmac_sha256(bytes.fromhex(stored), auth_message)
    client_key = bytes(a ^ b for a, b in zip(proof, signature))
    assert hashlib.sha256(client_key).hexdigest() == stored
    assert b64(hmac_sha256(bytes.fromhex(server), auth_message)) == \
        "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


# --------------------------------------------------------------------------
# configuration (relayd -n)

@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604],
                         ids=["0644", "0640", "0604"])
def test_users_file_open_to_group_or_others(relayd_factory, tls_ca, mode):
    d = start_authd(relayd_factory, tls_ca, start=False)
    os.chmod(d.users_file, mode)
    r = d.check_config()
    assert r.returncode == 78, (r.stdout, r.stderr)
    msg = ('users_file "%s" is open to group or others (mode %04o); '
           "run: chmod 600 %s" % (d.users_file, mode, d.users_file))
    assert msg in r.stderr, r.stderr
    assert "configuration OK" not in r.stdout


def test_daemon_refuses_open_users_file(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca, start=False)
    os.chmod(d.users_file, 0o644)
    with pytest.raises(AssertionError, match="exited with 78 at start"):
        d.start()
    d.expect_dead = True
    assert ('users_file "%s" is open to group or others (mode 0644)'
            % d.users_file) in d.log


def test_users_file_ok(relayd_factory, tls_ca):
    """Comments, blank lines, tab or space separators, every field type,
    and a read-only (0400) file are fine."""
    d = start_authd(relayd_factory, tls_ca, users=(ALICE, BOB, CAROL),
                    start=False)
    os.chmod(d.users_file, 0o400)
    r = d.check_config()
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "%s: configuration OK" % d.conf_path


def test_users_file_missing(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca, users_file=False,
                    auth={"users_file": "/nonexistent/relayd-users"},
                    start=False)
    r = d.check_config()
    assert r.returncode == 78, (r.stdout, r.stderr)
    assert "/nonexistent/relayd-users" in r.stderr, r.stderr


BAD_LINES = [
    # (id, users_file text with {crypt}, {it}, {salt}, {stored}, {server};
    #  the bad line)
    ("unknown-field", "# users\n\nalice {crypt}\nbob frobnicate=1\n", 4),
    ("field-without-value", "alice {crypt}\nbob crypt\n", 2),
    ("scram-three-parts", "alice scram-sha-256={it}:{salt}:{stored}\n", 1),
    ("scram-iter-not-a-number",
     "alice scram-sha-256=x:{salt}:{stored}:{server}\n", 1),
    ("scram-iter-zero", "alice scram-sha-256=0:{salt}:{stored}:{server}\n",
     1),
    ("scram-salt-not-base64",
     "alice scram-sha-256={it}:!!!:{stored}:{server}\n", 1),
    ("scram-key-not-hex",
     "alice scram-sha-256={it}:{salt}:%s:{server}\n" % ("zz" * 32), 1),
    ("scram-key-short",
     "alice scram-sha-256={it}:{salt}:{stored_short}:{server}\n", 1),
    # not in the spec's words; what an admin would expect:
    ("user-without-fields", "\n\nalice\n", 3),
    ("duplicate-user", "alice {crypt}\n# again\nalice {crypt}\n", 3),
    ("crypt-not-a-hash", "alice crypt=Al1ce:s3cret!x\n", 1),
]


@pytest.mark.parametrize("text,line", [c[1:] for c in BAD_LINES],
                         ids=[c[0] for c in BAD_LINES])
def test_users_file_bad_line(relayd_factory, tls_ca, text, line):
    it, salt, stored, server = ALICE.fields[1].split("=", 1)[1].split(":")
    text = text.format(crypt=ALICE.fields[0], it=it, salt=salt,
                       stored=stored, stored_short=stored[:-2],
                       server=server)
    d = start_authd(relayd_factory, tls_ca, start=False)
    write_private(d.users_file, text)
    r = d.check_config()
    assert r.returncode == 78, (r.stdout, r.stderr)
    prefix = "%s:%d: " % (d.users_file, line)
    assert any(l.startswith(prefix) for l in r.stderr.splitlines()), \
        "expected a line starting %r in:\n%s" % (prefix, r.stderr)
    assert "configuration OK" not in r.stdout


@pytest.mark.parametrize("key,value", [("max_failures", "many"),
                                       ("lockout", "soon")])
def test_auth_section_bad_value(relayd_factory, tls_ca, key, value):
    d = start_authd(relayd_factory, tls_ca, auth={key: value}, start=False)
    r = d.check_config()
    assert r.returncode == 78, (r.stdout, r.stderr)
    prefix = "%s:%d: " % (d.conf_path, conf_line(d, "auth", key))
    assert any(l.startswith(prefix) and key in l
               for l in r.stderr.splitlines()), r.stderr


# --------------------------------------------------------------------------
# when AUTH is offered

def test_no_auth_on_plain_listener_without_tls(relayd_factory):
    """No certificate, no auth_plaintext: AUTH is neither offered nor
    accepted, and the client does not relay."""
    d = start_authd(relayd_factory, cert=False)
    with connect(d, tls=None) as c:
        assert c.mechs is None, c.last_ehlo
        assert not c.has_ext("STARTTLS")
        r = c.auth_plain(ALICE.name, ALICE.password)
        assert r.text == ENC_538, r
        assert c.cmd("AUTH LOGIN").text == ENC_538
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        assert c.cmd("RCPT TO:<b@b.test>").text.startswith("554 5.7.1")
        assert c.cmd("QUIT").code == 221
    assert d.queued() == []
    assert not re.search(auth_log_re("alice", "PLAIN"), d.log)
    assert_no_secrets(d, ALICE.password)


def test_auth_offered_only_after_starttls(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca)
    with connect(d, tls=None) as c:
        assert c.has_ext("STARTTLS")
        assert c.mechs is None
        assert c.auth_plain(ALICE.name, ALICE.password).text == ENC_538
        c.starttls()
        assert c.ehlo_mechs() == BASE_MECHS
        assert c.auth_plain(ALICE.name, ALICE.password).text == OK_235
        send_and_check(d, c, "alice")
    d.wait_log(auth_log_re("alice", "PLAIN"))
    assert_no_secrets(d, ALICE.password)


def test_cram_md5_offered_only_when_every_user_has_a_secret(
        relayd_factory, tls_ca):
    """Clients take the strongest mechanism offered: one user's cram-md5=
    secret must not make CRAM-MD5 the choice of alice's devices."""
    d = start_authd(relayd_factory, tls_ca, users=(ALICE, BOB))
    with connect(d) as c:
        assert c.mechs == BASE_MECHS
    d.wait_log(r"auth: CRAM-MD5 not offered: user alice has no cram-md5 "
               r"secret")
    d = start_authd(relayd_factory, tls_ca, users=(BOB, DAVE))
    with connect(d) as c:
        assert c.mechs == {"PLAIN", "LOGIN", "CRAM-MD5"}
    d.wait_log(r"auth: SCRAM-SHA-256 not offered: user dave has no "
               r"scram-sha-256 secret")


def test_no_users_file_no_auth(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca, users_file=False)
    with connect(d) as c:
        assert c.mechs is None
        r = c.auth_plain(ALICE.name, ALICE.password)
        assert r.code in (502, 503, 504), r
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        assert c.cmd("RCPT TO:<b@b.test>").text.startswith("554 5.7.1")
    assert d.queued() == []


def test_implicit_tls_listener(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca, listen=" tls")
    with connect(d, tls="implicit") as c:
        assert c.mechs == BASE_MECHS
        assert c.auth_plain(ALICE.name, ALICE.password).text == OK_235
        send_and_check(d, c, "alice")
    d.wait_log(auth_log_re("alice", "PLAIN"))


def test_auth_plaintext_listener(relayd_factory):
    """auth_plaintext=yes: AUTH without TLS on that listener only."""
    d = start_authd(relayd_factory, cert=False,
                    more_listeners=[" auth_plaintext=yes"])
    with connect(d, tls=None) as c:
        assert c.mechs is None
        assert c.auth_plain(ALICE.name, ALICE.password).text == ENC_538
    with connect(d, tls=None, port=d.more_ports[0]) as c:
        assert c.mechs == BASE_MECHS
        assert c.auth_plain(ALICE.name, ALICE.password).text == OK_235
        f = send_and_check(d, c, "alice")
        assert f.get("listener") == "127.0.0.1:%d" % d.more_ports[0]
    with connect(d, tls=None, port=d.more_ports[0]) as c:
        assert c.auth_login(CAROL.name, CAROL.password).text == OK_235
        send_and_check(d, c, "carol")
    d.wait_log(auth_log_re("alice", "PLAIN"))
    d.wait_log(auth_log_re("carol", "LOGIN"))
    assert_no_secrets(d, ALICE.password, CAROL.password)


# --------------------------------------------------------------------------
# mechanisms

@pytest.mark.parametrize("user", [ALICE, BOB, CAROL],
                         ids=["yescrypt", "sha512", "utf8-password"])
def test_plain_initial_response(relayd_factory, tls_ca, user):
    d = start_authd(relayd_factory, tls_ca, users=(ALICE, BOB, CAROL))
    with connect(d) as c:
        # not relaying before AUTH ...
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        assert c.cmd("RCPT TO:<b@b.test>").text.startswith("554 5.7.1")
        assert c.cmd("RSET").code == 250
        # ... and relaying after, for every transaction of the session
        r = c.auth_plain(user.name, user.password)
        assert r.lines == [OK_235], r
        f1 = send_and_check(d, c, user.name)
        f2 = send_and_check(d, c, user.name, rcpt="other@c.test")
        assert f1.get("client") == f2.get("client") == "127.0.0.1"
        assert c.cmd("QUIT").code == 221
    d.wait_log(auth_log_re(user.name, "PLAIN"))
    assert_no_secrets(d, user.password)


def test_unauthenticated_message_has_empty_user(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca, smtp={"allow_networks":
                                                  "127.0.0.0/8"})
    with connect(d) as c:
        r = c.send_mail()
        assert r.qid, r
    assert d.spool_file(r.qid).get("user") == ""


def test_plain_without_initial_response(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca)
    with connect(d) as c:
        r = c.cmd("AUTH PLAIN")
        assert r.lines == ["334 "], r
        assert c.transcript[-1] == ("S", b"334 \r\n"), c.transcript[-1]
        r = c.cmd(b64("\0alice\0" + ALICE.password))
        assert r.text == OK_235, r
        send_and_check(d, c, "alice")
    d.wait_log(auth_log_re("alice", "PLAIN"))
    assert_no_secrets(d, ALICE.password)


def test_plain_authzid_same_as_user(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca)
    with connect(d) as c:
        r = c.auth_plain("alice", ALICE.password, authzid="alice")
        assert r.text == OK_235, r
        send_and_check(d, c, "alice")


def test_plain_authzid_of_another_user_is_refused(relayd_factory, tls_ca):
    """alice's password does not let her act as carol."""
    d = start_authd(relayd_factory, tls_ca)
    with connect(d) as c:
        r = c.auth_plain("alice", ALICE.password, authzid="carol")
        assert r.code == 535, r
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        assert c.cmd("RCPT TO:<b@b.test>").text.startswith("554 5.7.1")
    assert d.queued() == []
    assert_no_secrets(d, ALICE.password)


def test_login_prompts_byte_for_byte(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca)
    with connect(d) as c:
        r = c.cmd("AUTH LOGIN")
        assert c.transcript[-1] == ("S", b"334 VXNlcm5hbWU6\r\n"), r
        r = c.cmd(b64("alice"))
        assert c.transcript[-1] == ("S", b"334 UGFzc3dvcmQ6\r\n"), r
        r = c.cmd(b64(ALICE.password))
        assert r.lines == [OK_235], r
        send_and_check(d, c, "alice")
    d.wait_log(auth_log_re("alice", "LOGIN"))
    assert_no_secrets(d, ALICE.password)


def test_login_initial_response(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca)
    with connect(d) as c:
        r = c.cmd("AUTH LOGIN " + b64("carol"))
        assert r.lines == ["334 UGFzc3dvcmQ6"], r
        r = c.cmd(b64(CAROL.password))
        assert r.text == OK_235, r
        send_and_check(d, c, "carol")
    d.wait_log(auth_log_re("carol", "LOGIN"))
    assert_no_secrets(d, CAROL.password)


def test_cram_md5(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca, users=(BOB, DAVE))
    challenges = []
    for _ in range(2):
        with connect(d) as c:
            assert "CRAM-MD5" in c.mechs
            r = c.auth_cram("bob", BOB.password)
            assert r.text == OK_235, r
            ch = c.cram_challenge
            # RFC 2195: the challenge is a msg-id, "<...@...>"
            assert re.fullmatch(rb"<[^<>\s]+@[^<>\s]+>", ch), ch
            challenges.append(ch)
            send_and_check(d, c, "bob")
    assert challenges[0] != challenges[1], "the same challenge twice"
    d.wait_log(auth_log_re("bob", "CRAM-MD5"))
    assert_no_secrets(d, BOB.password)


def test_cram_md5_needs_a_cram_secret(relayd_factory, tls_ca):
    """alice has no cram-md5= secret: CRAM-MD5 cannot work for her. It is
    not offered, but bob may still ask for it by name."""
    d = start_authd(relayd_factory, tls_ca, users=(ALICE, BOB))
    with connect(d) as c:
        assert "CRAM-MD5" not in c.mechs
        assert c.auth_cram("bob", BOB.password).text == OK_235
    with connect(d) as c:
        r = c.auth_cram("alice", ALICE.password)
        assert r.text == BAD_535, r
        # and she can still use PLAIN in the same session
        assert c.auth_plain("alice", ALICE.password).text == OK_235
        send_and_check(d, c, "alice")
    d.wait_log(auth_log_re("alice", "CRAM-MD5", failed=True) +
               r'.*reason="no secret for this mechanism"')


@pytest.mark.parametrize("ir", [True, False], ids=["initial-response",
                                                    "no-initial-response"])
def test_scram_sha_256(relayd_factory, tls_ca, ir):
    d = start_authd(relayd_factory, tls_ca)
    with connect(d) as c:
        r = c.auth_scram("alice", ALICE.password, ir=ir)
        assert r.text == OK_235, r
        # the server used the salt and iteration count of the users_file
        assert c.scram.server_params == ALICE.scram_params()
        send_and_check(d, c, "alice")
    d.wait_log(auth_log_re("alice", "SCRAM-SHA-256"))
    assert_no_secrets(d, ALICE.password)


def test_scram_sha_256_wrong_password(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca)
    with connect(d) as c:
        r, took = timed(c.auth_scram, "alice", "not-" + ALICE.password)
        assert r.text == BAD_535, r
        assert took >= FIRST_DELAY, took
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        assert c.cmd("RCPT TO:<b@b.test>").text.startswith("554 5.7.1")
    d.wait_log(auth_log_re("alice", "SCRAM-SHA-256", failed=True))
    assert_no_secrets(d, ALICE.password, "not-" + ALICE.password)


# --------------------------------------------------------------------------
# protocol errors

def test_cancel(relayd_factory, tls_ca):
    """'*' cancels at every step, at once (a cancel is no guess at a
    password), and the session can AUTH afterwards."""
    d = start_authd(relayd_factory, tls_ca)
    with connect(d) as c:
        steps = [
            ["AUTH PLAIN"],
            ["AUTH LOGIN"],
            ["AUTH LOGIN", b64("alice")],
            ["AUTH SCRAM-SHA-256 " + b64(ScramClient("alice", "x").first())],
        ]
        for lines in steps:
            for line in lines:
                assert c.cmd(line).code == 334, (lines, c.transcript[-1])
            r, took = timed(c.cmd, "*", timeout=FAIL_TIMEOUT)
            assert r.text == CANCEL_501, (lines, r)
            assert took < QUICK, (lines, took)
        assert c.auth_plain("alice", ALICE.password).text == OK_235
        send_and_check(d, c, "alice")


def test_bad_base64(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca)
    with connect(d) as c:
        r = c.cmd("AUTH PLAIN !!!not-base64!!!", timeout=FAIL_TIMEOUT)
        assert r.text.startswith("501 5.5.2"), r
        assert c.cmd("AUTH PLAIN").lines == ["334 "]
        r = c.cmd("%%%%", timeout=FAIL_TIMEOUT)
        assert r.text.startswith("501 5.5.2"), r
        assert c.cmd("AUTH LOGIN").code == 334
        r = c.cmd("dXNlcg=x", timeout=FAIL_TIMEOUT)
        assert r.text.startswith("501 5.5.2"), r
        assert c.auth_plain("alice", ALICE.password).text == OK_235
        send_and_check(d, c, "alice")


def test_auth_after_success(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca)
    with authed(d) as c:
        r = c.auth_plain("carol", CAROL.password)
        assert r.text.startswith("503 5.5.1"), r
        assert c.cmd("AUTH LOGIN").text.startswith("503 5.5.1")
        send_and_check(d, c, "alice")   # still alice


def test_auth_inside_transaction(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca)
    with connect(d) as c:
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        r = c.auth_plain("alice", ALICE.password)
        assert r.code == 503, r
        assert c.cmd("RSET").code == 250
        assert c.auth_plain("alice", ALICE.password).text == OK_235
        send_and_check(d, c, "alice")


def test_auth_before_ehlo(relayd_factory, tls_ca):
    """On an implicit-TLS listener before EHLO, and after STARTTLS (which
    forgets EHLO) before the new EHLO: 503."""
    d = start_authd(relayd_factory, tls_ca, more_listeners=[" tls"])
    with connect(d, tls="implicit", port=d.more_ports[0], ehlo=False) as c:
        assert c.auth_plain("alice", ALICE.password).code == 503
        c.ehlo()
        assert c.auth_plain("alice", ALICE.password).text == OK_235
    with connect(d, ehlo=False) as c:
        assert c.auth_plain("alice", ALICE.password).code == 503


@pytest.mark.parametrize("mech", ["FOO", "DIGEST-MD5", "CRAM-MD5",
                                  "SCRAM-SHA-1", "SCRAM-SHA-256-PLUS"])
def test_mechanism_not_offered(relayd_factory, tls_ca, mech):
    """A mechanism not in the AUTH line: 504 5.5.4 (CRAM-MD5 too, as no
    user here has a cram-md5= secret), and the session goes on."""
    d = start_authd(relayd_factory, tls_ca)
    with connect(d) as c:
        assert mech not in c.mechs
        r = c.cmd("AUTH " + mech)
        assert r.text.startswith("504 5.5.4"), r
        r = c.cmd("AUTH %s %s" % (mech, b64("x")))
        assert r.text.startswith("504 5.5.4"), r
        assert c.auth_plain("alice", ALICE.password).text == OK_235


def test_mechanism_names_are_case_insensitive(relayd_factory, tls_ca):
    """RFC 4954 section 7: the AUTH command's strings are case
    insensitive, the mechanism name included."""
    d = start_authd(relayd_factory, tls_ca)
    with connect(d) as c:
        assert c.cmd("AUTH login").lines == ["334 VXNlcm5hbWU6"]
        assert c.cmd("*").text == CANCEL_501
        r = c.cmd("auth Plain " + b64("\0alice\0" + ALICE.password))
        assert r.text == OK_235, r
        send_and_check(d, c, "alice")


def test_auth_without_mechanism(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca)
    with connect(d) as c:
        assert c.cmd("AUTH").code == 501
        assert c.auth_plain("alice", ALICE.password).text == OK_235


# --------------------------------------------------------------------------
# failures, their delay, lockout

def test_failures_delayed_logged_and_recoverable(relayd_factory, tls_ca):
    d = start_authd(relayd_factory, tls_ca)
    wrong = "Wr0ng-" + ALICE.password
    # 1st failure: PLAIN, wrong password
    with connect(d) as c:
        r, t1 = timed(c.auth_plain, "alice", wrong)
        assert r.text == BAD_535, r
        assert t1 >= FIRST_DELAY, t1
    d.wait_log(auth_log_re("alice", "PLAIN", failed=True))
    # 2nd failure from the same address, in a new session: LOGIN with an
    # unknown user. Same reply; a longer delay. Meanwhile the daemon
    # serves others.
    with connect(d) as c:
        assert c.cmd("AUTH LOGIN").code == 334
        assert c.cmd(b64("nosuch")).code == 334
        t0 = time.monotonic()
        c.send(b64(wrong) + "\r\n")
        with connect(d, source="127.0.0.2") as other:
            t_other = time.monotonic()
            assert other.cmd("NOOP").code == 250
            assert other.auth_plain("alice", ALICE.password).text == OK_235
            assert time.monotonic() - t_other < QUICK
        r = c.reply(timeout=FAIL_TIMEOUT)
        t2 = time.monotonic() - t0
        assert r.text == BAD_535, r
        assert t2 > t1 + 0.2, (t1, t2)
        # the right password still works (2 failures < max_failures)
        assert c.auth_plain("alice", ALICE.password).text == OK_235
        send_and_check(d, c, "alice")
    d.wait_log(auth_log_re("nosuch", "LOGIN", failed=True))
    d.wait_log(auth_log_re("alice", "PLAIN", client="127.0.0.2"))
    assert_no_secrets(d, ALICE.password, wrong)


def test_lockout(relayd_factory, tls_ca):
    # The lockout may run from the failure or from its (delayed) reply:
    # 4s outlasts the second failure's delay either way, and the test
    # waits 4.5s after that reply.
    d = start_authd(relayd_factory, tls_ca,
                    auth={"max_failures": "2", "lockout": "4s"})
    with connect(d) as c:
        assert c.auth_plain("alice", "bad-1").text == BAD_535
        assert c.auth_plain("alice", "bad-2").text == BAD_535
    locked_at = time.monotonic()
    # locked out: even the right password gets a temporary error
    with connect(d) as c:
        r = c.auth_plain("alice", ALICE.password)
        assert r.text.startswith("454 4.7.0"), r
        assert c.cmd("MAIL FROM:<a@a.test>").code == 250
        assert c.cmd("RCPT TO:<b@b.test>").text.startswith("554 5.7.1")
    # only that address
    with authed(d, source="127.0.0.2") as c:
        send_and_check(d, c, "alice")
    # and only for `lockout`
    time.sleep(max(0, locked_at + 4.5 - time.monotonic()))
    with connect(d) as c:
        r = c.auth_plain("alice", ALICE.password)
        assert r.text == OK_235, r
        send_and_check(d, c, "alice")
    assert len(d.queued()) == 2
    assert_no_secrets(d, ALICE.password)


# --------------------------------------------------------------------------
# real clients


SMTPLIB_CASES = {
    # id: (users of the daemon, user, how)
    "login-cram-md5": ((BOB, DAVE), BOB, "login", "CRAM-MD5"),
    "login-plain": ((ALICE,), ALICE, "login", "PLAIN"),
    "auth-plain-no-ir": ((ALICE,), ALICE, "PLAIN-noir", "PLAIN"),
    "auth-login-ir": ((ALICE,), ALICE, "LOGIN", "LOGIN"),
    "auth-login-no-ir": ((ALICE,), ALICE, "LOGIN-noir", "LOGIN"),
    "smtps-login": ((ALICE,), ALICE, "smtps", "PLAIN"),
}


@pytest.mark.parametrize("case", list(SMTPLIB_CASES))
def test_smtplib(relayd_factory, tls_ca, case):
    users, user, how, mech = SMTPLIB_CASES[case]
    d = start_authd(relayd_factory, tls_ca, users=users,
                    listen=" tls" if how == "smtps" else "")
    ctx = ssl.create_default_context(cafile=str(tls_ca.ca_file))
    if how == "smtps":
        s = smtplib.SMTP_SSL("127.0.0.1", d.port, timeout=10, context=ctx)
    else:
        s = smtplib.SMTP("127.0.0.1", d.port, timeout=10)
    with s:
        if how != "smtps":
            s.starttls(context=ctx)
        s.ehlo("py.test")
        if how in ("login", "smtps"):
            code, _ = s.login(user.name, user.password)
        else:
            s.user, s.password = user.name, user.password
            name, _, noir = how.partition("-")
            auth = {"PLAIN": s.auth_plain, "LOGIN": s.auth_login}[name]
            code, _ = s.auth(name, auth, initial_response_ok=not noir)
        assert code == 235
        assert s.sendmail("py@a.test", ["r@b.test"],
                          b"Subject: smtplib auth\r\n\r\nhi\r\n") == {}
    f = only_message(d)
    assert f.get("user") == user.name
    assert f.rcpts == ["r@b.test"]
    d.wait_log(auth_log_re(user.name, mech))
    assert_no_secrets(d, user.password)


@pytest.mark.parametrize("mech,tlsc", [("PLAIN", False), ("LOGIN", False),
                                       ("CRAM-MD5", False), ("PLAIN", True)],
                         ids=["PLAIN", "LOGIN", "CRAM-MD5", "PLAIN-tlsc"])
def test_swaks(relayd_factory, tls_ca, mech, tlsc):
    swaks = need("swaks")
    user = BOB if mech == "CRAM-MD5" else ALICE
    d = start_authd(relayd_factory, tls_ca,
                    users=(BOB, DAVE) if mech == "CRAM-MD5" else (ALICE, BOB),
                    listen=" tls" if tlsc else "")
    r = run([swaks, "--server", "127.0.0.1:%d" % d.port,
             "--tlsc" if tlsc else "--tls",
             "--tls-verify", "--tls-ca-path", str(tls_ca.ca_file),
             "--auth", mech, "--auth-user", user.name,
             "--auth-password", user.password,
             "--from", "swaks@a.test", "--to", "t@b.test",
             "--helo", "swaks.test", "--timeout", "15"])
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    assert OK_235 in out
    f = only_message(d)
    assert f.get("user") == user.name
    assert f.rcpts == ["t@b.test"]
    d.wait_log(auth_log_re(user.name, mech))
    assert_no_secrets(d, user.password)


@pytest.mark.parametrize("mech,starttls", [
    ("plain", True), ("login", True), ("scram-sha-256", True),
    ("plain", False)], ids=["plain", "login", "scram-sha-256",
                            "plain-smtps"])
def test_msmtp(relayd_factory, tls_ca, tmp_path, mech, starttls):
    msmtp = need("msmtp")
    v = run([msmtp, "--version"]).stdout.decode(errors="replace")
    supported = v.split("Supported authentication methods:")[-1]
    if mech not in supported.split("\n")[1].split():
        pytest.skip("this msmtp has no %s" % mech)
    d = start_authd(relayd_factory, tls_ca,
                    listen="" if starttls else " tls")
    rc = write_private(tmp_path / "msmtprc",
                       "account default\n"
                       "host 127.0.0.1\n"
                       "port %d\n"
                       "tls_starttls %s\n"
                       "tls_trust_file %s\n"
                       "user alice\n"
                       "password %s\n"
                       "from msmtp@a.test\n"
                       "domain msmtp.test\n"
                       "timeout 15\n"
                       % (d.port, "on" if starttls else "off",
                          tls_ca.ca_file, ALICE.password))
    r = run([msmtp, "-C", str(rc), "--tls=on", "--auth=" + mech,
             "m@b.test"],
            input=b"Subject: msmtp auth\n\nsent with msmtp\n")
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")
    f = only_message(d)
    assert f.get("user") == "alice"
    assert f.rcpts == ["m@b.test"]
    d.wait_log(auth_log_re("alice", mech.upper()))
    assert_no_secrets(d, ALICE.password)


@pytest.mark.parametrize("mech,scheme", [("PLAIN", "smtp"),
                                         ("LOGIN", "smtp"),
                                         ("PLAIN", "smtps")],
                         ids=["PLAIN", "LOGIN", "PLAIN-smtps"])
def test_curl(relayd_factory, tls_ca, tmp_path, mech, scheme):
    curl = need("curl")
    d = start_authd(relayd_factory, tls_ca,
                    listen=" tls" if scheme == "smtps" else "")
    msg = tmp_path / "mail.txt"
    msg.write_bytes(b"From: curl@a.test\r\nTo: c@b.test\r\n"
                    b"Subject: curl auth\r\n\r\nuploaded by curl\r\n")
    args = [curl, "-sS", "--max-time", "15",
            "%s://127.0.0.1:%d" % (scheme, d.port),
            "--cacert", str(tls_ca.ca_file),
            "--user", "alice:" + ALICE.password,
            "--login-options", "AUTH=" + mech,
            "--mail-from", "curl@a.test", "--mail-rcpt", "c@b.test",
            "--upload-file", str(msg)]
    if scheme == "smtp":
        args.insert(2, "--ssl-reqd")
    r = run(args)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    f = only_message(d)
    assert f.get("user") == "alice"
    assert f.rcpts == ["c@b.test"]
    d.wait_log(auth_log_re("alice", mech))
    assert_no_secrets(d, ALICE.password)


# --------------------------------------------------------------------------
# relayctl passwd

RELAYCTL_PASSWORD = "Rel@yctl-pw-93kq"


def relayctl_passwd(user, password_input, *flags, flags_first=False):
    """`relayctl passwd USER [FLAGS]` (the spec's order; flags_first:
    `relayctl passwd [FLAGS] USER`); returns its one line of output."""
    if not RELAYCTL_BIN.exists():
        pytest.fail("relayctl not found at %s (build it, or set "
                    "RELAYD_BUILDDIR)" % RELAYCTL_BIN)
    args = list(flags) + [user] if flags_first else [user] + list(flags)
    r = subprocess.run([str(RELAYCTL_BIN), "passwd"] + args,
                       input=password_input, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, (r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and r.stdout.endswith("\n"), \
        "expected one line on stdout, got %r" % r.stdout
    return lines[0]


def parse_line(line):
    words = line.split()
    fields = {}
    for w in words[1:]:
        k, sep, v = w.partition("=")
        assert sep, "not field=value: %r in %r" % (w, line)
        assert k not in fields, line
        fields[k] = v
    return words[0], fields


def check_scram_field(value, password):
    it, salt, stored, server = value.split(":")
    assert int(it) >= 4096, value
    exp_stored, exp_server = scram_keys(password, unb64(salt), int(it))
    assert stored.lower() == exp_stored.hex(), value
    assert server.lower() == exp_server.hex(), value
    return salt


def test_relayctl_passwd_line():
    line = relayctl_passwd("alice", RELAYCTL_PASSWORD + "\n")
    user, fields = parse_line(line)
    assert user == "alice"
    assert set(fields) == {"crypt", "scram-sha-256"}, line
    assert fields["crypt"].startswith("$y$"), line
    assert crypt_ok(RELAYCTL_PASSWORD, fields["crypt"]), line
    assert not crypt_ok(RELAYCTL_PASSWORD + "\n", fields["crypt"])
    check_scram_field(fields["scram-sha-256"], RELAYCTL_PASSWORD)
    assert RELAYCTL_PASSWORD not in line


def test_relayctl_passwd_salts_differ():
    # the second without a final newline: `printf %s "$pw" | relayctl ...`
    l1 = relayctl_passwd("alice", RELAYCTL_PASSWORD + "\n")
    l2 = relayctl_passwd("alice", RELAYCTL_PASSWORD)
    (_, f1), (_, f2) = parse_line(l1), parse_line(l2)
    assert crypt_ok(RELAYCTL_PASSWORD, f2["crypt"]), l2
    s1 = check_scram_field(f1["scram-sha-256"], RELAYCTL_PASSWORD)
    s2 = check_scram_field(f2["scram-sha-256"], RELAYCTL_PASSWORD)
    assert s1 != s2, "the same SCRAM salt twice"
    crypt_salt = lambda h: h.rsplit("$", 1)[0]
    assert crypt_salt(f1["crypt"]) != crypt_salt(f2["crypt"]), (l1, l2)


@pytest.mark.parametrize("flags_first", [False, True],
                         ids=["USER-then-flag", "flag-then-USER"])
def test_relayctl_passwd_cram_md5(flags_first):
    line = relayctl_passwd("bob", RELAYCTL_PASSWORD + "\n", "--cram-md5",
                           flags_first=flags_first)
    user, fields = parse_line(line)
    assert user == "bob"
    assert set(fields) == {"crypt", "scram-sha-256", "cram-md5"}, line
    assert fields["cram-md5"] == RELAYCTL_PASSWORD
    assert crypt_ok(RELAYCTL_PASSWORD, fields["crypt"])


def test_relayctl_passwd_lines_work(relayd_factory, tls_ca):
    """A users_file made only of relayctl's output: PLAIN, LOGIN and
    SCRAM-SHA-256 for one user, CRAM-MD5 (asked for by name: alice has
    no secret for it, so it is not offered) for the one made with
    --cram-md5."""
    pw = RELAYCTL_PASSWORD
    text = (relayctl_passwd("alice", pw + "\n") + "\n" +
            relayctl_passwd("bob", pw + "\n", "--cram-md5") + "\n")
    d = start_authd(relayd_factory, tls_ca, start=False)
    write_private(d.users_file, text)
    d.start()
    runs = [("PLAIN", lambda c: c.auth_plain("alice", pw)),
            ("LOGIN", lambda c: c.auth_login("alice", pw)),
            ("SCRAM-SHA-256", lambda c: c.auth_scram("alice", pw)),
            ("CRAM-MD5", lambda c: c.auth_cram("bob", pw))]
    for mech, do in runs:
        with connect(d) as c:
            assert c.mechs == BASE_MECHS
            r = do(c)
            assert r.text == OK_235, (mech, r)
            send_and_check(d, c, "bob" if mech == "CRAM-MD5" else "alice")
        d.wait_log(auth_log_re("bob" if mech == "CRAM-MD5" else "alice",
                               mech))
    assert len(d.queued()) == 4
    assert_no_secrets(d, pw)
