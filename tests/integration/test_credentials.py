"""Certificate credentials, end to end: relayd signs in with a JWT client
assertion made with [graph] certificate_file's key (PS256 by default, RS256
on request), the fake token service verifies it as Entra does (thumbprint,
signature, aud/iss/sub, time range), and a message goes out. A certificate
the app does not know is named in the log and costs no message; a broken
key or certificate stops `relayd -n` (exit 78)."""
import os
import re

import pytest

from relaydtest.credentials import cert_relayd, make_cert, register
from relaydtest.delivery import DELIVERY_TIMEOUT, token_lines
from relaydtest.env import EX_CONFIG
from relaydtest.smtp import SENDER, simple, smtp_send
from relaydtest.wait import wait_for

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
HINT_700027 = (
    "token: AADSTS700027 the certificate is not registered on the app, or "
    "the key does not match it (check certificate_file/private_key_file)")
CLOCK_HINT = ("the client assertion is outside its valid time range (clock "
              "skew? check the system time)")


# --------------------------------------------------------------------------
# helpers

def assertions(fake):
    """(header, claims) of each client assertion the fake was sent, as its
    request records keep them."""
    out = []
    for rec in fake.requests():
        if rec["kind"] != "token":
            continue
        tok = rec["token"]
        assert tok["fields"] == ["client_assertion", "client_assertion_type",
                                 "client_id", "grant_type", "scope"], tok
        assert tok["client_assertion_type"] == JWT_BEARER
        out.append((tok["assertion"]["header"], tok["assertion"]["claims"]))
    return out


def assert_no_key_material(d, key_path):
    """Neither the key nor an assertion (a JWT: "eyJ...") in the log."""
    log = d.log
    assert "PRIVATE KEY" not in log
    body = "".join(key_path.read_text().splitlines()[1:-1])
    assert body[:40] not in log.replace("\n", "")
    assert "eyJ" not in log


def conf_line(d, key):
    """The line of `key = ...` in the daemon's config file."""
    lines = d.conf_path.read_text().splitlines()
    return 1 + next(i for i, l in enumerate(lines)
                    if l.startswith(key + " = "))


def check(d, env=None):
    r = d.check_config(env=env)
    return r.returncode, r.stdout, r.stderr


# --------------------------------------------------------------------------
# end to end

@pytest.mark.parametrize("alg", [None, "RS256"], ids=["PS256-default",
                                                      "RS256"])
def test_certificate_delivers(relayd_factory, shared_fake_graph, tmp_path,
                              alg):
    fake = shared_fake_graph
    cert, key, pem = make_cert(tmp_path)
    register(fake, pem)                 # and no secret at all
    d = cert_relayd(relayd_factory, fake, cert, key,
                    **({"assertion_alg": alg} if alg else {}))
    smtp_send(d, simple("signed " + (alg or "PS256")))
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert rec["body"]["message"]["subject"] == "signed " + (alg or "PS256")
    # Graph says 401 to the token: relayd asks again, with a new assertion
    # (a fresh jti and the time of asking).
    fake.faults([{"kind": "graph", "expire_token": True}])
    smtp_send(d, simple("second"))
    fake.wait_sent(2, DELIVERY_TIMEOUT)
    wait_for(lambda: d.queued() == [], 5, "an empty queue/")
    assert fake.stats()["tokens_issued"] == 2
    sent = assertions(fake)
    assert len(sent) == 2
    want_alg = alg or "PS256"
    thumb = "x5t#S256" if want_alg == "PS256" else "x5t"
    for header, claims in sent:
        assert header == {"alg": want_alg, "typ": "JWT",
                          thumb: header[thumb]}, header
        aud = "%s/%s/oauth2/v2.0/token" % (fake.url, fake.tenant)
        assert claims["aud"] == aud     # the token URL as used
        assert claims["iss"] == claims["sub"] == fake.client_id
        assert claims["nbf"] == claims["iat"]
        assert claims["exp"] - claims["nbf"] == 600
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-"
                            r"[89ab][0-9a-f]{3}-[0-9a-f]{12}", claims["jti"])
    assert sent[0][1]["jti"] != sent[1][1]["jti"]
    assert "credential=certificate/%s" % want_alg in d.log
    assert_no_key_material(d, key)


