"""Shipping log records to `berth logd`: what an executor does with its container's output, and
what the framework does with platform events (a task crashed, ran out of memory).

`Shipper` never blocks its caller: `put` appends to a bounded in-memory queue (at most
`max_records` records and `max_bytes` of text) and counts what does not fit; one "log-ship"
thread takes batches (up to 1000 records or 512 KiB, lingering 50 ms for more) and POSTs them
as JSON to logd's `/v1/ingest` on `framework/http1.py` (no `requests`: the executor stays
small). A failed POST is retried with backoff (0.2 s doubling to 10 s) while the queue keeps
filling up to its bound; the number of lines dropped meanwhile travels with the next batch
that gets through, and logd writes it into the app's log as a `berth` line. A line over
16 KiB becomes several records; a last line without a newline is shipped as it is.

Also here: the data dir's `logs.key`, from which every logd token is derived (loglines.py).

Threads: callers' threads call `put`; the "log-ship" thread owns the connection. Imports only
berth.framework modules and the standard library (no hashlib: tokens come ready-made).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from berth.framework import http1
from berth.framework.loglines import Record, platform_token, split_line, task_token, timestamp

log = logging.getLogger(__name__)

KEY_FILE = "logs.key"
INGEST_PATH = "/v1/ingest"
BATCH_RECORDS = 1000
BATCH_BYTES = 512 * 1024
LINGER = 0.05
BACKOFF_START, BACKOFF_MAX = 0.2, 10.0


def load_or_create_key(data_dir: Path) -> bytes:
    """DATA_DIR/logs.key (32 random bytes, 0600), created on first use. Written to a temporary
    file and linked into place, so a process starting at the same moment never reads half a
    key. Every host that runs logd, the framework or the API must share it (copy the file)."""
    path = data_dir / KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        return _check_key(path, path.read_bytes())
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = data_dir / f".{KEY_FILE}.{os.getpid()}.{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process won the race: use its key
    finally:
        tmp.unlink()
    return _check_key(path, path.read_bytes())


def _check_key(path: Path, key: bytes) -> bytes:
    if len(key) != 32:
        raise ValueError(f"{path} is not a Berth logs key (expected 32 bytes)")
    return key


class Shipper:
    """A bounded queue of records and the thread that sends them to logd.

    `identity` (app, process, release) is given for a task's shipper: its batches are
    `{"dropped": N, "lines": [[ts, stream, text], …]}` and logd takes app and process from the
    token. Without it (the platform's shipper) batches carry whole records."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        identity: tuple[str, str, int] | None = None,
        max_records: int = 10_000,
        max_bytes: int = 8 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._endpoint = http1.Endpoint.parse(url)
        self._token = token
        self._identity = identity
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[Record] = deque()
        self._queued_bytes = 0
        self._dropped = 0  # not yet reported to logd
        self._sending = 0  # records taken by the thread, not yet delivered
        self._closing = False
        self._closed = threading.Event()
        self._healthy = True  # the last attempt reached logd
        self.shipped = 0
        self.dropped_total = 0
        self._thread = threading.Thread(target=self._run, name="log-ship", daemon=True)

    def start(self) -> Shipper:
        self._thread.start()
        return self

    # -- callers ----------------------------------------------------------------------------

    def put(self, stream: str, line: bytes) -> None:
        """One line of a task's output (its newline, if any, included). Never blocks."""
        assert self._identity is not None
        app, process, _ = self._identity
        ts = timestamp(self._clock())
        self._add([Record(ts, app, "app", process, stream, t) for t in split_line(line)])

    def event(self, app: str, process: str, text: str, source: str = "berth") -> int:
        """A platform line for `app` (the platform shipper). Never blocks. Returns how many of
        its records did not fit (0: all queued), so a caller can tell the app."""
        ts = timestamp(self._clock())
        texts = split_line(text.encode())
        return self._add([Record(ts, app, source, process, "stdout", t) for t in texts])

    def _add(self, records: list[Record]) -> int:
        dropped = 0
        with self._lock:
            was_empty = not self._queue
            for record in records:
                size = len(record.text) + 64
                if (
                    self._closing
                    or len(self._queue) >= self._max_records
                    or self._queued_bytes + size > self._max_bytes
                ):
                    self._dropped += 1
                    self.dropped_total += 1
                    dropped += 1
                    continue
                self._queue.append(record)
                self._queued_bytes += size
            # wake the sender only when it may be waiting for work or a full batch: a notify
            # per record would end its linger each time and send batches of one
            if was_empty or len(self._queue) >= BATCH_RECORDS or self._dropped:
                self._wake.notify()
        return dropped

    def close(self, timeout: float = 3.0) -> None:
        """Deliver what is queued (for at most `timeout` seconds, and only while logd answers),
        then stop the thread."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while (self._queue or self._sending) and self._healthy:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(min(left, 0.1))
            self._closing = True
            self._wake.notify_all()
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
        left = len(self._queue) + self._dropped
        if left:
            log.warning("log lines not delivered to logd", extra={"lines": left})

    # -- the thread -------------------------------------------------------------------------

    def _take(self) -> tuple[list[Record], int] | None:
        """The next batch and the drops to report with it; None when closing."""
        with self._lock:
            while not self._queue and not self._dropped and not self._closing:
                self._wake.wait()
            if self._closing:
                return None
            # let a burst gather into one batch: wait out LINGER (records arriving meanwhile
            # do not end the wait; only a full batch or closing does)
            deadline = time.monotonic() + LINGER
            while len(self._queue) < BATCH_RECORDS and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(left)
            batch: list[Record] = []
            size = 0
            while self._queue and len(batch) < BATCH_RECORDS and size < BATCH_BYTES:
                record = self._queue.popleft()
                batch.append(record)
                size += len(record.text) + 64
            self._queued_bytes -= size
            dropped, self._dropped = self._dropped, 0
            self._sending = len(batch)
            return batch, dropped

    def _body(self, batch: list[Record], dropped: int) -> bytes:
        if self._identity is not None:
            lines = [[r.ts, r.stream, r.text] for r in batch]
            return json.dumps({"dropped": dropped, "lines": lines}).encode()
        return json.dumps({"dropped": dropped, "records": [r.to_json() for r in batch]}).encode()

    def _run(self) -> None:
        backoff = BACKOFF_START
        while (taken := self._take()) is not None:
            batch, dropped = taken
            body = self._body(batch, dropped)
            while True:
                status = self._post(body)
                if status is not None and status < 500:
                    break
                with self._lock:
                    self._healthy = False
                    self._wake.notify_all()
                if self._closed.wait(backoff):
                    with self._lock:  # closing while logd is away: these are lost, and said so
                        self._dropped += len(batch) + dropped
                        self.dropped_total += len(batch)
                        self._sending = 0
                    return
                backoff = min(backoff * 2, BACKOFF_MAX)
            backoff = BACKOFF_START
            with self._lock:
                self._healthy = True
                self._sending = 0
                if status == 200:
                    self.shipped += len(batch)
                else:  # refused (a bug, or a token logd does not know): counted, not retried
                    self.dropped_total += len(batch)
                self._wake.notify_all()
            if status != 200:
                log.error("logd refused a batch of log lines", extra={"status": status})

    def _post(self, body: bytes) -> int | None:
        try:
            return post(self._endpoint, INGEST_PATH, self._token, body, "application/json")
        except OSError as e:
            if self._healthy:
                log.warning("logd is not reachable: %s", e, extra={"logd": self._endpoint.url})
            return None


def post(endpoint: http1.Endpoint, path: str, token: str, body: bytes, content_type: str) -> int:
    """POST a batch to logd; its answer's status. Raises OSError when logd is not reached."""
    with http1.request(
        endpoint,
        "POST",
        path,
        body=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
        connect_timeout=2.0,
        timeout=15.0,
    ) as response:
        response.read(64 * 1024)
        return response.status


class LogLink:
    """The framework's link to logd: the URL and per-task tokens executors are launched with,
    and platform events (`berth` lines: a task crashed, ran out of memory), shipped by a
    Shipper of their own so the scheduler never waits for logd."""

    def __init__(self, url: str, key: bytes) -> None:
        self.url = url
        self._key = key
        self._events = Shipper(url, platform_token(key), max_records=2000)

    def task_token(self, app: str, process: str, release: int) -> str:
        return task_token(self._key, app, process, release)

    def event(self, app: str, process: str, text: str) -> None:
        self._events.event(app, process, text)

    def start(self) -> LogLink:
        self._events.start()
        return self

    def close(self, timeout: float = 2.0) -> None:
        self._events.close(timeout)
