"""Health checks per process type (`checks`, `checks:set`, `checks:unset`): what decides
when a new task takes traffic and when a deploy has failed (framework/checks.py)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from berth.api.context import json_body, store
from berth.framework import checks

bp = Blueprint("checks", __name__, url_prefix="/v1/apps/<app>")


@bp.get("/checks")
def get_checks(app: str) -> Response:
    """Each process type's check: the stored one, or the default (`"default": true`)."""
    stored = store().get_checks(app)
    types = set(store().get_release(app).process_types) | set(store().get_formation(app))
    routed = {route.process for route in store().tcp_routes(app)}
    return jsonify(
        {
            ptype: checks.effective(stored, ptype, routed).to_json()
            for ptype in sorted(types | set(stored))
        }
    )


@bp.patch("/checks")
def set_checks(app: str) -> Response:
    """`{"web": {"path": "/up"}}`, `{"web": {"type": "tcp", "startup": 120}}`, or
    `{"web": null}` for the default again. Applies to tasks launched from now on."""
    store().set_checks(app, json_body())
    return get_checks(app)
