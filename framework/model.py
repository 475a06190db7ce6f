"""Berth's nouns as frozen values: App, Artifact, Release, Formation, Token, Domain,
TcpRoute, Build — with validation and explicit JSON.

Pure: no I/O, no threads. Config values live here in plain text only in memory; state.py seals
them before they reach ZooKeeper. Validation messages name keys and sizes, never values.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from berth.framework import registry
from berth.framework.errors import Invalid

APP_NAME = re.compile(r"^[a-z][a-z0-9-]{1,29}$")
CONFIG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PROCESS_TYPE = re.compile(r"^[a-z][a-z0-9_-]{0,29}$")

MAX_KEY_CHARS = 256
MAX_VALUE_BYTES = 32 * 1024
# Every release znode carries a sealed copy of the config; ZooKeeper's default znode limit is
# 1 MiB, so the whole config is capped well below it (sealing and base64 add about a third).
MAX_CONFIG_BYTES = 512 * 1024
MAX_QUANTITY = 100
MAX_DESCRIPTION_CHARS = 200


def now() -> str:
    """The current time as RFC 3339 UTC with microseconds, the one timestamp format Berth uses."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def validate_app_name(name: object) -> str:
    if not isinstance(name, str):
        raise Invalid("app name must be a string")
    if not APP_NAME.fullmatch(name):
        raise Invalid(
            f"invalid app name {name[:40]!r}: use 2-30 characters, lowercase letters, digits and"
            " dashes, starting with a letter"
        )
    return name


def validate_config_changes(changes: object) -> dict[str, str | None]:
    """Check a config patch: KEY → new value, or None to unset. Returns it typed."""
    if not isinstance(changes, dict) or not changes:
        raise Invalid("config changes must be a non-empty object of KEY: value (null unsets)")
    checked: dict[str, str | None] = {}
    for key, value in changes.items():
        if len(key) > MAX_KEY_CHARS:
            raise Invalid(f"config key is {len(key)} characters; the limit is {MAX_KEY_CHARS}")
        if not CONFIG_KEY.fullmatch(key):
            raise Invalid(
                f"invalid config key {key!r}: use letters, digits and underscores,"
                " not starting with a digit"
            )
        if value is not None and not isinstance(value, str):
            raise Invalid(f"value of {key} must be a string (or null to unset it)")
        if value is not None and len(value.encode()) > MAX_VALUE_BYTES:
            raise Invalid(
                f"value of {key} is {len(value.encode())} bytes; the limit is {MAX_VALUE_BYTES}"
            )
        checked[key] = value
    return checked


def apply_config_changes(
    config: Mapping[str, str], changes: Mapping[str, str | None]
) -> dict[str, str]:
    merged = dict(config)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    size = sum(len(k.encode()) + len(v.encode()) for k, v in merged.items())
    if size > MAX_CONFIG_BYTES:
        raise Invalid(f"config would be {size} bytes in all; the limit is {MAX_CONFIG_BYTES}")
    return merged


def describe_config_changes(changes: Mapping[str, str | None]) -> str:
    set_keys = sorted(k for k, v in changes.items() if v is not None)
    unset_keys = sorted(k for k, v in changes.items() if v is None)
    parts = []
    if set_keys:
        parts.append("Set " + ", ".join(set_keys))
    if unset_keys:
        parts.append(("remove " if parts else "Remove ") + ", ".join(unset_keys))
    return _clip(" and ".join(parts) + " config vars")


