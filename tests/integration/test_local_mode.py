"""Local mode end to end: a real LocalAgent (a loopback HTTP server) and LocalSchedulerDriver,
with real executor processes (tests/support/local_executor.py, on Berth's executor driver).
They check what a scheduler sees — registration, offers of this machine's resources, filters,
SUPPRESS/REVIVE, launches and their validation, kills, executor deaths, reconciliation — and
that a restarted agent adopts the executors still running and fails the ones that died."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from addict import Dict

from berth.framework.local import LocalAgent, LocalSchedulerDriver
from berth.framework.mesos import Scheduler, SchedulerDriver
from berth.framework.plan import EXECUTOR as EXECUTOR_RESOURCES
from berth.framework.plan import Launch, Resources
from berth.framework.recordio import Decoder
from berth.framework.taskinfo import Payload, build_task_info

EXECUTOR = Path(__file__).resolve().parents[1] / "support" / "local_executor.py"
FRAMEWORK: dict[str, Any] = {
    "user": "berth",
    "name": "berth-local-test",
    "failover_timeout": 604800.0,
    "checkpoint": True,
    "capabilities": [{"type": "PARTITION_AWARE"}, {"type": "TASK_KILLING_STATE"}],
}
TIMEOUT = 15.0


class Recorder(Scheduler):
    """Records every callback; acknowledges updates (as Berth's scheduler does once saved)."""

    def __init__(self, auto_ack: bool = True, explode_on: frozenset[str] = frozenset()) -> None:
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.changed = threading.Condition()
        self.auto_ack = auto_ack
        self.explode_on = explode_on

    def _record(self, name: str, *args: Any) -> None:
        with self.changed:
            self.events.append((name, args))
            self.changed.notify_all()

    def _maybe_explode(self, name: str) -> None:
        if name in self.explode_on:
            raise RuntimeError(f"boom in {name}")

    def registered(self, driver: SchedulerDriver, framework_id: Dict, master_info: Dict) -> None:
        self._record("registered", framework_id, master_info)

    def reregistered(self, driver: SchedulerDriver, master_info: Dict) -> None:
        self._record("reregistered", master_info)

    def disconnected(self, driver: SchedulerDriver) -> None:
        self._record("disconnected")

    def resourceOffers(self, driver: SchedulerDriver, offers: list[Dict]) -> None:
        for offer in offers:
            self._record("offer", offer)
        self._maybe_explode("resourceOffers")

    def statusUpdate(self, driver: SchedulerDriver, status: Dict) -> None:
        self._record("status", status)
        if self.auto_ack:
            driver.acknowledgeStatusUpdate(status)
        self._maybe_explode("statusUpdate")

    def executorLost(
        self, driver: SchedulerDriver, executor_id: Dict, agent_id: Dict, status: int | None
    ) -> None:
        self._record("executorLost", executor_id, agent_id, status)

    # -- what tests ask ----------------------------------------------------------------------

    def wait(
        self, name: str, match: Callable[..., bool] = lambda *a: True, timeout: float = TIMEOUT
    ) -> tuple[Any, ...]:
        """The first recorded `name` event whose args match (waiting for it if needed)."""

        def found() -> tuple[Any, ...] | None:
            for got, args in self.events:
                if got == name and match(*args):
                    return args
            return None

        with self.changed:
            if not self.changed.wait_for(lambda: found() is not None, timeout):
                raise TimeoutError(f"no {name} event; got {[e[0] for e in self.events]}")
            result = found()
            assert result is not None
            return result

    def offers(self) -> list[Dict]:
        with self.changed:
            return [args[0] for name, args in self.events if name == "offer"]

    def wait_offer(self, n: int, timeout: float = TIMEOUT) -> Dict:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.offers()) >= n, timeout):
                raise TimeoutError(f"{len(self.offers())} offers, expected {n}")
            return self.offers()[n - 1]

    def statuses(self, task_id: str | None = None) -> list[Dict]:
        with self.changed:
            return [
                args[0]
                for name, args in self.events
                if name == "status" and task_id in (None, args[0].task_id.value)
            ]

    def wait_status(self, task_id: str, state: str, timeout: float = TIMEOUT) -> Dict:
        args = self.wait(
            "status", lambda s: s.task_id.value == task_id and s.state == state, timeout
        )
        status: Dict = args[0]
        return status


