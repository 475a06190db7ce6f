"""The router's data plane against a real HAProxy on loopback: rendered configs, the runtime
API and the process manager, with tiny Python HTTP servers standing for apps' web processes
(each answers with its own name). No ZooKeeper and no controller: tests drive
berth.router.haproxy directly, the way the controller does."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from berth.framework.model import Task
from berth.router import table as routes
from berth.router.haproxy import (
    ConfigError,
    HAProxy,
    ProcessError,
    RouterConfig,
    Runtime,
    RuntimeApiError,
    render,
    render_maps,
    validate,
    write_atomically,
    write_pages,
)
from berth.router.table import Server, Table
from tests.conftest import need
from tests.support import waiting
from tests.support.services import free_port

pytestmark = pytest.mark.haproxy

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def wait_for(what: Callable[[], Any], timeout: float = 15.0) -> Any:
    return waiting.wait_for(what, timeout, interval=0.05)


# -- apps -------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every handler thread

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection HAProxy closed (after a timeout, a reload, a drain) is no news."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class App:
    """One web process: GET / answers its name; /headers the request's headers as JSON;
    /hold waits until `release` is set; /close drops the connection without answering."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.holding = threading.Event()  # a /hold request arrived
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stopped = False
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10  # an idle keep-alive connection from HAProxy ends this thread

            def setup(self) -> None:
                super().setup()
                with app._lock:
                    app._connections.add(self.connection)

            def finish(self) -> None:
                with app._lock:
                    app._connections.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.do_GET()

            def do_GET(self) -> None:
                if self.path == "/close":
                    self.close_connection = True
                    return
                if self.path == "/hold":
                    app.holding.set()
                    app.release.wait(30)
                if self.path == "/headers":
                    body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
                else:
                    body = app.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name=f"app-{name}"
        )
        self._thread.start()

    def stop(self) -> None:
        """Stops like a process that dies: the port refuses, open connections are cut."""
        if self._stopped:
            return
        self._stopped = True
        self.release.set()
        self._server.shutdown()
        self._server.socket.close()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join()

    def server(self, app: str, draining: bool = False) -> Server:
        task_id = f"{app}.web.1.v1.{self.name}"
        return Server(routes.server_name(task_id), "127.0.0.1", self.port, task_id, draining)


def task(app: str, process: App, state: str = "running") -> Task:
    return Task(
        id=f"{app}.web.1.v1.{process.name}",
        app=app,
        process="web",
        index=1,
        release=1,
        state=state,
        hostname="127.0.0.1",
        port=process.port,
    )


def table(
    apps: dict[str, list[App]],
    domains: dict[str, str] | None = None,
    *,
    draining: tuple[App, ...] = (),
) -> Table:
    tasks = [
        task(app, p, "killing" if p in draining else "running")
        for app, ps in apps.items()
        for p in ps
    ]
    return routes.build(apps, tasks, domains or {}, "localhost")


@pytest.fixture
def make_app() -> Iterator[Callable[[str], App]]:
    started: list[App] = []

    def make(name: str) -> App:
        app = App(name)
        started.append(app)
        return app

    yield make
    for app in started:
        app.stop()


# -- the router -------------------------------------------------------------------------------


