"""drains, drains:add, drains:remove: where an app's log lines are also sent:
`syslog://host:port`, `syslog+tls://host:port` (RFC 5424 over TCP, octet counting) or
`https://host/path` (batches of NDJSON records POSTed)."""

from __future__ import annotations

from typing import Any

import click

from berth.cli.common import app_option, client, json_option, resolve_app
from berth.cli.output import emit_json, header, table


def _count(value: Any) -> str:
    return "?" if value is None else str(value)


@click.command("drains")
@app_option
@json_option
def drains(app: str | None, as_json: bool) -> None:
    """List the app's log drains, with lines delivered and dropped."""
    name = resolve_app(app)
    found = client().get(f"/v1/apps/{name}/drains")
    if as_json:
        emit_json(found)
        return
    if not found:
        click.echo(f"No drains for {name}: add one with `berth drains:add URL`")
        return
    header(f"{name} drains")
    table(
        ["ID", "URL", "STATUS", "DELIVERED", "DROPPED", "LAST ERROR"],
        [
            (
                d["id"],
                d["url"],
                d.get("status") or "? (logd not answering)",
                _count(d.get("delivered")),
                _count(d.get("dropped")),
                d.get("last_error") or "",
            )
            for d in found
        ],
    )


@click.command("drains:add")
@click.argument("url")
@app_option
@json_option
def add(url: str, app: str | None, as_json: bool) -> None:
    """Send the app's log lines to URL: syslog://HOST:PORT, syslog+tls://HOST:PORT or
    https://HOST/PATH."""
    name = resolve_app(app)
    drain = client().call("POST", f"/v1/apps/{name}/drains", {"url": url})
    if as_json:
        emit_json(drain)
    else:
        click.echo(f"Added drain {drain['id']} to {name}")


@click.command("drains:remove")
@click.argument("drain")
@app_option
def remove(drain: str, app: str | None) -> None:
    """Stop sending the app's log lines to DRAIN (its URL, or the id `drains` shows)."""
    name = resolve_app(app)
    if "://" in drain:
        removed = client().call("DELETE", f"/v1/apps/{name}/drains", url=drain)
    else:
        if "/" in drain or not drain.strip():
            raise click.ClickException(
                f"{drain[:80]!r} is neither a drain URL nor an id like d.0123456789ab"
            )
        removed = client().call("DELETE", f"/v1/apps/{name}/drains/{drain.strip()}")
    click.echo(f"Removed drain {removed['removed']['id']} from {name}")
