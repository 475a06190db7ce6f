"""The framework's scheduler: one thread that owns all scheduling state and makes what the
formations say should run, run.

Threads: the driver's thread only calls `Events`' callbacks, which put events on a queue. The
scheduler thread (`Scheduler.run`) drains that queue, saves task state to ZooKeeper, and only
then acknowledges status updates; it reads the desired state (apps, releases, formations), asks
`plan.plan` what to do with the offers it holds, and acts through the driver (launch, kill,
decline, SUPPRESS/REVIVE, RECONCILE). It stops at once when its fence is set (leadership lost or
shutdown), leaving the driver to fail over: never TEARDOWN.

Rules beyond plan.py:
- after every (re)registration: explicit reconciliation of the tasks it knows, then implicit;
  implicit again every `reconcile_every` seconds; a task the master reports that Berth does not
  know is killed;
- FAILED, or FINISHED of a formation process, is a crash: the slot backs off (plan.py);
  LOST/GONE/DROPPED/ERROR/UNREACHABLE are replaced at once;
- a task launched with its process type's health check (checks.py); a release whose tasks
  end `deploy_attempts` times without ever having been healthy (crashed at boot, or no check
  passed within its startup time) while an older release still serves is rolled back: a new
  release copying the serving one, its description saying why; the failed one never took
  traffic, since the router only routes to healthy tasks;
- apps are planned only from a complete, successful read of the desired state: a ZooKeeper
  hiccup never looks like "every app was deleted".
- platform lines go to the apps' logs (berth logd): releases and scaling (loglines.py),
  crashes, and deploys started and finished (deploylog.py).
- one-off runs (runs.py): a pending run is launched once (plan.py) and its record marked
  launched; its task never backs off, never counts as a failed start, is never replaced; when
  the task ends (or is gone: after a restart or failover too) the record is finished with its
  exit code. An attached run's executor gets the API's rendezvous URL and the run's secret.
Must not import berth.api, berth.cli or berth.executor.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from addict import Dict

from berth.framework import checks, deploylog, mesos, registry
from berth.framework.deploylog import Wanted
from berth.framework.errors import BerthError, Conflict
from berth.framework.loglines import AppState, crash_text, state_changes
from berth.framework.logship import LogLink
from berth.framework.model import (
    DEFAULT_CPUS,
    DEFAULT_MEMORY_MB,
    TERMINAL_STATES,
    Release,
    Task,
)
from berth.framework.plan import (
    Backoff,
    Desired,
    Offer,
    PendingRun,
    Plan,
    Resources,
    Unplaced,
    backoff_after_exit,
    plan,
)
from berth.framework.registry import Credentials
from berth.framework.runs import FINISHED as RUN_FINISHED
from berth.framework.runs import LAUNCHED as RUN_LAUNCHED
from berth.framework.runs import PENDING as RUN_PENDING
from berth.framework.runs import PROCESS as RUN
from berth.framework.runs import Run
from berth.framework.state import Store
from berth.framework.taskinfo import HealthCheck, Payload, build_task_info, task_env

log = logging.getLogger(__name__)

STATES = {
    "TASK_STAGING": "staging",
    "TASK_STARTING": "starting",
    "TASK_RUNNING": "running",
    "TASK_KILLING": "killing",
    "TASK_FINISHED": "finished",
    "TASK_FAILED": "failed",
    "TASK_KILLED": "killed",
    "TASK_ERROR": "error",
    "TASK_LOST": "lost",
    "TASK_DROPPED": "dropped",
    "TASK_GONE": "gone",
    "TASK_GONE_BY_OPERATOR": "gone",
    "TASK_UNKNOWN": "gone",
    "TASK_UNREACHABLE": "unreachable",
}
CRASHES = frozenset({"failed", "finished"})
MAX_ROLLBACK_DESCRIPTION = 300
REVIVE_EVERY = 1.0  # at most one REVIVE a second; each one clears every offer filter


@dataclass(frozen=True, slots=True)
class Options:
    instance: str  # this Berth's id: labels its containers
    grace_seconds: float = 30.0
    reconcile_every: float = 600.0
    reconcile_retry: float = 5.0  # first retry of unanswered explicit reconciliation
    reconcile_retry_max: float = 600.0
    # Desired state is re-read when ZooKeeper says it changed (watches on the apps, their
    # formations, limits, restarts and runs), and at least this often (TCP routes, older apps).
    desired_every: float = 5.0
    executor_command: list[str] | None = None
    decline_busy: float = 5.0  # refuse_seconds when something waits for a better offer
    decline_idle: float = 120.0
    # A serving web task is taken out of the router first (state "killing" saved, the router
    # drains it) and killed this many seconds later, so requests in flight finish.
    drain_seconds: float = 3.0
    # A release whose tasks fail this many starts (never healthy) is rolled back, if an older
    # release is serving.
    deploy_attempts: int = 3
    # Berth's registry (framework/registry.py): HOST:PORT and its credentials, given to the
    # executors of tasks whose image lives there so they can pull it. None: no registry.
    registry: str = ""
    registry_credentials: Credentials | None = None
    # Where executors of attached one-off runs reach the API's rendezvous (settings.api_url;
    # "" = none: runs are launched detached).
    api_url: str = ""
    # A task no offer has had room for this long is reported (app log and server log) once:
    # a full machine or cluster must not look like a stuck deploy.
    report_waiting_after: float = 15.0


class Events(mesos.Scheduler):
    """The driver's callbacks: each becomes an event on the queue, nothing more."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[str, tuple[Any, ...]]] = queue.Queue()

    def _put(self, kind: str, *args: Any) -> None:
        self.queue.put((kind, args))

    def registered(self, driver: Any, framework_id: Dict, master_info: Dict) -> None:
        self._put("registered", str(framework_id.value))

    def reregistered(self, driver: Any, master_info: Dict) -> None:
        self._put("registered", None)

    def disconnected(self, driver: Any) -> None:
        self._put("disconnected")

    def resourceOffers(self, driver: Any, offers: list[Dict]) -> None:
        self._put("offers", offers)

    def offerRescinded(self, driver: Any, offer_id: Dict) -> None:
        self._put("rescind", str(offer_id.value))

    def statusUpdate(self, driver: Any, status: Dict) -> None:
        self._put("update", status)

    def error(self, driver: Any, message: str) -> None:
        self._put("error", message)


