"""Per-app router settings (`routing`, `routing:set`): the answer timeout (504 after it) and
HTTPS-only (plain HTTP requests are redirected). See framework/routing.py."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from berth.api.context import json_body, store
from berth.framework.model import App

bp = Blueprint("routing", __name__, url_prefix="/v1/apps/<app>")


def _json(app: App) -> Response:
    return jsonify({"timeout": app.timeout, "https_only": app.https_only})


@bp.get("/routing")
def get_routing(app: str) -> Response:
    """`timeout` null means the router's default (`berth router --timeout-server`, 30 s)."""
    return _json(store().get_app(app))


@bp.patch("/routing")
def set_routing(app: str) -> Response:
    """`{"timeout": 60}`, `{"timeout": null}`, `{"https_only": true}`; routers apply it at once."""
    return _json(store().set_routing(app, json_body()))
