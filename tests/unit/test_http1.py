"""The small HTTP/1.1 client over real sockets: a scripted server in a thread reads one request
and answers with exactly the bytes a test gives, in pieces sequenced by events."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import pytest

from berth.framework import http1
from berth.framework.http1 import Endpoint, ProtocolError, Response, request

# Only a guard that keeps a broken test from hanging: joins, accepts and reads give up after
# it. No test measures how long anything took.
WAIT = 10.0


class AwaitClose:
    """A script step: read (and drop) until the client closes its end."""


class Pause:
    """A script step: a short pause, so that the next bytes likely arrive as a separate read.
    Nothing depends on it for correctness."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


Step: TypeAlias = bytes | threading.Event | AwaitClose | Pause
AWAIT_CLOSE = AwaitClose()


def read_request(conn: socket.socket) -> bytes:
    """One request's head and, by its Content-Length, its body."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return data
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        piece = conn.recv(65536)
        if not piece:
            break
        body += piece
    return head + b"\r\n\r\n" + body


class Server:
    """Accepts one connection, reads one request (unless `raw`), plays its script, closes."""

    def __init__(
        self, listener: socket.socket, url: str, script: tuple[Step, ...], raw: bool
    ) -> None:
        self.listener = listener
        self.url = url
        self.script = script
        self.raw = raw
        self.received = b""
        self.saw_close = False
        self.error: OSError | None = None
        self.accepted = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.parse(self.url)

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError as e:
            self.error = e
            return
        self.accepted.set()
        with conn:
            conn.settimeout(WAIT)
            try:
                if not self.raw:
                    self.received = read_request(conn)
                for step in self.script:
                    if isinstance(step, threading.Event):
                        step.wait(WAIT)
                    elif isinstance(step, Pause):
                        threading.Event().wait(step.seconds)
                    elif isinstance(step, AwaitClose):
                        try:
                            while conn.recv(65536):
                                pass
                        except ConnectionResetError:
                            pass  # closed with our bytes unread: a close all the same
                        self.saw_close = True
                    else:
                        conn.sendall(step)
            except OSError as e:  # the client may well have gone: tests say when it matters
                self.error = e

    def finish(self) -> None:
        """Wait until the server has played its script and closed the connection."""
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the scripted server is stuck"

    def stop(self) -> None:
        for step in self.script:
            if isinstance(step, threading.Event):
                step.set()
        if not self.accepted.is_set():  # wake an accept() nobody answered
            family = self.listener.family
            with socket.socket(family, socket.SOCK_STREAM) as waker:
                waker.settimeout(WAIT)
                address = self.listener.getsockname()
                try:
                    waker.connect(address)
                    self._thread.join(WAIT)
                except OSError:
                    pass
        self.finish()
        self.listener.close()


class Serve(Protocol):
    def __call__(self, *script: Step, family: str = ..., raw: bool = ...) -> Server: ...


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    servers: list[Server] = []

    def start(*script: Step, family: str = "tcp", raw: bool = False) -> Server:
        if family == "unix":
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = str(tmp_path / f"s{len(servers)}.sock")
        elif family == "tcp6":
            listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            address = ("::1", 0)
        else:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = ("127.0.0.1", 0)
        try:
            listener.bind(address)
            listener.listen()
            listener.settimeout(WAIT)
        except BaseException:
            listener.close()
            raise
        if family == "unix":
            url = f"unix://{address}"
        elif family == "tcp6":
            url = f"http://[::1]:{listener.getsockname()[1]}"
        else:
            url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        server = Server(listener, url, script, raw)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening socket no thread accepts on: to see whether a client connected at all."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def fetch(server: Server, method: str = "GET", path: str = "/", **options: Any) -> Response:
    options.setdefault("timeout", WAIT)
    return request(server.endpoint, method, path, **options)


def failure(server: Server, method: str = "GET", path: str = "/", **options: Any) -> OSError:
    """The OSError that `request` raises (the test fails if it returns an answer).

    A copy without the traceback is returned: the traceback holds the half-built Response, and
    kept alive (as `pytest.raises` keeps it) that Response's socket stays open."""
    try:
        response = fetch(server, method, path, **options)
    except OSError as e:
        error = e
    else:
        response.close()
        pytest.fail("request() returned an answer")
    copy = type(error)(*error.args)
    del error
    return copy


