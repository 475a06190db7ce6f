"""`berth server`: run the control plane's processes on one machine and keep them running.

Each component is its own process (`berth api`, `berth framework`; `berth router` when it
lands), started with the same settings, restarted with backoff (1 s doubling to 30 s, reset
after a minute up) if it dies, and stopped with SIGTERM (SIGKILL after a grace period) when the
server is asked to stop. Starts children by command line only: imports no other berth package.

Threads: the main thread runs `Supervisor.run`; signal handlers only set the stop Event.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

import click

from berth.framework import jsonlog
from berth.framework.options import master_option, settings_args, settings_options
from berth.framework.settings import Settings

log = logging.getLogger(__name__)

# Each component runs as `python -m <module>`: its own entry, without the CLI client code.
COMPONENTS = {"api": "berth.api", "framework": "berth.framework"}
STOP_GRACE = 15.0
BACKOFF_START, BACKOFF_MAX, HEALTHY_AFTER = 1.0, 30.0, 60.0


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = BACKOFF_START
    next_start: float = field(default=0.0)


class Supervisor:
    def __init__(self, children: list[Child]) -> None:
        self._children = children

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                for child in self._children:
                    self._tend(child)
                stop.wait(0.5)
        finally:
            self._stop_all()

    def _tend(self, child: Child) -> None:
        now = time.monotonic()
        if child.proc is not None:
            code = child.proc.poll()
            if code is None:
                if now - child.started > HEALTHY_AFTER:
                    child.backoff = BACKOFF_START
                return
            log.error(
                "%s exited with %s; restarting in %.0fs",
                child.name,
                code,
                child.backoff,
                extra={"component": child.name, "exit_code": code},
            )
            child.proc = None
            child.next_start = now + child.backoff
            child.backoff = min(child.backoff * 2, BACKOFF_MAX)
        if now >= child.next_start:
            log.info("starting %s", child.name, extra={"component": child.name})
            child.proc = subprocess.Popen(child.argv)
            child.started = now

    def _stop_all(self) -> None:
        running = [c for c in self._children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            assert child.proc is not None
            child.proc.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", child.name, STOP_GRACE)
                child.proc.kill()
                child.proc.wait()


@click.command("server")
@settings_options
@master_option
def command(settings: Settings, master: str) -> None:
    """Run Berth's control plane on this machine: the API and the framework (scheduler)."""
    jsonlog.setup("server")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    children = [
        Child(
            name,
            [
                sys.executable,
                "-m",
                module,
                *settings_args(settings),
                *([f"--master={master}"] if name == "framework" else []),
            ],
        )
        for name, module in COMPONENTS.items()
    ]
    log.info("berth server starting", extra={"components": list(COMPONENTS), "zk": settings.zk})
    Supervisor(children).run(stop)
    log.info("berth server stopped")
