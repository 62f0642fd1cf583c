"""relayd -n finds everything that would stop a start (issue 15).

`relayd -n` is the unit's ExecStartPre: whatever makes the start fail must
make it fail first, exit 78, with `FILE:LINE: what is wrong; what to do`,
LINE being the line of the key responsible. Each case here writes a
config, runs the real binary with -n and checks the exit code, the line
and the words; the cases that -n once passed are also started for real,
to show the start fails the same way (or, for warnings, works).
"""
import os
import subprocess

import pytest

from relaydtest.daemon import run_relayd
from relaydtest.env import BUILDDIR, RELAYD_BIN
from relaydtest.ports import free_port


def write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def check(conf):
    r = run_relayd("-n", "-c", str(conf))
    return r.returncode, r.stdout, r.stderr


def assert_error(conf, line, *words):
    rc, out, err = check(conf)
    assert rc == 78, (rc, out, err)
    prefix = "%s:%d: " % (conf, line)
    hits = [l for l in err.splitlines() if l.startswith(prefix)]
    assert hits, "no error on line %d:\n%s" % (line, err)
    assert any(all(w in l for w in words) for l in hits), (words, hits)
    assert "configuration OK" not in out


def base(tmp_path, extra="", smtp=""):
    """A config whose line numbers the cases know: [smtp] on line 1."""
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    return ("[smtp]\nlisten = 127.0.0.1:%d\n%s"
            "[queue]\nspool_dir = %s\n%s" % (free_port(), smtp, spool, extra))


# ---- the Graph credential

@pytest.mark.parametrize("content", ["", "\n", "  \t\n \n"])
def test_empty_client_secret(tmp_path, content):
    secret = write(tmp_path / "secret", content)
    conf = write(tmp_path / "r.conf", base(tmp_path, (
        "[graph]\ntenant = t\nclient_id = c\n"
        "client_secret_file = %s\n") % secret))
    # [graph] is line 5: tenant 6, client_id 7, client_secret_file 8.
    assert_error(conf, 8, "client_secret_file", "is empty", "Value")


def test_systemd_credential_empty(tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "client_secret", "\n")
    conf = write(tmp_path / "r.conf", base(tmp_path,
                 "[graph]\ntenant = t\nclient_id = c\n"))
    r = subprocess.run([str(RELAYD_BIN), "-n", "-c",
                        str(conf)], capture_output=True, text=True,
                       env=dict(os.environ, CREDENTIALS_DIRECTORY=str(creds)),
                       timeout=20)
    assert r.returncode == 78, r.stderr
    assert "is empty" in r.stderr and "client_secret" in r.stderr, r.stderr


# ---- [status] users and groups

def test_status_unknown_user(tmp_path):
    conf = write(tmp_path / "r.conf", base(tmp_path,
                 "[status]\nsocket = none\nusers = root, nosuchuser42\n"))
    assert_error(conf, 7, "nosuchuser42", "no user")


def test_status_unknown_group(tmp_path):
    conf = write(tmp_path / "r.conf", base(tmp_path,
                 "[status]\nsocket = none\ngroups = nosuchgroup42\n"))
    assert_error(conf, 7, "nosuchgroup42", "no group")


# ---- TLS certificate and key

def tls_conf(tmp_path, cert, key, listener=False):
    if listener:
        text = ("[smtp]\nlisten = 127.0.0.1:%d cert=%s key=%s\n"
                % (free_port(), cert, key))
    else:
        text = ("[smtp]\nlisten = 127.0.0.1:%d\ntls_cert = %s\n"
                "tls_key = %s\n" % (free_port(), cert, key))
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    text += "[queue]\nspool_dir = %s\n" % spool
    return write(tmp_path / "r.conf", text)


@pytest.mark.parametrize("listener", [False, True])
def test_tls_key_of_another_certificate(tmp_path, tls_ca, listener):
    cert, _ = tls_ca.issue("one")
    _, key = tls_ca.issue("two")
    conf = tls_conf(tmp_path, cert, key, listener)
    # The key's line: tls_key (4), or the listen line (2).
    assert_error(conf, 2 if listener else 4, "does not belong to",
                 str(cert), str(key), "OpenSSL:")
    rc, _, err = check(conf)
    # Words first, OpenSSL's text only after them as detail.
    line = [l for l in err.splitlines() if "does not belong" in l][0]
    assert line.index("does not belong") < line.index("OpenSSL:")