def read_failure(response: Response, limit: int | None = None) -> OSError:
    """The OSError that reading the whole body raises, as `failure` does for the head."""
    try:
        if limit is None:
            response.read()
        else:
            response.read(limit)
    except OSError as e:
        error = e
    else:
        pytest.fail("read() returned the body")
    copy = type(error)(*error.args)
    del error
    return copy


def parse_request(raw: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    first, *lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(": ")
        headers.append((name, value))
    return first, headers, body


def header(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in headers if n.lower() == name.lower()]


def take(chunks: Iterator[bytes], want: bytes) -> bytes:
    """Pieces from `chunks` until exactly `want` has arrived (it may come split)."""
    got = b""
    while len(got) < len(want):
        got += next(chunks)
    assert got == want
    return got


# -- Endpoint -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("http://example.com", Endpoint("http", "example.com", 80, "")),
        ("https://example.com", Endpoint("https", "example.com", 443, "")),
        ("http://example.com:8080", Endpoint("http", "example.com", 8080, "")),
        ("https://example.com:80", Endpoint("https", "example.com", 80, "")),
        ("http://10.0.0.1:5050/", Endpoint("http", "10.0.0.1", 5050, "")),
        ("https://h:8443/api/v1/", Endpoint("https", "h", 8443, "/api/v1")),
        ("http://h/master", Endpoint("http", "h", 80, "/master")),
        ("http://EXAMPLE.com", Endpoint("http", "example.com", 80, "")),
        ("http://[::1]:5051/x/", Endpoint("http", "::1", 5051, "/x")),
        ("unix:///var/run/docker.sock", Endpoint("unix", "/var/run/docker.sock")),
        ("unix:/run/d.sock", Endpoint("unix", "/run/d.sock")),
    ],
)
def test_parse_good_urls(url: str, endpoint: Endpoint) -> None:
    assert Endpoint.parse(url) == endpoint


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        (Endpoint("http", "example.com", 80), "http://example.com:80"),
        (Endpoint("https", "example.com", 443, "/v1"), "https://example.com:443/v1"),
        (Endpoint("http", "::1", 8080, "/a/b"), "http://[::1]:8080/a/b"),
        (Endpoint("unix", "/var/run/docker.sock"), "unix:///var/run/docker.sock"),
    ],
)
def test_url_round_trip(endpoint: Endpoint, url: str) -> None:
    assert endpoint.url == url
    assert Endpoint.parse(endpoint.url) == endpoint


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("ftp://example.com", "scheme"),
        ("example.com:80", "scheme"),
        ("", "scheme"),
        ("http://", "no host"),
        ("http:///path", "no host"),
        ("https://:443", "no host"),
        ("unix:relative.sock", "absolute"),
        ("unix://relative.sock", "absolute"),
        ("unix:", "absolute"),
        ("http://h:abc", "bad port"),
        ("http://h:99999", "bad port"),
        ("http://h:-1", "bad port"),
        ("http://h:0", "port 0"),
        ("unix://run/docker.sock", "absolute"),
        ("http://h:80/?q=1", "no query"),
    ],
)
def test_parse_bad_urls(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        Endpoint.parse(url)


@pytest.mark.parametrize(
    ("endpoint", "host"),
    [
        (Endpoint("http", "example.com", 80), "example.com"),
        (Endpoint("http", "example.com", 443), "example.com:443"),
        (Endpoint("https", "example.com", 443), "example.com"),
        (Endpoint("https", "example.com", 80), "example.com:80"),
        (Endpoint("http", "example.com", 8080), "example.com:8080"),
        (Endpoint("http", "::1", 80), "[::1]"),
        (Endpoint("http", "::1", 5050), "[::1]:5050"),
        (Endpoint("unix", "/run/x.sock"), "localhost"),
    ],
)
def test_host_header(endpoint: Endpoint, host: str) -> None:
    assert endpoint.host_header == host


def test_path_with_query_and_quote_segment() -> None:
    assert http1.path_with_query("/a") == "/a"
    assert http1.path_with_query("/a", {}) == "/a"
    assert http1.path_with_query("/a", {"x": None}) == "/a"
    assert http1.path_with_query("/a", {"x": "1 2", "y": None, "z": "&"}) == "/a?x=1+2&z=%26"
    assert http1.quote_segment("a/b c?") == "a%2Fb%20c%3F"


# -- what is sent ---------------------------------------------------------------------------


def test_get_sends_exactly_a_minimal_request(serve: Serve) -> None:
    server = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    with fetch(server, "GET", "/v1/things?x=1") as response:
        assert response.read() == b"ok"
    server.finish()
    port = server.endpoint.port
    assert (
        server.received
        == (
            f"GET /v1/things?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        ).encode()
    )


def test_json_body_sets_type_and_length(serve: Serve) -> None:
    server = serve(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    payload = {"name": "web", "sizes": [1, 2], "note": "caf\u00e9"}
    with fetch(server, "POST", "/apps", json_body=payload) as response:
        assert (response.status, response.reason) == (201, "Created")
        assert response.read() == b""
    server.finish()
    first, headers, body = parse_request(server.received)
    assert first == "POST /apps HTTP/1.1"
    assert header(headers, "Content-Type") == ["application/json"]
    assert header(headers, "Content-Length") == [str(len(body))]
    assert header(headers, "Connection") == ["close"]
    assert headers[-1] == ("Connection", "close")
    assert json.loads(body) == payload


def test_given_content_type_is_kept_for_json(serve: Serve) -> None:
    server = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    with fetch(
        server,
        "POST",
        "/api/v1/scheduler",
        json_body={"type": "SUBSCRIBE"},
        headers={"Content-Type": "application/json; charset=utf-8", "Accept": "*/*"},
    ):
        pass
    server.finish()
    _, headers, _ = parse_request(server.received)
    assert header(headers, "content-type") == ["application/json; charset=utf-8"]
    assert header(headers, "accept") == ["*/*"]


def test_bytes_body_and_headers_are_sent(serve: Serve) -> None:
    server = serve(b"HTTP/1.1 204 No Content\r\n\r\n")
    body = bytes(range(256)) * 3
    with fetch(server, "PUT", "/blob", body=body, headers={"X-Token": "t0k3n"}) as response:
        assert response.status == 204
    server.finish()
    first, headers, received = parse_request(server.received)
    assert first == "PUT /blob HTTP/1.1"
    assert header(headers, "X-Token") == ["t0k3n"]
    assert header(headers, "Content-Length") == [str(len(body))]
    assert header(headers, "Content-Type") == []
    assert received == body


@pytest.mark.parametrize(
    ("method", "length"), [("POST", ["0"]), ("PUT", ["0"]), ("GET", []), ("DELETE", [])]
)
def test_content_length_without_a_body(serve: Serve, method: str, length: list[str]) -> None:
    server = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    with fetch(server, method, "/x"):
        pass
    server.finish()
    first, headers, body = parse_request(server.received)
    assert first == f"{method} /x HTTP/1.1"
    assert header(headers, "Content-Length") == length
    assert body == b""


def test_endpoint_base_prefixes_the_path(serve: Serve) -> None:
    server = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    endpoint = Endpoint.parse(server.url + "/master/api/")
    with request(endpoint, "GET", "/state?x=1", timeout=WAIT):
        pass
    server.finish()
    assert parse_request(server.received)[0] == "GET /master/api/state?x=1 HTTP/1.1"


def test_ipv6_host_header_has_brackets(serve: Serve) -> None:
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    server = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nv6", family="tcp6")
    with fetch(server) as response:
        assert response.read() == b"v6"
    server.finish()
    _, headers, _ = parse_request(server.received)
    assert header(headers, "Host") == [f"[::1]:{server.endpoint.port}"]


def test_unix_socket_endpoint(serve: Serve) -> None:
    server = serve(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n",
        b'{"Version":"1"}',
        family="unix",
    )
    assert server.url.startswith("unix:///")
    with fetch(server, "GET", "/version") as response:
        assert response.status == 200
        assert response.json() == {"Version": "1"}
        response.keepalive()  # nothing to do on a unix socket, and no error
    server.finish()
    first, headers, _ = parse_request(server.received)
    assert first == "GET /version HTTP/1.1"
    assert header(headers, "Host") == ["localhost"]


# -- refused before anything is sent --------------------------------------------------------


def assert_nothing_connected(listener: socket.socket) -> None:
    listener.setblocking(False)
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return
    conn.close()
    pytest.fail("the client connected")


@pytest.mark.parametrize(
    "path", ["", "x", "v1/things", "/a b", "/a\r\nX-Evil: 1", "/a\n", "/a\r", "/a\tb", "/\x7f"]
)
def test_bad_path_is_refused_before_connecting(listener: socket.socket, path: str) -> None:
    endpoint = Endpoint("http", "127.0.0.1", listener.getsockname()[1])
    with pytest.raises(ValueError, match="request path"):
        request(endpoint, "GET", path, timeout=WAIT)
    assert_nothing_connected(listener)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-A": "a\r\nX-Evil: 1"},
        {"X-A": "a\nX-Evil: 1"},
        {"X-A": "a\rb"},
        {"X-A": "a\x00b"},
        {"X-A:B": "v"},
        {"X-Evil: 1\r\nX-A": "v"},
        {"X-A\n": "v"},
        {"Good": "fine", "Bad": "x\r\n\r\nGET /smuggled HTTP/1.1"},
        {"": "v"},
        {"X A": "v"},
    ],
)
def test_bad_header_is_refused_before_connecting(
    listener: socket.socket, headers: dict[str, str]
) -> None:
    endpoint = Endpoint("http", "127.0.0.1", listener.getsockname()[1])
    with pytest.raises(ValueError, match="forbidden character"):
        request(endpoint, "POST", "/x", json_body={"a": 1}, headers=headers, timeout=WAIT)
    assert_nothing_connected(listener)


@pytest.mark.parametrize("method", ["", "GET /x HTTP/1.1\r\nX-Evil: 1\r\n", "G T", "GET\n"])
def test_bad_method_is_refused_before_connecting(listener: socket.socket, method: str) -> None:
    endpoint = Endpoint("http", "127.0.0.1", listener.getsockname()[1])
    with pytest.raises(ValueError, match="method"):
        request(endpoint, method, "/x", timeout=WAIT)
    assert_nothing_connected(listener)


@pytest.mark.parametrize("name", ["Host", "content-length", "Connection", "Transfer-Encoding"])
def test_headers_the_client_sets_cannot_be_given_twice(listener: socket.socket, name: str) -> None:
    endpoint = Endpoint("http", "127.0.0.1", listener.getsockname()[1])
    with pytest.raises(ValueError, match="set by the client"):
        request(endpoint, "POST", "/x", headers={name: "1"}, timeout=WAIT)
    assert_nothing_connected(listener)


# -- answers --------------------------------------------------------------------------------


def test_content_length_body_status_and_headers(serve: Serve) -> None:
    server = serve(
        b"HTTP/1.1 200 Everything Fine\r\n"
        b"Content-Type: application/json\r\n"
        b"X-Thing:   padded  \r\n"
        b"Set-Cookie: a=1\r\n"
        b"SET-COOKIE: b=2\r\n"
        b"set-cookie: c=3\r\n"
        b"X-Latin: caf\xe9\r\n"
        b"Content-Length: 16\r\n"
        b"\r\n"
        b'{"a": [1, 2, 3]}'
    )
    with fetch(server) as response:
        assert response.status == 200
        assert response.reason == "Everything Fine"
        assert response.headers == {
            "content-type": "application/json",
            "x-thing": "padded",
            "set-cookie": "a=1, b=2, c=3",
            "x-latin": "caf\u00e9",
            "content-length": "16",
        }
        assert response.json() == {"a": [1, 2, 3]}


def test_read_and_text(serve: Serve) -> None:
    body = "h\u00e9llo w\u00f6rld".encode()
    head = f"HTTP/1.1 404 Not Found\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    server = serve(head + body)
    with fetch(server) as response:
        assert response.status == 404
        assert response.text() == "h\u00e9llo w\u00f6rld"
    server.finish()


def test_body_arriving_in_pieces(serve: Serve) -> None:
    server = serve(
        b"HTTP/1.1 200 OK\r\nContent-",
        Pause(0.02),
        b"Length: 10\r\n\r\n01",
        Pause(0.02),
        b"2345",
        Pause(0.02),
        b"6789",
    )
    with fetch(server) as response:
        assert response.read() == b"0123456789"


def test_content_length_body_streams(serve: Serve) -> None:
    got_first = threading.Event()
    server = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nfirst", got_first, b"second")
    with fetch(server) as response:
        chunks = response.chunks()
        take(chunks, b"first")  # the server sends the rest only after this
        got_first.set()
        assert b"".join(chunks) == b"second"


def test_chunked_body_with_extensions_and_trailers(serve: Serve) -> None:
    server = serve(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b"4;name=value\r\nWiki\r\n"
        b'A ; quoted="a;b"\r\n pedia in \r\n'
        b"1\r\n.\r\n"
        b"0;last\r\n"
        b"Expires: never\r\n"
        b"X-Trailer: yes\r\n"
        b"\r\n"
    )
    with fetch(server) as response:
        assert response.headers["transfer-encoding"] == "Chunked"
        assert response.read() == b"Wiki pedia in ."


def test_chunked_body_arriving_in_pieces(serve: Serve) -> None:
    server = serve(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1",
        Pause(0.02),
        b"0\r\n0123456",
        Pause(0.02),
        b"789abcdef\r",
        Pause(0.02),
        b"\n0\r\n",
        Pause(0.02),
        b"\r\n",
    )
    with fetch(server) as response:
        assert response.read() == b"0123456789abcdef"


def test_chunked_body_streams(serve: Serve) -> None:
    got_first = threading.Event()
    server = serve(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
        got_first,
        b"6\r\nsecond\r\n0\r\n\r\n",
    )
    with fetch(server) as response:
        chunks = response.chunks()
        take(chunks, b"first")  # the server sends the second chunk only after this
        got_first.set()
        assert b"".join(chunks) == b"second"


def test_chunked_wins_over_content_length(serve: Serve) -> None:
    server = serve(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    )
    with fetch(server) as response:
        assert response.read() == b"abc"


def test_body_until_close(serve: Serve) -> None:
    server = serve(b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nall of it, ", b"until the end")
    with fetch(server) as response:
        assert response.read() == b"all of it, until the end"


def test_body_until_close_streams(serve: Serve) -> None:
    got_first = threading.Event()
    server = serve(b"HTTP/1.1 200 OK\r\n\r\nfirst", got_first, b"second")
    with fetch(server) as response:
        chunks = response.chunks()
        take(chunks, b"first")
        got_first.set()
        assert b"".join(chunks) == b"second"
        assert list(chunks) == []


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
        ("HEAD", b"HTTP/1.1 200 OK\r\n\r\n"),
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ],
)
def test_answers_without_a_body(serve: Serve, method: str, answer: bytes) -> None:
    # The server keeps the connection open: a client that waited for a body would time out.
    release = threading.Event()
    server = serve(answer, release)
    with fetch(server, method, "/thing") as response:
        assert response.read() == b""
        assert list(response.chunks()) == []
        release.set()
    server.finish()
    assert parse_request(server.received)[0] == f"{method} /thing HTTP/1.1"


