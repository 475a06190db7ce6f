"""The click options every server process shares (`berth server`, `berth api`, later
`berth framework` and `berth router`), each also settable as a BERTH_* variable."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from berth.framework.errors import BerthError
from berth.framework.settings import (
    DEFAULT_API_ADDR,
    DEFAULT_DOMAIN,
    DEFAULT_LOGS_ADDR,
    DEFAULT_ZK,
    Settings,
    make_settings,
)

F = TypeVar("F", bound=Callable[..., Any])


def settings_options(fn: F) -> F:
    """Adds --data-dir, --zk, --api-addr, --domain, --logs-addr, --registry and passes
    `settings=`."""

    @click.option(
        "--data-dir",
        envvar="BERTH_DATA_DIR",
        type=click.Path(file_okay=False, path_type=Path),
        help="Keys and tokens [default: /var/lib/berth as root, else ~/.local/share/berth]",
    )
    @click.option(
        "--zk",
        envvar="BERTH_ZK",
        default=DEFAULT_ZK,
        show_default=True,
        help="ZooKeeper HOSTS[/chroot]",
    )
    @click.option(
        "--api-addr",
        envvar="BERTH_API_ADDR",
        default=DEFAULT_API_ADDR,
        show_default=True,
        help="[HOST]:PORT the API listens on",
    )
    @click.option(
        "--domain",
        envvar="BERTH_DOMAIN",
        default=DEFAULT_DOMAIN,
        show_default=True,
        help="Apps are reached at APP.<domain>",
    )
    @click.option(
        "--logs-addr",
        envvar="BERTH_LOGS_ADDR",
        default=DEFAULT_LOGS_ADDR,
        show_default=True,
        help="[HOST]:PORT of berth logd (it listens there; executors ship logs to it)",
    )
    @click.option(
        "--registry",
        envvar="BERTH_REGISTRY",
        default="",
        help="HOST:PORT of Berth's image registry, as the API and every agent reach it: built"
        " images are pushed there [default: none, or `berth server --registry-addr`'s]",
    )
    @wraps(fn)
    def wrapper(
        data_dir: Path | None,
        zk: str,
        api_addr: str,
        domain: str,
        logs_addr: str,
        registry: str,
        **kwargs: Any,
    ) -> Any:
        try:
            settings = make_settings(data_dir, zk, api_addr, domain, logs_addr, registry)
        except BerthError as exc:
            raise click.UsageError(exc.message) from None
        return fn(settings=settings, **kwargs)

    return wrapper  # type: ignore[return-value]


def settings_args(settings: Settings) -> list[str]:
    """The flags that hand these settings to a child process."""
    host = settings.api_host
    host = f"[{host}]" if ":" in host else host
    logs_host = f"[{settings.logs_host}]" if ":" in settings.logs_host else settings.logs_host
    return [
        f"--data-dir={settings.data_dir}",
        f"--zk={settings.zk}",
        f"--api-addr={host}:{settings.api_port}",
        f"--domain={settings.domain}",
        f"--logs-addr={logs_host}:{settings.logs_port}",
        *([f"--registry={settings.registry}"] if settings.registry else []),
    ]


def master_option(fn: F) -> F:
    """--master: `local` (this machine), `host:5050`, or `zk://host:2181/mesos`."""
    return click.option(
        "--master",
        envvar="BERTH_MASTER",
        default="local",
        show_default=True,
        help="local (this machine), HOST:5050, or zk://HOST:2181/mesos",
    )(fn)
