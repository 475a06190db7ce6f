"""Local mode's scheduler driver: a Mesos master with one agent, this machine, in-process.

Responsibility: the `SchedulerDriver` surface of mesos.py — same calls, same callbacks, same
addict messages shaped as Mesos's — for a `LocalAgent`, so the scheduler and the executor run
unchanged without a Mesos master. As a master would, it:
- registers the framework (a new id, or `reregistered` when FrameworkInfo carries one);
- offers this machine's resources — cpus = os.cpu_count(), mem = MemTotal minus a reserve,
  disk = what statvfs says is free in the agent's data dir when the driver starts, ports from
  a range — minus what live tasks and their executors hold. One offer at a time, made on an
  allocation tick (1 s, Mesos's default);
- honours filters (DECLINE, and ACCEPT's unused rest, default 5 s): as Mesos's allocator does,
  a filter refuses offers of the same or fewer resources until it expires; SUPPRESS stops
  offers and REVIVE clears both;
- validates ACCEPT: an unknown, used or duplicate offer id fails every task in it with
  REASON_INVALID_OFFERS (TASK_DROPPED for a PARTITION_AWARE framework, else TASK_LOST — as
  Mesos 1.x does); a task that is malformed, reuses an id, or needs more cpus/mem/disk or other
  ports than the offer has left gets TASK_ERROR / REASON_TASK_INVALID;
- answers reconciliation from the agent's latest states (no uuid, REASON_RECONCILIATION): an
  explicit one answers each task asked about (unknown → TASK_GONE, or TASK_LOST for a framework
  that is not partition-aware), an implicit one every non-terminal task; killing an unknown
  task answers the same way.
Local mode runs custom executors only (TaskInfo.executor with a non-shell command), one task
per executor.

Threads: `start()` runs one thread, "local-scheduler", which runs every scheduler callback, one
at a time, and makes offers on its allocation tick. Calls may come from any thread, including
from inside callbacks; they take the driver's lock, then perhaps the agent's (never the other
way round), and queue the callbacks they cause. An exception in a callback is logged and
dropped. Only this module and mesos.py speak addict.

Must not import berth.executor, berth.api or berth.cli.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from addict import Dict

from berth.framework.errors import Unavailable
from berth.framework.local_agent import TERMINAL_STATES, LocalAgent, id_error
from berth.framework.mesos import Scheduler
from berth.framework.plan import Resources

log = logging.getLogger(__name__)

Ranges = tuple[tuple[int, int], ...]  # inclusive, sorted, disjoint
DEFAULT_REFUSE_SECONDS = 5.0  # Mesos's Filters.refuse_seconds default
MIN_CPUS, MIN_MEM = 0.01, 32.0  # below both, Mesos's allocator does not bother offering
_STOP = object()
_ALLOCATE = object()  # put by REVIVE: run an offer round at once


# -- resources ---------------------------------------------------------------------------------


def normalize(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """Sort and merge inclusive ranges."""
    merged: list[tuple[int, int]] = []
    for begin, end in sorted(ranges):
        if merged and begin <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((begin, end))
    return tuple(merged)


def subtract(ranges: Ranges, taken: Ranges) -> Ranges:
    """The ports of `ranges` not in `taken`."""
    out: list[tuple[int, int]] = []
    for begin, end in ranges:
        for t_begin, t_end in taken:
            if t_end < begin or t_begin > end:
                continue
            if t_begin > begin:
                out.append((begin, t_begin - 1))
            begin = t_end + 1
            if begin > end:
                break
        if begin <= end:
            out.append((begin, end))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Bundle:
    """Resources as a master counts them: scalars (mem and disk in MB) and port ranges."""

    resources: Resources
    ports: Ranges = ()

    def __add__(self, other: Bundle) -> Bundle:
        return Bundle(self.resources + other.resources, normalize(self.ports + other.ports))

    def minus(self, other: Bundle) -> Bundle:
        left = self.resources.minus(other.resources)
        clamped = Resources(max(left.cpus, 0.0), max(left.mem, 0.0), max(left.disk, 0.0))
        return Bundle(clamped, subtract(self.ports, other.ports))

    def within(self, other: Bundle) -> bool:
        """Every resource of this bundle is in `other`."""
        return self.resources.fits_in(other.resources) and not subtract(self.ports, other.ports)

    def floored(self) -> Bundle:
        """Scalars rounded down to Mesos's precision (3 decimals): never offer a fraction
        more than there is."""
        r = self.resources

        def floor(v: float) -> float:
            return math.floor(v * 1000 + 1e-6) / 1000

        return Bundle(Resources(floor(r.cpus), floor(r.mem), floor(r.disk)), self.ports)

    @property
    def offerable(self) -> bool:
        return self.resources.cpus >= MIN_CPUS or self.resources.mem >= MIN_MEM

    def describe(self) -> str:
        r = self.resources
        ports = ",".join(f"{b}-{e}" for b, e in self.ports) or "none"
        return f"cpus {r.cpus:g}, mem {r.mem:g} MB, disk {r.disk:g} MB, ports {ports}"


def parse_resources(resources: Iterable[Any]) -> Bundle:
    """Mesos Resource JSON → a Bundle. ValueError names what local mode cannot offer."""
    cpus = mem = disk = 0.0
    ports: list[tuple[int, int]] = []
    for resource in resources:
        r = Dict(resource)
        name = str(r.name)
        if name in ("cpus", "mem", "disk"):
            if r.type not in ("SCALAR", {}):
                raise ValueError(f"resource {name} must be a SCALAR")
            value = r.scalar.value
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"resource {name} has an invalid value {value!r}")
            if name == "cpus":
                cpus += float(value)
            elif name == "mem":
                mem += float(value)
            else:
                disk += float(value)
        elif name == "ports":
            if r.type not in ("RANGES", {}):
                raise ValueError("resource ports must be RANGES")
            for item in r.ranges.range or []:
                begin, end = item.begin, item.end
                if not isinstance(begin, int) or not isinstance(end, int) or not begin <= end:
                    raise ValueError(f"invalid port range {begin!r}-{end!r}")
                ports.append((begin, end))
        else:
            raise ValueError(f"local mode offers no {name!r} resource")
    return Bundle(Resources(cpus, mem, disk), normalize(ports))


def machine_resources(
    data_dir: Path, *, reserve_mem_mb: float = 1024.0, ports: tuple[int, int] = (31000, 32000)
) -> Bundle:
    """What this machine offers when nothing runs: every cpu, MemTotal less the reserve, the
    free disk of the filesystem holding `data_dir`, and the port range."""
    fs = os.statvfs(data_dir)
    disk = float(fs.f_bavail * fs.f_frsize // 2**20)
    mem = max(float(_mem_total_mb()) - reserve_mem_mb, 0.0)
    return Bundle(Resources(float(os.cpu_count() or 1), mem, disk), ((ports[0], ports[1]),))


def _mem_total_mb() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


def _resource_json(bundle: Bundle, role: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    r = bundle.resources
    for name, value in (("cpus", r.cpus), ("mem", r.mem), ("disk", r.disk)):
        if value > 0:
            out.append(
                {
                    "name": name,
                    "type": "SCALAR",
                    "scalar": {"value": round(value, 3)},
                    "allocation_info": {"role": role},
                }
            )
    if bundle.ports:
        out.append(
            {
                "name": "ports",
                "type": "RANGES",
                "ranges": {"range": [{"begin": b, "end": e} for b, e in bundle.ports]},
                "allocation_info": {"role": role},
            }
        )
    return out


# -- the driver --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Offer:
    id: str
    bundle: Bundle


@dataclass(frozen=True, slots=True)
class _Filter:
    bundle: Bundle
    until: float  # monotonic


def _value(x: Any) -> str:
    """An id given as a string or as {"value": …} ("" if it is neither)."""
    if isinstance(x, str):
        return x
    value = Dict(x).value if isinstance(x, dict) else None
    return str(value) if isinstance(value, str | int) else ""


class _AgentEvents:
    """What the agent reports, as callbacks queued for the driver's thread (the AgentSink)."""

    def __init__(self, driver: LocalSchedulerDriver) -> None:
        self._driver = driver

    def status_update(self, status: dict[str, Any]) -> None:
        self._driver._queue_callback("statusUpdate", Dict(status))

    def framework_message(self, executor_id: str, data: bytes) -> None:
        agent_id = Dict(value=self._driver._agent.agent_id)
        self._driver._queue_callback("frameworkMessage", Dict(value=executor_id), agent_id, data)

    def executor_exited(self, executor_id: str, wait_status: int | None) -> None:
        agent_id = Dict(value=self._driver._agent.agent_id)
        self._driver._queue_callback("executorLost", Dict(value=executor_id), agent_id, wait_status)


