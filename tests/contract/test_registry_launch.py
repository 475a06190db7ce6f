"""A Mesos-mode launch carries the registry reference (docs/architecture.md "Artifacts"): with
real ZooKeeper state and the v1 wire format (tests/support/fake_mesos.py), a release whose image
was pushed to Berth's registry is launched with the image pinned by digest and the registry's
credentials in TaskInfo.data; a release of a local image gets no credentials. The executor
side of the same contract (the pull on an agent's own engine) is
tests/integration/test_registry.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.framework.mesos import MesosSchedulerDriver
from berth.framework.model import Artifact
from berth.framework.registry import Credentials
from berth.framework.scheduler import Events, Options, Scheduler
from berth.framework.sealing import Sealer, load_or_create_key
from berth.framework.state import Store
from berth.framework.taskinfo import Payload
from tests.support.fake_mesos import FakeMaster
from tests.support.services import ZooKeeper
from tests.support.waiting import wait_for

pytestmark = pytest.mark.zookeeper

REGISTRY = "registry.internal:7072"
DIGEST = "sha256:" + "5e" * 32
FRAMEWORK = {"user": "berth", "name": "berth", "failover_timeout": 604800.0, "checkpoint": True}


def offer() -> dict[str, Any]:
    return {
        "id": {"value": "o1"},
        "framework_id": {"value": "fw-1"},
        "agent_id": {"value": "a1"},
        "hostname": "agent1",
        "resources": [
            {"name": "cpus", "type": "SCALAR", "scalar": {"value": 4.0}},
            {"name": "mem", "type": "SCALAR", "scalar": {"value": 8192.0}},
            {
                "name": "ports",
                "type": "RANGES",
                "ranges": {"range": [{"begin": 31000, "end": 31010}]},
            },
        ],
    }


@pytest.fixture
def store(zookeeper: ZooKeeper, chroot: str, tmp_path: Path) -> Iterator[Store]:
    s = Store(zookeeper.hosts, chroot, Sealer(load_or_create_key(tmp_path)))
    s.start()
    yield s
    s.stop()


def test_a_pushed_release_launches_pinned_with_the_registry_credentials(store: Store) -> None:
    store.create_app("shop", "test")
    pushed = Artifact("image", f"{REGISTRY}/berth/app-shop:1a2b3c4d5e6f", 8000, digest=DIGEST)
    store.deploy("shop", pushed, {"web": ""}, "Deploy 1a2b3c4 (git push)", "test")
    store.scale("shop", {"web": 1})
    store.create_app("local", "test")
    store.deploy("local", Artifact("image", "local:v1"), {"web": ""}, "Deploy local:v1", "test")
    store.scale("local", {"web": 1})

    master = FakeMaster()
    events = Events()
    driver = MesosSchedulerDriver(events, dict(FRAMEWORK), master.address, backoff_max=0.3)
    options = Options(
        instance="test",
        desired_every=0.1,
        registry=REGISTRY,
        registry_credentials=Credentials("berth", "generated-password"),
    )
    fence = threading.Event()
    thread = threading.Thread(target=Scheduler(store, events, driver, options).run, args=(fence,))
    driver.start()
    thread.start()
    try:
        master.wait_subscribes(1)
        master.subscribed("fw-1")
        master.send({"type": "OFFERS", "offers": {"offers": [offer()]}})
        accept = wait_for(
            lambda: next((c for c in list(master.calls) if c["type"] == "ACCEPT"), None), 20
        )["accept"]
    finally:
        fence.set()
        thread.join(10)
        driver.stop(failover=True)
        master.stop()

    infos = accept["operations"][0]["launch"]["task_infos"]
    payloads = {info["name"].split()[0]: Payload.decode(info["data"]) for info in infos}
    shop = payloads["shop"]
    assert shop.image == f"{REGISTRY}/berth/app-shop@{DIGEST}"  # exactly what was built
    assert shop.registry_user == "berth"
    assert shop.registry_password == "generated-password"
    assert shop.container_port == 8000
    local = payloads["local"]
    assert local.image == "local:v1"
    assert local.registry_user == ""
    assert local.registry_password == ""
