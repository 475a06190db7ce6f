"""Logs: `GET /v1/apps/<app>/logs`, an app's log history and, with `tail=1`, its live lines,
streamed from `berth logd` (logd.py) as NDJSON (or Heroku's text with `format=text`).

The API checks the caller's token and the app, validates the parameters (loglines.parse_query:
bad values are 422 with the parameter named), turns a relative `since` into a time, then asks
logd with its internal read token (from DATA_DIR/logs.key) and passes the answer through
as it arrives. A blank line in a tail is a keepalive, sent every second while nothing new
comes: it is how a client that went away is noticed, which ends the request and frees its
thread within seconds.

A tail holds one of the API's request threads (gunicorn gthread, 8 by default,
`--threads`/BERTH_API_THREADS): at most MAX_TAILS tails run at once, so other requests always
have threads left; one more is answered 503 with a message saying so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

from flask import Blueprint, Response, current_app, request
from flask.blueprints import BlueprintSetupState

from berth.api.context import settings, store
from berth.framework import http1, logship
from berth.framework.errors import BerthError, Invalid, Unavailable
from berth.framework.loglines import parse_query, platform_token, read_token

log = logging.getLogger(__name__)

bp = Blueprint("logs", __name__, url_prefix="/v1/apps/<app>")

MAX_TAILS = 4
TAILS = "berth.log_tails"
READ_TOKEN = "berth.logs_read_token"  # noqa: S105 - an extensions key, not a secret


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    state.app.extensions[TAILS] = threading.BoundedSemaphore(MAX_TAILS)


def _read_token() -> str:
    token = current_app.extensions.get(READ_TOKEN)
    if token is None:
        token = read_token(logship.load_or_create_key(settings().data_dir))
        current_app.extensions[READ_TOKEN] = token
    return str(token)


def forget_history(app: str) -> None:
    """Ask logd to delete `app`'s history (it was destroyed, or a new app took its name and
    must not read its predecessor's lines). logd away: logged, not fatal; creating the app
    again asks again."""
    token = platform_token(logship.load_or_create_key(settings().data_dir))
    try:
        answer = http1.request(
            http1.Endpoint.parse(settings().logs_url),
            "POST",
            f"/v1/forget/{http1.quote_segment(app)}",
            body=b"",
            headers={"Authorization": f"Bearer {token}"},
            connect_timeout=2.0,
            timeout=10.0,
        )
        answer.close()
        if answer.status != 200:
            log.warning(
                "logd did not delete a history", extra={"app": app, "status": answer.status}
            )
    except OSError as e:
        log.warning("logd not reachable to delete a history: %s", e, extra={"app": app})


class _Stream:
    """logd's answer passed through as it arrives. `close()` (which the WSGI server calls
    when the response ends, or the client went away, even before the first chunk) closes the
    connection to logd and frees the tail's slot."""

    def __init__(self, answer: http1.Response, held: threading.BoundedSemaphore | None) -> None:
        self._answer = answer
        self._held = held
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._answer.chunks()
        except OSError:
            return  # logd stopped mid-stream: the stream just ends

    def close(self) -> None:
        with self._lock:
            self._answer.close()
            held, self._held = self._held, None
        if held is not None:
            held.release()


@bp.get("/logs")
def logs(app: str) -> Response:
    store().get_app(app)  # 404 for an unknown app
    args: dict[str, str] = {}
    for key in request.args:
        values = request.args.getlist(key)
        if len(values) > 1:
            raise Invalid(f"parameter {key[:40]!r} given twice")
        args[key] = values[0]
    query = parse_query(args, time.time())
    tails: threading.BoundedSemaphore = current_app.extensions[TAILS]
    if query.tail and not tails.acquire(blocking=False):
        raise Unavailable(f"{MAX_TAILS} live tails are running already: try again later")
    held = tails if query.tail else None
    try:
        answer = http1.request(
            http1.Endpoint.parse(settings().logs_url),
            "GET",
            http1.path_with_query(f"/v1/logs/{http1.quote_segment(app)}", query.params()),
            headers={"Authorization": f"Bearer {_read_token()}"},
            connect_timeout=5.0,
            timeout=60.0,
        )
    except OSError:
        if held is not None:
            held.release()
        raise Unavailable(
            f"the log service (berth logd at {settings().logs_url}) is not reachable"
        ) from None
    if answer.status != 200:
        try:
            message = answer.json(64 * 1024).get("error", {}).get("message", "")
        except (OSError, AttributeError):
            message = ""
        finally:
            answer.close()
            if held is not None:
                held.release()
        error = BerthError(f"the log service answered {answer.status}: {message}")
        if answer.status < 500:
            error = Invalid(message or f"the log service answered {answer.status}")
        raise error
    mimetype = "text/plain" if query.text else "application/x-ndjson"
    response = Response(_Stream(answer, held), mimetype=mimetype, direct_passthrough=True)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"
    return response
