"""releases, releases:info, rollback."""

from __future__ import annotations

import click

from berth.cli.common import (
    app_option,
    client,
    json_option,
    parse_version,
    resolve_app,
)
from berth.cli.output import emit_json, header, pairs, table


def _artifact(release: dict[str, object]) -> str:
    artifact = release.get("artifact")
    return str(artifact["ref"]) if isinstance(artifact, dict) else "none"


def _status(release: dict[str, object]) -> str:
    """`current`, `succeeded`, `pending` or `failed`; old APIs send no status: succeeded."""
    if release.get("current"):
        return "current"
    return str(release.get("status") or "succeeded")


def _description(release: dict[str, object]) -> str:
    """The description, with why a release never went live (Heroku: "release command
    failed") or what it waits for."""
    text = str(release["description"])
    reason = release.get("status_reason")
    if release.get("status") == "pending":
        return f"{text}: {reason or 'release command running'}"
    if release.get("status") == "failed":
        return f"{text}: {reason or 'failed'}"
    return text


@click.command("releases")
@app_option
@json_option
@click.option(
    "-n",
    "--num",
    default=15,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="How many, newest first",
)
def releases(app: str | None, as_json: bool, num: int) -> None:
    """List releases, newest first."""
    name = resolve_app(app)
    found = client().get(f"/v1/apps/{name}/releases", limit=num)
    if as_json:
        emit_json(found)
        return
    header(f"{name} releases")
    table(
        ["VERSION", "STATUS", "DESCRIPTION", "BY", "CREATED"],
        [
            (f"v{r['version']}", _status(r), _description(r), r["created_by"], r["created_at"])
            for r in found
        ],
    )


def _reason(release: dict[str, object]) -> str:
    reason = release.get("status_reason")
    return f" ({reason})" if reason else ""


@click.command("releases:info")
@click.argument("version", required=False)
@app_option
@json_option
def info(version: str | None, app: str | None, as_json: bool) -> None:
    """Show a release (default: the current one) with its config."""
    name = resolve_app(app)
    number = parse_version(version) if version else client().get(f"/v1/apps/{name}")["release"]
    release = client().get(f"/v1/apps/{name}/releases/v{number}")
    if as_json:
        emit_json(release)
        return
    header(f"Release v{release['version']} of {name}")
    types = ", ".join(sorted(release["process_types"])) or "none"
    pairs(
        [
            ("Description", release["description"]),
            ("Status", _status(release) + _reason(release)),
            ("By", release["created_by"]),
            ("When", release["created_at"]),
            ("Artifact", _artifact(release)),
            ("Process types", types),
        ]
    )
    header("Config vars")
    pairs(sorted(release["config"].items()))


@click.command("rollback")
@click.argument("version", required=False)
@app_option
@json_option
def rollback(version: str | None, app: str | None, as_json: bool) -> None:
    """Make a new release from vN's artifact and config (default: the newest earlier release
    that went live)."""
    name = resolve_app(app)
    body = {"version": parse_version(version)} if version else {}
    release = client().call("POST", f"/v1/apps/{name}/rollback", body)
    if as_json:
        emit_json(release)
    else:
        click.echo(f"{release['description']} on {name}: v{release['version']}")
