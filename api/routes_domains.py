"""Custom domains: list, add, remove (Heroku's `domains`). The router serves each app at
APP.<domain> by itself; these are the other hostnames it routes to the app, exact
(`www.example.com`) or wildcard (`*.example.com`). A domain belongs to at most one app, and
names under this Berth's own domain (`--domain`, shared with the router) are refused."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from berth.api.context import json_body, settings, store
from berth.framework.errors import Invalid
from berth.framework.model import validate_domain

bp = Blueprint("domains", __name__, url_prefix="/v1/apps/<app>/domains")


def _not_the_platforms(hostname: str) -> str:
    """One app must not take another's APP.<domain> (nor the domain itself)."""
    base = settings().domain
    bare = hostname.removeprefix("*.")
    if bare == base or bare.endswith(f".{base}"):
        raise Invalid(
            f"{hostname} is under this Berth's own domain {base}, where each app already has"
            f" APP.{base}: give a domain of your own"
        )
    return hostname


@bp.get("")
def list_domains(app: str) -> Response:
    return jsonify([d.to_json() for d in store().domains(app)])


@bp.post("")
def add_domain(app: str) -> tuple[Response, int]:
    body = json_body()
    if "hostname" not in body:
        raise Invalid('give the domain as {"hostname": "www.example.com"}')
    hostname = _not_the_platforms(validate_domain(body["hostname"]))
    return jsonify(store().add_domain(app, hostname).to_json()), 201


@bp.delete("/<hostname>")
def remove_domain(app: str, hostname: str) -> Response:
    name = validate_domain(hostname)
    store().remove_domain(app, name)
    return jsonify({"removed": name})
