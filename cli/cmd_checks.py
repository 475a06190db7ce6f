"""checks, checks:set, checks:unset: when a new process counts as up."""

from __future__ import annotations

from typing import Any

import click

from berth.cli.common import app_option, client, json_option, parse_pairs, resolve_app
from berth.cli.output import emit_json, header, table


def _show(name: str, data: dict[str, Any]) -> None:
    header(f"{name} health checks")
    rows = []
    for ptype, check in sorted(data.items()):
        what = {"http": f"http GET {check.get('path', '/')}", "tcp": "tcp connect"}.get(
            check["type"], "none"
        )
        rows.append((ptype, what, f"{check['startup']}s", "default" if check["default"] else ""))
    table(("type", "check", "startup", ""), rows)


@click.command("checks")
@app_option
@json_option
def checks(app: str | None, as_json: bool) -> None:
    """Show each process type's health check."""
    name = resolve_app(app)
    data = client().get(f"/v1/apps/{name}/checks")
    if as_json:
        emit_json(data)
    else:
        _show(name, data)


@click.command("checks:set")
@click.argument("ptype", metavar="TYPE")
@click.argument(
    "settings", nargs=-1, required=True, metavar="path=/up [type=http|tcp|none] [startup=60]"
)
@app_option
def set_(ptype: str, settings: tuple[str, ...], app: str | None) -> None:
    """Set a process type's health check; applies to processes started from now on.

    A new process takes traffic once its check passes; one that doesn't pass within
    `startup` seconds is stopped, and a release whose processes keep failing that way is
    rolled back. Example: berth checks:set web path=/up startup=90"""
    name = resolve_app(app)
    values: dict[str, str] = {}
    for key, value in parse_pairs(settings, "path=/up, type=http|tcp|none or startup=SECONDS"):
        if key not in ("path", "type", "startup"):
            raise click.UsageError(f"{key[:40]!r}: expected path, type or startup")
        values[key] = value
    data = client().call("PATCH", f"/v1/apps/{name}/checks", {ptype: values})
    _show(name, data)


@click.command("checks:unset")
@click.argument("ptype", metavar="TYPE")
@app_option
def unset(ptype: str, app: str | None) -> None:
    """Give a process type its default check again (tcp for web, none for the others)."""
    name = resolve_app(app)
    data = client().call("PATCH", f"/v1/apps/{name}/checks", {ptype: None})
    _show(name, data)