def to_offer(offer: Dict) -> Offer:
    cpus = mem = disk = 0.0
    ports: list[tuple[int, int]] = []
    for r in offer.resources or []:
        if r.name == "cpus":
            cpus += float(r.scalar.value)
        elif r.name == "mem":
            mem += float(r.scalar.value)
        elif r.name == "disk":
            disk += float(r.scalar.value)
        elif r.name == "ports":
            ports.extend((int(x.begin), int(x.end)) for x in r.ranges.range or [])
    return Offer(
        id=str(offer.id.value),
        agent_id=str(offer.agent_id.value),
        hostname=str(offer.hostname),
        resources=Resources(cpus, mem, disk),
        ports=tuple(ports),
    )


class Scheduler:
    def __init__(
        self,
        store: Store,
        events: Events,
        driver: mesos.SchedulerDriver,
        options: Options,
        clock: Callable[[], float] = time.time,
        logs: LogLink | None = None,
    ) -> None:
        self._store = store
        self._events = events
        self._driver = driver
        self._options = options
        self._clock = clock
        self._logs = logs  # berth logd: executors' log tokens, platform events
        self._announced: dict[str, AppState] | None = None  # releases, formations told to logd
        self._deploys: dict[str, int] | None = None  # app → release whose deploy is followed
        self._tasks: dict[str, Task] = {}
        self._backoffs: dict[tuple[str, str, int], Backoff] = {}
        self._offers: dict[str, Offer] = {}
        self._desired: list[Desired] | None = None
        self._releases: dict[tuple[str, int], Release] = {}
        self._desired_at = 0.0
        self._reconciled_at = 0.0
        self._suppressed = False
        self._revived_at = 0.0
        self._registered = False
        self._framework_id = ""
        # Explicit reconciliation: tasks the master has not answered about yet, retried with
        # truncated exponential backoff (it may take minutes to relearn tasks after failover).
        self._unanswered: set[str] = set()
        self._retry_at = 0.0
        self._retry_delay = 0.0
        self._draining: dict[str, float] = {}  # task id → when to send its KILL
        self._failed_starts: dict[tuple[str, int], int] = {}  # (app, release) → count
        self._routed: dict[str, set[str]] = {}  # app → process types TCP routes point at
        self._runs: dict[tuple[str, int], Run] = {}  # (app, number) → pending one-off runs
        self._watch = self._desired_changed  # one callable: kazoo keeps each watcher once
        # (app, its created_at: a new app of the same name starts again) → runs known
        # finished, not read again
        self._finished_runs: dict[tuple[str, str], set[int]] = {}
        # (app, process, index, release) → since when no offer has had room for it; reported
        self._waiting_since: dict[tuple[str, str, int, int], float] = {}
        self._waits_reported: set[tuple[str, str, int, int]] = set()

    # -- the loop ----------------------------------------------------------------------------

    def run(self, fence: threading.Event) -> None:
        """Until the fence is set: handle events, then plan and act."""
        for task in self._store.list_tasks():
            self._tasks[task.id] = task
        log.info("scheduler starting", extra={"tasks": len(self._tasks)})
        while not fence.is_set():
            try:
                kind, args = self._events.queue.get(timeout=0.5)
            except queue.Empty:
                pass
            else:
                self._handle(kind, args)
                while not fence.is_set():
                    try:
                        kind, args = self._events.queue.get_nowait()
                    except queue.Empty:
                        break
                    self._handle(kind, args)
            if fence.is_set():
                break
            try:
                self._step()
            except BerthError as exc:  # ZooKeeper away: act on nothing this round
                log.warning("scheduling round skipped: %s", exc.message)
        log.info("scheduler stopped acting")

    def _desired_changed(self, event: Any) -> None:
        """A ZooKeeper watch (kazoo's thread): desired state changed; re-read it now."""
        self._events.queue.put(("stale", ()))

    def _on_stale(self) -> None:
        self._desired = None

    def _handle(self, kind: str, args: tuple[Any, ...]) -> None:
        try:
            getattr(self, f"_on_{kind}")(*args)
        except BerthError as exc:
            log.error("could not handle %s: %s", kind, exc.message)

    # -- events ------------------------------------------------------------------------------

    def _on_registered(self, framework_id: str | None) -> None:
        if framework_id is not None:
            self._store.set_framework_id(framework_id)
        self._framework_id = framework_id or self._store.framework_id() or ""
        self._registered = True
        self._offers.clear()
        self._suppressed = False
        self._unanswered = {t.id for t in self._tasks.values() if t.live and t.agent_id}
        self._retry_delay = self._options.reconcile_retry
        self._reconcile_unanswered()
        self._driver.reconcileTasks([])
        self._reconciled_at = self._clock()

    def _reconcile_unanswered(self) -> None:
        tasks = [self._tasks[i] for i in sorted(self._unanswered) if i in self._tasks]
        if tasks:
            self._driver.reconcileTasks(
                [{"task_id": {"value": t.id}, "agent_id": {"value": t.agent_id}} for t in tasks]
            )
        self._retry_at = self._clock() + self._retry_delay

    def _on_disconnected(self) -> None:
        self._registered = False
        self._offers.clear()  # offers die with the connection

    def _on_offers(self, offers: list[Dict]) -> None:
        for offer in offers:
            converted = to_offer(offer)
            self._offers[converted.id] = converted

    def _on_rescind(self, offer_id: str) -> None:
        self._offers.pop(offer_id, None)

    def _on_error(self, message: str) -> None:
        if "removed" in message.lower():
            log.error("the master removed this framework; registering anew")
            self._store.set_framework_id(None)
            forget = getattr(self._driver, "forget_framework_id", None)
            if forget is not None:
                forget()

    def _on_update(self, status: Dict) -> None:
        task_id = str(status.task_id.value)
        self._unanswered.discard(task_id)
        state = STATES.get(str(status.state), "gone")
        now = self._clock()
        task = self._tasks.get(task_id)
        if task is None:
            if state not in TERMINAL_STATES:
                log.warning("killing unknown task %s", task_id, extra={"task": task_id})
                agent = str(status.agent_id.value) if status.agent_id else None
                self._driver.killTask(task_id, agent, self._options.grace_seconds)
            self._driver.acknowledgeStatusUpdate(status)
            return
        data = _status_data(status)
        if task_id in self._draining and state not in TERMINAL_STATES:
            state = "killing"  # still draining: the router must not take it back
        updated = replace(
            task,
            state=state,
            agent_id=str(status.agent_id.value) if status.agent_id else task.agent_id,
            healthy=status.healthy if isinstance(status.healthy, bool) else task.healthy,
            updated_at=now,
            started_at=task.started_at or (now if state == "running" else 0.0),
            message=str(status.message or task.message),
            exit_code=data.get("exit_code", task.exit_code),
        )
        if state in CRASHES and task.state != "killing" and task.process != RUN:
            slot = task.slot
            backoff = backoff_after_exit(
                self._backoffs.get(slot), task.release, now, now - (task.started_at or now)
            )
            self._backoffs[slot] = backoff
            updated = replace(updated, message=_crash_message(updated, data, backoff, now))
            if self._logs is not None:
                what = crash_text(state, data.get("exit_code"), bool(data.get("oom")))
                restart = updated.message.rpartition("; ")[2]
                self._logs.event(task.app, f"{task.process}.{task.index}", f"{what}; {restart}")
            if not task.started_at:  # it never passed its health check
                self._failed_start(updated, str(status.message or ""))
        self._tasks[task_id] = updated
        self._store.put_task(updated)  # saved before acknowledged
        if task.process == RUN and state in TERMINAL_STATES:
            self._desired = None  # the run's record is finished (exit code) at the re-read
        self._driver.acknowledgeStatusUpdate(status)
        log.info(
            "task %s %s",
            task_id,
            state,
            extra={"task": task_id, "state": state, "reason": str(status.reason or "")},
        )

    # -- planning ----------------------------------------------------------------------------

    def _step(self) -> None:
        now = self._clock()
        if self._registered and now - self._reconciled_at > self._options.reconcile_every:
            self._driver.reconcileTasks([])
            self._reconciled_at = now
        if self._registered and self._unanswered and now >= self._retry_at:
            self._retry_delay = min(self._retry_delay * 2, self._options.reconcile_retry_max)
            self._reconcile_unanswered()
        if self._desired is None or now - self._desired_at > self._options.desired_every:
            self._desired = self._read_desired()
            self._announce(self._desired)
            self._desired_at = now
        self._forget_ended(now)
        if not self._registered:
            return
        self._honour_stops(now)
        self._send_drained_kills(now)
        decided = plan(
            self._desired, self._tasks.values(), list(self._offers.values()), self._backoffs, now
        )
        self._act(decided, now)
        self._report_waits(decided.waiting, now)
        self._report_deploys()

    def _read_desired(self) -> list[Desired]:
        desired = []
        for app in self._store.list_apps(self._watch, watch_each=True):
            release = self._release(app.name, app.release)
            formation = self._store.get_formation(app.name, self._watch)
            if release.artifact is None:
                formation = {}  # nothing to run until a build or an image deploy
            limits = self._store.get_limits(app.name, self._watch)
            needs = {
                process: Resources(
                    cpus=float(limits.get(process, {}).get("cpus", DEFAULT_CPUS)),
                    mem=float(limits.get(process, {}).get("memory_mb", DEFAULT_MEMORY_MB)),
                )
                for process in formation
            }
            restarts = self._store.get_restarts(app.name, self._watch)
            runs = self._pending_runs(app.name, app.created_at)
            desired.append(Desired(app.name, release.version, formation, needs, restarts, runs))
        routed: dict[str, set[str]] = {}
        for route in self._store.all_tcp_routes():
            routed.setdefault(route.app, set()).add(route.process)
        self._routed = routed
        return desired

    def _pending_runs(self, app: str, created_at: str) -> list[PendingRun]:
        """The app's runs still to launch; and runs whose task has ended (or is gone, as after
        a restart) are finished here, with its exit code."""
        pending = []
        live = {t.index: t for t in self._tasks.values() if t.app == app and t.process == RUN}
        if len(self._finished_runs) > 10000:  # apps come and go: forget what may be stale
            self._finished_runs.clear()
        finished = self._finished_runs.setdefault((app, created_at), set())
        for run in self._store.list_runs(app, skip=finished, watch=self._watch):
            key = (app, run.number)
            self._runs.pop(key, None)
            if run.state == RUN_FINISHED:
                finished.add(run.number)
                continue
            task = self._tasks.get(run.task_id) if run.task_id else live.get(run.number)
            if run.state == RUN_PENDING and task is None:
                self._runs[key] = run
                pending.append(
                    PendingRun(run.number, run.release, Resources(run.cpus, run.memory_mb))
                )
            elif task is None or not task.live:
                self._finish_run(run, task)
            elif run.state == RUN_PENDING:  # launched, but the framework stopped before saying so
                self._mark_launched(app, run.number, task.id)
        return pending

    def _mark_launched(self, app: str, number: int, task_id: str) -> None:
        def change(run: Run) -> Run | None:
            if run.state != RUN_PENDING:
                return None
            return replace(run, state=RUN_LAUNCHED, task_id=task_id)

        self._store.change_run(app, number, change)

    def _finish_run(self, run: Run, task: Task | None) -> None:
        outcome = task.state if task is not None else "lost"
        code = task.exit_code if task is not None else None
        message = task.message if task is not None else "its task is gone"

        def change(current: Run) -> Run | None:
            if current.state == RUN_FINISHED:
                return None
            return replace(
                current,
                state=RUN_FINISHED,
                secret="",
                exit_code=code,
                outcome=outcome,
                message=message,
            )

        self._store.change_run(run.app, run.number, change)
        log.info(
            "run finished",
            extra={"app": run.app, "run": run.number, "outcome": outcome, "exit_code": code},
        )

    def _announce(self, desired: list[Desired]) -> None:
        """Platform log lines for new releases and formation changes (loglines.py)."""
        if self._logs is None:
            return
        now = {
            d.app: AppState(
                d.release, self._release(d.app, d.release).description, dict(d.formation)
            )
            for d in desired
        }
        for app, text in state_changes(self._announced, now):
            self._logs.event(app, "", text)
        self._announced = now

    def _report_deploys(self) -> None:
        """`Deploy of vN started (…)` / `finished` platform lines (deploylog.py)."""
        if self._logs is None or self._desired is None:
            return
        wanted = [Wanted(d.app, d.release, d.formation) for d in self._desired]
        self._deploys, lines = deploylog.progress(self._deploys, wanted, self._tasks.values())
        for app, text in lines:
            self._logs.event(app, "", text)

    def _report_waits(self, waiting: list[Unplaced], now: float) -> None:
        """Say once when a task has waited `report_waiting_after` seconds for an offer with
        room for it (a deploy onto a full machine waits, it does not fail)."""
        keys = {(u.app, u.process, u.index, u.release): u for u in waiting}
        self._waiting_since = {k: self._waiting_since.get(k, now) for k in keys}
        self._waits_reported &= set(keys)
        for key, unplaced in keys.items():
            waited = now - self._waiting_since[key]
            if key in self._waits_reported or waited < self._options.report_waiting_after:
                continue
            self._waits_reported.add(key)
            needs = unplaced.needs
            name = f"{unplaced.process}.{unplaced.index}"
            text = (
                f"{name} of v{unplaced.release} is waiting for resources: no offer has had room"
                f" for it for {waited:.0f}s (it needs {needs.cpus:g} cpus and {needs.mem:.0f} MB"
                " with its executor); scale something down or add an agent"
            )
            log.warning(
                "a task is waiting for resources",
                extra={"app": unplaced.app, "slot": name, "release": unplaced.release},
            )
            if self._logs is not None:
                self._logs.event(unplaced.app, name, text)

    def _honour_stops(self, now: float) -> None:
        """`ps:stop` requests: kill the task (the plan replaces it), drop the request."""
        for task_id in self._store.stop_requests():
            task = self._tasks.get(task_id)
            if task is not None and task.live and task.state != "killing":
                self._kill(task, now)
            self._store.clear_stop(task_id)

    def _release(self, app: str, version: int) -> Release:
        key = (app, version)
        if key not in self._releases:
            self._releases[key] = self._store.get_release(app, version)
        return self._releases[key]

    def _act(self, decided: Plan, now: float) -> None:
        by_offer: dict[str, list[dict[str, Any]]] = {}
        stored_checks = {a: self._store.get_checks(a) for a in {x.app for x in decided.launches}}
        for launch in decided.launches:
            routed = self._routed.get(launch.app, set())
            check = checks.effective(stored_checks[launch.app], launch.process, routed)
            release = self._release(launch.app, launch.release)
            # an image's EXPOSEd port is where its web process listens inside its container
            inside = (release.artifact.port or 0) if release.artifact else 0
            if launch.process != "web":
                inside = 0
            assert release.artifact is not None
            run = None
            if launch.process == RUN:
                run = self._runs.pop((launch.app, launch.index), None)
            command = release.process_types.get(launch.process) or ""
            payload = Payload(
                app=launch.app,
                process=launch.process,
                index=launch.index,
                release=launch.release,
                image=release.artifact.image,  # pinned by digest when pushed to a registry
                command=["/bin/sh", "-c", command] if command else None,
                env=task_env(
                    release.config,
                    launch.app,
                    launch.process,
                    launch.index,
                    launch.release,
                    inside or launch.port,
                ),
                port=launch.port,
                container_port=inside,
                memory_mb=int(launch.resources.mem),
                cpus=launch.resources.cpus,
                instance=self._options.instance,
                grace_seconds=self._options.grace_seconds,
                health=HealthCheck(check.type, check.path, float(check.startup)),
            )
            if run is not None:  # a one-off run: its own argv, no health check, no restarts
                payload = replace(
                    payload, command=list(run.command), health=HealthCheck("none"), tty=run.tty
                )
                if run.attach and self._options.api_url:
                    payload = replace(
                        payload,
                        attach_url=f"{self._options.api_url}/v1/apps/{run.app}/runs/"
                        f"{run.number}/rendezvous",
                        attach_secret=self._store.run_secret(run),
                    )
            if self._logs is not None:  # the executor ships the output to berth logd
                token = self._logs.task_token(
                    launch.app, f"{launch.process}.{launch.index}", launch.release
                )
                payload = replace(payload, logs_url=self._logs.url, logs_token=token)
            creds = self._options.registry_credentials
            if creds is not None and registry.under(self._options.registry, payload.image):
                # the executor pulls the image with these, like config, in TaskInfo.data
                payload = replace(
                    payload, registry_user=creds.username, registry_password=creds.password
                )
            info = build_task_info(
                launch,
                self._framework_id,
                payload,
                executor_command=self._options.executor_command,
            )
            task = Task(
                id=info["task_id"]["value"],
                app=launch.app,
                process=launch.process,
                index=launch.index,
                release=launch.release,
                state="staging",
                agent_id=launch.agent_id,
                hostname=launch.hostname,
                port=launch.port,
                launched_at=now,
                updated_at=now,
            )
            self._tasks[task.id] = task
            self._store.put_task(task)  # known before launched: an update can't be "unknown"
            if run is not None:
                self._mark_launched(run.app, run.number, task.id)
                # the cached desired state still lists it as pending: re-read before the
                # next plan, or a run that ends at once would be launched again
                self._desired = None
            by_offer.setdefault(launch.offer_id, []).append(info)
        for offer_id, infos in by_offer.items():
            self._offers.pop(offer_id, None)
            if not self._driver.launchTasks([offer_id], infos, {"refuse_seconds": 1.0}):
                for info in infos:
                    self._lost(info["task_id"]["value"], "the launch did not reach the master")
        for task_id in decided.kills:
            self._kill(self._tasks[task_id], now)
        if decided.declines:
            refuse = (
                self._options.decline_busy if decided.wants_offers else self._options.decline_idle
            )
            for offer_id in decided.declines:
                self._offers.pop(offer_id, None)
            self._driver.declineOffer(decided.declines, {"refuse_seconds": refuse})
        if decided.wants_offers and self._suppressed and now - self._revived_at > REVIVE_EVERY:
            self._driver.reviveOffers()
            self._suppressed = False
            self._revived_at = now
        elif not decided.wants_offers and not self._suppressed and not decided.launches:
            self._driver.suppressOffers()
            self._suppressed = True

    def _kill(self, task: Task, now: float) -> None:
        """Kill a task. One the router sends requests to is drained first: its "killing" state
        is saved (the router stops sending it new requests) and the KILL follows
        `drain_seconds` later, from `_send_drained_kills`."""
        killing = replace(task, state="killing", updated_at=now)
        self._tasks[task.id] = killing
        routed = task.process == "web" or task.process in self._routed.get(task.app, set())
        if routed and task.serving and self._options.drain_seconds > 0:
            self._store.put_task(replace(killing, message="draining"))
            self._draining[task.id] = now + self._options.drain_seconds
            log.info("draining task %s before the kill", task.id, extra={"task": task.id})
            return
        self._driver.killTask(task.id, task.agent_id or None, self._options.grace_seconds)

    def _send_drained_kills(self, now: float) -> None:
        for task_id, due in list(self._draining.items()):
            if now < due:
                continue
            del self._draining[task_id]
            task = self._tasks.get(task_id)
            if task is not None and task.live:
                self._driver.killTask(task_id, task.agent_id or None, self._options.grace_seconds)

    def _failed_start(self, task: Task, why: str) -> None:
        """Count a task of `task.release` that ended before it was ever healthy; at
        `deploy_attempts` roll back to the newest older release still serving, if any."""
        key = (task.app, task.release)
        count = self._failed_starts.get(key, 0) + 1
        self._failed_starts = {
            k: v for k, v in self._failed_starts.items() if k[0] != task.app or k[1] >= key[1]
        }
        self._failed_starts[key] = count
        if count < self._options.deploy_attempts:
            return
        serving = [
            t.release
            for t in self._tasks.values()
            if t.app == task.app and t.release < task.release and t.serving and t.process != RUN
        ]
        extra = {"app": task.app, "release": task.release, "attempts": count}
        if not serving:
            if count == self._options.deploy_attempts:
                log.warning("a release keeps failing to start; none older is serving", extra=extra)
            return
        target = max(serving)
        description = (
            f"Rollback to v{target}: v{task.release} failed to start {count} times"
            f" ({task.process}.{task.index}: {why or task.message})"
        )
        if len(description) > MAX_ROLLBACK_DESCRIPTION:
            description = description[: MAX_ROLLBACK_DESCRIPTION - 1] + "…"
        try:
            release = self._store.rollback(
                task.app,
                target,
                "berth",
                description=description,
                only_if_newest=task.release,
            )
        except Conflict as e:  # deployed again meanwhile: that release gets its own chance
            log.info("no rollback: %s", e.message, extra=extra)
        else:
            log.warning(
                "release rolled back: %s", description, extra={**extra, "to": release.version}
            )
        del self._failed_starts[key]
        self._desired = None  # plan from the new release now

    def _lost(self, task_id: str, message: str) -> None:
        task = replace(self._tasks[task_id], state="lost", message=message)
        self._tasks[task_id] = task
        self._store.put_task(task)

    def _forget_ended(self, now: float, keep: float = 300.0) -> None:
        """Ended tasks stay visible (`ps` shows crashes) for `keep` seconds, or until their
        slot has a newer task; then their records go."""
        live_slots = {t.slot for t in self._tasks.values() if t.live}
        for task in list(self._tasks.values()):
            if task.live:
                continue
            if now - task.updated_at > keep or task.slot in live_slots:
                del self._tasks[task.id]
                self._store.delete_task(task.id)


def _status_data(status: Dict) -> dict[str, Any]:
    """The executor's JSON in TaskStatus.data (exit code, OOM, port, container)."""
    if not status.data:
        return {}
    try:
        data = json.loads(base64.b64decode(str(status.data)))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _crash_message(task: Task, data: dict[str, Any], backoff: Backoff, now: float) -> str:
    if data.get("never_healthy"):
        what = f"never became healthy: {task.message}"
    elif data.get("oom"):
        what = "crashed: out of memory"
    elif task.state == "finished":
        what = "exited (code 0)"
    else:
        what = f"crashed (exit {data.get('exit_code', '?')})"
    wait = backoff.not_before - now
    return f"{what}; restarting in {wait:.0f}s" if wait >= 1 else f"{what}; restarting now"
