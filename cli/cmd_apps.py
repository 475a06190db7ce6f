"""apps, apps:create, apps:info, apps:destroy."""

from __future__ import annotations

import click

from berth.cli.common import app_option, client, json_option, resolve_app
from berth.cli.gitremote import REMOTE, add_remote, remote_url, remove_remote_if
from berth.cli.output import emit_json, header, pairs, table


@click.command("apps")
@json_option
def apps(as_json: bool) -> None:
    """List apps."""
    found = client().get("/v1/apps")
    if as_json:
        emit_json(found)
    elif not found:
        click.echo("No apps yet: create one with `berth apps:create`")
    else:
        table(
            ["NAME", "RELEASE", "CREATED"],
            [(a["name"], f"v{a['release']}", a["created_at"]) for a in found],
        )


@click.command("apps:create")
@click.argument("name", required=False)
@click.option("--no-remote", is_flag=True, help="Don't add a 'berth' git remote")
@json_option
def create(name: str | None, no_remote: bool, as_json: bool) -> None:
    """Create an app (a random name if none is given). Inside a git repository, also adds a
    git remote named 'berth' for `git push berth main`."""
    api = client()
    app = api.call("POST", "/v1/apps", {"name": name} if name else {})
    remote = None
    if not no_remote and add_remote(api.url, app["name"]):
        remote = remote_url(api.url, app["name"])
    if as_json:
        emit_json({**app, "git_remote": remote})
        return
    click.echo(f"Created {app['name']}: {app['web_url']}")
    if remote:
        click.echo(f"Git remote {REMOTE} added: {remote}")


@click.command("apps:info")
@app_option
@json_option
def info(app: str | None, as_json: bool) -> None:
    """Show an app."""
    name = resolve_app(app)
    data = client().get(f"/v1/apps/{name}")
    if as_json:
        emit_json(data)
        return
    header(name)
    formation = ", ".join(f"{k}={v}" for k, v in sorted(data["formation"].items())) or "none"
    pairs(
        [
            ("Web URL", data["web_url"]),
            ("Release", f"v{data['release']}"),
            ("Formation", formation),
            ("Created", data["created_at"]),
        ]
    )


@click.command("apps:destroy")
@click.argument("name", required=False)
@app_option
@click.option("--confirm", metavar="NAME", help="The app's name again, to confirm")
def destroy(name: str | None, app: str | None, confirm: str | None) -> None:
    """Destroy an app, its config and releases. Irreversible: needs --confirm NAME."""
    target = name or resolve_app(app)
    if confirm != target:
        if confirm is None:
            raise click.ClickException(
                f"this destroys {target} and all it holds: re-run with --confirm {target}"
            )
        raise click.ClickException(f"--confirm {confirm!r} does not match the app {target}")
    client().call("DELETE", f"/v1/apps/{target}")
    removed = remove_remote_if(target)
    click.echo(f"Destroyed {target}" + (f"; removed git remote {REMOTE}" if removed else ""))