class Local:
    """One local mode: agent and driver on a data dir, restartable; cleans up every executor."""

    def __init__(
        self,
        data_dir: Path,
        framework: dict[str, Any] | None = None,
        explode_on: frozenset[str] = frozenset(),
        auto_ack: bool = True,
    ) -> None:
        self.data_dir = data_dir
        self.framework = framework or FRAMEWORK
        self.agents: list[LocalAgent] = []
        self.drivers: list[LocalSchedulerDriver] = []
        self.start_agent()
        self.start_driver(None, auto_ack=auto_ack, explode_on=explode_on)

    @property
    def agent(self) -> LocalAgent:
        return self.agents[-1]

    @property
    def driver(self) -> LocalSchedulerDriver:
        return self.drivers[-1]

    @property
    def framework_id(self) -> str:
        value = self.driver.framework_id
        assert value is not None
        return value

    def start_agent(self) -> None:
        agent = LocalAgent(
            self.data_dir,
            recovery_timeout=60.0,
            subscription_backoff_max=0.5,
            reregistration_timeout=3.0,
            poll_interval=0.05,
        )
        agent.start()
        self.agents.append(agent)

    def start_driver(
        self,
        framework_id: str | None,
        auto_ack: bool = True,
        explode_on: frozenset[str] = frozenset(),
        allocation_interval: float = 0.05,
    ) -> None:
        framework = dict(self.framework)
        if framework_id is not None:
            framework["id"] = {"value": framework_id}
        self.scheduler = Recorder(auto_ack, explode_on)
        driver = LocalSchedulerDriver(
            self.scheduler, framework, self.agent, allocation_interval=allocation_interval
        )
        driver.start()
        self.drivers.append(driver)

    def restart(self) -> None:
        """Berth goes away (driver and agent stop; executors run on) and comes back."""
        framework_id = self.framework_id
        self.driver.stop()
        self.agent.stop()
        self.start_agent()
        self.start_driver(framework_id)

    def task(
        self,
        offer: Dict,
        index: int,
        port: int,
        *,
        cpus: float = 0.5,
        mem: float = 64.0,
        mode: str = "run",
    ) -> dict[str, Any]:
        launch = Launch(
            offer_id=str(offer.id.value),
            agent_id=str(offer.agent_id.value),
            hostname=str(offer.hostname),
            app="demo",
            process="web",
            index=index,
            release=1,
            port=port,
            resources=Resources(cpus, mem),
        )
        payload = Payload(
            app="demo",
            process="web",
            index=index,
            release=1,
            image="none",
            command=None,
            env={"TEST_EXECUTOR_MODE": mode},
            port=port,
            memory_mb=int(mem),
            cpus=cpus,
            instance="test",
        )
        return build_task_info(
            launch, self.framework_id, payload, executor_command=[sys.executable, str(EXECUTOR)]
        )

    def launch(self, offer: Dict, tasks: list[dict[str, Any]]) -> list[str]:
        assert self.driver.launchTasks([offer.id], tasks, {"refuse_seconds": 0})
        return [str(t["task_id"]["value"]) for t in tasks]

    def executor_events(self, task_id: str) -> list[dict[str, Any]]:
        path = self.data_dir / "sandboxes" / task_id / "events.jsonl"  # executor id = task id
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_executor_event(
        self, task_id: str, match: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.executor_events(task_id):
                if match(event):
                    return event
            time.sleep(0.05)
        raise TimeoutError(f"executor {task_id} events: {self.executor_events(task_id)}")

    def pid(self, task_id: str) -> int:
        pid = self.agent.executor_pid(task_id)
        assert pid is not None
        return pid

    def close(self) -> None:
        if self.agent.running:  # while its driver still acknowledges the executors' last words
            self.agent.shutdown_executors(grace=1.0)
        for driver in self.drivers:
            driver.stop()
        for agent in self.agents:
            agent.stop()
        for agent in self.agents:  # stopped: kills and reaps whatever it started
            agent.shutdown_executors()
        for pid_file in self.data_dir.glob("sandboxes/*/pid"):  # the safety net
            pid = int(pid_file.read_text())
            if _is_test_executor(pid):
                os.killpg(pid, signal.SIGKILL)


def _is_test_executor(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return EXECUTOR.name.encode() in cmdline and state != "Z"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_dead(pid: int, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        assert time.monotonic() < deadline, f"process {pid} is still alive"
        time.sleep(0.05)


def scalars(offer: Dict) -> dict[str, float]:
    return {str(r.name): float(r.scalar.value) for r in offer.resources if r.type == "SCALAR"}


def ports(offer: Dict) -> list[tuple[int, int]]:
    return [
        (int(x.begin), int(x.end))
        for r in offer.resources
        if r.name == "ports"
        for x in r.ranges.range
    ]


def data(status: Dict) -> Any:
    return json.loads(base64.b64decode(str(status.data)))


def mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Local]:
    mode = Local(tmp_path / "local")
    try:
        yield mode
    finally:
        mode.close()


# -- registration and offers -------------------------------------------------------------------


def test_registers_and_offers_this_machine(local: Local) -> None:
    (framework_id, master) = local.scheduler.wait("registered")
    assert framework_id.value == local.framework_id
    assert master.hostname == "127.0.0.1"
    assert master.ip == 16777343  # 127.0.0.1, packed as Mesos packs it

    offer = local.scheduler.wait_offer(1)
    assert offer.framework_id.value == local.framework_id
    assert offer.agent_id.value == local.agent.agent_id
    assert offer.hostname == "127.0.0.1"
    assert offer.id.value
    have = scalars(offer)
    assert have["cpus"] == os.cpu_count()
    assert have["mem"] == mem_total_mb() - 1024
    fs = os.statvfs(local.data_dir)
    free_mb = fs.f_bavail * fs.f_frsize / 2**20  # others write to this disk too: roughly
    assert abs(have["disk"] - free_mb) < max(1024, 0.02 * free_mb)
    assert ports(offer) == [(31000, 32000)]
    assert [r.type for r in offer.resources] == ["SCALAR", "SCALAR", "SCALAR", "RANGES"]

    time.sleep(0.3)  # many allocation rounds: still the one outstanding offer
    assert len(local.scheduler.offers()) == 1


def test_decline_filter_holds_offers_until_it_expires(local: Local) -> None:
    first = local.scheduler.wait_offer(1)
    declined_at = time.monotonic()
    assert local.driver.declineOffer([first.id], {"refuse_seconds": 1.5})
    second = local.scheduler.wait_offer(2, timeout=5)
    assert 1.4 < time.monotonic() - declined_at < 3.5
    assert second.id.value != first.id.value
    assert scalars(second) == scalars(first)

    assert local.driver.declineOffer([second.id], {"refuse_seconds": 3600})
    time.sleep(0.3)
    assert len(local.scheduler.offers()) == 2
    assert local.driver.reviveOffers()  # REVIVE clears filters
    local.scheduler.wait_offer(3, timeout=2)


def test_suppress_stops_offers_until_revive(local: Local) -> None:
    first = local.scheduler.wait_offer(1)
    assert local.driver.suppressOffers()
    assert local.driver.declineOffer([first.id], {"refuse_seconds": 0})
    time.sleep(0.6)
    assert len(local.scheduler.offers()) == 1
    assert local.driver.reviveOffers()
    local.scheduler.wait_offer(2, timeout=2)


def test_revive_makes_an_offer_round_at_once(local: Local) -> None:
    """As Mesos's allocator does: a REVIVE is followed by an allocation, not by the next tick
    (here an hour away), so a framework that wakes up to launch is not kept waiting."""
    local.driver.stop()
    local.start_driver(None, allocation_interval=3600)
    first = local.scheduler.wait_offer(1)  # the first round runs at start
    assert local.driver.suppressOffers()
    assert local.driver.declineOffer([first.id], {"refuse_seconds": 3600})
    assert local.driver.reviveOffers()
    second = local.scheduler.wait_offer(2, timeout=10)
    assert scalars(second) == scalars(first)


# -- launching -------------------------------------------------------------------------------


def test_launch_reports_each_update_and_acknowledges_it_to_the_executor(local: Local) -> None:
    offer = local.scheduler.wait_offer(1)
    (task_id,) = local.launch(offer, [local.task(offer, 1, 31005)])

    starting = local.scheduler.wait_status(task_id, "TASK_STARTING")
    running = local.scheduler.wait_status(task_id, "TASK_RUNNING")
    assert [s.state for s in local.scheduler.statuses(task_id)] == ["TASK_STARTING", "TASK_RUNNING"]
    for status in (starting, running):
        assert status.uuid
        assert status.source == "SOURCE_EXECUTOR"
        assert status.agent_id.value == local.agent.agent_id
        assert status.executor_id.value == task_id
    assert data(running) == {"port": 31005}

    # each acknowledgement reached the executor, in order
    local.wait_executor_event(task_id, lambda e: e.get("uuid") == running.uuid)
    acked = [e["uuid"] for e in local.executor_events(task_id) if e["event"] == "acknowledged"]
    assert acked == [starting.uuid, running.uuid]
    launched = [e for e in local.executor_events(task_id) if e["event"] == "launch"]
    assert len(launched) == 1

    # the next offer is the machine less the task and its executor (0.01 cpus, 32 MB)
    before, after = scalars(offer), scalars(local.scheduler.wait_offer(2))
    assert after["cpus"] == pytest.approx(before["cpus"] - 0.5 - EXECUTOR_RESOURCES.cpus)
    assert after["mem"] == pytest.approx(before["mem"] - 64 - EXECUTOR_RESOURCES.mem)
    assert ports(local.scheduler.offers()[1]) == [(31000, 31004), (31006, 32000)]

    sandbox = local.data_dir / "sandboxes" / task_id
    assert (sandbox / "stdout").exists()
    assert int((sandbox / "pid").read_text()) == local.pid(task_id)


def test_invalid_launches_are_refused_as_a_master_would(local: Local) -> None:
    first = local.scheduler.wait_offer(1)
    assert local.driver.declineOffer([first.id], {"refuse_seconds": 0})
    (stale,) = local.launch(first, [local.task(first, 1, 31001)])
    nowhere = Dict(first, id={"value": "no-such-offer"})
    (unknown,) = local.launch(nowhere, [local.task(first, 2, 31002)])
    for task_id in (stale, unknown):
        status = local.scheduler.wait_status(task_id, "TASK_DROPPED")  # PARTITION_AWARE
        assert status.reason == "REASON_INVALID_OFFERS"
        assert status.source == "SOURCE_MASTER"
        assert not status.uuid

    offer = local.scheduler.wait_offer(2)
    cpus = float(os.cpu_count() or 1)
    greedy, off_range, good = local.launch(
        offer,
        [
            local.task(offer, 3, 31003, cpus=cpus + 1),
            local.task(offer, 4, 40000),
            local.task(offer, 5, 31005),
        ],
    )
    for task_id in (greedy, off_range):
        status = local.scheduler.wait_status(task_id, "TASK_ERROR")
        assert status.reason == "REASON_TASK_INVALID"
        assert "more resources" in status.message
    local.scheduler.wait_status(good, "TASK_RUNNING")  # the valid task of the same ACCEPT runs
    assert not (local.data_dir / "sandboxes" / greedy).exists()

    (used,) = local.launch(offer, [local.task(offer, 6, 31006)])  # the offer was used
    assert local.scheduler.wait_status(used, "TASK_DROPPED").reason == "REASON_INVALID_OFFERS"


def test_frameworks_that_are_not_partition_aware_hear_task_lost(tmp_path: Path) -> None:
    framework = {**FRAMEWORK, "capabilities": [{"type": "TASK_KILLING_STATE"}]}
    mode = Local(tmp_path / "local", framework=framework)
    try:
        offer = mode.scheduler.wait_offer(1)
        assert mode.driver.declineOffer([offer.id], {"refuse_seconds": 0})
        (stale,) = mode.launch(offer, [mode.task(offer, 1, 31001)])
        assert mode.scheduler.wait_status(stale, "TASK_LOST").reason == "REASON_INVALID_OFFERS"
        assert mode.driver.reconcileTasks([{"task_id": {"value": "nobody"}}])
        assert mode.scheduler.wait_status("nobody", "TASK_LOST").reason == "REASON_RECONCILIATION"
    finally:
        mode.close()


# -- killing and dying -----------------------------------------------------------------------


def test_kill_goes_through_killing_to_killed(local: Local) -> None:
    offer = local.scheduler.wait_offer(1)
    (task_id,) = local.launch(offer, [local.task(offer, 1, 31001)])
    local.scheduler.wait_status(task_id, "TASK_RUNNING")
    pid = local.pid(task_id)

    assert local.driver.killTask({"value": task_id}, offer.agent_id, grace_seconds=7)
    local.scheduler.wait_status(task_id, "TASK_KILLED")
    states = [s.state for s in local.scheduler.statuses(task_id)]
    assert states == ["TASK_STARTING", "TASK_RUNNING", "TASK_KILLING", "TASK_KILLED"]
    kill = local.wait_executor_event(task_id, lambda e: e["event"] == "kill")
    assert kill["grace_ns"] == 7_000_000_000

    (_, agent_id, wait_status) = local.scheduler.wait(
        "executorLost", lambda e, a, s: e.value == task_id
    )
    assert agent_id.value == local.agent.agent_id
    assert wait_status == 0
    _wait_dead(pid)

    # its resources come back: once the outstanding offer is declined, the whole machine
    outstanding = local.scheduler.wait_offer(2)
    assert local.driver.declineOffer([outstanding.id], {"refuse_seconds": 0})
    assert scalars(local.scheduler.wait_offer(3)) == scalars(offer)


@pytest.mark.parametrize(
    ("mode", "source", "reason", "message", "wait_status"),
    [
        ("sigkill", "SOURCE_AGENT", "REASON_EXECUTOR_TERMINATED", "signal 9", signal.SIGKILL),
        ("crash", "SOURCE_AGENT", "REASON_EXECUTOR_TERMINATED", "status 3", 3 << 8),
        ("fail", "SOURCE_EXECUTOR", None, "told to fail", 3 << 8),
    ],
)
def test_a_dead_executor_fails_its_task(
    local: Local, mode: str, source: str, reason: str | None, message: str, wait_status: int
) -> None:
    offer = local.scheduler.wait_offer(1)
    executor_mode = "run" if mode == "sigkill" else mode
    (task_id,) = local.launch(offer, [local.task(offer, 1, 31001, mode=executor_mode)])
    if mode == "sigkill":
        local.scheduler.wait_status(task_id, "TASK_RUNNING")
        os.kill(local.pid(task_id), signal.SIGKILL)

    failed = local.scheduler.wait_status(task_id, "TASK_FAILED")
    assert failed.source == source
    assert (failed.reason or None) == reason
    assert message in failed.message
    assert failed.uuid  # reliable, like every agent and executor update
    local.scheduler.wait("executorLost", lambda e, a, s: e.value == task_id and s == wait_status)
    time.sleep(0.3)
    assert [s.state for s in local.scheduler.statuses(task_id)].count("TASK_FAILED") == 1


# -- reconciliation --------------------------------------------------------------------------


def test_reconciliation_answers_explicit_and_implicit(local: Local) -> None:
    offer = local.scheduler.wait_offer(1)
    alive, killed = local.launch(offer, [local.task(offer, 1, 31001), local.task(offer, 2, 31002)])
    local.scheduler.wait_status(alive, "TASK_RUNNING")
    local.scheduler.wait_status(killed, "TASK_RUNNING")
    assert local.driver.killTask(killed)
    local.scheduler.wait_status(killed, "TASK_KILLED")

    def answers(task_id: str, after: int) -> list[Dict]:
        return [
            s
            for s in local.scheduler.statuses()[after:]
            if s.task_id.value == task_id and s.reason == "REASON_RECONCILIATION"
        ]

    mark = len(local.scheduler.statuses())
    asked = [{"task_id": {"value": t}} for t in (alive, killed, "never-launched")]
    assert local.driver.reconcileTasks(asked)
    local.scheduler.wait_status("never-launched", "TASK_GONE")
    (running,) = answers(alive, mark)
    (ended,) = answers(killed, mark)
    assert running.state == "TASK_RUNNING"
    assert ended.state == "TASK_KILLED"
    assert not running.uuid
    assert running.source == "SOURCE_MASTER"
    assert running.agent_id.value == local.agent.agent_id

    mark = len(local.scheduler.statuses())
    assert local.driver.reconcileTasks([])
    local.scheduler.wait("status", lambda s: len(answers(alive, mark)) == 1)
    time.sleep(0.2)
    assert [s.task_id.value for s in local.scheduler.statuses()[mark:]] == [alive]

    assert local.driver.killTask("ghost")
    ghost = local.scheduler.wait_status("ghost", "TASK_GONE")
    assert ghost.reason == "REASON_RECONCILIATION"


# -- restarts --------------------------------------------------------------------------------


def test_restart_adopts_running_executors_and_fails_dead_ones(local: Local) -> None:
    offer = local.scheduler.wait_offer(1)
    survivor, victim = local.launch(
        offer, [local.task(offer, 1, 31001), local.task(offer, 2, 31002)]
    )
    local.scheduler.wait_status(survivor, "TASK_RUNNING")
    local.scheduler.wait_status(victim, "TASK_RUNNING")
    pid, victim_pid = local.pid(survivor), local.pid(victim)
    port, agent_id, framework_id = local.agent.port, local.agent.agent_id, local.framework_id

    old_driver = local.driver
    local.driver.stop()
    local.agent.stop()  # Berth is gone; its executors run on, retrying with backoff
    os.kill(victim_pid, signal.SIGKILL)  # and one of them dies meanwhile
    _wait_dead(victim_pid)
    local.start_agent()
    local.start_driver(framework_id)
    assert local.driver is not old_driver

    assert (local.agent.port, local.agent.agent_id) == (port, agent_id)
    local.scheduler.wait("reregistered")
    assert not [e for e in local.scheduler.events if e[0] == "registered"]

    failed = local.scheduler.wait_status(victim, "TASK_FAILED")
    assert failed.reason == "REASON_EXECUTOR_TERMINATED"
    assert failed.source == "SOURCE_AGENT"

    local.wait_executor_event(survivor, lambda e: e["event"] == "reregistered")
    assert local.agent.executor_pid(survivor) == pid
    assert _alive(pid)
    assert [e["event"] for e in local.executor_events(survivor)].count("launch") == 1
    assert local.driver.reconcileTasks([{"task_id": {"value": survivor}}])
    answer = local.scheduler.wait("status", lambda s: s.task_id.value == survivor)[0]
    assert answer.state == "TASK_RUNNING"
    assert answer.reason == "REASON_RECONCILIATION"

    # the adopted executor is as much this agent's as any: it can be killed
    assert local.driver.killTask(survivor, grace_seconds=1)
    local.scheduler.wait_status(survivor, "TASK_KILLED")
    _wait_dead(pid)


def test_restart_keeps_the_port_agent_id_and_framework(local: Local) -> None:
    local.scheduler.wait_offer(1)
    before = json.loads((local.data_dir / "agent.json").read_text())
    assert before["port"] == local.agent.port
    assert before["framework"]["id"]["value"] == local.framework_id
    local.restart()
    local.scheduler.wait("reregistered")
    local.scheduler.wait_offer(1)  # offers again (the old offer died with the old driver)
    assert json.loads((local.data_dir / "agent.json").read_text()) == before


def test_unacknowledged_updates_are_resent_to_a_new_scheduler(tmp_path: Path) -> None:
    mode = Local(tmp_path / "local", auto_ack=False)
    try:
        offer = mode.scheduler.wait_offer(1)
        (task_id,) = mode.launch(offer, [mode.task(offer, 1, 31001)])
        first = mode.scheduler.wait_status(task_id, "TASK_STARTING")
        time.sleep(0.5)  # RUNNING waits behind the unacknowledged STARTING
        assert [s.state for s in mode.scheduler.statuses(task_id)] == ["TASK_STARTING"]

        framework_id = mode.framework_id
        mode.driver.stop()  # the scheduler fails over; the agent stays
        mode.start_driver(framework_id)
        again = mode.scheduler.wait_status(task_id, "TASK_STARTING")
        assert again.uuid == first.uuid
        mode.scheduler.wait_status(task_id, "TASK_RUNNING")
    finally:
        mode.close()


# -- robustness ------------------------------------------------------------------------------


def test_the_executor_api_answers_only_the_executors_it_started(local: Local) -> None:
    offer = local.scheduler.wait_offer(1)
    (task_id,) = local.launch(offer, [local.task(offer, 1, 31001)])
    local.scheduler.wait_status(task_id, "TASK_RUNNING")
    url = f"http://{local.agent.endpoint}/api/v1/executor"
    ids = {"framework_id": {"value": local.framework_id}, "executor_id": {"value": task_id}}
    finished = {
        "task_id": {"value": task_id},
        "state": "TASK_FINISHED",
        "uuid": "AAAAAAAAAAAAAAAAAAAAAA==",
    }
    for call in (
        {"type": "SUBSCRIBE", "subscribe": {}},
        {"type": "UPDATE", "update": {"status": finished}},
    ):  # without the executor's token: its tasks' config is not for anyone else to hear
        assert requests.post(url, json={**ids, **call}, timeout=5).status_code == 401

    stranger = {**ids, "executor_id": {"value": "stranger"}, "type": "SUBSCRIBE"}
    with requests.post(url, json=stranger, stream=True, timeout=5) as response:
        assert response.status_code == 200
        events = list(Decoder().feed(b"".join(response.iter_content(None))))
    assert [json.loads(e) for e in events] == [{"type": "SHUTDOWN"}]

    assert local.driver.reconcileTasks([{"task_id": {"value": task_id}}])
    answer = local.scheduler.wait("status", lambda s: s.reason == "REASON_RECONCILIATION")[0]
    assert answer.state == "TASK_RUNNING"


def test_an_exception_in_a_callback_does_not_stop_the_driver(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="berth.framework.local_driver")
    mode = Local(tmp_path / "local", explode_on=frozenset({"resourceOffers", "statusUpdate"}))
    try:
        offer = mode.scheduler.wait_offer(1)
        (task_id,) = mode.launch(offer, [mode.task(offer, 1, 31001)])
        mode.scheduler.wait_status(task_id, "TASK_STARTING")
        mode.scheduler.wait_status(task_id, "TASK_RUNNING")  # STARTING's ack went through
        mode.scheduler.wait_offer(2)
        raised = {r.getMessage() for r in caplog.records if "raised; carrying on" in r.getMessage()}
        assert raised == {
            "scheduler callback resourceOffers raised; carrying on",
            "scheduler callback statusUpdate raised; carrying on",
        }
    finally:
        mode.close()
