"""HAProxy's access lines as app log records (pure). The router forwards the lines as HAProxy
wrote them (router/accesslog.py); `berth logd` turns them into records here, so the per-line
work happens once, in the process that stores them.

A line is `EPOCH_US BACKEND SERVER TEXT…`: router/haproxy.py's log formats start with the time
in epoch microseconds, the backend (`app_<name>` for HTTP, `tcp_<port>` for a TCP route) and
the server, whose name is the task id (`<app>.<process>.<index>.v<N>.<hex>`). The record is
the app's (the backend's, else the task's), source `router`, process `web.1`, and the rest of
the line as its text. A request for an unknown host (the 404 backend) is nobody's.
"""

from __future__ import annotations

from datetime import UTC, datetime

from berth.framework.loglines import Record


class Stamps:
    """RFC 3339 timestamps (µs) from epoch microseconds, cheaply: the part up to the second is
    formatted once per second."""

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
    """The app log record for one access line, or None if it belongs to no app (or is not an
    access line). The caller validates it (loglines.validate) before storing it."""
    micros, _, rest = line.partition(" ")
    backend, _, rest = rest.partition(" ")
    server, _, text = rest.partition(" ")
    if not micros.isdigit() or len(micros) > 18 or not text:
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
