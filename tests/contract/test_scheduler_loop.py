"""The scheduler loop end to end against a master that speaks the v1 wire format, with real
ZooKeeper state: formations become ACCEPTs with Berth's TaskInfos, updates are saved then
acknowledged, crashes back off, scale-down kills, nothing pending means SUPPRESS, and a new
leader re-registers as the same framework and reconciles what it knows."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.framework.mesos import MesosSchedulerDriver
from berth.framework.model import Artifact
from berth.framework.scheduler import Events, Options, Scheduler
from berth.framework.sealing import Sealer, load_or_create_key
from berth.framework.state import Store
from berth.framework.taskinfo import Payload
from tests.support.fake_mesos import FakeMaster
from tests.support.services import ZooKeeper

pytestmark = pytest.mark.zookeeper

FRAMEWORK = {"user": "berth", "name": "berth", "failover_timeout": 604800.0, "checkpoint": True}


def offer(n: int) -> dict[str, Any]:
    return {
        "id": {"value": f"o{n}"},
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


def update(task_id: str, state: str, uuid: str = "AAEC", **extra: Any) -> dict[str, Any]:
    status = {
        "task_id": {"value": task_id},
        "state": state,
        "source": "SOURCE_EXECUTOR",
        "agent_id": {"value": "a1"},
        "uuid": uuid,
        **extra,
    }
    return {"type": "UPDATE", "update": {"status": status}}


class Running:
    """A scheduler (leader) running in a thread, as `berth framework` runs it."""

    def __init__(
        self,
        store: Store,
        master: FakeMaster,
        desired_every: float = 0.1,
        report_waiting_after: float = 15.0,
    ) -> None:
        framework = dict(FRAMEWORK)
        if fid := store.framework_id():
            framework["id"] = {"value": fid}
        self.events = Events()
        self.driver = MesosSchedulerDriver(self.events, framework, master.address, backoff_max=0.3)
        self.fence = threading.Event()
        options = Options(
            instance="test",
            grace_seconds=2.0,
            desired_every=desired_every,
            reconcile_retry=0.3,
            report_waiting_after=report_waiting_after,
        )
        self.scheduler = Scheduler(store, self.events, self.driver, options)
        self.thread = threading.Thread(target=self.scheduler.run, args=(self.fence,))
        self.driver.start()
        self.thread.start()

    def stop(self) -> None:
        self.fence.set()
        self.thread.join(10)
        self.driver.stop(failover=True)


@pytest.fixture
def store(zookeeper: ZooKeeper, chroot: str, tmp_path: Path) -> Iterator[Store]:
    s = Store(zookeeper.hosts, chroot, Sealer(load_or_create_key(tmp_path)))
    s.start()
    yield s
    s.stop()


def wait_for(what: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def calls_of(master: FakeMaster, kind: str) -> list[dict[str, Any]]:
    return [c for c in master.calls if c["type"] == kind]


def test_changes_reach_the_scheduler_through_watches_not_polling(store: Store) -> None:
    """With the periodic re-read an hour away, a scale and a new release are acted on at once:
    ZooKeeper's watches on the app and its formation wake the scheduler, which REVIVEs."""
    store.create_app("shop", "test")
    store.deploy("shop", Artifact("image", "shop:v1"), {"web": ""}, "Deploy shop:v1", "test")
    master = FakeMaster()
    leader = Running(store, master, desired_every=3600)
    try:
        master.wait_subscribes(1)
        master.subscribed("fw-1")
        wait_for(lambda: calls_of(master, "SUPPRESS"))  # nothing is scaled yet

        store.scale("shop", {"web": 1})
        wait_for(lambda: calls_of(master, "REVIVE"))
        master.send({"type": "OFFERS", "offers": {"offers": [offer(1)]}})
        accept = wait_for(lambda: calls_of(master, "ACCEPT"))[0]["accept"]
        (info,) = accept["operations"][0]["launch"]["task_infos"]
        assert Payload.decode(info["data"]).image == "shop:v1"
        master.send(update(info["task_id"]["value"], "TASK_RUNNING", uuid="u0", healthy=True))
        wait_for(lambda: len(calls_of(master, "SUPPRESS")) == 2)

        store.deploy("shop", Artifact("image", "shop:v2"), {"web": ""}, "Deploy shop:v2", "test")
        wait_for(lambda: len(calls_of(master, "REVIVE")) == 2)
        master.send({"type": "OFFERS", "offers": {"offers": [offer(2)]}})
        second = wait_for(
            lambda: len(calls_of(master, "ACCEPT")) == 2 and calls_of(master, "ACCEPT")
        )
        (info,) = second[1]["accept"]["operations"][0]["launch"]["task_infos"]
        assert Payload.decode(info["data"]).image == "shop:v2"
    finally:
        leader.stop()


def test_a_task_no_offer_has_room_for_is_reported_once(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    store.create_app("shop", "test")
    store.deploy("shop", Artifact("image", "shop:v1"), {"web": ""}, "Deploy shop:v1", "test")
    store.set_limits("shop", {"web": {"cpu": 1.0}})
    store.scale("shop", {"web": 1})
    small = offer(1)
    small["resources"][0]["scalar"]["value"] = 0.5  # less than the task's 1 cpu
    master = FakeMaster()
    leader = Running(store, master, report_waiting_after=0.5)
    try:
        master.wait_subscribes(1)
        master.subscribed("fw-1")

        def reports() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.msg == "a task is waiting for resources"]

        def declined() -> list[dict[str, str]]:
            return [i for c in calls_of(master, "DECLINE") for i in c["decline"]["offer_ids"]]

        with caplog.at_level(logging.WARNING, "berth.framework.scheduler"):
            master.send({"type": "OFFERS", "offers": {"offers": [small]}})
            wait_for(lambda: calls_of(master, "DECLINE"))
            (report,) = wait_for(reports)
            assert report.__dict__["slot"] == "web.1"
            for n in (2, 3):
                master.send(
                    {"type": "OFFERS", "offers": {"offers": [{**small, "id": {"value": f"o{n}"}}]}}
                )
            wait_for(lambda: len(declined()) >= 3)
            assert len(reports()) == 1  # said once
            assert calls_of(master, "ACCEPT") == []
    finally:
        leader.stop()


