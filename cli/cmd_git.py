"""git:remote (point this repository's `berth` remote at an app) and git:credentials (hidden:
git's credential helper, answering with the logged-in token for the Berth URL only)."""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

import click

from berth.cli.client import load_credentials
from berth.cli.common import app_option, client, resolve_app
from berth.cli.gitremote import REMOTE, add_remote, remote_url


@click.command("git:remote")
@app_option
def remote(app: str | None) -> None:
    """Add (or repoint) this repository's 'berth' git remote to the app, for `git push berth
    main`. Git gets the token from `berth git:credentials`, never from the URL."""
    name = resolve_app(app)
    api = client()
    api.get(f"/v1/apps/{name}")  # the app must exist
    if not add_remote(api.url, name):
        raise click.ClickException("not inside a git repository: run `git init` first")
    click.echo(f"Git remote {REMOTE} set to {remote_url(api.url, name)}")


def parse_request(text: str) -> dict[str, str]:
    """git's credential request: `key=value` lines up to a blank line."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            break
        key, sep, value = line.partition("=")
        if sep:
            found[key] = value
    return found


def answer(request: dict[str, str], berth_url: str, token: str) -> str:
    """`username=berth` + `password=<token>` when git asks for the Berth URL, else nothing."""
    if "url" in request:
        parts = urlsplit(request["url"])
        request = {**request, "protocol": parts.scheme, "host": parts.netloc}
    target = urlsplit(berth_url)
    if request.get("protocol") != target.scheme or request.get("host") != target.netloc:
        return ""
    return f"username=berth\npassword={token}\n"


@click.command("git:credentials", hidden=True)
@click.argument("operation")
def credentials(operation: str) -> None:
    """git's credential helper protocol (`get`; `store` and `erase` are no-ops)."""
    request = parse_request(sys.stdin.read())
    if operation != "get":
        return
    try:
        creds = load_credentials()
    except click.ClickException:
        return  # not logged in: git falls back to its other helpers or a prompt
    sys.stdout.write(answer(request, creds.url, creds.token))
