"""TCP routes end to end, every part real: ZooKeeper, `berth api`, `berth framework` in local
mode with its executors and Docker containers, `berth router` with its HAProxy. The app's `db`
process is a TCP echo (busybox `nc -ll -e cat`), so what a client gets back through the router
is exactly what the backend received: the PROXY protocol header HAProxy sent, then the
payload. And `--accept-proxy`: the router takes the client's address from an upstream load
balancer's PROXY header."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests
from click.testing import CliRunner

from berth.cli.main import cli
from berth.framework.model import TERMINAL_STATES
from tests.conftest import Api
from tests.support import waiting
from tests.support.server import SplitHarness, remove_containers, running
from tests.support.services import ZooKeeper, free_port

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.zookeeper, pytest.mark.haproxy]

APP = "tcp-echo"
ECHO = 'exec busybox nc -ll -p "$PORT" -e cat'
# A CGI script that answers with the request headers the app received (busybox httpd passes
# each as HTTP_<NAME>).
HEADERS = (
    "mkdir -p /tmp/www/cgi-bin && "
    "printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nenv\\n' >/tmp/www/cgi-bin/env && "
    "chmod +x /tmp/www/cgi-bin/env && "
    'exec httpd -f -p "$PORT" -h /tmp/www'
)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def wait_for(what: Callable[[], Any], timeout: float = 60.0) -> Any:
    return waiting.wait_for(what, timeout, interval=0.2)


class Berth(SplitHarness):
    """`berth api`, `berth framework` running tasks on ports 31400-31449, and `berth router`
    (with `--accept-proxy` if `accept_proxy`), in the test's chroot."""

    def __init__(self, zk: ZooKeeper, chroot: str, root: Path, accept_proxy: bool) -> None:
        router_args = ("--accept-proxy",) if accept_proxy else ()
        super().__init__(zk, chroot, root, "31400-31449", router_args=router_args)

    def deploy(self, image: str, process_types: dict[str, str], formation: dict[str, int]) -> None:
        self.create_app(APP)
        reply = self.api.call(
            "POST", f"/v1/apps/{APP}/deploy", json={"image": image, "process_types": process_types}
        )
        assert reply.status_code == 201, reply.text
        reply = self.api.call("PATCH", f"/v1/apps/{APP}/formation", json=formation)
        assert reply.status_code == 200, reply.text

        def running() -> bool:
            tasks = self.api.call("GET", f"/v1/apps/{APP}/ps").json()["tasks"]
            live = [t for t in tasks if t["state"] not in TERMINAL_STATES]
            up = [t for t in live if t["state"] == "running" and t["healthy"] is not False]
            wanted = sum(formation.values())
            return len(up) == len(live) == wanted

        wait_for(running, 90)

    def add_route(self, port: int, proxy: str | None) -> dict[str, Any]:
        body = {"type": "tcp", "port": port, "process": "db", "proxy_protocol": proxy}
        reply = self.api.call("POST", f"/v1/apps/{APP}/routes", json=body)
        assert reply.status_code == 201, reply.text
        route: dict[str, Any] = reply.json()
        return route


def start_berth(
    zk: ZooKeeper, chroot: str, root: Path, docker_client: docker.DockerClient, accept: bool
) -> Iterator[Berth]:
    yield from running(Berth(zk, chroot, root, accept))
    remove_containers(docker_client, APP)


@pytest.fixture
def berth(
    zookeeper: ZooKeeper,
    chroot: str,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    test_image: str,
) -> Iterator[Berth]:
    yield from start_berth(zookeeper, chroot, tmp_path, docker_client, accept=False)


@pytest.fixture
def proxied_berth(
    zookeeper: ZooKeeper,
    chroot: str,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    test_image: str,
) -> Iterator[Berth]:
    yield from start_berth(zookeeper, chroot, tmp_path, docker_client, accept=True)