def test_formation_to_tasks_and_back(store: Store) -> None:
    store.create_app("shop", "test")
    store.set_config("shop", {"GREETING": "hi"}, "test")
    store.deploy("shop", Artifact("image", "shop:v1"), {"web": ""}, "Deploy shop:v1", "test")
    store.scale("shop", {"web": 2})
    master = FakeMaster()
    leader = Running(store, master)
    try:
        master.wait_subscribes(1)
        master.subscribed("fw-1")
        wait_for(lambda: store.framework_id() == "fw-1")
        wait_for(lambda: calls_of(master, "RECONCILE"))

        master.send({"type": "OFFERS", "offers": {"offers": [offer(1)]}})
        accept = wait_for(lambda: calls_of(master, "ACCEPT"))[0]["accept"]
        assert accept["offer_ids"] == [{"value": "o1"}]
        infos = accept["operations"][0]["launch"]["task_infos"]
        assert [i["name"] for i in infos] == ["shop web.1 v3", "shop web.2 v3"]
        payload = Payload.decode(infos[0]["data"])
        assert payload.image == "shop:v1"
        assert payload.env["GREETING"] == "hi"
        assert payload.env["PORT"] == str(payload.port)
        ids = [i["task_id"]["value"] for i in infos]
        assert {t.id: t.state for t in store.list_tasks("shop")} == dict.fromkeys(ids, "staging")

        for n, tid in enumerate(ids):
            master.send(update(tid, "TASK_RUNNING", uuid=f"u{n}", healthy=True))
        acks = wait_for(
            lambda: len(calls_of(master, "ACKNOWLEDGE")) == 2 and calls_of(master, "ACKNOWLEDGE")
        )
        assert [a["acknowledge"]["uuid"] for a in acks] == ["u0", "u1"]
        assert {t.state for t in store.list_tasks("shop")} == {"running"}
        wait_for(lambda: calls_of(master, "SUPPRESS"))  # nothing pending

        # a crash: relaunched at once, then a second crash backs off
        data = base64.b64encode(json.dumps({"exit_code": 3}).encode()).decode()
        master.send(update(ids[0], "TASK_FAILED", uuid="f1", data=data))
        wait_for(lambda: calls_of(master, "REVIVE"))
        master.send({"type": "OFFERS", "offers": {"offers": [offer(2)]}})
        relaunch = wait_for(
            lambda: len(calls_of(master, "ACCEPT")) == 2 and calls_of(master, "ACCEPT")
        )[1]
        new_id = relaunch["accept"]["operations"][0]["launch"]["task_infos"][0]["task_id"]["value"]
        assert new_id.startswith("shop.web.1.v3.")
        master.send(update(new_id, "TASK_FAILED", uuid="f2", data=data))
        crashed = wait_for(
            lambda: [t for t in store.list_tasks("shop") if t.id == new_id and t.state == "failed"]
        )[0]
        assert crashed.exit_code == 3
        assert "crashed (exit 3); restarting in 10s" in crashed.message

        # scale down: the highest slot is killed with the grace period
        store.scale("shop", {"web": 1})
        kill = wait_for(lambda: calls_of(master, "KILL"))[0]["kill"]
        assert kill["task_id"] == {"value": ids[1]}
        assert kill["kill_policy"] == {"grace_period": {"nanoseconds": 2_000_000_000}}

        # a task Berth does not know is killed
        master.send(update("stranger.web.1.v1.x", "TASK_RUNNING", uuid="s1"))
        wait_for(
            lambda: any(
                k["kill"]["task_id"]["value"] == "stranger.web.1.v1.x"
                for k in calls_of(master, "KILL")
            )
        )
    finally:
        leader.stop()
    assert not calls_of(master, "TEARDOWN")

    # failover: a new leader subscribes as the same framework and reconciles what it knows
    calls_before = len(master.calls)
    successor = Running(store, master)
    try:
        body = master.wait_subscribes(2)
        assert body["framework_id"] == {"value": "fw-1"}
        master.subscribed("fw-1")
        reconciles = wait_for(
            lambda: [c for c in master.calls[calls_before:] if c["type"] == "RECONCILE"]
        )
        explicit = reconciles[0]["reconcile"]["tasks"]
        assert {"task_id": {"value": ids[0]}, "agent_id": {"value": "a1"}} not in explicit
        assert {t["task_id"]["value"] for t in explicit} >= {ids[1]}

        # the master does not answer: the explicit reconciliation is retried, backing off
        def explicit() -> list[dict[str, Any]]:
            return [
                c
                for c in master.calls[calls_before:]
                if c["type"] == "RECONCILE" and c["reconcile"]["tasks"]
            ]

        wait_for(lambda: len(explicit()) >= 3)
        assert explicit()[1]["reconcile"] == explicit()[0]["reconcile"]
        # once it answers, the retries stop
        for task in explicit()[0]["reconcile"]["tasks"]:
            master.send(update(task["task_id"]["value"], "TASK_RUNNING", uuid=""))
        time.sleep(1.5)
        settled = len(explicit())
        time.sleep(2.5)
        assert len(explicit()) == settled
    finally:
        successor.stop()
        master.stop()
