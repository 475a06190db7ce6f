"""`berth api`: prepare the data dir, bootstrap ZooKeeper and the admin token, then serve the
API with gunicorn (threaded worker; the Store is created in the worker, after the fork).

Runs in the process's main thread; gunicorn owns the signals (TERM: graceful stop)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click
from flask import Flask
from gunicorn.app.base import BaseApplication

from berth.api import applog
from berth.api.app import create_app
from berth.framework import jsonlog, tokens
from berth.framework.options import settings_options
from berth.framework.sealing import Sealer, load_or_create_key
from berth.framework.settings import Settings
from berth.framework.state import Store, connect

log = logging.getLogger(__name__)

ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 - a file name, not a secret


def prepare_data_dir(data_dir: Path) -> None:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)


def bootstrap_admin(settings: Settings, store: Store) -> None:
    """On this Berth's first start, create the admin token into DATA_DIR/admin.token (0600).

    The file is written before the token is stored, so a crash leaves no token nobody holds."""
    path = settings.data_dir / ADMIN_TOKEN_FILE
    pending = path.with_suffix(".new")
    secret, record = tokens.new_token("admin", "berth api (first start)")
    pending.unlink(missing_ok=True)
    fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    if store.bootstrap_token(record):
        pending.replace(path)
        log.info("admin token created", extra={"path": str(path), "token": record.id})
        click.echo(
            f"\nBerth's admin token was written to {path}. Log in with:\n\n"
            f'    berth login {settings.api_url} --token "$(cat {path})"\n'
        )
        return
    pending.unlink()
    if path.exists():
        log.info('log in with: berth login %s --token "$(cat %s)"', settings.api_url, path)
    else:
        log.info(
            "this Berth was bootstrapped elsewhere: get a token with `berth tokens:create`"
            " from a machine that is logged in"
        )


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, sealer: Sealer, threads: int) -> None:
        self._settings = settings
        self._sealer = sealer
        self._threads = threads
        super().__init__()

    def load_config(self) -> None:
        host = self._settings.api_host
        host = f"[{host}]" if ":" in host else host
        config: dict[str, Any] = {
            "bind": [f"{host}:{self._settings.api_port}"],
            "workers": 1,
            "worker_class": "gthread",
            "threads": self._threads,
            "graceful_timeout": 10,
            "keepalive": 5,
            "accesslog": None,
            "proc_name": "berth-api",
            "control_socket_disable": True,
            "logconfig_dict": {
                "version": 1,
                "disable_existing_loggers": False,
                "formatters": {
                    "json": {"()": "berth.framework.jsonlog.JsonFormatter", "process": "api"}
                },
                "handlers": {
                    "stderr": {
                        "class": "logging.StreamHandler",
                        "formatter": "json",
                        "stream": "ext://sys.stderr",
                    }
                },
                "root": {"level": "INFO", "handlers": ["stderr"]},
                "loggers": {
                    "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
                    "kazoo": {"level": "WARNING"},
                },
            },
            "worker_exit": _worker_exit,
        }
        for key, value in config.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Flask:
        # In the worker, after the fork: kazoo's threads must not cross a fork.
        store = Store(self._settings.zk_hosts, self._settings.zk_chroot, self._sealer)
        store.connect_in_background()
        return create_app(store, self._settings)


def _worker_exit(server: Any, worker: Any) -> None:
    app = getattr(worker, "wsgi", None)
    if isinstance(app, Flask):
        applog.close_for(app)  # build lines still queued for logd
    store = app.extensions.get("berth.store") if isinstance(app, Flask) else None
    if isinstance(store, Store):
        store.stop()


@click.command("api")
@settings_options
@click.option(
    "--threads",
    envvar="BERTH_API_THREADS",
    default=32,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Request threads (an attached `berth run` holds two for its whole life)",
)
def command(settings: Settings, threads: int) -> None:
    """Run the API server alone (`berth server` runs it for you)."""
    jsonlog.setup("api")
    prepare_data_dir(settings.data_dir)
    sealer = Sealer(load_or_create_key(settings.data_dir))
    store = connect(settings.zk_hosts, settings.zk_chroot, sealer)
    try:
        bootstrap_admin(settings, store)
    finally:
        store.stop()
    log.info("serving the API", extra={"addr": f"{settings.api_host}:{settings.api_port}"})
    _Gunicorn(settings, sealer, threads).run()