def test_unregistered_certificate(relayd_factory, shared_fake_graph,
                                  tmp_path):
    """The app knows another certificate: AADSTS700027 and what to check in
    the log, the message waits; once the certificate is uploaded, the next
    token attempt works and the message goes, without a restart."""
    fake = shared_fake_graph
    cert, key, pem = make_cert(tmp_path)
    _, _, other_pem = make_cert(tmp_path, "other")
    register(fake, other_pem, secret=fake.secret)
    d = cert_relayd(relayd_factory, fake, cert, key)
    qid = smtp_send(d, simple("unregistered"))
    m = d.wait_log(r"^\S+ relayd: (token: .*)$", DELIVERY_TIMEOUT)
    assert m.group(1) == HINT_700027 + "; next attempt in 5s"
    line = d.wait_log(r" %s graph deferred (.*)$" % qid).group(1)
    assert line.startswith("mailbox=%s graph_status=0 code=token " % SENDER)
    assert d.queued() == [qid] and d.dead() == []
    assert [(r["kind"], r["status"], r["code"]) for r in fake.requests()] \
        == [("token", 401, "AADSTS700027")]
    register(fake, other_pem, pem)
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT + 5)
    assert rec["body"]["message"]["subject"] == "unregistered"
    wait_for(lambda: d.queued() == [], 5, "an empty queue/")
    assert token_lines(d)[-1] == "token: new access token expires_in=3599s"
    assert_no_key_material(d, key)


@pytest.mark.parametrize("aadsts,hint", [
    (700024, CLOCK_HINT),
    (500133, CLOCK_HINT),
    (700023, "the client assertion's audience is not this token service "
             "(check login_url and cloud)"),
])
def test_assertion_error_hints(relayd_factory, shared_fake_graph, tmp_path,
                               aadsts, hint):
    fake = shared_fake_graph
    cert, key, pem = make_cert(tmp_path)
    register(fake, pem)
    fake.faults([{"kind": "token", "status": 401, "code": "invalid_client",
                  "aadsts": aadsts, "count": -1}])
    d = cert_relayd(relayd_factory, fake, cert, key)
    qid = smtp_send(d, simple("hint %d" % aadsts))
    m = d.wait_log(r"^\S+ relayd: (token: .*)$", DELIVERY_TIMEOUT)
    assert m.group(1) == "token: AADSTS%d %s; next attempt in 5s" % (
        aadsts, hint)
    assert d.queued() == [qid]


def test_private_key_from_credentials_directory(relayd_factory,
                                                shared_fake_graph, tmp_path,
                                                monkeypatch):
    """Without private_key_file, systemd's LoadCredential=private_key:
    $CREDENTIALS_DIRECTORY/private_key, mode-checked like the secret."""
    fake = shared_fake_graph
    creds = tmp_path / "credentials"
    cert, key, pem = make_cert(creds, "private_key")
    os.rename(key, creds / "private_key")
    key = creds / "private_key"
    register(fake, pem)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    d = cert_relayd(relayd_factory, fake, cert, key, start=False,
                    private_key_file=None)
    code, _, err = check(d)
    assert code == EX_CONFIG
    assert "%s:%d: certificate_file needs private_key_file (or the systemd " \
        "credential LoadCredential=private_key)" % (
            d.conf_path, conf_line(d, "certificate_file")) in err, err
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    os.chmod(key, 0o640)
    code, _, err = check(d)
    assert code == EX_CONFIG
    assert 'credential "%s" is open to group or others (mode 0640)' % key \
        in err, err
    os.chmod(key, 0o600)
    code, _, err = check(d)
    assert code == 0, err
    d.start()
    smtp_send(d, simple("via credential key"))
    [rec] = fake.wait_sent(1, DELIVERY_TIMEOUT)
    assert rec["body"]["message"]["subject"] == "via credential key"
    assert_no_key_material(d, key)


