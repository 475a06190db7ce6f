"""`berth logd`'s drains: every record logd writes for an app is also sent to the app's drains
(syslog over TCP or TLS, RFC 5424 with RFC 6587 octet counting; or HTTPS POSTs of NDJSON).

Each drain has its own bounded buffer (`Buffer`: 50,000 records by default, 8 MiB) and its
own sender thread ("drain-<id>"). The app's writer thread (logstore.py) only offers records to the
buffers, which never blocks: what does not fit is counted. A sender takes a batch, sends it,
and on failure keeps the batch and tries again after a capped backoff (drainurl.backoff:
0.5 s doubling to 30 s), so a drain that is down, slow or black-holing costs only its own
buffer; the app, ingestion and the other drains carry on. Lines counted as dropped are
reported in the app's own log as a `berth` line ("drain syslog://…: N lines dropped …", at
most one every REPORT_EVERY seconds per drain) and in the drain's stats (`berth drains`).

Delivery is at least once while a drain answers: a batch that failed part way is sent again
(a syslog receiver may see a few lines twice). A syslog connection the receiver closed is
noticed before the next write (a readable socket at EOF), not after it.

The drain list comes from ZooKeeper (`DrainWatcher`, a thread with a Store and one-shot
watches, rereading everything on any change and every RESYNC_EVERY seconds); logd keeps
taking lines while ZooKeeper is away and keeps the drains it last read.

Threads: the app writers call `Hub.deliver`; one thread per drain sends; "logd-drains" reads
the drain list; HTTP handler threads read `Hub.stats`. The hub's lock guards its map of
drains; each buffer has its own lock. Imports nothing of the API's Flask side.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from berth.framework.drainurl import Drain, Target, backoff, frame, syslog_message
from berth.framework.errors import BerthError, Unavailable
from berth.framework.loglines import Record, timestamp
from berth.framework.settings import Settings
from berth.framework.state import Store

log = logging.getLogger(__name__)

BUFFER_RECORDS = 50_000  # --drains-buffer-lines
# twice logstore.QUEUE_BYTES (same cost per record): a drain that keeps up always has room for
# a whole batch the app's writer hands over, however large
BUFFER_BYTES = 8 * 1024 * 1024
RECORD_OVERHEAD = 128  # what a buffered record costs beyond its text, roughly
SYSLOG_BATCH = 1000
HTTPS_BATCH_RECORDS = 1000
HTTPS_BATCH_BYTES = 1024 * 1024
CONNECT_TIMEOUT = 5.0
SEND_TIMEOUT = 10.0
REPORT_EVERY = 10.0
RESYNC_EVERY = 30.0

Note = Callable[[str, str], None]  # (app, text): write a berth line into the app's log


class Buffer:
    """A drain's bounded FIFO of records: `offer` never blocks and counts what does not fit;
    `take` waits for records and hands out a batch."""

    def __init__(self, max_records: int = BUFFER_RECORDS, max_bytes: int = BUFFER_BYTES) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._records: deque[Record] = deque()
        self._bytes = 0
        self._closed = False
        self.dropped_total = 0
        self._dropped_unreported = 0

    @staticmethod
    def cost(record: Record) -> int:
        return len(record.text) + RECORD_OVERHEAD

    def offer(self, records: Sequence[Record]) -> int:
        """Buffer what fits, in order; how many were taken (the rest are counted dropped)."""
        taken = 0
        with self._lock:
            for record in records:
                cost = self.cost(record)
                if (
                    self._closed
                    or len(self._records) >= self.max_records
                    or self._bytes + cost > self.max_bytes
                ):
                    self.dropped_total += 1
                    self._dropped_unreported += 1
                    continue
                self._records.append(record)
                self._bytes += cost
                taken += 1
            if taken:
                self._ready.notify()
        return taken

    def take(self, max_records: int, max_bytes: int, timeout: float) -> list[Record]:
        """Up to `max_records` records of at most `max_bytes` (at least one), waiting up to
        `timeout` for the first; [] if none came (or the buffer was closed)."""
        with self._lock:
            if not self._records and not self._closed:
                self._ready.wait(timeout)
            batch: list[Record] = []
            size = 0
            while self._records and len(batch) < max_records:
                cost = self.cost(self._records[0])
                if batch and size + cost > max_bytes:
                    break
                batch.append(self._records.popleft())
                size += cost
                self._bytes -= cost
            return batch

    def take_dropped(self) -> int:
        """Lines dropped since the last call."""
        with self._lock:
            count, self._dropped_unreported = self._dropped_unreported, 0
            return count

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._ready.notify_all()


class DrainError(BerthError):
    """A drain refused a batch (a status that is not 2xx)."""


class Sender(Protocol):
    def send(self, batch: Sequence[Record]) -> None: ...

    def close(self) -> None: ...


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's CAs, plus `ca_file`'s (BERTH_DRAINS_CA_FILE) if given; hostnames checked."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


class SyslogSender:
    """One TCP (or TLS) connection, reopened when it fails; each record one framed message."""

    def __init__(self, target: Target, context: ssl.SSLContext | None) -> None:
        self._target = target
        self._context = context
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        raw = socket.create_connection((self._target.host, self._target.port), CONNECT_TIMEOUT)
        try:
            raw.settimeout(SEND_TIMEOUT)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is None:
                return raw
            return self._context.wrap_socket(raw, server_hostname=self._target.host)
        except BaseException:
            raw.close()
            raise

    def _closed_by_peer(self, sock: socket.socket) -> bool:
        """Whether the receiver closed the connection (readable at EOF) since the last write."""
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        try:
            sock.setblocking(False)
            data = sock.recv(4096)
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        except OSError:
            return True
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(SEND_TIMEOUT)
        return not data  # receivers never write to us; EOF means closed

    def send(self, batch: Sequence[Record]) -> None:
        if self._sock is not None and self._closed_by_peer(self._sock):
            self.close()
        if self._sock is None:
            self._sock = self._connect()
        payload = b"".join(frame(syslog_message(r)) for r in batch)
        try:
            self._sock.sendall(payload)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


class HttpsSender:
    """POSTs each batch as NDJSON (one loglines record per line, `application/x-ndjson`) on a
    kept-alive connection; any 2xx is delivered, anything else is retried."""

    def __init__(self, target: Target, context: ssl.SSLContext) -> None:
        self._target = target
        self._context = context
        self._conn: http.client.HTTPSConnection | None = None

    def send(self, batch: Sequence[Record]) -> None:
        body = b"".join(r.encode() for r in batch)
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(
                self._target.host, self._target.port, timeout=SEND_TIMEOUT, context=self._context
            )
        try:
            self._conn.request(
                "POST",
                self._target.path,
                body=body,
                headers={
                    "Content-Type": "application/x-ndjson",
                    "User-Agent": "berth-logd",
                    "Logplex-Msg-Count": str(len(batch)),
                },
            )
            answer = self._conn.getresponse()
            answer.read(64 * 1024)
            status = answer.status
            if answer.will_close:
                self.close()
        except BaseException:
            self.close()
            raise
        if not 200 <= status < 300:
            raise DrainError(f"answered HTTP {status}")

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._conn = None


def make_sender(target: Target, ca_file: str | None) -> Sender:
    if target.scheme == "https":
        return HttpsSender(target, tls_context(ca_file))
    context = tls_context(ca_file) if target.scheme == "syslog+tls" else None
    return SyslogSender(target, context)


@dataclass(frozen=True, slots=True)
class Stats:
    buffered: int
    delivered: int
    dropped: int
    status: str  # "up", "retrying" or "starting"
    last_error: str

    def to_json(self) -> dict[str, object]:
        return {
            "buffered": self.buffered,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "status": self.status,
            "last_error": self.last_error,
        }


class Worker:
    """One drain of one app: its buffer and its sender thread."""

    def __init__(
        self,
        app: str,
        drain: Drain,
        sender: Sender,
        note: Note,
        *,
        buffer: Buffer | None = None,
        report_every: float = REPORT_EVERY,
    ) -> None:
        self.app = app
        self.drain = drain
        self.display = drain.target.display
        self.buffer = buffer if buffer is not None else Buffer()
        self._sender = sender
        self._note = note
        self._report_every = report_every
        self._stop = threading.Event()
        self._batch_records = (
            SYSLOG_BATCH if drain.target.scheme != "https" else HTTPS_BATCH_RECORDS
        )
        self.delivered = 0
        self.failures = 0  # in a row
        self.last_error = ""
        self._sent_once = False
        self._thread = threading.Thread(target=self._run, name=f"drain-{drain.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stats(self) -> Stats:
        status = "retrying" if self.failures else "up" if self._sent_once else "starting"
        return Stats(
            len(self.buffer), self.delivered, self.buffer.dropped_total, status, self.last_error
        )

    def _run(self) -> None:
        last_report = 0.0
        batch: list[Record] = []
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_report >= self._report_every:
                dropped = self.buffer.take_dropped()
                if dropped:
                    last_report = now
                    self._note(
                        self.app,
                        f"drain {self.display}: {dropped} lines dropped (the drain was"
                        f" unreachable or slower than the app; it buffers"
                        f" {self.buffer.max_records} lines)",
                    )
            if not batch:
                batch = self.buffer.take(self._batch_records, HTTPS_BATCH_BYTES, 1.0)
                if not batch:
                    continue
            try:
                self._sender.send(batch)
            except (OSError, DrainError, ssl.SSLError, http.client.HTTPException) as e:
                self.failures += 1
                self.last_error = _describe(e)
                if self.failures == 1:
                    log.warning(
                        "drain failing: %s",
                        self.last_error,
                        extra={"app": self.app, "drain": self.drain.id, "url": self.display},
                    )
                self._stop.wait(backoff(self.failures))
                continue
            if self.failures:
                log.info(
                    "drain delivering again",
                    extra={"app": self.app, "drain": self.drain.id, "url": self.display},
                )
            self.failures = 0
            self._sent_once = True
            self.delivered += len(batch)
            batch = []
        self._sender.close()

    def stop(self) -> None:
        self._stop.set()
        self.buffer.close()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)


def _describe(error: BaseException) -> str:
    """A failure in a few words; never a URL (the sender's errors name hosts, not queries)."""
    if isinstance(error, DrainError):
        return error.message
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: {error.verify_message or 'certificate not trusted'}"
    if isinstance(error, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    return f"{type(error).__name__}: {str(error)[:200]}"


SenderFactory = Callable[[Target], Sender]


class Hub:
    """Every app's drain workers. `update` makes them match the drain list; `deliver` offers
    an app's new records to its drains."""

    def __init__(
        self, note: Note, make: SenderFactory, buffer_records: int = BUFFER_RECORDS
    ) -> None:
        self._note = note
        self._make = make
        self._buffer_records = buffer_records
        self._lock = threading.Lock()
        self._workers: dict[str, dict[str, Worker]] = {}  # app → drain id → worker

    def deliver(self, app: str, records: Sequence[Record]) -> None:
        with self._lock:
            workers = list(self._workers.get(app, {}).values())
        for worker in workers:
            worker.buffer.offer(records)

    def update(self, drains: Mapping[str, Sequence[Drain]]) -> None:
        stopped: list[Worker] = []
        with self._lock:
            for app in list(self._workers):
                wanted = {d.id for d in drains.get(app, ())}
                for drain_id in list(self._workers[app]):
                    if drain_id not in wanted:
                        stopped.append(self._workers[app].pop(drain_id))
                if not self._workers[app]:
                    del self._workers[app]
            for app, listed in drains.items():
                for drain in listed:
                    if drain.id in self._workers.get(app, {}):
                        continue
                    worker = Worker(
                        app,
                        drain,
                        self._make(drain.target),
                        self._note,
                        buffer=Buffer(self._buffer_records),
                    )
                    self._workers.setdefault(app, {})[drain.id] = worker
                    worker.start()
                    log.info(
                        "drain started",
                        extra={"app": app, "drain": drain.id, "url": worker.display},
                    )
        for worker in stopped:
            worker.stop()
            log.info("drain stopped", extra={"app": worker.app, "drain": worker.drain.id})

    def stats(self, app: str) -> dict[str, Stats]:
        with self._lock:
            return {i: w.stats() for i, w in self._workers.get(app, {}).items()}

    def close(self, timeout: float = 5.0) -> None:
        """Stop every sender; wait up to `timeout` in all for them to end."""
        with self._lock:
            workers = [w for by_id in self._workers.values() for w in by_id.values()]
            self._workers.clear()
        for worker in workers:
            worker.stop()
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))