def test_interim_answers_are_skipped(serve: Serve) -> None:
    server = serve(
        b"HTTP/1.1 100 Continue\r\n\r\n",
        Pause(0.02),
        b"HTTP/1.1 102 Processing\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone",
    )
    with fetch(server, "POST", "/x", body=b"data") as response:
        assert response.status == 200
        assert response.headers == {"content-length": "4"}
        assert response.read() == b"done"


def test_switching_protocols_has_no_body(serve: Serve) -> None:
    release = threading.Event()
    server = serve(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tcp\r\n\r\n", release)
    with fetch(server, headers={"Upgrade": "tcp"}) as response:
        assert response.status == 101
        assert response.headers["upgrade"] == "tcp"
        assert response.read() == b""
        release.set()


def test_header_limits_are_inclusive(serve: Serve) -> None:
    name = b"X-Long: "
    longest = name + b"a" * (http1.MAX_HEADER_LINE - len(name) - 2) + b"\r\n"
    assert len(longest) == http1.MAX_HEADER_LINE
    many = b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(http1.MAX_HEADERS - 2))
    server = serve(
        b"HTTP/1.1 200 OK\r\n" + longest + many + b"Content-Length: 2\r\n\r\nok",
    )
    with fetch(server) as response:
        assert len(response.headers) == http1.MAX_HEADERS
        assert len(response.headers["x-long"]) == http1.MAX_HEADER_LINE - len(name) - 2
        assert response.read() == b"ok"


