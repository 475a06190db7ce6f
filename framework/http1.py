"""A small HTTP/1.1 client on the standard library's sockets: for the processes that must stay
small, and for long-lived streams.

Why not `requests` (which the CLI uses): the executor runs once per task, so every MiB it
imports is paid fifty times on a host with fifty tasks. `requests` and urllib3 pull in
`http.client`, `email`, `ssl`, charset detection and cookie handling, ~8 MiB of resident
memory; this module imports `socket` and little else (`ssl` only when an `https://` endpoint
is used), and does just what Berth's Mesos drivers and the executor's Docker client need:

- endpoints `http://host:port`, `https://host:port` and `unix:///path/to.sock`;
- one request per connection (`Connection: close`), a JSON or bytes body;
- responses with Content-Length, chunked, or read-until-close bodies, streamed as they arrive
  (`chunks()`), which is what RecordIO event streams and Docker's log stream need;
- a connect timeout and a read timeout (seconds of silence), changeable while streaming;
- `interrupt()`: another thread shuts the socket down to wake a blocked reader.

Errors are OSErrors, so a caller catches one type: connection failures and timeouts are the
socket's own (`ConnectionError`, `TimeoutError`); a malformed answer is `ProtocolError`.
Header values are checked for CR/LF, so no caller can smuggle a header through a value.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote, urlencode, urlsplit

MAX_HEADER_LINE = 64 * 1024
MAX_HEADERS = 100
MAX_INTERIM = 10
DIGITS = re.compile(r"[0-9]+")
HEX = re.compile(rb"[0-9A-Fa-f]+")
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: methods, header names
AUTOMATIC = {"host", "content-length", "connection", "transfer-encoding"}
READ_SIZE = 64 * 1024


class ProtocolError(OSError):
    """The peer's answer is not HTTP/1.x as this client understands it."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where requests go: `scheme` is http, https or unix; for unix, `host` is the socket path.
    `base` is a path prefix every request path is appended to (no trailing slash)."""

    scheme: str
    host: str
    port: int = 0
    base: str = ""

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """`http://host:port[/base]`, `https://…`, or `unix:///path/to.sock`. ValueError
        names what is wrong."""
        parts = urlsplit(url)
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r}: an endpoint has no query or fragment")
        if parts.scheme == "unix":
            if parts.netloc or not parts.path.startswith("/"):
                raise ValueError(f"{url!r}: a unix endpoint is unix:///absolute/path.sock")
            return cls("unix", parts.path)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{url!r}: the scheme must be http, https or unix")
        if not parts.hostname:
            raise ValueError(f"{url!r} has no host")
        try:
            port = parts.port
        except ValueError as e:
            raise ValueError(f"{url!r} has a bad port") from e
        if port == 0:
            raise ValueError(f"{url!r}: port 0 is not a port to connect to")
        port = port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def url(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.host}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base}"

    @property
    def host_header(self) -> str:
        if self.scheme == "unix":
            return "localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def connect(self, timeout: float) -> socket.socket:
        if self.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(self.host)
            except BaseException:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.scheme == "https":
            import ssl  # only here: it costs ~5 MiB, and most endpoints are plain

            try:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
        return sock


def path_with_query(path: str, query: Mapping[str, Any] | None = None) -> str:
    """`path` with its segments as given (callers quote user values with `quote_segment`) and
    `query` url-encoded; None values are left out."""
    if not query:
        return path
    items = [(k, v) for k, v in query.items() if v is not None]
    return f"{path}?{urlencode(items)}" if items else path


def quote_segment(value: str) -> str:
    """One path segment, with `/` and everything else special escaped."""
    return quote(value, safe="")


class Response:
    """One answer. Its body is read once, as `read()`, `chunks()`, `text()` or `json()`;
    `close()` (or `with`) releases the connection. `chunked`/`length` tell how the body ends."""

    def __init__(self, sock: socket.socket, method: str) -> None:
        self._sock = sock
        self._file = cast(io.BufferedReader, sock.makefile("rb", buffering=READ_SIZE))
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}  # names in lower case
        self._chunked = False
        self._remaining: int | None = None  # bytes left of a Content-Length body
        self._done = False
        try:
            self._read_head(method)
        except BaseException:
            self.close()  # the reader holds the socket too: close both, now
            raise

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- head --------------------------------------------------------------------------------

    def _line(self, where: str = "the answer's head") -> bytes:
        line = self._file.readline(MAX_HEADER_LINE + 1)
        if len(line) > MAX_HEADER_LINE:
            raise ProtocolError(f"a line of {where} is too long")
        if not line:
            raise ProtocolError(f"the connection closed in {where}")
        return line

    def _read_head(self, method: str) -> None:
        for _ in range(MAX_INTERIM + 1):
            status_line = self._line().decode("latin-1").rstrip("\r\n")
            version, _, rest = status_line.partition(" ")
            code, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/1.") or not DIGITS.fullmatch(code) or len(code) != 3:
                raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
            headers: dict[str, str] = {}
            for _ in range(MAX_HEADERS + 1):
                line = self._line().decode("latin-1").rstrip("\r\n")
                if not line:
                    break
                name, colon, value = line.partition(":")
                if not colon or not name or name != name.strip():
                    raise ProtocolError(f"bad header line {line[:80]!r}")
                key = name.lower()
                value = value.strip()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            else:
                raise ProtocolError("too many headers")
            if int(code) >= 200 or int(code) == 101:
                break  # 100 Continue and other interim answers are skipped
        else:
            raise ProtocolError("too many interim (1xx) answers")
        self.status, self.reason, self.headers = int(code), reason, headers
        if method == "HEAD" or self.status in (101, 204, 304):
            self._done = True
            return
        encoding = headers.get("transfer-encoding", "").lower()
        if encoding:
            if encoding != "chunked":
                raise ProtocolError(f"unsupported transfer-encoding {encoding!r}")
            self._chunked = True
        elif "content-length" in headers:
            length = headers["content-length"]
            if not DIGITS.fullmatch(length):
                raise ProtocolError(f"bad content-length {length[:20]!r}")
            self._remaining = int(length)
            self._done = self._remaining == 0

    # -- body --------------------------------------------------------------------------------

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives: each piece is what the peer has sent so far (a chunk, or
        less), never waiting for more than is there. Ends with the body."""
        while not self._done:
            if self._chunked:
                size_line = self._line("a chunk size").split(b";", 1)[0].strip()
                if not HEX.fullmatch(size_line):
                    raise ProtocolError(f"bad chunk size {size_line[:20]!r}")
                size = int(size_line, 16)
                if size == 0:
                    for _ in range(MAX_HEADERS + 1):
                        if self._line("the trailers") in (b"\r\n", b"\n"):
                            break  # trailers: none that Berth needs
                    else:
                        raise ProtocolError("too many trailers")
                    self._done = True
                    return
                while size > 0:
                    piece = self._file.read1(min(size, READ_SIZE))
                    if not piece:
                        raise ProtocolError("the connection closed inside a chunk")
                    size -= len(piece)
                    yield piece
                if self._line("a chunk's end") not in (b"\r\n", b"\n"):
                    raise ProtocolError("a chunk does not end with CRLF")
            elif self._remaining is not None:
                piece = self._file.read1(min(self._remaining, READ_SIZE))
                if not piece:
                    raise ProtocolError(
                        f"the connection closed {self._remaining} bytes before the body's end"
                    )
                self._remaining -= len(piece)
                self._done = self._remaining == 0
                yield piece
            else:
                piece = self._file.read1(READ_SIZE)
                if not piece:
                    self._done = True
                    return
                yield piece

    def read(self, limit: int = 16 * 1024 * 1024) -> bytes:
        """The whole body; ProtocolError if it is longer than `limit` bytes."""
        body = bytearray()
        for piece in self.chunks():
            body += piece
            if len(body) > limit:
                raise ProtocolError(f"the answer is longer than {limit} bytes")
        return bytes(body)

    def text(self, limit: int = 16 * 1024 * 1024) -> str:
        return self.read(limit).decode("utf-8", "replace")

    def json(self, limit: int = 16 * 1024 * 1024) -> Any:
        try:
            return json.loads(self.read(limit))
        except ValueError as e:
            raise ProtocolError(f"the answer is not JSON: {e}") from e

    # -- the connection ----------------------------------------------------------------------

    def set_timeout(self, seconds: float | None) -> None:
        """Seconds of silence after which a read raises TimeoutError (None: wait forever)."""
        with contextlib.suppress(OSError):
            self._sock.settimeout(seconds)

    def keepalive(self, idle: int = 60, interval: int = 10, count: int = 6) -> None:
        """TCP keepalive, so a vanished peer host is noticed on a long, quiet stream."""
        if self._sock.family == socket.AF_UNIX:
            return
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval)):
                if hasattr(socket, option):
                    self._sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
            if hasattr(socket, "TCP_KEEPCNT"):
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)

    def interrupt(self) -> None:
        """Wake a thread blocked reading this answer (it gets an OSError or the body's end).
        Safe from any thread, and more than once."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._sock.close()


def request(
    endpoint: Endpoint,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    connect_timeout: float = 10.0,
    timeout: float | None = 60.0,
) -> Response:
    """Send one request and read the answer's head; the caller reads the body and closes it.
    `path` starts with `/` and is appended to the endpoint's base. `timeout` is the read
    timeout for the head and the body (None: none). Raises OSError (see the module doc)."""
    if not TOKEN.fullmatch(method):
        raise ValueError(f"method {method!r} is not an HTTP token")
    if not path.startswith("/") or any(c <= " " or c == "\x7f" for c in path):
        raise ValueError(f"request path {path!r} must start with / and have no spaces or controls")
    if json_body is not None:
        body = json.dumps(json_body).encode()
    lines = [f"{method} {endpoint.base}{path} HTTP/1.1", f"Host: {endpoint.host_header}"]
    given = {k.lower() for k in (headers or {})}
    for name, value in (headers or {}).items():
        if not TOKEN.fullmatch(name) or any(c in value for c in "\r\n\x00"):
            raise ValueError(f"header {name!r} has a forbidden character")
        if name.lower() in AUTOMATIC:
            raise ValueError(f"header {name} is set by the client itself")
        lines.append(f"{name}: {value}")
    if json_body is not None and "content-type" not in given:
        lines.append("Content-Type: application/json")
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    sock = endpoint.connect(connect_timeout)
    try:
        sock.settimeout(timeout)
        sock.sendall(head + (body or b""))
        return Response(sock, method)
    except BaseException:
        sock.close()
        raise
