"""Test certificates, made in the test with `cryptography` (no key is ever committed): a CA
that signs leaf certificates for given names, valid or expired."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Pair:
    cert: str  # PEM: the leaf, then the CA
    key: str  # PEM
    leaf: x509.Certificate


class TestCA:
    """A CA of its own; `issue` signs leaf certificates for DNS names."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str = "Berth Test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        start = datetime.now(UTC) - timedelta(days=1)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.name = name

    @property
    def pem(self) -> str:
        return cert_pem(self.cert)

    def issue(
        self,
        *names: str,
        days: float = 30,
        start: datetime | None = None,
        key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
        san: bool = True,
    ) -> Pair:
        """A leaf for `names` valid from `start` (default: a day ago) for `days`."""
        leaf_key = key or ec.generate_private_key(ec.SECP256R1())
        begin = start or datetime.now(UTC) - timedelta(days=1)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(begin)
            .not_valid_after(begin + timedelta(days=days))
        )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
        leaf = builder.sign(self.key, hashes.SHA256())
        return Pair(cert=cert_pem(leaf) + self.pem, key=key_pem(leaf_key), leaf=leaf)
