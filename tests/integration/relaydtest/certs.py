"""A test certificate authority (python3-cryptography) for TLS tests."""
import os
from pathlib import Path


class CertAuthority:
    """A throw-away CA made at test time with python3-cryptography, and the
    certificates it signs. Files in `directory`: ca.pem (relayd's
    [graph] ca_file), ca.key, and NAME.pem/NAME.key per issued certificate.
    A server certificate for localhost, 127.0.0.1 and ::1 is issued at once:
    cert_file, key_file."""

    def __init__(self, directory):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        key = self._new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                             "relayd test CA")])
        now = self._now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - self._delta(hours=1))
                .not_valid_after(now + self._delta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0),
                               critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False,
                    key_encipherment=False, data_encipherment=False,
                    key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256()))
        self.key, self.cert = key, cert
        self.ca_file, self.ca_key_file = self._write("ca", cert, key)
        self.cert_file, self.key_file = self.issue("server")

    @staticmethod
    def _now():
        from datetime import datetime, timezone
        return datetime.now(timezone.utc)

    @staticmethod
    def _delta(**kw):
        from datetime import timedelta
        return timedelta(**kw)

    @staticmethod
    def _new_key():
        from cryptography.hazmat.primitives.asymmetric import rsa
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def _write(self, name, cert, key):
        from cryptography.hazmat.primitives import serialization
        cert_path = self.dir / (name + ".pem")
        key_path = self.dir / (name + ".key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
        return cert_path, key_path

    def issue(self, name, dns=("localhost",), ips=("127.0.0.1", "::1"),
              days=400, expired=False, server=True):
        """Signs a new certificate; returns (cert_path, key_path). expired:
        valid only until yesterday. server=False makes a plain client
        certificate (e.g. for JWT client assertions)."""
        import ipaddress
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
        key = self._new_key()
        now = self._now()
        if expired:
            start, end = now - self._delta(days=3), now - self._delta(days=1)
        else:
            start, end = now - self._delta(hours=1), now + self._delta(
                days=days)
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(
                 NameOID.COMMON_NAME, (list(dns) or [name])[0])]))
             .issuer_name(self.cert.subject)
             .public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(start).not_valid_after(end)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                            critical=True)
             .add_extension(x509.AuthorityKeyIdentifier
                            .from_issuer_public_key(self.key.public_key()),
                            critical=False)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                 key.public_key()), critical=False))
        if server:
            sans = [x509.DNSName(d) for d in dns] + [
                x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            b = (b.add_extension(x509.SubjectAlternativeName(sans),
                                 critical=False)
                 .add_extension(x509.KeyUsage(
                     digital_signature=True, content_commitment=False,
                     key_encipherment=True, data_encipherment=False,
                     key_agreement=False, key_cert_sign=False,
                     crl_sign=False, encipher_only=False,
                     decipher_only=False), critical=True)
                 .add_extension(x509.ExtendedKeyUsage(
                     [ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
        cert = b.sign(self.key, hashes.SHA256())
        return self._write(name, cert, key)
