"""One-off runs (`berth run`): create one, list them, and the rendezvous where an attached
run's client and its executor meet (docs/architecture.md "One-off runs").

    POST /v1/apps/<app>/runs                   {"command": [argv], "attach", "tty", "size"}
    GET  /v1/apps/<app>/runs[/<n>]             the records (never their secrets)
    GET  /v1/apps/<app>/runs/<n>/attach        websocket: the client, with its token
    GET  /v1/apps/<app>/runs/<n>/rendezvous    websocket: the executor, with the run's secret

The two websockets of a run are paired in this process's memory (`Rendezvous`): the API runs
one gunicorn worker, so both always reach the same one; each side's request thread copies its
side's frames (framework/attach.py) to the other, so an attached run holds two request threads
for its whole life. Whichever side closes closes the other: a client that goes away makes the
executor stop the container; an executor that is done (after its exit frame) ends the client's.
An executor no client meets within PAIR_SECONDS is sent away (it stops the container too); a
client waits up to CLIENT_WAIT_SECONDS for its run to start, and is told if the run ended
without ever attaching.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from berth.api.auth import presented_token
from berth.api.context import json_body, store, who
from berth.framework import attach
from berth.framework.errors import Conflict, Invalid, NotFound, Unauthorized
from berth.framework.runs import FINISHED, Run, validate_command, validate_size

log = logging.getLogger(__name__)

bp = Blueprint("runs", __name__, url_prefix="/v1/apps/<app>/runs")

RENDEZVOUS = "berth.rendezvous"
PAIR_SECONDS = 30.0  # an executor waits this long for its client
CLIENT_WAIT_SECONDS = 600.0  # a client waits this long for its run's executor
POLL_SECONDS = 1.0
RECEIVE_SECONDS = 25.0


@dataclass(eq=False)
class _Meeting:
    sides: dict[str, Any] = field(default_factory=dict)  # "client" | "executor" → websocket
    met: threading.Event = field(default_factory=threading.Event)


class Rendezvous:
    """Attached runs' websockets by (app, run number), until both sides have met."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._meetings: dict[tuple[str, int], _Meeting] = {}

    def claim(self, key: tuple[str, int], side: str) -> None:
        """Conflict if this side of the run is taken (a second client, or executor)."""
        with self._lock:
            meeting = self._meetings.get(key)
            if meeting is not None and side in meeting.sides:
                raise Conflict(f"run.{key[1]} already has its {side} attached")
            self._meetings.setdefault(key, _Meeting()).sides[side] = None

    def arrive(self, key: tuple[str, int], side: str, ws: Any) -> _Meeting:
        with self._lock:
            meeting = self._meetings.setdefault(key, _Meeting())
            meeting.sides[side] = ws
            if all(meeting.sides.get(s) is not None for s in ("client", "executor")):
                meeting.met.set()
        return meeting

    def leave(self, key: tuple[str, int], side: str) -> None:
        """This side is done. While the other side is still there, nobody takes this one's
        place (a run is attached once); the meeting goes when every side that came has left
        (a client that gave up before its run started may come back)."""
        with self._lock:
            meeting = self._meetings.get(key)
            if meeting is None:
                return
            meeting.sides[side] = False
            if all(v is False for v in meeting.sides.values()):
                del self._meetings[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._meetings)


def install(app: Flask) -> None:
    app.extensions[RENDEZVOUS] = Rendezvous()


def _rendezvous() -> Rendezvous:
    value: Rendezvous = current_app.extensions[RENDEZVOUS]
    return value


@bp.post("")
def create(app: str) -> tuple[Response, int]:
    body = json_body()
    command = validate_command(body.get("command"))
    attached = body.get("attach", True)
    tty = body.get("tty", False)
    if not isinstance(attached, bool) or not isinstance(tty, bool):
        raise Invalid("attach and tty must be true or false")
    if tty and not attached:
        raise Invalid("a detached run has no TTY: tty needs attach")
    memory_mb, cpus = validate_size(body.get("size"))
    run = store().create_run(
        app,
        command,
        attach=attached,
        tty=tty,
        memory_mb=memory_mb,
        cpus=cpus,
        created_by=who(),
        secret=os.urandom(32).hex(),
    )
    return jsonify(run.public_json()), 201


@bp.get("")
def list_runs(app: str) -> Response:
    store().get_app(app)
    return jsonify([r.public_json() for r in store().list_runs(app)])


@bp.get("/<number>")
def get_run(app: str, number: str) -> Response:
    return jsonify(store().get_run(app, _number(number)).public_json())


def _number(text: str) -> int:
    """A run's number from the path (`7` or `run.7`)."""
    digits = text.removeprefix("run.")
    if not digits.isdigit() or len(digits) > 9:
        raise NotFound(f"no run {text[:20]!r}: runs are numbered, like run.3")
    return int(digits)


