"""`berth logd`: the log aggregator. Receives log records over HTTP, keeps each app's history
on disk (logstore.py), and serves it, live, to the API.

Routes (HTTP/1.0, one request per connection; errors are {"error": {"code", "message"}}):

    GET  /healthz               200 {"ok": true}; no token
    POST /v1/ingest             a batch (≤ 8 MiB): from an executor, `Authorization: Bearer
                                task/<app>/<process>/<release>/<mac>` and
                                {"dropped": N, "lines": [[ts, stream, text], …]}: the lines are
                                the token's app and process, source `app`; from the framework,
                                `platform/<mac>` and {"records": [record, …]}. 200
                                {"accepted": n, "dropped": m}
    GET  /v1/logs/<app>?lines=N&tail=1&ps=&source=&since=&grep=&format=json|text
                                `read/<mac>` (the API's): the last N matching records, oldest
                                first, NDJSON (or Heroku's text); with tail=1 the response then
                                stays open with every new matching record, and a blank line
                                every second while there is none (so a reader that went away
                                is noticed and its thread ends)
    GET  /v1/drains/<app>       `read/<mac>`: {"drains": {<id>: {"buffered", "delivered",
                                "dropped", "status", "last_error"}}} for the app's drains

Tokens are HMACs under DATA_DIR/logs.key (loglines.py), so logd trusts no network: in Mesos
mode executors on other hosts reach it over the network with their task's token. An
executor's token names its app and process, so it can write only its own lines.

A batch's `dropped` count (lines the executor could not ship) is written into the app's log
as a `berth` line. The API checks that an app exists; logd reads only the apps' drains from
ZooKeeper (drains.py: every line it writes is also offered to the app's drains).

Threads: the main thread waits for SIGTERM/SIGINT; "logd-http" runs the server, which runs
each request in a thread of its own (at most MAX_CONNECTIONS at once; more get 503); each app
has a writer thread (logstore.py); "logd-drains" reads the drain list and each drain has a
sender thread (drains.py). Imports nothing of the API's Flask side.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import click

from berth.api import drains
from berth.api.logstore import MIN_MAX_BYTES, LogStore
from berth.framework import accesslines, jsonlog, logship
from berth.framework.errors import BadRequest, BerthError, Invalid, NotFound, Unauthorized
from berth.framework.loglines import (
    STREAMS,
    Grant,
    Record,
    parse_query,
    parse_size,
    timestamp,
    validate,
    validate_line,
    verify_token,
)
from berth.framework.options import settings_options
from berth.framework.settings import Settings

log = logging.getLogger("berth.api.logd")  # the same name when run as __main__

MAX_BODY = 8 * 1024 * 1024
MAX_CONNECTIONS = 512
KEEPALIVE_EVERY = 1.0


class Forbidden(BerthError):
    status = 403
    code = "forbidden"


class Logd:
    """The service behind the HTTP handler: token checks, ingestion and reads."""

    def __init__(self, store: LogStore, key: bytes, hub: drains.Hub | None = None) -> None:
        self.store = store
        self._key = key
        self.hub = hub
        self._stamps = accesslines.Stamps()  # handler threads share it, under the lock
        self._stamps_lock = threading.Lock()
        self.stopping = threading.Event()

    def grant(self, header: str) -> Grant:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing token: send 'Authorization: Bearer <token>'")
        grant = verify_token(self._key, token.strip())
        if grant is None:
            raise Unauthorized("this token is not one of this logd's (is logs.key shared?)")
        return grant

    def ingest(self, grant: Grant, body: Any) -> dict[str, int]:
        if not isinstance(body, dict):
            raise BadRequest("a batch is a JSON object")
        dropped = body.get("dropped", 0)
        if not isinstance(dropped, int) or isinstance(dropped, bool) or dropped < 0:
            raise BadRequest("dropped must be a count")
        if grant.kind == "task":
            records = self._task_records(grant, body.get("lines"))
            app = self.store.app(grant.app)
            if dropped:
                what = "the log service was unreachable or its buffer was full"
                records.insert(
                    0, _note(grant.app, f"{grant.process}: {dropped} lines dropped ({what})")
                )
            accepted = app.ingest(records)
            return {"accepted": accepted, "dropped": len(records) - accepted}
        if grant.kind != "platform":
            raise Forbidden("this token may not write logs")
        raw = body.get("records")
        if not isinstance(raw, list):
            raise BadRequest("records must be a list")
        by_app: dict[str, list[Record]] = {}
        for item in raw:
            record = Record.from_json(item)
            by_app.setdefault(record.app, []).append(record)
        if dropped:
            log.warning("the platform's log shipper dropped lines", extra={"lines": dropped})
        accepted = sum(self.store.app(name).ingest(records) for name, records in by_app.items())
        return {"accepted": accepted, "dropped": len(raw) - accepted}

    def ingest_access(self, grant: Grant, body: bytes) -> dict[str, int]:
        """The router's access lines, as HAProxy wrote them, one per line
        (framework/accesslines.py); lines of no app are skipped, bad ones counted."""
        if grant.kind != "platform":
            raise Forbidden("only the platform may write access lines")
        by_app: dict[str, list[Record]] = {}
        skipped = 0
        with self._stamps_lock:
            parsed = [
                accesslines.parse(line, self._stamps)
                for line in body.decode("utf-8", "replace").split("\n")
            ]
        for record in parsed:
            if record is None:
                skipped += 1
                continue
            try:
                validate(record)
            except Invalid:
                skipped += 1
                continue
            by_app.setdefault(record.app, []).append(record)
        accepted = 0
        for name, records in by_app.items():
            try:
                accepted += self.store.app(name).ingest(records)
            except Invalid:  # not an app name
                skipped += len(records)
        return {"accepted": accepted, "skipped": skipped}

    def _task_records(self, grant: Grant, lines: Any) -> list[Record]:
        if not isinstance(lines, list):
            raise BadRequest("lines must be a list of [ts, stream, text]")
        records = []
        app, process = grant.app, grant.process
        validate(Record(timestamp(), app, "app", process, "stdout", ""))  # the token's part
        for item in lines:
            if not isinstance(item, list) or len(item) != 3:
                raise BadRequest("each line is [ts, stream, text]")
            ts, stream, text = item
            if not isinstance(ts, str) or stream not in STREAMS or not isinstance(text, str):
                raise BadRequest("each line is [ts, stream, text] with stream stdout or stderr")
            validate_line(ts, stream, text)
            records.append(Record(ts, app, "app", process, stream, text))
        return records


def _note(app: str, text: str) -> Record:
    return Record(timestamp(), app, "berth", "", "stdout", text)


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.0"
    timeout = 30  # seconds to read a request
    server_version = "berth-logd"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)

    def _error(self, exc: BerthError) -> None:
        self._json(exc.status, exc.to_json())

    def _json(self, status: int, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        try:
            self._get()
        except BerthError as exc:
            self._error(exc)
        except OSError:
            pass  # the reader went away

    def do_POST(self) -> None:
        try:
            self._post()
        except BerthError as exc:
            self._error(exc)
        except OSError:
            pass

    def _post(self) -> None:
        logd = self.server.logd
        path = urlsplit(self.path).path
        if path.startswith("/v1/forget/"):
            if logd.grant(self.headers.get("Authorization", "")).kind != "platform":
                raise Forbidden("only the platform may delete an app's history")
            app = path.removeprefix("/v1/forget/")
            logd.store.forget(app)
            log.info("history deleted", extra={"app": app})
            self._json(200, {"forgotten": app})
            return
        if path not in ("/v1/ingest", "/v1/ingest/access"):
            raise NotFound("no such route")
        grant = logd.grant(self.headers.get("Authorization", ""))
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            raise BadRequest("a batch needs a Content-Length")
        if int(length) > MAX_BODY:
            self._json(413, {"error": {"code": "too_large", "message": "batch over 8 MiB"}})
            return
        raw = self.rfile.read(int(length))
        if path == "/v1/ingest/access":
            self._json(200, logd.ingest_access(grant, raw))
            return
        try:
            body = json.loads(raw)
        except ValueError:
            raise BadRequest("the batch is not valid JSON") from None
        self._json(200, logd.ingest(grant, body))

    def _get(self) -> None:
        logd = self.server.logd
        url = urlsplit(self.path)
        if url.path == "/healthz":
            self._json(200, {"ok": True})
            return
        prefix = "/v1/logs/"
        if not url.path.startswith((prefix, "/v1/drains/")):
            raise NotFound("no such route")
        if logd.grant(self.headers.get("Authorization", "")).kind != "read":
            raise Forbidden("this token may not read logs")
        if url.path.startswith("/v1/drains/"):
            app = unquote(url.path.removeprefix("/v1/drains/"))
            found = logd.hub.stats(app) if logd.hub is not None else {}
            self._json(200, {"drains": {i: stats.to_json() for i, stats in found.items()}})
            return
        app_log = logd.store.app(unquote(url.path[len(prefix) :]))
        args: dict[str, str] = {}
        for key, value in parse_qsl(url.query, keep_blank_values=True):
            if key in args:
                raise Invalid(f"parameter {key[:40]!r} given twice")
            args[key] = value
        query = parse_query(args, time.time())
        cursor, segments = app_log.snapshot()
        history = app_log.history(query, segments)
        self.send_response(200)
        self.send_header(
            "Content-Type", "text/plain; charset=utf-8" if query.text else "application/x-ndjson"
        )
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        for start in range(0, len(history), 256):
            self.wfile.write(b"".join(query.render(r) for r in history[start : start + 256]))
        if not history and query.tail:
            self.wfile.write(b"\n")  # a keepalive, so the reader has its answer at once
        self.wfile.flush()
        if not query.tail:
            return
        self.connection.settimeout(10)
        while not logd.stopping.is_set():
            records, cursor, missed = app_log.follow(cursor, KEEPALIVE_EVERY)
            out = b""
            if missed:
                note = _note(app_log.app, f"{missed} lines skipped: this reader fell behind")
                out += query.render(note)
            out += b"".join(query.render(r) for r in records if query.matches(r))
            self.wfile.write(out or b"\n")  # a blank line: a keepalive, and a liveness check
            self.wfile.flush()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], logd: Logd) -> None:
        self.logd = logd
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(
                    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n"
                    b'{"error": {"code": "unavailable", "message": "logd is busy"}}'
                )
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve(
    settings: Settings,
    max_bytes: int,
    stop: threading.Event,
    drains_ca_file: str | None = None,
    drains_buffer_lines: int = drains.BUFFER_RECORDS,
) -> None:
    """Run logd until `stop` is set."""
    key = logship.load_or_create_key(settings.data_dir)
    holder: list[LogStore] = []

    def note(app: str, text: str) -> None:  # a drain's sender thread: a berth line
        holder[0].app(app).ingest([drains.note_record(app, text)])

    hub = drains.Hub(
        note, lambda target: drains.make_sender(target, drains_ca_file), drains_buffer_lines
    )
    store = LogStore(settings.data_dir / "logs", max_bytes, on_written=hub.deliver)
    holder.append(store)
    logd = Logd(store, key, hub)
    server = Server((settings.logs_host, settings.logs_port), logd)
    thread = threading.Thread(target=server.serve_forever, args=(0.5,), name="logd-http")
    thread.start()
    watcher = threading.Thread(
        target=drains.DrainWatcher(settings, hub).run,
        args=(stop,),
        name="logd-drains",
        daemon=True,  # it may be waiting for ZooKeeper: shutdown waits for it only briefly
    )
    watcher.start()
    log.info(
        "logd listening",
        extra={"addr": f"{settings.logs_host}:{settings.logs_port}", "max_bytes": max_bytes},
    )
    try:
        stop.wait()
    finally:
        logd.stopping.set()
        server.shutdown()
        thread.join()
        server.server_close()
        watcher.join(3.0)
        hub.close()
        store.close()
        log.info("logd stopped")


@click.command("logd")
@settings_options
@click.option(
    "--logs-max-bytes",
    envvar="BERTH_LOGS_MAX_BYTES",
    default="100m",
    show_default=True,
    help="History kept per app on disk (k, m, g suffixes; at least 256k)",
)
@click.option(
    "--drains-ca-file",
    envvar="BERTH_DRAINS_CA_FILE",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="CA certificates (PEM) trusted for syslog+tls and https drains, besides the system's",
)
@click.option(
    "--drains-buffer-lines",
    envvar="BERTH_DRAINS_BUFFER_LINES",
    default=drains.BUFFER_RECORDS,
    show_default=True,
    type=click.IntRange(100, 1_000_000),
    help="Lines each drain buffers while it is slow or down; more are dropped and counted",
)
def command(
    settings: Settings, logs_max_bytes: str, drains_ca_file: str | None, drains_buffer_lines: int
) -> None:
    """Run the log aggregator alone (`berth server` runs it for you)."""
    jsonlog.setup("logd")
    try:
        max_bytes = parse_size(logs_max_bytes)
        if max_bytes < MIN_MAX_BYTES:
            raise Invalid("--logs-max-bytes must be at least 256k")
    except Invalid as exc:
        raise click.UsageError(exc.message) from None
    try:
        drains.tls_context(drains_ca_file)  # a file that is not PEM certificates: say so now
    except ssl.SSLError as exc:
        raise click.UsageError(
            f"--drains-ca-file: not PEM CA certificates ({exc.reason})"
        ) from None
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    serve(settings, max_bytes, stop, drains_ca_file, drains_buffer_lines)


if __name__ == "__main__":
    command(prog_name="berth logd")
