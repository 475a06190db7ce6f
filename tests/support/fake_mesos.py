"""A stand-in Mesos master for contract tests: it speaks the v1 scheduler API's wire format
(SUBSCRIBE → 200 + Mesos-Stream-Id + chunked RecordIO events; other calls → 202) and records
every call exactly as sent, so tests can check the JSON Berth puts on the wire. The events it
sends are written from Mesos's documentation (scheduler-http-api, scheduler.proto)."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from berth.framework.recordio import encode

_CLOSE = object()


class FakeMaster:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []  # every non-SUBSCRIBE call body
        self.headers: list[dict[str, str]] = []  # their headers
        self.subscribes: list[dict[str, Any]] = []
        self.redirect_to: str | None = None
        self.stream_id = ""
        self._events: queue.Queue[object] = queue.Queue()
        self._subscribed = threading.Condition()
        master = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                if self.path != "/api/v1/scheduler":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if master.redirect_to:
                    self.send_response(307)
                    self.send_header("Location", f"//{master.redirect_to}/api/v1/scheduler")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if body.get("type") == "SUBSCRIBE":
                    master._stream(self, body)
                    return
                master.calls.append(body)
                master.headers.append(dict(self.headers))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _stream(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        # Each subscription has its own queue; a newer one ends the older stream, as a master
        # does when a framework subscribes again.
        events: queue.Queue[object] = queue.Queue()
        with self._subscribed:
            self._events.put(_CLOSE)
            self._events = events
        self.stream_id = str(uuid.uuid4())
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Mesos-Stream-Id", self.stream_id)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        with self._subscribed:
            self.subscribes.append(body)
            self._subscribed.notify_all()
        while True:
            event = events.get()
            if event is _CLOSE:
                handler.wfile.write(b"0\r\n\r\n")
                handler.wfile.flush()
                handler.close_connection = True
                return
            data = encode(json.dumps(event).encode())
            try:
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                handler.wfile.flush()
            except OSError:
                return

    # -- what tests do -------------------------------------------------------------------------

    def send(self, event: dict[str, Any]) -> None:
        self._events.put(event)

    def subscribed(self, framework_id: str = "fw-1", heartbeat: float = 15.0) -> None:
        self.send(
            {
                "type": "SUBSCRIBED",
                "subscribed": {
                    "framework_id": {"value": framework_id},
                    "heartbeat_interval_seconds": heartbeat,
                    "master_info": {"id": "m1", "ip": 16777343, "port": 5050, "hostname": "master"},
                },
            }
        )

    def close_stream(self) -> None:
        self._events.put(_CLOSE)

    def wait_subscribes(self, n: int, timeout: float = 15.0) -> dict[str, Any]:
        with self._subscribed:
            if not self._subscribed.wait_for(lambda: len(self.subscribes) >= n, timeout):
                raise TimeoutError(f"{len(self.subscribes)} SUBSCRIBEs, expected {n}")
            return self.subscribes[n - 1]

    def wait_calls(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.calls)} calls, expected {n}: {self.calls}")
            time.sleep(0.01)
        return self.calls

    def stop(self) -> None:
        self.close_stream()
        self._server.shutdown()
        self._server.server_close()
