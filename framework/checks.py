"""Health checks per process type: what `checks:set` stores and what a task is launched with.

A check decides when a task takes traffic (the router routes only to tasks the executor has
reported healthy) and when a deploy has failed: a task none of whose checks passes within
`startup` seconds is stopped and counts as a failed start, and a release whose tasks fail to
start `DEPLOY_ATTEMPTS` times is rolled back by the framework (framework/scheduler.py).

Stored at /apps/<app>/checks as `{"web": {"type": "http", "path": "/up", "startup": 60}}`;
a process type absent from it has the default: a TCP connect for `web` and for a process type
a TCP route points at (routers send it connections), none for the others (a worker has no
port anyone connects to). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from berth.framework.errors import Invalid
from berth.framework.model import PROCESS_TYPE

TYPES = ("http", "tcp", "none")
DEFAULT_STARTUP = 60  # seconds: Heroku's boot timeout
MIN_STARTUP, MAX_STARTUP = 1, 900
MAX_PATH = 256
FIELDS = ("type", "path", "startup")


@dataclass(frozen=True, slots=True)
class Check:
    type: str  # one of TYPES
    path: str = "/"  # for "http"
    startup: int = DEFAULT_STARTUP  # seconds for the first pass
    default: bool = False  # nothing stored for this process type

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "startup": self.startup}
        if self.type == "http":
            out["path"] = self.path
        out["default"] = self.default
        return out


def default_check(process: str, routed: Collection[str] = ()) -> Check:
    """`routed`: the app's process types that TCP routes point at."""
    return Check("tcp" if process == "web" or process in routed else "none", default=True)


def effective(stored: Mapping[str, Any], process: str, routed: Collection[str] = ()) -> Check:
    """The check a new task of `process` gets, from what `checks:set` stored."""
    entry = stored.get(process)
    if not isinstance(entry, dict):
        return default_check(process, routed)
    return Check(
        type=str(entry.get("type", "tcp")),
        path=str(entry.get("path", "/")),
        startup=int(entry.get("startup", DEFAULT_STARTUP)),
    )


def _path(ptype: str, value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise Invalid(f"the check path of {ptype} must start with /, like /up")
    if len(value) > MAX_PATH:
        raise Invalid(f"the check path of {ptype} is over {MAX_PATH} characters")
    if any(not " " < c < "\x7f" for c in value) or "#" in value:
        raise Invalid(
            f"the check path of {ptype} must be printable ASCII without spaces or '#'"
            " (percent-encode anything else)"
        )
    return value


def _startup(ptype: str, value: object) -> int:
    try:
        seconds = int(str(value).removesuffix("s"))
    except ValueError:
        raise Invalid(f"startup of {ptype} must be whole seconds, like 60") from None
    if not MIN_STARTUP <= seconds <= MAX_STARTUP:
        raise Invalid(f"startup of {ptype} must be {MIN_STARTUP} to {MAX_STARTUP} seconds")
    return seconds


def validate_checks(
    changes: object, process_types: Mapping[str, str]
) -> dict[str, dict[str, Any] | None]:
    """`{"web": {"path": "/up"}}` → `{"web": {"type": "http", "path": "/up", "startup": 60}}`;
    `{"web": null}` → back to the default. A path alone means type http."""
    if not isinstance(changes, dict) or not changes:
        raise Invalid("checks need a non-empty object of TYPE: {type, path, startup} or null")
    checked: dict[str, dict[str, Any] | None] = {}
    for ptype, check in changes.items():
        if not isinstance(ptype, str) or not PROCESS_TYPE.fullmatch(ptype):
            raise Invalid(f"invalid process type {str(ptype)[:40]!r}")
        if process_types and ptype not in process_types:
            known = ", ".join(sorted(process_types))
            raise Invalid(f"no process type {ptype!r} in the current release (it has: {known})")
        if check is None:
            checked[ptype] = None
            continue
        if not isinstance(check, dict) or not check or set(check) - set(FIELDS):
            raise Invalid(f"the check of {ptype} takes type (http, tcp or none), path and startup")
        kind = check.get("type", "http" if "path" in check else "tcp")
        if kind not in TYPES:
            raise Invalid(f"check type {str(kind)[:20]!r} of {ptype} is not http, tcp or none")
        if "path" in check and kind != "http":
            raise Invalid(f"a path needs type http, not {kind} (process type {ptype})")
        out: dict[str, Any] = {"type": kind}
        if kind == "http":
            out["path"] = _path(ptype, check.get("path", "/"))
        out["startup"] = _startup(ptype, check.get("startup", DEFAULT_STARTUP))
        checked[ptype] = out
    return checked
