"""TLS certificates: list, add, remove (Heroku's `certs`). A certificate serves the names in
its subjectAltName; each must be a name the app has: `APP.<domain>` or one of its custom
domains (a wildcard name only for a wildcard domain). The key is sealed before it reaches
ZooKeeper and never leaves the API again. Certificates the router obtained over ACME are
listed here too (source "acme")."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify

from berth.api.context import json_body, settings, store
from berth.framework.certs import Certificate, check_pair, normalise_pem
from berth.framework.errors import Invalid
from berth.framework.model import now, validate_domain

bp = Blueprint("certs", __name__, url_prefix="/v1/apps/<app>/certs")


@bp.get("")
def list_certs(app: str) -> Response:
    return jsonify([c.to_json() for c in store().certs(app)])


@bp.post("")
def add_cert(app: str) -> tuple[Response, int]:
    body = json_body()
    cert_pem, key_pem = body.get("certificate"), body.get("private_key")
    if not isinstance(cert_pem, str) or not isinstance(key_pem, str):
        raise Invalid(
            'give {"certificate": PEM chain, "private_key": PEM key} as strings'
            " (berth certs:add CERT_FILE KEY_FILE does)"
        )
    info = check_pair(cert_pem, key_pem, datetime.now(UTC))
    names = {d.hostname for d in store().domains(app)} | {f"{app}.{settings().domain}"}
    foreign = [h for h in info.hostnames if h not in names]
    if foreign:
        raise Invalid(
            f"the certificate names {', '.join(foreign[:5])}, which app {app} does not have:"
            f" add it first with `berth domains:add` (the app has {', '.join(sorted(names))})"
        )
    cert_text, key_text = normalise_pem(cert_pem, key_pem)
    cert = Certificate(
        name=info.hostnames[0],
        app=app,
        hostnames=info.hostnames,
        issuer=info.issuer,
        not_after=info.not_after,
        fingerprint=info.fingerprint,
        source="manual",
        created_at=now(),
        cert_pem=cert_text,
        key_pem=key_text,
    )
    return jsonify(store().put_cert(cert).to_json()), 201


@bp.delete("/<hostname>")
def remove_cert(app: str, hostname: str) -> Response:
    name = validate_domain(hostname)
    return jsonify({"removed": store().remove_cert(app, name)})
