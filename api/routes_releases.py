"""Config (which makes releases), releases, rollback, formation."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from berth.api import prune
from berth.api.context import json_body, store, who
from berth.framework.errors import Invalid
from berth.framework.model import validate_config_changes

bp = Blueprint("releases", __name__, url_prefix="/v1/apps/<app>")


def parse_version(value: object) -> int:
    """`3`, `"3"` or `"v3"` → 3."""
    text = str(value).removeprefix("v")
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise Invalid(f"invalid release version {str(value)[:20]!r}: expected v1, v2, …")
    return int(text)


@bp.get("/config")
def get_config(app: str) -> Response:
    return jsonify(dict(store().get_release(app).config))


@bp.patch("/config")
def set_config(app: str) -> Response:
    changes = validate_config_changes(json_body())
    release = store().set_config(app, changes, who())
    return jsonify({"config": dict(release.config), "release": release.summary_json()})


@bp.get("/releases")
def list_releases(app: str) -> Response:
    """Newest first, pending and failed releases too; `current` marks the one that runs."""
    raw = request.args.get("limit", "15")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise Invalid("limit must be a whole number from 1 to 1000")
    releases = store().list_releases(app, int(raw))
    current = store().get_app(app).release
    return jsonify([{**r.summary_json(), "current": r.version == current} for r in releases])


@bp.get("/releases/<version>")
def release_info(app: str, version: str) -> Response:
    release = store().get_release(app, parse_version(version))
    current = store().get_app(app).release
    return jsonify({**release.to_json(), "current": release.version == current})


@bp.post("/rollback")
def rollback(app: str) -> tuple[Response, int]:
    body = json_body(optional=True)
    version = body.get("version")
    # 409 for a release that never went live, or whose image was pruned (api/prune.py),
    # before a release is made
    target = store().rollback_target(app, None if version is None else parse_version(version))
    prune.current().check_rollback(app, target)
    release = store().rollback(app, target.version, who())
    return jsonify(release.summary_json()), 201


@bp.get("/formation")
def get_formation(app: str) -> Response:
    return jsonify(store().get_formation(app))


@bp.patch("/formation")
def scale(app: str) -> Response:
    return jsonify(store().scale(app, json_body()))
