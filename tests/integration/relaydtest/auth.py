"""SMTP AUTH for the tests: users_file entries (crypt(3), SCRAM-SHA-256,
CRAM-MD5 secrets) for test users, an SMTP client that does TLS and the
AUTH exchanges itself (AuthConn, with its own SCRAM client), and daemons
that require AUTH (start_authd)."""
import base64
import ctypes
import ctypes.util
import hashlib
import hmac
import os
import re
import ssl
import subprocess

import pytest

from relaydtest.ports import free_port
from relaydtest.smtp import SMTPConn

FAIL_TIMEOUT = 20       # a reply that may come after a failure delay

OK_235 = "235 2.7.0 Authentication successful"
BAD_535 = "535 5.7.8 Authentication credentials invalid"


# --------------------------------------------------------------------------
# password hashes and users_file entries

def _libcrypt():
    name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    if hasattr(lib, "crypt_gensalt"):
        lib.crypt_gensalt.restype = ctypes.c_char_p
        lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong,
                                      ctypes.c_char_p, ctypes.c_int]
    return lib


LIBCRYPT = _libcrypt()


def crypt3(password, setting):
    """crypt(3) through libcrypt (libxcrypt on Debian: yescrypt and
    SHA-512). A failed hash ("*0", "*1", NULL) comes back as None."""
    if LIBCRYPT is None:
        pytest.skip("libcrypt not found: cannot make or check crypt hashes")
    out = LIBCRYPT.crypt(password.encode(), setting.encode())
    if out is None or out.startswith(b"*"):
        return None
    return out.decode()


def crypt_hash(password, method):
    """A fresh crypt(3) hash: method "y" (yescrypt) or "6" (SHA-512)."""
    if LIBCRYPT is not None and hasattr(LIBCRYPT, "crypt_gensalt"):
        salt = LIBCRYPT.crypt_gensalt(("$%s$" % method).encode(), 0, None, 0)
        if salt:
            h = crypt3(password, salt.decode())
            if h:
                return h
    if method == "6":
        r = subprocess.run(["openssl", "passwd", "-6", "-stdin"],
                           input=password + "\n", capture_output=True,
                           text=True, timeout=10)
        if r.returncode == 0 and r.stdout.startswith("$6$"):
            return r.stdout.strip()
    pytest.skip("cannot make a $%s$ crypt hash here" % method)


def crypt_ok(password, hashed):
    return crypt3(password, hashed) == hashed


def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def unb64(text):
    return base64.b64decode(text, validate=True)


def hmac_sha256(key, msg):
    return hmac.new(key, msg, hashlib.sha256).digest()


