"""`berth framework`: the Mesos scheduler process. Several may run; one leads (leader.py), the
others wait. The leader subscribes as the same framework every time (its id is kept in
ZooKeeper, failover_timeout one week, checkpointing on), so tasks keep running through restarts
and failovers, and runs the scheduler loop until its leadership is fenced off — then this
process exits with status 1 for its supervisor to restart it.

`--master local` (the default): this machine is the cluster (local.py). `--master host:5050`
or `zk://host:2181/mesos`: a Mesos cluster (mesos.py, mesos_master.py).

Threads: the main thread runs leadership and the scheduler loop; the driver has its own;
signal handlers only set the stop Event.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from types import FrameType
from typing import Any

import click

from berth.framework import jsonlog, logship, mesos_master, registry
from berth.framework.leader import Leadership
from berth.framework.local import LocalAgent, LocalSchedulerDriver
from berth.framework.mesos import MesosSchedulerDriver
from berth.framework.options import master_option, settings_options
from berth.framework.scheduler import Events, Options, Scheduler
from berth.framework.sealing import Sealer, load_or_create_key
from berth.framework.settings import Settings
from berth.framework.state import Store, connect

log = logging.getLogger(__name__)

FAILOVER_TIMEOUT = 7 * 24 * 3600.0


def framework_info(settings: Settings, framework_id: str | None) -> dict[str, Any]:
    """What the Mesos UI shows: name `berth`, a link to Berth's API, this host."""
    info: dict[str, Any] = {
        "user": os.environ.get("BERTH_TASK_USER", "root"),
        "name": "berth",
        "hostname": socket.getfqdn(),
        "webui_url": settings.api_url,
        "failover_timeout": FAILOVER_TIMEOUT,
        "checkpoint": True,
        "roles": ["*"],
        "capabilities": [
            {"type": "MULTI_ROLE"},
            {"type": "PARTITION_AWARE"},
            {"type": "TASK_KILLING_STATE"},
        ],
    }
    if framework_id:
        info["id"] = {"value": framework_id}
    return info


def lead(
    settings: Settings,
    master: str,
    ports: tuple[int, int],
    store: Store,
    fence: threading.Event,
    drain_seconds: float = 3.0,
    deploy_attempts: int = 3,
) -> None:
    """One term as leader: subscribe, schedule until fenced, leave the framework to fail over."""
    events = Events()
    info = framework_info(settings, store.framework_id())
    driver: MesosSchedulerDriver | LocalSchedulerDriver
    agent: LocalAgent | None = None
    if master == "local":
        agent = LocalAgent(settings.data_dir / "agent")
        driver = LocalSchedulerDriver(events, info, agent, ports=ports)
    else:
        driver = MesosSchedulerDriver(events, info, lambda: mesos_master.resolve(master))
    options = Options(
        instance=store.instance_id(),
        drain_seconds=drain_seconds,
        deploy_attempts=deploy_attempts,
        api_url=settings.api_url,  # attached one-off runs meet their client there
        registry=settings.registry,
        # executors pull images from Berth's registry with these (docs "Artifacts")
        registry_credentials=(
            registry.load_or_create_credentials(settings.data_dir) if settings.registry else None
        ),
    )
    if master != "local" and not settings.registry:
        log.warning(
            "no --registry: agents on other hosts cannot pull the images `git push` builds"
            " (berth server runs one with a Mesos --master)"
        )
    if agent is not None:
        agent.start()
    logs = logship.LogLink(settings.logs_url, logship.load_or_create_key(settings.data_dir)).start()
    driver.start()
    try:
        Scheduler(store, events, driver, options, logs=logs).run(fence)
    finally:
        driver.stop(failover=True)
        logs.close()
        if agent is not None:
            agent.stop()  # executors keep running: a restarted Berth adopts them


def parse_ports(value: str) -> tuple[int, int]:
    low, _, high = value.partition("-")
    if not (low.isdigit() and high.isdigit() and 1024 <= int(low) <= int(high) <= 65535):
        raise click.BadParameter(f"{value!r}: expected LOW-HIGH, like 31000-32000")
    return int(low), int(high)


@click.command("framework")
@settings_options
@master_option
@click.option(
    "--local-ports",
    envvar="BERTH_LOCAL_PORTS",
    default="31000-32000",
    show_default=True,
    help="Local mode: the host ports this machine offers to tasks",
)
@click.option(
    "--drain-seconds",
    envvar="BERTH_DRAIN_SECONDS",
    type=click.FloatRange(0, 300),
    default=3.0,
    show_default=True,
    help="Seconds a web task is out of the router before it is killed (in-flight requests end)",
)
@click.option(
    "--deploy-attempts",
    envvar="BERTH_DEPLOY_ATTEMPTS",
    type=click.IntRange(1, 100),
    default=3,
    show_default=True,
    help="Failed starts (never healthy) after which a new release is rolled back",
)
def command(
    settings: Settings,
    master: str,
    local_ports: str,
    drain_seconds: float,
    deploy_attempts: int,
) -> None:
    """Run the Mesos framework (scheduler) alone (`berth server` runs it for you)."""
    jsonlog.setup("framework")
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    sealer = Sealer(load_or_create_key(settings.data_dir))
    store = connect(settings.zk_hosts, settings.zk_chroot, sealer)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    identity = f"{socket.gethostname()}:{os.getpid()}"
    leadership = Leadership(settings.zk_hosts, settings.zk_chroot, identity)
    try:
        ports = parse_ports(local_ports)
        kept = leadership.run(
            lambda fence: lead(
                settings, master, ports, store, fence, drain_seconds, deploy_attempts
            ),
            stop,
        )
    finally:
        store.stop()
    if not kept:
        log.error("lost leadership with the ZooKeeper connection; exiting to be restarted")
        sys.exit(1)
