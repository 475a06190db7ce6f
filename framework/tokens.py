"""API tokens: `berth_<id>_<secret>`, 256 random bits, stored only as a SHA-256 digest.

The id is public (listings, revocation); the secret never leaves the client. Tokens are
high-entropy, so a fast hash is the right one; comparison is constant-time. Pure.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from berth.framework.errors import Unauthorized
from berth.framework.model import Token, now

PREFIX = "berth_"
_SHAPE = re.compile(r"^berth_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(description: str, created_by: str) -> tuple[str, Token]:
    """A fresh token: the secret string (shown once) and the record to store."""
    token_id = secrets.token_hex(6)
    token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    record = Token(
        id=token_id,
        digest=digest(token),
        description=description,
        created_at=now(),
        created_by=created_by,
    )
    return token, record


def token_id(presented: str) -> str:
    """The id inside a presented token, or Unauthorized if it is not shaped like one."""
    match = _SHAPE.fullmatch(presented)
    if not match:
        raise Unauthorized("malformed token: expected berth_<id>_<secret>")
    return match.group(1)


def matches(presented: str, record: Token) -> bool:
    return hmac.compare_digest(digest(presented), record.digest)
