"""The executor program (`berth-executor`, `python -m berth.executor`): one process per task,
started by a Mesos agent (or Berth's local agent) with the MESOS_* environment. It runs the
task's container through `containers.py`, watches its health (`health.py`), copies its output
into the sandbox, and tells the agent how it is going through `driver.py`.

A task's status updates, in order:

    TASK_STARTING   the TaskInfo's payload made sense; the container is being started
    TASK_RUNNING    the first health check passed: healthy=true, the host port and container
                    id in `labels` (berth.port, berth.container) and in `data` (JSON); again,
                    with reason REASON_TASK_HEALTH_CHECK_STATUS_UPDATED, when `failures` checks
                    in a row fail (healthy=false) and when one passes after that (healthy=true)
    TASK_KILLING    a KILL (or the executor's shutdown) began: SIGTERM, SIGKILL after the grace
    terminal        TASK_FINISHED (exit 0), TASK_KILLED (we stopped it), TASK_FAILED (a nonzero
                    exit: REASON_COMMAND_EXECUTOR_FAILED; out of memory:
                    REASON_CONTAINER_LIMITATION_MEMORY; no container:
                    REASON_CONTAINER_LAUNCH_FAILED; no health check passed within the
                    payload's `health.startup` seconds: the container is stopped,
                    REASON_TASK_HEALTH_CHECK_STATUS_UPDATED and `never_healthy` in `data`),
                    TASK_ERROR (a payload or spec Berth cannot run: REASON_TASK_INVALID).
                    `data` carries exit_code and oom.

The container is removed before the terminal update is sent, so when the scheduler hears of
the end, the container's name and port are free. After the terminal update the process exits;
if the agent could not take the update at once, it waits until the agent acknowledges it (the
driver resends it when it resubscribes) or the executor is shut down.

Containers are named `berth-<task id>` (never `mesos-*`) and labelled with the payload's
labels plus berth.task, berth.executor and berth.framework: a restarted executor given the same
task adopts that task's running container instead of starting a second one, its shutdown
removes every container carrying its executor id, and `--cleanup EXECUTOR_ID` (which the local
agent runs when an executor dies without ending its task) removes a dead executor's orphans.

Threads: the driver's "mesos-executor" thread runs the callbacks, which only decide and queue
(they never wait on Docker); "status-updates" sends the queued updates to the agent in order;
per task, "task" starts the container and waits for it to end, "health" probes it, "logs"
copies its output into `$MESOS_SANDBOX/stdout` and `stderr` (and hands it to
"log-ship", which sends it to berth logd), and "kill" stops it. An attached one-off run
(payload `attach_url`) has no "logs": "attach-out" and "attach-in" (executor/attach.py)
bridge its container to the API's rendezvous, and the client going away stops it. The main
thread waits for the task to end or for SIGTERM/SIGINT (handled as a shutdown). Each task's
state is changed only under its lock, which is also where its updates are queued.

Settings (on top of the agent's MESOS_* variables), read once at start:
BERTH_EXECUTOR_HEALTH_INTERVAL (seconds between checks once healthy, default 10),
BERTH_EXECUTOR_HEALTH_FAILURES (failures in a row that make a task unhealthy, default 3),
BERTH_EXECUTOR_HEALTH_TIMEOUT (seconds per check, default 2), BERTH_EXECUTOR_LOG_MAX_BYTES
(size at which a sandbox output file is copied to `<name>.1` and emptied, default 10 MiB),
BERTH_EXECUTOR_CPU_QUOTA (1: a task's cpus is also a hard cap, Docker's --cpus, as a Mesos
agent's --cgroups_enable_cfs; default 0: cpus is a weight, Docker's --cpu-shares, and a task
may use idle CPU — starting a process under a quota of a quarter CPU takes four times as long).

Must not import flask, kazoo, berth.api or berth.cli (import-linter contract
"executor-runs-on-agents"); only driver.py speaks addict, so the Dicts it hands over are read
here as plain mappings.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from berth.executor.attach import Bridge
from berth.executor.containers import (
    ContainerError,
    ContainerNotFound,
    Containers,
    ContainerSpec,
    Exit,
    InvalidSpec,
    Stream,
)
from berth.executor.driver import AgentEnvironment, Executor, ExecutorDriver, MesosExecutorDriver
from berth.executor.health import KINDS, HealthWatch, Policy, Probe
from berth.framework import jsonlog
from berth.framework.errors import Invalid
from berth.framework.logship import Shipper
from berth.framework.taskinfo import Payload

log = logging.getLogger(__name__)

LABEL_TASK = "berth.task"
LABEL_EXECUTOR = "berth.executor"
LABEL_FRAMEWORK = "berth.framework"
LABEL_PORT = "berth.port"
LABEL_CONTAINER = "berth.container"

STARTING, RUNNING, KILLING = "TASK_STARTING", "TASK_RUNNING", "TASK_KILLING"
FINISHED, FAILED, KILLED, ERROR = "TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_ERROR"
TERMINAL = frozenset({FINISHED, FAILED, KILLED, ERROR})

MIB = 1024 * 1024
SHUTDOWN_MARGIN = 2.0  # of the agent's shutdown grace, kept for removing and reporting
LOG_DRAIN_TIMEOUT = 5.0  # after the container ends, for its last output to reach the sandbox
LOG_SHIP_FLUSH = 3.0  # of that, for the last lines to reach berth logd (if it answers)
SEND_TIMEOUT = 30.0  # for the status-updates thread to hand one update to the agent
DELIVERY_TIMEOUT = 15 * 60.0  # Mesos's default agent recovery timeout
WAIT_RETRIES = 60  # Docker failing to report a container's end, each after a pause ≤ 5 s
RUN_PROCESS = "run"  # framework/runs.py: one-off runs' tasks
GONE_GRACE = 2.0  # an attached run whose client went away: SIGTERM, SIGKILL after this


# -- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecutorSettings:
    health_interval: float = 10.0
    health_failures: int = 3
    health_timeout: float = 2.0
    log_max_bytes: int = 10 * MIB
    cpu_quota: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ExecutorSettings:
        """Raises ValueError naming the variable that is malformed."""
        defaults = cls()

        def number(name: str, default: float, minimum: float) -> float:
            text = env.get(name, "").strip()
            if not text:
                return default
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{name}={text!r} is not a number") from None
            if not value >= minimum:
                raise ValueError(f"{name}={text!r} must be at least {minimum:g}")
            return value

        def flag(name: str, default: bool) -> bool:
            text = env.get(name, "").strip().lower()
            if not text:
                return default
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{name}={text!r} is not 1 or 0")

        return cls(
            health_interval=number(
                "BERTH_EXECUTOR_HEALTH_INTERVAL", defaults.health_interval, 0.05
            ),
            health_failures=int(
                number("BERTH_EXECUTOR_HEALTH_FAILURES", defaults.health_failures, 1)
            ),
            health_timeout=number("BERTH_EXECUTOR_HEALTH_TIMEOUT", defaults.health_timeout, 0.05),
            log_max_bytes=int(number("BERTH_EXECUTOR_LOG_MAX_BYTES", defaults.log_max_bytes, 1024)),
            cpu_quota=flag("BERTH_EXECUTOR_CPU_QUOTA", defaults.cpu_quota),
        )

    @property
    def health_policy(self) -> Policy:
        return Policy(
            interval=self.health_interval,
            failures=self.health_failures,
            startup_interval=min(0.5, self.health_interval),
        )


# -- what a TaskInfo asks for -----------------------------------------------------------------


def container_name(task_id: str) -> str:
    """`berth-<task id>`, with characters Docker refuses replaced and a hash of the id added
    whenever the name had to differ from it, so two task ids never share a name."""
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "_", task_id)
    name = f"berth-{safe}"
    if safe != task_id or len(name) > 128:
        import hashlib  # here, not at the top: it loads OpenSSL (~3.5 MiB), rarely needed

        digest = hashlib.sha256(task_id.encode()).hexdigest()[:12]
        name = f"{name[:110]}-{digest}"
    return name


@dataclass(frozen=True, slots=True)
class TaskPlan:
    """A launched TaskInfo, checked and turned into what the executor will do."""

    task_id: str
    payload: Payload
    spec: ContainerSpec
    probe: Probe
    grace_seconds: float


def _get(obj: Any, *keys: str) -> Any:
    """obj[k1][k2]… through mappings, None where a key is missing."""
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _nanoseconds(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = int(value) / 1e9
    except (TypeError, ValueError):
        return None
    return max(0.0, seconds)


def _check_payload(p: Payload) -> None:
    """Payload.decode checks names, not types: a scheduler bug should read as TASK_ERROR
    with a reason, not as a crash deep in the Docker SDK."""

    def fail(what: str) -> None:
        raise Invalid(f"bad payload: {what}")

    def is_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def is_number(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    if not isinstance(p.image, str) or not p.image:
        fail("image must be a non-empty string")
    if p.command is not None and (
        not isinstance(p.command, list) or not all(isinstance(a, str) for a in p.command)
    ):
        fail("command must be a list of strings or null")
    if not isinstance(p.env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in p.env.items()
    ):
        fail("env must map strings to strings")
    if not is_int(p.port):
        fail(f"port {p.port!r} is not an integer")
    if not is_int(p.container_port):
        fail(f"container_port {p.container_port!r} is not an integer")
    if not is_int(p.memory_mb) or p.memory_mb < 1:
        fail(f"memory_mb {p.memory_mb!r} is not a positive integer")
    if not is_number(p.cpus):
        fail(f"cpus {p.cpus!r} is not a number")
    if not is_int(p.pids_limit):
        fail(f"pids_limit {p.pids_limit!r} is not an integer")
    if not is_number(p.grace_seconds) or p.grace_seconds < 0:
        fail(f"grace_seconds {p.grace_seconds!r} is not a number ≥ 0")
    if p.health.kind not in KINDS or not isinstance(p.health.path, str):
        fail(f"health check {p.health.kind!r} is not one of {', '.join(KINDS)}")
    if not is_number(p.health.startup) or p.health.startup <= 0:
        fail(f"health check startup {p.health.startup!r} is not a number > 0")
    for name in ("app", "process", "instance", "attach_url", "attach_secret"):
        if not isinstance(getattr(p, name), str):
            fail(f"{name} must be a string")
    if not isinstance(getattr(p, "tty"), bool):  # noqa: B009 - decoded JSON, whatever its hint
        fail("tty must be true or false")


def plan_task(
    task: Mapping[str, Any],
    agent: AgentEnvironment,
    settings: ExecutorSettings,
) -> TaskPlan:
    """The TaskInfo (as the driver hands it over) → a TaskPlan. Raises Invalid or InvalidSpec
    with a message for the TASK_ERROR update."""
    task_id = str(_get(task, "task_id", "value") or "")
    data = _get(task, "data")
    if not isinstance(data, str) or not data:
        raise Invalid("TaskInfo.data carries no Berth payload")
    try:
        payload = Payload.decode(data)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise Invalid(f"bad payload in TaskInfo.data: {type(e).__name__}: {e}") from e
    _check_payload(payload)
    labels = {
        **payload.labels,
        LABEL_TASK: task_id,
        LABEL_EXECUTOR: agent.executor_id,
        LABEL_FRAMEWORK: agent.framework_id,
    }
    one_off = payload.process == RUN_PROCESS  # a one-off run publishes no port
    attached = one_off and bool(payload.attach_url)
    spec = ContainerSpec(
        name=container_name(task_id),
        image=payload.image,
        command=payload.command,
        env=dict(payload.env),
        port=None if one_off else payload.port,
        container_port=None if one_off else payload.container_port or None,
        tty=attached and payload.tty,
        stdin=attached,
        labels=labels,
        memory_bytes=payload.memory_mb * MIB,
        cpus=float(payload.cpus),
        cpu_quota=settings.cpu_quota,
        pids_limit=payload.pids_limit,
    )
    try:
        probe = Probe(
            kind=payload.health.kind,
            port=payload.port,
            path=payload.health.path,
            timeout=settings.health_timeout,
        )
    except ValueError as e:
        raise Invalid(f"bad payload: {e}") from e
    grace = _nanoseconds(_get(task, "kill_policy", "grace_period", "nanoseconds"))
    return TaskPlan(
        task_id=task_id,
        payload=payload,
        spec=spec,
        probe=probe,
        grace_seconds=float(payload.grace_seconds) if grace is None else grace,
    )


def status_update(
    task_id: str,
    state: str,
    message: str,
    *,
    reason: str | None = None,
    healthy: bool | None = None,
    labels: Mapping[str, str] | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A TaskStatus as the v1 API's JSON has it (`data` is bytes, so base64). The uuid is
    set here, so that its acknowledgement can be recognised; the driver adds the timestamp
    and executor id."""
    status: dict[str, Any] = {
        "task_id": {"value": task_id},
        "state": state,
        "source": "SOURCE_EXECUTOR",
        "message": message,
        "uuid": base64.b64encode(uuid.uuid4().bytes).decode(),
    }
    if reason is not None:
        status["reason"] = reason
    if healthy is not None:
        status["healthy"] = healthy
    if labels:
        status["labels"] = {"labels": [{"key": k, "value": v} for k, v in labels.items()]}
    if data is not None:
        status["data"] = base64.b64encode(json.dumps(data, sort_keys=True).encode()).decode()
    return status


