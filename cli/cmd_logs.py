"""logs: an app's log lines in Heroku's format (`2026-01-02T03:04:05.678901Z app[web.1]: line`),
or NDJSON records with --json; with -t/--tail, new lines as they come until Ctrl-C.

Streams `GET /v1/apps/<app>/logs` (NDJSON; blank lines are the server's keepalives)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
import requests

from berth.cli.client import ApiError, load_credentials
from berth.cli.common import app_option, resolve_app

SOURCES = ("app", "router", "build", "berth")
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0  # a tail hears a keepalive every second, so silence this long is a failure


def heroku_line(record: dict[str, Any]) -> str:
    process = record.get("process") or ""
    source = record.get("source", "app")
    who = f"{source}[{process}]" if process else source
    return f"{record.get('ts', '')} {who}: {record.get('text', '')}"


def _error(response: requests.Response) -> ApiError:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = f"GET logs: HTTP {response.status_code}"
    return ApiError(str(message), response.status_code)


@click.command("logs")
@app_option
@click.option("-t", "--tail", is_flag=True, help="Keep showing new lines until Ctrl-C")
@click.option(
    "-n",
    "--num",
    "lines",
    type=int,
    default=100,
    show_default=True,
    help="How many of the last lines to show (0-10000)",
)
@click.option("--ps", "ps", metavar="PROCESS", help="Only this process type or process")
@click.option("--source", "-s", type=click.Choice(SOURCES), help="Only lines from this source")
@click.option("--since", metavar="WHEN", help="Only lines since 10m, 2h, 1d or an RFC 3339 time")
@click.option("--grep", metavar="TEXT", help="Only lines containing TEXT")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line, for scripts")
def logs(
    app: str | None,
    tail: bool,
    lines: int,
    ps: str | None,
    source: str | None,
    since: str | None,
    grep: str | None,
    as_json: bool,
) -> None:
    """Show the app's logs: its processes' output, router, build and platform lines."""
    if not 0 <= lines <= 10_000:
        raise click.UsageError(f"-n {lines}: expected a number from 0 to 10000")
    name = resolve_app(app)
    creds = load_credentials()
    params: dict[str, str] = {"lines": str(lines)}
    for key, value in (("ps", ps), ("source", source), ("since", since), ("grep", grep)):
        if value is not None:
            params[key] = value
    if tail:
        params["tail"] = "1"
    try:
        with requests.get(
            f"{creds.url}/v1/apps/{name}/logs",
            params=params,
            headers={"Authorization": f"Bearer {creds.token}", "User-Agent": "berth-cli"},
            stream=True,
            timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
        ) as response:
            if response.status_code >= 400:
                raise _error(response)
            for raw in response.iter_lines():
                if not raw:
                    continue  # a keepalive
                if as_json:
                    click.echo(raw.decode("utf-8", "replace"))
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                click.echo(heroku_line(record))
    except KeyboardInterrupt:
        sys.exit(0)  # Ctrl-C ends a tail: quietly
    except BrokenPipeError:  # `berth logs | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except requests.RequestException as exc:
        raise ApiError(f"the log stream from {creds.url} broke: {type(exc).__name__}") from None
