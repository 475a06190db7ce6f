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
        ["VERSION", "DESCRIPTION", "BY", "CREATED"],
        [(f"v{r['version']}", r["description"], r["created_by"], r["created_at"]) for r in found],
    )


@click.command("releases:info")
@click.argument("version", required=False)
@app_option
@json_option
def info(version: str | None, app: str | None, as_json: bool) -> None:
    """Show a release (default: the newest) with its config."""
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
    """Make a new release from vN's artifact and config (default: the previous release)."""
    name = resolve_app(app)
    body = {"version": parse_version(version)} if version else {}
    release = client().call("POST", f"/v1/apps/{name}/rollback", body)
    if as_json:
        emit_json(release)
    else:
        click.echo(f"{release['description']} on {name}: v{release['version']}")