# -- sending updates in order -------------------------------------------------------------------


@dataclass(eq=False)
class _Delivery:
    status: dict[str, Any]
    sent: threading.Event = field(default_factory=threading.Event)
    acked: threading.Event = field(default_factory=threading.Event)
    accepted: bool = False


class _Outbox:
    """Status updates, sent one by one in the order they were queued, by the "status-updates"
    thread: the callbacks that decide them never wait for the agent."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[ExecutorDriver, _Delivery] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="status-updates", daemon=True)
        self._thread.start()

    def put(self, driver: ExecutorDriver, status: dict[str, Any]) -> _Delivery:
        delivery = _Delivery(status)
        self._queue.put((driver, delivery))
        return delivery

    def close(self, timeout: float) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            driver, delivery = item
            status = delivery.status
            try:
                delivery.accepted = driver.sendStatusUpdate(status)
            except Exception:
                log.exception("sending a status update failed")
            finally:
                delivery.sent.set()
            log.info(
                "status update %s",
                status["state"],
                extra={
                    "task_id": status["task_id"]["value"],
                    "state": status["state"],
                    "reason": status.get("reason"),
                    "healthy": status.get("healthy"),
                    "status_message": status["message"],
                    "accepted": delivery.accepted,
                },
            )


# -- the sandbox's output files -----------------------------------------------------------------


class SandboxFile:
    """Appends to one of the sandbox's output files and keeps it under `max_bytes`: when the
    next line would pass that, the file is copied to `<name>.1` (replacing the older copy) and
    emptied in place. Emptied, not renamed, because other writers may hold it open — the agent
    sends the executor's own output there — and with O_APPEND they carry on at its new end."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self._max = max_bytes
        self._file = path.open("ab", buffering=0)
        self._size = os.fstat(self._file.fileno()).st_size

    def write(self, data: bytes) -> None:
        if self._size + len(data) > self._max:
            self._size = os.fstat(self._file.fileno()).st_size  # others may have written too
            if self._size and self._size + len(data) > self._max:
                self._rotate()
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            if not written:
                break
            view = view[written:]
        self._size += len(data)

    def _rotate(self) -> None:
        shutil.copyfile(self.path, self.path.with_name(self.path.name + ".1"))
        self._file.truncate(0)
        self._size = 0

    def close(self) -> None:
        self._file.close()


