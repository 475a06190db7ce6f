"""Local mode's agent: this machine as the one Mesos agent, without Mesos.

Responsibility: what a Mesos agent does for custom HTTP executors, and nothing else —
- serve the agent side of the v1 executor API (`POST /api/v1/executor`) on a real loopback
  port: SUBSCRIBE opens a chunked RecordIO stream of events (SUBSCRIBED, LAUNCH, KILL,
  ACKNOWLEDGED, MESSAGE, SHUTDOWN, HEARTBEAT); UPDATE and MESSAGE calls are answered 202.
  Each executor proves who it is with its own token (MESOS_EXECUTOR_AUTHENTICATION_TOKEN, as
  Mesos's executor authentication): no other local process may hear its task's config or
  speak for it; an executor this agent does not know is told to SHUTDOWN;
- start one executor process per task, from `TaskInfo.executor.command` (an argv, never a
  shell), in its sandbox `data_dir/sandboxes/<executor id>` (its cwd; stdout and stderr are
  files there), in a session of its own, with the MESOS_* environment a Mesos agent gives
  (checkpointing on, so an executor outlives this agent and resubscribes with backoff);
- keep every status update until the scheduler acknowledges it, one update per task in flight
  (the next goes after the previous one's ack), resend the one in flight whenever a scheduler
  registers and every 10 s doubling to 10 min while unacknowledged, and tell the executor
  ACKNOWLEDGED once the scheduler has acknowledged;
- notice an executor that exits (its own child, or an adopted one by pid and start time) and,
  if its task had no terminal update, report TASK_FAILED / REASON_EXECUTOR_TERMINATED;
- checkpoint to `data_dir` (JSON, written atomically) and recover from it after a restart,
  listening on the recorded port again: executors that resubscribe are adopted (never
  relaunched); one whose process is gone is failed (REASON_EXECUTOR_TERMINATED); one alive
  but silent after `reregistration_timeout` is killed (REASON_EXECUTOR_REREGISTRATION_TIMEOUT),
  as is a new one that never subscribes (REASON_EXECUTOR_REGISTRATION_TIMEOUT).

The scheduler side — offers, validation, reconciliation — is the driver's
(`local_driver.py`). Local mode runs one task per executor (Berth's executor is built so).

Checkpoint layout:

    data_dir/agent.json              {"agent_id", "port", "framework": FrameworkInfo}
    data_dir/tasks/<task id>.json    {"framework_id", "task" (TaskInfo), "status" (latest),
                                      "pending" (unacknowledged updates, oldest first),
                                      "seen" (update uuids received), "pid", "pid_started"
                                      (guards against pid reuse), "container_id", "token"}
    data_dir/sandboxes/<executor id>/   the executor's cwd, MESOS_SANDBOX; stdout, stderr

Directories are 0700 and files 0600 (TaskInfos carry apps' config). A task's file goes
once its terminal update is acknowledged and its executor has exited; sandboxes stay (their
logs are what a person looks at after a crash).

Threads: "local-agent-http" accepts connections and runs one handler thread per connection
(an executor's event stream holds its thread while it lasts); "local-agent-monitor" watches
executor processes and deadlines and retries updates. All state is behind one lock. The
`AgentSink` (the driver) is called with that lock held, so updates reach it in order: its
methods must only queue and must not call back into the agent.

Must not import berth.executor, berth.api or berth.cli (import-linter contract
"framework-is-the-base"). Speaks plain JSON dicts, not addict.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import os
import queue
import secrets
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from berth.framework.errors import Invalid, Unavailable
from berth.framework.recordio import encode

log = logging.getLogger(__name__)

EXECUTOR_PATH = "/api/v1/executor"
TERMINAL_STATES = frozenset(
    {
        "TASK_FINISHED",
        "TASK_FAILED",
        "TASK_KILLED",
        "TASK_ERROR",
        "TASK_LOST",
        "TASK_DROPPED",
        "TASK_GONE",
        "TASK_GONE_BY_OPERATOR",
    }
)
TASK_STATES = TERMINAL_STATES | {
    "TASK_STAGING",
    "TASK_STARTING",
    "TASK_RUNNING",
    "TASK_KILLING",
    "TASK_UNREACHABLE",
    "TASK_UNKNOWN",
}
MAX_ID_BYTES = 250  # ids name files: `<task id>.json` must fit in 255 bytes
MAX_BODY_BYTES = 16 * 1024 * 1024
STATUS_RETRY_MIN, STATUS_RETRY_MAX = 10.0, 600.0  # as Mesos's status update manager
MAX_SEEN = 100  # update uuids remembered per task, to recognise resent ones
MAX_COMPLETED = 1000  # ended tasks remembered (in memory) for reconciliation


class AgentSink(Protocol):
    """Where the agent reports to: the driver. Called with the agent's lock held, from the
    agent's threads: implementations only queue, never block, never call the agent."""

    def status_update(self, status: dict[str, Any]) -> None: ...
    def framework_message(self, executor_id: str, data: bytes) -> None: ...
    def executor_exited(self, executor_id: str, wait_status: int | None) -> None: ...