def test_close_releases_the_connection(serve: Serve) -> None:
    server = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", AWAIT_CLOSE)
    response = fetch(server)
    assert next(response.chunks()).startswith(b"p")
    response.close()
    response.close()  # again: harmless
    server.finish()
    assert server.saw_close


def test_keepalive_on_tcp(serve: Serve) -> None:
    server = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    with fetch(server) as response:
        response.keepalive(idle=30, interval=5, count=3)
        # the socket is private; peeking is the only way to see the option took
        assert response._sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        assert response.read() == b"ok"


# -- malformed answers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        (b"", "closed in the answer's head"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/2 200\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n", "closed in the answer's head"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", "bad content-length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad content-length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", "bad content"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported transfer"),
        (b"HTTP/1.1 100 Continue\r\n\r\n", "closed in the answer's head"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n", "bad content-length"),
        (b"HTTP/1.1 \xb2\xb2\xb2 OK\r\n\r\n", "status line"),
    ],
)
def test_malformed_head(serve: Serve, answer: bytes, complaint: str) -> None:
    server = serve(answer)
    error = failure(server)
    assert isinstance(error, ProtocolError)
    assert complaint in str(error)


def test_header_line_too_long(serve: Serve) -> None:
    name = b"X-Long: "
    line = name + b"a" * (http1.MAX_HEADER_LINE - len(name) - 1) + b"\r\n"
    assert len(line) == http1.MAX_HEADER_LINE + 1
    server = serve(b"HTTP/1.1 200 OK\r\n" + line + b"\r\n")
    error = failure(server)
    assert isinstance(error, ProtocolError)
    assert "too long" in str(error)


