"""`berth logd`'s store: each app's log history on disk, bounded by size, and the live feed
that tails read from.

On disk, `DATA_DIR/logs/<app>/` holds segment files `<16-digit sequence>.log`, each NDJSON
records (loglines.Record) in arrival order. The newest segment is appended to; once it passes
`segment_bytes` (a tenth of the cap, at least 32 KiB) the next write starts a new one, and the
oldest segments are deleted while the app's total passes `max_bytes` (default 100 MB), so an
app never holds more than its cap. Writes go to the OS at once (no fsync): they survive a
restart of logd, not necessarily a power cut. A segment whose last line was cut short by a
crash is left as it is (readers skip a line that does not parse) and a new one is started.

Memory is bounded per app: records wait in a queue of at most `queue_bytes` (4 MiB) between
the ingesting request and the app's "logs-<app>" writer thread; what does not fit is counted,
and the writer records the count as a `berth` line ("N lines dropped") before the next lines.
Each app has its own queue, lock and writer, so a flooding app fills only its own queue and
drops only its own lines; another app's lines are written by its own thread meanwhile. The
writer also keeps the last `feed_records` records (at most 4 MiB) in memory, numbered, for
tails: a tail holds only a cursor into that feed, so a slow or vanished reader costs the
writer nothing (one that falls behind the feed is told how many lines it missed).

Threads: HTTP handler threads call `ingest`, `history` and `follow`; one writer thread per app
owns its files. Everything an app's threads share is under that app's lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from berth.framework.errors import Invalid
from berth.framework.loglines import APP, Query, Record, parse_timestamp, timestamp

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 100 * 1024 * 1024
MIN_MAX_BYTES = 256 * 1024
MIN_SEGMENT_BYTES = 32 * 1024
QUEUE_BYTES = 4 * 1024 * 1024
FEED_RECORDS = 5000
FEED_BYTES = 4 * 1024 * 1024
RECORD_OVERHEAD = 128  # what a queued record costs beyond its text, roughly
SINCE_SLACK = 300.0  # records arrive out of time order across processes by less than this


def segment_bytes_for(max_bytes: int) -> int:
    return max(max_bytes // 10, MIN_SEGMENT_BYTES)


@dataclass(frozen=True, slots=True)
class Segment:
    path: Path
    size: int


class Segments:
    """One app's segment files: appending, rotating, enforcing the cap. Owned by the app's
    writer (under the app's lock); `snapshot` is what readers take."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes_for(max_bytes)
        self._sizes: dict[Path, int] = {}
        self._file: int | None = None  # fd of the newest segment, opened O_APPEND
        if directory.is_dir():
            for path in sorted(directory.glob("*.log")):
                if path.stem.isdigit():
                    self._sizes[path] = path.stat().st_size
        self._continue_newest()

    def _continue_newest(self) -> None:
        """Append to the newest segment if it ends with a whole line, else start another."""
        if not self._sizes:
            return
        newest = max(self._sizes)
        size = self._sizes[newest]
        with newest.open("rb") as f:
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    return  # cut short by a crash: the next write starts a new segment
        self._file = os.open(newest, os.O_WRONLY | os.O_APPEND)

    @property
    def total(self) -> int:
        return sum(self._sizes.values())

    def snapshot(self) -> list[Segment]:
        """The segments, oldest first, with the sizes written so far."""
        return [Segment(path, self._sizes[path]) for path in sorted(self._sizes)]

    def append(self, lines: list[bytes]) -> None:
        """Append whole lines, starting a new segment whenever the next line would take the
        current one past `segment_bytes` (a segment always takes at least one line)."""
        chunk: list[bytes] = []
        size = 0
        newest = max(self._sizes) if self._sizes else None
        for line in lines:
            full = (
                newest is not None and self._sizes[newest] + size + len(line) > self.segment_bytes
            )
            if self._file is None or newest is None or (full and self._sizes[newest] + size > 0):
                self._write(newest, chunk)
                chunk, size = [], 0
                newest = self._rotate(newest)
            chunk.append(line)
            size += len(line)
        self._write(newest, chunk)

    def _write(self, segment: Path | None, chunk: list[bytes]) -> None:
        if not chunk or segment is None or self._file is None:
            return
        view = memoryview(b"".join(chunk))
        total = len(view)
        while view:
            written = os.write(self._file, view)
            view = view[written:]
        self._sizes[segment] += total
        self._enforce_cap()

    def _rotate(self, newest: Path | None) -> Path:
        if self._file is not None:
            os.close(self._file)
            self._file = None
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        number = int(newest.stem) + 1 if newest is not None else 1
        path = self.directory / f"{number:016d}.log"
        self._file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._sizes[path] = 0
        return path

    def _enforce_cap(self) -> None:
        while len(self._sizes) > 1 and self.total > self.max_bytes:
            oldest = min(self._sizes)
            del self._sizes[oldest]
            with contextlib.suppress(FileNotFoundError):
                oldest.unlink()

    def close(self) -> None:
        if self._file is not None:
            os.close(self._file)
            self._file = None


def read_backwards(segments: list[Segment]) -> Iterator[Record]:
    """Every record of the segments (as far as each size goes), newest first. A line that does
    not parse (cut short by a crash) is skipped; a segment deleted meanwhile is skipped."""
    for segment in reversed(segments):
        try:
            with segment.path.open("rb") as f:
                data = f.read(segment.size)
        except FileNotFoundError:
            continue
        for line in reversed(data.split(b"\n")):
            if not line:
                continue
            try:
                yield Record.decode(line)
            except Invalid:
                continue


class AppLog:
    """One app's log: queue → writer → segments + feed. See the module doc."""

    def __init__(
        self,
        app: str,
        directory: Path,
        max_bytes: int,
        *,
        queue_bytes: int = QUEUE_BYTES,
        feed_records: int = FEED_RECORDS,
        clock: Callable[[], float] = time.time,
        on_written: Callable[[str, list[Record]], None] | None = None,
    ) -> None:
        self.app = app
        self._clock = clock
        self._on_written = on_written  # drains.Hub.deliver: offers the batch, never blocks
        self._disk = threading.Lock()  # the segments; taken before _lock, never after
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)  # the writer waits for records
        self._written = threading.Condition(self._lock)  # tails wait for new records
        self._queue: deque[Record] = deque()
        self._queue_bytes = 0
        self._queue_limit = queue_bytes
        self._dropped = 0  # not yet written as a berth line
        self._feed: deque[tuple[int, Record]] = deque()
        self._feed_records = feed_records
        self._feed_bytes = 0
        self._seq = 0  # of the last record written
        self._segments = Segments(directory, max_bytes)
        self._stopping = False
        self.dropped_total = 0
        self._thread = threading.Thread(target=self._write_loop, name=f"logs-{app}", daemon=True)
        self._thread.start()

    # -- ingestion (handler threads) --------------------------------------------------------

    def ingest(self, records: list[Record]) -> int:
        """Queue records for writing; never blocks on disk. How many were accepted (the rest
        are counted and reported as a berth line)."""
        accepted = 0
        with self._lock:
            for record in records:
                cost = len(record.text) + RECORD_OVERHEAD
                if self._queue_bytes + cost > self._queue_limit or self._stopping:
                    self._dropped += 1
                    self.dropped_total += 1
                    continue
                self._queue.append(record)
                self._queue_bytes += cost
                accepted += 1
            self._queued.notify()
        return accepted

    # -- the writer thread ------------------------------------------------------------------

    def _write_loop(self) -> None:
        """Take what is queued, write it (outside the app's lock, so ingestion never waits
        for the disk), then number it into the feed. `_disk` is held across both steps, so a
        snapshot never sees records on disk that the feed has not numbered yet."""
        while True:
            with self._lock:
                while not self._queue and not self._dropped and not self._stopping:
                    self._queued.wait()
                if self._stopping and not self._queue and not self._dropped:
                    break
                batch = list(self._queue)
                self._queue.clear()
                self._queue_bytes = 0
                dropped, self._dropped = self._dropped, 0
            if dropped:
                note = f"{dropped} lines dropped: logd's buffer for this app was full"
                batch.insert(
                    0, Record(timestamp(self._clock()), self.app, "berth", "", "stdout", note)
                )
            lines = [r.encode() for r in batch]
            with self._disk:
                try:
                    self._segments.append(lines)
                except OSError as e:
                    log.error("could not write the app's log: %s", e, extra={"app": self.app})
                with self._lock:
                    for record in batch:
                        self._seq += 1
                        self._feed.append((self._seq, record))
                        self._feed_bytes += len(record.text) + RECORD_OVERHEAD
                    while self._feed and (
                        len(self._feed) > self._feed_records or self._feed_bytes > FEED_BYTES
                    ):
                        self._feed_bytes -= len(self._feed.popleft()[1].text) + RECORD_OVERHEAD
                    self._written.notify_all()
            if self._on_written is not None:
                self._on_written(self.app, batch)
        with self._disk:
            self._segments.close()

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopping = True
            self._queued.notify()
        self._thread.join(timeout)

    # -- reading (handler threads) ----------------------------------------------------------

    def snapshot(self) -> tuple[int, list[Segment]]:
        """(the last record's number, the segments so far): history up to that record."""
        with self._disk, self._lock:
            return self._seq, self._segments.snapshot()

    def history(self, query: Query, segments: list[Segment]) -> list[Record]:
        """The last `query.lines` matching records of `segments`, oldest first."""
        found: list[Record] = []
        if query.lines == 0:
            return found
        for record in read_backwards(segments):
            if query.since is not None and parse_timestamp(record.ts) < query.since - SINCE_SLACK:
                break
            if query.matches(record):
                found.append(record)
                if len(found) >= query.lines:
                    break
        found.reverse()
        return found

    def follow(self, cursor: int, timeout: float) -> tuple[list[Record], int, int]:
        """Records written after record number `cursor`, waiting up to `timeout` for one:
        (records, the new cursor, how many the reader missed because it fell behind)."""
        with self._lock:
            if self._seq == cursor:
                self._written.wait(timeout)
            if self._seq == cursor:
                return [], cursor, 0
            oldest = self._feed[0][0] if self._feed else self._seq + 1
            missed = max(0, oldest - cursor - 1)
            records = [r for n, r in self._feed if n > cursor]
            return records, self._seq, missed


