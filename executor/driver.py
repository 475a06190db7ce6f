"""Berth's driver for the Mesos v1 executor HTTP API, on berth.framework.http1.

Responsibility: keep one executor subscribed to its agent (`POST /api/v1/executor`), turn the
agent's events into callbacks on an `Executor`, and carry its calls (UPDATE, MESSAGE) to the
agent without losing any. pymesos's executor driver does not install on Python ≥ 3.11; this
one keeps its shape — an `Executor` with callbacks named as in pymesos, a driver with
`sendStatusUpdate` and `sendFrameworkMessage`, messages as `addict.Dict` — and differs where it
matters:

- `MESOS_CHECKPOINT="0"` means no checkpointing (pymesos reads any non-empty value as true);
- an exception in a callback is logged and dropped; it never stops the driver;
- every status update gets a uuid, a timestamp, `source` and `executor_id` here, and is kept
  until the agent sends ACKNOWLEDGED for it; launched tasks are kept until one of their updates
  is acknowledged. Both lists are resent in the next SUBSCRIBE, so nothing said while the
  agent was away is lost; framework messages sent while disconnected wait for the next
  subscription;
- a lost agent is handled as Mesos's executor-http-api document says: without checkpointing
  the executor shuts down at once; with it, the driver resubscribes with exponential backoff
  (each wait ≤ `MESOS_SUBSCRIPTION_BACKOFF_MAX`, so a recovering agent hears from us in time)
  for at most `MESOS_RECOVERY_TIMEOUT`, then shuts down;
- a dead connection is noticed: TCP keepalive on the event stream, and a read timeout longer
  than the interval between the agent's HEARTBEAT events (30 minutes in Mesos 1.11).

Threads: `start()` runs one thread, "mesos-executor", which owns the event stream and runs
every callback, one at a time. `sendStatusUpdate`, `sendFrameworkMessage` and `stop` may be
called from any thread; each call is its own POST on its own connection.

Must not import flask, kazoo, berth.api or berth.cli (import-linter contract
"executor-runs-on-agents"). Only this module in berth.executor speaks addict; the code around
it should turn the Dicts it receives into Berth's own types.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from addict import Dict

from berth.framework import http1
from berth.framework.mesos import interrupt, post_call
from berth.framework.recordio import Decoder, RecordIOError

log = logging.getLogger(__name__)

EXECUTOR_PATH = "/api/v1/executor"
# Mesos 1.11 agents send HEARTBEAT to HTTP executors every 30 minutes
# (DEFAULT_EXECUTOR_HEARTBEAT_INTERVAL); two missed ones, plus a margin, mean a dead stream.
AGENT_HEARTBEAT_INTERVAL = 30 * 60.0
DEFAULT_READ_TIMEOUT = 2 * AGENT_HEARTBEAT_INTERVAL + 60.0
DEFAULT_SHUTDOWN_GRACE_PERIOD = 5.0  # Mesos's default executor_shutdown_grace_period
INITIAL_BACKOFF = 0.25

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "ms": 1e-3,
    "secs": 1.0,
    "mins": 60.0,
    "hrs": 3600.0,
    "days": 86400.0,
    "weeks": 604800.0,
}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|ms|secs|mins|hrs|days|weeks)")


def parse_duration(text: str, name: str = "duration") -> float:
    """A Mesos duration string ("15mins", "2secs", "100ms", "1.5hrs", …) → seconds.
    `name` (the variable it came from) is named in the ValueError for anything else."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"{name}={text!r} is not a Mesos duration (a number and one of "
            f"{', '.join(_UNITS)}, e.g. '15mins')"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "0").strip().lower()
    if value in ("1", "true"):
        return True
    if value in ("0", "false", ""):
        return False
    raise ValueError(f"{name}={value!r} is neither 1/true nor 0/false")


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ValueError(f"{name} is not set: is this process running as a Mesos executor?")
    return value


def _duration(env: Mapping[str, str], name: str, required: bool) -> float | None:
    value = env.get(name, "").strip()
    if not value:
        if required:
            raise ValueError(f"{name} is not set, but MESOS_CHECKPOINT=1 needs it")
        return None
    return parse_duration(value, name)


