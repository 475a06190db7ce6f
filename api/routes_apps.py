"""Apps: list, create (named or random), info, destroy."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from berth.api.context import json_body, settings, store, who
from berth.api.routes_logs import forget_history
from berth.framework.errors import Conflict
from berth.framework.model import App, random_app_name, validate_app_name

bp = Blueprint("apps", __name__, url_prefix="/v1/apps")


def app_json(app: App) -> dict[str, Any]:
    return {**app.to_json(), "web_url": f"http://{app.name}.{settings().domain}"}


@bp.get("")
def list_apps() -> Response:
    return jsonify([app_json(a) for a in store().list_apps()])


@bp.post("")
def create_app() -> tuple[Response, int]:
    body = json_body(optional=True)
    name = body.get("name")
    if name is not None:
        app = store().create_app(validate_app_name(name), who())
    else:
        for _ in range(5):
            try:
                app = store().create_app(random_app_name(), who())
                break
            except Conflict:
                continue
        else:
            raise Conflict("could not find a free random app name; give one")
    forget_history(app.name)  # whatever an earlier app of this name left
    return jsonify(app_json(app)), 201


@bp.get("/<app>")
def app_info(app: str) -> Response:
    found = store().get_app(app)
    return jsonify({**app_json(found), "formation": store().get_formation(app)})


@bp.delete("/<app>")
def destroy_app(app: str) -> Response:
    store().destroy_app(app)
    forget_history(app)
    return jsonify({"destroyed": app})
