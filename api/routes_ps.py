"""Processes: `ps` (the app's tasks as the framework records them), image deploys."""

from __future__ import annotations

import re
import time

from flask import Blueprint, Response, jsonify

from berth.api.context import json_body, store, who
from berth.framework.errors import Invalid
from berth.framework.model import PROCESS_TYPE, Artifact

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