def test_status_line_too_long(serve: Serve) -> None:
    server = serve(b"HTTP/1.1 200 " + b"O" * http1.MAX_HEADER_LINE + b"\r\n\r\n")
    error = failure(server)
    assert isinstance(error, ProtocolError)
    assert "too long" in str(error)


def test_too_many_headers(serve: Serve) -> None:
    many = b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(http1.MAX_HEADERS + 1))
    server = serve(b"HTTP/1.1 200 OK\r\n" + many + b"\r\n")
    error = failure(server)
    assert isinstance(error, ProtocolError)
    assert "too many headers" in str(error)


def test_head_error_closes_connection(serve: Serve) -> None:
    server = serve(b"NOT HTTP\r\n\r\n", AWAIT_CLOSE)
    assert isinstance(failure(server), ProtocolError)  # and the error has been let go
    server.finish()
    assert server.saw_close


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        (CHUNKED + b"zz\r\nab\r\n0\r\n\r\n", "bad chunk size"),
        (CHUNKED + b"\r\n", "bad chunk size"),
        (CHUNKED + b"0x3\r\nabc\r\n0\r\n\r\n", "bad chunk size"),
        (CHUNKED + b"-1\r\n0\r\n\r\n", "bad chunk size"),
        (CHUNKED + b"1_0\r\n", "bad chunk size"),
        (CHUNKED + b"3\r\nabcXY\r\n0\r\n\r\n", "does not end with CRLF"),
        (CHUNKED + b"5\r\nab", "closed inside a chunk"),
        (CHUNKED + b"3\r\nabc\r\n", "connection closed"),
        (CHUNKED + b"3\r\nabc", "connection closed"),
        (CHUNKED + b"0\r\nX-Trailer: 1\r\n", "connection closed"),
        (CHUNKED, "connection closed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "closed 7 bytes before"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", "closed 10 bytes before"),
    ],
)
def test_malformed_body(serve: Serve, answer: bytes, complaint: str) -> None:
    server = serve(answer)
    with fetch(server) as response:
        assert response.status == 200
        error = read_failure(response)
    assert isinstance(error, ProtocolError)
    assert complaint in str(error)