class LocalSchedulerDriver:
    def __init__(
        self,
        scheduler: Scheduler,
        framework_info: dict[str, Any],
        agent: LocalAgent,
        *,
        reserve_mem_mb: float = 1024.0,
        ports: tuple[int, int] = (31000, 32000),
        allocation_interval: float = 1.0,
    ) -> None:
        """`reserve_mem_mb`: memory kept back for the machine itself (and Berth); `ports`:
        the inclusive range host ports are offered from; `allocation_interval`: seconds
        between offer rounds."""
        if not 0 < ports[0] <= ports[1] <= 65535:
            raise ValueError(f"not a port range: {ports[0]}-{ports[1]}")
        self._scheduler = scheduler
        self._framework = Dict(framework_info)
        self._agent = agent
        self._reserve_mem_mb = reserve_mem_mb
        self._ports = ports
        self._interval = allocation_interval
        capabilities = {str(c.type) for c in self._framework.capabilities or []}
        self._partition_aware = "PARTITION_AWARE" in capabilities
        self._role = str((self._framework.roles or [None])[0] or self._framework.role or "*")
        self._lock = threading.Lock()
        self._queue: queue.Queue[object] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._events = _AgentEvents(self)
        self._connected = False
        self._total = Bundle(Resources(0.0, 0.0))
        self._offer: _Offer | None = None
        self._offer_prefix = uuid.uuid4().hex[:8]
        self._offers_made = 0
        self._filters: list[_Filter] = []
        self._suppressed = False

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def framework_id(self) -> str | None:
        value = self._framework.id.value
        return str(value) if value else None

    def forget_framework_id(self) -> None:
        """The next start registers as a new framework."""
        with self._lock:
            self._framework.pop("id", None)

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self) -> None:
        """Register with the (started) agent and start offering. Raises Unavailable if the
        agent is not running."""
        if self._thread is not None:
            return
        if not self._agent.running:
            raise Unavailable("the local agent is not running: start it before the driver")
        with self._lock:
            failover = self.framework_id is not None
            if not failover:
                self._framework.id = Dict(value=f"{uuid.uuid4()}-0000")
            self._total = machine_resources(
                self._agent.data_dir, reserve_mem_mb=self._reserve_mem_mb, ports=self._ports
            )
            framework_id = str(self._framework.id.value)
            master = self._master_info()
            # first the (re)registration, then whatever the agent resends: the queue keeps order
            if failover:
                self._queue_callback("reregistered", master)
            else:
                self._queue_callback("registered", Dict(value=framework_id), master)
            self._agent.register(self._framework.to_dict(), self._events)
            self._connected = True
        log.info(
            "registered with the local master",
            extra={
                "framework_id": framework_id,
                "failover": failover,
                "offerable": self._total.describe(),
            },
        )
        self._thread = threading.Thread(target=self._run, name="local-scheduler", daemon=True)
        self._thread.start()

    def stop(self, failover: bool = True) -> None:
        """Stop. With failover (always, in Berth) tasks keep running for the next driver;
        without, as TEARDOWN, every executor of the framework is shut down."""
        with self._lock:
            was_connected, self._connected = self._connected, False
            self._offer = None
        self._agent.unregister(self._events)
        framework_id = self.framework_id
        if was_connected and not failover and framework_id:
            log.warning("tearing the framework down", extra={"framework_id": framework_id})
            self._agent.teardown(framework_id)
            self.forget_framework_id()
        self._stop.set()
        self._queue.put(_STOP)
        self.join()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _master_info(self) -> Dict:
        return Dict(
            id=f"local-{self._agent.agent_id}",
            ip=_packed_ip(self._agent.host),
            port=self._agent.port,
            hostname=self._agent.hostname,
            version="berth-local",
            address={"hostname": self._agent.hostname, "ip": self._agent.host,
                     "port": self._agent.port},
        )  # fmt: skip

    # -- the driver's thread -----------------------------------------------------------------

    def _run(self) -> None:
        next_round = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, next_round - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP or self._stop.is_set():
                break
            if isinstance(item, tuple):
                name, args = item
                self._callback(name, *args)
            elif item is _ALLOCATE:
                next_round = time.monotonic()
            if time.monotonic() >= next_round:
                try:
                    self._allocate()
                except Exception:  # the driver's thread must outlive any one round
                    log.exception("offer round failed")
                next_round = time.monotonic() + self._interval
        self._callback("disconnected")
        log.info("local scheduler driver stopped", extra={"framework_id": self.framework_id})

    def _queue_callback(self, name: str, *args: Any) -> None:
        self._queue.put((name, args))

    def _callback(self, name: str, *args: Any) -> None:
        """Run a scheduler callback; its exceptions are logged, never allowed to stop us."""
        try:
            getattr(self._scheduler, name)(self, *args)
        except Exception:
            log.exception("scheduler callback %s raised; carrying on", name)

    def _allocate(self) -> None:
        """One offer round: offer what is free unless an offer is out, offers are suppressed,
        or a live filter already refused as much."""
        with self._lock:
            if not self._connected or self._suppressed or self._offer is not None:
                return
            now = time.monotonic()
            self._filters = [f for f in self._filters if f.until > now]
            used = Bundle(Resources(0.0, 0.0))
            for resources in self._agent.allocated():
                try:
                    used = used + parse_resources(resources)
                except ValueError:  # validated at launch; a hand-edited checkpoint, maybe
                    log.warning("ignoring unreadable resources of a running task")
            free = self._total.minus(used).floored()
            if not free.offerable or any(free.within(f.bundle) for f in self._filters):
                return
            self._offers_made += 1
            offer = _Offer(f"{self._offer_prefix}-O{self._offers_made}", free)
            self._offer = offer
            message = Dict(
                id={"value": offer.id},
                framework_id={"value": self.framework_id},
                agent_id={"value": self._agent.agent_id},
                hostname=self._agent.hostname,
                url={
                    "scheme": "http",
                    "address": {
                        "hostname": self._agent.hostname,
                        "ip": self._agent.host,
                        "port": self._agent.port,
                    },
                    "path": "/slave(1)",
                },
                resources=_resource_json(free, self._role),
                allocation_info={"role": self._role},
            )
        log.debug("offering", extra={"offer_id": offer.id, "resources": free.describe()})
        self._callback("resourceOffers", [message])

    # -- calls -------------------------------------------------------------------------------

    def _not_connected(self, call: str) -> bool:
        if self._connected:
            return False
        log.warning("not registered with the local master: dropping %s", call)
        return True

    def _master_update(self, task_id: str, state: str, reason: str, message: str) -> None:
        """A status the master says itself: no uuid, so no acknowledgement."""
        status = Dict(
            task_id={"value": task_id},
            state=state,
            reason=reason,
            message=message,
            source="SOURCE_MASTER",
            agent_id={"value": self._agent.agent_id},
            timestamp=time.time(),
        )
        log.info(
            "task %s: %s",
            state,
            message,
            extra={"task_id": task_id, "state": state, "reason": reason},
        )
        self._queue_callback("statusUpdate", status)

    def acceptOffers(
        self, offer_ids: Sequence[Any], operations: Sequence[Any], filters: Any = None
    ) -> bool:
        ids = [_value(o) for o in offer_ids]
        ops = [Dict(op) for op in operations]
        refuse = _refuse_seconds(filters)
        with self._lock:
            if self._not_connected("ACCEPT"):
                return False
            offer = self._offer
            error = None
            if not ids:
                error = "no offer ids"
            elif len(set(ids)) != len(ids):
                error = "an offer id appears twice"
            elif offer is None or ids != [offer.id]:
                stale = [i for i in ids if offer is None or i != offer.id]
                error = f"offer {stale[0]} is no longer valid"
            if offer is not None and offer.id in ids:
                self._offer = None  # used, or returned to the pool with the invalid call
            if error is not None:
                state = "TASK_DROPPED" if self._partition_aware else "TASK_LOST"
                for task in _tasks_in(ops):
                    self._master_update(
                        _value(task.task_id),
                        state,
                        "REASON_INVALID_OFFERS",
                        f"Task launched with invalid offers: {error}",
                    )
                return True
            assert offer is not None
            left = offer.bundle
            for op in ops:
                if op.type == "LAUNCH":
                    for task in op.launch.task_infos or []:
                        left = self._launch(task, left)
                elif op.type == "LAUNCH_GROUP":
                    for task in op.launch_group.task_group.tasks or []:
                        self._master_update(
                            _value(task.task_id),
                            "TASK_ERROR",
                            "REASON_TASK_GROUP_INVALID",
                            "Task groups are not supported in local mode",
                        )
                else:
                    log.error("local mode ignores the %s operation", op.type)
            if refuse > 0 and left.offerable:
                self._filters.append(_Filter(left, time.monotonic() + refuse))
        return True

    def _launch(self, task: Dict, left: Bundle) -> Bundle:
        """Validate one task against what is left of the offer; launch it if it is good.
        Returns what is left after it."""
        task_id = _value(task.task_id)
        needs, error = self._validate(task, left)
        if error is not None or needs is None:
            self._master_update(task_id, "TASK_ERROR", "REASON_TASK_INVALID", error or "")
            return left
        if not self._agent.launch(str(self.framework_id), task.to_dict()):
            self._master_update(
                task_id, "TASK_LOST", "REASON_AGENT_DISCONNECTED", "The local agent is not running"
            )
            return left
        log.info("launching a task", extra={"task_id": task_id, "needs": needs.describe()})
        return left.minus(needs)

    def _validate(self, task: Dict, left: Bundle) -> tuple[Bundle | None, str | None]:
        """What a valid task needs (with its executor), or why it is invalid."""
        task_id = task.task_id.value
        error = id_error(task_id, "task id")
        if error is not None:
            return None, error
        if self._agent.has_task(str(task_id)):
            return None, f"Task has duplicate ID: {task_id}"
        if task.agent_id and task.agent_id.value != self._agent.agent_id:
            return None, f"Task uses agent {task.agent_id.value}, not this offer's"
        executor = task.executor
        if not executor:
            return None, "Local mode runs custom executors only: TaskInfo.executor is missing"
        executor_id = executor.executor_id.value
        error = id_error(executor_id, "executor id")
        if error is not None:
            return None, error
        if executor.framework_id and executor.framework_id.value != self.framework_id:
            return None, "ExecutorInfo has an invalid FrameworkID"
        if self._agent.executor_busy(str(executor_id)):
            return None, f"Executor {executor_id} is in use: local mode runs one task each"
        command = executor.command
        if command.shell is not False or not command.value:
            return None, "Executor command must be an argv (shell: false) with a value"
        try:
            needs = parse_resources(task.resources or []) + parse_resources(
                executor.resources or []
            )
        except ValueError as exc:
            return None, str(exc)
        if not needs.within(left):
            return None, (
                f"Task uses more resources ({needs.describe()}) than available in the offer "
                f"({left.describe()})"
            )
        return needs, None

    def launchTasks(
        self, offer_ids: Sequence[Any], tasks: Sequence[Any], filters: Any = None
    ) -> bool:
        operation = {"type": "LAUNCH", "launch": {"task_infos": [Dict(t).to_dict() for t in tasks]}}
        return self.acceptOffers(offer_ids, [operation], filters)

    def declineOffer(self, offer_ids: Sequence[Any], filters: Any = None) -> bool:
        refuse = _refuse_seconds(filters)
        with self._lock:
            if self._not_connected("DECLINE"):
                return False
            for offer_id in (_value(o) for o in offer_ids):
                offer = self._offer
                if offer is None or offer.id != offer_id:
                    log.warning("declining an unknown offer", extra={"offer_id": offer_id})
                    continue
                self._offer = None
                if refuse > 0:
                    self._filters.append(_Filter(offer.bundle, time.monotonic() + refuse))
        return True

    def reviveOffers(self) -> bool:
        with self._lock:
            if self._not_connected("REVIVE"):
                return False
            self._suppressed = False
            self._filters.clear()
        self._queue.put(_ALLOCATE)  # as Mesos's allocator: an offer round now, not at the tick
        return True

    def suppressOffers(self) -> bool:
        with self._lock:
            if self._not_connected("SUPPRESS"):
                return False
            self._suppressed = True
        return True

    def killTask(
        self, task_id: Any, agent_id: Any = None, grace_seconds: float | None = None
    ) -> bool:
        value = _value(task_id)
        with self._lock:
            if self._not_connected("KILL"):
                return False
            if not self._agent.kill(str(self.framework_id), value, grace_seconds):
                log.warning("kill of an unknown task", extra={"task_id": value})
                self._master_update(
                    value,
                    self._unknown_state,
                    "REASON_RECONCILIATION",
                    "Reconciliation: Task is unknown",
                )
        return True

    @property
    def _unknown_state(self) -> str:
        return "TASK_GONE" if self._partition_aware else "TASK_LOST"

    def acknowledgeStatusUpdate(self, status: Any) -> bool:
        status = Dict(status)
        if not status.uuid:
            return True  # updates without a uuid (the master's own, reconciliation) take no ack
        with self._lock:
            if self._not_connected("ACKNOWLEDGE"):
                return False
            self._agent.acknowledge(
                str(self.framework_id), _value(status.task_id), str(status.uuid)
            )
        return True

    def reconcileTasks(self, tasks: Iterable[Any]) -> bool:
        """Explicit reconciliation for the given statuses/tasks; an empty list asks for every
        task that has not ended (implicit)."""
        wanted = [_value(Dict(t).task_id) for t in tasks]
        with self._lock:
            if self._not_connected("RECONCILE"):
                return False
            latest = {_value(s["task_id"]): s for s in self._agent.statuses(str(self.framework_id))}
            if not wanted:
                answers = [s for s in latest.values() if s["state"] not in TERMINAL_STATES]
                for answer in answers:
                    self._queue_callback("statusUpdate", self._reconciled(answer))
                return True
            for task_id in wanted:
                status = latest.get(task_id)
                if status is None:
                    self._master_update(
                        task_id,
                        self._unknown_state,
                        "REASON_RECONCILIATION",
                        "Reconciliation: Task is unknown",
                    )
                else:
                    self._queue_callback("statusUpdate", self._reconciled(status))
        return True

    def _reconciled(self, latest: dict[str, Any]) -> Dict:
        """A reconciliation answer: the latest state, as the master words it (no uuid)."""
        answer = Dict(
            task_id=latest["task_id"],
            state=latest["state"],
            agent_id={"value": self._agent.agent_id},
            source="SOURCE_MASTER",
            reason="REASON_RECONCILIATION",
            message="Reconciliation: Latest task state",
            timestamp=time.time(),
        )
        for key in ("executor_id", "healthy", "labels", "container_status", "check_status"):
            if key in latest:
                answer[key] = latest[key]
        return answer

    def sendFrameworkMessage(self, executor_id: Any, agent_id: Any, data: bytes) -> bool:
        with self._lock:
            if self._not_connected("MESSAGE"):
                return False
            self._agent.send_message(str(self.framework_id), _value(executor_id), data)
        return True


def _packed_ip(host: str) -> int:
    """MasterInfo.ip as Mesos packs it: the IPv4 address's bytes in network order, read as a
    little-endian integer (127.0.0.1 → 16777343); 0 for anything else."""
    try:
        return int.from_bytes(socket.inet_aton(host), "little")
    except OSError:
        return 0


def _refuse_seconds(filters: Any) -> float:
    if filters is None:
        return DEFAULT_REFUSE_SECONDS
    value = Dict(filters).refuse_seconds
    return float(value) if isinstance(value, int | float) else DEFAULT_REFUSE_SECONDS


def _tasks_in(operations: list[Dict]) -> list[Dict]:
    tasks: list[Dict] = []
    for op in operations:
        if op.type == "LAUNCH":
            tasks.extend(op.launch.task_infos or [])
        elif op.type == "LAUNCH_GROUP":
            tasks.extend(op.launch_group.task_group.tasks or [])
    return tasks