def validate_formation_changes(changes: object, process_types: Mapping[str, str]) -> dict[str, int]:
    """Check a scale request: TYPE → quantity. When the current release declares process types,
    only those can be scaled; before any build there are none to check against."""
    if not isinstance(changes, dict) or not changes:
        raise Invalid("scale needs a non-empty object of TYPE: quantity")
    checked: dict[str, int] = {}
    for ptype, quantity in changes.items():
        if not PROCESS_TYPE.fullmatch(ptype):
            raise Invalid(
                f"invalid process type {ptype[:40]!r}: use lowercase letters, digits, '-' and"
                " '_', starting with a letter, at most 30 characters"
            )
        if ptype == RELEASE_PROCESS:
            raise Invalid(
                "release is the release phase's command (the Procfile's release:): it runs"
                " once per push before the new release goes live, and is never scaled"
            )
        if process_types and ptype not in process_types:
            known = ", ".join(sorted(process_types))
            raise Invalid(f"no process type {ptype!r} in the current release (it has: {known})")
        if isinstance(quantity, bool) or not isinstance(quantity, int):
            raise Invalid(f"quantity of {ptype} must be a whole number")
        if not 0 <= quantity <= MAX_QUANTITY:
            raise Invalid(f"quantity of {ptype} must be between 0 and {MAX_QUANTITY}")
        checked[ptype] = quantity
    return checked


MIN_MEMORY_MB, MAX_MEMORY_MB = 16, 64 * 1024
MIN_CPUS, MAX_CPUS = 0.01, 64.0  # Docker refuses NanoCpus below 0.01 of a CPU
DEFAULT_MEMORY_MB, DEFAULT_CPUS = 256, 0.25
_MEMORY = re.compile(r"^([0-9]+)([mMgG]?)$")


def validate_limits(
    changes: object, process_types: Mapping[str, str]
) -> dict[str, dict[str, float]]:
    """`{"web": {"memory": "512m", "cpu": 1}}` → `{"web": {"memory_mb": 512, "cpus": 1.0}}`."""
    if not isinstance(changes, dict) or not changes:
        raise Invalid("limits need a non-empty object of TYPE: {memory, cpu}")
    checked: dict[str, dict[str, float]] = {}
    for ptype, limits in changes.items():
        if not PROCESS_TYPE.fullmatch(ptype):
            raise Invalid(f"invalid process type {ptype[:40]!r}")
        if process_types and ptype not in process_types:
            known = ", ".join(sorted(process_types))
            raise Invalid(f"no process type {ptype!r} in the current release (it has: {known})")
        if not isinstance(limits, dict) or not limits or set(limits) - {"memory", "cpu"}:
            raise Invalid(f"limits of {ptype} take memory (like 512m or 1g) and cpu (like 0.5)")
        out: dict[str, float] = {}
        if "memory" in limits:
            match = _MEMORY.fullmatch(str(limits["memory"]))
            if not match:
                raise Invalid(f"memory of {ptype} must look like 512m or 1g")
            mb = int(match.group(1)) * (1024 if match.group(2).lower() == "g" else 1)
            if not MIN_MEMORY_MB <= mb <= MAX_MEMORY_MB:
                raise Invalid(f"memory of {ptype} must be {MIN_MEMORY_MB}m to {MAX_MEMORY_MB}m")
            out["memory_mb"] = mb
        if "cpu" in limits:
            try:
                cpus = float(limits["cpu"])
            except (TypeError, ValueError):
                raise Invalid(f"cpu of {ptype} must be a number like 0.5") from None
            if not MIN_CPUS <= cpus <= MAX_CPUS:
                raise Invalid(f"cpu of {ptype} must be between {MIN_CPUS} and {MAX_CPUS}")
            out["cpus"] = cpus
        checked[ptype] = out
    return checked


# A custom domain: DNS labels of lowercase letters, digits and inner dashes (RFC 1123), at most
# 63 characters each and 253 in all; a wildcard only as the whole leftmost label.
DOMAIN_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MAX_DOMAIN_CHARS = 253
MAX_DOMAINS_PER_APP = 100


