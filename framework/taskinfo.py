"""The contract between Berth's scheduler and Berth's executor: the Mesos TaskInfo the
framework launches, and the `Payload` it carries in `TaskInfo.data` (base64 JSON) telling the
executor which container to run.

TaskInfo, as Mesos's UI and state endpoints show it:
- `task_id`: `<app>.<process>.<index>.v<release>.<8 hex>` (≤ 255 chars, no `/`); the
  ExecutorInfo's id is the same (one executor per task);
- `name`: `myapp web.1 v7`; `labels`: berth.app, berth.process, berth.release, berth.instance;
- `resources`: the task's cpus/mem/disk and its one host port; the ExecutorInfo carries the
  executor's own cpus/mem (plan.EXECUTOR);
- `kill_policy.grace_period`: SIGTERM → SIGKILL grace (default 30 s); the executor's
  `shutdown_grace_period` is longer, so the agent never cuts a graceful stop short;
- `executor.command`: `python -m berth.executor` with the same interpreter as the framework
  (agents run Berth from the same install path).

Pure: builds plain dicts; mesos.py and local.py send them.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from berth.framework.plan import EXECUTOR, Launch, Resources

DEFAULT_GRACE_SECONDS = 30.0
EXECUTOR_EXTRA_GRACE = 5.0
DEFAULT_PIDS_LIMIT = 256


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """How the executor decides a task is up: TCP connect to PORT, or an HTTP GET of `path`
    answering 2xx/3xx. A task none of whose checks passes within `startup` seconds is ended
    as failed (`never_healthy` in its status data)."""

    kind: str = "tcp"  # "tcp" | "http" | "none"
    path: str = "/"
    startup: float = 60.0  # seconds for the first check to pass, else the task fails


@dataclass(frozen=True, slots=True)
class Payload:
    """What the executor needs to run the task's container (TaskInfo.data)."""

    app: str
    process: str
    index: int
    release: int
    image: str
    command: list[str] | None  # None: the image's own entrypoint/CMD
    env: dict[str, str]
    port: int
    memory_mb: int
    cpus: float
    instance: str
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    pids_limit: int = DEFAULT_PIDS_LIMIT
    health: HealthCheck = field(default_factory=HealthCheck)
    container_port: int = 0  # the port the process listens on in its container; 0: `port`
    # berth logd: where the executor ships the container's output, and its token for that
    # (loglines.task_token: it may write this app's and process's lines only). "" = don't ship.
    logs_url: str = ""
    logs_token: str = ""
    # Berth's registry (framework/registry.py): when `image` lives there, the credentials the
    # executor pulls it with if its engine lacks it. "" = no registry / pull without auth.
    registry_user: str = ""
    registry_password: str = ""
    # A one-off run (framework/runs.py): `tty` gives its container a TTY; with `attach_url`,
    # the executor dials that websocket (the API's rendezvous), proves itself with
    # `attach_secret` and bridges the container's stdin/stdout/stderr to it (attach.py).
    tty: bool = False
    attach_url: str = ""
    attach_secret: str = ""

    @property
    def labels(self) -> dict[str, str]:
        return {
            "berth.app": self.app,
            "berth.process": self.process,
            "berth.release": str(self.release),
            "berth.instance": self.instance,
        }

    def encode(self) -> str:
        return base64.b64encode(json.dumps(asdict(self), sort_keys=True).encode()).decode()

    @classmethod
    def decode(cls, data: str) -> Payload:
        raw = json.loads(base64.b64decode(data))
        raw["health"] = HealthCheck(**raw.get("health") or {})
        return cls(**raw)


def task_id(app: str, process: str, index: int, release: int) -> str:
    return f"{app}.{process}.{index}.v{release}.{os.urandom(4).hex()}"


def task_name(app: str, process: str, index: int, release: int) -> str:
    return f"{app} {process}.{index} v{release}"


def _scalars(resources: Resources) -> list[dict[str, Any]]:
    out = [
        {"name": "cpus", "type": "SCALAR", "scalar": {"value": round(resources.cpus, 3)}},
        {"name": "mem", "type": "SCALAR", "scalar": {"value": round(resources.mem, 3)}},
    ]
    if resources.disk > 0:
        out.append({"name": "disk", "type": "SCALAR", "scalar": {"value": resources.disk}})
    return out


def task_env(
    payload_env: Mapping[str, str], app: str, process: str, index: int, release: int, port: int
) -> dict[str, str]:
    """Config vars plus what Berth adds (Heroku's PORT and DYNO conventions)."""
    return {
        **payload_env,
        "PORT": str(port),
        "DYNO": f"{process}.{index}",
        "BERTH_APP": app,
        "BERTH_TASK": f"{process}.{index}",
        "BERTH_RELEASE": f"v{release}",
    }


def build_task_info(
    launch: Launch,
    framework_id: str,
    payload: Payload,
    *,
    executor_command: list[str] | None = None,
    executor_resources: Resources = EXECUTOR,
) -> dict[str, Any]:
    """The TaskInfo for one planned launch."""
    tid = task_id(launch.app, launch.process, launch.index, launch.release)
    name = task_name(launch.app, launch.process, launch.index, launch.release)
    argv = executor_command or [sys.executable, "-m", "berth.executor"]
    labels = [{"key": k, "value": v} for k, v in payload.labels.items()]
    grace_ns = int(payload.grace_seconds * 1e9)
    return {
        "name": name,
        "task_id": {"value": tid},
        "agent_id": {"value": launch.agent_id},
        "resources": [
            *_scalars(launch.resources),
            {
                "name": "ports",
                "type": "RANGES",
                "ranges": {"range": [{"begin": launch.port, "end": launch.port}]},
            },
        ],
        "executor": {
            "executor_id": {"value": tid},
            "framework_id": {"value": framework_id},
            "name": f"berth-executor {name}",
            "source": "berth",
            "command": {"shell": False, "value": argv[0], "arguments": argv},
            "resources": _scalars(executor_resources),
            "shutdown_grace_period": {"nanoseconds": grace_ns + int(EXECUTOR_EXTRA_GRACE * 1e9)},
            "labels": {"labels": labels},
        },
        "kill_policy": {"grace_period": {"nanoseconds": grace_ns}},
        "labels": {"labels": labels},
        "data": payload.encode(),
    }


def parse_task_id(value: str) -> tuple[str, str, int, int] | None:
    """(app, process, index, release) from a Berth task id, or None if it is not one."""
    parts = value.split(".")
    if len(parts) != 5 or not parts[2].isdigit() or not parts[3].startswith("v"):
        return None
    if not parts[3][1:].isdigit():
        return None
    return parts[0], parts[1], int(parts[2]), int(parts[3][1:])
