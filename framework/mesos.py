"""Berth's driver for the Mesos v1 scheduler HTTP API, on berth.framework.http1.

Why not pymesos: its last release (0.3.15, 2020) does not install on Python ≥ 3.11 (its
`http-parser` C extension no longer builds), and its traps are ones a PaaS cannot live with
(see docs/architecture.md). This driver keeps pymesos's shape — a `Scheduler` with callbacks
named like pymesos's, a driver with `launchTasks`, `declineOffer`, `reviveOffers`, …, messages
as `addict.Dict` — and behaves differently where it matters:

- an exception in a callback is logged and dropped; it never stops the driver, and the driver
  never sends TEARDOWN on its own (only `stop(failover=False)` does);
- status updates are never acknowledged implicitly: the scheduler acknowledges once its state
  is saved (`acknowledgeStatusUpdate`);
- a silent master is detected: the stream's socket times out after `missed_heartbeats` times
  the heartbeat interval the master announced, and the driver resubscribes;
- resubscription backs off exponentially with jitter (0.5 s doubling to `backoff_max`), follows
  307 redirects to the leading master, and re-resolves the master each time (`zk://…`).

Threads: `start()` runs one subscription thread, which reads the event stream and runs the
scheduler's callbacks. Calls (ACCEPT, DECLINE, …) may come from any thread; each is its own
POST with the stream id. Only this module and local.py speak addict.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from addict import Dict

from berth.framework import http1
from berth.framework.recordio import Decoder, RecordIOError

log = logging.getLogger(__name__)

SCHEDULER_PATH = "/api/v1/scheduler"
DEFAULT_HEARTBEAT = 15.0


class SchedulerDriver(Protocol):
    """What a scheduler may ask of its driver: the Mesos one here, or local mode's."""

    def launchTasks(
        self, offer_ids: Sequence[Any], tasks: Sequence[Any], filters: Any = None
    ) -> bool: ...
    def acceptOffers(
        self, offer_ids: Sequence[Any], operations: Sequence[Any], filters: Any = None
    ) -> bool: ...
    def declineOffer(self, offer_ids: Sequence[Any], filters: Any = None) -> bool: ...
    def reviveOffers(self) -> bool: ...
    def suppressOffers(self) -> bool: ...
    def killTask(
        self, task_id: Any, agent_id: Any = None, grace_seconds: float | None = None
    ) -> bool: ...
    def acknowledgeStatusUpdate(self, status: Any) -> bool: ...
    def reconcileTasks(self, tasks: Iterable[Any]) -> bool: ...
    def sendFrameworkMessage(self, executor_id: Any, agent_id: Any, data: bytes) -> bool: ...


class Scheduler:
    """Callbacks, named as in pymesos; each does nothing unless overridden. They run on the
    driver's thread: a good scheduler only queues work from them."""

    def registered(self, driver: SchedulerDriver, framework_id: Dict, master_info: Dict) -> None:
        """Subscribed with a new framework id."""

    def reregistered(self, driver: SchedulerDriver, master_info: Dict) -> None:
        """Subscribed again with the framework id it had (failover, new master, reconnect)."""

    def disconnected(self, driver: SchedulerDriver) -> None:
        """The event stream ended; all outstanding offers are void."""

    def resourceOffers(self, driver: SchedulerDriver, offers: list[Dict]) -> None:
        pass

    def offerRescinded(self, driver: SchedulerDriver, offer_id: Dict) -> None:
        pass

    def statusUpdate(self, driver: SchedulerDriver, status: Dict) -> None:
        """A TaskStatus; acknowledge it (if it has a uuid) once its state is saved."""

    def frameworkMessage(
        self, driver: SchedulerDriver, executor_id: Dict, agent_id: Dict, data: bytes
    ) -> None:
        pass

    def agentLost(self, driver: SchedulerDriver, agent_id: Dict) -> None:
        pass

    def executorLost(
        self, driver: SchedulerDriver, executor_id: Dict, agent_id: Dict, status: int | None
    ) -> None:
        pass

    def error(self, driver: SchedulerDriver, message: str) -> None:
        """The master sent ERROR (it closes the stream after it)."""