@pytest.mark.parametrize("listener", [False, True])
def test_tls_cert_not_pem(tmp_path, tls_ca, listener):
    cert = write(tmp_path / "cert.pem", "this is not a certificate\n", 0o644)
    conf = tls_conf(tmp_path, cert, tls_ca.key_file, listener)
    assert_error(conf, 2 if listener else 3, "holds no PEM certificate",
                 str(cert))


def test_tls_key_not_pem(tmp_path, tls_ca):
    key = write(tmp_path / "key.pem", "garbage\n")
    conf = tls_conf(tmp_path, tls_ca.cert_file, key)
    assert_error(conf, 4, "tls_key", "holds no PEM private key", str(key))


def test_tls_cert_and_key_swapped(tmp_path, tls_ca):
    key_copy = write(tmp_path / "k.pem", tls_ca.key_file.read_text())
    cert_copy = write(tmp_path / "c.pem", tls_ca.cert_file.read_text())
    conf = tls_conf(tmp_path, key_copy, cert_copy)
    assert_error(conf, 3, "tls_cert", "holds no PEM certificate")


def test_tls_mismatch_fails_start_too(tmp_path, tls_ca):
    """What -n refuses, a start refuses the same way."""
    cert, _ = tls_ca.issue("one")
    _, key = tls_ca.issue("two")
    conf = tls_conf(tmp_path, cert, key)
    r = run_relayd("-c", str(conf))
    assert r.returncode == 78
    assert "%s:4: " % conf in r.stderr and "does not belong" in r.stderr


# ---- certificates about to expire

def test_expired_tls_cert_is_an_error(tmp_path, tls_ca):
    cert, key = tls_ca.issue("old", expired=True)
    conf = tls_conf(tmp_path, cert, key)
    assert_error(conf, 3, "tls_cert", "expired on", "renew")


def test_tls_cert_expiring_soon_warns(tmp_path, tls_ca):
    cert, key = tls_ca.issue("soon", days=10)
    conf = tls_conf(tmp_path, cert, key)
    rc, out, err = check(conf)
    assert rc == 0, err
    assert "%s:3: warning: tls_cert" % conf in err, err
    assert "expires on" in err, err
    assert "(in 9 days)" in err or "(in 10 days)" in err, err


def test_tls_cert_far_from_expiry_is_quiet(tmp_path, tls_ca):
    cert, key = tls_ca.issue("fine", days=90)
    conf = tls_conf(tmp_path, cert, key)
    rc, out, err = check(conf)
    assert rc == 0 and "warning" not in err, err


def test_tls_cert_expiry_warned_at_reload(relayd_factory, tls_ca, tmp_path):
    cert, key = tls_ca.issue("soon2", days=5)
    d = relayd_factory(smtp={"tls_cert": str(cert), "tls_key": str(key)})
    d.wait_log(r"warning: tls_cert .* expires on", current=False)
    os.kill(d.pid, 1)
    d.wait_log(r"reload: .*warning: tls_cert .* expires on")


def test_expired_certificate_file_is_an_error(tmp_path, tls_ca):
    cert, key = tls_ca.issue("assertion", expired=True, server=False)
    conf = write(tmp_path / "r.conf", base(tmp_path, (
        "[graph]\ntenant = t\nclient_id = c\n"
        "certificate_file = %s\nprivate_key_file = %s\n") % (cert, key)))
    assert_error(conf, 8, "certificate_file", "expired on",
                 "upload a new certificate")


# ---- the users file

def test_users_file_missing(tmp_path):
    conf = write(tmp_path / "r.conf", base(tmp_path,
                 "[auth]\nusers_file = %s\n" % (tmp_path / "nope")))
    assert_error(conf, 6, "users_file", "No such file",
                 "relayctl passwd USER")


def test_users_file_unreadable(tmp_path):
    users = write(tmp_path / "users", "", 0o000)
    if os.access(users, os.R_OK) and os.geteuid() == 0:
        # root reads anything: a directory is unreadable as a file.
        users.unlink()
        users.mkdir()
    conf = write(tmp_path / "r.conf", base(tmp_path,
                 "[auth]\nusers_file = %s\n" % users))
    rc, out, err = check(conf)
    assert rc == 78, err
    assert str(users) in err, err


