"""HAProxy access lines → records of the app's log (framework/accesslines.py, which logd
uses), the socket HAProxy sends them to and the forwarder to logd (router/accesslog.py)."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from berth.framework.accesslines import Stamps, parse
from berth.framework.loglines import Record, validate
from berth.router.accesslog import AccessLog, Forwarder
from tests.support.services import free_port

TEXT = (
    'request_id=abc client=10.0.0.9 method=GET host=shop.example.com path="/a \\"b\\"" '
    "status=200 bytes=512 duration_ms=3 connect_ms=0 response_ms=2 termination=---- retries=0"
)
MICROS = 1_764_741_600_123_456  # 2025-12-03T06:00:00.123456Z
HTTP = f"{MICROS} app_shop shop.web.2.v7.0a1b2c3d {TEXT}"


def test_an_http_line_names_its_app_task_and_time() -> None:
    record = parse(HTTP)
    assert record == Record(
        "2025-12-03T06:00:00.123456Z", "shop", "router", "web.2", "stdout", TEXT
    )
    validate(record)


def test_a_503_without_a_server_still_belongs_to_its_app() -> None:
    record = parse(f"{MICROS} app_idle <NOSRV> request_id=x status=503")
    assert record is not None
    assert (record.app, record.process, record.text) == ("idle", "", "request_id=x status=503")


def test_a_tcp_line_is_known_by_its_server_and_an_unknown_host_by_nobody() -> None:
    tcp = parse(f"{MICROS} tcp_5432 shop.db.1.v3.ff tcp client=1.2.3.4:5 bytes_in=10")
    assert tcp is not None
    assert (tcp.app, tcp.process, tcp.text) == ("shop", "db.1", "tcp client=1.2.3.4:5 bytes_in=10")
    assert parse(f"{MICROS} tcp_5432 <NOSRV> tcp client=1.2.3.4:5 bytes_in=0") is None
    assert parse(f"{MICROS} berth_not_found <NOSRV> request_id=y status=404") is None
    assert parse("app_shop shop.web.2.v7.0a status=200") is None  # no time first
    assert parse("garbage") is None
    assert parse("") is None


def test_stamps_format_each_second_once_and_every_microsecond() -> None:
    stamps = Stamps()
    assert stamps.format(MICROS) == "2025-12-03T06:00:00.123456Z"
    assert stamps.format(MICROS + 1) == "2025-12-03T06:00:00.123457Z"
    assert stamps.format(MICROS + 999_999) == "2025-12-03T06:00:01.123455Z"
    assert stamps.format(0) == "1970-01-01T00:00:00.000000Z"


def test_streamed_lines_reach_the_forward_function_as_they_are(tmp_path: Path) -> None:
    got: list[bytes] = []
    arrived = threading.Event()

    def forward(lines: list[bytes]) -> None:
        got.extend(lines)
        if len(got) >= 4:
            arrived.set()

    path = tmp_path / "access.sock"
    path.touch()  # a leftover file is replaced
    access = AccessLog(path, forward, dropped=lambda: 0).start()
    try:
        assert path.stat().st_mode & 0o777 == 0o600
        line = HTTP.encode() + b"\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as old:
            old.connect(str(path))
            old.sendall(b"not an access line\n" + line[:40])  # a line in two writes
            time.sleep(0.1)
            old.sendall(line[40:])
            # a second connection (a reloaded HAProxy's) while the first is open
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as new:
                new.connect(str(path))
                new.sendall(line * 2)
                assert arrived.wait(10)
            old.sendall(b"cut by the end of its connection")
        time.sleep(0.2)
    finally:
        access.stop()
    assert sorted(got) == sorted([b"not an access line", HTTP.encode(), *[HTTP.encode()] * 2])
    assert access.received == 4


class Collector:
    """A stand-in logd on a real socket: records each POST's path, token and body."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, str, bytes]] = []
        self.got = threading.Event()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.posts.append((self.path, self.headers["Authorization"], body))
                collector.got.set()
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


def test_the_forwarder_posts_batches_and_counts_what_does_not_fit() -> None:
    collector = Collector()
    forwarder = Forwarder(collector.url, "platform/x", max_lines=3).start()
    try:
        forwarder.put([b"one", b"two"])
        assert collector.got.wait(10)
        forwarder.put([b"a", b"b", b"c", b"d"])  # room for 3 while nothing is being sent
    finally:
        forwarder.stop(5)
        collector.stop()
    assert collector.posts[0] == ("/v1/ingest/access", "Bearer platform/x", b"one\ntwo")
    bodies = b"\n".join(body for _, _, body in collector.posts[1:])
    assert bodies == b"a\nb\nc"
    assert forwarder.dropped == 1
    assert forwarder.forwarded == 5
