"""Health checks the executor runs itself: Mesos honours `TaskInfo.health_check` only in its
built-in executors, so a custom executor probes its task and reports `healthy` on RUNNING.

A `Probe` checks once: `tcp` connects to the task's port, `http` sends `GET path` there and
wants a 2xx or 3xx answer, `none` always passes. The executor aims a `tcp` probe at the
container's own address on Docker's bridge when it has one (`direct`: a refused connection
means nothing listens yet, an accepted one that something does), else at the host port.
Docker publishes ports through `docker-proxy`, which accepts a connection on the host port even
when nothing listens in the container and then closes it at once; so there a TCP connection
counts only if it stays open (or the server speaks) for `settle` seconds, and a server that
accepts and closes straight away reads as unhealthy.

A `HealthWatch` runs in a thread of its own (the executor starts one per task): it probes until
the first pass, then every `interval`, and calls `on_change(healthy, detail)` on each
transition — the first pass, `failures` consecutive failures, the first pass after them. If no
check passes within `startup` seconds of the start it calls `on_never(detail)` once and
returns (the executor then ends the task: a process that never answers must not hold a
deploy forever; Heroku's boot timeout is the same 60 s). It also returns when its `stop` event
is set (the container exited, or a kill began).

Must not import flask, kazoo, berth.api or berth.cli (import-linter contract); uses only the
standard library.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from berth.framework import http1

log = logging.getLogger(__name__)

KINDS = ("tcp", "http", "none")


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Probe:
    """One check of a task's port on this host (or of the container's own address)."""

    kind: str  # one of KINDS
    port: int
    path: str = "/"
    host: str = "127.0.0.1"
    timeout: float = 2.0
    settle: float = 0.2  # a TCP connection must stay open this long (docker-proxy, above)
    direct: bool = False  # host:port is the process itself (no docker-proxy): no settling

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"health check {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind != "none" and not 1 <= self.port <= 65535:
            raise ValueError(f"health check port {self.port} is out of range")
        if self.kind == "http" and (
            not self.path.startswith("/") or any(c <= " " or c == "\x7f" for c in self.path)
        ):
            raise ValueError(
                f"health check path {self.path!r} must start with / and have no spaces"
            )

    def check(self) -> Outcome:
        if self.kind == "tcp":
            return self._tcp()
        if self.kind == "http":
            return self._http()
        return Outcome(True, "no health check")

    def _tcp(self) -> Outcome:
        address = f"{self.host}:{self.port}"
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
                if self.direct:
                    return Outcome(True, f"tcp {address} accepts connections")
                sock.settimeout(self.settle)
                try:
                    if sock.recv(1) == b"":
                        return Outcome(False, f"{address} closed the connection at once")
                except TimeoutError:
                    pass  # open and quiet: someone listens
        except OSError as e:
            return Outcome(False, f"tcp {address}: {e}")
        return Outcome(True, f"tcp {address} accepts connections")

    def _http(self) -> Outcome:
        url = f"http://{self.host}:{self.port}{self.path}"
        try:
            with http1.request(
                http1.Endpoint("http", self.host, self.port),
                "GET",
                self.path,
                headers={"User-Agent": "berth-executor"},
                connect_timeout=self.timeout,
                timeout=self.timeout,
            ) as response:
                status = response.status  # the head is enough; the body is not read
        except OSError as e:
            return Outcome(False, f"GET {url}: {type(e).__name__}: {e}")
        if 200 <= status < 400:
            return Outcome(True, f"GET {url}: {status}")
        return Outcome(False, f"GET {url}: {status}")


# Until the first pass, probes come every FAST_RETRY seconds for the first FAST_PHASE seconds
# (a process that starts quickly takes traffic within 50 ms of listening; a TCP connect or one
# small request 20 times a second costs the task nothing), then every startup_interval.
FAST_RETRY = 0.05
FAST_PHASE = 5.0


@dataclass(frozen=True, slots=True)
class Policy:
    """How often to probe and when to change one's mind. Until the first pass the probe is
    retried every 50 ms for 5 s, then every `startup_interval`, for at most `startup`
    seconds."""

    interval: float = 10.0
    failures: int = 3
    startup_interval: float = 0.5
    startup: float = 60.0

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.startup_interval <= 0 or self.startup <= 0:
            raise ValueError("health check intervals must be positive")
        if self.failures < 1:
            raise ValueError("health check failures must be at least 1")


class HealthWatch:
    """Probes one task until `stop` is set; reports transitions to `on_change`, which must
    not block for long (the executor queues a status update)."""

    def __init__(
        self,
        probe: Probe,
        policy: Policy,
        on_change: Callable[[bool, str], None],
        stop: threading.Event,
        on_never: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._policy = policy
        self._on_change = on_change
        self._on_never = on_never
        self._stop = stop
        self._clock = clock

    def run(self) -> None:
        if not self._wait_first_pass():
            return
        healthy, failed = True, 0
        while not self._stop.wait(self._policy.interval):
            outcome = self._probe.check()
            if self._stop.is_set():
                return
            if outcome.ok:
                failed = 0
                if not healthy:
                    healthy = True
                    log.info("task healthy again: %s", outcome.detail)
                    self._on_change(True, outcome.detail)
                continue
            failed += 1
            log.info(
                "health check failed: %s",
                outcome.detail,
                extra={"failures": failed, "threshold": self._policy.failures},
            )
            if healthy and failed >= self._policy.failures:
                healthy = False
                self._on_change(False, f"{failed} health checks failed; last: {outcome.detail}")

    def _wait_first_pass(self) -> bool:
        attempts = 0
        started = self._clock()
        deadline = started + self._policy.startup
        while not self._stop.is_set():
            outcome = self._probe.check()
            attempts += 1
            if self._stop.is_set():
                return False
            if outcome.ok:
                log.info("task healthy: %s", outcome.detail, extra={"attempts": attempts})
                self._on_change(True, outcome.detail)
                return True
            if self._clock() >= deadline:
                log.warning(
                    "no health check passed in time: %s",
                    outcome.detail,
                    extra={"attempts": attempts, "startup": self._policy.startup},
                )
                if self._on_never is not None:
                    self._on_never(
                        f"no health check passed within {self._policy.startup:g} s"
                        f" (last: {outcome.detail})"
                    )
                return False
            if attempts == 1 or attempts % 100 == 0:
                log.info("waiting for the task to become healthy: %s", outcome.detail)
            fast = self._clock() - started < FAST_PHASE
            self._stop.wait(min(self._policy.startup_interval, FAST_RETRY if fast else 1e9))
        return False