def test_bad_chunk_size_after_good_chunks_while_streaming(serve: Serve) -> None:
    server = serve(CHUNKED + b"3\r\nabc\r\nnope\r\n")
    with fetch(server) as response:
        chunks = response.chunks()
        take(chunks, b"abc")
        with pytest.raises(ProtocolError, match="bad chunk size"):
            next(chunks)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789",
        CHUNKED + b"4\r\n0123\r\n6\r\n456789\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n0123456789",
    ],
)
def test_read_limit(serve: Serve, answer: bytes) -> None:
    exact = serve(answer)
    with fetch(exact) as response:
        assert response.read(10) == b"0123456789"
    over = serve(answer)
    with fetch(over) as response:
        error = read_failure(response, limit=9)
    assert isinstance(error, ProtocolError)
    assert "longer than 9 bytes" in str(error)


def test_text_and_json_limits(serve: Serve) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n[1, 2]"
    with fetch(serve(answer)) as response, pytest.raises(ProtocolError, match="longer than 5"):
        response.json(limit=5)
    with fetch(serve(answer)) as response, pytest.raises(ProtocolError, match="longer than 5"):
        response.text(limit=5)


@pytest.mark.parametrize("body", [b"not json", b"", b'{"a": ', b'"\xff\xfe"'])
def test_json_of_a_non_json_answer(serve: Serve, body: bytes) -> None:
    server = serve(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    with fetch(server) as response, pytest.raises(ProtocolError, match="not JSON"):
        response.json()


def test_text_replaces_bad_utf8(serve: Serve) -> None:
    server = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\na\xffb")
    with fetch(server) as response:
        assert response.text() == "a\ufffdb"


# -- connections, timeouts, interrupts ------------------------------------------------------


def test_errors_are_oserrors() -> None:
    assert issubclass(ProtocolError, OSError)


def test_connection_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bound:
        bound.bind(("127.0.0.1", 0))  # bound, never listening: connecting is refused
        endpoint = Endpoint("http", "127.0.0.1", bound.getsockname()[1])
        with pytest.raises(ConnectionError) as caught:
            request(endpoint, "GET", "/", connect_timeout=WAIT, timeout=WAIT)
    assert isinstance(caught.value, OSError)


def test_unix_connection_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(path))
        with pytest.raises(ConnectionRefusedError):
            request(Endpoint.parse(f"unix://{path}"), "GET", "/", timeout=WAIT)
    with pytest.raises(FileNotFoundError):
        request(Endpoint.parse(f"unix://{tmp_path}/missing.sock"), "GET", "/", timeout=WAIT)


