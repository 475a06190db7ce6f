"""TLS certificates as Berth keeps them: parsing and checking a PEM certificate chain and its
private key, and the `Certificate` record the Store saves (its key sealed) and the router serves.

Pure apart from the clock passed in; any thread may call it. Uses `cryptography` for parsing
(never a hand-written ASN.1 reader). Messages name hostnames and sizes, never key material.
Imports only the framework's errors and model.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from berth.framework.errors import Invalid
from berth.framework.model import validate_domain

MAX_CERT_BYTES = 64 * 1024  # a leaf and its intermediates; a znode holds ≤ 1 MiB
MAX_KEY_BYTES = 16 * 1024
MAX_CHAIN = 8
MAX_HOSTNAMES = 100
MIN_RSA_BITS = 2048
SOURCES = ("manual", "acme")


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What the checks learned from a certificate chain."""

    hostnames: tuple[str, ...]  # the leaf's DNS names, lower case, in the certificate's order
    issuer: str  # the issuer's common name (or its whole name when it has none)
    not_before: str  # RFC 3339 UTC
    not_after: str
    fingerprint: str  # SHA-256 of the leaf, hex


@dataclass(frozen=True, slots=True)
class Certificate:
    """A certificate an app serves. `name` is its first hostname and names its znode;
    `key_pem` is empty in records read without the key (listings)."""

    name: str
    app: str
    hostnames: tuple[str, ...]
    issuer: str
    not_after: str
    fingerprint: str
    source: str  # "manual" (certs:add) or "acme"
    created_at: str
    cert_pem: str  # the leaf first, then its intermediates
    key_pem: str = ""

    def to_json(self) -> dict[str, object]:
        """What the API shows: never the key, nor the PEM."""
        return {
            "name": self.name,
            "app": self.app,
            "hostnames": list(self.hostnames),
            "issuer": self.issuer,
            "not_after": self.not_after,
            "fingerprint": self.fingerprint,
            "source": self.source,
            "created_at": self.created_at,
        }

    def covers(self, hostname: str) -> bool:
        """Whether this certificate is valid for `hostname` (an exact name, or a wildcard
        SAN covering one more label)."""
        for name in self.hostnames:
            if name == hostname:
                return True
            if name.startswith("*.") and "." in hostname:
                head, _, rest = hostname.partition(".")
                if head != "*" and rest == name[2:]:
                    return True
        return False


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """An RFC 3339 UTC time as `_rfc3339` writes it."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _ascii(data: str, what: str, limit: int) -> bytes:
    raw = data.encode("utf-8", errors="replace")
    if len(raw) > limit:
        raise Invalid(f"the {what} is {len(raw)} bytes; the limit is {limit}")
    if not data.isascii():
        raise Invalid(f"the {what} is not PEM text (it holds non-ASCII characters)")
    return raw


def _spki(key: object) -> bytes:
    public = key.public_key()  # type: ignore[attr-defined]
    data: bytes = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def check_pair(cert_pem: str, key_pem: str, now: datetime) -> CertInfo:
    """Checks a PEM certificate chain (leaf first) and its PEM private key: sizes bounded,
    both parse, the key is unencrypted RSA ≥ 2048 bits, EC or Ed25519 and belongs to the leaf,
    the leaf is valid at `now` and names at least one DNS name (subjectAltName), each a host
    name Berth can route. Raises Invalid with what is wrong."""
    cert_raw = _ascii(cert_pem, "certificate", MAX_CERT_BYTES)
    key_raw = _ascii(key_pem, "private key", MAX_KEY_BYTES)
    if b"PRIVATE KEY-----" in cert_raw:
        raise Invalid("the certificate file holds a private key: give the key file separately")
    try:
        chain = x509.load_pem_x509_certificates(cert_raw)
    except ValueError:
        raise Invalid("the certificate is not a PEM certificate (BEGIN CERTIFICATE)") from None
    if len(chain) > MAX_CHAIN:
        raise Invalid(f"the chain has {len(chain)} certificates; the limit is {MAX_CHAIN}")
    leaf = chain[0]
    try:
        key = serialization.load_pem_private_key(key_raw, password=None)
    except TypeError:
        raise Invalid("the private key is encrypted: give it without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise Invalid("the private key is not a PEM private key (BEGIN PRIVATE KEY)") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise Invalid(f"the RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} needed")
    elif not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise Invalid("the private key must be RSA, EC or Ed25519")
    try:
        leaf_key = _spki(leaf)
    except UnsupportedAlgorithm:
        raise Invalid("the certificate's public key type is not supported") from None
    if leaf_key != _spki(key):
        raise Invalid("the private key does not match the certificate (the first in the file)")
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if not_after <= now:
        raise Invalid(f"the certificate expired on {_rfc3339(not_after)}")
    if not_before > now:
        raise Invalid(f"the certificate is not valid before {_rfc3339(not_before)}")
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise Invalid(
            "the certificate names no host (it has no subjectAltName DNS names)"
        ) from None
    names = sans.value.get_values_for_type(x509.DNSName)
    if not names:
        raise Invalid("the certificate names no host (it has no subjectAltName DNS names)")
    if len(names) > MAX_HOSTNAMES:
        raise Invalid(f"the certificate names {len(names)} hosts; the limit is {MAX_HOSTNAMES}")
    hostnames: list[str] = []
    for name in names:
        try:
            host = validate_domain(name)
        except Invalid as exc:
            raise Invalid(f"the certificate's name {name[:80]!r}: {exc.message}") from None
        if host not in hostnames:
            hostnames.append(host)
    return CertInfo(
        hostnames=tuple(hostnames),
        issuer=_issuer(leaf),
        not_before=_rfc3339(not_before),
        not_after=_rfc3339(not_after),
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
    )


def _issuer(cert: x509.Certificate) -> str:
    common = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    if common:
        value = common[0].value
        return value if isinstance(value, str) else value.decode(errors="replace")
    return cert.issuer.rfc4514_string()


def normalise_pem(cert_pem: str, key_pem: str) -> tuple[str, str]:
    """The chain and key re-encoded as plain PEM (whatever else the files held is dropped):
    what HAProxy gets is exactly what was checked."""
    chain = x509.load_pem_x509_certificates(cert_pem.encode())
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    cert_out = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)
    key_out = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert_out, key_out


def usable(cert_pem: str, key_pem: str) -> bool:
    """Whether HAProxy can load this chain and key: both parse and the key is the leaf's.
    (Expiry is not checked: an expired certificate is still served until it is replaced.)"""
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem.encode())[0]
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        return _spki(leaf) == _spki(key)
    except (ValueError, TypeError, UnsupportedAlgorithm, IndexError):
        return False
