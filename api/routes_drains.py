"""Log drains (Heroku's `drains`): list, add, remove the places an app's log lines are also
sent to, `syslog://host:port`, `syslog+tls://host:port` (RFC 5424, octet counting) or
`https://host/path` (batched NDJSON POSTs). The Store keeps the list (at most 10 per app) in
ZooKeeper; `berth logd` watches it and sends (logd.py, drains.py). Listing adds each drain's
delivery stats as logd reports them (`GET /v1/drains/<app>` with the read token): buffered,
delivered and dropped lines, up or retrying, the last error; all null if logd does not answer.

A drain is removed by its id (`DELETE …/drains/d.0123456789ab`) or its URL (`DELETE
…/drains?url=…`, which is normalised like an added one)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request

from berth.api.context import json_body, settings, store
from berth.framework import http1, logship
from berth.framework.drainurl import DRAIN_ID
from berth.framework.errors import Invalid
from berth.framework.loglines import read_token

log = logging.getLogger(__name__)

bp = Blueprint("drains", __name__, url_prefix="/v1/apps/<app>/drains")

_NO_STATS = {
    "buffered": None,
    "delivered": None,
    "dropped": None,
    "status": None,
    "last_error": None,
}


def _stats(app: str) -> dict[str, Any] | None:
    """logd's delivery stats for the app's drains, or None if logd does not answer."""
    token = read_token(logship.load_or_create_key(settings().data_dir))
    try:
        answer = http1.request(
            http1.Endpoint.parse(settings().logs_url),
            "GET",
            f"/v1/drains/{http1.quote_segment(app)}",
            headers={"Authorization": f"Bearer {token}"},
            connect_timeout=2.0,
            timeout=5.0,
        )
        try:
            if answer.status != 200:
                return None
            found = answer.json(1024 * 1024).get("drains")
        finally:
            answer.close()
    except (OSError, ValueError, AttributeError) as e:
        log.warning("logd did not give drain stats: %s", e, extra={"app": app})
        return None
    return found if isinstance(found, dict) else None


@bp.get("")
def list_drains(app: str) -> Response:
    drains = store().drains(app)  # NotFound for an unknown app
    stats = _stats(app) if drains else {}
    out = []
    for drain in drains:
        found = stats.get(drain.id) if stats is not None else None
        # logd answered but has not picked this drain up yet
        fresh = {
            "buffered": 0,
            "delivered": 0,
            "dropped": 0,
            "status": "pending",
            "last_error": "",
        }
        out.append({**drain.to_json(), **(found or (fresh if stats is not None else _NO_STATS))})
    return jsonify(out)


@bp.post("")
def add_drain(app: str) -> tuple[Response, int]:
    body = json_body()
    unknown = sorted(set(body) - {"url"})
    if unknown or "url" not in body:
        raise Invalid('give the drain as {"url": "syslog://logs.example.com:514"}')
    return jsonify(store().add_drain(app, body["url"]).to_json()), 201


@bp.delete("/<drain>")
def remove_drain(app: str, drain: str) -> Response:
    if not DRAIN_ID.fullmatch(drain):
        raise Invalid(f"{drain[:40]!r} is not a drain id like d.0123456789ab")
    return jsonify({"removed": store().remove_drain(app, drain).to_json()})


@bp.delete("")
def remove_drain_by_url(app: str) -> Response:
    url = request.args.get("url", "")
    if not url:
        raise Invalid("give the drain to remove as ?url=… or by its id: …/drains/d.0123456789ab")
    return jsonify({"removed": store().remove_drain(app, url).to_json()})