def exchange(port: int, payload: bytes, limit: int) -> tuple[bytes, tuple[str, int]]:
    """Connects to the router's `port`, sends `payload`, and reads until the answer ends with
    it (or is `limit` bytes long, or the connection ends); returns what came back and the
    client socket's own address."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        client = sock.getsockname()
        sock.sendall(payload)
        data = b""
        while not data.endswith(payload) and len(data) < limit:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data, (client[0], client[1])


def echoed(port: int, payload: bytes, header_max: int = 0) -> tuple[bytes, tuple[str, int]] | None:
    """The echo through the route once it works: None while the route is not live yet (the
    router has not bound the port, or has no server for it, or the app is not listening)."""
    try:
        data, client = exchange(port, payload, header_max + len(payload))
    except OSError:
        return None
    if not data.endswith(payload):
        return None
    return data, client


def parse_v2(data: bytes) -> tuple[str, int, str, int, bytes]:
    """A PROXY v2 header (TCP over IPv4) → source, source port, destination, its port, rest."""
    assert data[:12] == V2_SIGNATURE
    version_command, family, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    assert version_command == 0x21  # version 2, PROXY (not LOCAL)
    assert family == 0x11  # TCP over IPv4
    body, rest = data[16 : 16 + length], data[16 + length :]
    src, dst = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
    src_port, dst_port = struct.unpack("!HH", body[8:12])
    return str(src), src_port, str(dst), dst_port, rest


def test_tcp_routes_reach_the_process_with_proxy_v1_and_v2_headers(
    berth: Berth, test_image: str
) -> None:
    berth.deploy(test_image, {"web": HEADERS, "db": ECHO}, {"web": 0, "db": 1})
    plain, v1, v2 = free_port(), free_port(), free_port()
    assert berth.add_route(plain, None)["id"] == f"tcp:{plain}"
    berth.add_route(v1, "v1")
    berth.add_route(v2, "v2")

    # no PROXY header: the backend gets the client's bytes and nothing else
    payload = b"hello through a plain route\n"
    data, _ = wait_for(lambda: echoed(plain, payload), 60)
    assert data == payload

    # v1: one text line naming the client socket and the router's port, then the payload
    payload = b"hello through v1\n"
    data, (host, port) = wait_for(lambda: echoed(v1, payload, 108), 60)
    assert data == f"PROXY TCP4 {host} 127.0.0.1 {port} {v1}\r\n".encode() + payload

    # v2: the binary header, parsed, then the payload
    payload = b"hello through v2\n"
    data, (host, port) = wait_for(lambda: echoed(v2, payload, 28), 60)
    src, src_port, dst, dst_port, rest = parse_v2(data)
    assert (src, src_port, dst, dst_port) == (host, port, "127.0.0.1", v2)
    assert rest == payload

    # listed, with the app's HTTP route first
    listed = berth.api.call("GET", f"/v1/apps/{APP}/routes").json()
    assert [r["id"] for r in listed] == [
        f"http:{APP}.localhost",
        *(f"tcp:{p}" for p in sorted((plain, v1, v2))),
    ]
    assert {r["port"]: r["proxy_protocol"] for r in listed if r["type"] == "tcp"} == {
        plain: None,
        v1: "v1",
        v2: "v2",
    }

    # removed: the router stops listening on the port
    reply = berth.api.call("DELETE", f"/v1/apps/{APP}/routes/tcp/{v1}")
    assert reply.status_code == 200, reply.text
    assert reply.json()["removed"] == f"tcp:{v1}"

    def closed() -> bool:
        try:
            socket.create_connection(("127.0.0.1", v1), timeout=2).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_for(closed, 30)
    # the other routes still echo
    data, _ = wait_for(lambda: echoed(v2, b"still here\n", 28), 10)
    assert parse_v2(data)[4] == b"still here\n"


def test_a_route_on_a_port_the_router_cannot_bind_is_skipped_not_fatal(
    berth: Berth, test_image: str
) -> None:
    berth.deploy(test_image, {"web": HEADERS, "db": ECHO}, {"web": 0, "db": 1})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        berth.add_route(busy, None)  # another program holds this port
        berth.add_route(berth.router.port, None)  # the router's own HTTP port
        good = free_port()
        berth.add_route(good, None)
        # the good route is served although the other two cannot be
        data, _ = wait_for(lambda: echoed(good, b"served\n"), 60)
        assert data == b"served\n"
        log = berth.router.log_path.read_text()
        assert f"tcp route {busy} of app {APP} not served: cannot bind port {busy}" in log
        http = berth.router.port
        assert f"tcp route {http} of app {APP} not served: it is the router's HTTP port" in log
        # and HTTP still answers there (404: no app at that host)
        reply = requests.get(berth.router.url, headers={"Host": "nothing.localhost"}, timeout=10)
        assert reply.status_code == 404
    # once the port is free, the next round serves the route
    data, _ = wait_for(lambda: echoed(busy, b"late\n"), 30)
    assert data == b"late\n"


def test_bad_routes_are_refused_and_nothing_is_stored(berth: Berth, test_image: str) -> None:
    berth.deploy(test_image, {"web": HEADERS, "db": ECHO}, {"web": 0, "db": 0})
    port = free_port()

    def post(body: dict[str, Any], app: str = APP) -> requests.Response:
        return berth.api.call("POST", f"/v1/apps/{app}/routes", json=body)

    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"type": "tcp", "port": 80, "process": "db"}, 422, "out of range"),
        ({"type": "tcp", "port": 70000, "process": "db"}, 422, "out of range"),
        ({"type": "tcp", "port": "x", "process": "db"}, 422, "whole number"),
        ({"type": "tcp", "port": port, "process": "worker"}, 422, "no process type 'worker'"),
        ({"type": "tcp", "port": port, "process": "Bad Name"}, 422, "invalid process type"),
        ({"type": "tcp", "port": port, "process": "db", "proxy_protocol": "v3"}, 422, "v1 or v2"),
        ({"type": "udp", "port": port, "process": "db"}, 422, "must be tcp"),
        ({"type": "http", "port": port, "process": "db"}, 422, "domains:add"),
        ({"type": "tcp", "process": "db"}, 422, "port is missing"),
        ({"type": "tcp", "port": port, "process": "db", "tls": True}, 422, "unknown field"),
        (
            {"type": "tcp", "port": berth.api_server.port, "process": "db"},
            422,
            "API's own port",
        ),
    ]
    for body, status, message in cases:
        reply = post(body)
        assert reply.status_code == status, (body, reply.text)
        assert message in reply.json()["error"]["message"], (body, reply.text)
    assert post({"port": port, "process": "db"}, app="no-such-app").status_code == 404
    listed = berth.api.call("GET", f"/v1/apps/{APP}/routes").json()
    assert [r["type"] for r in listed] == ["http"]  # nothing stored

    # a port belongs to one route in the whole Berth
    berth.add_route(port, "v1")
    again = post({"port": port, "process": "db"})
    assert again.status_code == 409
    assert "already has a TCP route" in again.json()["error"]["message"]
    assert berth.api.call("POST", "/v1/apps", json={"name": "tcp-other"}).status_code == 201
    other = post({"port": port, "process": "db"}, app="tcp-other")
    assert other.status_code == 409
    assert f"already routed to app {APP}" in other.json()["error"]["message"]
    gone = berth.api.call("DELETE", f"/v1/apps/tcp-other/routes/tcp/{port}")
    assert gone.status_code == 404  # another app's route is not touched
    assert berth.api.call("DELETE", f"/v1/apps/{APP}/routes/tcp/80").status_code == 422

    # destroying the app frees its ports
    assert berth.api.call("DELETE", f"/v1/apps/{APP}").status_code == 200
    taken = post({"port": port, "process": "db"}, app="tcp-other")
    assert taken.status_code == 201, taken.text
    berth.api.call("DELETE", "/v1/apps/tcp-other")


def send_proxy_v1(port: int, source: str, request: bytes, until: bytes = b"") -> bytes:
    """What comes back for `request` sent after a PROXY v1 header (as a load balancer would),
    read until the connection ends, or until the answer ends with `until`."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"PROXY TCP4 {source} 127.0.0.1 40000 {port}\r\n".encode() + request)
        data = b""
        while not (until and data.endswith(until)) and (chunk := sock.recv(65536)):
            data += chunk
    return data


