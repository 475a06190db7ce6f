"""Authentication for every route but /healthz, enforced before any view runs: a route added
later is protected without doing anything. Accepts `Authorization: Bearer <token>`, and HTTP
Basic with the token as password (what git sends)."""

from __future__ import annotations

import base64
import binascii

from flask import Flask, g, request

from berth.api.context import store
from berth.framework import tokens
from berth.framework.errors import Unauthorized

PUBLIC_ENDPOINTS = frozenset({"meta.healthz"})
# Routes that check a secret of their own instead of a token: an attached one-off run's
# executor proves itself with the run's secret (routes_runs.py).
OWN_SECRET_ENDPOINTS = frozenset({"runs.attach_executor"})


def presented_token() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value.strip():
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("malformed Basic credentials") from None
        return decoded.partition(":")[2]
    raise Unauthorized("missing token: send 'Authorization: Bearer <token>' (berth login)")


def install(app: Flask) -> None:
    @app.before_request
    def authenticate() -> None:
        if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint in OWN_SECRET_ENDPOINTS:
            return
        presented = presented_token()
        record = store().get_token(tokens.token_id(presented))
        if record is None or not tokens.matches(presented, record):
            raise Unauthorized("invalid or revoked token")
        g.berth_token = record
