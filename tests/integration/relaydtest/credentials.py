"""Graph credentials as an admin makes them: a self-signed certificate
and its key, a daemon that signs in with them, the fake's app registration."""
import datetime
import os

from relaydtest.graph import graph_relayd


def make_cert(directory, name="app", days=30, expired=False, key_mode=0o600,
              ec=False):
    """A self-signed certificate and its private key, as an admin would
    make them with openssl req -x509: (cert_path, key_path, cert_pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec as ecc, rsa
    from cryptography.x509.oid import NameOID
    key = (ecc.generate_private_key(ecc.SECP256R1()) if ec else
           rsa.generate_private_key(public_exponent=65537, key_size=2048))
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = ((now - datetime.timedelta(days=3),
                   now - datetime.timedelta(days=1)) if expired else
                  (now - datetime.timedelta(hours=1),
                   now + datetime.timedelta(days=days)))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                            "relayd " + name)])
    cert = (x509.CertificateBuilder().subject_name(subject)
            .issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / (name + ".pem")
    key_path = directory / (name + ".key")
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    cert_path.write_text(pem)
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    os.chmod(key_path, key_mode)
    return cert_path, key_path, pem


def cert_relayd(relayd_factory, fake, cert, key, start=True, **graph):
    """A daemon that signs in to fake with a certificate, not a secret
    (graph= keys override, None removes one)."""
    keys = {"client_secret_file": None, "certificate_file": str(cert),
            "private_key_file": str(key)}
    keys.update(graph)
    return graph_relayd(relayd_factory, fake, start=start, **keys)


def register(fake, *pems, secret=None):
    """The certificates (and maybe a secret) the fake's app accepts."""
    spec = {"certificates": list(pems)}
    if secret is not None:
        spec["secret"] = secret
    fake.config(clients={fake.client_id: spec})