def test_accept_proxy_takes_the_client_address_from_the_load_balancer(
    proxied_berth: Berth, test_image: str
) -> None:
    berth = proxied_berth
    berth.deploy(test_image, {"web": HEADERS, "db": ECHO}, {"web": 1, "db": 1})
    request = (
        f"GET /cgi-bin/env HTTP/1.1\r\nHost: {APP}.localhost\r\n"
        "X-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n"
    ).encode()

    def answer() -> bytes | None:
        try:
            data = send_proxy_v1(berth.router.port, "203.0.113.7", request)
        except OSError:
            return None
        return data if data.startswith(b"HTTP/1.1 200") else None

    data = wait_for(answer, 60)
    # the load balancer's word for the client, not the spoofed header nor 127.0.0.1
    assert b"HTTP_X_FORWARDED_FOR=203.0.113.7\n" in data
    assert b"6.6.6.6" not in data

    # without the header the connection is refused: HAProxy closes it without an answer
    with socket.create_connection(("127.0.0.1", berth.router.port), timeout=10) as sock:
        sock.sendall(request)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(65536) == b""

    # a TCP route takes the load balancer's header too, and passes the client on (v2 here)
    port = free_port()
    berth.add_route(port, "v2")

    def through_route() -> bytes | None:
        try:
            data = send_proxy_v1(port, "198.51.100.9", b"proxied payload\n", b"payload\n")
        except OSError:
            return None
        return data if data.endswith(b"proxied payload\n") else None

    data = wait_for(through_route, 60)
    src, src_port, _, dst_port, rest = parse_v2(data)
    assert (src, src_port, dst_port) == ("198.51.100.9", 40000, port)
    assert rest == b"proxied payload\n"


