"""builds, builds:info: what `git push` built."""

from __future__ import annotations

import click

from berth.cli.common import app_option, client, json_option, resolve_app
from berth.cli.output import emit_json, header, pairs, table


def _duration(build: dict[str, object]) -> str:
    seconds = build.get("duration")
    return f"{seconds:.1f}s" if isinstance(seconds, int | float) else ""


@click.command("builds")
@app_option
@json_option
@click.option(
    "-n", "--num", default=15, show_default=True, type=click.IntRange(1, 50), help="How many"
)
def builds(app: str | None, as_json: bool, num: int) -> None:
    """List the app's builds, newest first."""
    name = resolve_app(app)
    found = client().get(f"/v1/apps/{name}/builds", limit=num)
    if as_json:
        emit_json(found)
        return
    if not found:
        click.echo(f"{name} has no builds yet: git push berth main")
        return
    header(f"{name} builds")
    table(
        ["ID", "STATUS", "COMMIT", "RELEASE", "BUILDER", "DURATION", "STARTED"],
        [
            (
                b["id"],
                b["status"],
                b["commit"][:12],
                f"v{b['release']}" if b["release"] else "",
                b["builder"],
                _duration(b),
                b["started_at"],
            )
            for b in found
        ],
    )


@click.command("builds:info")
@click.argument("build")
@app_option
@json_option
def info(build: str, app: str | None, as_json: bool) -> None:
    """Show a build with its log."""
    name = resolve_app(app)
    found = client().get(f"/v1/apps/{name}/builds/{build}")
    if as_json:
        emit_json(found)
        return
    header(f"Build {found['id']} of {name}")
    pairs(
        [
            ("Status", found["status"]),
            ("Commit", found["commit"]),
            ("Builder", found["builder"]),
            ("Release", f"v{found['release']}" if found["release"] else "none"),
            ("Image", found["image"] or "none"),
            ("By", found["created_by"]),
            ("Started", found["started_at"]),
            ("Duration", _duration(found)),
            *([("Error", found["error"])] if found["error"] else []),
        ]
    )
    header("Log")
    click.echo(found["log"], nl=False)
