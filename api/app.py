"""create_app(): the Flask application, given a started Store and the Settings.

Runs in gunicorn's worker threads. Every request is logged as one structured line (method,
route, status, duration, token id), never with its body."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

from berth.api import (
    auth,
    errors,
    git,
    routes_apps,
    routes_builds,
    routes_certs,
    routes_checks,
    routes_domains,
    routes_drains,
    routes_logs,
    routes_meta,
    routes_ps,
    routes_releases,
    routes_routes,
    routes_routing,
    routes_runs,
    routes_tokens,
)
from berth.api.context import SETTINGS, STORE
from berth.framework.settings import Settings
from berth.framework.state import Store

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


def create_app(store: Store, settings: Settings) -> Flask:
    app = Flask("berth.api")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[STORE] = store
    app.extensions[SETTINGS] = settings
    for module in (
        routes_meta,
        routes_apps,
        routes_releases,
        routes_ps,
        routes_checks,
        routes_domains,
        routes_drains,
        routes_logs,
        routes_certs,
        routes_routes,
        routes_routing,
        routes_tokens,
        routes_builds,
        routes_runs,
    ):
        app.register_blueprint(module.bp)
    routes_runs.install(app)  # attached runs' rendezvous
    git.install(app)  # /git/APP.git: git push and clone

    @app.before_request
    def start_clock() -> None:
        g.berth_started = time.monotonic()

    auth.install(app)
    errors.install(app)

    @app.after_request
    def log_request(response: Response) -> Response:
        started = g.get("berth_started")
        token = g.get("berth_token")
        log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "route": request.url_rule.rule if request.url_rule else None,
                "status": response.status_code,
                "ms": round((time.monotonic() - started) * 1000, 2) if started else None,
                "token": token.id if token else None,
            },
        )
        return response

    return app