def id_error(value: object, what: str) -> str | None:
    """Why `value` cannot be a task or executor id here (Mesos's rules, plus a length that
    keeps file names legal), or None if it can."""
    if not isinstance(value, str) or not value:
        return f"{what} is missing"
    if value in (".", "..") or "/" in value or "\\" in value:
        return f"{what} {value!r} contains a path separator or is '.' or '..'"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return f"{what} {value!r} contains control characters"
    if len(value.encode()) > MAX_ID_BYTES:
        return f"{what} is longer than {MAX_ID_BYTES} bytes"
    return None


def new_uuid() -> str:
    """A status update uuid as the v1 JSON API carries it: 16 random bytes, base64."""
    return base64.b64encode(uuid.uuid4().bytes).decode()


def mesos_duration(seconds: float) -> str:
    """Seconds → a Mesos duration string ("15mins" style parsers accept "900secs")."""
    ns = round(seconds * 1e9)
    return f"{ns // 1_000_000_000}secs" if ns % 1_000_000_000 == 0 else f"{ns}ns"


@dataclass(slots=True)
class _Run:
    """One task and its executor. The first fields are checkpointed; the rest live in memory."""

    framework_id: str
    task: dict[str, Any]
    status: dict[str, Any]
    container_id: str
    token: str  # the executor's MESOS_EXECUTOR_AUTHENTICATION_TOKEN
    pending: list[dict[str, Any]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    pid: int | None = None
    pid_started: int | None = None
    # -- memory only
    proc: subprocess.Popen[bytes] | None = None
    stream: queue.Queue[dict[str, Any] | None] | None = None
    subscribed: bool = False  # has subscribed to this agent (since it started)
    exited: bool = False
    spawned_at: float = 0.0  # monotonic; for the registration timeout
    recover_until: float | None = None  # recovered from a checkpoint: resubscribe by then
    overdue: bool = False  # missed its (re)subscription deadline: killed, waiting for exit
    kill_grace: float | None = None  # a KILL waiting for the executor to resubscribe
    kill_waiting: bool = False
    retry_at: float | None = None
    retry_delay: float = STATUS_RETRY_MIN

    @property
    def task_id(self) -> str:
        return str(self.task["task_id"]["value"])

    @property
    def executor_id(self) -> str:
        return str(self.task["executor"]["executor_id"]["value"])

    @property
    def state(self) -> str:
        return str(self.status["state"])

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_json(self) -> dict[str, Any]:
        return {
            "framework_id": self.framework_id,
            "task": self.task,
            "status": self.status,
            "container_id": self.container_id,
            "token": self.token,
            "pending": self.pending,
            "seen": self.seen,
            "pid": self.pid,
            "pid_started": self.pid_started,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> _Run:
        pid, started = raw.get("pid"), raw.get("pid_started")
        if not isinstance(pid, int | None) or not isinstance(started, int | None):
            raise ValueError("pid and pid_started must be integers")
        return cls(
            framework_id=str(raw["framework_id"]),
            task=dict(raw["task"]),
            status=dict(raw["status"]),
            container_id=str(raw["container_id"]),
            token=str(raw["token"]),
            pending=list(raw.get("pending") or []),
            seen=[str(u) for u in raw.get("seen") or []],
            pid=pid,
            pid_started=started,
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True  # rebind the recorded port at once after a restart

    def __init__(self, address: tuple[str, int], agent: LocalAgent) -> None:
        self.agent = agent
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        TCPServer.server_bind(self)  # skip HTTPServer's reverse DNS lookup of the host

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("executor API request failed", extra={"client": str(client_address)})

    def close_connections(self) -> None:
        """Cut every open connection, as a process exiting would: executors must not keep
        talking to a stopped agent over a kept-alive connection."""
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("executor api: " + format, *args)

    def do_POST(self) -> None:
        if urlsplit(self.path).path != EXECUTOR_PATH:
            self.reply(404, "not found")
            return
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.reply(400, "bad Content-Length")
            return
        content_type = self.headers.get("Content-Type", "application/json")
        if "json" not in content_type:
            self.reply(415, "only application/json is spoken here")
            return
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            self.reply(400, "the body is not JSON")
            return
        if not isinstance(body, dict):
            self.reply(400, "the body is not a JSON object")
            return
        self.server.agent._handle(self, body)

    def do_GET(self) -> None:
        self.reply(405, "POST calls to " + EXECUTOR_PATH)

    def reply(self, status: int, text: str = "") -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def stream(self, events: queue.Queue[dict[str, Any] | None], heartbeat: float) -> None:
        """Answer SUBSCRIBE: write queued events as RecordIO chunks until None (or a broken
        connection); a HEARTBEAT whenever nothing was sent for `heartbeat` seconds."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while True:
            try:
                event = events.get(timeout=heartbeat)
            except queue.Empty:
                event = {"type": "HEARTBEAT"}
            try:
                if event is None:
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    self.close_connection = True
                    return
                record = encode(json.dumps(event).encode())
                self.wfile.write(b"%x\r\n%s\r\n" % (len(record), record))
                self.wfile.flush()
            except OSError:
                self.close_connection = True
                return


class LocalAgent:
    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        hostname: str | None = None,
        recovery_timeout: float = 15 * 60.0,
        subscription_backoff_max: float = 2.0,
        reregistration_timeout: float = 10.0,
        registration_timeout: float = 60.0,
        heartbeat_interval: float = 30.0,
        poll_interval: float = 0.2,
    ) -> None:
        """`port` 0 means the port recorded in `data_dir` (or any free one the first time):
        running executors only know that one. `recovery_timeout` and
        `subscription_backoff_max` go to executors (MESOS_RECOVERY_TIMEOUT,
        MESOS_SUBSCRIPTION_BACKOFF_MAX): how long one outlives a missing agent, and its longest
        wait between SUBSCRIBE attempts. After a restart, an executor has
        `reregistration_timeout` seconds to resubscribe; a new one `registration_timeout`
        seconds to subscribe at all."""
        self.data_dir = Path(data_dir)
        self.host = host
        self._port = port
        self.hostname = hostname or (
            socket.gethostname() if host in ("0.0.0.0", "::", "") else host  # noqa: S104
        )
        self._recovery_timeout = recovery_timeout
        self._backoff_max = subscription_backoff_max
        self._reregistration_timeout = reregistration_timeout
        self._registration_timeout = registration_timeout
        self._heartbeat = heartbeat_interval
        self._poll = poll_interval
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._running = False
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._runs: dict[str, _Run] = {}  # task id → run (live, or ended but not yet done)
        self._by_executor: dict[str, _Run] = {}
        self._completed: OrderedDict[str, tuple[str, dict[str, Any]]] = OrderedDict()
        self._sink: AgentSink | None = None
        self._framework: dict[str, Any] = {}
        self.agent_id = ""
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    @property
    def endpoint(self) -> str:
        """`host:port` as executors get it in MESOS_AGENT_ENDPOINT."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> None:
        """Recover from the checkpoint, then listen (on the recorded port unless told another)
        and start watching executors. Raises Unavailable if the port cannot be had."""
        with self._lock:
            if self._running:
                return
            for directory in (self.data_dir, self.data_dir / "tasks", self.data_dir / "sandboxes"):
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            recorded = _read_json(self.data_dir / "agent.json") or {}
            self.agent_id = str(recorded.get("agent_id") or f"{uuid.uuid4()}-S0")
            self._framework = dict(recorded.get("framework") or {})
            port = self._port or int(recorded.get("port") or 0)
            if self._port and recorded.get("port") and self._port != recorded["port"]:
                log.warning(
                    "local agent moves to another port: running executors will not find it",
                    extra={"port": self._port, "recorded_port": recorded["port"]},
                )
            try:
                self._server = self._listen(port, bool(recorded.get("port")))
            except OSError as exc:
                raise Unavailable(
                    f"the local agent cannot listen on {self.host}:{port}: {exc.strerror}"
                ) from exc
            self.port = int(self._server.server_address[1])
            self._save_agent()
            self._recover()
            self._stop.clear()
            self._running = True
        http = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="local-agent-http",
            daemon=True,
        )
        monitor = threading.Thread(target=self._monitor, name="local-agent-monitor", daemon=True)
        self._threads = [http, monitor]
        for thread in self._threads:
            thread.start()
        log.info(
            "local agent started",
            extra={
                "agent_id": self.agent_id,
                "endpoint": self.endpoint,
                "recovered_tasks": len(self._runs),
            },
        )

    def _listen(self, port: int, recorded: bool) -> _Server:
        """Bind the port; a recorded one that is taken is given up only when no task is
        checkpointed (no executor is looking for it)."""
        try:
            return _Server((self.host, port), self)
        except OSError:
            if self._port or not recorded or any((self.data_dir / "tasks").glob("*.json")):
                raise
            log.warning("the recorded port is taken and no task needs it: using another")
            return _Server((self.host, 0), self)

    def stop(self) -> None:
        """Stop serving and watching; executors keep running (they are not ours to kill: a
        Berth restart must not restart healthy tasks) and resubscribe to the next agent."""
        with self._lock:
            if not self._running:
                return
            self._running = False
            self._sink = None
            for run in self._runs.values():
                self._close_stream(run)
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
        for thread in self._threads:
            thread.join()
        self._threads = []
        log.info("local agent stopped", extra={"agent_id": self.agent_id})

    def shutdown_executors(self, grace: float = 5.0, framework_id: str | None = None) -> None:
        """Make executors (of one framework, or all) exit: SHUTDOWN to those subscribed,
        SIGTERM to the others, SIGKILL to their process groups after `grace` seconds. For
        tests, cleanup and TEARDOWN. On a stopped agent it only kills and reaps (the
        checkpoint may belong to a newer agent by then)."""
        with self._lock:
            runs = [
                r
                for r in self._runs.values()
                if not r.exited and framework_id in (None, r.framework_id)
            ]
            if not self._running:
                for run in runs:
                    _kill_group(run, signal.SIGKILL)
                    if run.proc is not None:
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            run.proc.wait(timeout=5.0)
                return
            for run in runs:
                if run.stream is not None:
                    run.stream.put({"type": "SHUTDOWN"})
                else:
                    _kill_group(run, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not self._all_exited(runs):
            time.sleep(0.05)
        with self._lock:
            for run in runs:
                if not run.exited:
                    log.warning("executor ignored shutdown: SIGKILL", extra=self._extra(run))
                    _kill_group(run, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and not self._all_exited(runs):
            time.sleep(0.05)

    def teardown(self, framework_id: str) -> None:
        """The framework is gone for good (TEARDOWN): shut its executors down and forget its
        tasks; nobody will acknowledge their last updates."""
        self.shutdown_executors(framework_id=framework_id)
        with self._lock:
            for run in list(self._runs.values()):
                if run.framework_id == framework_id and run.exited:
                    run.pending.clear()
                    if not run.terminal:
                        run.status = self._status(run, "TASK_KILLED", None, "Framework removed")
                    self._finish_if_done(run)
            if self._framework_id() == framework_id:
                self._framework = {}
                if self._running:
                    self._save_agent()

    def _all_exited(self, runs: list[_Run]) -> bool:
        with self._lock:
            if self._running:
                self._check_exits(time.monotonic())
            return all(r.exited for r in runs)

    # -- what the driver (the master) asks ---------------------------------------------------

    def register(self, framework: dict[str, Any], sink: AgentSink) -> None:
        """A scheduler (re)registered: updates for its framework go to `sink` from now on,
        starting with every one still unacknowledged."""
        framework_id = str(framework["id"]["value"])
        with self._lock:
            if not self._running:
                raise Unavailable("the local agent is not running")
            self._framework = dict(framework)
            self._sink = sink
            self._save_agent()
            others = sorted({r.framework_id for r in self._runs.values()} - {framework_id})
            if others:
                log.warning(
                    "tasks of other frameworks run here: they are not reported to this one",
                    extra={"frameworks": others},
                )
            for run in self._runs.values():
                if run.framework_id == framework_id and run.pending:
                    run.retry_delay = STATUS_RETRY_MIN
                    self._forward(run)

    def unregister(self, sink: AgentSink) -> None:
        with self._lock:
            if self._sink is sink:
                self._sink = None

    def has_task(self, task_id: str) -> bool:
        with self._lock:
            return task_id in self._runs

    def executor_busy(self, executor_id: str) -> bool:
        """An executor with this id is still around (one task per executor here)."""
        with self._lock:
            return executor_id in self._by_executor

    def launch(self, framework_id: str, task: dict[str, Any]) -> bool:
        """Start the executor for a task the master has validated (TASK_STAGING); it gets the
        task as LAUNCH once it subscribes. False if the agent is not running."""
        for value, what in (
            (task.get("task_id", {}).get("value"), "task id"),
            (task.get("executor", {}).get("executor_id", {}).get("value"), "executor id"),
        ):
            error = id_error(value, what)
            if error is not None:
                raise Invalid(error)
        with self._lock:
            if not self._running:
                return False
            task = json.loads(json.dumps(task))  # our own copy, JSON all the way down
            task["agent_id"] = {"value": self.agent_id}
            run = _Run(
                framework_id=framework_id,
                task=task,
                status={},
                container_id=str(uuid.uuid4()),
                token=secrets.token_urlsafe(32),
            )
            if run.task_id in self._runs or run.executor_id in self._by_executor:
                raise Invalid(f"task {run.task_id} or its executor is already here")
            run.status = self._status(run, "TASK_STAGING", None, None, source=None)
            self._runs[run.task_id] = run
            self._by_executor[run.executor_id] = run
            self._save(run)  # known before it exists: a crash now is a failed launch
            self._spawn(run)
            return True

    def kill(self, framework_id: str, task_id: str, grace_seconds: float | None = None) -> bool:
        """Ask the task's executor to kill it (KILL, with `grace_seconds` overriding the
        task's kill policy). A task whose executor never got it is killed at once
        (TASK_KILLED). False if the task is unknown."""
        with self._lock:
            run = self._runs.get(task_id)
            if run is None or run.framework_id != framework_id:
                done = self._completed.get(task_id)
                return done is not None and done[0] == framework_id
            if run.terminal:
                return True
            if not self._running:
                log.warning("the agent is stopped: kill not delivered", extra=self._extra(run))
                return True
            extra = self._extra(run)
            if run.stream is not None:
                self._send(run, _kill_event(run.task_id, grace_seconds))
                log.info("killing a task", extra=extra)
            elif run.subscribed or run.recover_until is not None:
                run.kill_waiting, run.kill_grace = True, grace_seconds
                log.info("kill waits for the executor to resubscribe", extra=extra)
            else:
                log.info("killing a task before its executor subscribed", extra=extra)
                _kill_group(run, signal.SIGKILL)
                self._receive(
                    run,
                    self._status(
                        run,
                        "TASK_KILLED",
                        "REASON_TASK_KILLED_DURING_LAUNCH",
                        "Killed before the executor subscribed",
                    ),
                )
            return True

    def acknowledge(self, framework_id: str, task_id: str, update_uuid: str) -> bool:
        """The scheduler acknowledged an update: drop it, tell the executor, send the next."""
        with self._lock:
            if not self._running:
                return False
            run = self._runs.get(task_id)
            if run is not None and run.framework_id != framework_id:
                run = None
            if run is None or not run.pending or run.pending[0].get("uuid") != update_uuid:
                log.warning(
                    "unexpected status update acknowledgement",
                    extra={"task_id": task_id, "uuid": update_uuid},
                )
                return False
            acked = run.pending.pop(0)
            run.retry_at, run.retry_delay = None, STATUS_RETRY_MIN
            self._save(run)
            if acked.get("source") == "SOURCE_EXECUTOR":
                self._send(run, _ack_event(run.task_id, update_uuid))
            if run.pending:
                self._forward(run)
            self._finish_if_done(run)
            return True

    def statuses(self, framework_id: str) -> list[dict[str, Any]]:
        """The latest status of every task of the framework this agent knows (ended ones too,
        while remembered), oldest first."""
        with self._lock:
            out = [
                json.loads(json.dumps(s)) for f, s in self._completed.values() if f == framework_id
            ]
            out += [
                json.loads(json.dumps(r.status))
                for r in self._runs.values()
                if r.framework_id == framework_id
            ]
            return out

    def allocated(self) -> list[list[dict[str, Any]]]:
        """The resources each live task holds, with its executor's (for offers)."""
        with self._lock:
            return [
                list(r.task.get("resources") or [])
                + list(r.task["executor"].get("resources") or [])
                for r in self._runs.values()
                if not r.terminal
            ]

    def send_message(self, framework_id: str, executor_id: str, data: bytes) -> bool:
        """A framework message to an executor (dropped, as by Mesos, if it is not there)."""
        with self._lock:
            run = self._by_executor.get(executor_id)
            if run is None or run.framework_id != framework_id or run.stream is None:
                log.warning("framework message to an absent executor dropped",
                            extra={"executor_id": executor_id})  # fmt: skip
                return False
            self._send(
                run, {"type": "MESSAGE", "message": {"data": base64.b64encode(data).decode()}}
            )
            return True

    def executor_pid(self, executor_id: str) -> int | None:
        with self._lock:
            run = self._by_executor.get(executor_id)
            return None if run is None or run.exited else run.pid

    def sandbox(self, executor_id: str) -> Path:
        return self.data_dir / "sandboxes" / executor_id

    # -- executors ---------------------------------------------------------------------------

    def _environment(self, run: _Run) -> dict[str, str]:
        command = run.task["executor"].get("command") or {}
        sandbox = str(self.sandbox(run.executor_id))
        grace = run.task["executor"].get("shutdown_grace_period", {}).get("nanoseconds")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESOS_")}
        for variable in (command.get("environment") or {}).get("variables") or []:
            if variable.get("type", "VALUE") == "VALUE" and variable.get("name"):
                env[str(variable["name"])] = str(variable.get("value", ""))
        env.update(
            {
                "MESOS_AGENT_ENDPOINT": self.endpoint,
                "MESOS_FRAMEWORK_ID": run.framework_id,
                "MESOS_EXECUTOR_ID": run.executor_id,
                "MESOS_DIRECTORY": sandbox,
                "MESOS_SANDBOX": sandbox,
                "MESOS_CHECKPOINT": "1",
                "MESOS_RECOVERY_TIMEOUT": mesos_duration(self._recovery_timeout),
                "MESOS_SUBSCRIPTION_BACKOFF_MAX": mesos_duration(self._backoff_max),
                "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD": mesos_duration(
                    int(grace) / 1e9 if grace else 5.0
                ),
                "MESOS_EXECUTOR_AUTHENTICATION_TOKEN": run.token,
            }
        )
        return env

    def _clean_up_after(self, run: _Run) -> None:
        """An executor died without ending its task: run the same executor program with
        `--cleanup EXECUTOR_ID` so the container it started does not outlive it unnoticed."""
        command = run.task["executor"].get("command") or {}
        argv = [str(a) for a in command.get("arguments") or []] or [str(command.get("value"))]
        try:
            proc = subprocess.Popen(
                [*argv, "--cleanup", run.executor_id],
                executable=str(command.get("value")),
                cwd=self.sandbox(run.executor_id),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            log.error("could not run the orphan cleanup: %s", exc, extra=self._extra(run))
            return
        threading.Thread(target=proc.wait, name="orphan-cleanup", daemon=True).start()

    def _spawn(self, run: _Run) -> None:
        command = run.task["executor"].get("command") or {}
        argv = [str(a) for a in command.get("arguments") or []] or [str(command.get("value"))]
        sandbox = self.sandbox(run.executor_id)
        extra = self._extra(run)
        try:
            sandbox.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(sandbox / "stdout", "ab") as out, open(sandbox / "stderr", "ab") as err:
                run.proc = subprocess.Popen(
                    argv,
                    executable=str(command.get("value")),
                    cwd=sandbox,
                    env=self._environment(run),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            log.error("executor did not start: %s", exc, extra=extra)
            run.exited = True
            message = f"Failed to launch the executor {argv[0]!r}: {exc.strerror or exc}"
            self._receive(
                run, self._status(run, "TASK_FAILED", "REASON_CONTAINER_LAUNCH_FAILED", message)
            )
            return
        run.pid = run.proc.pid
        run.pid_started = _start_time(run.pid)
        run.spawned_at = time.monotonic()
        self._save(run)
        log.info("executor started", extra={**extra, "pid": run.pid})

    def _on_exit(self, run: _Run, wait_status: int | None) -> None:
        run.exited = True
        run.proc = None  # polled: the Popen has its returncode and no zombie is left
        self._close_stream(run)
        what = _describe_exit(wait_status)
        log.info("executor %s", what, extra={**self._extra(run), "pid": run.pid})
        if not run.terminal:
            self._receive(
                run,
                self._status(run, "TASK_FAILED", "REASON_EXECUTOR_TERMINATED", f"Executor {what}"),
            )
            self._clean_up_after(run)
        run.pid = run.pid_started = None
        self._save(run)
        if self._sink is not None and run.framework_id == self._framework_id():
            self._sink.executor_exited(run.executor_id, wait_status)
        self._finish_if_done(run)

    def _check_exits(self, now: float) -> None:
        for run in list(self._runs.values()):
            if run.exited:
                continue
            if run.proc is not None:
                code = run.proc.poll()
                if code is not None:
                    self._on_exit(run, _wait_status(code))
                continue
            if run.pid is None:
                continue  # no process recorded: its recovery deadline decides
            alive, wait_status = _probe(run.pid, run.pid_started)
            if not alive:
                self._on_exit(run, wait_status)

    def _check_deadlines(self, now: float) -> None:
        for run in list(self._runs.values()):
            if run.exited or run.subscribed or run.overdue:
                continue
            if run.recover_until is not None and now > run.recover_until:
                reason, what = "REASON_EXECUTOR_REREGISTRATION_TIMEOUT", "resubscribe"
            elif run.recover_until is None and now - run.spawned_at > self._registration_timeout:
                reason, what = "REASON_EXECUTOR_REGISTRATION_TIMEOUT", "subscribe"
            else:
                continue
            if not _alive(run) and run.recover_until is not None:
                self._on_exit(run, None)  # gone while we were away, and never came back
                continue
            log.warning("executor did not %s in time: killing it", what, extra=self._extra(run))
            run.overdue = True
            _kill_group(run, signal.SIGKILL)
            if not run.terminal:
                message = f"Executor did not {what} in time"
                self._receive(run, self._status(run, "TASK_FAILED", reason, message))

    def _monitor(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                with self._lock:
                    if not self._running:
                        return
                    now = time.monotonic()
                    self._check_exits(now)
                    self._check_deadlines(now)
                    self._retry_updates(now)
            except Exception:  # the watch must go on: a bad checkpoint write is not fatal
                log.exception("local agent monitor round failed")

    # -- status updates ----------------------------------------------------------------------

    def _status(
        self,
        run: _Run,
        state: str,
        reason: str | None,
        message: str | None,
        source: str | None = "SOURCE_AGENT",
    ) -> dict[str, Any]:
        """A status the agent itself says (with a uuid, so it is acknowledged like any)."""
        status: dict[str, Any] = {
            "task_id": {"value": run.task_id},
            "state": state,
            "agent_id": {"value": self.agent_id},
            "executor_id": {"value": run.executor_id},
            "timestamp": time.time(),
        }
        if source is not None:
            status["source"] = source
            status["uuid"] = new_uuid()
        if reason is not None:
            status["reason"] = reason
        if message is not None:
            status["message"] = message
        return status

    def _receive(self, run: _Run, status: dict[str, Any], from_executor: bool = False) -> None:
        """The status update manager: record an update (once), then pass it on in order."""
        status = json.loads(json.dumps(status))
        status["agent_id"] = {"value": self.agent_id}
        status["executor_id"] = {"value": run.executor_id}
        if from_executor:
            status["source"] = "SOURCE_EXECUTOR"
        status.setdefault("timestamp", time.time())
        update_uuid = str(status["uuid"])
        if update_uuid in run.seen:  # resent by the executor after a reconnection
            in_flight = any(p.get("uuid") == update_uuid for p in run.pending)
            if not in_flight and from_executor:
                self._send(run, _ack_event(run.task_id, update_uuid))
            return
        if run.terminal:
            log.warning(
                "ignoring a status update after the task ended",
                extra={**self._extra(run), "state": status["state"]},
            )
            if from_executor:  # it would resend it forever
                self._send(run, _ack_event(run.task_id, update_uuid))
            return
        run.seen = [*run.seen, update_uuid][-MAX_SEEN:]
        run.status = status
        run.pending.append(status)
        self._save(run)
        log.info(
            "task %s",
            status["state"],
            extra={**self._extra(run), "state": status["state"], "uuid": update_uuid},
        )
        if len(run.pending) == 1:
            self._forward(run)

    def _forward(self, run: _Run) -> None:
        """Hand the update in flight to the registered scheduler; retried until acknowledged."""
        if self._sink is None or run.framework_id != self._framework_id() or not run.pending:
            return
        self._sink.status_update(json.loads(json.dumps(run.pending[0])))
        run.retry_at = time.monotonic() + run.retry_delay

    def _retry_updates(self, now: float) -> None:
        for run in self._runs.values():
            if run.pending and run.retry_at is not None and now >= run.retry_at:
                log.info("resending an unacknowledged status update", extra=self._extra(run))
                run.retry_delay = min(run.retry_delay * 2, STATUS_RETRY_MAX)
                self._forward(run)

    def _finish_if_done(self, run: _Run) -> None:
        """Forget a task once it ended, the scheduler has its last word, and its executor is
        gone; reconciliation still finds its last status for a while."""
        if not (run.terminal and not run.pending and run.exited):
            return
        self._runs.pop(run.task_id, None)
        if self._by_executor.get(run.executor_id) is run:
            del self._by_executor[run.executor_id]
        self._completed[run.task_id] = (run.framework_id, run.status)
        while len(self._completed) > MAX_COMPLETED:
            self._completed.popitem(last=False)
        with contextlib.suppress(FileNotFoundError):
            self._task_file(run.task_id).unlink()

    # -- the executor API --------------------------------------------------------------------

    def _handle(self, handler: _Handler, body: dict[str, Any]) -> None:
        kind = body.get("type")
        framework_id = str((body.get("framework_id") or {}).get("value") or "")
        executor_id = str((body.get("executor_id") or {}).get("value") or "")
        authorization = handler.headers.get("Authorization") or ""
        token = authorization.removeprefix("Bearer ").strip()
        with self._lock:
            run = self._known(framework_id, executor_id)
            if run is not None and not hmac.compare_digest(run.token, token):
                log.warning("executor call with a wrong token refused", extra=self._extra(run))
                handler.reply(401, "this executor's token is needed")
                return
        if kind == "SUBSCRIBE":
            self._subscribe(handler, framework_id, executor_id, body.get("subscribe") or {})
            return
        if kind == "UPDATE":
            status, text = self._update(framework_id, executor_id, body.get("update") or {})
        elif kind == "MESSAGE":
            status, text = self._message(framework_id, executor_id, body.get("message") or {})
        else:
            status, text = 400, f"unsupported call type {kind!r}"
        handler.reply(status, text)

    def _known(self, framework_id: str, executor_id: str) -> _Run | None:
        """The run of this executor, which must be of this framework (the caller then checks
        the executor's token: nobody else may speak for it, or hear its tasks' config)."""
        run = self._by_executor.get(executor_id)
        return run if run is not None and run.framework_id == framework_id else None

    def _subscribe(
        self, handler: _Handler, framework_id: str, executor_id: str, subscribe: dict[str, Any]
    ) -> None:
        events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        with self._lock:
            running = self._running
            run = self._known(framework_id, executor_id) if running else None
            extra = {"executor_id": executor_id, "framework_id": framework_id}
            if running and (run is None or run.exited):
                log.warning("unknown executor subscribed: shutting it down", extra=extra)
                events.put({"type": "SHUTDOWN"})
                events.put(None)
            elif running and run is not None:
                adopted = run.recover_until is not None
                if run.stream is not None:
                    run.stream.put(None)  # a new subscription replaces the old one
                run.stream = events
                run.subscribed = True
                run.recover_until = None
                log.info(
                    "executor adopted after a restart" if adopted else "executor subscribed",
                    extra={**extra, "pid": run.pid},
                )
                self._on_subscribed(run, subscribe)
        if not running:
            handler.reply(503, "the agent is stopping")
            return
        handler.stream(events, self._heartbeat)
        with self._lock:
            if run is not None and run.stream is events:
                run.stream = None

    def _on_subscribed(self, run: _Run, subscribe: dict[str, Any]) -> None:
        framework = self._framework if self._framework_id() == run.framework_id else {}
        self._send(
            run,
            {
                "type": "SUBSCRIBED",
                "subscribed": {
                    "executor_info": run.task["executor"],
                    "framework_info": framework or {"id": {"value": run.framework_id}},
                    "agent_info": {
                        "id": {"value": self.agent_id},
                        "hostname": self.hostname,
                        "port": self.port,
                    },
                    "container_id": {"value": run.container_id},
                },
            },
        )
        told = {
            str((t.get("task_id") or {}).get("value"))
            for t in subscribe.get("unacknowledged_tasks") or []
        }
        knows = run.task_id in told or run.state != "TASK_STAGING"
        if not run.terminal and not knows:
            self._send(run, {"type": "LAUNCH", "launch": {"task": run.task}})
        for update in subscribe.get("unacknowledged_updates") or []:
            status = update.get("status") if isinstance(update, dict) else None
            if _valid_update(status, run.task_id) is None:
                assert isinstance(status, dict)
                self._receive(run, status, from_executor=True)
        if run.kill_waiting and not run.terminal:
            self._send(run, _kill_event(run.task_id, run.kill_grace))
            run.kill_waiting = False

    def _update(
        self, framework_id: str, executor_id: str, update: dict[str, Any]
    ) -> tuple[int, str]:
        status = update.get("status")
        with self._lock:
            if not self._running:
                return 503, "the agent is stopping"
            run = self._known(framework_id, executor_id)
            if run is None:
                return 400, f"unknown executor {executor_id!r} of framework {framework_id!r}"
            error = _valid_update(status, run.task_id)
            if error is not None:
                return 400, error
            assert isinstance(status, dict)
            self._receive(run, status, from_executor=True)
        return 202, ""

    def _message(
        self, framework_id: str, executor_id: str, message: dict[str, Any]
    ) -> tuple[int, str]:
        try:
            data = base64.b64decode(str(message.get("data") or ""), validate=True)
        except ValueError:
            return 400, "message data is not base64"
        with self._lock:
            if not self._running:
                return 503, "the agent is stopping"
            if self._known(framework_id, executor_id) is None:
                return 400, f"unknown executor {executor_id!r}"
            if self._sink is not None and framework_id == self._framework_id():
                self._sink.framework_message(executor_id, data)
        return 202, ""

    def _send(self, run: _Run, event: dict[str, Any]) -> None:
        if run.stream is not None:
            run.stream.put(event)

    def _close_stream(self, run: _Run) -> None:
        if run.stream is not None:
            run.stream.put(None)
            run.stream = None

    # -- checkpoint --------------------------------------------------------------------------

    def _framework_id(self) -> str | None:
        value = (self._framework.get("id") or {}).get("value")
        return str(value) if value else None

    def _task_file(self, task_id: str) -> Path:
        return self.data_dir / "tasks" / f"{task_id}.json"

    def _save(self, run: _Run) -> None:
        _write_json(self._task_file(run.task_id), run.to_json())

    def _save_agent(self) -> None:
        record = {"agent_id": self.agent_id, "port": self.port, "framework": self._framework}
        _write_json(self.data_dir / "agent.json", record)

    def _recover(self) -> None:
        """Load every checkpointed task. Their executors get `reregistration_timeout` seconds
        to resubscribe; the monitor fails those whose process is gone."""
        now = time.monotonic()
        # this object restarted: keep the executors it started as its children
        children = {r.pid: r.proc for r in self._runs.values() if r.proc is not None}
        self._runs.clear()
        self._by_executor.clear()
        for path in sorted((self.data_dir / "tasks").glob("*.json")):
            try:
                run = _Run.from_json(_read_json(path) or {})
                if id_error(run.task_id, "task id") or id_error(run.executor_id, "executor id"):
                    raise ValueError(path.name)
                if run.state not in TASK_STATES:
                    raise ValueError(run.state)
            except (KeyError, TypeError, ValueError):
                log.error("unreadable task checkpoint left alone", extra={"path": str(path)})
                continue
            if run.pid is None and run.terminal:
                run.exited = True  # nothing left to watch
            else:
                run.recover_until = now + self._reregistration_timeout
                run.proc = children.pop(run.pid, None)
            self._runs[run.task_id] = run
            self._by_executor[run.executor_id] = run
            log.info(
                "recovered a task",
                extra={**self._extra(run), "state": run.state, "pid": run.pid},
            )
            self._finish_if_done(run)

    def _extra(self, run: _Run) -> dict[str, Any]:
        return {"task_id": run.task_id, "executor_id": run.executor_id}


# -- helpers -----------------------------------------------------------------------------------


def _kill_event(task_id: str, grace_seconds: float | None) -> dict[str, Any]:
    kill: dict[str, Any] = {"task_id": {"value": task_id}}
    if grace_seconds is not None:
        kill["kill_policy"] = {"grace_period": {"nanoseconds": int(grace_seconds * 1e9)}}
    return {"type": "KILL", "kill": kill}


def _ack_event(task_id: str, update_uuid: str) -> dict[str, Any]:
    return {
        "type": "ACKNOWLEDGED",
        "acknowledged": {"task_id": {"value": task_id}, "uuid": update_uuid},
    }


def _valid_update(status: object, task_id: str) -> str | None:
    """Why an executor's TaskStatus is unacceptable, or None."""
    if not isinstance(status, dict):
        return "UPDATE needs update.status"
    if (status.get("task_id") or {}).get("value") != task_id:
        return f"the status is not for this executor's task {task_id!r}"
    if status.get("state") not in TASK_STATES:
        return f"unknown task state {status.get('state')!r}"
    if not status.get("uuid"):
        return "a status update needs a uuid"
    return None


def _wait_status(returncode: int) -> int:
    """Popen's returncode (exit code, or -signal) → the raw wait status Mesos reports."""
    return -returncode if returncode < 0 else returncode << 8


def _describe_exit(wait_status: int | None) -> str:
    if wait_status is None:
        return "terminated"
    if os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = str(number)
        return f"terminated by signal {number} ({name})"
    return f"exited with status {os.WEXITSTATUS(wait_status)}"


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc), to tell a pid's process
    from a later one that reused it; None where /proc is not there."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def _proc_stat(pid: int) -> tuple[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], int(fields[19])


def _probe(pid: int, started: int | None) -> tuple[bool, int | None]:
    """Is this executor process alive? (alive, raw wait status if we reaped it)."""
    try:
        reaped, wait_status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: an executor adopted after a restart
        pass
    else:
        return (False, wait_status) if reaped == pid else (True, None)
    if Path("/proc/self").exists():
        stat = _proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return False, None
        return (started is None or stat[1] == started), None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, None
    except PermissionError:
        return True, None
    return True, None


def _alive(run: _Run) -> bool:
    """The executor's process is still there (an exit is left for the monitor to report)."""
    if run.exited or run.pid is None:
        return False
    if run.proc is not None:
        return run.proc.poll() is None
    return _probe(run.pid, run.pid_started)[0]


def _kill_group(run: _Run, sig: signal.Signals) -> None:
    """Signal the executor's process group (its session: it and whatever it started), if it is
    still the process we started."""
    if _alive(run):
        assert run.pid is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.pid, sig)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        log.error("unreadable checkpoint file", extra={"path": str(path)})
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: Any) -> None:
    """Write a checkpoint file atomically: a crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(descriptor, "w", encoding="utf-8") as f:
        json.dump(value, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