def _agent_url(endpoint: str) -> str:
    """MESOS_AGENT_ENDPOINT is `ip:port` (or `[v6]:port`) → the executor API's URL."""
    try:
        parts = urlsplit(f"http://{endpoint}")
        valid = bool(parts.hostname) and parts.port is not None
        valid = valid and not (parts.path or parts.query or parts.fragment or parts.username)
    except ValueError:  # a bad port or bracket
        valid = False
    if not valid:
        raise ValueError(f"MESOS_AGENT_ENDPOINT={endpoint!r} is not host:port")
    return f"http://{endpoint}{EXECUTOR_PATH}"


@dataclass(frozen=True, slots=True)
class AgentEnvironment:
    """What the agent tells its executor through the environment, parsed and checked once.
    Durations are in seconds; the recovery settings are None unless the agent set them."""

    agent_endpoint: str
    framework_id: str
    executor_id: str
    directory: str | None
    sandbox: str | None
    checkpoint: bool
    recovery_timeout: float | None
    subscription_backoff_max: float | None
    shutdown_grace_period: float
    auth_token: str | None

    @property
    def url(self) -> str:
        return _agent_url(self.agent_endpoint)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AgentEnvironment:
        """Raises ValueError naming the variable that is missing or malformed."""
        endpoint = _required(env, "MESOS_AGENT_ENDPOINT")
        _agent_url(endpoint)
        checkpoint = _flag(env, "MESOS_CHECKPOINT")
        grace = _duration(env, "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD", required=False)
        directory = env.get("MESOS_DIRECTORY") or None
        return cls(
            agent_endpoint=endpoint,
            framework_id=_required(env, "MESOS_FRAMEWORK_ID"),
            executor_id=_required(env, "MESOS_EXECUTOR_ID"),
            directory=directory,
            sandbox=env.get("MESOS_SANDBOX") or directory,
            checkpoint=checkpoint,
            recovery_timeout=_duration(env, "MESOS_RECOVERY_TIMEOUT", checkpoint),
            subscription_backoff_max=_duration(env, "MESOS_SUBSCRIPTION_BACKOFF_MAX", checkpoint),
            shutdown_grace_period=DEFAULT_SHUTDOWN_GRACE_PERIOD if grace is None else grace,
            auth_token=env.get("MESOS_EXECUTOR_AUTHENTICATION_TOKEN") or None,
        )


class ExecutorDriver(Protocol):
    """What an executor may ask of its driver."""

    def sendStatusUpdate(self, status: Any) -> bool: ...
    def sendFrameworkMessage(self, data: bytes) -> bool: ...
    def stop(self) -> None: ...


class Executor:
    """Callbacks, named as in pymesos; each does nothing unless overridden. They all run on the
    driver's one thread, one at a time: a good executor starts long work elsewhere."""

    def registered(
        self, driver: ExecutorDriver, executor_info: Dict, framework_info: Dict, agent_info: Dict
    ) -> None:
        """First SUBSCRIBED from the agent."""

    def reregistered(self, driver: ExecutorDriver, agent_info: Dict) -> None:
        """SUBSCRIBED again after the agent was lost (it restarted, with checkpointing)."""

    def disconnected(self, driver: ExecutorDriver) -> None:
        """The event stream broke or went silent (not called when we stop it ourselves)."""

    def launchTask(self, driver: ExecutorDriver, task: Dict) -> None:
        """A TaskInfo to run; answer with a status update (TASK_STARTING/RUNNING or a failure)."""

    def killTask(self, driver: ExecutorDriver, task_id: Dict, kill_policy: Dict | None) -> None:
        """Kill a task, then send its terminal update. `kill_policy`, if given, overrides the
        TaskInfo's (its `grace_period.nanoseconds`)."""

    def acknowledged(self, driver: ExecutorDriver, task_id: Dict, uuid: str) -> None:
        """The agent has the update with this (base64) uuid; it is no longer resent."""

    def frameworkMessage(self, driver: ExecutorDriver, message: bytes) -> None:
        pass

    def shutdown(self, driver: ExecutorDriver) -> None:
        """Kill every task and send their terminal updates before returning: the driver stops
        right after (on SHUTDOWN, or when the agent is lost for good)."""

    def error(self, driver: ExecutorDriver, message: str) -> None:
        """The agent sent ERROR; the driver then treats the stream as lost."""


