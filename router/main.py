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
  last good table meanwhile.

Threads: `Controller.run` owns everything on the calling thread; kazoo's thread only sets an
Event. A full resync runs every `resync` seconds whatever the watches say.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import click

from berth.framework import jsonlog
from berth.framework.errors import BerthError
from berth.framework.options import settings_options
from berth.framework.settings import Settings
from berth.framework.state import Store, connect
from berth.router import table as routes
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

log = logging.getLogger(__name__)

DEBOUNCE = 0.02  # seconds: let a burst of watch events (a deploy) land in one round


class Controller:
    def __init__(
        self,
        store: Store,
        config: RouterConfig,
        base_domain: str,
        *,
        haproxy_binary: str = "haproxy",
        resync: float = 5.0,
    ) -> None:
        self._store = store
        self._config = config
        self._base_domain = base_domain
        self._binary = haproxy_binary
        self._haproxy = HAProxy(config, binary=haproxy_binary)
        self._runtime = Runtime(config.admin_socket)
        self._resync = resync
        self._changed = threading.Event()
        self._applied: routes.Table | None = None
        self._removals: set[tuple[str, str]] = set()  # (backend, server) still to delete
        self._retry_at = 0.0
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
            self._changed.wait(wait)
            if self._changed.is_set():
                stop.wait(DEBOUNCE)
        log.info("router stopped; HAProxy keeps serving the last table")

    def wake(self) -> None:
        """Ends the current wait at once (any thread; used when stopping)."""
        self._changed.set()

    def stop_haproxy(self) -> None:
        self._haproxy.stop()

    def read(self) -> routes.Table:
        apps = [a.name for a in self._store.list_apps(watch=self._on_watch)]
        tasks = self._store.list_tasks(watch=self._on_watch)
        domains = self._store.all_domains(watch=self._on_watch)
        return routes.build(apps, tasks, domains, self._base_domain)

    def _round(self) -> None:
        self.rounds += 1
        wanted = self.read()
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
    }


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
    stop_haproxy: bool,
) -> None:
    """Run the router: HAProxy fed from ZooKeeper (`berth server` runs it for you)."""
    jsonlog.setup("router")
    try:
        config = RouterConfig(
            http_addr=http_addr,
            run_dir=run_dir or settings.data_dir / "router",
            timeout_server=timeout_server,
        )
    except BerthError as exc:
        raise click.UsageError(exc.message) from None
    stop = threading.Event()
    store = connect(settings.zk_hosts, settings.zk_chroot, None)
    controller = Controller(store, config, settings.domain, haproxy_binary=haproxy_binary)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        controller.wake()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    try:
        controller.run(stop)
    finally:
        store.stop()
        if stop_haproxy:
            controller.stop_haproxy()
    log.info("router ran %.0fs", time.monotonic() - started, extra={"rounds": controller.rounds})