def test_the_cli_adds_lists_and_removes_tcp_routes(api: Api, tmp_path: Path) -> None:
    """`berth routes*` against a real API (no router needed to store routes)."""
    env = {"XDG_CONFIG_HOME": str(tmp_path), "BERTH_URL": api.url, "BERTH_TOKEN": api.token}

    def berth(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(cli, [*args, "-a", "tcp-cli"], env=env)
        assert result.exit_code == code, (args, result.output)
        return result.output

    assert api.call("POST", "/v1/apps", json={"name": "tcp-cli"}).status_code == 201
    port = free_port()
    out = berth(
        "routes:add", "tcp", "--port", str(port), "--process", "db", "--proxy-protocol", "v2"
    )
    assert out == f"Routed port {port} to tcp-cli db, with a PROXY v2 header (tcp:{port})\n"
    table = berth("routes")
    assert f"tcp:{port}" in table
    assert "PROXY v2" in table
    assert "http:tcp-cli.localhost" in table
    listed = json.loads(berth("routes", "--json"))
    assert [r["id"] for r in listed] == ["http:tcp-cli.localhost", f"tcp:{port}"]
    # the API's words for bad input, one line, exit 1
    out = berth("routes:add", "tcp", "--port", "80", "--process", "db", code=1)
    assert "port 80 is out of range" in out
    out = berth("routes:add", "tcp", "--port", str(port), "--process", "db", code=1)
    assert "already has a TCP route" in out
    assert berth("routes:remove", f"tcp:{port}") == f"Removed tcp:{port} from tcp-cli\n"
    out = berth("routes:remove", "tcp", "--port", str(port), code=1)
    assert f"has no TCP route on port {port}" in out
    assert [r["type"] for r in json.loads(berth("routes", "--json"))] == ["http"]