def test_users_file_junk_line(tmp_path):
    users = write(tmp_path / "users", "alice\n")
    conf = write(tmp_path / "r.conf", base(tmp_path,
                 "[auth]\nusers_file = %s\n" % users))
    rc, out, err = check(conf)
    assert rc == 78
    assert "%s:1: " % users in err and "relayctl passwd USER" in err, err


def test_users_file_duplicate_user(tmp_path):
    line = "bob crypt=$6$abcdefgh$" + "x" * 86 + "\n"
    r = subprocess.run(["/usr/bin/python3", "-c",
                        "import crypt; print(crypt.crypt('pw', "
                        "crypt.mksalt(crypt.METHOD_SHA512)))"],
                       capture_output=True, text=True)
    if r.returncode == 0 and r.stdout.startswith("$6$"):
        line = "bob crypt=%s\n" % r.stdout.strip()
    users = write(tmp_path / "users", "# users\n" + line + "\n" + line)
    conf = write(tmp_path / "r.conf", base(tmp_path,
                 "[auth]\nusers_file = %s\n" % users))
    rc, out, err = check(conf)
    assert rc == 78, err
    assert '%s:4: user "bob" is listed twice (also on line 2)' % users \
        in err, err


# ---- never an open relay

@pytest.mark.parametrize("nets", ["0.0.0.0/0", "::/0",
                                  "127.0.0.0/8, 0.0.0.0/0"])
def test_open_relay_refused(tmp_path, nets):
    conf = write(tmp_path / "r.conf", base(tmp_path,
                 smtp="allow_networks = %s\n" % nets))
    assert_error(conf, 3, "allow_networks", "every address",
                 "open relay", "require_auth")


def test_whole_space_with_require_auth_is_fine(tmp_path):
    users = write(tmp_path / "users", "")
    conf = write(tmp_path / "r.conf", base(tmp_path,
                 "[auth]\nusers_file = %s\n" % users,
                 smtp="allow_networks = 0.0.0.0/0\nrequire_auth = yes\n"))
    rc, out, err = check(conf)
    assert rc == 0, err


@pytest.mark.parametrize("net,want", [("127.0.0.1/8", "127.0.0.0/8"),
                                      ("10.1.2.3/16", "10.1.0.0/16"),
                                      ("2001:db8::1/64", "2001:db8::/64")])
def test_host_bits_refused(tmp_path, net, want):
    conf = write(tmp_path / "r.conf", base(tmp_path,
                 smtp="allow_networks = %s\n" % net))
    assert_error(conf, 3, "allow_networks", '"%s" has host bits set' % net,
                 "did you mean %s?" % want)


def test_host_bits_refused_on_listener(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    conf = write(tmp_path / "r.conf", (
        "[smtp]\nlisten = 127.0.0.1:%d networks=192.168.1.1/24\n"
        "[queue]\nspool_dir = %s\n") % (free_port(), spool))
    assert_error(conf, 2, "networks", "did you mean 192.168.1.0/24?")


# ---- --help

@pytest.mark.parametrize("prog", ["relayd", "relayctl"])
def test_help(prog):
    r = subprocess.run([str(BUILDDIR / "relayd" / prog), "--help"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: %s" % prog), r.stdout


# ---- graph_url with the version pasted in

def test_graph_url_with_version_is_corrected(tmp_path):
    secret = write(tmp_path / "secret", "s3cret\n")
    conf = write(tmp_path / "r.conf", base(tmp_path, (
        "[graph]\ntenant = t\nclient_id = c\nclient_secret_file = %s\n"
        "graph_url = https://graph.microsoft.com/v1.0/\n") % secret))
    r = subprocess.run([str(RELAYD_BIN), "-n", "-d", "-c", str(conf)],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert ("%s:9: warning: graph_url ends in /v1.0" % conf) in r.stderr
    assert "graph_url = https://graph.microsoft.com (write it so)" \
        in r.stderr, r.stderr
    assert "url=https://graph.microsoft.com " in r.stdout + r.stderr