class MesosExecutorDriver:
    def __init__(
        self,
        executor: Executor,
        env: Mapping[str, str] = os.environ,
        *,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        connect_timeout: float = 10.0,
    ) -> None:
        """Reads the agent's variables from `env` (ValueError names a bad one).
        `read_timeout`: seconds of silence on the event stream that mean it is dead."""
        self._executor = executor
        self.environment = AgentEnvironment.from_env(env)
        self._endpoint = http1.Endpoint.parse(f"http://{self.environment.agent_endpoint}")
        self._ids = {
            "framework_id": {"value": self.environment.framework_id},
            "executor_id": {"value": self.environment.executor_id},
        }
        self._headers = {"Accept": "application/json"}
        if self.environment.auth_token:
            self._headers["Authorization"] = f"Bearer {self.environment.auth_token}"
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: http1.Response | None = None
        self._connected = False
        self._subscribed_before = False
        # kept until acknowledged, in the order they happened; resent in SUBSCRIBE
        self._tasks: dict[str, Dict] = {}  # task id → TaskInfo
        self._updates: dict[tuple[str, str], Dict] = {}  # (task id, uuid) → TaskStatus
        self._messages: list[bytes] = []  # framework messages waiting for a subscription
        self.executor_info: Dict | None = None
        self.framework_info: Dict | None = None
        self.agent_info: Dict | None = None
        self.container_id: Dict | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def running(self) -> bool:
        """The driver's thread is alive (started, and neither stopped nor shut down)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def unacknowledged_tasks(self) -> list[Dict]:
        with self._lock:
            return [Dict(t) for t in self._tasks.values()]

    @property
    def unacknowledged_updates(self) -> list[Dict]:
        with self._lock:
            return [Dict(s) for s in self._updates.values()]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mesos-executor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the event stream and end the driver's thread; no callback runs for this."""
        with self._lock:  # pairs with the check after SUBSCRIBE: no stream is missed
            self._stop.set()
            response = self._response
        if response is not None:
            interrupt(response)
        self.join()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run(self) -> None:
        """start() and join(): returns once the executor has been told to shut down."""
        self.start()
        self.join()

    def _shutdown(self) -> None:
        self._callback("shutdown")
        self._stop.set()

    # -- the event stream --------------------------------------------------------------------

    def _run(self) -> None:
        env = self.environment
        lost_at: float | None = None  # when the agent went away (monotonic)
        backoff = INITIAL_BACKOFF
        while not self._stop.is_set():
            subscribed = False
            try:
                subscribed = self._subscribe_once()
            except Exception as exc:  # any failure of one subscription is a lost agent
                log.warning(
                    "mesos agent subscription failed: %s", exc, extra={"error": type(exc).__name__}
                )
            if self._stop.is_set():
                break
            now = time.monotonic()
            if subscribed or lost_at is None:
                lost_at, backoff = now, INITIAL_BACKOFF
            if not env.checkpoint or env.recovery_timeout is None:
                log.warning("lost the mesos agent and checkpointing is off: shutting down")
                self._shutdown()
                break
            remaining = lost_at + env.recovery_timeout - now
            if remaining <= 0:
                log.error(
                    "mesos agent did not come back within the recovery timeout: shutting down",
                    extra={"recovery_timeout": env.recovery_timeout},
                )
                self._shutdown()
                break
            backoff_max = env.subscription_backoff_max or INITIAL_BACKOFF
            backoff = min(backoff, backoff_max)
            delay = min(backoff * (0.5 + random.random() / 2), remaining)  # noqa: S311 - jitter
            log.info("resubscribing to the mesos agent in %.2fs", delay, extra={"delay": delay})
            self._stop.wait(delay)
            backoff *= 2
        log.info("mesos executor driver stopped")

    def _subscribe_call(self) -> dict[str, Any]:
        with self._lock:
            tasks = [t.to_dict() for t in self._tasks.values()]
            updates = [{"status": s.to_dict()} for s in self._updates.values()]
        return {
            "type": "SUBSCRIBE",
            **self._ids,
            "subscribe": {"unacknowledged_tasks": tasks, "unacknowledged_updates": updates},
        }

    def _subscribe_once(self) -> bool:
        """One SUBSCRIBE and its stream, to the end. True if it got as far as SUBSCRIBED."""
        body = self._subscribe_call()
        response = http1.request(
            self._endpoint,
            "POST",
            EXECUTOR_PATH,
            json_body=body,
            headers=self._headers,
            connect_timeout=self._connect_timeout,
            # the answer's head comes at once (or the agent is in trouble): wait for it no
            # longer than for a connection, then for events up to `read_timeout`
            timeout=self._connect_timeout,
        )
        with self._lock:
            self._response = response
            stopping = self._stop.is_set()
        if stopping:
            response.close()
            return False
        subscribed = False
        with response:
            if response.status != 200:
                log.warning(
                    "mesos agent refused SUBSCRIBE: %s %s",
                    response.status,
                    response.text()[:500],
                    extra={"status": response.status},
                )
                return False
            # a vanished agent host is noticed in minutes (a restarted agent process closes
            # the stream at once); silence longer than `read_timeout` means a dead stream
            response.set_timeout(self._read_timeout)
            response.keepalive()
            decoder = Decoder()
            try:
                for chunk in response.chunks():
                    for record in decoder.feed(chunk):
                        event = Dict(json.loads(record))
                        if event.type == "SUBSCRIBED":
                            subscribed = True
                            self._on_subscribed(event.subscribed)
                        elif not self._dispatch(event):
                            return subscribed
                        if self._stop.is_set():
                            return subscribed
                    if self._stop.is_set():
                        return subscribed
                log.warning("mesos agent closed the event stream")
            except (OSError, RecordIOError, ValueError) as exc:
                if not self._stop.is_set():
                    log.warning(
                        "mesos agent event stream broke: %s",
                        exc,
                        extra={"error": type(exc).__name__},
                    )
            finally:
                with self._lock:
                    was_connected, self._connected = self._connected, False
                if was_connected and not self._stop.is_set():
                    self._callback("disconnected")
        return subscribed

    def _on_subscribed(self, subscribed: Dict) -> None:
        self.executor_info = subscribed.executor_info
        self.framework_info = subscribed.framework_info
        self.agent_info = subscribed.agent_info
        self.container_id = subscribed.container_id or None
        with self._lock:
            self._connected = True
            again, self._subscribed_before = self._subscribed_before, True
            messages, self._messages = self._messages, []
        log.info(
            "subscribed to the mesos agent",
            extra={
                "executor_id": self.environment.executor_id,
                "framework_id": self.environment.framework_id,
                "agent": subscribed.agent_info.hostname,
                "resubscribed": again,
            },
        )
        if again:
            self._callback("reregistered", subscribed.agent_info)
        else:
            self._callback(
                "registered",
                subscribed.executor_info,
                subscribed.framework_info,
                subscribed.agent_info,
            )
        for data in messages:
            self.sendFrameworkMessage(data)

    def _dispatch(self, event: Dict) -> bool:
        """Handle one event; False means this stream is over (SHUTDOWN, ERROR)."""
        kind = event.type
        if kind == "HEARTBEAT":
            return True
        if kind == "LAUNCH":
            task = event.launch.task
            with self._lock:
                self._tasks[str(task.task_id.value)] = Dict(task)
            log.info("mesos agent launches a task", extra={"task_id": task.task_id.value})
            self._callback("launchTask", task)
        elif kind == "LAUNCH_GROUP":
            ids = [t.task_id.value for t in event.launch_group.task_group.tasks]
            log.error("ignoring LAUNCH_GROUP: task groups are not supported", extra={"tasks": ids})
        elif kind == "KILL":
            kill = event.kill
            log.info("mesos agent asks to kill a task", extra={"task_id": kill.task_id.value})
            self._callback("killTask", kill.task_id, kill.kill_policy or None)
        elif kind == "ACKNOWLEDGED":
            acked = event.acknowledged
            task_id, ack_uuid = str(acked.task_id.value), str(acked.uuid)
            with self._lock:
                known = self._updates.pop((task_id, ack_uuid), None) is not None
                self._tasks.pop(task_id, None)
            log.debug(
                "status update acknowledged",
                extra={"task_id": task_id, "uuid": ack_uuid, "known": known},
            )
            self._callback("acknowledged", acked.task_id, ack_uuid)
        elif kind == "MESSAGE":
            try:
                data = base64.b64decode(event.message.data or "", validate=True)
            except binascii.Error:
                log.error("ignoring a framework message that is not base64")
                return True
            self._callback("frameworkMessage", data)
        elif kind == "SHUTDOWN":
            log.info("mesos agent asks the executor to shut down")
            self._shutdown()
            return False
        elif kind == "ERROR":
            # item access, as in framework/mesos.py (`update`, `items`, `pop`… are dict methods)
            message = str(event["error"]["message"])
            log.error("mesos agent sent ERROR: %s", message)
            self._callback("error", message)
            return False
        else:
            log.debug("ignoring mesos event %s", kind)
        return True

    def _callback(self, name: str, *args: Any) -> None:
        """Run an executor callback; its exceptions are logged, never allowed to stop us."""
        try:
            getattr(self._executor, name)(self, *args)
        except Exception:
            log.exception("executor callback %s raised; carrying on", name)

    # -- calls -------------------------------------------------------------------------------

    def _post(self, call: dict[str, Any]) -> int | None:
        """POST one call; the HTTP status, or None if the agent could not be reached."""
        return post_call(
            self._endpoint,
            EXECUTOR_PATH,
            {**self._ids, **call},
            self._headers,
            self._connect_timeout,
            "mesos agent",
        )

    def sendStatusUpdate(self, status: Any) -> bool:
        """Send a TaskStatus (needs `task_id` and `state`); `uuid`, `timestamp`, `source` and
        `executor_id` are filled in when absent. The update is kept, and resent on every
        resubscription, until the agent acknowledges it. True if the agent accepted it now;
        False if it waits for the next subscription (or the agent rejected it as invalid)."""
        status = Dict(status)  # a copy: the caller's dict is left alone
        if not status.task_id.value or not status.state:
            raise ValueError(f"a status update needs task_id and state: {status.to_dict()}")
        if not status.uuid:
            status.uuid = base64.b64encode(uuid.uuid4().bytes).decode()
        if not status.timestamp:
            status.timestamp = time.time()
        if not status.source:
            status.source = "SOURCE_EXECUTOR"
        if not status.executor_id:
            status.executor_id = {"value": self.environment.executor_id}
        key = (str(status.task_id.value), str(status.uuid))
        with self._lock:
            self._updates[key] = status
            connected = self._connected
        extra = {"task_id": key[0], "state": status.state, "uuid": key[1]}
        if not connected:
            log.info("not subscribed: status update kept for the next SUBSCRIBE", extra=extra)
            return False
        code = self._post({"type": "UPDATE", "update": {"status": status.to_dict()}})
        if code == 400:  # malformed: resending it would only make SUBSCRIBE fail too
            with self._lock:
                self._updates.pop(key, None)
            log.error("mesos agent rejected a status update; dropped", extra=extra)
        return code == 202

    def sendFrameworkMessage(self, data: bytes) -> bool:
        """Send bytes to the scheduler (Mesos does not guarantee delivery). Kept and sent after
        the next subscription if the agent cannot take it now; then returns False."""
        with self._lock:
            connected = self._connected
            if not connected:
                self._messages.append(data)
        if not connected:
            log.info("not subscribed: framework message kept for the next subscription")
            return False
        code = self._post({"type": "MESSAGE", "message": {"data": base64.b64encode(data).decode()}})
        if code is None or code >= 500:
            with self._lock:
                self._messages.append(data)
        return code == 202
