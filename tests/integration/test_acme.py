"""ACME issuance end to end against a local test CA: Debian's `pebble` (Let's Encrypt's test
ACME server) with `pebble-challtestsrv` as its DNS server, which resolves every name to
127.0.0.1, so pebble's HTTP-01 validation really fetches
`http://<domain>:<router's HTTP port>/.well-known/acme-challenge/<token>` from the router's
HAProxy. Validation is not skipped (no PEBBLE_VA_ALWAYS_VALID). The router trusts pebble's TLS
certificate (made here by a CA of the test's own) through --acme-ca-bundle.

A custom domain added to an app → the router's issuer orders a certificate, answers the
challenge through every router's HAProxy (from ZooKeeper), stores the certificate, and serves
it for that SNI name, chained to pebble's root."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509

from berth.framework.model import Task
from berth.framework.state import Store
from tests.conftest import Api, need
from tests.integration.test_router_tls import EchoApp
from tests.support import waiting
from tests.support.certs import TestCA
from tests.support.services import BerthApi, BerthRouter, ZooKeeper, free_port

pytestmark = [pytest.mark.zookeeper, pytest.mark.haproxy, pytest.mark.slow]

PEBBLE = shutil.which("pebble")
CHALLTESTSRV = shutil.which("pebble-challtestsrv")
DOMAIN = "shop.acme-e2e.test"


def wait_for(what: Callable[[], Any], timeout: float = 90.0) -> Any:
    return waiting.wait_for(what, timeout, interval=0.2)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Pebble:
    """pebble and pebble-challtestsrv (its DNS), on ports of their own."""

    def __init__(self, root: Path, http_port: int) -> None:
        self.root = root
        self.ca = TestCA("Pebble listener test CA")
        tls = self.ca.issue("localhost")
        (root / "pebble-cert.pem").write_text(tls.cert)
        (root / "pebble-key.pem").write_text(tls.key)
        self.ca_file = root / "pebble-listener-ca.pem"
        self.ca_file.write_text(self.ca.pem)
        self.port, self.management_port = free_port(), free_port()
        self.dns_port = free_udp_port()
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.management_port}",
                "certificate": str(root / "pebble-cert.pem"),
                "privateKey": str(root / "pebble-key.pem"),
                "httpPort": http_port,  # where pebble validates HTTP-01: the router
                "tlsPort": free_port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
            }
        }
        (root / "pebble.json").write_text(json.dumps(config))
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def directory(self) -> str:
        return f"https://localhost:{self.port}/dir"

    def start(self) -> None:
        assert PEBBLE is not None
        assert CHALLTESTSRV is not None
        with (self.root / "challtestsrv.log").open("ab") as log:
            self._procs.append(
                subprocess.Popen(
                    [
                        CHALLTESTSRV,
                        "-dns01",
                        f"127.0.0.1:{self.dns_port}",
                        "-http01",
                        "",
                        "-https01",
                        "",
                        "-tlsalpn01",
                        "",
                        "-management",
                        f"127.0.0.1:{free_port()}",
                        "-defaultIPv4",
                        "127.0.0.1",
                        "-defaultIPv6",
                        "",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        env = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PATH": "/usr/bin:/bin"}
        with (self.root / "pebble.log").open("ab") as log:
            self._procs.append(
                subprocess.Popen(
                    [
                        PEBBLE,
                        "-config",
                        str(self.root / "pebble.json"),
                        "-dnsserver",
                        f"127.0.0.1:{self.dns_port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        wait_for(self._answers, 30)

    def _answers(self) -> bool:
        try:
            return requests.get(self.directory, verify=str(self.ca_file), timeout=2).ok
        except requests.RequestException:
            return False

    def root_pem(self) -> str:
        """Pebble's root CA (made anew at each start), which signs what it issues."""
        url = f"https://localhost:{self.management_port}/roots/0"
        return requests.get(url, verify=str(self.ca_file), timeout=10).text

    def stop(self) -> None:
        for proc in reversed(self._procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[Pebble]:
    need(PEBBLE is not None and CHALLTESTSRV is not None, "pebble (Debian package pebble)")
    # the router's HTTP port is chosen first: pebble validates HTTP-01 on it
    server = Pebble(tmp_path, free_port())
    server.start()
    yield server
    server.stop()


def test_a_custom_domain_gets_a_certificate_from_the_acme_ca(
    zookeeper: ZooKeeper, chroot: str, tmp_path: Path, pebble: Pebble
) -> None:
    data = tmp_path / "data"
    api_server = BerthApi(zookeeper.hosts, chroot, data, tmp_path / "api.log")
    http_port = json.loads((tmp_path / "pebble.json").read_text())["pebble"]["httpPort"]
    router = BerthRouter(
        zookeeper.hosts,
        chroot,
        data,
        tmp_path / "router.log",
        https=True,
        port=http_port,
        extra_args=(
            f"--acme-directory={pebble.directory}",
            f"--acme-ca-bundle={pebble.ca_file}",
            "--acme-email=ops@berth.example.org",
        ),
    )
    store = Store(zookeeper.hosts, chroot, None)
    echo = EchoApp()
    api_server.start()
    try:
        store.start()
        router.start()
        api = Api(api_server)
        assert api.call("POST", "/v1/apps", json={"name": "acme-shop"}).status_code == 201
        store.put_task(
            Task(
                id=f"acme-shop.web.1.v1.{'0' * 32}",
                app="acme-shop",
                process="web",
                index=1,
                release=1,
                state="running",
                hostname="127.0.0.1",
                port=echo.port,
                healthy=True,
            )
        )
        # names ACME must leave alone: a wildcard (HTTP-01 cannot prove it), a .local one
        for hostname in (DOMAIN, "*.wild.acme-e2e.test", "printer.local"):
            reply = api.call("POST", "/v1/apps/acme-shop/domains", json={"hostname": hostname})
            assert reply.status_code == 201, reply.text

        def issued() -> list[dict[str, Any]]:
            certs: list[dict[str, Any]] = api.call("GET", "/v1/apps/acme-shop/certs").json()
            return certs

        certs = wait_for(issued, 120)
        assert [(c["name"], c["hostnames"], c["source"]) for c in certs] == [
            (DOMAIN, [DOMAIN], "acme")
        ]
        assert "Pebble" in certs[0]["issuer"]

        # the router serves it for that SNI name, and it verifies against pebble's root
        context = ssl.create_default_context(cadata=pebble.root_pem())
        context.set_alpn_protocols(["h2", "http/1.1"])

        def handshake() -> x509.Certificate | None:
            try:
                with (
                    socket.create_connection(("127.0.0.1", router.https_port), timeout=10) as raw,
                    context.wrap_socket(raw, server_hostname=DOMAIN) as tls,
                ):
                    der = tls.getpeercert(binary_form=True)
                    assert der is not None
                    return x509.load_der_x509_certificate(der)
            except ssl.SSLCertVerificationError:
                return None  # still the default certificate: not loaded yet

        served = wait_for(handshake, 30)
        sans = served.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert sans.value.get_values_for_type(x509.DNSName) == [DOMAIN]

        # and a request over it reaches the app
        plain = ssl.create_default_context(cadata=pebble.root_pem())
        with (
            socket.create_connection(("127.0.0.1", router.https_port), timeout=10) as raw,
            plain.wrap_socket(raw, server_hostname=DOMAIN) as tls,
        ):
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert json.loads(body)["x-forwarded-proto"] == "https"

        # the challenges were cleaned up, and nothing was asked for the other names
        log = (tmp_path / "router.log").read_text()
        assert "certificate issued" in log
        assert store.acme_challenges() == {}
        assert "wild.acme-e2e.test" not in log
        assert "printer.local" not in log
    finally:
        router.stop()
        api_server.stop()
        store.stop()
        echo.stop()


def test_an_unreachable_ca_is_retried_later_and_routing_goes_on(
    zookeeper: ZooKeeper, chroot: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    api_server = BerthApi(zookeeper.hosts, chroot, data, tmp_path / "api.log")
    router = BerthRouter(
        zookeeper.hosts,
        chroot,
        data,
        tmp_path / "router.log",
        https=True,
        extra_args=(f"--acme-directory=https://127.0.0.1:{free_port()}/dir",),
    )
    store = Store(zookeeper.hosts, chroot, None)
    echo = EchoApp()
    api_server.start()
    try:
        store.start()
        router.start()
        api = Api(api_server)
        assert api.call("POST", "/v1/apps", json={"name": "acme-down"}).status_code == 201
        reply = api.call("POST", "/v1/apps/acme-down/domains", json={"hostname": DOMAIN})
        assert reply.status_code == 201
        log_path = tmp_path / "router.log"
        wait_for(lambda: f"no certificate for {DOMAIN} (attempt 1)" in log_path.read_text(), 60)
        assert "retrying in 60s" in log_path.read_text()
        # routing is untouched: a new task is routed to
        store.put_task(
            Task(
                id=f"acme-down.web.1.v1.{'0' * 32}",
                app="acme-down",
                process="web",
                index=1,
                release=1,
                state="running",
                hostname="127.0.0.1",
                port=echo.port,
                healthy=True,
            )
        )

        def routed() -> bool:
            reply = requests.get(router.url, headers={"Host": DOMAIN}, timeout=5)
            return reply.status_code == 200

        wait_for(routed, 30)
        assert api.call("GET", "/v1/apps/acme-down/certs").json() == []
        assert "Traceback" not in log_path.read_text()
    finally:
        router.stop()
        api_server.stop()
        store.stop()
        echo.stop()