# -- the executor -------------------------------------------------------------------------------


class _Task:
    """One task's mutable state; fields below `lock` change only under it."""

    def __init__(self, plan: TaskPlan) -> None:
        self.plan = plan
        self.id = plan.task_id
        self.lock = threading.Lock()
        self.state = STARTING
        self.container_id: str | None = None
        self.adopted = False
        self.kill_grace: float | None = None  # set when a kill began
        self.shut_down = False  # the kill came from the executor's shutdown
        self.never_healthy: str | None = None  # why the task was stopped before its first pass
        self.stop_health = threading.Event()
        self.done = threading.Event()  # terminal update handed over, container removed
        self.bridge: Bridge | None = None  # an attached one-off run's link to its client

    def labels(self) -> dict[str, str]:
        labels = {LABEL_PORT: str(self.plan.payload.port)}
        if self.container_id is not None:
            labels[LABEL_CONTAINER] = self.container_id
        return labels


class BerthExecutor(Executor):
    """Runs the one task of this executor. Collaborators are passed in: the Docker adapter,
    the agent's environment (ids, sandbox, shutdown grace) and the settings. `finished` is set
    once the task has ended and been reported, or the executor has been shut down."""

    def __init__(
        self, containers: Containers, agent: AgentEnvironment, settings: ExecutorSettings
    ) -> None:
        self._containers = containers
        self._agent = agent
        self._settings = settings
        self._outbox = _Outbox()
        self._lock = threading.Lock()
        self._task: _Task | None = None
        self._acks_lock = threading.Lock()
        self._deliveries: dict[str, _Delivery] = {}  # uuid → delivery, until acknowledged
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()  # shutdown began: no more launches, no ack waits
        self._shutdown_lock = threading.Lock()
        self.finished = threading.Event()

    # -- startup --------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Containers an earlier process of this executor left behind (it died): logged here,
        adopted when their task is launched again, removed on shutdown. Their ids."""
        try:
            found = self._containers.find(self._own_labels())
        except ContainerError as e:
            log.warning("could not look for containers of an earlier run: %s", e.message)
            return []
        for info in found:
            log.info(
                "found a container of this executor from an earlier run",
                extra={
                    "container": info.id,
                    "task_id": info.labels.get(LABEL_TASK),
                    "container_state": info.state,
                },
            )
        return [info.id for info in found]

    def _own_labels(self) -> dict[str, str]:
        return {LABEL_FRAMEWORK: self._agent.framework_id, LABEL_EXECUTOR: self._agent.executor_id}

    # -- callbacks (the driver's thread) --------------------------------------------------

    def launchTask(self, driver: ExecutorDriver, task: Any) -> None:
        task_id = str(_get(task, "task_id", "value") or "")
        with self._lock:
            current = self._task
            refusal = None
            if self._stopping.is_set():
                refusal = "the executor is shutting down"
            elif current is not None and current.id == task_id:
                log.warning("ignoring a second LAUNCH of the same task", extra={"task_id": task_id})
                return
            elif current is not None:
                refusal = f"this executor runs one task, and has {current.id} already"
        if refusal is not None:
            self._send(driver, status_update(task_id, ERROR, refusal, reason="REASON_TASK_INVALID"))
            return
        try:
            plan = plan_task(task, self._agent, self._settings)
        except (Invalid, InvalidSpec) as e:
            log.error("cannot run task: %s", e.message, extra={"task_id": task_id})
            delivery = self._send(
                driver, status_update(task_id, ERROR, e.message, reason="REASON_TASK_INVALID")
            )
            self._spawn("task", self._conclude, delivery)
            return
        state = _Task(plan)
        with self._lock:
            self._task = state
        with state.lock:
            self._send(
                driver,
                status_update(task_id, STARTING, "starting the container", labels=state.labels()),
            )
        log.info(
            "launching task",
            extra={"task_id": task_id, "image": plan.spec.image, "container_name": plan.spec.name},
        )
        self._spawn("task", self._run, driver, state)

    def killTask(self, driver: ExecutorDriver, task_id: Any, kill_policy: Any) -> None:
        wanted = str(_get(task_id, "value") or "")
        task = self._task
        if task is None or task.id != wanted:
            log.warning(
                "asked to kill a task this executor does not run", extra={"task_id": wanted}
            )
            return
        grace = _nanoseconds(_get(kill_policy, "grace_period", "nanoseconds"))
        self._kill(driver, task, task.plan.grace_seconds if grace is None else grace, False)

    def acknowledged(self, driver: ExecutorDriver, task_id: Any, uuid: str) -> None:
        with self._acks_lock:
            delivery = self._deliveries.pop(uuid, None)
        if delivery is not None:
            delivery.acked.set()

    def shutdown(self, driver: ExecutorDriver) -> None:
        """Kill the task within the agent's shutdown grace period, report it, remove every
        container of this executor. Also what SIGTERM does (on the main thread)."""
        with self._shutdown_lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            deadline = time.monotonic() + self._agent.shutdown_grace_period
            log.info(
                "shutting down",
                extra={"shutdown_grace_period": self._agent.shutdown_grace_period},
            )
            task = self._task
            if task is not None:
                limit = max(0.0, self._agent.shutdown_grace_period - SHUTDOWN_MARGIN)
                self._kill(driver, task, min(task.plan.grace_seconds, limit), True)
                task.done.wait(max(0.0, deadline - SHUTDOWN_MARGIN - time.monotonic()))
            self._sweep()
            if task is not None:
                task.done.wait(max(0.0, deadline - time.monotonic()))
            self.finished.set()

    # -- the task's threads ---------------------------------------------------------------

    def _run(self, driver: ExecutorDriver, task: _Task) -> None:
        """The "task" thread: start or adopt the container, wait for its end, report it."""
        try:
            self._supervise(driver, task)
        except Exception as e:
            log.exception("supervising the task failed", extra={"task_id": task.id})
            self._end(
                driver,
                task,
                FAILED,
                f"the executor failed: {type(e).__name__}: {e}",
                "REASON_EXECUTOR_TERMINATED",
            )
        finally:
            task.stop_health.set()
            task.done.set()
            self.finished.set()

    def _probe_for(self, task: _Task, container_id: str) -> Probe:
        """A TCP probe aimed at the container's own address when it has one on Docker's bridge
        (no docker-proxy in between: an accepted connection is the process's), else the
        plan's probe. An HTTP probe stays on the host port: an answer is the process's anyway,
        and its Host header stays 127.0.0.1 (apps that check Host allow that one)."""
        probe = task.plan.probe
        spec = task.plan.spec
        port = spec.container_port or spec.port
        if probe.kind != "tcp" or port is None:
            return probe
        try:
            address = self._containers.address(container_id)
        except ContainerError:
            address = None
        if address is None:
            return probe
        return replace(probe, host=address, port=port, direct=True)

    def _supervise(self, driver: ExecutorDriver, task: _Task) -> None:
        with task.lock:
            killed = task.kill_grace is not None
        if killed:
            self._end(
                driver, task, KILLED, "killed before its container started",
                "REASON_TASK_KILLED_DURING_LAUNCH",
            )  # fmt: skip
            return
        try:
            container_id, adopted = self._start(task, driver)
        except ContainerError as e:
            log.error("container did not start: %s", e.message, extra={"task_id": task.id})
            self._end(
                driver, task, FAILED, f"container did not start: {e.message}",
                "REASON_CONTAINER_LAUNCH_FAILED",
            )  # fmt: skip
            return
        with task.lock:
            task.container_id, task.adopted = container_id, adopted
            grace = task.kill_grace
        if grace is not None:  # a kill came while the container was starting
            self._stop_container(container_id, grace)
        # an attached run's output goes to its client (executor/attach.py), not to the logs
        logs = self._spawn("logs", self._pump, container_id if task.bridge is None else "")
        health = self._spawn(
            "health",
            HealthWatch(
                self._probe_for(task, container_id),
                replace(self._settings.health_policy, startup=task.plan.payload.health.startup),
                lambda healthy, detail: self._health_changed(driver, task, healthy, detail),
                task.stop_health,
                on_never=lambda detail: self._never_healthy(task, detail),
            ).run,
        )
        ended = self._wait(container_id)
        task.stop_health.set()
        health.join()
        logs.join(LOG_DRAIN_TIMEOUT)
        if task.bridge is not None:
            task.bridge.finish(-1 if ended is None else ended.code)
        self._remove(container_id)
        state, message, reason = self._verdict(task, ended)
        data: dict[str, Any] = {
            "container": container_id,
            "port": task.plan.payload.port,
            "exit_code": None if ended is None else ended.code,
            "oom": False if ended is None else ended.oom_killed,
        }
        if task.never_healthy is not None:
            data["never_healthy"] = True
        log.info(
            "container ended: %s",
            message,
            extra={"task_id": task.id, "container": container_id, "state": state, **data},
        )
        self._end(driver, task, state, message, reason, data)

    def _start(self, task: _Task, driver: ExecutorDriver) -> tuple[str, bool]:
        """Adopt this task's running container if an earlier executor left one; otherwise
        remove stopped leftovers (their name is ours) and start a new one."""
        found = self._containers.find({**self._own_labels(), LABEL_TASK: task.id})
        running = [info for info in found if info.running]
        for info in found:
            if running and info is running[0]:
                continue
            log.info(
                "removing a leftover container of this task",
                extra={"task_id": task.id, "container": info.id, "container_state": info.state},
            )
            self._containers.remove(info.id)
        if running:
            log.info(
                "adopting the task's running container",
                extra={"task_id": task.id, "container": running[0].id},
            )
            return running[0].id, True
        payload = task.plan.payload
        if payload.registry_user:  # an image of Berth's registry: pulled if missing (docs
            # "Artifacts"); any other image must be on this engine already (run never pulls)
            self._containers.ensure_image(
                task.plan.spec.image, payload.registry_user, payload.registry_password
            )
        before_start = None
        if payload.attach_url and payload.process == RUN_PROCESS:
            task.bridge = Bridge(
                self._containers,
                payload.attach_url,
                payload.attach_secret,
                task.plan.spec.tty,
                lambda: self._kill(driver, task, GONE_GRACE, False),
                task.id,
            )
            before_start = task.bridge.connect
        return self._containers.run(task.plan.spec, before_start), False

    def _wait(self, container_id: str) -> Exit | None:
        """How the container ended; None if it vanished (removed outside Berth)."""
        for attempt in range(1, WAIT_RETRIES + 1):
            try:
                return self._containers.wait(container_id)
            except ContainerNotFound:
                return None
            except ContainerError as e:
                if attempt == WAIT_RETRIES:
                    raise
                log.warning(
                    "waiting for the container failed: %s",
                    e.message,
                    extra={"container": container_id, "attempt": attempt},
                )
                time.sleep(min(5.0, 0.25 * 2**attempt))
        return None  # not reached: the last attempt returns or raises

    def _verdict(self, task: _Task, ended: Exit | None) -> tuple[str, str, str | None]:
        """(state, message, reason) of the terminal update."""
        with task.lock:
            killed, shut_down = task.kill_grace is not None, task.shut_down
        memory = task.plan.payload.memory_mb
        if killed:
            why = "killed: the executor was shut down" if shut_down else "killed on request"
            code = "the container is gone" if ended is None else f"exit code {ended.code}"
            return KILLED, f"{why} ({code})", None
        if task.never_healthy is not None:
            return FAILED, task.never_healthy, "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"
        if ended is None:
            return FAILED, "the container disappeared", "REASON_COMMAND_EXECUTOR_FAILED"
        if ended.oom_killed:
            return (
                FAILED,
                f"out of memory (limit {memory} MB)",
                "REASON_CONTAINER_LIMITATION_MEMORY",
            )
        if ended.code == 0:
            return FINISHED, "exited with code 0", None
        message = f"exited with code {ended.code}"
        if ended.signal is not None:
            message += f" (signal {ended.signal})"
        return FAILED, message, "REASON_COMMAND_EXECUTOR_FAILED"

    def _health_changed(
        self, driver: ExecutorDriver, task: _Task, healthy: bool, detail: str
    ) -> None:
        """The "health" thread: a transition → TASK_RUNNING (never after TASK_KILLING)."""
        with task.lock:
            if task.state not in (STARTING, RUNNING) or task.container_id is None:
                return
            first = task.state == STARTING
            task.state = RUNNING
            data = {
                "port": task.plan.payload.port,
                "container": task.container_id,
                "healthy": healthy,
                "adopted": task.adopted,
            }
            self._send(
                driver,
                status_update(
                    task.id,
                    RUNNING,
                    ("healthy: " if healthy else "unhealthy: ") + detail,
                    reason=None if first else "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED",
                    healthy=healthy,
                    labels=task.labels(),
                    data=data,
                ),
            )

    def _never_healthy(self, task: _Task, detail: str) -> None:
        """The "health" thread gave up: no check passed in time. The task is stopped and ends
        as TASK_FAILED saying so (a kill that began meanwhile takes precedence)."""
        with task.lock:
            if task.state != STARTING or task.kill_grace is not None:
                return
            task.never_healthy = detail
            container_id = task.container_id
        log.warning("stopping a task that never became healthy", extra={"task_id": task.id})
        if container_id is not None:
            self._spawn("kill", self._stop_container, container_id, task.plan.grace_seconds)

    def _kill(self, driver: ExecutorDriver, task: _Task, grace: float, shut_down: bool) -> None:
        """TASK_KILLING, then SIGTERM and SIGKILL after `grace` seconds. A second kill only
        matters if its grace is shorter."""
        with task.lock:
            if task.state in TERMINAL:
                return
            first = task.kill_grace is None
            if task.kill_grace is not None and grace >= task.kill_grace:
                return
            task.kill_grace = grace
            task.shut_down = task.shut_down or shut_down
            container_id = task.container_id
            task.stop_health.set()
            if first:
                task.state = KILLING
                self._send(
                    driver,
                    status_update(
                        task.id, KILLING, f"stopping: SIGTERM, SIGKILL after {grace:g} s",
                        labels=task.labels(),
                    ),
                )  # fmt: skip
        log.info("killing the task", extra={"task_id": task.id, "grace": grace})
        if container_id is not None:  # otherwise the task thread stops it once it has one
            self._spawn("kill", self._stop_container, container_id, grace)

    def _stop_container(self, container_id: str, grace: float) -> None:
        try:
            self._containers.stop(container_id, grace)
        except ContainerNotFound:
            pass
        except ContainerError as e:
            log.error("stopping the container failed: %s", e.message)
            self._remove(container_id)

    def _remove(self, container_id: str) -> None:
        try:
            self._containers.remove(container_id)
        except ContainerError as e:
            log.error(
                "removing the container failed: %s", e.message, extra={"container": container_id}
            )

    def _sweep(self) -> None:
        """Remove every container that carries this executor's id (shutdown)."""
        try:
            found = self._containers.find(self._own_labels())
        except ContainerError as e:
            log.error("could not look for this executor's containers: %s", e.message)
            return
        for info in found:
            log.info("removing a container of this executor", extra={"container": info.id})
            self._remove(info.id)

    def _pump(self, container_id: str) -> None:
        """The "logs" thread: the container's output, line by line, into the sandbox and, when
        the payload names berth logd, to logd (framework/logship.py: batched, never blocking
        this thread; what cannot be shipped is counted and reported to logd later)."""
        if not container_id:
            return
        sandbox = self._agent.sandbox
        shipper = self._shipper()
        if not sandbox:
            log.warning("no MESOS_SANDBOX: the container's output is not kept in a sandbox")
            if shipper is None:
                return
        files: dict[Stream, SandboxFile] = {}
        try:
            streams: tuple[Stream, ...] = ("stdout", "stderr")
            for name in streams:
                if sandbox:
                    files[name] = SandboxFile(Path(sandbox) / name, self._settings.log_max_bytes)
            for stream, line in self._containers.logs(container_id):
                if files:
                    files[stream].write(line)
                if shipper is not None:
                    shipper.put(stream, line)
        except (ContainerError, OSError) as e:
            message = e.message if isinstance(e, ContainerError) else str(e)
            log.warning("copying the container's output stopped: %s", message)
        finally:
            for file in files.values():
                file.close()
            if shipper is not None:
                shipper.close(LOG_SHIP_FLUSH)

    def _shipper(self) -> Shipper | None:
        """A started Shipper to the logd the payload names, or None (no logd given)."""
        task = self._task
        payload = task.plan.payload if task is not None else None
        if payload is None or not payload.logs_url or not payload.logs_token:
            return None
        process = f"{payload.process}.{payload.index}"
        try:
            shipper = Shipper(
                payload.logs_url,
                payload.logs_token,
                identity=(payload.app, process, payload.release),
            )
        except (ValueError, TypeError, AttributeError) as e:  # a broken payload
            log.warning("not shipping logs: %s", e)
            return None
        return shipper.start()

    # -- reporting ------------------------------------------------------------------------

    def _send(self, driver: ExecutorDriver, status: dict[str, Any]) -> _Delivery:
        delivery = self._outbox.put(driver, status)
        with self._acks_lock:
            self._deliveries[str(status["uuid"])] = delivery
        return delivery

    def _end(
        self,
        driver: ExecutorDriver,
        task: _Task,
        state: str,
        message: str,
        reason: str | None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Remove whatever container this executor has left (however the task ended, nothing
        of it outlives it), then queue the terminal update (once) and wait for its delivery."""
        self._sweep()
        with task.lock:
            if task.state in TERMINAL:
                return
            task.state = state
            delivery = self._send(
                driver,
                status_update(
                    task.id, state, message, reason=reason, labels=task.labels(), data=data
                ),
            )
        self._conclude(delivery)

    def _conclude(self, delivery: _Delivery) -> None:
        """Wait until the agent has the (terminal) update: it accepted it, or — if it could not
        take it then — acknowledged it after the driver resent it. A shutdown ends the wait."""
        if not delivery.sent.wait(SEND_TIMEOUT):
            log.error("a terminal status update was not sent in time")
        elif not delivery.accepted:
            log.info("waiting for the agent to acknowledge the terminal update")
            deadline = time.monotonic() + DELIVERY_TIMEOUT
            while not delivery.acked.wait(0.5):
                if self._stopping.is_set() or time.monotonic() > deadline:
                    break
        self.finished.set()

    def _spawn(self, name: str, target: Any, *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        return thread

    def close(self, timeout: float = 10.0) -> None:
        """Wait (bounded) for this executor's threads to end; the last step of main()."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._outbox.close(max(0.0, deadline - time.monotonic()))


# -- the program ---------------------------------------------------------------------------------


def cleanup(containers: Containers, executor_id: str) -> int:
    """Remove every container of one executor (its orphans, once it is gone)."""
    for container in containers.find({LABEL_EXECUTOR: executor_id}):
        containers.remove(container.id)
        log.info(
            "removed an orphaned container",
            extra={"container": container.id, "executor_id": executor_id},
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one executor until its task has ended, the agent shut it down, or SIGTERM.

    `--cleanup EXECUTOR_ID` instead removes the containers a dead executor left behind (the
    local agent runs it when an executor dies without ending its task)."""
    jsonlog.setup("executor")
    args = sys.argv[1:] if argv is None else argv
    if args:
        if len(args) != 2 or args[0] != "--cleanup":
            log.error("usage: berth-executor [--cleanup EXECUTOR_ID]")
            return 2
        return cleanup(Containers.from_env(), args[1])
    try:
        agent = AgentEnvironment.from_env(os.environ)
        settings = ExecutorSettings.from_env(os.environ)
    except ValueError as e:
        log.error("cannot start: %s", e)
        return 2
    containers = Containers.from_env()
    executor = BerthExecutor(containers, agent, settings)
    driver = MesosExecutorDriver(executor, os.environ)
    terminate = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        terminate.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info(
        "berth executor starting",
        extra={"executor_id": agent.executor_id, "framework_id": agent.framework_id},
    )
    executor.recover()
    driver.start()
    try:
        while driver.running and not executor.finished.is_set() and not terminate.is_set():
            terminate.wait(0.2)
        if terminate.is_set() and not executor.finished.is_set():
            log.info("signalled: shutting down")
            executor.shutdown(driver)
    finally:
        driver.stop()
        executor.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("berth executor exiting")
    return 0