def test_https_to_a_plain_server_fails_and_closes(serve: Serve) -> None:
    server = serve(b"HTTP/1.1 400 Bad Request\r\n\r\n", AWAIT_CLOSE, raw=True)
    endpoint = Endpoint("https", "127.0.0.1", server.endpoint.port)
    with pytest.raises(OSError):  # noqa: PT011 - any OSError: ssl's or the socket's
        request(endpoint, "GET", "/", connect_timeout=WAIT, timeout=WAIT)
    server.finish()
    assert server.saw_close


def test_read_timeout_on_the_head(serve: Serve) -> None:
    release = threading.Event()
    server = serve(release)  # reads the request, then says nothing
    error = failure(server, timeout=0.2)
    release.set()
    assert isinstance(error, TimeoutError)


def test_read_timeout_in_the_body(serve: Serve) -> None:
    release = threading.Event()
    server = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", release, b"defghij")
    with fetch(server, timeout=WAIT) as response:
        response.set_timeout(0.2)
        chunks = response.chunks()
        take(chunks, b"abc")
        with pytest.raises(TimeoutError):
            next(chunks)
        release.set()


def test_set_timeout_can_lift_the_timeout(serve: Serve) -> None:
    go_on = threading.Event()
    server = serve(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        go_on,
        Pause(0.5),  # longer than the first timeout, which no longer applies
        b"3\r\ndef\r\n0\r\n\r\n",
    )
    with fetch(server, timeout=0.2) as response:
        chunks = response.chunks()
        take(chunks, b"abc")
        response.set_timeout(None)
        go_on.set()
        assert b"".join(chunks) == b"def"