class DrainWatcher:
    """Keeps the hub's drains as ZooKeeper says (Store.all_drains with one-shot watches, a
    full read on every change, on every reconnection and every RESYNC_EVERY seconds)."""

    def __init__(self, settings: Settings, hub: Hub) -> None:
        self._settings = settings
        self._hub = hub
        self._changed = threading.Event()

    def _on_watch(self, event: object) -> None:  # kazoo's thread: only signal
        self._changed.set()

    def run(self, stop: threading.Event) -> None:
        store: Store | None = None
        while store is None and not stop.is_set():
            candidate = Store(self._settings.zk_hosts, self._settings.zk_chroot, None)
            try:
                candidate.start(wait=10.0)
                store = candidate
            except Unavailable as exc:
                log.warning("drains: waiting for ZooKeeper: %s", exc.message)
                stop.wait(2.0)
        if store is None:
            return
        store.when_connected(self._changed.set)
        try:
            while not stop.is_set():
                self._changed.clear()
                try:
                    self._hub.update(store.all_drains(watch=self._on_watch))
                except BerthError as exc:
                    log.warning("drains: could not read the drain list: %s", exc.message)
                    stop.wait(2.0)
                    continue
                deadline = time.monotonic() + RESYNC_EVERY
                while not stop.is_set() and not self._changed.is_set():
                    if time.monotonic() >= deadline:
                        break
                    self._changed.wait(0.5)
        finally:
            store.stop()


def note_record(app: str, text: str) -> Record:
    return Record(timestamp(), app, "berth", "", "stdout", text)
