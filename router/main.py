"""`berth router`: the controller that keeps a local HAProxy's routes equal to what ZooKeeper
says is running.

Responsibility: read apps, tasks and custom domains from the Store (arming one-shot ZooKeeper
watches with every read), build the route table (table.py), and apply the difference to HAProxy
(haproxy.py):

- a server added, drained or removed, or a host mapped or unmapped, goes through HAProxy's
  runtime API: no reload, live as soon as the watch fires (a ZooKeeper round trip);
- an app added or removed changes the configuration's structure: the config is rendered,
  checked with `haproxy -c`, and HAProxy reloads seamlessly (master-worker; the listening
  sockets pass to the new worker);
- the config and map files on disk always describe the current table, so a reload or a
  restarted HAProxy starts from it;
- a server that still has requests in flight is not deleted: it stays drained and the delete
  is retried every round;
- if a runtime command fails, the controller falls back to a validated reload;
- if HAProxy dies it is started again from the last table; a controller restarted (even after
  `kill -9`) adopts the HAProxy it finds running in its run directory, which kept serving the
  last good table meanwhile;
- a TCP route whose port this router cannot serve (its own HTTP port, or one it cannot bind:
  privileged, or another program's) is left out and logged, and the other routes are served;
  it is tried again every 2 s.

Threads: `Controller.run` owns everything on the calling thread; kazoo's thread only sets an
Event. A full read runs whenever the ZooKeeper connection is (re)established (an expired
session loses its watches) and every `resync` seconds whatever the watches say: a safety net,
long enough that re-reading a large table (10,000 apps) does not compete with HAProxy for the
CPU.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click

from berth.framework import jsonlog, logship
from berth.framework.errors import BerthError
from berth.framework.loglines import platform_token
from berth.framework.model import TcpRoute
from berth.framework.options import settings_options
from berth.framework.sealing import Sealer, load_or_create_key
from berth.framework.settings import Settings
from berth.framework.state import Store, connect
from berth.router import table as routes
from berth.router.accesslog import AccessLog, Forwarder
from berth.router.acme import LETS_ENCRYPT, AcmeSettings, Issuer
from berth.router.haproxy import (
    HAProxy,
    RouterConfig,
    Runtime,
    render,
    render_maps,
    validate,
    write_atomically,
    write_pages,
)
from berth.router.tls import TlsRound

log = logging.getLogger(__name__)

SKIPPED_RETRY = 2.0  # seconds between attempts at TCP routes this router could not serve
LIVENESS_EVERY = 1.0  # seconds between checks that HAProxy's master process lives
DEBOUNCE = 0.02  # seconds: let a burst of watch events (a deploy) land in one round


class Controller:
    def __init__(
        self,
        store: Store,
        config: RouterConfig,
        base_domain: str,
        *,
        haproxy_binary: str = "haproxy",
        resync: float = 30.0,
    ) -> None:
        """With `config.https_addr`, the store must have the sealer (certificate keys)."""
        self._store = store
        self._config = config
        self._base_domain = base_domain
        self._binary = haproxy_binary
        self._haproxy = HAProxy(config, binary=haproxy_binary)
        self._runtime = Runtime(config.admin_socket)
        self._tls = TlsRound(store, config, self._runtime) if config.https_addr else None
        self._resync = resync
        self._changed = threading.Event()
        store.when_connected(self._changed.set)
        self._applied: routes.Table | None = None
        self._removals: set[tuple[str, str]] = set()  # (backend, server) still to delete
        self._retry_at = 0.0
        self._skipped: dict[int, str] = {}  # TCP route port → why this router cannot serve it
        self.rounds = 0

    def _on_watch(self, event: Any) -> None:
        self._changed.set()  # kazoo's thread: signal only

    # -- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self._config.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_pages(self._config)
        adopted = self._haproxy.adopt()
        log.info("router starting", extra={"adopted_haproxy": adopted})
        while not stop.is_set():
            self._changed.clear()
            try:
                self._round()
            except BerthError as exc:  # ZooKeeper away or HAProxy refused: try again soon
                log.warning("router round failed: %s", exc.message)
                self._changed.set()
                stop.wait(1.0)
            except Exception:  # a bug must not stop routing updates: HAProxy keeps serving
                log.exception("router round failed")
                self._changed.set()
                stop.wait(1.0)
            wait = self._resync
            if self._removals:
                wait = max(0.0, min(wait, self._retry_at - time.monotonic()))
            if self._skipped:  # a TCP route's port may be free by now: try again soon
                wait = min(wait, SKIPPED_RETRY)
            self._wait_for_work(wait)
            if self._changed.is_set():
                stop.wait(DEBOUNCE)
        log.info("router stopped; HAProxy keeps serving the last table")

    def _wait_for_work(self, seconds: float) -> None:
        """Until a watch fires, `seconds` pass, or HAProxy is found dead (checked every
        `LIVENESS_EVERY` seconds: a dead HAProxy is started again at once, not at the next
        resync)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._changed.wait(min(left, LIVENESS_EVERY)):
                return
            if self._applied is not None and not self._haproxy.running():
                self._changed.set()
                return

    def wake(self) -> None:
        """Ends the current wait at once (any thread; used when stopping)."""
        self._changed.set()

    def stop_haproxy(self) -> None:
        self._haproxy.stop()

    def read(self) -> routes.Table:
        apps = self._store.list_apps(watch=self._on_watch, watch_each=True)
        tasks = self._store.list_tasks(watch=self._on_watch)
        domains = self._store.all_domains(watch=self._on_watch)
        tcp = self._servable(self._store.all_tcp_routes(watch=self._on_watch))
        routing = {
            a.name: routes.Routing(a.timeout, a.https_only)
            for a in apps
            if a.timeout is not None or a.https_only
        }
        return routes.build([a.name for a in apps], tasks, domains, self._base_domain, tcp, routing)

    def _servable(self, tcp_routes: list[TcpRoute]) -> list[TcpRoute]:
        """The TCP routes this router can serve; the others are logged (once per reason)."""
        held: set[int] | None = None  # ports the running HAProxy listens on, asked when needed
        reserved = {self._config.http_port: "it is the router's HTTP port"}
        if self._config.https_addr is not None:
            https_port = int(self._config.https_addr.rpartition(":")[2])
            reserved[https_port] = "it is the router's HTTPS port"
        servable: list[TcpRoute] = []
        skipped: dict[int, str] = {}
        for route in tcp_routes:
            why = reserved.get(route.port)
            if why is None:
                why = bind_error(self._config.tcp_bind_host, route.port)
            if why is not None and why != reserved.get(route.port):
                if held is None:
                    held = self._held_ports()
                if route.port in held:
                    why = None  # ours: HAProxy is serving this route
            if why is None:
                servable.append(route)
                continue
            skipped[route.port] = why
            if self._skipped.get(route.port) != why:
                log.warning(
                    "tcp route %s of app %s not served: %s",
                    route.port,
                    route.app,
                    why,
                    extra={"port": route.port, "app": route.app, "reason": why},
                )
        for port in sorted(set(self._skipped) - set(skipped)):
            log.info("tcp route %s no longer skipped", port, extra={"port": port})
        self._skipped = skipped
        return servable

    def _held_ports(self) -> set[int]:
        if not self._haproxy.running():
            return set()
        try:
            names = self._runtime.proxies()
        except BerthError:
            return set()
        prefix = routes.listener_name(0).removesuffix("0")
        return {
            int(name.removeprefix(prefix))
            for name in names
            if name.startswith(prefix) and name.removeprefix(prefix).isdigit()
        }

    def _round(self) -> None:
        self.rounds += 1
        wanted = self.read()
        if self._tls is not None:
            live = self._applied is not None and self._haproxy.running()
            try:
                reload = self._tls.update(wanted, self._on_watch, live=live)
            except (BerthError, OSError) as exc:  # routing goes on with the files as they are
                log.warning("certificates not updated: %s", getattr(exc, "message", exc))
                reload = False
            if reload and live:
                self._reload(wanted)  # new certificates: a seamless reload loads them
                return
        if not self._haproxy.running():
            self._start(wanted)
            return
        if self._applied is None:
            # adopted, or first round: the running HAProxy's table is unknown, so reload
            self._reload(wanted)
            return
        changes = routes.diff(self._applied, wanted)
        if changes.structural:
            self._reload(wanted)
            return
        try:
            self._apply(changes)
        except BerthError as exc:
            log.warning("runtime API change failed (%s); reloading instead", exc.message)
            self._reload(wanted)
            return
        self._applied = wanted
        self._write(wanted)
        self._retry_removals()

    # -- applying ----------------------------------------------------------------------------

    def _write(self, wanted: routes.Table) -> None:
        """The files on disk describe `wanted`: a reload or restart starts from it."""
        write_pages(self._config, wanted)
        for name, text in render_maps(wanted).items():
            write_atomically(self._config.run_dir / name, text)
        candidate = self._config.config_path.with_suffix(".new")
        write_atomically(candidate, render(wanted, self._config))
        validate(candidate, self._binary)
        candidate.replace(self._config.config_path)

    def _start(self, wanted: routes.Table) -> None:
        self._write(wanted)
        self._haproxy.start()
        self._applied = wanted
        self._removals.clear()
        log.info("haproxy started", extra=_counts(wanted))

    def _reload(self, wanted: routes.Table) -> None:
        self._write(wanted)
        self._haproxy.reload()
        self._applied = wanted
        self._removals.clear()  # the new worker has only the servers of `wanted`
        log.info("haproxy reloaded", extra=_counts(wanted))

    def _apply(self, changes: routes.Changes) -> None:
        maps = {"hosts": self._config.hosts_map, "wildcards": self._config.wildcards_map}
        for backend, server in changes.add:
            self._removals.discard((backend, server.name))
            self._runtime.add_server(backend, server)
            if server.draining:
                self._runtime.drain(backend, server.name)
            log.info("server added", extra={"backend": backend, "server": server.name})
        for backend, name in changes.ready:
            self._runtime.ready(backend, name)
        for backend, name in changes.drain:
            self._runtime.drain(backend, name)
            log.info("server draining", extra={"backend": backend, "server": name})
        for backend, name in changes.remove:
            self._removals.add((backend, name))
        for kind, key, value in changes.map_set:
            self._runtime.set_map(maps[kind], key, value)
        for kind, key in changes.map_del:
            self._runtime.del_map(maps[kind], key)

    def _retry_removals(self) -> None:
        for backend, name in sorted(self._removals):
            if self._runtime.remove_server(backend, name):
                self._removals.discard((backend, name))
                log.info("server removed", extra={"backend": backend, "server": name})
        if self._removals:
            self._retry_at = time.monotonic() + 0.5  # requests still in flight: look again soon


