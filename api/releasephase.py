"""The release phase of a `git push` (issue 5, Heroku's model): a Procfile's `release:` command
runs once, from the new release, before that release goes live; if it fails, the release never
goes live and the previous one keeps serving.

api/builds.py writes the push's release as *pending* (`Store.deploy(pending=True)`: the app's
current release does not move, so the framework keeps running the old one and nothing can
roll back to the new one), then `ReleasePhase.run`:

1. creates a detached one-off run of `["/bin/sh", "-c", command]` from the pending release
   (`Store.create_run(release_version=N)`, framework/runs.py). The framework launches it like
   `berth run -d`: the release's image (through its entry point, so buildpack apps get
   `.profile.d`, as formation processes do) and config, `DYNO=run.N`, no port, no health check,
   never restarted; sized by `limits:set release …` if set, else a run's defaults;
2. follows its output in the app's log (berth logd; the executor ships it as process `run.N`)
   and hands each line to the push (`remote:` lines) as it comes. logd away: the push says to
   look at `berth logs --ps run.N` later;
3. waits until the run's record is finished, at most `timeout` seconds
   (BERTH_RELEASE_PHASE_TIMEOUT, 300); over it, asks the framework to stop the run (a run not
   launched yet is finished as killed instead) and waits up to STOP_WAIT_SECONDS more;
4. exit 0 → `Store.finish_release(succeeded=True)`: the release becomes the app's current
   release, unless another release was made meanwhile (a config change, a rollback: those
   build on the current release) — then it is failed as superseded and the push says so.
   Anything else (exit N, killed, lost, not started) → the release is failed with
   "release command failed (exit N)", which is also the push's answer.

Threads: the push's own thread; one more reads logd while the command runs, and is joined
before `run` returns. Imports berth.framework only (api/builds.py imports this).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from berth.framework import http1, logship
from berth.framework.errors import BerthError, Unavailable
from berth.framework.loglines import read_token, timestamp
from berth.framework.model import (
    DEFAULT_CPUS,
    DEFAULT_MEMORY_MB,
    RELEASE_PROCESS,
    RELEASE_SUCCEEDED,
    Release,
)
from berth.framework.runs import FINISHED as RUN_FINISHED
from berth.framework.runs import PENDING as RUN_PENDING
from berth.framework.runs import PROCESS as RUN
from berth.framework.runs import Run
from berth.framework.settings import Settings
from berth.framework.state import Store

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0
POLL_SECONDS = 0.25
STOP_WAIT_SECONDS = 60.0  # after a stop was asked for, the run's end is awaited this long
# Once the run ended, its last lines (which the executor sent to logd before reporting the end)
# are awaited until the log is quiet this long, at most LAST_LINES_SECONDS.
QUIET_SECONDS = 1.0
LAST_LINES_SECONDS = 5.0
LOOK_BACK_SECONDS = 600.0  # how far back logd searches for the run's first lines
SHOWN_COMMAND_CHARS = 200


def outcome_of(run: Run | None, timeout: float, stopped: bool) -> str | None:
    """None if the run exited 0; else why the release phase failed (pure)."""
    if run is None or run.state != RUN_FINISHED:
        return f"release command did not finish within {timeout:.0f}s"
    if run.outcome == "finished" and not run.exit_code:
        return None
    if stopped:
        return f"release command did not finish within {timeout:.0f}s and was stopped"
    if run.exit_code is not None:
        return f"release command failed (exit {run.exit_code})"
    detail = f": {run.message}" if run.message else ""
    return f"release command failed ({run.outcome or 'ended'}{detail})"[:300]


class LogFollower:
    """A thread reading one process's lines of an app's log from logd (a tail, as `berth logs
    -t --ps run.N` does through the API) and handing each line's text to `emit`."""

    def __init__(
        self,
        logs_url: str,
        token: str,
        app: str,
        process: str,
        since: float,
        emit: Callable[[str], None],
    ) -> None:
        self._endpoint = http1.Endpoint.parse(logs_url)
        self._token = token
        self._app = app
        self._process = process
        self._since = since
        self._emit = emit
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._answer: http1.Response | None = None
        self._last = time.monotonic()
        self.problem = ""  # why logd could not be read, if it could not
        self._thread = threading.Thread(target=self._follow, name=f"release-log-{app}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self, quiet: float = QUIET_SECONDS, most: float = LAST_LINES_SECONDS) -> None:
        """Once no line came for `quiet` seconds (at most `most` seconds from now), stop
        reading; returns when the thread has ended."""
        ends = time.monotonic() + most
        started = time.monotonic()
        while self._thread.is_alive() and time.monotonic() < ends:
            with self._lock:
                last = max(self._last, started)
            if time.monotonic() - last >= quiet:
                break
            time.sleep(0.05)
        self._stop.set()
        with self._lock:
            if self._answer is not None:
                self._answer.interrupt()
        self._thread.join(10)

    def _follow(self) -> None:
        params = {
            "lines": "1000",
            "tail": "1",
            "ps": self._process,
            "source": "app",
            "since": timestamp(self._since),
        }
        try:
            answer = http1.request(
                self._endpoint,
                "GET",
                http1.path_with_query(f"/v1/logs/{http1.quote_segment(self._app)}", params),
                headers={"Authorization": f"Bearer {self._token}"},
                connect_timeout=2.0,
                timeout=15.0,  # logd sends a blank line every second while nothing comes
            )
        except OSError as exc:
            self.problem = f"the log service is not reachable ({exc})"
            return
        with self._lock:
            self._answer = answer
        try:
            if answer.status != 200:
                self.problem = f"the log service answered {answer.status}"
                return
            pending = b""
            for piece in answer.chunks():
                pending += piece
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    self._line(line)
                if self._stop.is_set():
                    return
        except OSError:
            pass  # interrupted by finish(), or logd went away: the lines end here
        finally:
            answer.close()

    def _line(self, raw: bytes) -> None:
        if not raw.strip():
            return  # a keepalive
        try:
            record = json.loads(raw)
            text = record["text"] if isinstance(record, dict) else None
        except (ValueError, KeyError):
            return
        if not isinstance(text, str):
            return
        with self._lock:
            self._last = time.monotonic()
        self._emit(text)


class ReleasePhase:
    def __init__(self, store: Store, settings: Settings, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.store = store
        self.settings = settings
        self.timeout = timeout
        self._token = ""

    def _read_token(self) -> str:
        if not self._token:
            self._token = read_token(logship.load_or_create_key(self.settings.data_dir))
        return self._token

    def run(self, release: Release, created_by: str, emit: Callable[[str], None]) -> str | None:
        """Run pending `release`'s release command and finish the release: None once it is
        the app's current release, else why not (it is then failed). Raises BerthError only
        if ZooKeeper could not record the outcome (the release then stays pending until the
        app's next push fails it)."""
        app, version = release.app, release.version
        command = release.process_types[RELEASE_PROCESS]
        shown = command if len(command) <= SHOWN_COMMAND_CHARS else command[:199] + "…"
        emit(f"-----> Running release command: {shown}")
        try:
            problem = self._command(release, command, created_by, emit)
        except BerthError as exc:
            problem = f"release command could not run: {exc.message}"
        finished = self.store.finish_release(app, version, problem is None, problem or "")
        if finished.status == RELEASE_SUCCEEDED:
            emit(f"       Release command succeeded: v{version} goes live")
            return None
        log.info(
            "release phase failed",
            extra={"app": app, "release": version, "why": finished.status_reason},
        )
        return finished.status_reason or "release command failed"

    def _command(
        self, release: Release, command: str, created_by: str, emit: Callable[[str], None]
    ) -> str | None:
        app, version = release.app, release.version
        limits = self.store.get_limits(app).get(RELEASE_PROCESS, {})
        started = time.time()
        run = self.store.create_run(
            app,
            ["/bin/sh", "-c", command],
            attach=False,
            tty=False,
            memory_mb=int(limits.get("memory_mb", DEFAULT_MEMORY_MB)),
            cpus=float(limits.get("cpus", DEFAULT_CPUS)),
            created_by=created_by,
            secret=os.urandom(32).hex(),
            release_version=version,
        )
        emit(f"       {run.name} of v{version} (berth logs --ps {run.name} -a {app}):")
        follower = LogFollower(
            self.settings.logs_url,
            self._read_token(),
            app,
            run.name,
            started - LOOK_BACK_SECONDS,
            lambda text: emit(f"       {text}"),
        )
        follower.start()
        stopped = False
        try:
            ended = self._wait(app, run.number, time.monotonic() + self.timeout)
            if ended is None:
                emit(f" !     The release command is still running after {self.timeout:.0f}s:")
                emit("       stopping it")
                self._stop(app, run.number)
                stopped = True
                ended = self._wait(app, run.number, time.monotonic() + STOP_WAIT_SECONDS)
        finally:
            follower.finish()
        if follower.problem:
            emit(f"       (its output could not be shown here: {follower.problem})")
        problem = outcome_of(ended, self.timeout, stopped)
        log.info(
            "release command ended",
            extra={
                "app": app,
                "release": version,
                "run": run.number,
                "outcome": ended.outcome if ended else "",
                "exit_code": ended.exit_code if ended else None,
            },
        )
        return problem

    def _wait(self, app: str, number: int, deadline: float) -> Run | None:
        """The run's record once finished, or None at the deadline. ZooKeeper going away for
        a moment does not end the wait (the command is still running)."""
        while True:
            try:
                run = self.store.get_run(app, number)
            except Unavailable:
                run = None
            if run is not None and run.state == RUN_FINISHED:
                return run
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL_SECONDS)

    def _stop(self, app: str, number: int) -> None:
        """A run not launched yet is finished (killed) so the framework never launches it;
        a launched one's task is stopped (`ps:stop`)."""

        def cancel(current: Run) -> Run | None:
            if current.state != RUN_PENDING:
                return None
            return replace(
                current,
                state=RUN_FINISHED,
                secret="",
                outcome="killed",
                message=f"not started within {self.timeout:.0f}s",
            )

        self.store.change_run(app, number, cancel)
        for task in self.store.list_tasks(app):
            if task.process == RUN and task.index == number and task.live:
                self.store.request_stop(task.id)