def validate_domain(text: object) -> str:
    """A custom domain as the router matches it: `www.example.com` or `*.example.com`.

    Returns it lower-cased, with one trailing dot (the fully qualified form) removed. Refuses
    a scheme, port, path, IP address, a single label, `*` anywhere but as the whole leftmost
    label with at least two labels after it, and non-ASCII names (give the punycode form)."""
    if not isinstance(text, str):
        raise Invalid("hostname must be a string, like www.example.com")
    shown = text[:80]
    if not text:
        raise Invalid("hostname is empty: give one like www.example.com")
    if not text.isascii():
        try:
            hint = f" ({text.encode('idna').decode('ascii')[:80]})"
        except UnicodeError:
            hint = ""
        raise Invalid(
            f"hostname {shown!r} is not ASCII: give its punycode form{hint}, with xn-- labels"
        )
    if text.startswith("["):
        raise Invalid(f"hostname {shown!r} is an IP address: give a domain name")
    if "://" in text:
        raise Invalid(
            f"hostname {shown!r}: give the hostname alone, without a scheme like https://"
        )
    if "/" in text:
        raise Invalid(f"hostname {shown!r}: give the hostname alone, without a path")
    if ":" in text:
        raise Invalid(f"hostname {shown!r}: give the hostname alone, without a port")
    name = text.lower().removesuffix(".")
    if len(name) > MAX_DOMAIN_CHARS:
        raise Invalid(f"hostname is {len(name)} characters; the limit is {MAX_DOMAIN_CHARS}")
    labels = name.split(".")
    if "" in labels:
        raise Invalid(f"hostname {shown!r} has an empty label (a leading dot or two in a row)")
    wildcard = labels[0] == "*"
    rest = labels[1:] if wildcard else labels
    if any("*" in label for label in rest):
        raise Invalid(
            f"hostname {shown!r}: a wildcard may only be the whole leftmost label,"
            " as in *.example.com"
        )
    if len(rest) < 2 and wildcard:
        raise Invalid(
            f"hostname {shown!r}: a wildcard needs at least two labels after the *,"
            " like *.example.com"
        )
    if len(rest) < 2:
        raise Invalid(f"hostname {shown!r} needs at least two labels, like example.com")
    for label in rest:
        if len(label) > 63:
            raise Invalid(
                f"hostname {shown!r} has a label of {len(label)} characters; the limit is 63"
            )
        if not DOMAIN_LABEL.fullmatch(label):
            bad = sorted({c for c in label if not (c.isalnum() or c == "-")})
            why = (
                f"characters {''.join(bad)!r} are not allowed"
                if bad
                else "a label cannot start or end with a dash"
            )
            raise Invalid(
                f"hostname {shown!r}: {why} (use letters, digits and dashes, in labels"
                " separated by dots)"
            )
    if rest[-1].isdigit():
        raise Invalid(f"hostname {shown!r} ends in a numeric label: give a domain name, not an IP")
    return name


def _clip(text: str) -> str:
    if len(text) <= MAX_DESCRIPTION_CHARS:
        return text
    return text[: MAX_DESCRIPTION_CHARS - 1] + "…"


_ADJECTIVES = (
    "amber", "brave", "calm", "dusty", "eager", "fuzzy", "gentle", "hidden", "icy", "jolly",
    "keen", "lucky", "misty", "noble", "polar", "quiet", "rapid", "sunny", "tidy", "vivid",
)  # fmt: skip
_NOUNS = (
    "anchor", "bay", "cove", "delta", "ferry", "harbor", "inlet", "jetty", "keel", "lagoon",
    "mooring", "pier", "quay", "reef", "shoal", "tide", "wharf", "buoy", "coast", "sound",
)  # fmt: skip


def random_app_name() -> str:
    """Heroku-style: adjective-noun-NNNNN, always a valid app name."""
    # SystemRandom (os.urandom), as `secrets` uses; `secrets` itself would load OpenSSL into
    # every executor through hmac (berth.executor imports this module)
    pick = random.SystemRandom()
    return f"{pick.choice(_ADJECTIVES)}-{pick.choice(_NOUNS)}-{pick.randrange(10000, 100000)}"


