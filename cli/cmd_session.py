"""login, logout, version."""

from __future__ import annotations

from importlib.metadata import version as package_version

import click

from berth.cli.client import (
    ApiError,
    Client,
    Credentials,
    load_credentials,
    save_credentials,
)
from berth.cli.gitcredential import credentials_path
from berth.cli.output import emit_json, pairs


@click.command("login")
@click.argument("url")
@click.option("--token", envvar="BERTH_TOKEN", help="An API token [default: prompt for it]")
def login(url: str, token: str | None) -> None:
    """Log in to the Berth API at URL (checks the token, then stores both, 0600)."""
    if not url.startswith(("http://", "https://")):
        raise click.UsageError(f"{url!r}: expected http://HOST:PORT or https://HOST")
    if not token:
        token = click.prompt("Token", hide_input=True).strip()
    creds = Credentials(url=url.rstrip("/"), token=token or "")
    info = Client(creds).get("/v1/info")
    path = save_credentials(creds)
    click.echo(f"Logged in to {creds.url} (Berth {info.get('version')}); credentials in {path}")


@click.command("logout")
def logout() -> None:
    """Forget the stored credentials."""
    path = credentials_path()
    path.unlink(missing_ok=True)
    click.echo(f"Logged out; removed {path}")


@click.command("version")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts")
def version(as_json: bool) -> None:
    """The CLI's version and, when logged in, the server's."""
    data = {"client": package_version("berth"), "server": None, "url": None}
    try:
        creds = load_credentials()
        data["url"] = creds.url
        data["server"] = Client(creds).get("/v1/info").get("version")
    except ApiError as exc:
        data["server"] = f"unknown ({exc.message})"
    except click.ClickException:
        pass
    if as_json:
        emit_json(data)
    else:
        pairs([("client", data["client"]), ("server", data["server"] or "not logged in")])