# --------------------------------------------------------------------------
# relayd -n

def test_key_of_another_certificate_refused(relayd_factory,
                                            shared_fake_graph, tmp_path):
    cert, _, _ = make_cert(tmp_path)
    _, other_key, _ = make_cert(tmp_path, "other")
    d = cert_relayd(relayd_factory, shared_fake_graph, cert, other_key,
                    start=False)
    code, out, err = check(d)
    assert code == EX_CONFIG, (out, err)
    assert '%s:%d: private_key_file "%s" does not belong to ' \
        'certificate_file "%s"' % (d.conf_path,
                                   conf_line(d, "certificate_file"),
                                   other_key, cert) in err, err
    assert "configuration OK" not in out
    assert "PRIVATE KEY" not in err


@pytest.mark.parametrize("mode", [0o640, 0o644])
def test_key_file_open_to_others_refused(relayd_factory, shared_fake_graph,
                                         tmp_path, mode):
    cert, key, _ = make_cert(tmp_path, key_mode=mode)
    d = cert_relayd(relayd_factory, shared_fake_graph, cert, key,
                    start=False)
    code, _, err = check(d)
    assert code == EX_CONFIG
    assert '%s:%d: private_key_file "%s" is open to group or others (mode ' \
        '%04o); run: chmod 600 %s' % (d.conf_path,
                                      conf_line(d, "private_key_file"),
                                      key, mode, key) in err, err
    os.chmod(key, 0o600)
    code, _, err = check(d)
    assert code == 0, err


def test_certificate_config_errors(relayd_factory, shared_fake_graph,
                                   tmp_path):
    fake = shared_fake_graph
    cert, key, _ = make_cert(tmp_path)
    _, ec_key, _ = make_cert(tmp_path, "ec", ec=True)
    cases = [
        # both ways to sign in
        ({"client_secret_file": str(fake.secret_file())},
         "client_secret_file", "client_secret_file and certificate_file are "
         "two ways to sign in; set only one"),
        ({"certificate_file": str(tmp_path / "missing.pem")},
         "certificate_file", 'certificate_file "%s": No such file or '
         'directory' % (tmp_path / "missing.pem")),
        ({"certificate_file": None}, "private_key_file",
         "private_key_file needs certificate_file"),
        ({"private_key_file": str(ec_key)}, "certificate_file",
         'private_key_file "%s": not an RSA key' % ec_key),
        ({"certificate_file": str(key)}, "certificate_file",
         'certificate_file "%s": no PEM certificate in it' % key),
        ({"assertion_alg": "ES256"}, "assertion_alg",
         '"assertion_alg" must be one of PS256, RS256, not "ES256"'),
    ]
    for graph, key_name, want in cases:
        d = cert_relayd(relayd_factory, fake, cert, key, start=False,
                        **graph)
        code, out, err = check(d)
        assert code == EX_CONFIG, (graph, out, err)
        assert "%s:%d: %s" % (d.conf_path, conf_line(d, key_name),
                              want) in err, (graph, err)


def test_expired_certificate_refused(relayd_factory, shared_fake_graph,
                                    tmp_path):
    """An expired certificate_file stops relayd -n (Entra refuses it once
    its registration on the app has expired too), at its line."""
    cert, key, _ = make_cert(tmp_path, expired=True)
    d = cert_relayd(relayd_factory, shared_fake_graph, cert, key,
                    start=False)
    code, out, err = check(d)
    assert code == 78, err
    assert re.search(r"^%s:%d: certificate_file \"%s\" expired on "
                     r"\d{4}-\d\d-\d\d [\d:]+ UTC; upload a new certificate" % (
                         re.escape(str(d.conf_path)),
                         conf_line(d, "certificate_file"),
                         re.escape(str(cert))), err, re.M), err
    assert "configuration OK" not in out
