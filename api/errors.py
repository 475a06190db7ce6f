"""The one place that maps errors to HTTP: BerthError by its status, werkzeug's HTTP errors
(unknown route, wrong method, body too large) by theirs, anything else as a logged 500 that
reveals nothing. Every error body is {"error": {"code", "message"}}."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from berth.framework.errors import BerthError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}
_HTTP_MESSAGES = {
    404: "no such route; see /v1/openapi.json",
    413: "request body is too large",
}


# An oversize body left unread makes the kernel reset the connection, which can destroy the
# 413 before the client reads it; read and drop up to this much so the client sees the answer.
DRAIN_LIMIT = 16 * 1024 * 1024


def _drain() -> None:
    stream = request.environ.get("wsgi.input")
    if stream is None or (request.content_length or 0) > DRAIN_LIMIT:
        return
    left = DRAIN_LIMIT
    while left > 0 and (chunk := stream.read(min(65536, left))):
        left -= len(chunk)


def _body(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message}}), status


def install(app: Flask) -> None:
    @app.errorhandler(BerthError)
    def berth_error(exc: BerthError) -> tuple[Response, int]:
        if exc.status >= 500:
            log.error("request failed: %s", exc.message, extra={"code": exc.code})
        return _body(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        if status == 413:
            _drain()
        message = _HTTP_MESSAGES.get(status) or exc.description or exc.name
        return _body(status, _HTTP_CODES.get(status, "http_error"), message)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        # Log the type and place only: an exception's text could quote request data.
        log.error("unexpected %s", type(exc).__name__, exc_info=(type(exc), exc, None))
        return _body(500, "internal", "internal error; see the API server's log")
