"""One-off runs through the scheduler loop (a fake v1 master, real ZooKeeper): a pending run
is launched once with its own argv and no health check, its record follows its task to the
end with the exit code, it is never launched again, an attached run's executor is told where
the rendezvous is and the run's secret, and a new leader finishes runs whose task is gone."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.framework.errors import Conflict
from berth.framework.mesos import MesosSchedulerDriver
from berth.framework.model import Artifact
from berth.framework.runs import Run
from berth.framework.scheduler import Events, Options, Scheduler
from berth.framework.sealing import Sealer, load_or_create_key
from berth.framework.state import Store
from berth.framework.taskinfo import Payload
from tests.contract.test_scheduler_loop import FRAMEWORK, calls_of, offer, update, wait_for
from tests.support.fake_mesos import FakeMaster
from tests.support.services import ZooKeeper

pytestmark = pytest.mark.zookeeper


@pytest.fixture
def store(zookeeper: ZooKeeper, chroot: str, tmp_path: Path) -> Iterator[Store]:
    s = Store(zookeeper.hosts, chroot, Sealer(load_or_create_key(tmp_path)))
    s.start()
    yield s
    s.stop()


class Running:
    """A leading scheduler in a thread (test_scheduler_loop's, with the API's URL)."""

    def __init__(self, store: Store, master: FakeMaster, api_url: str = "") -> None:
        framework = dict(FRAMEWORK)
        if fid := store.framework_id():
            framework["id"] = {"value": fid}
        self.events = Events()
        self.driver = MesosSchedulerDriver(self.events, framework, master.address, backoff_max=0.3)
        self.fence = threading.Event()
        options = Options(
            instance="test", grace_seconds=2.0, desired_every=0.1, reconcile_retry=0.3,
            api_url=api_url,
        )  # fmt: skip
        scheduler = Scheduler(store, self.events, self.driver, options)
        self.thread = threading.Thread(target=scheduler.run, args=(self.fence,))
        self.driver.start()
        self.thread.start()

    def stop(self) -> None:
        self.fence.set()
        self.thread.join(10)
        self.driver.stop(failover=True)


def new_run(store: Store, attach: bool = False, command: tuple[str, ...] = ("true",)) -> Run:
    return store.create_run(
        "shop",
        command,
        attach=attach,
        tty=attach,
        memory_mb=128,
        cpus=0.5,
        created_by="test",
        secret="s3cret-" + "x" * 20,
    )


def exit_data(code: int) -> str:
    return base64.b64encode(json.dumps({"exit_code": code}).encode()).decode()


def launched_infos(master: FakeMaster, count: int) -> list[dict[str, object]]:
    accepts = wait_for(
        lambda: len(calls_of(master, "ACCEPT")) >= count and calls_of(master, "ACCEPT")
    )
    return [
        info
        for a in accepts
        for op in a["accept"]["operations"]
        for info in op["launch"]["task_infos"]
    ]


def test_a_run_is_launched_once_and_its_record_follows_its_task(store: Store) -> None:
    store.create_app("shop", "test")
    store.deploy("shop", Artifact("image", "shop:v1"), {"web": ""}, "Deploy shop:v1", "test")
    run = new_run(store, command=("sh", "-c", "echo 'a b'; exit 42"))
    master = FakeMaster()
    leader = Running(store, master)
    try:
        master.wait_subscribes(1)
        master.subscribed("fw-1")
        wait_for(lambda: calls_of(master, "RECONCILE"))
        master.send({"type": "OFFERS", "offers": {"offers": [offer(1)]}})
        (info,) = launched_infos(master, 1)
        assert info["name"] == "shop run.1 v2"
        payload = Payload.decode(str(info["data"]))
        assert payload.command == ["sh", "-c", "echo 'a b'; exit 42"]
        assert (payload.process, payload.index, payload.health.kind) == ("run", 1, "none")
        assert payload.memory_mb == 128
        assert payload.attach_url == ""  # detached
        tid = info["task_id"]["value"]  # type: ignore[index]
        launched = wait_for(lambda: store.get_run("shop", run.number).state == "launched")
        assert launched
        assert store.get_run("shop", run.number).task_id == tid
        master.send(update(tid, "TASK_RUNNING", uuid="u1", healthy=True))
        master.send(update(tid, "TASK_FAILED", uuid="u2", data=exit_data(42)))
        done = wait_for(lambda: (r := store.get_run("shop", run.number)).state == "finished" and r)
        assert (done.exit_code, done.outcome, done.secret) == (42, "failed", "")
        # more offers: nothing to launch (a run is never restarted), so they are declined
        master.send({"type": "OFFERS", "offers": {"offers": [offer(2)]}})
        wait_for(lambda: calls_of(master, "DECLINE"))
        assert len(calls_of(master, "ACCEPT")) == 1
    finally:
        leader.stop()


def test_attached_runs_learn_the_rendezvous_and_a_new_leader_finishes_lost_runs(
    store: Store,
) -> None:
    store.create_app("shop", "test")
    store.deploy("shop", Artifact("image", "shop:v1"), {"web": ""}, "Deploy shop:v1", "test")
    first, second = new_run(store, attach=True), new_run(store)
    master = FakeMaster()
    leader = Running(store, master, api_url="http://api.example:7070")
    try:
        master.wait_subscribes(1)
        master.subscribed("fw-1")
        wait_for(lambda: calls_of(master, "RECONCILE"))
        master.send({"type": "OFFERS", "offers": {"offers": [offer(1)]}})
        infos = launched_infos(master, 1)
        payloads = {
            Payload.decode(str(i["data"])).index: Payload.decode(str(i["data"])) for i in infos
        }
        attached = payloads[first.number]
        assert attached.attach_url == "http://api.example:7070/v1/apps/shop/runs/1/rendezvous"
        assert attached.attach_secret == store.run_secret(store.get_run("shop", 1))
        assert attached.tty
        assert payloads[second.number].attach_url == ""
        wait_for(lambda: all(r.state == "launched" for r in store.list_runs("shop")))
    finally:
        leader.stop()
    # while no leader ran: one run's task vanished from the state, the other's is reported gone
    gone_task = store.get_run("shop", second.number).task_id
    store.delete_task(store.get_run("shop", first.number).task_id)
    master2 = FakeMaster()
    leader2 = Running(store, master2)
    try:
        done = wait_for(
            lambda: (r := store.get_run("shop", first.number)).state == "finished" and r
        )
        assert done.outcome == "lost"
        master2.wait_subscribes(1)
        master2.subscribed("fw-1")
        master2.send(update(gone_task, "TASK_GONE", uuid="g1"))
        done = wait_for(
            lambda: (r := store.get_run("shop", second.number)).state == "finished" and r
        )
        assert done.outcome == "gone"
    finally:
        leader2.stop()


def test_a_run_of_an_app_with_nothing_built_is_refused(store: Store) -> None:
    store.create_app("shop", "test")
    with pytest.raises(Conflict, match="push or deploy first"):
        new_run(store)
    assert store.list_runs("shop") == []
