"""The framework's ZooKeeper state: one leader at a time, a leader fenced the moment its
connection goes, the framework id and task records kept. Real ZooKeeper."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.framework.errors import BerthError
from berth.framework.leader import Leadership
from berth.framework.model import Task
from berth.framework.sealing import Sealer, load_or_create_key
from berth.framework.state import Store
from tests.conftest import need
from tests.support.services import ZooKeeper, zookeeper_available

pytestmark = pytest.mark.zookeeper


@pytest.fixture
def store(zookeeper: ZooKeeper, chroot: str, tmp_path: Path) -> Iterator[Store]:
    s = Store(zookeeper.hosts, chroot, Sealer(load_or_create_key(tmp_path)))
    s.start()
    yield s
    s.stop()


def test_framework_id_and_tasks_are_kept(store: Store) -> None:
    assert store.framework_id() is None
    store.set_framework_id("fw-1")
    store.set_framework_id("fw-2")
    assert store.framework_id() == "fw-2"
    store.set_framework_id(None)
    assert store.framework_id() is None
    web = Task("shop.web.1.v2.abc", "shop", "web", 1, 2, "staging", agent_id="a1")
    store.put_task(web)
    store.put_task(Task("shopping.web.1.v1.def", "shopping", "web", 1, 1, "running"))
    store.put_task(Task("shop.worker.1.v2.x", "shop", "worker", 1, 2, "running", healthy=True))
    store.put_task(Task.from_json({**web.to_json(), "state": "running", "port": 31000}))
    shop = store.list_tasks("shop")
    assert [t.id for t in shop] == ["shop.web.1.v2.abc", "shop.worker.1.v2.x"]
    assert shop[0].state == "running"
    assert shop[0].port == 31000
    assert len(store.list_tasks()) == 3
    store.delete_task("shop.web.1.v2.abc")
    store.delete_task("shop.web.1.v2.abc")  # already gone: fine
    assert [t.id for t in store.list_tasks("shop")] == ["shop.worker.1.v2.x"]


def _contend(
    zk: ZooKeeper,
    chroot: str,
    name: str,
    log: list[str],
    stop: threading.Event,
    results: dict[str, bool],
) -> threading.Thread:
    def lead(fence: threading.Event) -> None:
        log.append(f"{name} leads")
        fence.wait()
        log.append(f"{name} fenced")

    def run() -> None:
        results[name] = Leadership(zk.hosts, chroot, name).run(lead, stop)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_for(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_one_leader_at_a_time_and_the_next_takes_over(zookeeper: ZooKeeper, chroot: str) -> None:
    log: list[str] = []
    results: dict[str, bool] = {}
    stop_one, stop_two = threading.Event(), threading.Event()
    one = _contend(zookeeper, chroot, "one", log, stop_one, results)
    _wait_for(lambda: log == ["one leads"])
    two = _contend(zookeeper, chroot, "two", log, stop_two, results)
    time.sleep(1.0)
    assert log == ["one leads"]  # two waits
    stop_one.set()
    one.join(20)
    _wait_for(lambda: log[-1] == "two leads")
    assert log == ["one leads", "one fenced", "two leads"]
    assert results["one"] is True  # it gave leadership up; it was not fenced off
    stop_two.set()
    two.join(20)


def test_a_leader_is_fenced_when_its_zookeeper_goes(tmp_path: Path) -> None:
    need(zookeeper_available(), "ZooKeeper (Debian package zookeeper)")
    zk = ZooKeeper(tmp_path / "zk")
    zk.start()
    log: list[str] = []
    results: dict[str, bool] = {}
    stop = threading.Event()
    try:
        leader = _contend(zk, "/berth", "one", log, stop, results)
        _wait_for(lambda: log == ["one leads"])
        zk.kill()
        _wait_for(lambda: log == ["one leads", "one fenced"])
        leader.join(30)
        assert results["one"] is False  # fenced, not a voluntary stop
    finally:
        stop.set()
        zk.stop()


def test_leading_mesos_master_is_read_from_zookeeper(zookeeper: ZooKeeper, chroot: str) -> None:
    from kazoo.client import KazooClient

    from berth.framework.mesos_master import resolve

    client = KazooClient(hosts=zookeeper.hosts)
    client.start()
    try:
        base = f"{chroot}-mesos"
        info = {"address": {"hostname": "m2.example", "ip": "10.0.0.2", "port": 5050}}
        client.create(f"{base}/json.info_0000000012", json.dumps(info).encode(), makepath=True)
        older = {"address": {"hostname": "m1.example", "ip": "10.0.0.1", "port": 5051}}
        client.create(f"{base}/json.info_0000000003", json.dumps(older).encode())
        client.create(f"{base}/log_replicas", b"")
        assert resolve(f"zk://{zookeeper.hosts}{base}") == "m1.example:5051"
        assert resolve("m9.example:5050") == "m9.example:5050"
        with pytest.raises(BerthError, match="no Mesos master"):
            resolve(f"zk://{zookeeper.hosts}{chroot}-empty")
    finally:
        client.stop()
        client.close()


def test_instance_id_is_stable(store: Store) -> None:
    first = store.instance_id()
    assert len(first) == 32
    assert store.instance_id() == first
