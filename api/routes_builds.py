"""Builds: what `git push` built, newest first, and one build with its log (api/builds.py
makes them)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from berth.api.context import store
from berth.framework.errors import Invalid

bp = Blueprint("builds", __name__, url_prefix="/v1/apps/<app>")


@bp.get("/builds")
def list_builds(app: str) -> Response:
    raw = request.args.get("limit", "15")
    if not raw.isdigit() or not 1 <= int(raw) <= 50:
        raise Invalid("limit must be a whole number from 1 to 50")
    return jsonify([b.summary_json() for b in store().list_builds(app, int(raw))])


@bp.get("/builds/<build_id>")
def build_info(app: str, build_id: str) -> Response:
    return jsonify(store().get_build(app, build_id).to_json())
