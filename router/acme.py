"""Automatic certificates over ACME (RFC 8555) with HTTP-01 challenges, for the custom domains
of apps, while the router serves HTTPS.

Responsibility: `Issuer` finds the custom domains that need a certificate (no certificate of
the app covers them, or the ones that do expire within `renew_before`), takes the ZooKeeper
lock `/locks/acme` (one issuer at a time across every router), and for each domain:

1. orders a certificate from the ACME directory with a fresh EC P-256 key;
2. stores each HTTP-01 challenge's key authorization in ZooKeeper (/acme/challenges/<token>),
   from which every router's HAProxy answers `/.well-known/acme-challenge/<token>` (tls.py's
   map, haproxy.py's rules), waits until this router's HAProxy serves it, then tells the CA;
3. polls, finalizes, and stores the certificate chain and its key (sealed) as an app
   certificate with source "acme"; the routers serve it like one added by `certs:add`.

Which names: exact custom domains only; not wildcards (HTTP-01 cannot prove them), not names
no public CA would certify (`localhost`, `*.localhost`, `.local`, `.internal`, `.invalid`,
`.example`, `.home.arpa`, `.lan`), not names under this Berth's own domain. A domain whose app
has a valid certificate added by hand is left alone until that one nears expiry.

Failures (the CA refuses, the challenge is not reachable, ZooKeeper is away) are logged and the
domain is tried again after a backoff (1 minute doubling to 6 hours); they never touch routing:
the issuer runs on a thread of its own, and the controller never waits for it.

The ACME account (its key sealed like config) is kept in ZooKeeper per directory URL, so every
router and every restart uses the same one. The directory's own TLS is checked against the
system's CAs, or against `ca_bundle` (a test CA such as pebble's).

Threads: `Issuer.run` on its own thread until `stop` is set (then it returns within a second or
so, abandoning an order in progress); kazoo's thread only sets an Event. Imports the framework
and the `acme`/`josepy` libraries; never the API.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from acme import challenges, client, crypto_util, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.jwk import JWKRSA

from berth.framework.certs import Certificate, check_pair, normalise_pem, parse_time
from berth.framework.errors import BerthError
from berth.framework.model import now
from berth.framework.state import Store

log = logging.getLogger(__name__)

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LOCK = "acme"
NOT_PUBLIC = ("localhost", "local", "internal", "invalid", "example", "home.arpa", "lan")
BACKOFF_START, BACKOFF_MAX = 60.0, 6 * 3600.0


@dataclass(frozen=True, slots=True)
class AcmeSettings:
    directory: str = LETS_ENCRYPT
    email: str | None = None
    ca_bundle: str | None = None  # a CA file for the directory's TLS; None: the system's
    challenge_addr: tuple[str, int] = ("127.0.0.1", 80)  # this router's HTTP, for a self-check
    base_domain: str = "localhost"
    renew_before: timedelta = timedelta(days=30)
    check_every: float = 300.0  # seconds between looks when nothing wakes it
    order_timeout: float = 120.0  # seconds for the CA to validate and issue


def wants_certificate(hostname: str, base_domain: str) -> bool:
    """Whether the issuer should get `hostname` a certificate."""
    if hostname.startswith("*.") or not hostname:
        return False
    for suffix in NOT_PUBLIC:
        if hostname == suffix or hostname.endswith("." + suffix):
            return False
    return not (base_domain and (hostname == base_domain or hostname.endswith("." + base_domain)))


def needs_certificate(
    hostname: str, app: str, certs: list[Certificate], at: datetime, renew_before: timedelta
) -> bool:
    """No certificate of `app` covering `hostname` stays valid past `at + renew_before`."""
    for cert in certs:
        fresh = parse_time(cert.not_after) > at + renew_before
        if cert.app == app and cert.covers(hostname) and fresh:
            return False
    return True


class Issuer:
    def __init__(self, store: Store, settings: AcmeSettings) -> None:
        self._store = store
        self._settings = settings
        self._wake = threading.Event()
        self._next_try: dict[str, float] = {}  # domain → monotonic time of the next attempt
        self._failures: dict[str, int] = {}
        self._client: client.ClientV2 | None = None
        self._account_key: JWKRSA | None = None
        self._identity = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.issued = 0

    def _on_watch(self, event: Any) -> None:
        self._wake.set()  # kazoo's thread: signal only

    def wake(self) -> None:
        """Ends the current wait at once (any thread; used when stopping)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        log.info("acme issuer starting", extra={"directory": self._settings.directory})
        while not stop.is_set():
            self._wake.clear()
            try:
                self._round(stop)
            except BerthError as exc:
                log.warning("acme round failed: %s", exc.message)
                stop.wait(5.0)
            except Exception:  # never let the issuer die: it only ever retries later
                log.exception("acme round failed")
                stop.wait(5.0)
            self._wake.wait(self._wait_time())
            if self._wake.is_set():
                stop.wait(0.2)  # let a burst of changes land
        log.info("acme issuer stopped")

    def _wait_time(self) -> float:
        wait = self._settings.check_every
        if self._next_try:
            soonest = min(self._next_try.values()) - time.monotonic()
            wait = min(wait, max(1.0, soonest))
        return wait

    def due(self) -> list[tuple[str, str]]:
        """(domain, app) pairs that need a certificate now, backoffs respected."""
        domains = self._store.all_domains(watch=self._on_watch)
        certs = self._store.all_certs(watch=self._on_watch)
        at = datetime.now(UTC)
        moment = time.monotonic()
        return [
            (domain, app)
            for domain, app in sorted(domains.items())
            if wants_certificate(domain, self._settings.base_domain)
            and needs_certificate(domain, app, certs, at, self._settings.renew_before)
            and self._next_try.get(domain, 0.0) <= moment
        ]

    def _round(self, stop: threading.Event) -> None:
        if not self.due():
            return
        with self._store.lock(LOCK, self._identity, timeout=2.0) as got:
            if not got:
                log.info("another router is issuing certificates; looking again later")
                self._wake.clear()
                stop.wait(10.0)
                return
            for domain, app in self.due():  # again under the lock: another may have just issued
                if stop.is_set():
                    return
                try:
                    self._issue(domain, app, stop)
                except Exception as exc:  # the CA, the network, ZooKeeper: back off, retry
                    self._failed(domain, exc)
                else:
                    self._failures.pop(domain, None)
                    self._next_try.pop(domain, None)

    def _failed(self, domain: str, exc: Exception) -> None:
        count = self._failures.get(domain, 0) + 1
        self._failures[domain] = count
        delay = min(BACKOFF_START * 2 ** (count - 1), BACKOFF_MAX)
        self._next_try[domain] = time.monotonic() + delay
        self._client = None  # start afresh: a nonce or account problem must not stick
        message = exc.message if isinstance(exc, BerthError) else f"{type(exc).__name__}: {exc}"
        log.warning(
            "no certificate for %s (attempt %d): %s; retrying in %.0fs",
            domain,
            count,
            message[:500],
            delay,
            extra={"domain": domain, "attempt": count, "retry_in": delay},
        )

    # -- the ACME conversation -------------------------------------------------------------

    def _acme(self) -> tuple[client.ClientV2, JWKRSA]:
        if self._client is not None and self._account_key is not None:
            return self._client, self._account_key
        s = self._settings
        stored = self._store.acme_account(s.directory)
        if stored is not None:
            private = serialization.load_pem_private_key(stored[0].encode(), password=None)
            assert isinstance(private, rsa.RSAPrivateKey)
            key = JWKRSA(key=private)
        else:
            key = JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
        net = client.ClientNetwork(key, user_agent="berth-router")
        if s.ca_bundle:
            net.verify_ssl = s.ca_bundle  # type: ignore[assignment]  # requests takes a CA file
        directory = client.ClientV2.get_directory(s.directory, net)
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(
            email=s.email, terms_of_service_agreed=True
        )
        try:
            account = acme.new_account(registration)
            uri = account.uri
        except errors.ConflictError as exc:  # this key has an account there already
            uri = exc.location
            net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
        if stored is None or stored[1] != uri:
            pem = key.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode()
            self._store.put_acme_account(s.directory, pem, uri)
            log.info("acme account registered", extra={"directory": s.directory, "account": uri})
        self._client, self._account_key = acme, key
        return acme, key

    def _issue(self, domain: str, app: str, stop: threading.Event) -> None:
        log.info("requesting a certificate", extra={"domain": domain, "app": app})
        acme, account_key = self._acme()
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        order = acme.new_order(crypto_util.make_csr(key_pem, [domain]))
        tokens: list[str] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue
                found = [c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)]
                if not found:
                    raise BerthError(f"the CA offers no HTTP-01 challenge for {domain}")
                challenge = found[0]
                response, validation = challenge.response_and_validation(account_key)
                token = challenge.chall.encode("token")
                self._store.put_acme_challenge(token, validation, domain)
                tokens.append(token)
                self._wait_served(domain, token, validation, stop)
                acme.answer_challenge(challenge, response)
            deadline = datetime.now() + timedelta(seconds=self._settings.order_timeout)
            order = acme.poll_and_finalize(order, deadline)
        finally:
            for token in tokens:
                with contextlib.suppress(BerthError):
                    self._store.delete_acme_challenge(token)
        chain, private = normalise_pem(order.fullchain_pem, key_pem.decode())
        info = check_pair(chain, private, datetime.now(UTC))
        self._store.put_cert(
            Certificate(
                name=domain,
                app=app,
                hostnames=info.hostnames,
                issuer=info.issuer,
                not_after=info.not_after,
                fingerprint=info.fingerprint,
                source="acme",
                created_at=now(),
                cert_pem=chain,
                key_pem=private,
            )
        )
        self.issued += 1
        log.info(
            "certificate issued",
            extra={
                "domain": domain,
                "app": app,
                "issuer": info.issuer,
                "not_after": info.not_after,
            },
        )

    def _wait_served(self, domain: str, token: str, validation: str, stop: threading.Event) -> None:
        """Until this router's HAProxy answers the challenge (it learns it from ZooKeeper),
        at most 30 s: the CA gets one try per authorization."""
        host, port = self._settings.challenge_addr
        deadline = time.monotonic() + 30.0
        while not stop.is_set():
            connection = http.client.HTTPConnection(host, port, timeout=5)
            try:
                connection.request(
                    "GET", f"/.well-known/acme-challenge/{token}", headers={"Host": domain}
                )
                answer = connection.getresponse()
                if answer.status == 200 and answer.read().decode(errors="replace") == validation:
                    return
            except OSError:
                pass
            finally:
                connection.close()
            if time.monotonic() > deadline:
                raise BerthError(f"this router did not serve the challenge for {domain} in 30s")
            stop.wait(0.1)
        raise BerthError("stopping")
