"""Access lines from HAProxy into each app's log stream (source `router`).

HAProxy logs one line per HTTP request and per TCP connection (formats in haproxy.py's
`render`) into a ring in its memory; the ring's forwarder streams them, many per write, to a
unix stream socket in the run directory, `access.sock`, which this module listens on (and
connects again when the controller comes back). A thread of its own ("access-log") reads them
and a `Forwarder` posts them, as HAProxy wrote them, in batches to `berth logd`
(`/v1/ingest/access`, the platform token), which turns each into a record of its app
(framework/accesslines.py). The router does no per-line work but reading: Python's CPU per
request is what decides how close the router comes to nginx.

HAProxy never waits on Python: when the controller is away or reads too slowly, the lines
wait in the ring (4 MiB), and once it is full new ones are dropped and HAProxy counts them
(`show events`). This thread and the Forwarder's run at nice 10, so under saturation HAProxy
keeps the CPU. Lost lines are counted, never silent: HAProxy's counter is read every 10 s, the
Forwarder counts what its bounded buffer could not take or logd refused, and both are logged
in the router's own log (which apps they were for is unknown).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import cast

from berth.framework import http1, logship

log = logging.getLogger(__name__)

SOCKET_NAME = "access.sock"
MAX_LINE = 16384  # HAProxy's `len` for access lines
READ_BYTES = 1 << 20  # one recv takes this much at most
MAX_READ = 8 << 20  # bytes read from one connection in one go at most (then the others' turn)
GATHER = 0.02  # seconds lines may gather in the socket before a read
CHECK_DROPS = 10.0  # seconds between reading HAProxy's dropped-lines counter
NICE = 10  # the threads yield the CPU to HAProxy when both want it (see the module doc)
INGEST_PATH = "/v1/ingest/access"
LINGER = 0.05  # seconds a batch may wait for more lines
MAX_BATCH_BYTES = 1024 * 1024
BACKOFF_START, BACKOFF_MAX = 0.2, 10.0

Forward = Callable[[list[bytes]], None]  # a batch of access lines, as HAProxy wrote them


def _nice() -> None:
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)


class Forwarder:
    """A bounded buffer of access lines and the thread that posts them to logd. `put` never
    blocks: what does not fit is counted (`dropped`) and logged."""

    def __init__(
        self, url: str, token: str, *, max_lines: int = 50_000, max_bytes: int = 8 << 20
    ) -> None:
        self._endpoint = http1.Endpoint.parse(url)
        self._token = token
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._lines: deque[bytes] = deque()
        self._bytes = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="access-forward", daemon=True)
        self.forwarded = 0
        self.dropped = 0

    def start(self) -> Forwarder:
        self._thread.start()
        return self

    def put(self, lines: list[bytes]) -> None:
        with self._lock:
            was_empty = not self._lines
            for line in lines:
                if len(self._lines) >= self._max_lines or self._bytes + len(line) > self._max_bytes:
                    self.dropped += 1
                    continue
                self._lines.append(line)
                self._bytes += len(line)
            if was_empty:
                self._wake.notify()

    def stop(self, timeout: float = 2.0) -> None:
        with self._lock:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)
        if self.dropped:
            log.warning("access lines dropped by the router", extra={"lines": self.dropped})

    def _take(self) -> list[bytes] | None:
        with self._lock:
            while not self._lines and not self._stopping:
                self._wake.wait()
            if not self._lines:
                return None
            if not self._stopping:  # let the burst gather: one POST for many lines
                self._wake.wait(LINGER)
            batch: list[bytes] = []
            size = 0
            while self._lines and size < MAX_BATCH_BYTES:
                line = self._lines.popleft()
                batch.append(line)
                size += len(line) + 1
            self._bytes -= size - len(batch)
            return batch

    def _run(self) -> None:
        _nice()
        backoff = BACKOFF_START
        reported = 0
        while (batch := self._take()) is not None:
            body = b"\n".join(batch)
            while True:
                status = self._post(body)
                if status is not None and status < 500:
                    break
                with self._lock:
                    if self._stopping:
                        self.dropped += len(batch)
                        return
                time.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            backoff = BACKOFF_START
            if status == 200:
                self.forwarded += len(batch)
            else:
                self.dropped += len(batch)
                log.error("logd refused a batch of access lines", extra={"status": status})
            if self.dropped > reported:
                log.warning(
                    "access lines dropped: the router's buffer was full or logd away",
                    extra={"lines": self.dropped - reported, "total": self.dropped},
                )
                reported = self.dropped

    def _post(self, body: bytes) -> int | None:
        try:
            return logship.post(
                self._endpoint, INGEST_PATH, self._token, body, "text/plain; charset=utf-8"
            )
        except OSError as e:
            log.debug("logd not reachable for access lines: %s", e)
            return None


class AccessLog:
    """Listens on `path` and forwards the lines HAProxy's access ring sends there until
    `stop`. HAProxy may hold several connections at once (after a reload the old worker's
    ring keeps sending until it exits); each is read on its own, whole lines only."""

    def __init__(
        self, path: Path, forward: Forward, dropped: Callable[[], int] | None = None
    ) -> None:
        """`dropped`: HAProxy's count of log lines it could not send (checked every
        `CHECK_DROPS` seconds; an increase is logged as a warning)."""
        self._path = path
        self._forward = forward
        self._dropped = dropped
        self._dropped_seen = 0
        self._checked_at = time.monotonic()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._selector = selectors.DefaultSelector()
        self._partial: dict[socket.socket, bytes] = {}  # a line not yet ended, per connection
        self._thread: threading.Thread | None = None
        self.received = 0

    def start(self) -> AccessLog:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()  # a socket left by an earlier controller
        listener.bind(str(self._path))
        self._path.chmod(0o600)
        listener.listen(16)
        listener.setblocking(False)  # waits are selects of 0.5 s, so `stop` is seen
        self._selector.register(listener, selectors.EVENT_READ)
        self._listener = listener
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def _run(self) -> None:
        _nice()
        while not self._stop.is_set():
            try:
                ready = self._selector.select(0.5)
            except OSError as e:
                log.warning("access log socket failed: %s", e)
                return
            if ready:
                # let lines gather: a wake-up per line would cost more than reading it
                time.sleep(GATHER)
                lines: list[bytes] = []
                for key, _ in ready:
                    sock = cast(socket.socket, key.fileobj)
                    if sock is self._listener:
                        self._accept()
                    else:
                        self._read(sock, lines)
                if lines:
                    self.received += len(lines)
                    self._forward(lines)
            if time.monotonic() - self._checked_at > CHECK_DROPS:
                self._check_drops()

    def _accept(self) -> None:
        assert self._listener is not None
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                sock, _ = self._listener.accept()
                sock.setblocking(False)
                self._selector.register(sock, selectors.EVENT_READ)
                self._partial[sock] = b""

    def _read(self, sock: socket.socket, lines: list[bytes]) -> None:
        """Whatever `sock` has now, as whole lines into `lines`; at its end, it is closed
        (a line cut by it is dropped: HAProxy sends each line whole, or not at all)."""
        data = self._partial[sock]
        try:
            while len(data) < MAX_READ:
                chunk = sock.recv(READ_BYTES)
                if not chunk:
                    self._close(sock)
                    break
                data += chunk
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            log.debug("an access ring connection failed: %s", e)
            self._close(sock)
        *whole, rest = data.split(b"\n")
        lines.extend(line for line in whole if line)
        if sock in self._partial:
            if len(rest) > MAX_LINE:  # never ends: cut, not held forever
                lines.append(rest[:MAX_LINE])
                rest = b""
            self._partial[sock] = rest

    def _close(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        self._partial.pop(sock, None)
        sock.close()

    def _check_drops(self) -> None:
        self._checked_at = time.monotonic()
        if self._dropped is None:
            return
        try:
            total = self._dropped()
        except Exception as e:  # HAProxy restarting: try again later
            log.debug("could not read HAProxy's dropped logs: %s", e)
            return
        if total < self._dropped_seen:  # a new HAProxy counts from 0
            self._dropped_seen = 0
        if total > self._dropped_seen:
            log.warning(
                "HAProxy dropped access lines: the router was too busy to read them",
                extra={"dropped": total - self._dropped_seen, "dropped_total": total},
            )
            self._dropped_seen = total
