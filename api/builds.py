"""The build queue: what happens to a push once its objects are stored, up to a running release.

One `Pipeline` per `berth api` process (gunicorn runs exactly one worker). A push of app A
waits for A's lock, so pushes to one app run one after another, in arrival order; builds of
different apps run in parallel, at most `concurrency` at once (a semaphore, default 2). Both
are in-process: correct for one API host; several API hosts would need a ZooKeeper lock per
app (Store.lock) instead, which is not done yet.

Each push: take the app's lock → check the branch still points where the pusher saw it →
record a Build (status building) → wait for a build slot → build (buildpacks/slug.py's
AppBuilder: buildpacks, or dockerfile.py for a Dockerfile) →
`Store.deploy` (description "Deploy 1a2b3c4 (git push)", by the pusher's token) → with a
Procfile `release:` command, the release is written pending and its release phase runs
(api/releasephase.py): it goes live only if the command exits 0; if not, the push fails there,
the branch stays and the old release keeps serving → the first deploy scales web=1 → move the
branch → wait until a web task of the new release serves (or fails to start, or
`release_timeout` passes) → record the outcome → remove images no kept release uses
(api/prune.py). Every step's output goes through `emit` as it happens, which the
git endpoint turns into `remote:` lines, and into the app's log (api/applog.py: source
`build`, process the build's id; `berth` lines when a build starts, succeeds or fails).

Settings come from BERTH_* variables read once when the API starts (BuildSettings.from_env):
BERTH_GIT_MAX_PACK_MB (512), BERTH_BUILD_CONCURRENCY (2), BERTH_BUILD_TIMEOUT (900 s),
BERTH_BUILD_MEMORY_MB (2048), BERTH_RELEASE_TIMEOUT (180 s), BERTH_RELEASE_PHASE_TIMEOUT (300 s);
BERTH_KEEP_RELEASES (10) is api/prune.py's.

Threads: `stream()` runs the push in a thread of its own and hands its lines to the request
thread through a queue, so the request thread can keep the connection alive while a step is
quiet. A push whose client went away still finishes and is recorded.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from dulwich.repo import Repo

if TYPE_CHECKING:
    from dulwich.objects import ObjectID
    from dulwich.refs import Ref

from berth.api.applog import AppLog
from berth.api.artifacts import Publisher
from berth.api.prune import Pruner
from berth.api.releasephase import ReleasePhase
from berth.buildpacks.dockerfile import BuildError, Built, DockerfileBuilder, Limits
from berth.buildpacks.slug import AppBuilder, BuildpackBuilder, BuildpackOptions
from berth.framework import registry
from berth.framework.errors import BerthError, Invalid
from berth.framework.model import RELEASE_PROCESS, Artifact, Build, Task, clip_log, now
from berth.framework.settings import Settings
from berth.framework.state import Store

log = logging.getLogger(__name__)

ZERO = "0" * 40
KEEPALIVE_SECONDS = 10.0


def _env_int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise Invalid(f"{name}={raw[:20]!r}: expected a whole number from {low} to {high}")
    return int(raw)


@dataclass(frozen=True, slots=True)
class BuildSettings:
    max_pack_bytes: int = 512 * 1024 * 1024
    concurrency: int = 2
    timeout: float = 900.0
    memory_mb: int = 2048
    release_timeout: float = 180.0
    release_phase_timeout: float = 300.0  # a Procfile `release:` command's time to finish

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> BuildSettings:
        return cls(
            max_pack_bytes=_env_int(env, "BERTH_GIT_MAX_PACK_MB", 512, 1, 64 * 1024) << 20,
            concurrency=_env_int(env, "BERTH_BUILD_CONCURRENCY", 2, 1, 64),
            timeout=float(_env_int(env, "BERTH_BUILD_TIMEOUT", 900, 1, 24 * 3600)),
            memory_mb=_env_int(env, "BERTH_BUILD_MEMORY_MB", 2048, 64, 256 * 1024),
            release_timeout=float(_env_int(env, "BERTH_RELEASE_TIMEOUT", 180, 1, 3600)),
            release_phase_timeout=float(
                _env_int(env, "BERTH_RELEASE_PHASE_TIMEOUT", 300, 1, 24 * 3600)
            ),
        )


@dataclass(frozen=True, slots=True)
class Push:
    """A branch update that passed the checks: build `new` and move `ref` from `old` to it."""

    app: str
    ref: str  # refs/heads/main or refs/heads/master
    old: str  # 40 hex, ZERO when the branch is new
    new: str
    created_by: str
    repo: Path


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    message: str  # for the ref's report-status line when not ok
    release: int | None = None
    build: str = ""


def new_build_id() -> str:
    """8 hex digits of the start time (seconds) and 4 random: names sort by age."""
    return f"{int(time.time()) & 0xFFFFFFFF:08x}{secrets.token_hex(2)}"


class Builder(Protocol):
    """What turns a commit into an image (buildpacks/dockerfile.py's DockerfileBuilder)."""

    builder: str

    def build(
        self, repo: Repo, app: str, commit: str, build_id: str, emit: Callable[[str], None]
    ) -> Built: ...


class Pipeline:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        build_settings: BuildSettings,
        builder: Builder | None = None,
        applog: AppLog | None = None,  # build lines into `berth logs` (api/applog.py)
        pruner: Pruner | None = None,  # old images removed after a release (api/prune.py)
        publisher: Publisher | None = None,  # default: settings.registry's, if set
    ) -> None:
        self.applog = applog
        self.pruner = pruner
        self.store = store
        self.settings = settings
        self.build_settings = build_settings
        limits = Limits(memory_mb=build_settings.memory_mb, timeout=build_settings.timeout)
        # a root Dockerfile → the Docker engine, unless BUILDPACK_URL is set; else buildpacks
        self.builder: Builder = builder or AppBuilder(
            DockerfileBuilder(limits=limits, scratch_root=settings.data_dir / "builds"),
            BuildpackBuilder(settings.data_dir, limits=limits, options=BuildpackOptions.from_env()),
            config=lambda app: store.get_release(app).config,
        )
        self.release_phase = ReleasePhase(store, settings, build_settings.release_phase_timeout)
        self._slots = threading.BoundedSemaphore(build_settings.concurrency)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        # with a registry, every built image is pushed there (api/artifacts.py)
        self.publisher = publisher
        if publisher is None and settings.registry:
            credentials = registry.load_or_create_credentials(settings.data_dir)
            self.publisher = Publisher(settings.registry, credentials)

    def _app_lock(self, app: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(app, threading.Lock())

    def stream(self, push: Push) -> Iterator[str | Outcome | None]:
        """Runs the push in its own thread; yields its output lines as they come, None when
        nothing came for KEEPALIVE_SECONDS, and the Outcome last."""
        lines: queue.Queue[str | Outcome] = queue.Queue()

        def work() -> None:
            try:
                outcome = self.run(push, lines.put)
            except Exception:  # the push must get an answer whatever broke
                log.exception("push failed", extra={"app": push.app})
                outcome = Outcome(False, "internal error; see the API server's log")
            lines.put(outcome)

        threading.Thread(target=work, name=f"push-{push.app}", daemon=True).start()
        while True:
            try:
                item = lines.get(timeout=KEEPALIVE_SECONDS)
            except queue.Empty:
                yield None
                continue
            yield item
            if isinstance(item, Outcome):
                return

    def run(self, push: Push, emit: Callable[[str], None]) -> Outcome:
        lock = self._app_lock(push.app)
        if not lock.acquire(blocking=False):
            emit(f"-----> Another push to {push.app} is building; this one waits for it")
            lock.acquire()
        try:
            return self._run_locked(push, emit)
        finally:
            lock.release()

    def _run_locked(self, push: Push, emit: Callable[[str], None]) -> Outcome:
        with Repo(str(push.repo)) as repo:
            current = repo.refs.as_dict().get(cast("Ref", push.ref.encode()))
            if (current.decode() if current else ZERO) != push.old:
                return Outcome(
                    False,
                    f"{push.ref.removeprefix('refs/heads/')} moved meanwhile (another push"
                    " landed first): fetch, then push again",
                )
            kept: list[str] = []

            def record(line: str) -> None:
                kept.append(line)
                emit(line)
                self._log(push.app, "build", build.id, line)

            build = Build(
                id=new_build_id(),
                app=push.app,
                commit=push.new,
                builder=self.builder.builder,
                status="building",
                created_by=push.created_by,
                started_at=now(),
            )
            started = time.monotonic()
            try:
                self.store.put_build(build)
                log.info("build started", extra={"app": push.app, "build": build.id})
                self._log(push.app, "berth", "", f"Build {build.id} started by {push.created_by}")
                record(f"-----> Build {build.id} of {push.app} at {push.new[:12]}")
                if not self._slots.acquire(blocking=False):
                    record(
                        f"       Waiting for a build slot ({self.build_settings.concurrency}"
                        " builds run at once)"
                    )
                    self._slots.acquire()
                try:
                    built = self.builder.build(repo, push.app, push.new, build.id, record)
                finally:
                    self._slots.release()
                phase = RELEASE_PROCESS in built.process_types
                if phase:  # one left pending by a push the API never finished can never go live
                    self.store.fail_pending_releases(
                        push.app, "abandoned: its push ended before its release command did"
                    )
                release = self.store.deploy(
                    push.app,
                    self._artifact(built, record),
                    built.process_types,
                    f"Deploy {push.new[:7]} (git push)",
                    push.created_by,
                    pending=phase,
                )
            except BerthError as exc:
                record(f" !     {exc.message}")
                self._finish(build, started, kept, "failed", error=exc.message)
                log.info("build failed", extra={"app": push.app, "build": build.id})
                self._log(push.app, "berth", "", f"Build {build.id} failed: {exc.message}")
                reason = exc.message if isinstance(exc, BuildError) else f"error: {exc.message}"
                return Outcome(False, f"build failed: {reason}"[:200], build=build.id)
            build = replace(
                build, image=built.image, release=release.version, builder=built.builder
            )
            self._log(push.app, "berth", "", f"Build {build.id} succeeded: v{release.version}")
            if phase:
                try:
                    failed = self.release_phase.run(release, push.created_by, record)
                except BerthError as exc:
                    failed = f"v{release.version}'s release phase: {exc.message}"
                if failed:  # never live: the branch stays, the old release keeps serving
                    record(f" !     {failed}")
                    record(f"       v{release.version} did not go live; the current release stays")
                    self._log(push.app, "berth", "", f"Release v{release.version} failed: {failed}")
                    if self.pruner is not None:  # its image, unless a kept release uses it
                        self.pruner.after_release(push.app, record)
                    self._finish(build, started, kept, "succeeded", error=failed)
                    return Outcome(False, failed[:200], release.version, build.id)
            try:
                problem = self._release(push, repo, built, release.version, record)
            except BerthError as exc:
                problem = f"v{release.version} was made, but: {exc.message}"
            url = f"http://{push.app}.{self.settings.domain}/"
            if problem:
                record(f" !     {problem}")
                self._finish(build, started, kept, "succeeded", error=problem)
                return Outcome(False, problem[:200], release.version, build.id)
            record(f"-----> Released v{release.version}, {url}")
            if self.pruner is not None:  # old images no kept release uses
                self.pruner.after_release(push.app, record)
            self._finish(build, started, kept, "succeeded")
            log.info(
                "push released",
                extra={"app": push.app, "build": build.id, "release": release.version},
            )
            return Outcome(True, "", release.version, build.id)

    def _release(
        self, push: Push, repo: Repo, built: Built, version: int, emit: Callable[[str], None]
    ) -> str | None:
        """After the release is written: scale a first deploy, move the branch, wait for web."""
        formation = self.store.get_formation(push.app)
        if "web" in built.process_types and not formation:
            formation = self.store.scale(push.app, {"web": 1})
            emit("       Scaled web to 1 (the app's first deploy)")
        repo.refs.set_if_equals(
            cast("Ref", push.ref.encode()),
            None if push.old == ZERO else cast("ObjectID", push.old.encode()),
            cast("ObjectID", push.new.encode()),
        )
        # `git clone` checks out what HEAD names: the branch that deploys
        repo.refs.set_symbolic_ref(cast("Ref", b"HEAD"), cast("Ref", push.ref.encode()))
        emit(f"-----> Release v{version} made; starting it")
        return self._wait_serving(push.app, version, formation.get("web", 0), emit)

    def _artifact(self, built: Built, emit: Callable[[str], None]) -> Artifact:
        """The release's artifact: the local image, or with a registry the pushed one."""
        if self.publisher is None:
            return Artifact("image", built.image, built.port)
        return self.publisher.publish(built, emit)

    def _log(self, app: str, source: str, process: str, text: str) -> None:
        if self.applog is not None:
            self.applog.line(app, source, process, text)

    def _finish(
        self, build: Build, started: float, kept: list[str], status: str, error: str = ""
    ) -> None:
        done = replace(
            build,
            status=status,
            finished_at=now(),
            duration=round(time.monotonic() - started, 2),
            error=error,
            log=clip_log("\n".join(kept) + "\n"),
        )
        try:
            self.store.put_build(done)
        except BerthError as exc:  # the push's answer matters more than its record
            log.warning("could not record build", extra={"build": build.id, "why": exc.message})

    def _wait_serving(
        self, app: str, version: int, web: int, emit: Callable[[str], None]
    ) -> str | None:
        """None once a web task of release `version` serves; else why it did not."""
        if web == 0:
            emit("       No web process is scaled: nothing to wait for")
            return None
        deadline = time.monotonic() + self.build_settings.release_timeout
        reported: set[str] = set()
        last = ""
        while time.monotonic() < deadline:
            newest = self.store.get_release(app)
            if newest.version != version:
                return (
                    f"v{version} is no longer the newest release: v{newest.version}"
                    f" ({newest.description})"
                )
            tasks: list[Task] = [
                t for t in self.store.list_tasks(app) if t.process == "web" and t.release == version
            ]
            if any(t.state == "running" and t.healthy is not False for t in tasks):
                return None
            for task in tasks:
                if not task.live and task.id not in reported:
                    reported.add(task.id)
                    last = task.message or task.state
                    emit(f" !     web.{task.index} of v{version} {task.state}: {last}")
            time.sleep(0.25)
        detail = f" (last: {last})" if last else ""
        return (
            f"v{version}'s web process did not come up within"
            f" {self.build_settings.release_timeout:.0f}s{detail}; see `berth ps` and `berth logs`"
        )
