"""The API's lines in apps' logs: what a `git push` writes into `berth logs` — the build's
output (source `build`, process = the build's id, e.g. `build[65a1b2c3d4e5]: -----> Building
with the Dockerfile`) and the platform's `berth` lines about it (`Build 65a1b2c3d4e5 started
by …`, `… succeeded: v7`, `… failed: …`).

One `AppLog` per API worker (`for_app`, kept in the Flask app's extensions). Its
`framework/logship.py` Shipper, with the platform token from DATA_DIR/logs.key, and that
shipper's "log-ship" thread are made on the first line, so an API that never builds starts
no thread; `close` (gunicorn's worker_exit, api/main.py) delivers what is queued for up to
3 s while logd answers. `line` never blocks: a push never waits for logd. Lines that do not
fit the shipper's bounded queue (logd away or slow) are counted per app, and the count is
written into that app's log as a `berth` line with its next line that fits — never silent.

Threads: any push thread calls `line`; the shipper's thread sends.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from flask import Flask

from berth.framework import logship
from berth.framework.loglines import platform_token

log = logging.getLogger(__name__)

EXTENSION = "berth.applog"
MAX_RECORDS = 20_000  # a noisy build (npm, pip) bursts; logd takes 1000-record batches


class AppLog:
    def __init__(self, logs_url: str, data_dir: Path, max_records: int = MAX_RECORDS) -> None:
        self._url = logs_url
        self._max_records = max_records
        self._data_dir = data_dir
        self._lock = threading.Lock()
        self._shipper: logship.Shipper | None = None
        self._closed = False
        self._dropped: dict[str, int] = {}  # app → lines not shipped, not yet reported

    def _get(self) -> logship.Shipper | None:
        with self._lock:
            if self._shipper is None and not self._closed:
                try:
                    key = logship.load_or_create_key(self._data_dir)
                except (OSError, ValueError) as exc:  # a push never fails for its log lines
                    log.error("no build lines in the apps' logs: %s", exc)
                    self._closed = True
                    return None
                token = platform_token(key)
                self._shipper = logship.Shipper(self._url, token, max_records=self._max_records)
                self._shipper.start()
            return self._shipper

    def line(self, app: str, source: str, process: str, text: str) -> None:
        """One line into `app`'s log. Never blocks."""
        shipper = self._get()
        if shipper is None:
            return  # closing
        with self._lock:
            missed = self._dropped.pop(app, 0)
        if missed:
            note = (
                f"{missed} build lines dropped on the way to the log service (it was away or"
                " slow); `berth builds:info` has the build's log"
            )
            if shipper.event(app, "", note) == 0:
                missed = 0  # else the note did not fit either: keep counting
        dropped = shipper.event(app, process, text, source=source)
        if missed or dropped:
            with self._lock:
                self._dropped[app] = self._dropped.get(app, 0) + missed + dropped

    def dropped(self, app: str) -> int:
        """Lines of `app` not shipped and not reported yet."""
        with self._lock:
            return self._dropped.get(app, 0)

    def close(self, timeout: float = 3.0) -> None:
        with self._lock:
            self._closed = True
            shipper, self._shipper = self._shipper, None
        if shipper is not None:
            shipper.close(timeout)
        lost = sum(self._dropped.values())
        if lost:
            log.warning("build lines not shipped to logd", extra={"lines": lost})


def for_app(app: Flask, logs_url: str, data_dir: Path) -> AppLog:
    """The worker's AppLog (made on first use)."""
    with _lock:
        found = app.extensions.get(EXTENSION)
        if found is None:
            found = AppLog(logs_url, data_dir)
            app.extensions[EXTENSION] = found
    assert isinstance(found, AppLog)
    return found


def close_for(app: Flask) -> None:
    """At worker exit: deliver what is queued, stop the shipper's thread."""
    found = app.extensions.get(EXTENSION)
    if isinstance(found, AppLog):
        found.close()


_lock = threading.Lock()
