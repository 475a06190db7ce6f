"""routes, routes:add, routes:remove: how an app is reached. HTTP routes are its host names
(managed with `domains`); TCP routes expose a process type on a router port (Flynn's `route`):

    berth routes:add tcp --port 5432 --process db [--proxy-protocol v1|v2]
    berth routes:remove tcp --port 5432      (or by the id `routes` shows: tcp:5432)
"""

from __future__ import annotations

import click

from berth.cli.common import app_option, client, json_option, resolve_app
from berth.cli.output import emit_json, header, table

_PORT = click.IntRange(1, 65535)


@click.command("routes")
@app_option
@json_option
def routes(app: str | None, as_json: bool) -> None:
    """List the app's routes: its HTTP host names and its TCP routes."""
    name = resolve_app(app)
    found = client().get(f"/v1/apps/{name}/routes")
    if as_json:
        emit_json(found)
        return
    header(f"{name} routes")
    rows = []
    for route in found:
        if route["type"] == "tcp":
            proxy = route.get("proxy_protocol")
            detail = f"PROXY {proxy}" if proxy else ""
            rows.append((route["id"], f"port {route['port']}", route["process"], detail))
        else:
            rows.append((route["id"], route["host"], route["process"], ""))
    table(["ID", "ROUTE", "PROCESS", "OPTIONS"], rows)


def _kind(value: str) -> str:
    if value == "http":
        raise click.UsageError("HTTP routes are the app's host names: use domains:add HOSTNAME")
    if value != "tcp":
        raise click.UsageError(f"{value[:40]!r}: the route type is tcp")
    return value


@click.command("routes:add")
@click.argument("kind", metavar="tcp")
@click.option("--port", type=_PORT, required=True, help="The router port (1024-65535)")
@click.option("--process", "process", required=True, help="The process type to expose, like db")
@click.option(
    "--proxy-protocol",
    type=click.Choice(["v1", "v2"]),
    default=None,
    help="Begin each connection to the app with a PROXY protocol header naming the client",
)
@app_option
@json_option
def add(
    kind: str,
    port: int,
    process: str,
    proxy_protocol: str | None,
    app: str | None,
    as_json: bool,
) -> None:
    """Expose a process type of the app on a port of every router (a TCP route)."""
    _kind(kind)
    name = resolve_app(app)
    body = {"type": "tcp", "port": port, "process": process, "proxy_protocol": proxy_protocol}
    route = client().call("POST", f"/v1/apps/{name}/routes", body)
    if as_json:
        emit_json(route)
        return
    proxy = f", with a PROXY {route['proxy_protocol']} header" if route["proxy_protocol"] else ""
    click.echo(f"Routed port {route['port']} to {name} {route['process']}{proxy} ({route['id']})")


@click.command("routes:remove")
@click.argument("route", metavar="tcp|ID")
@click.option("--port", type=_PORT, help="The router port of the TCP route")
@app_option
def remove(route: str, port: int | None, app: str | None) -> None:
    """Remove a TCP route: `tcp --port 5432`, or its id `tcp:5432`."""
    kind, sep, rest = route.partition(":")
    _kind(kind)
    if sep:
        if port is not None:
            raise click.UsageError("give the route's id or --port, not both")
        if not (rest.isascii() and rest.isdigit() and len(rest) <= 5):
            raise click.UsageError(f"{route[:40]!r} is not a TCP route id like tcp:5432")
        port = int(rest)
    elif port is None:
        raise click.UsageError("which port? give --port 5432 (or the id, like tcp:5432)")
    name = resolve_app(app)
    removed = client().call("DELETE", f"/v1/apps/{name}/routes/tcp/{port}")
    click.echo(f"Removed {removed['removed']} from {name}")
