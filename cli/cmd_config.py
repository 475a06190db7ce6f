"""config, config:get, config:set, config:unset."""

from __future__ import annotations

import shlex

import click

from berth.cli.common import app_option, client, json_option, parse_pairs, resolve_app
from berth.cli.output import emit_json, header, pairs


@click.command("config")
@app_option
@json_option
@click.option("--shell", is_flag=True, help="Print KEY=value lines for a shell")
def config(app: str | None, as_json: bool, shell: bool) -> None:
    """Show config vars."""
    name = resolve_app(app)
    values = client().get(f"/v1/apps/{name}/config")
    if as_json:
        emit_json(values)
    elif shell:
        for key in sorted(values):
            click.echo(f"{key}={shlex.quote(values[key])}")
    else:
        header(f"{name} config vars")
        pairs(sorted(values.items()))


@click.command("config:get")
@click.argument("key")
@app_option
def get(key: str, app: str | None) -> None:
    """Print one config var's value."""
    values = client().get(f"/v1/apps/{resolve_app(app)}/config")
    if key not in values:
        raise click.ClickException(f"no config var {key}")
    click.echo(values[key])


def _patch(name: str, changes: dict[str, str | None]) -> dict[str, object]:
    result: dict[str, object] = client().call("PATCH", f"/v1/apps/{name}/config", changes)
    return result


@click.command("config:set")
@click.argument("assignments", nargs=-1, required=True, metavar="KEY=VALUE...")
@app_option
@json_option
def set_(assignments: tuple[str, ...], app: str | None, as_json: bool) -> None:
    """Set config vars; makes a new release."""
    name = resolve_app(app)
    changes: dict[str, str | None] = dict(parse_pairs(assignments, "KEY=VALUE"))
    result = _patch(name, changes)
    release = result["release"]
    assert isinstance(release, dict)
    if as_json:
        emit_json(result)
        return
    click.echo(f"Set {', '.join(changes)} on {name}: v{release['version']}")
    pairs(list(changes.items()))


@click.command("config:unset")
@click.argument("keys", nargs=-1, required=True, metavar="KEY...")
@app_option
@json_option
def unset(keys: tuple[str, ...], app: str | None, as_json: bool) -> None:
    """Unset config vars; makes a new release."""
    name = resolve_app(app)
    result = _patch(name, dict.fromkeys(keys))
    release = result["release"]
    assert isinstance(release, dict)
    if as_json:
        emit_json(result)
        return
    click.echo(f"Unset {', '.join(keys)} on {name}: v{release['version']}")
