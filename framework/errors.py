"""The exception tree every Berth component raises, and the only place that knows HTTP statuses.

    BerthError (500 internal)
    ├── BadRequest (400 bad_request)      malformed request: bad JSON, wrong body shape
    ├── Unauthorized (401 unauthorized)   missing, malformed, unknown or revoked token
    ├── NotFound (404 not_found)          unknown app, release, token
    ├── Conflict (409 conflict)           name taken, concurrent change lost its race
    ├── PayloadTooLarge (413 too_large)   request body over the API's limit
    ├── Invalid (422 invalid)             well-formed but unacceptable: bad names, oversize values
    └── Unavailable (503 unavailable)     ZooKeeper unreachable; try again

Messages are for people and must never contain a config value. Imported by everything;
imports nothing.
"""

from __future__ import annotations


class BerthError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(BerthError):
    status = 400
    code = "bad_request"


class Unauthorized(BerthError):
    status = 401
    code = "unauthorized"


class NotFound(BerthError):
    status = 404
    code = "not_found"


class Conflict(BerthError):
    status = 409
    code = "conflict"


class PayloadTooLarge(BerthError):
    status = 413
    code = "too_large"


class Invalid(BerthError):
    status = 422
    code = "invalid"


class Unavailable(BerthError):
    status = 503
    code = "unavailable"
