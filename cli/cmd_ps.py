"""ps, ps:scale, ps:restart, ps:stop, limits, limits:set, deploy."""

from __future__ import annotations

import time
from typing import Any

import click

from berth.cli.client import Client
from berth.cli.common import app_option, client, json_option, parse_pairs, resolve_app
from berth.cli.output import emit_json, pairs, table


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


def _progress(api: Client, name: str, wanted: dict[str, int]) -> tuple[bool, str]:
    """Whether every scaled type runs its quantity of healthy tasks of the newest release."""
    release = api.get(f"/v1/apps/{name}")["release"]
    tasks = api.get(f"/v1/apps/{name}/ps")["tasks"]
    parts, done = [], True
    for ptype, quantity in sorted(wanted.items()):
        mine = [t for t in tasks if t["process"] == ptype and t["state"] not in _ENDED]
        up = [
            t
            for t in mine
            if t["state"] == "running"
            and t["healthy"] is not False
            and t["release"] == release
            and t["index"] <= quantity
        ]
        extra = [t for t in mine if t["index"] > quantity]
        done = done and len(up) >= quantity and not extra
        parts.append(f"{ptype} {len(up)}/{quantity}")
    return done, ", ".join(parts)


_ENDED = {"finished", "failed", "killed", "lost", "gone", "error", "dropped"}


@click.command("ps:scale")
@click.argument("changes", nargs=-1, metavar="TYPE=N...")
@app_option
@json_option
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until the processes run (with progress)",
)
@click.option(
    "--timeout",
    default=120,
    show_default=True,
    type=click.IntRange(1, 3600),
    help="Seconds to wait",
)
def scale(
    changes: tuple[str, ...], app: str | None, as_json: bool, wait: bool, timeout: int
) -> None:
    """Set how many processes of each type run (no arguments: show the formation)."""
    name = resolve_app(app)
    wanted: dict[str, int] = {}
    for ptype, quantity in parse_pairs(changes, "TYPE=N"):
        if not quantity.isdigit():
            raise click.UsageError(f"{ptype}={quantity[:10]}: the quantity must be a number")
        wanted[ptype] = int(quantity)
    api = client()
    path = f"/v1/apps/{name}/formation"
    formation = api.call("PATCH", path, wanted) if wanted else api.get(path)
    if as_json:
        emit_json(formation)
        return
    shown = ", ".join(f"{k}={v}" for k, v in sorted(formation.items())) or "no processes"
    click.echo(f"{'Scaled' if wanted else 'Formation of'} {name}: {shown}")
    if not wanted or not wait:
        return
    release = api.get(f"/v1/apps/{name}/releases/v{api.get(f'/v1/apps/{name}')['release']}")
    if release["artifact"] is None:
        click.echo("Nothing runs until the app is deployed (git push or berth deploy).")
        return
    deadline = time.monotonic() + timeout
    shown_status = ""
    while True:
        done, status = _progress(api, name, wanted)
        if status != shown_status:
            click.echo(f"  {status} running")
            shown_status = status
        if done:
            click.echo("  done")
            return
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"not all processes are up after {timeout}s ({status}); see berth ps -a {name}"
            )
        time.sleep(1)


@click.command("ps:restart")
@click.argument("target", required=False, metavar="[TYPE|PROCESS]")
@app_option
def restart(target: str | None, app: str | None) -> None:
    """Restart every process, a type (rolling: new before old), or one process (web.1)."""
    name = resolve_app(app)
    result = client().call(
        "POST", f"/v1/apps/{name}/ps/restart", {"target": target} if target else {}
    )
    click.echo(f"Restarting {', '.join(result['restarting']) or 'nothing'} on {name}")


@click.command("ps:stop")
@click.argument("target", metavar="PROCESS")
@app_option
def stop(target: str, app: str | None) -> None:
    """Stop one process (web.1 or a task id); the framework replaces it."""
    name = resolve_app(app)
    result = client().call("POST", f"/v1/apps/{name}/ps/stop", {"task": target})
    click.echo(f"Stopping {', '.join(result['stopping'])} on {name} (it will be replaced)")


def _show_limits(name: str, limits: dict[str, Any]) -> None:
    click.echo(f"=== {name} limits")
    pairs([(p, f"memory={v['memory_mb']}m cpu={v['cpus']}") for p, v in sorted(limits.items())])


@click.command("limits")
@app_option
@json_option
def limits(app: str | None, as_json: bool) -> None:
    """Show memory and CPU per process type."""
    name = resolve_app(app)
    data = client().get(f"/v1/apps/{name}/limits")
    if as_json:
        emit_json(data)
    else:
        _show_limits(name, data)


@click.command("limits:set")
@click.argument("ptype", metavar="TYPE")
@click.argument("settings", nargs=-1, required=True, metavar="memory=512m cpu=1")
@app_option
def limits_set(ptype: str, settings: tuple[str, ...], app: str | None) -> None:
    """Set a process type's memory (512m, 1g) and CPU share (0.5); applies to new processes."""
    name = resolve_app(app)
    values = dict(parse_pairs(settings, "memory=SIZE or cpu=N"))
    data = client().call("PATCH", f"/v1/apps/{name}/limits", {ptype: values})
    _show_limits(name, data)