def master_url(master: str) -> str:
    """`host:5050`, `http://host:5050` or `https://…` → the base URL."""
    if "://" not in master:
        master = f"http://{master}"
    parts = urlsplit(master)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not a Mesos master address: {master!r}")
    return f"{parts.scheme}://{parts.netloc}"


def _value(x: Any) -> Dict:
    """An id given as a string or as {"value": …}."""
    return Dict(value=x) if isinstance(x, str) else Dict(x)


class MesosSchedulerDriver:
    def __init__(
        self,
        scheduler: Scheduler,
        framework: dict[str, Any],
        master: str | Callable[[], str],
        *,
        missed_heartbeats: int = 5,
        backoff_max: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self._scheduler = scheduler
        self._framework = Dict(framework)
        self._resolve = master if callable(master) else (lambda: master)
        self._missed = missed_heartbeats
        self._backoff_max = backoff_max
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream_id: str | None = None
        self._base: str | None = None
        self._response: http1.Response | None = None
        self.heartbeat_interval = DEFAULT_HEARTBEAT

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def framework_id(self) -> str | None:
        value = self._framework.id.value
        return str(value) if value else None

    def forget_framework_id(self) -> None:
        """After `ERROR "Framework has been removed"`: the next subscription asks for a new id."""
        with self._lock:
            self._framework.pop("id", None)

    @property
    def connected(self) -> bool:
        return self._stream_id is not None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mesos-scheduler", daemon=True)
        self._thread.start()

    def stop(self, failover: bool = True) -> None:
        """Stop the driver. With failover (always, in Berth) the master keeps the framework
        and its tasks for `failover_timeout`; without, TEARDOWN kills every task."""
        if not failover:
            self._call({"type": "TEARDOWN"})
        with self._lock:  # pairs with the check in _subscribe_once: no stream is missed
            self._stop.set()
            response = self._response
        if response is not None:
            interrupt(response)
        self.join()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- the event stream --------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            subscribed = False
            try:
                subscribed = self._subscribe_once()
            except Exception:  # any failure of one subscription is a reason to resubscribe
                log.exception("mesos subscription failed")
            finally:
                if self._stream_id is not None:
                    self._stream_id = None
                    self._callback("disconnected")
            if subscribed:
                backoff = 0.5
            if self._stop.is_set():
                break
            delay = backoff * (0.5 + random.random())  # noqa: S311 - jitter, not secrecy
            log.info("resubscribing to mesos in %.1fs", delay, extra={"delay": delay})
            self._stop.wait(delay)
            backoff = min(backoff * 2, self._backoff_max)

    def _subscribe_once(self) -> bool:
        """One SUBSCRIBE and its stream, to the end. True if it got as far as SUBSCRIBED."""
        base = self._base or master_url(self._resolve())
        with self._lock:
            body: dict[str, Any] = {
                "type": "SUBSCRIBE",
                "subscribe": {"framework_info": self._framework.to_dict()},
            }
            if self.framework_id:
                body["framework_id"] = {"value": self.framework_id}
        response = http1.request(
            http1.Endpoint.parse(base),
            "POST",
            SCHEDULER_PATH,
            json_body=body,
            headers={"Accept": "application/json"},
            connect_timeout=self._connect_timeout,
            timeout=self.heartbeat_interval * self._missed,
        )
        with self._lock:
            self._response = response
            stopping = self._stop.is_set()
        if stopping:
            response.close()
            return False
        with response:
            if response.status == 307:
                location = response.headers.get("location", "")
                self._base = master_url(location.lstrip("/")) if location else None
                log.info("mesos master redirects to %s", self._base)
                return False
            self._base = None
            if response.status != 200:
                log.error(
                    "mesos refused SUBSCRIBE: %s %s",
                    response.status,
                    response.text()[:500],
                    extra={"status": response.status},
                )
                return False
            stream_id = response.headers.get("mesos-stream-id")
            if not stream_id:
                log.error("mesos SUBSCRIBE answer has no Mesos-Stream-Id")
                return False
            with self._lock:
                self._base = base
                self._stream_id = stream_id
            subscribed = False
            decoder = Decoder()
            try:
                for chunk in response.chunks():
                    for record in decoder.feed(chunk):
                        event = Dict(json.loads(record))
                        if event.type == "SUBSCRIBED":
                            subscribed = True
                            self._on_subscribed(event.subscribed, response)
                        else:
                            self._dispatch(event)
                    if self._stop.is_set():
                        break
            except (OSError, RecordIOError, ValueError) as exc:
                log.warning(
                    "mesos event stream broke: %s", exc, extra={"error": type(exc).__name__}
                )
            return subscribed

    def _on_subscribed(self, subscribed: Dict, response: http1.Response) -> None:
        interval = float(subscribed.heartbeat_interval_seconds or DEFAULT_HEARTBEAT)
        self.heartbeat_interval = interval
        response.set_timeout(interval * self._missed)
        framework_id = subscribed.framework_id
        with self._lock:
            had_id = self.framework_id == framework_id.value
            self._framework.id = Dict(framework_id)
        log.info(
            "subscribed to mesos",
            extra={"framework_id": framework_id.value, "heartbeat": interval, "failover": had_id},
        )
        if had_id:
            self._callback("reregistered", subscribed.master_info)
        else:
            self._callback("registered", framework_id, subscribed.master_info)

    def _dispatch(self, event: Dict) -> None:
        kind = event.type
        if kind == "HEARTBEAT":
            return
        if kind == "OFFERS":
            self._callback("resourceOffers", list(event.offers.offers))
        elif kind == "RESCIND":
            self._callback("offerRescinded", event.rescind.offer_id)
        elif kind == "UPDATE":
            # item access: `update` (like `error`, `copy`, `items`) is also a dict method
            self._callback("statusUpdate", event["update"]["status"])
        elif kind == "MESSAGE":
            message = event.message
            data = base64.b64decode(message.data or "")
            self._callback("frameworkMessage", message.executor_id, message.agent_id, data)
        elif kind == "FAILURE":
            failure = event.failure
            if failure.executor_id:
                status = failure.status if isinstance(failure.status, int) else None
                self._callback("executorLost", failure.executor_id, failure.agent_id, status)
            else:
                self._callback("agentLost", failure.agent_id)
        elif kind == "ERROR":
            message = str(event["error"]["message"])
            log.error("mesos sent ERROR: %s", message)
            self._callback("error", message)
        else:
            log.debug("ignoring mesos event %s", kind)

    def _callback(self, name: str, *args: Any) -> None:
        """Run a scheduler callback; its exceptions are logged, never allowed to stop us."""
        try:
            getattr(self._scheduler, name)(self, *args)
        except Exception:
            log.exception("scheduler callback %s raised; carrying on", name)

    # -- calls -------------------------------------------------------------------------------

    def _call(self, call: dict[str, Any]) -> bool:
        with self._lock:
            stream_id, base, framework_id = self._stream_id, self._base, self.framework_id
        if stream_id is None or base is None or framework_id is None:
            log.warning("not subscribed to mesos: dropping %s", call["type"])
            return False
        status = post_call(
            http1.Endpoint.parse(base),
            SCHEDULER_PATH,
            {"framework_id": {"value": framework_id}, **call},
            {"Mesos-Stream-Id": stream_id, "Accept": "application/json"},
            self._connect_timeout,
            "mesos master",
        )
        return status == 202

    def acceptOffers(
        self, offer_ids: Sequence[Any], operations: Sequence[Any], filters: Any = None
    ) -> bool:
        accept: dict[str, Any] = {
            "offer_ids": [_value(o).to_dict() for o in offer_ids],
            "operations": [Dict(op).to_dict() for op in operations],
        }
        if filters is not None:
            accept["filters"] = Dict(filters).to_dict()
        return self._call({"type": "ACCEPT", "accept": accept})

    def launchTasks(
        self, offer_ids: Sequence[Any], tasks: Sequence[Any], filters: Any = None
    ) -> bool:
        operation = {"type": "LAUNCH", "launch": {"task_infos": [Dict(t).to_dict() for t in tasks]}}
        return self.acceptOffers(offer_ids, [operation], filters)

    def declineOffer(self, offer_ids: Sequence[Any], filters: Any = None) -> bool:
        decline: dict[str, Any] = {"offer_ids": [_value(o).to_dict() for o in offer_ids]}
        if filters is not None:
            decline["filters"] = Dict(filters).to_dict()
        return self._call({"type": "DECLINE", "decline": decline})

    def reviveOffers(self) -> bool:
        return self._call({"type": "REVIVE"})

    def suppressOffers(self) -> bool:
        return self._call({"type": "SUPPRESS"})

    def killTask(
        self, task_id: Any, agent_id: Any = None, grace_seconds: float | None = None
    ) -> bool:
        kill: dict[str, Any] = {"task_id": _value(task_id).to_dict()}
        if agent_id is not None:
            kill["agent_id"] = _value(agent_id).to_dict()
        if grace_seconds is not None:
            kill["kill_policy"] = {"grace_period": {"nanoseconds": int(grace_seconds * 1e9)}}
        return self._call({"type": "KILL", "kill": kill})

    def acknowledgeStatusUpdate(self, status: Any) -> bool:
        status = Dict(status)
        if not status.uuid:
            return True  # updates without a uuid (reconciliation answers) take no ack
        return self._call(
            {
                "type": "ACKNOWLEDGE",
                "acknowledge": {
                    "agent_id": status.agent_id.to_dict(),
                    "task_id": status.task_id.to_dict(),
                    "uuid": status.uuid,
                },
            }
        )

    def reconcileTasks(self, tasks: Iterable[Any]) -> bool:
        """Explicit reconciliation for the given statuses/tasks (task_id and agent_id kept);
        an empty list asks for implicit reconciliation of everything."""
        wanted = []
        for task in tasks:
            task = Dict(task)
            item: dict[str, Any] = {"task_id": task.task_id.to_dict()}
            if task.agent_id:
                item["agent_id"] = task.agent_id.to_dict()
            wanted.append(item)
        return self._call({"type": "RECONCILE", "reconcile": {"tasks": wanted}})

    def sendFrameworkMessage(self, executor_id: Any, agent_id: Any, data: bytes) -> bool:
        return self._call(
            {
                "type": "MESSAGE",
                "message": {
                    "agent_id": _value(agent_id).to_dict(),
                    "executor_id": _value(executor_id).to_dict(),
                    "data": base64.b64encode(data).decode(),
                },
            }
        )


def post_call(
    endpoint: http1.Endpoint,
    path: str,
    body: dict[str, Any],
    headers: Mapping[str, str],
    timeout: float,
    peer: str,
) -> int | None:
    """POST one v1 call (not SUBSCRIBE); the HTTP status, or None if `peer` was unreachable.
    Anything but 202 Accepted is logged with the peer's answer."""
    kind = body.get("type")
    try:
        with http1.request(
            endpoint,
            "POST",
            path,
            json_body=body,
            headers=headers,
            connect_timeout=timeout,
            timeout=timeout,
        ) as response:
            text = response.text(64 * 1024)
    except OSError as exc:
        log.warning("%s call %s failed: %s", peer, kind, type(exc).__name__)
        return None
    if response.status != 202:
        log.error(
            "%s refused %s: %s %s",
            peer,
            kind,
            response.status,
            text[:500],
            extra={"status": response.status},
        )
    return response.status


def interrupt(response: http1.Response) -> None:
    """Wake the thread blocked reading an event stream; it closes the stream itself."""
    response.interrupt()
