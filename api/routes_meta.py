"""/healthz (the one public route), /v1/info, /v1/openapi.json."""

from __future__ import annotations

from importlib.metadata import version

from flask import Blueprint, Response, jsonify

from berth.api.context import settings, store
from berth.api.openapi import document

bp = Blueprint("meta", __name__)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    if not store().connected:
        return jsonify({"status": "unavailable", "reason": "ZooKeeper is unreachable"}), 503
    return jsonify({"status": "ok"}), 200


@bp.get("/v1/info")
def info() -> Response:
    return jsonify({"version": version("berth"), "domain": settings().domain, "api": "v1"})


@bp.get("/v1/openapi.json")
def openapi() -> Response:
    return jsonify(document(version("berth")))
