"""Processes: `ps` (the app's tasks as the framework records them), stop and restart
(requests the leading framework carries out), limits, image deploys."""

from __future__ import annotations

import re
import time

from flask import Blueprint, Response, jsonify

from berth.api.context import json_body, store, who
from berth.framework.errors import Invalid, NotFound
from berth.framework.model import (
    DEFAULT_CPUS,
    DEFAULT_MEMORY_MB,
    PROCESS_TYPE,
    Artifact,
    Task,
)

bp = Blueprint("ps", __name__, url_prefix="/v1/apps/<app>")

# repository[:tag][@digest], as Docker accepts it (lowercase path components, optional host:port)
IMAGE_REF = re.compile(
    r"^(?:[a-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
MAX_COMMAND = 4096


@bp.get("/ps")
def ps(app: str) -> Response:
    store().get_app(app)  # 404 for an unknown app
    now = time.time()
    tasks = []
    for task in store().list_tasks(app):
        item = task.to_json()
        item["name"] = f"{task.process}.{task.index}"
        item["uptime"] = round(now - task.started_at, 1) if task.started_at and task.live else None
        tasks.append(item)
    return jsonify({"formation": store().get_formation(app), "tasks": tasks})


@bp.post("/deploy")
def deploy(app: str) -> tuple[Response, int]:
    """A release from a local Docker image; its CMD becomes `web` unless process types are
    given ({"web": "command", "worker": "command"}; an empty command runs the image's CMD)."""
    body = json_body()
    image = body.get("image")
    if not isinstance(image, str) or len(image) > 255 or not IMAGE_REF.fullmatch(image):
        raise Invalid("image must be a Docker image reference like myapp:v3 or repo/name@sha256:…")
    process_types = body.get("process_types") or {"web": ""}
    if not isinstance(process_types, dict) or not process_types:
        raise Invalid("process_types must be an object of TYPE: command")
    for ptype, command in process_types.items():
        if not PROCESS_TYPE.fullmatch(ptype):
            raise Invalid(f"invalid process type {ptype[:40]!r}")
        if not isinstance(command, str) or len(command) > MAX_COMMAND:
            raise Invalid(f"command of {ptype} must be a string of at most {MAX_COMMAND} chars")
    release = store().deploy(
        app, Artifact("image", image), process_types, f"Deploy {image}"[:200], who()
    )
    if "web" in process_types and not store().get_formation(app):
        store().scale(app, {"web": 1})  # the first deploy starts one web process
    return jsonify(release.summary_json()), 201


def _tasks_named(app: str, target: str) -> list[Task]:
    """Live tasks matching `web.1` (a slot) or a full task id."""
    live = [t for t in store().list_tasks(app) if t.live]
    found = [t for t in live if target in (t.id, f"{t.process}.{t.index}")]
    if not found:
        raise NotFound(f"no running process {target[:60]} in {app}")
    return found


@bp.post("/ps/stop")
def stop(app: str) -> Response:
    """Stop one process (`web.1` or a task id); the framework starts a replacement."""
    target = json_body().get("task")
    if not isinstance(target, str) or not target:
        raise Invalid("give the process to stop, like web.1 or a task id")
    tasks = _tasks_named(app, target)
    for task in tasks:
        store().request_stop(task.id)
    return jsonify({"stopping": [t.id for t in tasks]})


@bp.post("/ps/restart")
def restart(app: str) -> Response:
    """Restart a process type or all of them, rolling (new before old); or one process."""
    target = json_body(optional=True).get("target")
    if target is not None and (not isinstance(target, str) or not target):
        raise Invalid("target must be a process type, a process like web.1, or omitted")
    formation = store().get_formation(app)
    if target is None or target in formation:
        types = [target] if target else sorted(formation)
        store().request_restart(app, types, time.time())
        return jsonify({"restarting": types})
    if not PROCESS_TYPE.fullmatch(target.partition(".")[0]):
        raise Invalid(f"invalid process {target[:40]!r}")
    tasks = _tasks_named(app, target)
    for task in tasks:
        store().request_stop(task.id)
    return jsonify({"restarting": [t.id for t in tasks]})


@bp.get("/limits")
def get_limits(app: str) -> Response:
    """Each process type's memory and CPU (stored, or the defaults)."""
    stored = store().get_limits(app)
    types = set(store().get_release(app).process_types) | set(store().get_formation(app))
    return jsonify(
        {
            ptype: {
                "memory_mb": stored.get(ptype, {}).get("memory_mb", DEFAULT_MEMORY_MB),
                "cpus": stored.get(ptype, {}).get("cpus", DEFAULT_CPUS),
            }
            for ptype in sorted(types | set(stored))
        }
    )


@bp.patch("/limits")
def set_limits(app: str) -> Response:
    store().set_limits(app, json_body())
    return get_limits(app)