@dataclass(frozen=True, slots=True)
class App:
    name: str
    created_at: str
    # The current release: the one the app runs (0 only while the app is being created). A
    # release whose release phase is pending or failed never becomes it.
    release: int
    # How the router treats the app (`routing:set`, framework/routing.py): seconds to wait for
    # the first byte of an answer before a 504 (None: the router's default), and whether plain
    # HTTP requests are redirected to HTTPS.
    timeout: int | None = None
    https_only: bool = False
    # The newest release written, when it is above `release`: one whose release phase is
    # pending, or failed (None otherwise). Versions are never reused, so the next release is
    # `newest + 1` whichever it is.
    latest: int | None = None

    @property
    def newest(self) -> int:
        """The highest release version written, live or not."""
        return max(self.release, self.latest or 0)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "created_at": self.created_at,
            "release": self.release,
        }
        if self.timeout is not None:
            out["timeout"] = self.timeout
        if self.https_only:
            out["https_only"] = True
        if self.latest is not None and self.latest > self.release:
            out["latest"] = self.latest
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> App:
        timeout = data.get("timeout")
        latest = data.get("latest")
        return cls(
            name=data["name"],
            created_at=data["created_at"],
            release=int(data["release"]),
            timeout=None if timeout is None else int(timeout),
            https_only=bool(data.get("https_only", False)),
            latest=None if latest is None else int(latest),
        )


@dataclass(frozen=True, slots=True)
class Artifact:
    """What a release runs: a Docker image reference (or, later, a slug). Empty until a build.
    `port`: the port the image's web process listens on inside its container (a Dockerfile's
    EXPOSE); None: it listens on $PORT, whatever number that is."""

    kind: str
    ref: str
    port: int | None = None
    # `sha256:…` of an image pushed to Berth's registry (framework/registry.py): `ref` is then
    # `HOST:PORT/berth/app-<app>:<tag>`, and agents run `image`, pinned by this digest.
    digest: str | None = None

    @property
    def image(self) -> str:
        """The reference a task runs: `repo@digest` when pushed, else `ref`."""
        return registry.pinned(self.ref, self.digest)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "ref": self.ref}
        if self.port is not None:
            out["port"] = self.port
        if self.digest is not None:
            out["digest"] = self.digest
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Artifact:
        port = data.get("port")
        digest = data.get("digest")
        return cls(
            kind=data["kind"],
            ref=data["ref"],
            port=None if port is None else int(port),
            digest=None if digest is None else str(digest),
        )


# A release's life (Heroku's): a push whose Procfile has a `release` process writes its release
# as "pending", runs that command once from it, and only then makes it the app's current
# release ("succeeded"), or leaves it "failed" (the command failed, or a newer release was made
# meanwhile). Every other release is "succeeded" when written, and so is any record from
# before releases had a status.
RELEASE_PENDING, RELEASE_SUCCEEDED, RELEASE_FAILED = "pending", "succeeded", "failed"
RELEASE_STATES = (RELEASE_PENDING, RELEASE_SUCCEEDED, RELEASE_FAILED)
# The Procfile type of the release phase: run once per push, never part of a formation.
RELEASE_PROCESS = "release"


def release_status(data: Mapping[str, Any]) -> tuple[str, str]:
    """(status, reason) of a stored release record; "succeeded" when it has none."""
    status = data.get("status") or RELEASE_SUCCEEDED
    if status not in RELEASE_STATES:
        status = RELEASE_FAILED  # unreadable: never run it, never roll back to it
    return str(status), str(data.get("status_reason") or "")


