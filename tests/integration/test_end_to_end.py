"""The local path end to end, every part real: ZooKeeper, `berth api`, `berth framework` in
local mode, its local agent, `berth-executor` processes and Docker containers of a locally
built image. What the formation says should run, runs — through removed containers, crashes,
a `kill -9` of the framework and a leader failover."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from berth.framework.model import TERMINAL_STATES
from tests.conftest import Api
from tests.support import waiting
from tests.support.server import remove_containers, running
from tests.support.services import (
    BerthApi,
    BerthFramework,
    ZooKeeper,
    cleanup_executors,
    executor_pids,
)

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.zookeeper]


class Berth:
    def __init__(self, zk: ZooKeeper, chroot: str, root: Path, ports: str) -> None:
        self.data = root / "data"
        self.api_server = BerthApi(zk.hosts, chroot, self.data, root / "api.log")
        self.frameworks = [
            BerthFramework(zk.hosts, chroot, self.data, root / f"framework{n}.log", ports)
            for n in range(2)
        ]
        self.api: Api

    def start(self) -> None:
        self.api_server.start()
        self.api = Api(self.api_server)
        self.frameworks[0].start()
        self.frameworks[0].wait_leading()

    def stop(self) -> None:
        for framework in self.frameworks:
            framework.stop()
        self.api_server.stop()
        cleanup_executors(self.data)

    def ps(self, app: str) -> list[dict[str, Any]]:
        tasks: list[dict[str, Any]] = self.api.call("GET", f"/v1/apps/{app}/ps").json()["tasks"]
        return tasks

    def running(self, app: str, n: int) -> list[dict[str, Any]]:
        """Wait until exactly n tasks run healthy (and nothing else is live)."""

        def check() -> tuple[list[dict[str, Any]]] | None:
            tasks = [t for t in self.ps(app) if t["state"] not in ENDED]
            up = [t for t in tasks if t["state"] == "running" and t["healthy"] is not False]
            return (up,) if len(up) == n == len(tasks) else None  # a tuple: true even for n=0

        result: list[dict[str, Any]] = wait_for(check, 60)[0]
        return result


ENDED = TERMINAL_STATES


def wait_for(what: Callable[[], Any], timeout: float = 60.0) -> Any:
    return waiting.wait_for(what, timeout, interval=0.2)


def containers_of(client: docker.DockerClient, app: str) -> dict[str, str]:
    """Running containers of an app: container id → task id."""
    found = client.containers.list(filters={"label": f"berth.app={app}"})
    return {c.id: c.labels.get("berth.task", "") for c in found}


@pytest.fixture
def berth(
    zookeeper: ZooKeeper,
    chroot: str,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    test_image: str,
) -> Iterator[Berth]:
    yield from running(Berth(zookeeper, chroot, tmp_path, "30600-30699"))
    remove_containers(docker_client, "e2e-web", "e2e-crash", "e2e-orphan")


def deploy(api: Api, app: str, image: str, **processes: str) -> None:
    assert api.call("POST", "/v1/apps", json={"name": app}).status_code == 201
    body: dict[str, Any] = {"image": image}
    if processes:
        body["process_types"] = processes
    assert api.call("POST", f"/v1/apps/{app}/deploy", json=body).status_code == 201


def test_scale_replace_adopt_and_fail_over(
    berth: Berth, docker_client: docker.DockerClient, test_image: str
) -> None:
    api = berth.api
    deploy(api, "e2e-web", test_image)  # the first deploy scales web=1
    berth.running("e2e-web", 1)
    api.call("PATCH", "/v1/apps/e2e-web/formation", json={"web": 3})
    tasks = berth.running("e2e-web", 3)
    assert sorted(t["name"] for t in tasks) == ["web.1", "web.2", "web.3"]
    for t in tasks:
        assert requests.get(f"http://127.0.0.1:{t['port']}/", timeout=5).status_code == 200
    assert len(containers_of(docker_client, "e2e-web")) == 3

    api.call("PATCH", "/v1/apps/e2e-web/formation", json={"web": 1})
    berth.running("e2e-web", 1)
    wait_for(lambda: len(containers_of(docker_client, "e2e-web")) == 1)

    # a container removed behind Berth's back is replaced
    (victim,) = containers_of(docker_client, "e2e-web")
    docker_client.containers.get(victim).remove(force=True)
    wait_for(lambda: set(containers_of(docker_client, "e2e-web")) - {victim})
    berth.running("e2e-web", 1)

    # kill -9 of the framework: the containers keep running, and come back adopted
    before = containers_of(docker_client, "e2e-web")
    executors = sorted(executor_pids(berth.data))
    berth.frameworks[0].kill()
    time.sleep(2)
    assert containers_of(docker_client, "e2e-web") == before
    berth.frameworks[0].start()
    berth.frameworks[0].wait_leading()
    time.sleep(5)
    berth.running("e2e-web", 1)
    assert containers_of(docker_client, "e2e-web") == before
    assert sorted(executor_pids(berth.data)) == executors

    # two frameworks: the standby takes over when the leader goes, without restarting tasks
    berth.frameworks[1].start()
    time.sleep(1)
    berth.frameworks[0].stop()
    berth.frameworks[1].wait_leading()
    time.sleep(5)
    berth.running("e2e-web", 1)
    assert containers_of(docker_client, "e2e-web") == before
    # the new leader acts: scaling works through it
    api.call("PATCH", "/v1/apps/e2e-web/formation", json={"web": 2})
    berth.running("e2e-web", 2)


def test_crash_loop_backs_off_and_oom_is_reported(berth: Berth, test_image: str) -> None:
    api = berth.api
    deploy(api, "e2e-crash", test_image, web="exit 3", worker="a=$(yes | head -c 200000000)")
    api.call("PATCH", "/v1/apps/e2e-crash/limits", json={"worker": {"memory": "16m"}})
    api.call("PATCH", "/v1/apps/e2e-crash/formation", json={"worker": 1})

    def crashed(process: str, text: str) -> Any:
        return [
            t for t in berth.ps("e2e-crash") if t["process"] == process and text in t["message"]
        ]

    web = wait_for(lambda: crashed("web", "restarting in"), 60)[0]
    assert web["state"] == "failed"
    assert web["exit_code"] == 3
    assert "crashed (exit 3)" in web["message"]
    worker = wait_for(lambda: crashed("worker", "out of memory"), 60)[0]
    assert worker["state"] == "failed"


def test_two_berths_on_one_docker_and_zookeeper_never_touch_each_other(
    zookeeper: ZooKeeper, tmp_path: Path, docker_client: docker.DockerClient, test_image: str
) -> None:
    one = Berth(zookeeper, "/e2e-one", tmp_path / "one", "30700-30749")
    two = Berth(zookeeper, "/e2e-two", tmp_path / "two", "30750-30799")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one.start()
    two.start()
    try:
        for b in (one, two):
            deploy(b.api, "e2e-same", test_image)
        first = one.running("e2e-same", 1)[0]
        second = two.running("e2e-same", 1)[0]
        assert first["id"] != second["id"]
        found = docker_client.containers.list(filters={"label": "berth.app=e2e-same"})
        assert len({c.labels["berth.instance"] for c in found}) == 2
        one.api.call("PATCH", "/v1/apps/e2e-same/formation", json={"web": 0})
        one.running("e2e-same", 0)
        time.sleep(2)
        assert two.running("e2e-same", 1)[0]["id"] == second["id"]
        assert [
            c.labels["berth.task"]
            for c in docker_client.containers.list(filters={"label": "berth.app=e2e-same"})
        ] == [second["id"]]
    finally:
        one.stop()
        two.stop()
        for c in docker_client.containers.list(all=True, filters={"label": "berth.app=e2e-same"}):
            c.remove(force=True)


def test_a_dead_executor_leaves_no_container_behind(
    berth: Berth, docker_client: docker.DockerClient, test_image: str
) -> None:
    deploy(berth.api, "e2e-orphan", test_image)
    first = berth.running("e2e-orphan", 1)[0]
    (old,) = containers_of(docker_client, "e2e-orphan")
    (pid,) = executor_pids(berth.data)
    os.kill(pid, signal.SIGKILL)
    replaced = wait_for(
        lambda: [t for t in berth.running("e2e-orphan", 1) if t["id"] != first["id"]]
    )
    assert replaced
    wait_for(lambda: old not in containers_of(docker_client, "e2e-orphan"))
    assert len(containers_of(docker_client, "e2e-orphan")) == 1
