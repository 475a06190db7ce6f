"""tokens, tokens:create, tokens:revoke."""

from __future__ import annotations

import click

from berth.cli.common import client, json_option
from berth.cli.output import emit_json, table


@click.command("tokens")
@json_option
def tokens(as_json: bool) -> None:
    """List API tokens (ids and descriptions; secrets are never shown again)."""
    found = client().get("/v1/tokens")
    if as_json:
        emit_json(found)
    else:
        rows = [(t["id"], t["description"], t["created_at"], t["created_by"]) for t in found]
        table(["ID", "DESCRIPTION", "CREATED", "BY"], rows)


@click.command("tokens:create")
@click.option("-d", "--description", default="", help="What the token is for")
@json_option
def create(description: str, as_json: bool) -> None:
    """Create an API token. Its secret is printed once: store it now."""
    token = client().call("POST", "/v1/tokens", {"description": description})
    if as_json:
        emit_json(token)
    else:
        click.echo(f"Created token {token['id']} ({token['description']}). It is shown only once:")
        click.echo(token["token"])


@click.command("tokens:revoke")
@click.argument("token_id", metavar="ID")
def revoke(token_id: str) -> None:
    """Revoke an API token at once."""
    client().call("DELETE", f"/v1/tokens/{token_id}")
    click.echo(f"Revoked token {token_id}")
