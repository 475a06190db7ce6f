"""What every command shares: -a/--app (else the `berth` git remote), --json, the client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import click

from berth.cli.client import Client, load_credentials
from berth.cli.gitremote import app_from_remote

F = TypeVar("F", bound=Callable[..., Any])


def client() -> Client:
    return Client(load_credentials())


def resolve_app(app: str | None) -> str:
    if app:
        return app
    found = app_from_remote()
    if found:
        return found
    raise click.ClickException(
        "no app given: use -a APP, or run inside a git repository with a 'berth' remote"
    )


def app_option(fn: F) -> F:
    return click.option(
        "-a",
        "--app",
        "app",
        envvar="BERTH_APP",
        metavar="APP",
        help="The app [default: the app of this directory's 'berth' git remote]",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts")(fn)


def parse_pairs(args: tuple[str, ...], what: str) -> list[tuple[str, str]]:
    """`K=V` arguments, split at the first '='."""
    pairs = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise click.UsageError(f"{arg.split('=')[0][:40]!r}: expected {what}")
        pairs.append((key, value))
    return pairs


def parse_version(value: str) -> int:
    text = value.removeprefix("v")
    if not text.isdigit() or int(text) < 1:
        raise click.UsageError(f"{value!r}: expected a release like v3")
    return int(text)


def hostname_segment(hostname: str) -> str:
    """HOSTNAME as one URL path segment, or a usage error: with a `/` it could not be one (the
    API would only see another route)."""
    if "/" in hostname or not hostname.strip():
        raise click.ClickException(
            f"{hostname[:80]!r} is not a hostname: give it alone, like www.example.com"
        )
    return quote(hostname, safe="")