def _counts(table: routes.Table) -> dict[str, int]:
    return {
        "apps": len(table.backends),
        "servers": sum(len(b.servers) for b in table.backends.values()),
        "hosts": len(table.hosts) + len(table.wildcards),
        "tcp_routes": len(table.listeners),
    }


def bind_error(host: str, port: int) -> str | None:
    """Why a listening socket on (host, port) cannot be had now, or None if it can. Probes
    with a socket of its own (closed at once), without SO_REUSEPORT, so a port any other
    process listens on counts as taken."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        return f"cannot resolve {host!r}: {exc}"
    infos.sort(key=lambda info: info[0] != socket.AF_INET)  # ":5432" is IPv4 to HAProxy
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return f"cannot bind port {port}: {exc.strerror or exc}"
    return None


@click.command("router")
@settings_options
@click.option(
    "--http-addr",
    envvar="BERTH_HTTP_ADDR",
    default="0.0.0.0:80",
    show_default=True,
    help="[HOST]:PORT HAProxy serves apps' HTTP on",
)
@click.option(
    "--run-dir",
    envvar="BERTH_ROUTER_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="HAProxy's config, maps and sockets [default: DATA_DIR/router]",
)
@click.option("--haproxy", "haproxy_binary", default="haproxy", show_default=True)
@click.option(
    "--timeout-server",
    type=click.IntRange(1, 3600),
    default=30,
    show_default=True,
    help="Seconds to wait for an app's first byte before answering 504",
)
@click.option(
    "--tcp-addr",
    "tcp_host",
    envvar="BERTH_TCP_ADDR",
    metavar="HOST",
    help="The address TCP routes listen on [default: --http-addr's host]",
)
@click.option(
    "--accept-proxy",
    is_flag=True,
    envvar="BERTH_ACCEPT_PROXY",
    help="Expect a PROXY protocol header (v1 or v2) from an upstream load balancer on every"
    " connection (HTTP and TCP routes); connections without one are refused",
)
@click.option(
    "--https-addr",
    envvar="BERTH_HTTPS_ADDR",
    help="[HOST]:PORT HAProxy serves apps' HTTPS on (certificates by SNI, HTTP/2)"
    " [default: no HTTPS]",
)
@click.option(
    "--acme/--no-acme",
    envvar="BERTH_ACME",
    default=True,
    show_default=True,
    help="With --https-addr, get certificates for custom domains over ACME (HTTP-01)",
)
@click.option(
    "--acme-directory",
    envvar="BERTH_ACME_DIRECTORY",
    default=LETS_ENCRYPT,
    show_default=True,
    help="The ACME directory URL (a test CA's, say)",
)
@click.option("--acme-email", envvar="BERTH_ACME_EMAIL", help="The ACME account's contact")
@click.option(
    "--acme-ca-bundle",
    envvar="BERTH_ACME_CA_BUNDLE",
    type=click.Path(dir_okay=False, exists=True),
    help="Trust this CA file for the ACME directory's own TLS [default: the system's CAs]",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="Ship an access line per request into the app's log (source router)",
)
@click.option(
    "--stop-haproxy/--keep-haproxy",
    default=False,
    show_default=True,
    help="On SIGTERM, stop HAProxy too (by default it keeps serving the last table)",
)
def command(
    settings: Settings,
    http_addr: str,
    run_dir: Path | None,
    haproxy_binary: str,
    timeout_server: int,
    tcp_host: str | None,
    accept_proxy: bool,
    https_addr: str | None,
    acme: bool,
    acme_directory: str,
    acme_email: str | None,
    acme_ca_bundle: str | None,
    access_log: bool,
    stop_haproxy: bool,
) -> None:
    """Run the router: HAProxy fed from ZooKeeper (`berth server` runs it for you)."""
    jsonlog.setup("router")
    try:
        config = RouterConfig(
            http_addr=http_addr,
            run_dir=run_dir or settings.data_dir / "router",
            timeout_server=timeout_server,
            tcp_host=tcp_host.strip("[]") if tcp_host is not None else None,
            accept_proxy=accept_proxy,
            https_addr=https_addr or None,
            access_log=access_log,
        )
    except BerthError as exc:
        raise click.UsageError(exc.message) from None
    stop = threading.Event()
    sealer = None
    if config.https_addr:  # certificate keys are sealed in ZooKeeper, like config
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        sealer = Sealer(load_or_create_key(settings.data_dir))
    store = connect(settings.zk_hosts, settings.zk_chroot, sealer)
    controller = Controller(store, config, settings.domain, haproxy_binary=haproxy_binary)
    issuer = None
    if config.https_addr and acme:
        host, port = _parse_http(config.http_addr)
        issuer = Issuer(
            store,
            AcmeSettings(
                directory=acme_directory,
                email=acme_email,
                ca_bundle=acme_ca_bundle,
                challenge_addr=(host, port),
                base_domain=settings.domain,
            ),
        )
    # a daemon: an ACME request in flight may outlast the stop; it is abandoned (see below)
    issuing = threading.Thread(
        target=issuer.run if issuer else (lambda stop: None),
        args=(stop,),
        name="acme",
        daemon=True,
    )
    issuing.start()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        controller.wake()
        if issuer is not None:
            issuer.wake()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    forwarder: Forwarder | None = None
    access: AccessLog | None = None
    if config.access_log:
        forwarder = Forwarder(
            settings.logs_url, platform_token(logship.load_or_create_key(settings.data_dir))
        ).start()
        config.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        access = AccessLog(
            config.access_socket,
            forwarder.put,
            Runtime(config.admin_socket, timeout=1.0).dropped_logs,
        ).start()
    try:
        controller.run(stop)
    finally:
        stop.set()
        if access is not None:
            access.stop()
        if forwarder is not None:
            forwarder.stop(2.0)
        issuing.join(5.0)
        if issuing.is_alive():
            log.warning("acme issuer still waiting on the CA; abandoning its order")
        store.stop()
        if stop_haproxy:
            controller.stop_haproxy()
    log.info("router ran %.0fs", time.monotonic() - started, extra={"rounds": controller.rounds})


def _parse_http(addr: str) -> tuple[str, int]:
    """Where this router's own HTTP is reached from this machine (for the ACME self-check)."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):  # noqa: S104 - every interface: loopback is one
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, int(port)
