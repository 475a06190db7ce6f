"""The executor's Docker adapter: runs one task's process as a hardened container and reports
how it ended, through the Docker Engine API (engine.py). Everything it returns is Berth's own
type (`ContainerSpec`, `Exit`, `ContainerInfo`) or one of the errors below.

What every container gets, whatever the spec says: all capabilities dropped,
`no-new-privileges`, a pids limit, a memory limit with swap equal to it (no swap), a CPU quota,
never privileged, never root (the image's USER if it is not root, else uid/gid 10000), no
volumes or bind mounts at all (so never the Docker socket), Docker's restart policy off (Mesos
and the scheduler decide about restarts), SIGTERM as the stop signal, a bounded json-file log,
and Docker's init (`docker-init`, which reaps zombies and forwards signals) when the engine has
one. `run` never pulls: an image missing on the agent is `ImageNotFound`; `ensure_image` pulls
one the engine lacks (from Berth's registry, with its credentials) before `run`. Containers named
`mesos-*` are refused, because the Mesos agent's Docker containerizer takes those for its own
and may kill them when it recovers.

Errors, on top of berth.framework.errors:

    BerthError
    └── ContainerError (500 container)            Docker refused or failed a request
        ├── InvalidSpec (422 invalid)             a spec Berth must not run: a mesos-* name,
        │                                         root, bad limits, ports or names
        ├── ImageNotFound (404 image_not_found)   the image is not on this agent
        ├── ContainerNotFound (404 not_found)     no such container
        ├── NameInUse (409 conflict)              another container already has that name
        ├── StartFailed (500 start_failed)        created but did not start (the port is
        │                                         taken); it is removed again. A missing
        │                                         command under docker-init is exit 127.
        ├── WaitTimedOut (504 timeout)            wait(timeout=…) passed, still running
        ├── EngineUnavailable (503 unavailable)   the Docker engine does not answer
        └── PullFailed (502 pull_failed)          the image could not be pulled (registry
                                                  unreachable, refused credentials, unknown)

Threads: a `Containers` may be shared by the executor's threads; each call is its own request
on its own connection. `wait()` blocks until the container stops and `logs()` until its
output ends, so each belongs in a thread of its own (the task watcher, the log pump).

Must not import flask, kazoo, berth.api or berth.cli (an import-linter contract); imports only
berth.framework's errors and registry (image references, X-Registry-Auth).
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

from berth.executor.engine import API_VERSION, Engine, EngineError
from berth.framework import http1, registry
from berth.framework.errors import BerthError

log = logging.getLogger(__name__)

DEFAULT_USER = "10000:10000"
DEFAULT_PIDS_LIMIT = 256
MIN_MEMORY_BYTES = 6 * 1024 * 1024  # Docker refuses less
LOG_MAX_SIZE = "10m"  # per file, two files: what dockerd keeps of a container's output
LOG_MAX_FILES = "2"
MAX_LINE_BYTES = 64 * 1024  # logs() hands on longer lines in pieces of this size
PULL_SILENCE = 300.0  # seconds a pull may go without a progress message

# Docker's own rule for container names.
CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")
ENV_KEY = re.compile(r"^[^=\x00]+$")
MESOS_PREFIX = "mesos-"
ROOT_USERS = ("", "0", "root")

Stream = Literal["stdout", "stderr"]


class ContainerError(BerthError):
    code = "container"


class InvalidSpec(ContainerError):
    status = 422
    code = "invalid"


class ImageNotFound(ContainerError):
    status = 404
    code = "image_not_found"

    def __init__(self, image: str) -> None:
        super().__init__(
            f"image {image!r} is not on this Docker engine (only images in Berth's "
            "registry are pulled; build or load it on the agent first)"
        )
        self.image = image


class ContainerNotFound(ContainerError):
    status = 404
    code = "not_found"

    def __init__(self, container: str) -> None:
        super().__init__(f"no container {container!r}")
        self.container = container


class NameInUse(ContainerError):
    status = 409
    code = "conflict"


class StartFailed(ContainerError):
    code = "start_failed"


class WaitTimedOut(ContainerError):
    status = 504
    code = "timeout"


class EngineUnavailable(ContainerError):
    status = 503
    code = "unavailable"


class PullFailed(ContainerError):
    status = 502
    code = "pull_failed"


def is_root(user: str) -> bool:
    """True when USER (as in a Dockerfile: `name`, `uid`, `uid:gid`) runs as uid 0."""
    return user.split(":", 1)[0] in ROOT_USERS


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """One container to run. `port` is the host port from the Mesos offer, published on
    `host_ip`; the container listens on `container_port` (an image's EXPOSEd port), or by
    default on the same number as the host port, and gets it in `PORT` (which wins over
    `env`). `user=None` means the image's USER if it is not root, else `DEFAULT_USER`."""

    name: str
    image: str
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None
    container_port: int | None = None
    host_ip: str = "0.0.0.0"  # noqa: S104 - Mesos offers the agent's ports on every address
    labels: dict[str, str] = field(default_factory=dict)
    memory_bytes: int = 512 * 1024 * 1024
    cpus: float = 1.0
    # cpus is a weight (CpuShares, cpus x 1024: a task may use idle CPU, and gets its share
    # when CPUs are contended), as in Mesos' default; with cpu_quota also a hard cap (NanoCpus,
    # CFS quota: Mesos' --cgroups_enable_cfs)
    cpu_quota: bool = False
    pids_limit: int = DEFAULT_PIDS_LIMIT
    user: str | None = None
    # One-off runs (attached): a TTY, and stdin open for one attach (closed when it ends).
    tty: bool = False
    stdin: bool = False

    def __post_init__(self) -> None:
        if self.name.lower().startswith(MESOS_PREFIX):
            raise InvalidSpec(
                f"container name {self.name!r} starts with {MESOS_PREFIX!r}: the Mesos agent "
                "treats such containers as its own"
            )
        if not CONTAINER_NAME.match(self.name):
            raise InvalidSpec(f"container name {self.name!r} is not a valid Docker name")
        if not self.image:
            raise InvalidSpec("no image")
        if self.command is not None and not self.command:
            raise InvalidSpec("command is empty (None runs the image's CMD)")
        for key in self.env:
            if not ENV_KEY.match(key):
                raise InvalidSpec(f"environment variable name {key!r} is not allowed")
        if any("\x00" in value for value in self.env.values()):
            raise InvalidSpec("an environment value contains a NUL byte")
        if self.port is not None and not 1 <= self.port <= 65535:
            raise InvalidSpec(f"port {self.port} is out of range")
        if self.container_port is not None and (
            self.port is None or not 1 <= self.container_port <= 65535
        ):
            raise InvalidSpec(f"container port {self.container_port} needs a host port, 1-65535")
        if self.memory_bytes < MIN_MEMORY_BYTES:
            raise InvalidSpec(f"memory {self.memory_bytes} bytes is below Docker's 6 MiB")
        if not 0 < self.cpus <= 1024:
            raise InvalidSpec(f"cpus {self.cpus} is out of range")
        if self.pids_limit < 1:
            raise InvalidSpec(f"pids limit {self.pids_limit} must be positive")
        if self.user is not None:
            if not USER.match(self.user):
                raise InvalidSpec(f"user {self.user!r} is not name, uid or uid:gid")
            if is_root(self.user):
                raise InvalidSpec("containers never run as root")

    def environment(self) -> dict[str, str]:
        env = dict(self.env)
        if self.port is not None:
            env["PORT"] = str(self.container_port or self.port)
        return env


@dataclass(frozen=True, slots=True)
class Exit:
    """How a container ended. Docker reports death by signal N as code 128 + N."""

    code: int
    oom_killed: bool
    finished_at: datetime | None

    @property
    def signal(self) -> int | None:
        return self.code - 128 if 128 < self.code < 160 else None


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """A container found by its labels, running or not."""

    id: str
    name: str
    image: str
    state: str  # Docker's: created, running, paused, restarting, removing, exited, dead
    labels: dict[str, str]

    @property
    def running(self) -> bool:
        return self.state in ("running", "paused", "restarting")


class Containers:
    """Docker operations on behalf of one executor (or a janitor), on an `Engine`;
    `from_env()` makes one from DOCKER_HOST or the local socket."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._init: bool | None = None

    @classmethod
    def from_env(cls, timeout: float = 60.0) -> Containers:
        try:
            return cls(Engine.from_env(timeout=timeout))
        except ValueError as e:
            raise EngineUnavailable(str(e)) from e

    def run(self, spec: ContainerSpec, before_start: Callable[[str], None] | None = None) -> str:
        """Creates and starts the container, detached; returns its id. Never pulls.
        `before_start(container_id)` runs between create and start (an attach, so no output is
        missed); if it raises, the container is removed and the error goes on."""
        with _docker_errors(spec.image, image=True):
            attrs = self._engine.call("GET", f"/images/{_image_ref(spec.image)}/json")
        image_user = str((attrs.get("Config") or {}).get("User") or "")
        if spec.user is not None:
            user = spec.user
        else:
            user = DEFAULT_USER if is_root(image_user) else image_user
        host_config: dict[str, Any] = {
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "Privileged": False,
            "PidsLimit": spec.pids_limit,
            "Memory": spec.memory_bytes,
            "MemorySwap": spec.memory_bytes,
            "CpuShares": max(2, round(spec.cpus * 1024)),
            "NanoCpus": round(spec.cpus * 1e9) if spec.cpu_quota else 0,
            "RestartPolicy": {"Name": "no"},
            "LogConfig": {
                "Type": "json-file",
                "Config": {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILES},
            },
        }
        body: dict[str, Any] = {
            "Image": spec.image,
            "Env": [f"{key}={value}" for key, value in spec.environment().items()],
            "Labels": dict(spec.labels),
            "User": user,
            "StopSignal": "SIGTERM",
            "Tty": spec.tty,
            "OpenStdin": spec.stdin,
            "StdinOnce": spec.stdin,
            "AttachStdin": spec.stdin,
            "HostConfig": host_config,
        }
        if spec.command is not None:
            body["Cmd"] = list(spec.command)
        if spec.port is not None:
            inside = f"{spec.container_port or spec.port}/tcp"
            body["ExposedPorts"] = {inside: {}}
            host_config["PortBindings"] = {
                inside: [{"HostIp": spec.host_ip, "HostPort": str(spec.port)}]
            }
        if self._init_available():
            host_config["Init"] = True
        with _docker_errors(spec.image, image=True):
            created = self._engine.call("POST", "/containers/create", {"name": spec.name}, body)
        container_id = str(created["Id"])
        if before_start is not None:
            try:
                before_start(container_id)
            except BaseException:
                self.remove(container_id)
                raise
        try:
            self._engine.call("POST", f"/containers/{container_id}/start")
        except (EngineError, OSError) as e:
            self.remove(container_id)
            raise StartFailed(f"container {spec.name} did not start: {_explain(e)}") from e
        log.info(
            "container started",
            extra={"container": container_id, "container_name": spec.name, "image": spec.image},
        )
        return container_id

    def ensure_image(self, image: str, username: str = "", password: str = "") -> bool:
        """Pulls `image` unless the engine has it (True when it pulled), with the registry's
        credentials when a username is given (X-Registry-Auth for the image's registry).
        Pulls exactly the reference's tag or digest, never every tag. PullFailed says why a
        pull failed."""
        try:
            self._engine.call("GET", f"/images/{_image_ref(image)}/json")
            return False
        except EngineError as e:
            if e.status != 404:
                raise ContainerError(f"Docker refused a request about {image}: {e.message}") from e
        except OSError as e:
            raise EngineUnavailable(f"the Docker engine did not answer: {e}") from e
        try:
            ref = registry.parse_reference(image)
        except BerthError as e:
            raise PullFailed(e.message) from e
        where = ref.domain or "the default registry"
        query = {"fromImage": ref.repository, "tag": ref.pull_tag}
        headers = None
        if username:
            auth = registry.auth_header(ref.domain, username, password)
            headers = {"X-Registry-Auth": auth}
        log.info("pulling image", extra={"image": image, "registry": ref.domain})
        try:
            with self._engine.open(
                "POST", "/images/create", query, headers=headers, timeout=PULL_SILENCE
            ) as answer:
                _pull_progress(answer.chunks(), image)
        except EngineError as e:
            message = f"could not pull {image} from {where}: {e.message}"
            raise PullFailed(message + _pull_hint(e.message)) from e
        except OSError as e:
            raise PullFailed(f"could not pull {image} from {where}: {e}") from e
        log.info("pulled image", extra={"image": image})
        return True

    def wait(self, container_id: str, timeout: float | None = None) -> Exit:
        """Blocks until the container is not running (at once if it has stopped already)."""
        path = f"/containers/{quote(container_id, safe='')}"
        with _docker_errors(container_id):
            try:
                with self._engine.open("POST", f"{path}/wait", timeout=timeout) as answer:
                    answer.read()
            except TimeoutError as e:
                if timeout is None:
                    raise
                raise WaitTimedOut(
                    f"container {container_id} still running after {timeout:g} s"
                ) from e
            state = self._engine.call("GET", f"{path}/json")["State"]
        return Exit(
            code=int(state["ExitCode"]),
            oom_killed=bool(state.get("OOMKilled")),
            finished_at=_docker_time(str(state.get("FinishedAt") or "")),
        )

    def stop(self, container_id: str, grace_seconds: float) -> None:
        """SIGTERM, then SIGKILL if it is still running after the grace period (rounded up to
        whole seconds, Docker's unit). Returns once it has stopped; stopped already is fine."""
        seconds = max(0, math.ceil(grace_seconds))
        with _docker_errors(container_id):
            self._engine.call(
                "POST",
                f"/containers/{quote(container_id, safe='')}/stop",
                {"t": seconds},
                timeout=self._engine.timeout + seconds,
            )

    def remove(self, container_id: str) -> None:
        """Removes the container, killing it if it runs. Gone already is fine."""
        try:
            with _docker_errors(container_id):
                self._engine.call(
                    "DELETE", f"/containers/{quote(container_id, safe='')}", {"force": 1}
                )
        except ContainerNotFound:
            pass
        except ContainerError as e:
            if "already in progress" not in e.message:
                raise

    def attach(self, container_id: str) -> socket.socket:
        """The container's stdin/stdout/stderr as one raw socket (Engine API attach, hijacked:
        `Upgrade: tcp`). Without a TTY what it reads is multiplexed like `logs` (`frames`);
        `shutdown(SHUT_WR)` closes the container's stdin (its spec has `stdin`)."""
        path = http1.path_with_query(
            f"/v{API_VERSION}/containers/{quote(container_id, safe='')}/attach",
            {"stream": 1, "stdin": 1, "stdout": 1, "stderr": 1},
        )
        endpoint = self._engine.endpoint
        try:
            sock = endpoint.connect(self._engine.timeout)
        except OSError as e:
            raise EngineUnavailable(f"the Docker engine did not answer: {e}") from e
        try:
            sock.sendall(
                f"POST {endpoint.base}{path} HTTP/1.1\r\nHost: {endpoint.host_header}\r\n"
                "Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n".encode()
            )
            head = b""
            while not head.endswith(b"\r\n\r\n"):  # byte by byte: the stream follows it
                byte = sock.recv(1)
                if not byte or len(head) > 64 * 1024:
                    raise ContainerError(f"Docker cut the attach to {container_id} short")
                head += byte
            status = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
            if status not in (b"101", b"200"):
                line = head.split(b"\r\n", 1)[0].decode("ascii", "replace")
                raise ContainerError(f"Docker refused the attach to {container_id}: {line}")
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        return sock

    def resize(self, container_id: str, cols: int, rows: int) -> None:
        """The container's TTY size (a one-off run with a TTY)."""
        with _docker_errors(container_id):
            self._engine.call(
                "POST",
                f"/containers/{quote(container_id, safe='')}/resize",
                {"h": rows, "w": cols},
            )

    def kill(self, container_id: str, signal_name: str) -> None:
        """Send the container's main process a signal (`INT`, `TERM`, …)."""
        with _docker_errors(container_id):
            self._engine.call(
                "POST",
                f"/containers/{quote(container_id, safe='')}/kill",
                {"signal": f"SIG{signal_name}"},
            )

    def is_running(self, container_id: str) -> bool:
        try:
            state = self._inspect(container_id)["State"]
        except ContainerNotFound:
            return False
        return bool(state.get("Running"))

    def address(self, container_id: str) -> str | None:
        """The container's IP address on Docker's default bridge (reachable from this host),
        or None: another network mode, or the container is gone."""
        try:
            settings = self._inspect(container_id).get("NetworkSettings") or {}
        except ContainerNotFound:
            return None
        address = settings.get("IPAddress")
        return str(address) if address else None

    def _inspect(self, container_id: str) -> dict[str, Any]:
        with _docker_errors(container_id):
            found = self._engine.call("GET", f"/containers/{quote(container_id, safe='')}/json")
        return dict(found)

    def find(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        """Containers, running or not, that carry all these labels: for adopting or removing
        orphans. At least one label is required: no caller means every container."""
        if not labels:
            raise InvalidSpec("find() needs at least one label")
        filters = {"label": [f"{key}={value}" for key, value in labels.items()]}
        with _docker_errors("the Docker engine"):
            found = self._engine.call(
                "GET", "/containers/json", {"all": 1, "filters": json.dumps(filters)}
            )
        return [
            ContainerInfo(
                id=str(c["Id"]),
                name=str((c.get("Names") or ["?"])[0]).lstrip("/"),
                image=str(c.get("Image", "")),
                state=str(c.get("State", "")),
                labels={str(k): str(v) for k, v in (c.get("Labels") or {}).items()},
            )
            for c in found
        ]

    def logs(self, container_id: str, follow: bool = True) -> Iterator[tuple[Stream, bytes]]:
        """The container's output from its start, as (stream, line) while it arrives; with
        `follow`, until the container stops. Lines keep their b"\\n"; a last line without one
        comes last, and a line longer than MAX_LINE_BYTES comes in pieces.

        Docker 20.10's follow mode can end before the last output is read (it drops a last
        line without a newline: moby issue 43860), so when a follow ends this reads once more
        without following, from the last timestamp seen on; and follows again if the container
        still runs (the engine may also just have dropped the connection)."""
        lines = _Lines()
        cursor = _Cursor()
        passes = [follow]
        while passes:
            following = passes.pop()
            since = cursor.new_pass()
            for stream, stamp, data in self._log_frames(container_id, following, since):
                if cursor.fresh(stream, stamp, data):
                    yield from lines.add(stream, data)
            if following:
                passes.append(False)
            elif follow and self.is_running(container_id):
                time.sleep(0.5)
                passes.append(True)
        yield from lines.rest()

    def _log_frames(
        self, container_id: str, follow: bool, since: int
    ) -> Iterator[tuple[Stream, str, bytes]]:
        """One request for the log stream, as (stream, timestamp, message) frames."""
        query: dict[str, Any] = {"stdout": 1, "stderr": 1, "follow": int(follow), "timestamps": 1}
        if since:
            query["since"] = since
        try:
            if self._inspect(container_id)["Config"].get("Tty"):
                raise ContainerError(f"container {container_id} has a TTY; Berth's never do")
        except ContainerNotFound:
            return  # removed meanwhile: its output is gone with it
        path = f"/containers/{quote(container_id, safe='')}/logs"
        try:
            response = self._engine.open("GET", path, query, timeout=None)
        except EngineError as e:
            if e.status == 404:
                return
            raise ContainerError(f"Docker refused the logs of {container_id}: {e.message}") from e
        except OSError as e:
            raise EngineUnavailable(f"the Docker engine did not answer: {e}") from e
        with response:
            try:
                for stream, frame in frames(response.chunks()):
                    stamp, _, data = frame.partition(b" ")
                    yield stream, stamp.decode("ascii", "replace"), data
            except OSError as e:
                raise EngineUnavailable(f"the log stream of {container_id} broke: {e}") from e

    def _init_available(self) -> bool:
        """Whether the engine has its init binary: `/version` lists it as a component only
        when it could run it."""
        if self._init is None:
            with _docker_errors("the Docker engine"):
                components = self._engine.call("GET", "/version").get("Components") or []
            names = {str(c.get("Name", "")) for c in components}
            self._init = bool(names & {"docker-init", "tini"})
            if not self._init:
                log.warning("the Docker engine has no docker-init; containers run without it")
        return self._init


def _pull_progress(chunks: Iterator[bytes], image: str) -> None:
    """Reads a pull's answer (a JSON object per line) to its end; an `error` in it (the
    engine reports failures after it began answering 200 this way) is PullFailed."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            _pull_line(line, image)
    _pull_line(buffer, image)


def _pull_hint(message: str) -> str:
    if "unauthorized" in message or "authentication required" in message:
        return (
            " (the registry refused the framework's credentials: its"
            " DATA_DIR/registry/credentials.json must be the registry's)"
        )
    if "server gave HTTP response to HTTPS client" in message:
        return " (list the registry in this engine's insecure-registries, or give it TLS)"
    return ""


def _pull_line(line: bytes, image: str) -> None:
    if not line.strip():
        return
    try:
        message = json.loads(line)
    except ValueError:
        return
    if isinstance(message, dict) and message.get("error"):
        error = str(message["error"])[:500]
        raise PullFailed(f"could not pull {image}: {error}{_pull_hint(error)}")


def _image_ref(image: str) -> str:
    """An image reference in a path: `/` and `:` stay (the engine's route takes them)."""
    return quote(image, safe="/:@")


def frames(chunks: Iterator[bytes]) -> Iterator[tuple[Stream, bytes]]:
    """The Engine API's multiplexed stream (for containers without a TTY): each frame is an
    8-byte header (stream type: 1 stdout, 2 stderr; 3 zero bytes; big-endian length), then
    that many bytes. `chunks` may split the stream anywhere; an incomplete last frame is
    dropped (the stream was cut)."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= 8:
            kind, length = struct.unpack_from(">BxxxL", buffer)
            if len(buffer) < 8 + length:
                break
            data = bytes(buffer[8 : 8 + length])
            del buffer[: 8 + length]
            yield ("stderr" if kind == 2 else "stdout"), data


class _Cursor:
    """How far a log reader got, per stream: the newest timestamp seen (Docker's fixed-width
    RFC 3339 with nanoseconds, so it sorts as text) and how many messages carried it. Each
    stream's timestamps only grow, but stdout and stderr are written by separate copiers, so
    they are tracked apart. Docker's `since` is in whole seconds and inclusive: a later pass
    repeats messages, and `fresh` skips them.

    Several messages share a timestamp only as the parts of one long line (Docker stamps every
    part with the line's time; only the last part ends with a newline). So a message with the
    newest timestamp after that line's last part is a repeat, as Docker's follow sends when it
    reopens a rotated log file, and is skipped too."""

    def __init__(self) -> None:
        self._last: dict[Stream, str] = {}
        self._count: dict[Stream, int] = {}
        self._this_pass: dict[Stream, int] = {}
        self._whole: dict[Stream, bool] = {}  # the newest timestamp's line has ended

    def new_pass(self) -> int:
        """Starts a pass; returns its `since` (0: from the start)."""
        self._this_pass = {}
        if len(self._last) < 2:
            return 0
        oldest = min(self._last.values())
        return int(datetime.fromisoformat(oldest[:19] + "+00:00").timestamp())

    def fresh(self, stream: Stream, stamp: str, data: bytes) -> bool:
        last = self._last.get(stream, "")
        if stamp < last:
            return False
        if stamp > last:
            self._last[stream], self._count[stream], self._this_pass[stream] = stamp, 1, 1
            self._whole[stream] = data.endswith(b"\n")
            return True
        seen = self._this_pass[stream] = self._this_pass.get(stream, 0) + 1
        if seen <= self._count[stream] or self._whole[stream]:
            return False
        self._count[stream] = seen
        self._whole[stream] = data.endswith(b"\n")
        return True


class _Lines:
    """Log messages → lines, per stream (Docker splits lines over 16 KiB into messages)."""

    def __init__(self) -> None:
        self._pending: dict[Stream, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}

    def add(self, stream: Stream, data: bytes) -> Iterator[tuple[Stream, bytes]]:
        buffer = self._pending[stream]
        buffer += data
        while True:
            end = buffer.find(b"\n")
            if end < 0 and len(buffer) < MAX_LINE_BYTES:
                return
            cut = end + 1 if 0 <= end < MAX_LINE_BYTES else MAX_LINE_BYTES
            yield stream, bytes(buffer[:cut])
            del buffer[:cut]

    def rest(self) -> Iterator[tuple[Stream, bytes]]:
        for stream, buffer in self._pending.items():
            if buffer:
                yield stream, bytes(buffer)
                buffer.clear()


def _docker_time(text: str) -> datetime | None:
    """Docker's RFC 3339 times have nanoseconds; an unset one is year 1."""
    if not text or text.startswith("0001-"):
        return None
    return datetime.fromisoformat(text)


def _explain(error: Exception) -> str:
    if isinstance(error, EngineError):
        return error.message
    return str(error)


@contextmanager
def _docker_errors(subject: str, image: bool = False) -> Iterator[None]:
    """The engine's errors as ContainerErrors that name `subject` (an image or container)."""
    try:
        yield
    except EngineError as e:
        if e.status == 404:
            if image and "image" in e.message.lower():
                raise ImageNotFound(subject) from e
            raise ContainerNotFound(subject) from e
        if e.status == 409 and "already in use" in e.message:
            raise NameInUse(e.message) from e
        raise ContainerError(f"Docker refused a request about {subject}: {e.message}") from e
    except OSError as e:
        raise EngineUnavailable(f"the Docker engine did not answer: {e}") from e