class LogStore:
    """Every app's AppLog under `root` (DATA_DIR/logs), opened on first use."""

    def __init__(
        self,
        root: Path,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        queue_bytes: int = QUEUE_BYTES,
        clock: Callable[[], float] = time.time,
        on_written: Callable[[str, list[Record]], None] | None = None,
    ) -> None:
        """`on_written(app, records)`: called by an app's writer after each batch is written
        (logd's drains); it must not block."""
        if max_bytes < MIN_MAX_BYTES:
            raise Invalid(f"the log cap per app must be at least {MIN_MAX_BYTES // 1024} KiB")
        self.root = root
        self.max_bytes = max_bytes
        self._queue_bytes = queue_bytes
        self._clock = clock
        self._on_written = on_written
        self._lock = threading.Lock()
        self._apps: dict[str, AppLog] = {}
        root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def app(self, name: str) -> AppLog:
        if not APP.fullmatch(name):
            raise Invalid(f"{name[:40]!r} is not an app name")
        with self._lock:
            found = self._apps.get(name)
            if found is None:
                found = AppLog(
                    name,
                    self.root / name,
                    self.max_bytes,
                    queue_bytes=self._queue_bytes,
                    clock=self._clock,
                    on_written=self._on_written,
                )
                self._apps[name] = found
            return found

    def forget(self, name: str) -> None:
        """Delete an app's whole history (the app was destroyed, or a new app takes its name:
        it must not read its predecessor's lines). Lines arriving later start a new history."""
        if not APP.fullmatch(name):
            raise Invalid(f"{name[:40]!r} is not an app name")
        with self._lock:
            found = self._apps.pop(name, None)
            if found is not None:
                found.close()
            shutil.rmtree(self.root / name, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            apps = list(self._apps.values())
        for app in apps:
            app.close()