def scram_keys(password, salt, iterations):
    """(StoredKey, ServerKey) of RFC 5802 with SHA-256 (RFC 7677)."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt,
                                 iterations)
    client_key = hmac_sha256(salted, b"Client Key")
    return (hashlib.sha256(client_key).digest(),
            hmac_sha256(salted, b"Server Key"))


def scram_entry(password, iterations=4096, salt=None):
    """The value of scram-sha-256=: ITER:SALT_BASE64:STOREDKEY:SERVERKEY."""
    salt = os.urandom(16) if salt is None else salt
    stored, server = scram_keys(password, salt, iterations)
    return "%d:%s:%s:%s" % (iterations, b64(salt), stored.hex(), server.hex())


class User:
    """A users_file user. Hashes are made once, on first use."""

    def __init__(self, name, password, crypt="y", scram=True, cram=False,
                 iterations=4096):
        self.name = name
        self.password = password
        self.crypt = crypt
        self.scram = scram
        self.cram = cram
        self.iterations = iterations
        self._fields = None

    @property
    def fields(self):
        if self._fields is None:
            f = []
            if self.crypt:
                f.append("crypt=" + crypt_hash(self.password, self.crypt))
            if self.scram:
                f.append("scram-sha-256=" + scram_entry(self.password,
                                                        self.iterations))
            if self.cram:
                f.append("cram-md5=" + self.password)
            self._fields = f
        return self._fields

    def line(self, sep=" "):
        return sep.join([self.name] + self.fields)

    def scram_params(self):
        """(iterations, salt base64) as written in the users_file."""
        for f in self.fields:
            if f.startswith("scram-sha-256="):
                it, salt = f.split("=", 1)[1].split(":")[:2]
                return int(it), salt
        return None


# Passwords are distinctive strings so that the log can be searched for
# them. None holds a blank (cram-md5= keeps the plain secret in a
# blank-separated line).
ALICE = User("alice", "Al1ce:s3cret!x", crypt="y")          # yescrypt
BOB = User("bob", "B0b#pa55w0rd%q", crypt="6", cram=True)    # SHA-512
CAROL = User("carol", "Gr\u00fc\u00dfe-\u03a9mega7", crypt="y")  # UTF-8
# cram-md5= alone, as an old device's line may be written by hand
DAVE = User("dave", "D4ve~cr4m&only", crypt=None, scram=False, cram=True)
USERS = {u.name: u for u in (ALICE, BOB, CAROL, DAVE)}


def users_text(users, decorate=True):
    """A users_file: comments, blank lines and a tab separator around the
    entries unless decorate=False."""
    if not decorate:
        return "".join(u.line() + "\n" for u in users)
    out = ["# relayd SMTP AUTH users (test)", ""]
    for i, u in enumerate(users):
        out.append(u.line(sep="\t" if i % 2 == 0 else " "))
        out.append("")
    out.append("# end")
    return "\n".join(out) + "\n"


def write_private(path, text, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


# --------------------------------------------------------------------------
# a SCRAM-SHA-256 client (RFC 5802 / RFC 7677), no channel binding

def saslname(name):
    return name.replace("=", "=3D").replace(",", "=2C")


class ScramClient:
    def __init__(self, user, password, nonce=None):
        self.user = user
        self.password = password
        self.cnonce = nonce or b64(os.urandom(18))
        self.client_first_bare = "n=%s,r=%s" % (saslname(user), self.cnonce)
        self.server_signature = None
        self.server_params = None

    def first(self):
        return "n,," + self.client_first_bare

    def final(self, server_first):
        attrs = dict(a.split("=", 1) for a in server_first.split(","))
        nonce, salt, it = attrs["r"], attrs["s"], int(attrs["i"])
        assert nonce.startswith(self.cnonce) and len(nonce) > len(
            self.cnonce), "server nonce must extend ours: %r" % server_first
        self.server_params = (it, salt)
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(),
                                     unb64(salt), it)
        client_key = hmac_sha256(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = "c=%s,r=%s" % (b64(b"n,,"), nonce)
        auth_message = ",".join([self.client_first_bare, server_first,
                                 without_proof]).encode()
        signature = hmac_sha256(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self.server_signature = hmac_sha256(
            hmac_sha256(salted, b"Server Key"), auth_message)
        return without_proof + ",p=" + b64(proof)

    def check_server_final(self, server_final):
        assert server_final == "v=" + b64(self.server_signature), (
            "bad server signature %r" % server_final)


def cram_response(user, secret, challenge):
    digest = hmac.new(secret.encode(), challenge, hashlib.md5).hexdigest()
    return b64("%s %s" % (user, digest))


# --------------------------------------------------------------------------
# SMTP over TLS, and AUTH exchanges

class AuthConn(SMTPConn):
    """SMTPConn that can do STARTTLS or implicit TLS (verifying the test
    CA's certificate for 127.0.0.1) and the AUTH exchanges."""

    def __init__(self, port, ca=None, implicit_tls=False, **kw):
        self.ca = ca
        self.tls = False
        if implicit_tls:
            kw["greeting"] = False
        super().__init__(port, **kw)
        if implicit_tls:
            self._wrap()
            self.greeting = self.reply()

    def _wrap(self):
        assert self.buf == b"", "bytes after the 220 to STARTTLS: %r" % (
            self.buf,)
        ctx = ssl.create_default_context(cafile=str(self.ca))
        self.sock = ctx.wrap_socket(self.sock, server_hostname="127.0.0.1")
        self.tls = True

    def _fill(self, deadline):
        try:
            return super()._fill(deadline)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            self.eof = True
            return False

    def starttls(self):
        r = self.cmd("STARTTLS")
        assert r.code == 220, r
        self._wrap()

    def ehlo_mechs(self, name="client.test"):
        """EHLO; returns the mechanisms of its AUTH line (a set), or None
        when there is none. The reply is kept in last_ehlo."""
        self.last_ehlo = self.ehlo(name)
        return auth_mechs(self.last_ehlo)

    def has_ext(self, keyword):
        return any(l[4:].split(" ")[0].upper() == keyword
                   for l in self.last_ehlo.lines[1:])

    # -- exchanges; each returns the final reply
    def auth_plain(self, user, password, authzid="", ir=True,
                   timeout=FAIL_TIMEOUT):
        blob = b64("%s\0%s\0%s" % (authzid, user, password))
        if ir:
            return self.cmd("AUTH PLAIN " + blob, timeout=timeout)
        r = self.cmd("AUTH PLAIN")
        if r.code != 334:
            return r
        assert r.lines == ["334 "], r
        return self.cmd(blob, timeout=timeout)

    def auth_login(self, user, password, ir=False, timeout=FAIL_TIMEOUT):
        if ir:
            r = self.cmd("AUTH LOGIN " + b64(user))
        else:
            r = self.cmd("AUTH LOGIN")
            if r.code != 334:
                return r
            assert r.lines == ["334 VXNlcm5hbWU6"], r
            r = self.cmd(b64(user))
        if r.code != 334:
            return r
        assert r.lines == ["334 UGFzc3dvcmQ6"], r
        return self.cmd(b64(password), timeout=timeout)

    def auth_cram(self, user, secret, timeout=FAIL_TIMEOUT):
        r = self.cmd("AUTH CRAM-MD5")
        if r.code != 334:
            return r
        self.cram_challenge = unb64(r.text[4:])
        return self.cmd(cram_response(user, secret, self.cram_challenge),
                        timeout=timeout)

    def auth_scram(self, user, password, ir=True, timeout=FAIL_TIMEOUT):
        sc = self.scram = ScramClient(user, password)
        if ir:
            r = self.cmd("AUTH SCRAM-SHA-256 " + b64(sc.first()))
        else:
            r = self.cmd("AUTH SCRAM-SHA-256")
            if r.code != 334:
                return r
            assert r.lines == ["334 "], r
            r = self.cmd(b64(sc.first()))
        if r.code != 334:
            return r
        r = self.cmd(b64(sc.final(unb64(r.text[4:]).decode())),
                     timeout=timeout)
        if r.code != 334:
            # RFC 4954 carries no data in a 235: the server-final message
            # (v=...) must come as a 334 challenge first.
            assert r.code != 235, "235 without the server's signature (v=)"
            return r
        server_final = unb64(r.text[4:]).decode()
        if server_final.startswith("e="):
            return self.cmd("", timeout=timeout)    # then the 535
        sc.check_server_final(server_final)
        return self.cmd("", timeout=timeout)


def auth_mechs(reply):
    for line in reply.lines[1:]:
        m = re.match(r"^250[ -]AUTH(?: (.*))?$", line, re.I)
        if m:
            mechs = (m.group(1) or "").split()
            assert len(mechs) == len(set(mechs)), line
            return set(mechs)
    return None


# --------------------------------------------------------------------------
# daemons

def start_authd(relayd_factory, tls_ca=None, users=(ALICE, CAROL),
                listen="", more_listeners=(), auth=None, smtp=None,
                cert=True, users_file=True, start=True):
    """A relayd with [auth] users_file (unless users_file=False) that relays
    for nobody unless smtp= says otherwise. listen: options after the
    main listener's ADDR:PORT (" tls", " auth_plaintext=yes");
    more_listeners: options of further listeners, whose ports are in
    d.more_ports in the same order. cert: [smtp] tls_cert/tls_key from
    tls_ca (so plain listeners offer STARTTLS)."""
    opts = {"allow_networks": "10.0.0.0/8"}
    if cert:
        opts.update(tls_cert=tls_ca.cert_file, tls_key=tls_ca.key_file)
    opts.update(smtp or {})
    d = relayd_factory(smtp=opts, start=False)
    d.ca = tls_ca.ca_file if tls_ca is not None else None
    d.more_ports = [free_port() for _ in more_listeners]
    if users_file:
        d.users_file = write_private(d.workdir / "users",
                                     users_text(users))
        d.sections["auth"] = {"users_file": str(d.users_file)}
    d.sections.setdefault("auth", {}).update(auth or {})
    if not d.sections["auth"]:
        del d.sections["auth"]
    d.listen_lines = lambda: (
        ["127.0.0.1:%d%s" % (d.port, listen)] +
        ["127.0.0.1:%d%s" % (p, o) for p, o in zip(d.more_ports,
                                                     more_listeners)])
    if start:
        d.start()
    return d


def connect(d, tls="starttls", port=None, source=None, ehlo=True):
    """A client session: tls is "starttls", "implicit" or None. With ehlo,
    EHLO is done (again after STARTTLS) and its AUTH mechanisms are in
    c.mechs."""
    c = AuthConn(port or d.port, ca=d.ca, implicit_tls=(tls == "implicit"),
                 source=source, timeout=5)
    assert c.greeting.code == 220, c.greeting
    if tls == "starttls":
        c.ehlo()
        c.starttls()
    if ehlo:
        c.mechs = c.ehlo_mechs()
    return c


def authed(d, user=ALICE, **kw):
    """A session authenticated with PLAIN."""
    c = connect(d, **kw)
    r = c.auth_plain(user.name, user.password)
    assert r.text == OK_235, r
    return c


def auth_log_re(user, mech, client="127.0.0.1", failed=False):
    """`smtp auth client=... user=USER mech=MECH` (or `smtp auth failed
    ...`), allowing other key=value fields around them."""
    kv = r"(?:[\w-]+=\S+ )*"
    return (r"smtp auth %s%sclient=%s %suser=\"?%s\"? %smech=%s(?: |$)"
            % ("failed " if failed else "", kv, re.escape(client), kv,
               re.escape(user), kv, re.escape(mech)))


def b64_cores(secret):
    """The parts of any base64 text holding secret that depend on the
    secret alone, for each of its 3 possible alignments."""
    s = secret.encode()
    cores = []
    for k in range(3):
        enc = b64(b"\0" * k + s)
        core = enc[4 if k else 0:4 * ((k + len(s)) // 3)]
        if len(core) >= 8:
            cores.append(core)
    return cores


def assert_no_secrets(d, *secrets):
    """No password, nor base64 text a client sent it in, is in the log."""
    log = d.log
    for s in secrets:
        assert s not in log, "secret %r in the log" % s
        for core in b64_cores(s):
            assert core not in log, "base64 of %r in the log (%s)" % (s, core)


def send_and_check(d, c, user, rcpt="rcpt@b.test"):
    """Sends a message on an authenticated session (from 127.0.0.1, which
    is outside allow_networks) and checks its envelope."""
    r = c.send_mail(rcpts=(rcpt,),
                    body=b"Subject: auth\r\n\r\nsent by %s\r\n"
                    % user.encode())
    assert r.qid, r
    f = d.spool_file(r.qid)
    assert f.get("user") == user, f.fields
    assert f.rcpts == [rcpt]
    return f


def conf_line(d, section, key):
    """The line number of KEY in [SECTION] of d's written config."""
    cur = None
    for n, line in enumerate(d.conf_path.read_text().splitlines(), 1):
        m = re.match(r"^\[(\w+)\]$", line)
        if m:
            cur = m.group(1)
        elif cur == section and line.split("=")[0].strip() == key:
            return n
    raise AssertionError("%s.%s not in the config" % (section, key))