@dataclass(frozen=True, slots=True)
class Release:
    """Written once; only its status changes afterwards (pending → succeeded | failed).
    `config` is plain text in memory; state.py seals it at rest."""

    app: str
    version: int
    description: str
    created_by: str
    created_at: str
    config: Mapping[str, str] = field(default_factory=dict)
    artifact: Artifact | None = None
    process_types: Mapping[str, str] = field(default_factory=dict)
    status: str = RELEASE_SUCCEEDED  # RELEASE_STATES
    status_reason: str = ""  # why it failed (or what it waits for while pending)

    def summary_json(self) -> dict[str, Any]:
        """Everything but config values: for listings."""
        return {
            "app": self.app,
            "version": self.version,
            "description": self.description,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "artifact": self.artifact.to_json() if self.artifact else None,
            "process_types": dict(self.process_types),
            "config_keys": sorted(self.config),
            "status": self.status,
            "status_reason": self.status_reason,
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.summary_json(), "config": dict(self.config)}


TERMINAL_STATES = frozenset({"finished", "failed", "killed", "lost", "gone", "error", "dropped"})


@dataclass(frozen=True, slots=True)
class Task:
    """One running (or ended) process instance: slot `process.index` of an app's release.

    `state` is Mesos's task state in Berth's words: staging (launched, no news yet), starting,
    running, killing, or a terminal one (TERMINAL_STATES)."""

    id: str
    app: str
    process: str
    index: int
    release: int
    state: str
    agent_id: str = ""
    hostname: str = ""
    port: int = 0
    healthy: bool | None = None  # None: no check reported
    launched_at: float = 0.0  # epoch seconds the framework launched it
    started_at: float = 0.0  # epoch seconds; 0 until running
    updated_at: float = 0.0
    exit_code: int | None = None
    message: str = ""

    @property
    def slot(self) -> tuple[str, str, int]:
        return (self.app, self.process, self.index)

    @property
    def live(self) -> bool:
        return self.state not in TERMINAL_STATES

    @property
    def serving(self) -> bool:
        return self.state == "running" and self.healthy is not False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "app": self.app, "process": self.process, "index": self.index,
            "release": self.release, "state": self.state, "agent_id": self.agent_id,
            "hostname": self.hostname, "port": self.port, "healthy": self.healthy,
            "launched_at": self.launched_at, "started_at": self.started_at,
            "updated_at": self.updated_at,
            "exit_code": self.exit_code, "message": self.message,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Task:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True, slots=True)
class Token:
    """An API token as stored: its public id, and only a hash of the secret token."""

    id: str
    digest: str  # hex SHA-256 of the whole token string
    description: str
    created_at: str
    created_by: str

    def to_json(self) -> dict[str, str]:
        """Public view: never the digest."""
        return {
            "id": self.id,
            "description": self.description,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }


@dataclass(frozen=True, slots=True)
class Domain:
    """A custom domain routed to an app: an exact hostname, or a wildcard (`*.example.com`)
    for the names under it, as the router matches them."""

    hostname: str  # as validate_domain returns it
    app: str
    created_at: str

    @property
    def kind(self) -> str:
        return "wildcard" if self.hostname.startswith("*.") else "custom"

    def to_json(self) -> dict[str, str]:
        return {
            "hostname": self.hostname,
            "kind": self.kind,
            "app": self.app,
            "created_at": self.created_at,
        }


# A TCP route exposes one process type of an app on a port of every router (Flynn's
# `route add tcp`). A port belongs to at most one route in the whole Berth; below 1024 are the
# privileged ports (the router's own HTTP/HTTPS ports among them).
MIN_ROUTE_PORT, MAX_ROUTE_PORT = 1024, 65535
MAX_ROUTES_PER_APP = 100
PROXY_PROTOCOLS = ("v1", "v2")


def validate_route_port(port: object) -> int:
    """A router port for a TCP route: a whole number from MIN_ROUTE_PORT to MAX_ROUTE_PORT
    (a string of digits, as in a URL path, is taken too)."""
    if isinstance(port, str) and port.isascii() and port.isdigit() and len(port) <= 5:
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int):
        raise Invalid(f"port must be a whole number from {MIN_ROUTE_PORT} to {MAX_ROUTE_PORT}")
    if not MIN_ROUTE_PORT <= port <= MAX_ROUTE_PORT:
        raise Invalid(
            f"port {port} is out of range: TCP routes take ports {MIN_ROUTE_PORT} to"
            f" {MAX_ROUTE_PORT} (lower ones are privileged, the router's HTTP ports among them)"
        )
    return port


