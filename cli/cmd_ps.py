"""ps, deploy."""

from __future__ import annotations

import click

from berth.cli.common import app_option, client, json_option, parse_pairs, resolve_app
from berth.cli.output import emit_json, table


def _age(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@click.command("ps")
@app_option
@json_option
def ps(app: str | None, as_json: bool) -> None:
    """Show the app's processes: state, uptime, release, port and agent, and why one crashed."""
    name = resolve_app(app)
    data = client().get(f"/v1/apps/{name}/ps")
    if as_json:
        emit_json(data)
        return
    formation = ", ".join(f"{k}={v}" for k, v in sorted(data["formation"].items()))
    click.echo(f"=== {name} processes ({formation or 'none scaled'})")
    if not data["tasks"]:
        click.echo("No processes running.")
        return
    rows = []
    for t in data["tasks"]:
        state = t["state"]
        if state == "running" and t["healthy"] is False:
            state = "unhealthy"
        elif state in ("failed", "finished") and t["message"]:
            state = t["message"]
        where = f"{t['hostname']}:{t['port']}" if t["hostname"] else ""
        rows.append((t["name"], state, _age(t["uptime"]), f"v{t['release']}", where))
    table(["PROCESS", "STATE", "UP", "RELEASE", "ADDRESS"], rows)


@click.command("deploy")
@click.option("--image", required=True, help="A Docker image on the agents, e.g. myapp:v3")
@click.option(
    "-p",
    "--process",
    "processes",
    multiple=True,
    metavar="TYPE=COMMAND",
    help="Process types (repeat); default: web runs the image's CMD",
)
@app_option
@json_option
def deploy(image: str, processes: tuple[str, ...], app: str | None, as_json: bool) -> None:
    """Deploy a Docker image as a new release."""
    name = resolve_app(app)
    body: dict[str, object] = {"image": image}
    if processes:
        body["process_types"] = dict(parse_pairs(processes, "TYPE=COMMAND"))
    release = client().call("POST", f"/v1/apps/{name}/deploy", body)
    if as_json:
        emit_json(release)
    else:
        click.echo(f"Deployed {image} to {name}: v{release['version']}")
