"""git:remote (point this repository's `berth` remote at an app) and git:credentials (hidden:
git's credential helper, answering with the logged-in token for the Berth URL only)."""

from __future__ import annotations

import sys

import click

from berth.cli.common import app_option, client, resolve_app
from berth.cli.gitcredential import respond
from berth.cli.gitremote import REMOTE, add_remote, remote_url


@click.command("git:remote")
@app_option
def remote(app: str | None) -> None:
    """Add (or repoint) this repository's 'berth' git remote to the app, for `git push berth
    main`. Git gets the token from Berth's credential helper, never from the URL."""
    name = resolve_app(app)
    api = client()
    api.get(f"/v1/apps/{name}")  # the app must exist
    if not add_remote(api.url, name):
        raise click.ClickException("not inside a git repository: run `git init` first")
    click.echo(f"Git remote {REMOTE} set to {remote_url(api.url, name)}")


@click.command("git:credentials", hidden=True)
@click.argument("operation")
def credentials(operation: str) -> None:
    """git's credential helper protocol (`get`; `store` and `erase` are no-ops). Repositories
    set up by `git:remote` run berth.cli.gitcredential directly, which starts faster."""
    sys.stdout.write(respond(operation, sys.stdin.read()))
