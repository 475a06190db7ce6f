"""One-off runs (`berth run`): the record of one, and the checks on what a client asks for.

A run is a znode `/apps/<app>/runs/<N>` (state.py): its command as an argv list (never a shell
string), the release it runs, its size, whether a client attaches to it, and its life:

    pending    asked for; the framework launches it once, as task `<app>.run.<N>.v<R>.<hex>`
    launched   the task was launched (`task_id` set)
    finished   its task ended (`exit_code`, `outcome`: finished, failed, killed, lost, …);
               never launched again

The attached client and the executor meet in the API (api/routes_runs.py): the executor
proves itself with the run's secret, which is stored sealed (bound to `run:<app>/<N>`).
Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from berth.framework.errors import Invalid
from berth.framework.model import DEFAULT_CPUS, DEFAULT_MEMORY_MB, validate_limits

PROCESS = "run"  # the process name of every run's task; reserved (no Procfile type by that name)
MAX_ARGS = 256
MAX_ARGV_BYTES = 64 * 1024
PENDING, LAUNCHED, FINISHED = "pending", "launched", "finished"
KEEP_FINISHED = 50  # finished run records kept per app (the oldest go first)


@dataclass(frozen=True, slots=True)
class Run:
    app: str
    number: int
    command: tuple[str, ...]
    release: int
    attach: bool
    tty: bool
    memory_mb: int
    cpus: float
    created_by: str
    created_at: str
    secret: str = field(default="", repr=False)  # sealed; "" once finished
    state: str = PENDING
    task_id: str = ""
    exit_code: int | None = None
    outcome: str = ""  # the task's terminal state, once finished
    message: str = ""

    @property
    def name(self) -> str:
        return f"{PROCESS}.{self.number}"

    def to_json(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "number": self.number,
            "command": list(self.command),
            "release": self.release,
            "attach": self.attach,
            "tty": self.tty,
            "memory_mb": self.memory_mb,
            "cpus": self.cpus,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "secret": self.secret,
            "state": self.state,
            "task_id": self.task_id,
            "exit_code": self.exit_code,
            "outcome": self.outcome,
            "message": self.message,
        }

    def public_json(self) -> dict[str, Any]:
        """What the API shows: everything but the secret."""
        out = self.to_json()
        del out["secret"]
        out["name"] = self.name
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        return cls(
            app=str(data["app"]),
            number=int(data["number"]),
            command=tuple(str(a) for a in data["command"]),
            release=int(data["release"]),
            attach=bool(data["attach"]),
            tty=bool(data.get("tty", False)),
            memory_mb=int(data["memory_mb"]),
            cpus=float(data["cpus"]),
            created_by=str(data.get("created_by", "")),
            created_at=str(data.get("created_at", "")),
            secret=str(data.get("secret", "")),
            state=str(data.get("state", PENDING)),
            task_id=str(data.get("task_id", "")),
            exit_code=None if data.get("exit_code") is None else int(data["exit_code"]),
            outcome=str(data.get("outcome", "")),
            message=str(data.get("message", "")),
        )


def validate_command(command: object) -> tuple[str, ...]:
    """An argv: a non-empty list of strings without NUL bytes, within size limits."""
    if not isinstance(command, list) or not command:
        raise Invalid('command must be a non-empty list of arguments, like ["sh", "-c", "…"]')
    if len(command) > MAX_ARGS:
        raise Invalid(f"command has more than {MAX_ARGS} arguments")
    if not all(isinstance(a, str) for a in command):
        raise Invalid("every argument of command must be a string")
    if not command[0]:
        raise Invalid("the command's first argument (the program) is empty")
    if any("\x00" in a for a in command):
        raise Invalid("an argument of command contains a NUL byte")
    if sum(len(a.encode()) for a in command) > MAX_ARGV_BYTES:
        raise Invalid(f"command is longer than {MAX_ARGV_BYTES} bytes")
    return tuple(command)


def validate_size(size: object) -> tuple[int, float]:
    """(memory_mb, cpus) from `{"memory": "512m", "cpu": 0.5}` (either may be left out)."""
    if size is None or size == {}:
        return DEFAULT_MEMORY_MB, DEFAULT_CPUS
    checked = validate_limits({PROCESS: size}, {})[PROCESS]
    return int(checked.get("memory_mb", DEFAULT_MEMORY_MB)), float(
        checked.get("cpus", DEFAULT_CPUS)
    )
