"""`berth server`: run Berth's processes on one machine and keep them running. Each
component is its own process (`berth api`, `berth logd`, `berth framework`, `berth router`,
and `berth registry` with `--registry-addr` or a Mesos master),
started with the same settings, restarted with backoff (1 s doubling to 30 s, reset after a
minute up) if it dies, and stopped with SIGTERM (SIGKILL after a grace period) when the
server is asked to stop. Starts children by command line only: imports no other berth package.
Threads: the main thread runs `Supervisor.run`; signal handlers only set the stop Event.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from types import FrameType

import click

from berth.framework import jsonlog, registry
from berth.framework.errors import BerthError
from berth.framework.options import master_option, settings_args, settings_options
from berth.framework.settings import Settings, parse_addr

log = logging.getLogger(__name__)

# Each component runs as `python -m <module>`: its own entry, without the CLI client code.
COMPONENTS = {
    "api": "berth.api",
    "logd": "berth.api.logd",
    "framework": "berth.framework",
    "router": "berth.router",
}
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


def component_args(
    name: str,
    master: str,
    http_addr: str,
    *,
    accept_proxy: bool = False,
    router_tls: tuple[str, ...] = (),
) -> list[str]:
    """The flags only one component takes. The router stops its HAProxy when `berth server`
    stops it; if the router dies instead, HAProxy keeps serving and the next router adopts it."""
    if name == "framework":
        return [f"--master={master}"]
    if name == "router":
        return [
            f"--http-addr={http_addr}",
            "--stop-haproxy",
            *(["--accept-proxy"] if accept_proxy else []),
            *router_tls,
        ]
    return []


def router_tls_args(
    https_addr: str | None,
    acme: bool | None,
    directory: str | None,
    email: str | None,
    ca_bundle: str | None,
) -> tuple[str, ...]:
    """`berth server`'s TLS flags as the router takes them (only those given: the router
    reads BERTH_* variables for the rest)."""
    args = [f"--https-addr={https_addr}"] if https_addr else []
    if acme is not None:
        args.append("--acme" if acme else "--no-acme")
    args += [f"--acme-directory={directory}"] if directory else []
    args += [f"--acme-email={email}"] if email else []
    args += [f"--acme-ca-bundle={ca_bundle}"] if ca_bundle else []
    return tuple(args)


def registry_component(
    settings: Settings, master: str, registry_addr: str | None
) -> tuple[Settings, Child] | None:
    """`berth registry` as a child when `--registry-addr` is given, or by default with a
    Mesos master (agents on other hosts must pull what the API builds). The settings every
    child gets then name the registry (`--registry`), unless one was given: this host's
    loopback in local mode, else its FQDN (docs/architecture.md "Artifacts")."""
    if registry_addr is None and master == "local":
        return None
    addr = registry_addr or f":{registry.DEFAULT_PORT}"
    try:
        host, port = parse_addr(addr)
    except BerthError as exc:
        raise click.UsageError(f"--registry-addr: {exc.message}") from None
    if not settings.registry:
        if host not in ("0.0.0.0", "::"):  # noqa: S104
            reach = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        elif master == "local":
            reach = f"127.0.0.1:{port}"
        else:
            reach = f"{socket.getfqdn()}:{port}"
        settings = replace(settings, registry=reach)
    child = Child(
        "registry",
        [
            sys.executable,
            "-m",
            "berth.framework.registryd",
            *settings_args(settings),
            f"--listen={addr}",
        ],
    )
    return settings, child


@click.command("server")
@settings_options
@master_option
@click.option(
    "--http-addr",
    envvar="BERTH_HTTP_ADDR",
    default="0.0.0.0:80",
    show_default=True,
    help="[HOST]:PORT the router serves apps' HTTP on",
)
@click.option(
    "--accept-proxy",
    is_flag=True,
    envvar="BERTH_ACCEPT_PROXY",
    help="The router expects a PROXY protocol header from an upstream load balancer",
)
@click.option(
    "--https-addr",
    envvar="BERTH_HTTPS_ADDR",
    help="[HOST]:PORT the router serves apps' HTTPS on [default: no HTTPS]",
)
@click.option(
    "--acme/--no-acme",
    default=None,
    help="With --https-addr, the router gets certificates for custom domains over ACME"
    " [default: on]",
)
@click.option("--acme-directory", help="The ACME directory URL [default: Let's Encrypt]")
@click.option("--acme-email", help="The ACME account's contact")
@click.option("--acme-ca-bundle", help="A CA file the router trusts for the ACME directory")
@click.option(
    "--registry-addr",
    envvar="BERTH_REGISTRY_ADDR",
    help="[HOST]:PORT where `berth registry` (docker-registry) listens; built images are"
    f" pushed there [default: off in local mode, :{registry.DEFAULT_PORT} with a Mesos --master]",
)
def command(
    settings: Settings,
    master: str,
    http_addr: str,
    accept_proxy: bool,
    https_addr: str | None,
    acme: bool | None,
    acme_directory: str | None,
    acme_email: str | None,
    acme_ca_bundle: str | None,
    registry_addr: str | None,
) -> None:
    """Run Berth on this machine: the API, the log aggregator, the framework (scheduler) and
    the router."""
    jsonlog.setup("server")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    registry_child = registry_component(settings, master, registry_addr)
    if registry_child is not None:  # the others get --registry through settings_args
        settings, child = registry_child
    children = [
        Child(
            name,
            [
                sys.executable,
                "-m",
                module,
                *settings_args(settings),
                *component_args(
                    name,
                    master,
                    http_addr,
                    accept_proxy=accept_proxy,
                    router_tls=router_tls_args(
                        https_addr, acme, acme_directory, acme_email, acme_ca_bundle
                    ),
                ),
            ],
        )
        for name, module in COMPONENTS.items()
    ]
    if registry_child is not None:
        children.insert(0, child)
    log.info("berth server starting", extra={"components": list(COMPONENTS), "zk": settings.zk})
    Supervisor(children).run(stop)
    log.info("berth server stopped")
