"""routing, routing:set: how the router treats an app's HTTP requests."""

from __future__ import annotations

from typing import Any

import click

from berth.cli.common import app_option, client, json_option, parse_pairs, resolve_app
from berth.cli.output import emit_json, header, pairs

_KEYS = {"timeout": "timeout", "https-only": "https_only", "https_only": "https_only"}


def _show(name: str, data: dict[str, Any]) -> None:
    header(f"{name} routing")
    timeout = data["timeout"]
    pairs(
        [
            ("timeout", "router default" if timeout is None else f"{timeout}s"),
            ("https only", "on" if data["https_only"] else "off"),
        ]
    )


@click.command("routing")
@app_option
@json_option
def routing(app: str | None, as_json: bool) -> None:
    """Show the app's router settings."""
    name = resolve_app(app)
    data = client().get(f"/v1/apps/{name}/routing")
    if as_json:
        emit_json(data)
    else:
        _show(name, data)


@click.command("routing:set")
@click.argument("settings", nargs=-1, required=True, metavar="timeout=60 https-only=on")
@app_option
def set_(settings: tuple[str, ...], app: str | None) -> None:
    """Change the app's router settings: `timeout` (seconds for the app's first byte before a
    504; `default` for the router's) and `https-only` (on: plain HTTP is redirected to HTTPS)."""
    name = resolve_app(app)
    body: dict[str, object] = {}
    for key, value in parse_pairs(settings, "timeout=SECONDS or https-only=on|off"):
        if key not in _KEYS:
            raise click.UsageError(f"{key[:40]!r}: expected timeout or https-only")
        body[_KEYS[key]] = None if key == "timeout" and value == "default" else value
    _show(name, client().call("PATCH", f"/v1/apps/{name}/routing", body))
