"""certs, certs:add, certs:remove: the TLS certificates the router serves for an app's names
(picked by SNI). Certificates the router obtains over ACME show up here with source acme."""

from __future__ import annotations

from pathlib import Path

import click

from berth.cli.common import app_option, client, hostname_segment, json_option, resolve_app
from berth.cli.output import emit_json, header, table

MAX_FILE_BYTES = 256 * 1024  # the API bounds them more tightly; this keeps a wrong file local


def _read(path: Path, what: str) -> str:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise click.ClickException(f"{path} is too large to be a {what}")
        return path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise click.ClickException(f"{path} is not a PEM {what} (not text)") from None
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None


@click.command("certs")
@app_option
@json_option
def certs(app: str | None, as_json: bool) -> None:
    """List the app's TLS certificates."""
    name = resolve_app(app)
    found = client().get(f"/v1/apps/{name}/certs")
    if as_json:
        emit_json(found)
    elif not found:
        click.echo(f"No certificates for {name}: add one with `berth certs:add CERT KEY`")
    else:
        header(f"{name} certificates")
        table(
            ["NAME", "HOSTNAMES", "ISSUER", "EXPIRES", "SOURCE"],
            [
                (c["name"], ", ".join(c["hostnames"]), c["issuer"], c["not_after"], c["source"])
                for c in found
            ],
        )


@click.command("certs:add")
@click.argument("cert_file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("key_file", type=click.Path(dir_okay=False, path_type=Path))
@app_option
@json_option
def add(cert_file: Path, key_file: Path, app: str | None, as_json: bool) -> None:
    """Serve CERT_FILE (PEM, the certificate then its intermediates) with KEY_FILE (PEM,
    unencrypted) for the names it lists; each must be one of the app's domains."""
    name = resolve_app(app)
    body = {
        "certificate": _read(cert_file, "certificate"),
        "private_key": _read(key_file, "private key"),
    }
    cert = client().call("POST", f"/v1/apps/{name}/certs", body)
    if as_json:
        emit_json(cert)
    else:
        click.echo(
            f"Added a certificate for {', '.join(cert['hostnames'])} to {name}"
            f" (expires {cert['not_after']})"
        )


@click.command("certs:remove")
@click.argument("hostname")
@app_option
def remove(hostname: str, app: str | None) -> None:
    """Stop serving the app's certificate for HOSTNAME."""
    name = resolve_app(app)
    path = f"/v1/apps/{name}/certs/{hostname_segment(hostname)}"
    removed = client().call("DELETE", path)
    click.echo(f"Removed the certificate {', '.join(removed['removed'])} from {name}")
