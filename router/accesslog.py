"""Access lines from HAProxy into each app's log stream (source `router`).

HAProxy logs one line per HTTP request and per TCP connection (formats in haproxy.py's
`render`) as datagrams to a unix socket in the run directory, `access.sock`, which this module
binds. A thread of its own ("access-log") reads them, finds the app and the task each line is
about, and hands them to a platform `Shipper` (framework/logship.py), which batches them to
`berth logd` without ever blocking. So HAProxy never waits on Python: datagrams it cannot send
(the controller is restarting, the socket buffer is full under a flood) are dropped by the
kernel, never queued in HAProxy; the lines a full Shipper drops are counted and reported in
the app's log by logd.

Which app: the backend `app_<name>` of an HTTP line, else the task the server name is
(server names are task ids, table.py's `server_name`: `<app>.<process>.<index>.v<N>.<hex>`).
A request for an unknown host (the 404 backend) belongs to no app and is not shipped.

Cost: HAProxy starts each line with its time in epoch microseconds, the backend and the
server (haproxy.py's log formats), so a line is three `partition`s and a record here
(timestamps formatted once per second); datagrams waiting together go to the Shipper as one
batch. The Shipper's thread (like this one) runs at nice 10: when the machine is saturated,
HAProxy keeps the CPU, the socket's buffer fills, and the kernel refuses further datagrams;
HAProxy counts them (`show info`, DroppedLogs), and this thread reads the counter every 10 s
and logs how many were lost (in the router's own log: which apps they were for is not known).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from berth.framework.loglines import Record

log = logging.getLogger(__name__)

SOCKET_NAME = "access.sock"
MAX_DATAGRAM = 16384
BATCH = 500  # datagrams read in one go at most
CHECK_DROPS = 10.0  # seconds between reading HAProxy's dropped-lines counter
NICE = 10  # the thread yields the CPU to HAProxy when both want it (see the module doc)

Ship = Callable[[list[Record]], None]  # a batch of records for the app logs


class Stamps:
    """RFC 3339 timestamps (µs) from HAProxy's epoch microseconds, cheaply: the part up to the
    second is formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, micros: int) -> str:
        second, fraction = divmod(micros, 1_000_000)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        return f"{self._prefix}{fraction:06d}Z"


def parse(line: str, stamps: Stamps | None = None) -> Record | None:
    """The app log record for one HAProxy access line `EPOCH_US BACKEND SERVER TEXT…`
    (haproxy.py's log formats start so), or None if it belongs to no app."""
    micros, _, rest = line.partition(" ")
    backend, _, rest = rest.partition(" ")
    server, _, text = rest.partition(" ")
    if not micros.isdigit() or not text:
        return None
    parts = server.split(".", 4)
    task = len(parts) == 5 and parts[2].isdigit() and parts[3].startswith("v")
    process = f"{parts[1]}.{parts[2]}" if task else ""
    if backend.startswith("app_"):
        app = backend[4:]
    elif task:
        app = parts[0]
    else:
        return None
    ts = (stamps or Stamps()).format(int(micros))
    return Record(ts, app, "router", process, "stdout", text)


class AccessLog:
    """Binds `path` and ships what HAProxy sends there until `stop`."""

    def __init__(self, path: Path, ship: Ship, dropped: Callable[[], int] | None = None) -> None:
        """`dropped`: HAProxy's count of log lines it could not send (checked every
        `CHECK_DROPS` seconds; an increase is logged as a warning)."""
        self._path = path
        self._ship = ship
        self._dropped = dropped
        self._dropped_seen = 0
        self._checked_at = time.monotonic()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.received = 0

    def start(self) -> AccessLog:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()  # a socket left by an earlier controller
        sock.bind(str(self._path))
        self._path.chmod(0o600)
        sock.setblocking(False)  # waits are select()s of 0.5 s, so `stop` is seen
        with contextlib.suppress(OSError):  # room for bursts, as far as the kernel allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()

    def _run(self) -> None:
        assert self._sock is not None
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        stamps = Stamps()
        while not self._stop.is_set():
            datagrams: list[bytes] = []
            try:
                if not select.select([self._sock], [], [], 0.5)[0]:
                    continue
                # whatever is waiting goes in one batch: one lock, one hand-over
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    while len(datagrams) < BATCH:
                        datagrams.append(self._sock.recv(MAX_DATAGRAM))
            except OSError as e:
                log.warning("access log socket failed: %s", e)
                return
            if not datagrams:
                continue
            self.received += len(datagrams)
            if time.monotonic() - self._checked_at > CHECK_DROPS:
                self._check_drops()
            try:
                records = []
                for data in datagrams:
                    record = parse(data.decode("utf-8", "replace").rstrip("\n"), stamps)
                    if record is not None:
                        records.append(record)
                if records:
                    self._ship(records)
            except Exception:  # a bad line must not end the access log
                log.exception("access lines not shipped")

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