class Reader:
    """A thread that reads an answer's body in `chunks()` and remembers how that ended."""

    def __init__(self, response: Response) -> None:
        self.response = response
        self.pieces: list[bytes] = []
        self.got_some = threading.Event()
        self.ended = ""  # "end", or the error's type name
        self.error_is_oserror = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for piece in self.response.chunks():
                self.pieces.append(piece)
                self.got_some.set()
        except OSError as e:
            self.ended = type(e).__name__
            self.error_is_oserror = True
        except Exception as e:
            self.ended = type(e).__name__
        else:
            self.ended = "end"


@pytest.mark.parametrize("family", ["tcp", "unix"])
@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nfirst",
        b"HTTP/1.1 200 OK\r\n\r\nfirst",
    ],
)
def test_interrupt_wakes_a_blocked_reader(serve: Serve, family: str, answer: bytes) -> None:
    release = threading.Event()  # the server stays silent until the test ends
    server = serve(answer, release, family=family)
    with fetch(server, timeout=None) as response:
        reader = Reader(response)
        try:
            assert reader.got_some.wait(WAIT)
            response.interrupt()
            reader.thread.join(WAIT)
            assert not reader.thread.is_alive(), "interrupt() did not wake the reader"
        finally:
            release.set()  # lets the server close, which ends the reader in any case
            reader.thread.join(WAIT)
        response.interrupt()  # again: harmless
    response.interrupt()  # after close: harmless too
    response.set_timeout(1.0)
    assert b"".join(reader.pieces) == b"first"
    assert reader.ended == "end" or reader.error_is_oserror, reader.ended
