"""domains, domains:add, domains:remove: the custom hostnames the router sends to an app, exact
(www.example.com) or wildcard (*.example.com)."""

from __future__ import annotations

import click

from berth.cli.common import app_option, client, hostname_segment, json_option, resolve_app
from berth.cli.output import emit_json, header, table


@click.command("domains")
@app_option
@json_option
def domains(app: str | None, as_json: bool) -> None:
    """List the app's custom domains."""
    name = resolve_app(app)
    found = client().get(f"/v1/apps/{name}/domains")
    if as_json:
        emit_json(found)
    elif not found:
        click.echo(f"No custom domains for {name}: add one with `berth domains:add HOSTNAME`")
    else:
        header(f"{name} custom domains")
        table(
            ["HOSTNAME", "KIND", "CREATED"],
            [(d["hostname"], d["kind"], d["created_at"]) for d in found],
        )


@click.command("domains:add")
@click.argument("hostname")
@app_option
@json_option
def add(hostname: str, app: str | None, as_json: bool) -> None:
    """Route HOSTNAME (www.example.com, or a wildcard: '*.example.com') to the app. Point its
    DNS at the router."""
    name = resolve_app(app)
    domain = client().call("POST", f"/v1/apps/{name}/domains", {"hostname": hostname})
    if as_json:
        emit_json(domain)
    else:
        click.echo(f"Added {domain['hostname']} to {name}")


@click.command("domains:remove")
@click.argument("hostname")
@app_option
def remove(hostname: str, app: str | None) -> None:
    """Stop routing HOSTNAME to the app."""
    name = resolve_app(app)
    path = f"/v1/apps/{name}/domains/{hostname_segment(hostname)}"
    removed = client().call("DELETE", path)
    click.echo(f"Removed {removed['removed']} from {name}")
