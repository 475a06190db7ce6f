"""The router's TLS files: the certificates HAProxy serves by SNI, and the ACME HTTP-01 answers.

Responsibility:

- `ensure_default_certificate` generates, once per run directory, the self-signed certificate
  HAProxy presents to a client whose SNI name (or lack of one) matches no app's certificate.
  Its key is made on this machine and never leaves the run directory.
- `served` decides which stored certificates are served for which names: only the names that
  still route to the certificate's app (a certificate for a domain removed from the app stops
  being served; one of a destroyed app too).
- `TlsFiles.write` writes each served certificate (chain + key, mode 0600) under
  `<run_dir>/certs/` and the crt-list HAProxy's https bind reads (`certs.list`: the default
  certificate first, then one line per certificate with its SNI names as filters), and says
  whether anything changed: HAProxy then loads the new set on a seamless reload (the
  controller's choice, see main.py).
- `render_acme_map` is the map of pending HTTP-01 challenges (`token key-authorization`),
  which HAProxy answers from before any host routing.

Threads: no threads of its own; the controller's thread calls it. Imports only the framework
and the router's own modules.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from berth.framework.certs import Certificate, usable
from berth.framework.errors import BerthError
from berth.framework.state import Store, Watcher
from berth.router.haproxy import RouterConfig, Runtime, write_atomically
from berth.router.table import Table

log = logging.getLogger(__name__)

CERTS_DIR = "certs"
CRT_LIST = "certs.list"
DEFAULT_CERT = "default.pem"
ACME_MAP = "acme.map"
DEFAULT_NAME = "berth-default.invalid"  # a name no client asks for
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_KEY_AUTHORIZATION = re.compile(r"[A-Za-z0-9_-]{1,128}\.[A-Za-z0-9_-]{1,128}")


def write_private(path: Path, data: bytes) -> None:
    """Replaces `path` with `data` in one step, readable by its owner only (0600)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def ensure_default_certificate(certs_dir: Path) -> Path:
    """The default certificate's file, generated (EC P-256, self-signed, 10 years) if absent."""
    path = certs_dir / DEFAULT_CERT
    if path.exists():
        return path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, DEFAULT_NAME),
            x509.NameAttribute(
                NameOID.ORGANIZATION_NAME, "Berth router (no certificate for this name)"
            ),
        ]
    )
    start = datetime.now(UTC) - timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(DEFAULT_NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private(path, pem)
    return path


def _owner(table: Table, hostname: str) -> str | None:
    """The app a certificate name routes to in `table` (a `*.` name: its wildcard domain)."""
    if hostname.startswith("*."):
        return table.wildcards.get(hostname[1:])
    return table.hosts.get(hostname)


def served(certs: Iterable[Certificate], table: Table) -> list[tuple[Certificate, tuple[str, ...]]]:
    """Each certificate to serve with the names it is served for: those of its names that
    route to its app. Certificates left with no name are not served. Sorted by name."""
    result = []
    for cert in sorted(certs, key=lambda c: c.name):
        names = tuple(h for h in cert.hostnames if _owner(table, h) == cert.app)
        if names and cert.key_pem:
            result.append((cert, names))
    return result


def cert_file_name(cert: Certificate) -> str:
    """A file name for the certificate: its name (wildcards spelt `_wildcard_`), and a hash
    of its content so that a renewal is a new file."""
    stem = cert.name.replace("*", "_wildcard_")
    digest = hashlib.sha256((cert.cert_pem + cert.key_pem).encode()).hexdigest()[:12]
    return f"{stem}.{digest}.pem"


def render_crt_list(certs_dir: Path, entries: list[tuple[Certificate, tuple[str, ...]]]) -> str:
    """HAProxy's crt-list: the default certificate first (HAProxy presents the first one to a
    client whose SNI matches nothing), then each certificate filtered to its served names."""
    lines = [f"{certs_dir / DEFAULT_CERT}\n"]
    for cert, names in entries:
        lines.append(f"{certs_dir / cert_file_name(cert)} {' '.join(names)}\n")
    return "".join(lines)


def render_acme_map(challenges: dict[str, str]) -> str:
    """`token key-authorization` lines; entries that are not base64url tokens are left out
    (a map value must never hold a space or anything HAProxy would split on)."""
    return "".join(
        f"{token} {value}\n"
        for token, value in sorted(challenges.items())
        if _TOKEN.fullmatch(token) and _KEY_AUTHORIZATION.fullmatch(value)
    )


@dataclass
class TlsFiles:
    """The certificate files of one run directory."""

    run_dir: Path

    @property
    def certs_dir(self) -> Path:
        return self.run_dir / CERTS_DIR

    @property
    def crt_list(self) -> Path:
        return self.run_dir / CRT_LIST

    def write(self, certs: Iterable[Certificate], table: Table) -> bool:
        """Writes the served certificates and the crt-list; removes files no longer listed.
        True if the crt-list or a certificate file changed (HAProxy must load them again)."""
        ensure_default_certificate(self.certs_dir)
        entries = []
        changed = False
        wanted = {DEFAULT_CERT}
        for cert, names in served(certs, table):
            name = cert_file_name(cert)
            path = self.certs_dir / name
            data = (cert.cert_pem.rstrip("\n") + "\n" + cert.key_pem).encode()
            try:
                same = path.read_bytes() == data
            except OSError:
                same = False
            if not same:
                # one certificate HAProxy cannot load must not stop every reload
                if not usable(cert.cert_pem, cert.key_pem):
                    log.warning("certificate %s is not loadable; not served", cert.name)
                    continue
                write_private(path, data)
                changed = True
            wanted.add(name)
            entries.append((cert, names))
        text = render_crt_list(self.certs_dir, entries)
        try:
            current = self.crt_list.read_text()
        except OSError:
            current = None
        if current != text:
            write_private(self.crt_list, text.encode())
            changed = True
        for path in self.certs_dir.glob("*.pem"):
            if path.name not in wanted:
                with contextlib.suppress(OSError):
                    path.unlink()
        return changed


class TlsRound:
    """What the controller does for TLS in each of its rounds (its thread only): read the
    certificates and ACME challenges from ZooKeeper (arming watches), write the files, and
    change the running HAProxy's challenge map through the runtime API."""

    def __init__(self, store: Store, config: RouterConfig, runtime: Runtime) -> None:
        self._store = store
        self._config = config
        self._runtime = runtime
        self.files = TlsFiles(config.run_dir)
        self._challenges: dict[str, str] | None = None  # what the running HAProxy's map holds

    def update(self, table: Table, watch: Watcher, *, live: bool) -> bool:
        """Brings the files up to date with ZooKeeper and `table`. `live`: HAProxy runs with
        a known table (else it is about to be started or reloaded from the files). True if
        HAProxy must reload to load a new set of certificates."""
        certs = self._store.all_certs(watch=watch, with_keys=True)
        challenges = {
            token: value
            for token, value in self._store.acme_challenges(watch=watch).items()
            if _TOKEN.fullmatch(token) and _KEY_AUTHORIZATION.fullmatch(value)
        }
        reload = self.files.write(certs, table)
        write_atomically(self._config.acme_map, render_acme_map(challenges))
        if live and not reload and self._challenges is not None:
            try:
                for token in sorted(set(self._challenges) - set(challenges)):
                    self._runtime.del_map(self._config.acme_map, token)
                for token, value in sorted(challenges.items()):
                    if self._challenges.get(token) != value:
                        self._runtime.set_map(self._config.acme_map, token, value)
            except BerthError as exc:
                log.warning("acme map change failed (%s); reloading instead", exc.message)
                reload = True
        if reload:
            log.info("certificates changed", extra={"certs": len(served(certs, table))})
        # after this round HAProxy holds the files' map: changed above, or loaded by the
        # start or reload that follows
        self._challenges = challenges
        return reload