def _accept() -> Any:
    import simple_websocket  # type: ignore[import-untyped]

    # no ping_interval: simple_websocket would ping from its reader thread while a pump thread
    # sends, and its wsproto connection is not made for two writers
    return simple_websocket.Server.accept(
        request.environ, max_message_size=attach.MAX_FRAME + 1, thread_class=_daemon_thread
    )


def _daemon_thread(**kwargs: Any) -> threading.Thread:
    """simple_websocket's reader threads: never what keeps a stopping worker alive."""
    return threading.Thread(daemon=True, **kwargs)


class _Hijacked(Response):
    """What a websocket view returns: the connection is no longer HTTP, so the server must
    write nothing more (gunicorn's threads treat StopIteration as "close the connection")."""

    def __call__(self, environ: Any, start_response: Any) -> Any:
        raise StopIteration


def _pump(own: Any, peer: Any) -> None:
    """Copy `own`'s messages to `peer` until `own` closes; then close `peer`."""
    import simple_websocket

    while True:
        try:
            message = own.receive(timeout=RECEIVE_SECONDS)
        except simple_websocket.ConnectionClosed:
            break
        if message is None:
            if own.connected:
                continue
            break
        try:
            peer.send(message)
        except simple_websocket.ConnectionClosed:
            break
    _close(peer)


def _close(ws: Any) -> None:
    try:
        ws.close()
    except Exception:  # closed already
        log.debug("websocket closed already")


@bp.get("/<ref>/attach", websocket=True)
def attach_client(app: str, ref: str) -> Response:
    """The client's side: stdin, signals and sizes in; output and the exit code out."""
    number = _number(ref)
    run = store().get_run(app, number)
    if not run.attach:
        raise Conflict(f"run.{number} runs detached: see `berth logs --ps run.{number}`")
    if run.state == FINISHED:
        raise Conflict(f"run.{number} has finished ({run.outcome or 'ended'})")
    key = (app, number)
    _rendezvous().claim(key, "client")
    try:
        ws = _accept()
    except BaseException:
        _rendezvous().leave(key, "client")
        raise
    try:
        meeting = _rendezvous().arrive(key, "client", ws)
        deadline = time.monotonic() + CLIENT_WAIT_SECONDS
        while not meeting.met.wait(POLL_SECONDS):
            ended = _ended(app, number)
            reason = ended or ("" if ws.connected else "gone")
            if not reason and time.monotonic() > deadline:
                reason = f"run.{number} did not start in {CLIENT_WAIT_SECONDS:.0f}s"
            if reason:
                if reason != "gone":
                    with _quiet():
                        ws.send(attach.error_frame(reason))
                _close(ws)
                return _Hijacked()
        log.info("run attached", extra={"app": app, "run": number})
        _pump(ws, meeting.sides["executor"])
    finally:
        _rendezvous().leave(key, "client")
    return _Hijacked()


@bp.get("/<ref>/rendezvous", websocket=True)
def attach_executor(app: str, ref: str) -> Response:
    """The executor's side, proven by the run's secret (not a token: auth.py lets it by).
    Whatever is wrong — no such app or run, a finished one, another secret — is 401 alike."""
    presented = presented_token()
    try:
        number = _number(ref)
        run = store().get_run(app, number)
    except NotFound:
        raise Unauthorized("this is not the run's secret") from None
    secret = store().run_secret(run)
    if not secret or not hmac.compare_digest(presented.encode(), secret.encode()):
        raise Unauthorized("this is not the run's secret")
    key = (app, number)
    _rendezvous().claim(key, "executor")
    try:
        ws = _accept()
    except BaseException:
        _rendezvous().leave(key, "executor")
        raise
    try:
        meeting = _rendezvous().arrive(key, "executor", ws)
        if not meeting.met.wait(PAIR_SECONDS):
            log.info("no client came for the run: sending it away", extra=_extra(run))
            _close(ws)
            return _Hijacked()
        _pump(ws, meeting.sides["client"])
    finally:
        _rendezvous().leave(key, "executor")
    return _Hijacked()


def _extra(run: Run) -> dict[str, Any]:
    return {"app": run.app, "run": run.number}


def _ended(app: str, number: int) -> str:
    """Why the run will never attach ("" while it may): it finished, or is gone."""
    try:
        run = store().get_run(app, number)
    except NotFound:
        return f"run.{number} is gone"
    if run.state != FINISHED:
        return ""
    why = run.message or run.outcome or "ended"
    return f"run.{number} ended before it attached: {why}"


class _quiet:
    """Ignore a failed send to a websocket that went away."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], Exception)  # type: ignore[arg-type]
