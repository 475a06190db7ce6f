"""Per-app router settings (`routing:set`): the answer timeout and HTTPS-only.

They live in the app's own znode (model.App.timeout, .https_only), which the router reads
anyway, so a router with thousands of apps pays no extra ZooKeeper read for them. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from berth.framework.errors import Invalid

MIN_TIMEOUT, MAX_TIMEOUT = 1, 3600
_TRUE = ("on", "true", "yes", "1")
_FALSE = ("off", "false", "no", "0")


def _timeout(value: object) -> int | None:
    if value is None:
        return None
    text = str(value).strip().removesuffix("s")
    if isinstance(value, bool) or not text.isdigit():
        raise Invalid("timeout must be whole seconds, like 60 (or null for the default)")
    seconds = int(text)
    if not MIN_TIMEOUT <= seconds <= MAX_TIMEOUT:
        raise Invalid(f"timeout must be {MIN_TIMEOUT} to {MAX_TIMEOUT} seconds")
    return seconds


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise Invalid("https_only must be on or off")


def validate_routing(changes: object) -> dict[str, Any]:
    """`{"timeout": 60, "https_only": "on"}` → `{"timeout": 60, "https_only": True}`; a
    timeout of null restores the router's default."""
    if not isinstance(changes, dict) or not changes:
        raise Invalid("routing settings need a non-empty object of timeout and https_only")
    unknown = sorted(str(k)[:40] for k in changes if k not in ("timeout", "https_only"))
    if unknown:
        raise Invalid(f"unknown routing setting {unknown[0]!r}: use timeout or https_only")
    checked: dict[str, Any] = {}
    if "timeout" in changes:
        checked["timeout"] = _timeout(changes["timeout"])
    if "https_only" in changes:
        checked["https_only"] = _flag(changes["https_only"])
    return checked
