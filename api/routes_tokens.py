"""API tokens: list (ids and descriptions only), create (the secret is shown once), revoke."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from berth.api.context import json_body, store, who
from berth.framework import tokens
from berth.framework.errors import Invalid

bp = Blueprint("tokens", __name__, url_prefix="/v1/tokens")

MAX_DESCRIPTION = 100


@bp.get("")
def list_tokens() -> Response:
    return jsonify([t.to_json() for t in store().list_tokens()])


@bp.post("")
def create_token() -> tuple[Response, int]:
    description = json_body(optional=True).get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise Invalid(f"description must be a string of at most {MAX_DESCRIPTION} characters")
    secret, record = tokens.new_token(description or "token", who())
    store().add_token(record)
    return jsonify({**record.to_json(), "token": secret}), 201


@bp.delete("/<token_id>")
def revoke_token(token_id: str) -> Response:
    store().revoke_token(token_id)
    return jsonify({"revoked": token_id})