def validate_process_type(ptype: object, process_types: Mapping[str, str]) -> str:
    """A process type name; one the current release declares, once it declares any."""
    if not isinstance(ptype, str) or not PROCESS_TYPE.fullmatch(ptype):
        shown = ptype[:40] if isinstance(ptype, str) else ptype
        raise Invalid(
            f"invalid process type {shown!r}: use lowercase letters, digits, '-' and '_',"
            " starting with a letter, at most 30 characters"
        )
    if process_types and ptype not in process_types:
        known = ", ".join(sorted(process_types))
        raise Invalid(f"no process type {ptype!r} in the current release (it has: {known})")
    return ptype


def validate_proxy_protocol(value: object) -> str | None:
    """None (no PROXY header to the backend), "v1" (text) or "v2" (binary)."""
    if value is None or value == "":
        return None
    if value not in PROXY_PROTOCOLS:
        raise Invalid(
            f"proxy_protocol must be v1 or v2 (or null for none), not {str(value)[:20]!r}"
        )
    return str(value)


@dataclass(frozen=True, slots=True)
class TcpRoute:
    """Connections to `port` on the routers go to the app's `process` tasks; with
    `proxy_protocol`, each starts with a PROXY protocol header naming the client."""

    port: int
    app: str
    process: str
    proxy_protocol: str | None  # None, "v1" or "v2"
    created_at: str

    @property
    def id(self) -> str:
        return f"tcp:{self.port}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "tcp",
            "port": self.port,
            "app": self.app,
            "process": self.process,
            "proxy_protocol": self.proxy_protocol,
            "created_at": self.created_at,
        }


BUILD_STATES = ("building", "succeeded", "failed")
MAX_BUILD_LOG_BYTES = 256 * 1024  # the tail of a build's log kept in its znode


def clip_log(text: str, limit: int = MAX_BUILD_LOG_BYTES) -> str:
    """The log's last `limit` bytes (whole lines), with a note saying how much was cut."""
    data = text.encode()
    if len(data) <= limit:
        return text
    tail = data[-limit:]
    tail = tail[tail.find(b"\n") + 1 :] if b"\n" in tail else tail
    cut = len(data) - len(tail)
    return f"[… {cut} bytes of the log's beginning not kept …]\n" + tail.decode(errors="replace")


@dataclass(frozen=True, slots=True)
class Build:
    """One `git push` turned into an image: what was built, by which builder, how it went.
    `release` is the release it made (None until then, or when it failed)."""

    id: str
    app: str
    commit: str  # 40 hex
    builder: str  # "dockerfile", "buildpacks", or "auto" (failed before it finished)
    status: str  # BUILD_STATES
    created_by: str
    started_at: str
    finished_at: str | None = None
    duration: float | None = None  # seconds
    release: int | None = None
    image: str = ""
    error: str = ""
    log: str = ""

    def summary_json(self) -> dict[str, Any]:
        """Everything but the log: for listings."""
        return {
            "id": self.id,
            "app": self.app,
            "commit": self.commit,
            "builder": self.builder,
            "status": self.status,
            "created_by": self.created_by,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration": self.duration,
            "release": self.release,
            "image": self.image,
            "error": self.error,
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.summary_json(), "log": self.log}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Build:
        duration = data.get("duration")
        release = data.get("release")
        return cls(
            id=data["id"],
            app=data["app"],
            commit=data["commit"],
            builder=data["builder"],
            status=data["status"],
            created_by=data["created_by"],
            started_at=data["started_at"],
            finished_at=data.get("finished_at"),
            duration=None if duration is None else float(duration),
            release=None if release is None else int(release),
            image=data.get("image", ""),
            error=data.get("error", ""),
            log=data.get("log", ""),
        )
