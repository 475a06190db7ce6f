"""HTTPS through the router, every part real: ZooKeeper, `berth api`, `berth router
--https-addr` with its HAProxy, TLS clients (Python's ssl, curl from Debian). The app's web
process is a small Python HTTP server on loopback, entered into ZooKeeper as a running web task
(the framework is not what is tested here: test_router.py runs the whole path). Certificates
are made in the test by a CA of its own."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from kazoo.client import KazooClient

from berth.framework.model import Task
from berth.framework.state import Store
from tests.conftest import Api, need
from tests.support import waiting
from tests.support.certs import Pair, TestCA
from tests.support.services import BerthApi, BerthRouter, ZooKeeper

pytestmark = [pytest.mark.zookeeper, pytest.mark.haproxy]

CURL = shutil.which("curl")


def wait_for(what: Callable[[], Any], timeout: float = 30.0) -> Any:
    return waiting.wait_for(what, timeout, interval=0.1)


class EchoApp:
    """A web process answering every GET with the request's headers as JSON."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


class Berth:
    def __init__(self, zk: ZooKeeper, chroot: str, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.zk, self.chroot = zk, chroot
        self.api_server = BerthApi(zk.hosts, chroot, self.data, root / "api.log")
        self.router = BerthRouter(
            zk.hosts, chroot, self.data, root / "router.log", https=True, extra_args=("--no-acme",)
        )
        self.store = Store(zk.hosts, chroot, None)
        self.api: Api
        self.apps: list[EchoApp] = []

    def start(self) -> None:
        self.api_server.start()
        self.api = Api(self.api_server)
        self.store.start()
        self.router.start()

    def stop(self) -> None:
        self.router.stop()
        self.api_server.stop()
        self.store.stop()
        for app in self.apps:
            app.stop()

    def app(self, name: str, *domains: str) -> None:
        """An app with these custom domains, served by an EchoApp."""
        assert self.api.call("POST", "/v1/apps", json={"name": name}).status_code == 201
        for domain in domains:
            reply = self.api.call("POST", f"/v1/apps/{name}/domains", json={"hostname": domain})
            assert reply.status_code == 201, reply.text
        echo = EchoApp()
        self.apps.append(echo)
        self.store.put_task(
            Task(
                id=f"{name}.web.1.v1.{'0' * 32}",
                app=name,
                process="web",
                index=1,
                release=1,
                state="running",
                hostname="127.0.0.1",
                port=echo.port,
                healthy=True,
            )
        )

    def add_cert(self, app: str, pair: Pair) -> dict[str, Any]:
        reply = self.api.call(
            "POST",
            f"/v1/apps/{app}/certs",
            json={"certificate": pair.cert, "private_key": pair.key},
        )
        assert reply.status_code == 201, reply.text
        result: dict[str, Any] = reply.json()
        return result

    def handshake(self, server_name: str, ca: TestCA | None = None) -> tuple[x509.Certificate, str]:
        """The certificate the router presents for `server_name`, and the ALPN protocol."""
        context = ssl.create_default_context()
        if ca is None:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context.load_verify_locations(cadata=ca.pem)
        context.set_alpn_protocols(["h2", "http/1.1"])
        with (
            socket.create_connection(("127.0.0.1", self.router.https_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return x509.load_der_x509_certificate(der), tls.selected_alpn_protocol() or ""

    def served_names(self, server_name: str) -> list[str]:
        cert, _ = self.handshake(server_name)
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return []
        return sorted(sans.value.get_values_for_type(x509.DNSName))


@pytest.fixture
def berth(zookeeper: ZooKeeper, chroot: str, tmp_path: Path) -> Iterator[Berth]:
    b = Berth(zookeeper, chroot, tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


DEFAULT = ["berth-default.invalid"]


def test_two_certificates_are_picked_by_sni(berth: Berth, ca: TestCA) -> None:
    berth.app("tls-one", "www.one.test")
    berth.app("tls-two", "*.two.test")
    assert berth.served_names("www.one.test") == DEFAULT  # before any certificate
    berth.add_cert("tls-one", ca.issue("www.one.test", "tls-one.localhost"))
    berth.add_cert("tls-two", ca.issue("*.two.test"))

    wait_for(lambda: berth.served_names("www.one.test") != DEFAULT)
    wait_for(lambda: berth.served_names("shop.two.test") != DEFAULT)
    # each name gets its own app's certificate, which verifies against the CA for that name
    assert berth.handshake("www.one.test", ca)[0].subject.rfc4514_string() == "CN=www.one.test"
    assert berth.handshake("tls-one.localhost", ca)[0].subject.rfc4514_string() == (
        "CN=www.one.test"
    )
    assert berth.handshake("shop.two.test", ca)[0].subject.rfc4514_string() == "CN=*.two.test"
    # a name nobody has a certificate for gets the router's self-signed one
    assert berth.served_names("unknown.test") == DEFAULT
    assert berth.served_names("a.b.two.test") == DEFAULT  # a wildcard covers one label
    # the CLI lists both, with where they come from and never a key
    listed = berth.api.call("GET", "/v1/apps/tls-two/certs").json()
    assert [(c["hostnames"], c["source"], c["issuer"]) for c in listed] == [
        (["*.two.test"], "manual", ca.name)
    ]
    assert "PRIVATE" not in json.dumps(listed)


def test_http2_over_tls_reaches_the_app_with_forwarded_proto_https(
    berth: Berth, ca: TestCA, tmp_path: Path
) -> None:
    need(CURL is not None, "curl (Debian package curl)")
    assert CURL is not None
    berth.app("tls-h2", "h2.example.test")
    berth.add_cert("tls-h2", ca.issue("h2.example.test"))
    wait_for(lambda: berth.served_names("h2.example.test") == ["h2.example.test"])
    assert berth.handshake("h2.example.test", ca)[1] == "h2"

    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca.pem)
    port = berth.router.https_port

    def curl(*args: str) -> tuple[str, dict[str, str]]:
        out = subprocess.run(
            [
                CURL,
                "-sS",
                "--cacert",
                str(ca_file),
                "--resolve",
                f"h2.example.test:{port}:127.0.0.1",
                "-w",
                "\n%{http_version} %{http_code}",
                *args,
                f"https://h2.example.test:{port}/headers",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        body, _, status = out.rpartition("\n")
        return status, json.loads(body)

    status, headers = curl("--http2", "-H", "X-Forwarded-Proto: http")
    assert status == "2 200"
    assert headers["x-forwarded-proto"] == "https"  # the client's value is not trusted
    assert headers["x-forwarded-port"] == str(port)
    assert headers["host"].startswith("h2.example.test")
    status, headers = curl("--http1.1")
    assert status == "1.1 200"
    assert headers["x-forwarded-proto"] == "https"


def test_a_certificate_stops_being_served_when_its_domain_goes(berth: Berth, ca: TestCA) -> None:
    berth.app("tls-gone", "www.gone.test", "api.gone.test")
    berth.add_cert("tls-gone", ca.issue("www.gone.test", "api.gone.test"))
    wait_for(lambda: berth.served_names("api.gone.test") != DEFAULT)
    assert berth.api.call("DELETE", "/v1/apps/tls-gone/domains/api.gone.test").status_code == 200
    wait_for(lambda: berth.served_names("api.gone.test") == DEFAULT)
    assert berth.served_names("www.gone.test") == ["api.gone.test", "www.gone.test"]

    reply = berth.api.call("DELETE", "/v1/apps/tls-gone/certs/www.gone.test")
    assert reply.status_code == 200
    assert reply.json() == {"removed": ["www.gone.test"]}
    wait_for(lambda: berth.served_names("www.gone.test") == DEFAULT)
    assert berth.api.call("GET", "/v1/apps/tls-gone/certs").json() == []
    reply = berth.api.call("DELETE", "/v1/apps/tls-gone/certs/www.gone.test")
    assert reply.status_code == 404


def test_the_key_is_sealed_in_zookeeper(berth: Berth, ca: TestCA) -> None:
    berth.app("tls-seal", "www.seal.test")
    pair = ca.issue("www.seal.test")
    berth.add_cert("tls-seal", pair)
    zk = KazooClient(hosts=f"{berth.zk.hosts}{berth.chroot}")
    zk.start()
    try:
        raw, _ = zk.get("/certs/www.seal.test")
    finally:
        zk.stop()
        zk.close()
    record = json.loads(raw)
    assert record["key"].startswith("v1:")
    assert "PRIVATE KEY" not in raw.decode()
    assert pair.key.splitlines()[1] not in raw.decode()
    assert record["cert"].startswith("-----BEGIN CERTIFICATE-----")


def test_cli_certs_commands(berth: Berth, ca: TestCA, tmp_path: Path) -> None:
    berth.app("tls-cli", "www.cli.test")
    pair = ca.issue("www.cli.test")
    (tmp_path / "cert.pem").write_text(pair.cert)
    (tmp_path / "key.pem").write_text(pair.key)
    env = {"BERTH_URL": berth.api.url, "BERTH_TOKEN": berth.api.token, "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "berth.cli", *args, "-a", "tls-cli"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    added = cli("certs:add", str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))
    assert added.returncode == 0, added.stderr
    assert "Added a certificate for www.cli.test to tls-cli" in added.stdout
    listed = cli("certs", "--json")
    assert [c["hostnames"] for c in json.loads(listed.stdout)] == [["www.cli.test"]]
    assert "www.cli.test" in cli("certs").stdout
    wrong = cli("certs:add", str(tmp_path / "cert.pem"), str(tmp_path / "cert.pem"))
    assert wrong.returncode == 1
    assert "not a PEM private key" in wrong.stderr
    removed = cli("certs:remove", "www.cli.test")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(cli("certs", "--json").stdout) == []


class SniAdapter(requests.adapters.HTTPAdapter):
    """Connects to the URL's address but sends (and checks the certificate for) `name`."""

    def __init__(self, name: str) -> None:
        self._name = name
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["server_hostname"] = self._name
        super().init_poolmanager(*args, **kwargs)


def test_certificate_changes_drop_no_https_request(
    berth: Berth, ca: TestCA, tmp_path: Path
) -> None:
    """Certificates load on seamless reloads: clients on keep-alive HTTPS connections see no
    error while certificates are added, replaced and removed."""
    berth.app("tls-load", "www.load.test", "api.load.test")
    first = berth.add_cert("tls-load", ca.issue("www.load.test"))
    wait_for(lambda: berth.served_names("www.load.test") == ["www.load.test"])
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca.pem)
    stop = threading.Event()
    lock = threading.Lock()
    ok: list[int] = [0]
    failures: list[str] = []

    def client() -> None:
        with requests.Session() as session:
            session.mount("https://", SniAdapter("www.load.test"))
            while not stop.is_set():
                try:
                    reply = session.get(
                        f"https://127.0.0.1:{berth.router.https_port}/",
                        headers={"Host": "www.load.test"},
                        verify=str(ca_file),
                        timeout=10,
                    )
                    outcome = None if reply.status_code == 200 else str(reply.status_code)
                except requests.RequestException as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                with lock:
                    if outcome is None:
                        ok[0] += 1
                    else:
                        failures.append(outcome)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: ok[0] >= 50)
        berth.add_cert("tls-load", ca.issue("api.load.test"))  # added
        wait_for(lambda: berth.served_names("api.load.test") == ["api.load.test"])
        second = berth.add_cert("tls-load", ca.issue("www.load.test"))  # replaced
        assert second["fingerprint"] != first["fingerprint"]
        wait_for(
            lambda: (
                berth.handshake("www.load.test")[0].fingerprint(hashes.SHA256()).hex()
                == second["fingerprint"]
            )
        )
        reply = berth.api.call("DELETE", "/v1/apps/tls-load/certs/api.load.test")  # removed
        assert reply.status_code == 200
        wait_for(lambda: berth.served_names("api.load.test") == DEFAULT)
        before = ok[0]
        wait_for(lambda: ok[0] >= before + 50)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert failures == []
    assert "certificates changed" in (berth.root / "router.log").read_text()


# -- bad input: a 422 that says what is wrong, and nothing stored ------------------------------


@pytest.fixture
def app_api(api: Api) -> Api:
    assert api.call("POST", "/v1/apps", json={"name": "tls-bad"}).status_code == 201
    reply = api.call("POST", "/v1/apps/tls-bad/domains", json={"hostname": "www.bad.test"})
    assert reply.status_code == 201
    return api


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("mismatched key", "does not match the certificate"),
        ("expired", "expired on"),
        ("unknown domain", "which app tls-bad does not have: add it first"),
        ("another app's name", "tls-other.localhost, which app tls-bad does not have"),
        ("wildcard for an exact domain", "*.bad.test, which app tls-bad does not have"),
        ("not PEM", "not a PEM certificate"),
        ("missing key", 'give {"certificate"'),
    ],
)
def test_bad_certificates_are_refused_and_nothing_is_stored(
    app_api: Api, ca: TestCA, case: str, message: str
) -> None:
    from datetime import UTC, datetime, timedelta

    good = ca.issue("www.bad.test")
    body: dict[str, Any] = {"certificate": good.cert, "private_key": good.key}
    if case == "mismatched key":
        body["private_key"] = ca.issue("www.bad.test").key
    elif case == "expired":
        old = ca.issue("www.bad.test", start=datetime.now(UTC) - timedelta(days=90), days=30)
        body = {"certificate": old.cert, "private_key": old.key}
    elif case == "unknown domain":
        other = ca.issue("www.bad.test", "www.elsewhere.test")
        body = {"certificate": other.cert, "private_key": other.key}
    elif case == "another app's name":
        other = ca.issue("tls-other.localhost")
        body = {"certificate": other.cert, "private_key": other.key}
    elif case == "wildcard for an exact domain":
        other = ca.issue("*.bad.test")
        body = {"certificate": other.cert, "private_key": other.key}
    elif case == "not PEM":
        body["certificate"] = "this is not a certificate"
    elif case == "missing key":
        del body["private_key"]
    reply = app_api.call("POST", "/v1/apps/tls-bad/certs", json=body)
    assert reply.status_code == 422, reply.text
    assert message in reply.json()["error"]["message"]
    assert app_api.call("GET", "/v1/apps/tls-bad/certs").json() == []


def test_certs_of_an_unknown_app_are_404(api: Api, ca: TestCA) -> None:
    pair = ca.issue("www.nobody.test")
    reply = api.call(
        "POST", "/v1/apps/nobody/certs", json={"certificate": pair.cert, "private_key": pair.key}
    )
    assert reply.status_code == 404
    assert api.call("GET", "/v1/apps/nobody/certs").status_code == 404


def test_destroying_an_app_removes_its_certificates(
    app_api: Api, ca: TestCA, zookeeper: ZooKeeper, chroot: str
) -> None:
    pair = ca.issue("www.bad.test")
    body = {"certificate": pair.cert, "private_key": pair.key}
    assert app_api.call("POST", "/v1/apps/tls-bad/certs", json=body).status_code == 201
    store = Store(zookeeper.hosts, chroot, None)
    store.start()
    try:
        assert [c.name for c in store.all_certs()] == ["www.bad.test"]
        assert app_api.call("DELETE", "/v1/apps/tls-bad").status_code == 200
        assert store.all_certs() == []
    finally:
        store.stop()


def test_an_https_only_app_redirects_plain_http(berth: Berth, ca: TestCA) -> None:
    """`routing:set https-only=on`: plain HTTP gets a 308 to the same host and path over
    HTTPS (the router's HTTPS port: it is not 443 here), which then serves; other apps and
    HTTPS requests are untouched."""
    berth.app("tls-strict", "strict.example.test")
    berth.app("tls-lax")
    berth.add_cert("tls-strict", ca.issue("strict.example.test"))
    reply = berth.api.call("PATCH", "/v1/apps/tls-strict/routing", json={"https_only": "on"})
    assert reply.json() == {"timeout": None, "https_only": True}, reply.text
    http = f"http://127.0.0.1:{berth.router.port}"

    def redirected() -> requests.Response | None:
        got = requests.get(
            f"{http}/a/b?c=1",
            headers={"Host": "strict.example.test"},
            allow_redirects=False,
            timeout=10,
        )
        return got if got.status_code == 308 else None

    moved = wait_for(redirected)
    port = berth.router.https_port
    assert moved.headers["Location"] == f"https://strict.example.test:{port}/a/b?c=1"
    lax = requests.get(f"{http}/", headers={"Host": "tls-lax.localhost"}, timeout=10)
    assert lax.status_code == 200
    context = ssl.create_default_context(cadata=ca.pem)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="strict.example.test") as tls,
    ):
        tls.sendall(
            b"GET /a/b?c=1 HTTP/1.1\r\nHost: strict.example.test\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"x-forwarded-proto": "https"' in answer
