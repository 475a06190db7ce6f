"""A stand-in Mesos agent for contract tests: it speaks the v1 executor API's wire format
(SUBSCRIBE → 200 + chunked RecordIO events; UPDATE and MESSAGE → 202) and records every call
exactly as sent, so tests can check the JSON Berth's executor driver puts on the wire. The
events it sends are written from Mesos's documentation (executor-http-api, executor.proto).

Faults tests can inject: close the event stream (`close_stream`), answer SUBSCRIBE or the other
calls with another status (`subscribe_status = 503` is what a recovering agent says), or send
nothing at all after SUBSCRIBED (no heartbeats)."""

from __future__ import annotations

import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from berth.framework.recordio import encode

_CLOSE = object()

EXECUTOR_INFO = {
    "executor_id": {"value": "myapp.web.7.x"},
    "framework_id": {"value": "fw-1"},
    "command": {"value": "berth-executor"},
    "shutdown_grace_period": {"nanoseconds": 40_000_000_000},
}
FRAMEWORK_INFO = {"id": {"value": "fw-1"}, "user": "berth", "name": "berth", "checkpoint": True}
AGENT_INFO = {"id": {"value": "a1"}, "hostname": "agent1", "port": 5051}
CONTAINER_ID = {"value": "c0ffee"}


class FakeAgent:
    def __init__(self) -> None:
        self.subscribes: list[dict[str, Any]] = []  # every SUBSCRIBE body, answered or not
        self.accepted: list[dict[str, Any]] = []  # those answered with an event stream
        self.subscribe_times: list[float] = []  # when each arrived (monotonic)
        self.calls: list[dict[str, Any]] = []  # every other call body
        self.headers: list[dict[str, str]] = []  # the headers of every request
        self.subscribe_status = 200
        self.call_status = 202
        self._stream: queue.Queue[object] | None = None  # events for the current stream
        self._changed = threading.Condition()
        agent = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                if self.path != "/api/v1/executor":
                    self._empty(404)
                    return
                with agent._changed:
                    agent.headers.append(dict(self.headers))
                if body.get("type") == "SUBSCRIBE":
                    agent._subscribe(self, body)
                    return
                with agent._changed:
                    agent.calls.append(body)
                    agent._changed.notify_all()
                self._empty(agent.call_status)

            def _empty(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _subscribe(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        events: queue.Queue[object] = queue.Queue()
        with self._changed:
            status = self.subscribe_status
            self.subscribes.append(body)
            self.subscribe_times.append(time.monotonic())
            if status == 200:
                self.accepted.append(body)
                if self._stream is not None:
                    self._stream.put(_CLOSE)  # a new subscription replaces the old one
                self._stream = events
            self._changed.notify_all()
        if status != 200:
            text = b"Agent has not finished recovery"
            handler.send_response(status)
            handler.send_header("Content-Length", str(len(text)))
            handler.end_headers()
            handler.wfile.write(text)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        while True:
            event = events.get()
            if event is _CLOSE:
                try:
                    handler.wfile.write(b"0\r\n\r\n")
                    handler.wfile.flush()
                except OSError:
                    pass
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
        """An event on the current stream (wait_subscribes first: there must be one)."""
        with self._changed:
            stream = self._stream
        assert stream is not None, "no event stream open"
        stream.put(event)

    def subscribed(self) -> None:
        self.send(
            {
                "type": "SUBSCRIBED",
                "subscribed": {
                    "executor_info": EXECUTOR_INFO,
                    "framework_info": FRAMEWORK_INFO,
                    "agent_info": AGENT_INFO,
                    "container_id": CONTAINER_ID,
                },
            }
        )

    def close_stream(self) -> None:
        with self._changed:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.put(_CLOSE)

    def wait_subscribes(self, n: int, timeout: float = 10.0) -> dict[str, Any]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.subscribes) >= n, timeout):
                raise TimeoutError(f"{len(self.subscribes)} SUBSCRIBEs, expected {n}")
            return self.subscribes[n - 1]

    def wait_accepted(self, n: int, timeout: float = 10.0) -> dict[str, Any]:
        """The n-th SUBSCRIBE that got an event stream (send events to it after this)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.accepted) >= n, timeout):
                raise TimeoutError(f"{len(self.accepted)} streams, expected {n}")
            return self.accepted[n - 1]

    def wait_calls(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.calls) >= n, timeout):
                raise TimeoutError(f"{len(self.calls)} calls, expected {n}: {self.calls}")
            return list(self.calls)

    def stop(self) -> None:
        self.close_stream()
        self._server.shutdown()
        self._server.server_close()
