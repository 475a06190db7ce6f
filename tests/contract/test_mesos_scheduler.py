"""Contract tests: Berth's Mesos v1 scheduler driver against a master that speaks the wire
format from Mesos's documentation. They check the exact JSON the driver sends and how it
behaves when the master fails, goes silent or redirects."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import pytest
from addict import Dict

from berth.framework.mesos import MesosSchedulerDriver, Scheduler, SchedulerDriver
from tests.support.fake_mesos import FakeMaster

FRAMEWORK = {
    "user": "berth",
    "name": "berth",
    "failover_timeout": 604800.0,
    "checkpoint": True,
    "capabilities": [{"type": "PARTITION_AWARE"}, {"type": "TASK_KILLING_STATE"}],
}


class Recorder(Scheduler):
    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, tuple[Any, ...]]] = queue.Queue()
        self.explode_on: set[str] = set()

    def _record(self, name: str, *args: Any) -> None:
        self.events.put((name, args))
        if name in self.explode_on:
            raise RuntimeError(f"boom in {name}")

    def registered(self, driver: SchedulerDriver, framework_id: Dict, master_info: Dict) -> None:
        self._record("registered", framework_id, master_info)

    def reregistered(self, driver: SchedulerDriver, master_info: Dict) -> None:
        self._record("reregistered", master_info)

    def disconnected(self, driver: SchedulerDriver) -> None:
        self._record("disconnected")

    def resourceOffers(self, driver: SchedulerDriver, offers: list[Dict]) -> None:
        self._record("resourceOffers", offers)

    def offerRescinded(self, driver: SchedulerDriver, offer_id: Dict) -> None:
        self._record("offerRescinded", offer_id)

    def statusUpdate(self, driver: SchedulerDriver, status: Dict) -> None:
        self._record("statusUpdate", status)

    def frameworkMessage(
        self, driver: SchedulerDriver, executor_id: Dict, agent_id: Dict, data: bytes
    ) -> None:
        self._record("frameworkMessage", executor_id, agent_id, data)

    def agentLost(self, driver: SchedulerDriver, agent_id: Dict) -> None:
        self._record("agentLost", agent_id)

    def executorLost(
        self, driver: SchedulerDriver, executor_id: Dict, agent_id: Dict, status: int | None
    ) -> None:
        self._record("executorLost", executor_id, agent_id, status)

    def error(self, driver: SchedulerDriver, message: str) -> None:
        self._record("error", message)

    def next(self, name: str, timeout: float = 10.0) -> tuple[Any, ...]:
        deadline = time.monotonic() + timeout
        while True:
            got, args = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if got == name:
                return args


@pytest.fixture
def master() -> Iterator[FakeMaster]:
    m = FakeMaster()
    yield m
    m.stop()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def driver(master: FakeMaster, recorder: Recorder) -> Iterator[MesosSchedulerDriver]:
    d = MesosSchedulerDriver(recorder, FRAMEWORK, master.address, backoff_max=0.5)
    d.start()
    yield d
    d.stop()


def subscribe(master: FakeMaster, recorder: Recorder, n: int = 1) -> dict[str, Any]:
    body = master.wait_subscribes(n)
    master.subscribed("fw-1")
    recorder.next("registered" if n == 1 else "reregistered")
    return body


OFFER = {
    "id": {"value": "o1"},
    "framework_id": {"value": "fw-1"},
    "agent_id": {"value": "a1"},
    "hostname": "agent1",
    "resources": [
        {"name": "cpus", "type": "SCALAR", "scalar": {"value": 2.0}, "role": "*"},
        {"name": "mem", "type": "SCALAR", "scalar": {"value": 4096.0}, "role": "*"},
        {"name": "ports", "type": "RANGES", "ranges": {"range": [{"begin": 31000, "end": 31099}]}},
    ],
}


def test_subscribe_sends_framework_info_without_id_first(
    master: FakeMaster, recorder: Recorder, driver: MesosSchedulerDriver
) -> None:
    body = master.wait_subscribes(1)
    assert body == {"type": "SUBSCRIBE", "subscribe": {"framework_info": FRAMEWORK}}
    master.subscribed("fw-42")
    framework_id, master_info = recorder.next("registered")
    assert framework_id == {"value": "fw-42"}
    assert master_info.hostname == "master"
    assert driver.framework_id == "fw-42"


def test_calls_carry_stream_id_and_framework_id_with_exact_json(
    master: FakeMaster, recorder: Recorder, driver: MesosSchedulerDriver
) -> None:
    subscribe(master, recorder)
    task = {
        "name": "myapp web.1 v7",
        "task_id": {"value": "myapp.web.7.x"},
        "agent_id": {"value": "a1"},
        "resources": [],
    }
    assert driver.launchTasks([{"value": "o1"}], [task], {"refuse_seconds": 5.0})
    assert driver.declineOffer(["o2", "o3"], {"refuse_seconds": 120.0})
    assert driver.suppressOffers()
    assert driver.reviveOffers()
    assert driver.killTask("t1", "a1", grace_seconds=30)
    assert driver.acknowledgeStatusUpdate(
        {
            "task_id": {"value": "t1"},
            "agent_id": {"value": "a1"},
            "uuid": "AAEC",
            "state": "TASK_RUNNING",
        }
    )
    assert driver.acknowledgeStatusUpdate({"task_id": {"value": "t2"}, "state": "TASK_LOST"})
    assert driver.reconcileTasks([{"task_id": {"value": "t1"}, "agent_id": {"value": "a1"}}])
    assert driver.reconcileTasks([])
    assert driver.sendFrameworkMessage("e1", "a1", b"hi")
    fw = {"value": "fw-1"}
    assert master.wait_calls(9) == [
        {
            "framework_id": fw,
            "type": "ACCEPT",
            "accept": {
                "offer_ids": [{"value": "o1"}],
                "operations": [{"type": "LAUNCH", "launch": {"task_infos": [task]}}],
                "filters": {"refuse_seconds": 5.0},
            },
        },
        {
            "framework_id": fw,
            "type": "DECLINE",
            "decline": {
                "offer_ids": [{"value": "o2"}, {"value": "o3"}],
                "filters": {"refuse_seconds": 120.0},
            },
        },
        {"framework_id": fw, "type": "SUPPRESS"},
        {"framework_id": fw, "type": "REVIVE"},
        {
            "framework_id": fw,
            "type": "KILL",
            "kill": {
                "task_id": {"value": "t1"},
                "agent_id": {"value": "a1"},
                "kill_policy": {"grace_period": {"nanoseconds": 30_000_000_000}},
            },
        },
        # the update without a uuid (a reconciliation answer) was not acknowledged
        {
            "framework_id": fw,
            "type": "ACKNOWLEDGE",
            "acknowledge": {
                "agent_id": {"value": "a1"},
                "task_id": {"value": "t1"},
                "uuid": "AAEC",
            },
        },
        # agent_id kept (pymesos drops it)
        {
            "framework_id": fw,
            "type": "RECONCILE",
            "reconcile": {"tasks": [{"task_id": {"value": "t1"}, "agent_id": {"value": "a1"}}]},
        },
        {"framework_id": fw, "type": "RECONCILE", "reconcile": {"tasks": []}},
        {
            "framework_id": fw,
            "type": "MESSAGE",
            "message": {
                "agent_id": {"value": "a1"},
                "executor_id": {"value": "e1"},
                "data": "aGk=",
            },
        },
    ]
    assert all(h["Mesos-Stream-Id"] == master.stream_id for h in master.headers)
    assert all(h["Content-Type"] == "application/json" for h in master.headers)


def test_events_reach_the_callbacks(
    master: FakeMaster, recorder: Recorder, driver: MesosSchedulerDriver
) -> None:
    subscribe(master, recorder)
    master.send({"type": "HEARTBEAT"})
    master.send({"type": "OFFERS", "offers": {"offers": [OFFER]}})
    (offers,) = recorder.next("resourceOffers")
    assert offers[0].resources[2].ranges.range[0].begin == 31000
    master.send({"type": "RESCIND", "rescind": {"offer_id": {"value": "o1"}}})
    assert recorder.next("offerRescinded") == ({"value": "o1"},)
    status = {
        "task_id": {"value": "t1"},
        "state": "TASK_RUNNING",
        "source": "SOURCE_EXECUTOR",
        "agent_id": {"value": "a1"},
        "uuid": "AAEC",
        "healthy": True,
    }
    master.send({"type": "UPDATE", "update": {"status": status}})
    assert recorder.next("statusUpdate") == (status,)
    assert master.calls == []  # nothing acknowledged behind the scheduler's back
    master.send(
        {
            "type": "MESSAGE",
            "message": {
                "agent_id": {"value": "a1"},
                "executor_id": {"value": "e1"},
                "data": "aGk=",
            },
        }
    )
    assert recorder.next("frameworkMessage")[2] == b"hi"
    master.send({"type": "FAILURE", "failure": {"agent_id": {"value": "a1"}}})
    assert recorder.next("agentLost") == ({"value": "a1"},)
    master.send(
        {
            "type": "FAILURE",
            "failure": {"agent_id": {"value": "a1"}, "executor_id": {"value": "e1"}, "status": 137},
        }
    )
    assert recorder.next("executorLost") == ({"value": "e1"}, {"value": "a1"}, 137)


def test_a_callback_that_raises_never_stops_the_driver(
    master: FakeMaster, recorder: Recorder, driver: MesosSchedulerDriver
) -> None:
    recorder.explode_on = {"resourceOffers", "statusUpdate"}
    subscribe(master, recorder)
    master.send({"type": "OFFERS", "offers": {"offers": [OFFER]}})
    recorder.next("resourceOffers")
    master.send(
        {
            "type": "UPDATE",
            "update": {"status": {"task_id": {"value": "t"}, "state": "TASK_FAILED"}},
        }
    )
    recorder.next("statusUpdate")
    master.send({"type": "RESCIND", "rescind": {"offer_id": {"value": "o1"}}})
    recorder.next("offerRescinded")
    assert driver.connected
    assert all(c["type"] != "TEARDOWN" for c in master.calls)
    assert len(master.subscribes) == 1


def test_reconnect_resubscribes_as_the_same_framework(
    master: FakeMaster, recorder: Recorder, driver: MesosSchedulerDriver
) -> None:
    subscribe(master, recorder)
    master.close_stream()
    recorder.next("disconnected")
    assert not driver.suppressOffers()  # no stream: calls are dropped, not sent blind
    body = subscribe(master, recorder, 2)
    assert body["framework_id"] == {"value": "fw-1"}
    assert body["subscribe"]["framework_info"]["id"] == {"value": "fw-1"}
    assert body["subscribe"]["framework_info"]["failover_timeout"] == 604800.0


def test_a_silent_master_is_detected_by_missed_heartbeats(
    master: FakeMaster, recorder: Recorder
) -> None:
    driver = MesosSchedulerDriver(
        recorder, FRAMEWORK, master.address, missed_heartbeats=2, backoff_max=0.2
    )
    driver.start()
    try:
        master.wait_subscribes(1)
        master.subscribed("fw-1", heartbeat=0.3)  # then nothing: no heartbeats
        recorder.next("registered")
        recorder.next("disconnected", timeout=10)
        master.wait_subscribes(2)
    finally:
        driver.stop()


def test_follows_a_redirect_to_the_leading_master(recorder: Recorder) -> None:
    follower, leader = FakeMaster(), FakeMaster()
    follower.redirect_to = leader.address
    driver = MesosSchedulerDriver(recorder, FRAMEWORK, follower.address, backoff_max=0.2)
    driver.start()
    try:
        leader.wait_subscribes(1)
        leader.subscribed("fw-9")
        recorder.next("registered")
        assert driver.declineOffer(["o1"])
        assert leader.wait_calls(1)[0]["type"] == "DECLINE"
        assert follower.subscribes == []
    finally:
        driver.stop()
        follower.stop()
        leader.stop()


def test_error_then_a_new_framework_id(
    master: FakeMaster, recorder: Recorder, driver: MesosSchedulerDriver
) -> None:
    subscribe(master, recorder)
    master.send({"type": "ERROR", "error": {"message": "Framework has been removed"}})
    assert recorder.next("error") == ("Framework has been removed",)
    driver.forget_framework_id()
    master.close_stream()
    body = master.wait_subscribes(2)
    assert "framework_id" not in body
    assert "id" not in body["subscribe"]["framework_info"]


def test_stop_with_failover_sends_no_teardown(master: FakeMaster, recorder: Recorder) -> None:
    driver = MesosSchedulerDriver(recorder, FRAMEWORK, master.address)
    driver.start()
    subscribe(master, recorder)
    driver.stop()
    assert master.calls == []