class Router:
    def __init__(self, config: RouterConfig, binary: str, log: Path) -> None:
        self.config = config
        self.binary = binary
        self.haproxy = HAProxy(config, binary, output=log)
        self.runtime = Runtime(config.admin_socket)
        self.url = f"http://{config.http_addr}"
        self.port = int(config.http_addr.rsplit(":", 1)[1])

    def apply(self, wanted: Table) -> None:
        """What the controller does for a structural change: files, check, start or reload."""
        write_pages(self.config, wanted)
        for name, text in render_maps(wanted).items():
            write_atomically(self.config.run_dir / name, text)
        write_atomically(self.config.config_path, render(wanted, self.config))
        validate(self.config.config_path, self.binary, strict=True)
        if self.haproxy.running():
            self.haproxy.reload()
        else:
            self.haproxy.start()

    def get(self, host: str, path: str = "/", **kwargs: Any) -> requests.Response:
        headers = {"Host": host, **kwargs.pop("headers", {})}
        return requests.get(f"{self.url}{path}", headers=headers, timeout=20, **kwargs)

    def page(self, host: str, path: str = "/") -> str:
        reply = self.get(host, path)
        return f"{reply.status_code} {reply.text}"

    def workers(self) -> tuple[int, ...]:
        return self.haproxy.processes().workers

    def raw(self, request: bytes) -> bytes:
        """Sends bytes as they are; returns the answer up to the server's close."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture(scope="session")
def haproxy_binary() -> str:
    need(HAPROXY is not None, "HAProxy (Debian package haproxy)")
    assert HAPROXY is not None
    return HAPROXY


@pytest.fixture
def make_router(
    haproxy_binary: str, tmp_path: Path, make_app: Callable[[str], App]
) -> Iterator[Callable[..., Router]]:
    """Routers with their own run directory and port; stopped before the apps (make_app is
    set up first, so torn down last)."""
    made: list[Router] = []

    def make(**overrides: Any) -> Router:
        run_dir = tmp_path / f"run{len(made)}"
        run_dir.mkdir(mode=0o700)
        config = RouterConfig(http_addr=f"127.0.0.1:{free_port()}", run_dir=run_dir, **overrides)
        router = Router(config, haproxy_binary, tmp_path / f"haproxy{len(made)}.log")
        made.append(router)
        return router

    yield make
    for router in made:
        router.haproxy.stop()


# -- routing ----------------------------------------------------------------------------------


def test_routes_by_host_and_explains_errors(
    make_router: Callable[..., Router], make_app: Callable[[str], App]
) -> None:
    one, two = make_app("one-a"), make_app("two-a")
    router = make_router()
    router.apply(
        table(
            {"one": [one], "two": [two], "idle": []},
            {"www.one.test": "one", "*.two.test": "two", "*.deep.two.test": "one"},
        )
    )
    assert router.page("one.localhost") == "200 one-a"
    assert router.page("TWO.localhost:8080") == "200 two-a"  # case and port ignored
    assert router.page("www.one.test") == "200 one-a"
    assert router.page("a.b.two.test") == "200 two-a"
    assert router.page("x.deep.two.test") == "200 one-a"  # the most specific wildcard wins

    for host in ("two.test", "nothing.localhost", "one.localhost.evil"):
        reply = router.get(host)
        assert reply.status_code == 404, host
        assert "no app" in reply.text.lower()
    no_host = router.raw(b"GET / HTTP/1.0\r\n\r\n")
    assert no_host.startswith(b"HTTP/1.1 404 ")

    reply = router.get("idle.localhost")  # an app without any web process
    assert reply.status_code == 503
    assert "no web process" in reply.text.lower()
    assert reply.headers["Content-Type"].startswith("text/html")


def test_servers_come_and_go_through_the_runtime_api_without_a_reload(
    make_router: Callable[..., Router], make_app: Callable[[str], App]
) -> None:
    a, b = make_app("a"), make_app("b")
    router = make_router()
    router.apply(table({"one": [a]}))
    workers = router.workers()

    router.runtime.add_server("app_one", b.server("one"))
    assert {router.page("one.localhost") for _ in range(10)} == {"200 a", "200 b"}
    state = router.runtime.servers("app_one")[b.server("one").name]
    assert (state.operational, state.maint, state.drain, state.port) == ("up", False, False, b.port)

    assert router.runtime.remove_server("app_one", a.server("one").name)
    assert {router.page("one.localhost") for _ in range(10)} == {"200 b"}
    assert set(router.runtime.servers("app_one")) == {b.server("one").name}
    assert router.runtime.remove_server("app_one", "no-such-server")  # already gone is gone
    assert router.workers() == workers  # no reload happened


def test_a_process_that_dies_fails_no_request_and_is_marked_down(
    make_router: Callable[..., Router], make_app: Callable[[str], App]
) -> None:
    a, b = make_app("a"), make_app("b")
    router = make_router()
    router.apply(table({"one": [a, b]}))
    assert {router.page("one.localhost") for _ in range(6)} == {"200 a", "200 b"}
    a.stop()
    answers = set()
    for n in range(20):
        if n % 2:
            reply = router.get("one.localhost")
        else:  # not idempotent, so retried only where nothing was sent: a refused connection
            reply = requests.post(
                f"{router.url}/", data=b"x", headers={"Host": "one.localhost"}, timeout=20
            )
        answers.add(f"{reply.status_code} {reply.text}")
    assert answers == {"200 b"}
    dead = a.server("one").name
    wait_for(lambda: router.runtime.servers("app_one")[dead].operational == "down")


def test_a_draining_server_finishes_its_requests_and_is_removed_after(
    make_router: Callable[..., Router], make_app: Callable[[str], App]
) -> None:
    old, new = make_app("old"), make_app("new")
    router = make_router()
    router.apply(table({"one": [old]}))
    workers = router.workers()

    slow: list[requests.Response] = []
    client = threading.Thread(target=lambda: slow.append(router.get("one.localhost", "/hold")))
    client.start()
    try:
        assert old.holding.wait(10)
        router.runtime.add_server("app_one", new.server("one"))
        router.runtime.drain("app_one", old.server("one").name)
        assert router.runtime.servers("app_one")[old.server("one").name].drain
        assert {router.page("one.localhost") for _ in range(10)} == {"200 new"}
        # a request is still in flight: the server stays (in maintenance) for now
        assert router.runtime.remove_server("app_one", old.server("one").name) is False
        assert {router.page("one.localhost") for _ in range(4)} == {"200 new"}
    finally:
        old.release.set()
        client.join(30)
    assert [(r.status_code, r.text) for r in slow] == [(200, "old")]
    wait_for(lambda: router.runtime.remove_server("app_one", old.server("one").name))
    assert set(router.runtime.servers("app_one")) == {new.server("one").name}
    assert router.workers() == workers


def test_adding_a_server_still_there_puts_it_back_into_service(
    make_router: Callable[..., Router], make_app: Callable[[str], App]
) -> None:
    a = make_app("a")
    router = make_router()
    router.apply(table({"one": []}))
    by_name = dataclasses.replace(a.server("one"), address="localhost")  # resolved on the way
    router.runtime.add_server("app_one", by_name)
    assert router.runtime.servers("app_one")[by_name.name].address == "127.0.0.1"

    held: list[requests.Response] = []
    client = threading.Thread(target=lambda: held.append(router.get("one.localhost", "/hold")))
    client.start()
    try:
        assert a.holding.wait(10)
        assert router.runtime.remove_server("app_one", by_name.name) is False
        assert router.get("one.localhost").status_code == 503  # in maintenance
        router.runtime.add_server("app_one", by_name)  # the task serves after all
        assert router.page("one.localhost") == "200 a"
        moved = dataclasses.replace(by_name, port=by_name.port + 1)
        with pytest.raises(RuntimeApiError, match="another address"):
            router.runtime.add_server("app_one", moved)
    finally:
        a.release.set()
        client.join(30)
    assert [r.status_code for r in held] == [200]


def test_ready_undoes_a_drain_and_a_rendered_weight_of_zero(
    make_router: Callable[..., Router], make_app: Callable[[str], App]
) -> None:
    a, b = make_app("a"), make_app("b")
    router = make_router()
    router.apply(table({"one": [a, b]}, draining=(b,)))  # b comes up draining after a reload
    assert router.runtime.servers("app_one")[b.server("one").name].weight == 0
    assert {router.page("one.localhost") for _ in range(6)} == {"200 a"}
    router.runtime.ready("app_one", b.server("one").name)
    assert {router.page("one.localhost") for _ in range(6)} == {"200 a", "200 b"}
    router.runtime.drain("app_one", a.server("one").name)
    assert {router.page("one.localhost") for _ in range(6)} == {"200 b"}
    router.runtime.ready("app_one", a.server("one").name)
    assert {router.page("one.localhost") for _ in range(6)} == {"200 a", "200 b"}


def test_a_server_added_draining_takes_no_requests(
    make_router: Callable[..., Router], make_app: Callable[[str], App]
) -> None:
    a, b = make_app("a"), make_app("b")
    router = make_router()
    router.apply(table({"one": [a]}))
    router.runtime.add_server("app_one", b.server("one", draining=True))
    assert {router.page("one.localhost") for _ in range(6)} == {"200 a"}


def test_map_entries_change_routing_live(
    make_router: Callable[..., Router], make_app: Callable[[str], App]
) -> None:
    one, two = make_app("one-a"), make_app("two-a")
    router = make_router()
    router.apply(table({"one": [one], "two": [two]}))
    workers = router.workers()
    hosts, wildcards = router.config.hosts_map, router.config.wildcards_map

    assert router.get("www.new.test").status_code == 404
    router.runtime.set_map(hosts, "www.new.test", "app_two")
    assert router.page("www.new.test") == "200 two-a"
    router.runtime.set_map(hosts, "www.new.test", "app_one")  # replaces, does not add
    assert router.page("www.new.test") == "200 one-a"
    router.runtime.del_map(hosts, "www.new.test")
    assert router.get("www.new.test").status_code == 404
    router.runtime.del_map(hosts, "www.new.test")  # deleting what is gone is fine

    router.runtime.set_map(wildcards, ".wild.test", "app_two")
    assert router.page("x.y.wild.test") == "200 two-a"
    assert router.get("wild.test").status_code == 404  # a wildcard needs a label in front
    router.runtime.set_map(hosts, "one.localhost", "app_two")  # a default host moves too
    assert router.page("one.localhost") == "200 two-a"
    assert router.workers() == workers


# -- reloads and the process ------------------------------------------------------------------


class Load:
    """Clients requesting one host without pause, half on keep-alive connections, half on a
    new connection each time; anything but a 200 from the expected app is a failure."""

    def __init__(self, router: Router, host: str, expect: str, clients: int = 4) -> None:
        self._router, self._host, self._expect = router, host, expect
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self._threads = [
            threading.Thread(target=self._run, args=(n % 2 == 0,), name=f"load-{n}")
            for n in range(clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, keep_alive: bool) -> None:
        headers = {"Host": self._host, **({} if keep_alive else {"Connection": "close"})}
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    reply = session.get(f"{self._router.url}/", headers=headers, timeout=10)
                    outcome = None if reply.text == self._expect else f"{reply.status_code}"
                except requests.RequestException as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    if outcome is None:
                        self.ok += 1
                    else:
                        self.failures.append(outcome)

    def wait_for_requests(self, n: int) -> None:
        start = self.ok
        wait_for(lambda: self.ok - start >= n or self.failures, 30)


def test_a_reload_fails_no_request_and_lets_requests_in_flight_finish(
    make_router: Callable[..., Router], make_app: Callable[[str], App]
) -> None:
    one, two, slow = make_app("one-a"), make_app("two-a"), make_app("slow")
    router = make_router()
    router.apply(table({"one": [one], "slow": [slow]}))
    master = router.haproxy.pid
    first = router.workers()

    held: list[requests.Response] = []
    client = threading.Thread(target=lambda: held.append(router.get("slow.localhost", "/hold")))
    client.start()
    assert slow.holding.wait(10)
    with Load(router, "one.localhost", "one-a") as load:
        load.wait_for_requests(20)
        for n in range(5):
            apps = {"one": [one], "slow": [slow], **({"two": [two]} if n % 2 == 0 else {})}
            router.apply(table(apps))  # an app added or removed: a structural change
            load.wait_for_requests(20)
    slow.release.set()
    client.join(30)

    assert load.failures == [], f"{len(load.failures)} failed of {load.ok + len(load.failures)}"
    assert [(r.status_code, r.text) for r in held] == [(200, "slow")]  # finished by an old worker
    assert router.haproxy.pid == master
    assert not set(router.workers()) & set(first)
    assert router.page("two.localhost") == "200 two-a"


def test_a_config_haproxy_refuses_leaves_the_old_one_serving(
    make_router: Callable[..., Router], make_app: Callable[[str], App]
) -> None:
    one = make_app("one-a")
    router = make_router()
    router.apply(table({"one": [one]}))
    good = router.config.config_path.read_text()
    broken = router.config.run_dir / "broken.cfg"
    broken.write_text(good + "\nbackend oops\n    balance no-such-algorithm\n")
    with pytest.raises(ConfigError, match="balance only supports"):
        validate(broken, router.binary)

    write_atomically(router.config.config_path, broken.read_text())  # as if validation was skipped
    with pytest.raises(ConfigError):
        router.haproxy.reload()
    assert router.page("one.localhost") == "200 one-a"
    write_atomically(router.config.config_path, good)
    router.haproxy.reload()  # and the next good one loads
    assert router.page("one.localhost") == "200 one-a"


def test_a_second_manager_adopts_the_running_haproxy(
    make_router: Callable[..., Router], make_app: Callable[[str], App]
) -> None:
    one = make_app("one-a")
    router = make_router()
    router.apply(table({"one": [one]}))
    pid = router.haproxy.pid

    successor = HAProxy(router.config, router.binary)
    assert successor.adopt()
    assert successor.pid == pid
    successor.start()  # adopts rather than starting a second one
    assert successor.pid == pid
    assert successor.processes().master == pid
    successor.reload()
    assert router.page("one.localhost") == "200 one-a"

    router.haproxy.stop()
    assert not successor.running()
    assert not successor.adopt()
    assert not router.config.pid_file.exists()


def test_start_reports_a_port_in_use(
    make_router: Callable[..., Router], haproxy_binary: str
) -> None:
    router = make_router()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", router.port))
        taken.listen()
        with pytest.raises(ProcessError, match="exited"):
            router.apply(table({}))
    assert not router.haproxy.running()


# -- what clients may not decide --------------------------------------------------------------


def test_forwarding_headers_are_the_router_s_own(
    make_router: Callable[..., Router], make_app: Callable[[str], App]
) -> None:
    one = make_app("one-a")
    router = make_router()
    router.apply(table({"one": [one]}))
    spoofed = {
        "X-Forwarded-For": "6.6.6.6",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Host": "evil.test",
        "Forwarded": "for=6.6.6.6;proto=https",
    }
    seen = router.get("one.localhost", "/headers", headers=spoofed).json()
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-port"] == str(router.port)
    assert "forwarded" not in seen
    assert "x-forwarded-host" not in seen


def test_request_ids_are_kept_when_sane_and_made_otherwise(
    make_router: Callable[..., Router], make_app: Callable[[str], App]
) -> None:
    one = make_app("one-a")
    router = make_router()
    router.apply(table({"one": [one]}))

    def ids(**headers: str) -> tuple[str, str]:
        reply = router.get("one.localhost", "/headers", headers=headers)
        return reply.json()["x-request-id"], reply.headers["X-Request-Id"]

    assert ids(**{"X-Request-Id": "abc-123.x_Y"}) == ("abc-123.x_Y", "abc-123.x_Y")
    generated = {ids()[0] for _ in range(3)}
    assert len(generated) == 3
    for request_id in generated:
        assert re.match(UUID, request_id)
    for insane in ("has space", "x" * 201, "semi;colon", ""):
        seen, answered = ids(**{"X-Request-Id": insane})
        assert seen != insane
        assert seen == answered
    two = router.raw(
        b"GET /headers HTTP/1.1\r\nHost: one.localhost\r\nX-Request-Id: a\r\n"
        b"X-Request-Id: b\r\nConnection: close\r\n\r\n"
    )
    body = json.loads(two.split(b"\r\n\r\n", 1)[1])
    assert body["x-request-id"] not in ("a", "b", "a, b")
    # the pages the router answers itself carry one too
    assert router.get("nothing.localhost").headers["X-Request-Id"]


def test_ambiguous_or_oversized_requests_are_refused(
    make_router: Callable[..., Router], make_app: Callable[[str], App]
) -> None:
    one, two = make_app("one-a"), make_app("two-a")
    router = make_router()
    router.apply(table({"one": [one], "two": [two]}))
    for hosts in (
        b"Host: one.localhost\r\nHost: two.localhost\r\n",
        b"Host: one.localhost, two\r\n",
    ):
        answer = router.raw(b"GET / HTTP/1.1\r\n" + hosts + b"Connection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
        assert b"Bad request" in answer

    big = router.get("one.localhost", headers={"X-Big": "x" * 9000})
    assert big.status_code == 431
    assert "too large" in big.text.lower()
    assert router.get("one.localhost", headers={"X-Big": "x" * 7000}).status_code == 200


def test_a_slow_app_gets_a_504_and_a_broken_one_a_502(
    make_router: Callable[..., Router], make_app: Callable[[str], App]
) -> None:
    one = make_app("one-a")
    router = make_router(timeout_server=1)
    router.apply(table({"one": [one]}))
    try:
        reply = router.get("one.localhost", "/hold")
    finally:
        one.release.set()
    assert reply.status_code == 504
    assert "did not start answering within 1 second" in reply.text

    broken = router.get("one.localhost", "/close")
    assert broken.status_code == 502
    assert "closed the connection" in broken.text
    assert router.page("one.localhost") == "200 one-a"  # a bad answer does not eject a server


# -- websockets and server-sent events ----------------------------------------------------------


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _ws_accept(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 section 4.2.2)."""
    digest = hashlib.sha1(key.encode() + WS_GUID, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


def _read_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed before the end of the head")
        head += chunk
    return head


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed mid-frame")
        data += chunk
    return data


def _ws_frame(payload: bytes, *, masked: bool, opcode: int = 1) -> bytes:
    """One final frame (payloads under 126 bytes, which is all these tests send)."""
    assert len(payload) < 126
    mask = os.urandom(4) if masked else b""
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if masked else payload
    return bytes([0x80 | opcode, (0x80 if masked else 0) | len(payload)]) + mask + body


def _ws_read(sock: socket.socket) -> tuple[int, bool, bytes]:
    """(opcode, masked, payload) of one frame."""
    first, second = _recv_exactly(sock, 2)
    length = second & 0x7F
    assert length < 126
    mask = _recv_exactly(sock, 4) if second & 0x80 else b""
    payload = _recv_exactly(sock, length)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return first & 0x0F, bool(mask), payload


class StreamApp:
    """A web process on a raw socket: `/ws` is a websocket echo (RFC 6455 handshake, unmasks
    the client's frames and answers unmasked), `/events` a server-sent event stream that sends
    event n+1 only once the test sets `more[n]`."""

    def __init__(self) -> None:
        self.more = [threading.Event() for _ in range(3)]
        self.headers: dict[str, str] = {}
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="stream-app", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, ConnectionError):
            head = _read_head(conn).decode("latin-1")
            lines = head.split("\r\n")
            self.headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            path = lines[0].split()[1]
            if path == "/ws":
                self._websocket(conn)
            elif path == "/events":
                self._events(conn)

    def _websocket(self, conn: socket.socket) -> None:
        accept = _ws_accept(self.headers["sec-websocket-key"])
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        while True:
            opcode, masked, payload = _ws_read(conn)
            if not masked or opcode == 8:  # a client must mask; 8 is close
                conn.sendall(_ws_frame(b"", masked=False, opcode=8))
                return
            conn.sendall(_ws_frame(b"echo: " + payload, masked=False, opcode=opcode))

    def _events(self, conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for n in range(4):
            if n:
                self.more[n - 1].wait(30)
            event = f"id: {n}\ndata: event {n}\n\n".encode()
            conn.sendall(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        conn.sendall(b"0\r\n\r\n")

    def server(self, app: str) -> Server:
        task_id = f"{app}.web.1.v1.stream"
        return Server(routes.server_name(task_id), "127.0.0.1", self.port, task_id)

    def stop(self) -> None:
        for event in self.more:
            event.set()
        self._sock.close()


@pytest.fixture
def stream_app() -> Iterator[StreamApp]:
    app = StreamApp()
    yield app
    app.stop()


def _stream_table(app: StreamApp) -> Table:
    task = Task(
        id="live.web.1.v1.stream",
        app="live",
        process="web",
        index=1,
        release=1,
        state="running",
        hostname="127.0.0.1",
        port=app.port,
    )
    return routes.build({"live": []}, [task], {}, "localhost")


def test_a_websocket_is_upgraded_and_outlives_the_server_timeout(
    make_router: Callable[..., Router], stream_app: StreamApp
) -> None:
    router = make_router(timeout_server=1)
    router.apply(_stream_table(stream_app))
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: live.localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            + f"Sec-WebSocket-Key: {key}\r\n\r\n".encode()
        )
        status, *lines = _read_head(sock).decode("latin-1").strip().split("\r\n")
        assert status.startswith("HTTP/1.1 101"), status
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
        assert headers["sec-websocket-accept"] == _ws_accept(key)
        sock.sendall(_ws_frame(b"hello", masked=True))
        assert _ws_read(sock) == (1, False, b"echo: hello")
        # idle for longer than `timeout server`: a tunnel has its own, longer timeout
        threading.Event().wait(2.5)
        sock.sendall(_ws_frame(b"still there?", masked=True))
        assert _ws_read(sock) == (1, False, b"echo: still there?")
        sock.sendall(_ws_frame(b"", masked=True, opcode=8))
        assert _ws_read(sock)[0] == 8
    assert stream_app.headers["x-forwarded-proto"] == "http"


def test_server_sent_events_arrive_one_by_one(
    make_router: Callable[..., Router], stream_app: StreamApp
) -> None:
    """Each event reaches the client while the app still holds back the next one: nothing
    between them buffers the stream."""
    router = make_router()
    router.apply(_stream_table(stream_app))
    with router.get("live.localhost", "/events", stream=True) as reply:
        assert reply.status_code == 200
        assert reply.headers["Content-Type"] == "text/event-stream"
        lines = reply.iter_lines(chunk_size=1, decode_unicode=True)
        for n in range(4):
            assert next(lines) == f"id: {n}"
            assert next(lines) == f"data: event {n}"
            assert next(lines) == ""
            if n < 3:
                stream_app.more[n].set()  # only now may the app send the next event


def test_an_app_s_own_timeout_gives_its_504(
    make_router: Callable[..., Router], make_app: Callable[[str], App]
) -> None:
    """`routing:set timeout=1` for one app: its slow answer is a 504 after 1 s, while the
    router's default (30 s) still holds for the other app, which gets its slow answer."""
    quick, patient = make_app("quick-a"), make_app("patient-a")
    router = make_router()
    tasks = [task("quick", quick), task("patient", patient)]
    wanted = routes.build(
        ["quick", "patient"], tasks, {}, "localhost", routing={"quick": routes.Routing(timeout=1)}
    )
    router.apply(wanted)
    try:
        reply = router.get("quick.localhost", "/hold")
    finally:
        quick.release.set()
    assert reply.status_code == 504
    assert "did not start answering within 1 second." in reply.text
    released = threading.Timer(2.0, patient.release.set)  # longer than quick's timeout
    released.start()
    try:
        slow = router.get("patient.localhost", "/hold")
    finally:
        released.cancel()
        patient.release.set()
    assert slow.status_code == 200
    assert slow.text == "patient-a"
