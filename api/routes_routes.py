"""Routes: how an app is reached through the routers. HTTP routes are the app's host names
(`APP.<domain>` and its custom domains, managed with `domains`); TCP routes (Flynn's `route add
tcp`) expose one process type on a router port, optionally with a PROXY protocol header to
the backend. Listing shows both; adding and removing here is for TCP routes.

A router port belongs to at most one route in the whole Berth (the Store makes it so); ports
below 1024 are refused (the routers' own HTTP and HTTPS ports are among them), and so is the
API's own port. A router that still cannot bind a route's port skips that route and logs why."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from berth.api.context import json_body, settings, store
from berth.framework.errors import Invalid
from berth.framework.model import validate_route_port

bp = Blueprint("routes", __name__, url_prefix="/v1/apps/<app>/routes")

_TCP_FIELDS = {"type", "port", "process", "proxy_protocol"}


def _port(value: object) -> int:
    port = validate_route_port(value)
    if port == settings().api_port:
        raise Invalid(f"port {port} is the Berth API's own port: choose another one")
    return port


def _http_routes(app: str) -> list[dict[str, Any]]:
    base = settings().domain
    routes = [
        {"id": f"http:{app}.{base}", "type": "http", "host": f"{app}.{base}", "process": "web"}
    ]
    for domain in store().domains(app):
        routes.append(
            {
                "id": f"http:{domain.hostname}",
                "type": "http",
                "host": domain.hostname,
                "process": "web",
                "created_at": domain.created_at,
            }
        )
    return routes


@bp.get("")
def list_routes(app: str) -> Response:
    tcp = [r.to_json() for r in store().tcp_routes(app)]  # NotFound for an unknown app first
    return jsonify(_http_routes(app) + tcp)


@bp.post("")
def add_route(app: str) -> tuple[Response, int]:
    body = json_body()
    kind = body.get("type", "tcp")
    if kind == "http":
        raise Invalid("HTTP routes are the app's host names: add one with domains:add HOSTNAME")
    if kind != "tcp":
        raise Invalid(f"route type must be tcp, not {str(kind)[:20]!r}")
    unknown = sorted(set(body) - _TCP_FIELDS)
    if unknown:
        raise Invalid(
            f"unknown field(s) {', '.join(unknown)[:80]}: a TCP route takes port,"
            " process and proxy_protocol"
        )
    for required in ("port", "process"):
        if required not in body:
            raise Invalid(
                'give the route as {"type": "tcp", "port": 5432, "process": "db",'
                f' "proxy_protocol": null|"v1"|"v2"}}: {required} is missing'
            )
    route = store().add_tcp_route(
        app, _port(body["port"]), body["process"], body.get("proxy_protocol")
    )
    return jsonify(route.to_json()), 201


@bp.delete("/tcp/<port>")
def remove_route(app: str, port: str) -> Response:
    route = store().remove_tcp_route(app, validate_route_port(port))
    return jsonify({"removed": route.id, "route": route.to_json()})
