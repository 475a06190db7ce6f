"""Typed access to what every request needs: the Store, the Settings, the caller's token, and
the request body as JSON with a clear error when it is not."""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, g, request

from berth.framework.errors import BadRequest
from berth.framework.model import Token
from berth.framework.settings import Settings
from berth.framework.state import Store

STORE = "berth.store"
SETTINGS = "berth.settings"


def store() -> Store:
    value: Store = current_app.extensions[STORE]
    return value


def settings() -> Settings:
    value: Settings = current_app.extensions[SETTINGS]
    return value


def caller() -> Token:
    token: Token = g.berth_token
    return token


def who() -> str:
    """How releases and tokens record their author: the token's description and id."""
    token = caller()
    return f"{token.description} ({token.id})"


def json_body(optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object. An empty body is `{}` when `optional`."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        if optional:
            return {}
        raise BadRequest("request body is empty: expected a JSON object")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data
