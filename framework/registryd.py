"""`berth registry`: Berth's image registry, Debian's `docker-registry` (distribution 2.8) with a
generated configuration (framework/registry.py `prepare`): storage under
`DATA_DIR/registry/storage`, htpasswd basic auth for the one user `berth` whose random password
is made on first start (`DATA_DIR/registry/credentials.json`, 0600), listening on `--listen`.

`berth server --registry-addr` runs it as a supervised child (`python -m
berth.framework.registryd`). It writes the files, then replaces itself with `docker-registry
serve` (exec), so the supervisor's SIGTERM reaches the registry itself. Imports only
berth.framework.
"""

from __future__ import annotations

import logging
import os
import shutil

import click

from berth.framework import jsonlog, registry
from berth.framework.errors import BerthError
from berth.framework.options import settings_options
from berth.framework.settings import Settings, parse_addr

log = logging.getLogger(__name__)

PROGRAM = "docker-registry"


def listen_address(value: str) -> str:
    """`[HOST]:PORT` → what distribution's `http.addr` takes (`:7072` = every address)."""
    host, port = parse_addr(value)
    if host in ("0.0.0.0", "::"):  # noqa: S104 - the documented "every address"
        return f":{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@click.command("registry")
@settings_options
@click.option(
    "--listen",
    envvar="BERTH_REGISTRY_ADDR",
    default=f":{registry.DEFAULT_PORT}",
    show_default=True,
    help="[HOST]:PORT the registry listens on",
)
def command(settings: Settings, listen: str) -> None:
    """Run Berth's image registry (`berth server --registry-addr` runs it for you)."""
    jsonlog.setup("registry")
    program = shutil.which(PROGRAM)
    if program is None:
        raise click.ClickException(
            f"{PROGRAM} is not installed: apt-get install docker-registry apache2-utils"
        )
    try:
        addr = listen_address(listen)
        config = registry.prepare(settings.data_dir, addr)
    except BerthError as exc:
        raise click.ClickException(exc.message) from None
    log.info("starting the registry", extra={"listen": addr, "config": str(config)})
    os.execv(program, [program, "serve", str(config)])  # noqa: S606 - fixed argv, no shell


if __name__ == "__main__":
    command(prog_name="berth registry")
