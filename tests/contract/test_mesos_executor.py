"""Contract tests: Berth's Mesos v1 executor driver against an agent that speaks the wire format
from Mesos's documentation. They check the exact JSON the driver sends, that nothing the
executor says is lost while the agent is away, and how it behaves when the agent goes away,
goes silent or asks it to shut down."""

from __future__ import annotations

import base64
import itertools
import queue
import time
from collections.abc import Iterator
from typing import Any

import pytest
from addict import Dict

from berth.executor.driver import (
    AgentEnvironment,
    Executor,
    ExecutorDriver,
    MesosExecutorDriver,
    parse_duration,
)
from tests.support.fake_agent import (
    AGENT_INFO,
    CONTAINER_ID,
    EXECUTOR_INFO,
    FRAMEWORK_INFO,
    FakeAgent,
)

IDS = {"framework_id": {"value": "fw-1"}, "executor_id": {"value": "myapp.web.7.x"}}
TASK = {
    "name": "myapp web.1 v7",
    "task_id": {"value": "myapp.web.7.x"},
    "agent_id": {"value": "a1"},
    "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.5}}],
    "kill_policy": {"grace_period": {"nanoseconds": 30_000_000_000}},
}


class Recorder(Executor):
    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, tuple[Any, ...]]] = queue.Queue()
        self.explode_on: set[str] = set()

    def _record(self, name: str, *args: Any) -> None:
        self.events.put((name, args))
        if name in self.explode_on:
            raise RuntimeError(f"boom in {name}")

    def registered(
        self, driver: ExecutorDriver, executor_info: Dict, framework_info: Dict, agent_info: Dict
    ) -> None:
        self._record("registered", executor_info, framework_info, agent_info)

    def reregistered(self, driver: ExecutorDriver, agent_info: Dict) -> None:
        self._record("reregistered", agent_info)

    def disconnected(self, driver: ExecutorDriver) -> None:
        self._record("disconnected")

    def launchTask(self, driver: ExecutorDriver, task: Dict) -> None:
        self._record("launchTask", task)

    def killTask(self, driver: ExecutorDriver, task_id: Dict, kill_policy: Dict | None) -> None:
        self._record("killTask", task_id, kill_policy)

    def acknowledged(self, driver: ExecutorDriver, task_id: Dict, uuid: str) -> None:
        self._record("acknowledged", task_id, uuid)

    def frameworkMessage(self, driver: ExecutorDriver, message: bytes) -> None:
        self._record("frameworkMessage", message)

    def shutdown(self, driver: ExecutorDriver) -> None:
        self._record("shutdown")

    def error(self, driver: ExecutorDriver, message: str) -> None:
        self._record("error", message)

    def next(self, name: str, timeout: float = 5.0) -> tuple[Any, ...]:
        """The arguments of the next `name` callback, skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            got, args = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if got == name:
                return args

    def names(self) -> list[str]:
        """Every callback recorded so far, in order (drains the queue)."""
        out = []
        while not self.events.empty():
            out.append(self.events.get_nowait()[0])
        return out


def agent_env(agent: FakeAgent, **overrides: str) -> dict[str, str]:
    env = {
        "MESOS_AGENT_ENDPOINT": agent.address,
        "MESOS_FRAMEWORK_ID": "fw-1",
        "MESOS_EXECUTOR_ID": "myapp.web.7.x",
        "MESOS_DIRECTORY": "/var/lib/mesos/slaves/a1/frameworks/fw-1/executors/x/runs/c0ffee",
        "MESOS_SANDBOX": "/mnt/mesos/sandbox",
        "MESOS_CHECKPOINT": "1",
        "MESOS_RECOVERY_TIMEOUT": "5secs",
        "MESOS_SUBSCRIPTION_BACKOFF_MAX": "100ms",
        "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD": "40secs",
    }
    env.update(overrides)
    return env


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    a = FakeAgent()
    yield a
    a.stop()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def driver(agent: FakeAgent, recorder: Recorder) -> Iterator[MesosExecutorDriver]:
    d = MesosExecutorDriver(recorder, agent_env(agent))
    d.start()
    yield d
    d.stop()


def subscribe(agent: FakeAgent, recorder: Recorder, n: int = 1) -> dict[str, Any]:
    """Answer the n-th subscription with SUBSCRIBED; its SUBSCRIBE body."""
    body = agent.wait_accepted(n)
    agent.subscribed()
    recorder.next("registered" if n == 1 else "reregistered")
    return body


def running(task_id: str, **more: Any) -> dict[str, Any]:
    return {"task_id": {"value": task_id}, "state": "TASK_RUNNING", **more}


def test_first_subscribe_is_exact_and_registered_gets_the_infos(
    agent: FakeAgent, recorder: Recorder, driver: MesosExecutorDriver
) -> None:
    body = agent.wait_subscribes(1)
    assert body == {
        "type": "SUBSCRIBE",
        **IDS,
        "subscribe": {"unacknowledged_tasks": [], "unacknowledged_updates": []},
    }
    assert agent.headers[0]["Content-Type"] == "application/json"
    assert agent.headers[0]["Accept"] == "application/json"
    assert "Authorization" not in agent.headers[0]
    agent.subscribed()
    executor_info, framework_info, agent_info = recorder.next("registered")
    assert (executor_info, framework_info, agent_info) == (
        EXECUTOR_INFO,
        FRAMEWORK_INFO,
        AGENT_INFO,
    )
    assert isinstance(agent_info, Dict)
    assert agent_info.hostname == "agent1"
    assert driver.connected
    assert driver.container_id == CONTAINER_ID
    assert driver.environment.sandbox == "/mnt/mesos/sandbox"
    assert driver.environment.shutdown_grace_period == 40.0


def test_launch_kill_and_heartbeat_reach_the_callbacks(
    agent: FakeAgent, recorder: Recorder, driver: MesosExecutorDriver
) -> None:
    subscribe(agent, recorder)
    agent.send({"type": "HEARTBEAT"})
    agent.send({"type": "LAUNCH", "launch": {"framework_info": FRAMEWORK_INFO, "task": TASK}})
    (task,) = recorder.next("launchTask")
    assert task == TASK
    assert task.kill_policy.grace_period.nanoseconds == 30_000_000_000
    policy = {"grace_period": {"nanoseconds": 5_000_000_000}}
    agent.send({"type": "KILL", "kill": {"task_id": TASK["task_id"], "kill_policy": policy}})
    assert recorder.next("killTask") == (TASK["task_id"], policy)
    agent.send({"type": "KILL", "kill": {"task_id": TASK["task_id"]}})
    assert recorder.next("killTask") == (TASK["task_id"], None)
    # task groups are logged and ignored; the stream carries on
    agent.send({"type": "LAUNCH_GROUP", "launch_group": {"task_group": {"tasks": [TASK]}}})
    agent.send({"type": "MESSAGE", "message": {"data": "b2s="}})
    assert recorder.next("frameworkMessage") == (b"ok",)
    assert "launchTask" not in recorder.names()
    assert driver.connected
    assert len(agent.subscribes) == 1


def test_status_update_json_is_exact_with_uuid_timestamp_source_and_executor_id(
    agent: FakeAgent, recorder: Recorder, driver: MesosExecutorDriver
) -> None:
    subscribe(agent, recorder)
    status = running("t1", healthy=True, labels={"labels": [{"key": "port", "value": "31001"}]})
    before = time.time()
    assert driver.sendStatusUpdate(status)
    (call,) = agent.wait_calls(1)
    sent = call["update"]["status"]
    assert base64.b64decode(sent["uuid"], validate=True).__len__() == 16
    assert isinstance(sent["timestamp"], float)
    assert before <= sent["timestamp"] <= time.time()
    assert call == {
        "type": "UPDATE",
        **IDS,
        "update": {
            "status": {
                **status,
                "uuid": sent["uuid"],
                "timestamp": sent["timestamp"],
                "source": "SOURCE_EXECUTOR",
                "executor_id": {"value": "myapp.web.7.x"},
            }
        },
    }
    assert "uuid" not in status  # the caller's status is left alone
    assert agent.headers[-1]["Content-Type"] == "application/json"
    # a second update gets its own uuid; given fields are kept
    assert driver.sendStatusUpdate(running("t1", source="SOURCE_EXECUTOR", timestamp=12.5))
    second = agent.wait_calls(2)[1]["update"]["status"]
    assert second["uuid"] != sent["uuid"]
    assert second["timestamp"] == 12.5
    assert len(driver.unacknowledged_updates) == 2
    with pytest.raises(ValueError, match="task_id and state"):
        driver.sendStatusUpdate({"state": "TASK_RUNNING"})


def test_acknowledged_updates_are_dropped_and_the_rest_resent_after_a_reconnect(
    agent: FakeAgent, recorder: Recorder, driver: MesosExecutorDriver
) -> None:
    subscribe(agent, recorder)
    other = {**TASK, "task_id": {"value": "t2"}, "name": "other"}
    agent.send({"type": "LAUNCH", "launch": {"task": TASK}})
    agent.send({"type": "LAUNCH", "launch": {"task": other}})
    recorder.next("launchTask")
    recorder.next("launchTask")
    assert driver.sendStatusUpdate(running("myapp.web.7.x"))
    assert driver.sendStatusUpdate(running("t2"))
    first, second = (c["update"]["status"] for c in agent.wait_calls(2))
    agent.send(
        {
            "type": "ACKNOWLEDGED",
            "acknowledged": {"task_id": first["task_id"], "uuid": first["uuid"]},
        }
    )
    assert recorder.next("acknowledged") == ({"value": "myapp.web.7.x"}, first["uuid"])
    assert driver.unacknowledged_updates == [second]
    assert driver.unacknowledged_tasks == [other]

    agent.close_stream()
    recorder.next("disconnected")
    body = subscribe(agent, recorder, 2)
    assert body == {
        "type": "SUBSCRIBE",
        **IDS,
        "subscribe": {
            "unacknowledged_tasks": [other],
            "unacknowledged_updates": [{"status": second}],
        },
    }
    assert recorder.names() == []  # no shutdown: checkpointing, back within the timeout


def test_messages_both_ways_are_base64(
    agent: FakeAgent, recorder: Recorder, driver: MesosExecutorDriver
) -> None:
    subscribe(agent, recorder)
    payload = bytes(range(256))
    agent.send({"type": "MESSAGE", "message": {"data": base64.b64encode(payload).decode()}})
    assert recorder.next("frameworkMessage") == (payload,)
    assert driver.sendFrameworkMessage(b"\x00hi\xff")
    assert agent.wait_calls(1) == [
        {"type": "MESSAGE", **IDS, "message": {"data": base64.b64encode(b"\x00hi\xff").decode()}}
    ]


def test_calls_while_the_agent_is_away_are_kept_and_sent_on_resubscribe(
    agent: FakeAgent, recorder: Recorder, driver: MesosExecutorDriver
) -> None:
    subscribe(agent, recorder)
    agent.subscribe_status = 503  # a restarting agent that has not finished recovery
    agent.close_stream()
    recorder.next("disconnected")
    assert not driver.connected
    assert not driver.sendStatusUpdate(running("t1", state="TASK_FINISHED"))
    assert not driver.sendFrameworkMessage(b"while away")
    agent.wait_subscribes(3)  # retried, and refused
    assert agent.calls == []
    agent.subscribe_status = 200
    body = subscribe(agent, recorder, 2)
    (update,) = body["subscribe"]["unacknowledged_updates"]
    assert update["status"]["state"] == "TASK_FINISHED"
    assert update["status"]["source"] == "SOURCE_EXECUTOR"
    # the message waited for the subscription, the update went in SUBSCRIBE itself
    assert agent.wait_calls(1) == [
        {"type": "MESSAGE", **IDS, "message": {"data": base64.b64encode(b"while away").decode()}}
    ]


def test_an_update_the_agent_cannot_take_is_kept_for_the_next_subscribe(
    agent: FakeAgent, recorder: Recorder, driver: MesosExecutorDriver
) -> None:
    subscribe(agent, recorder)
    agent.call_status = 503
    assert not driver.sendStatusUpdate(running("t1"))
    assert len(driver.unacknowledged_updates) == 1
    agent.call_status = 400  # invalid: resending it would only poison SUBSCRIBE
    assert not driver.sendStatusUpdate(running("t2"))
    assert [s.task_id.value for s in driver.unacknowledged_updates] == ["t1"]
    agent.close_stream()
    body = subscribe(agent, recorder, 2)
    assert [
        u["status"]["task_id"]["value"] for u in body["subscribe"]["unacknowledged_updates"]
    ] == ["t1"]


def test_shutdown_event_calls_shutdown_and_stops_the_driver(
    agent: FakeAgent, recorder: Recorder, driver: MesosExecutorDriver
) -> None:
    subscribe(agent, recorder)
    agent.send({"type": "SHUTDOWN"})
    recorder.next("shutdown")
    driver.join(timeout=5)
    assert not driver.running
    assert not driver.connected
    assert recorder.names() == []  # no `disconnected`: we closed the stream ourselves
    assert len(agent.subscribes) == 1


def test_without_checkpointing_a_lost_agent_means_shutdown_at_once(
    agent: FakeAgent, recorder: Recorder
) -> None:
    env = agent_env(agent, MESOS_CHECKPOINT="0")
    del env["MESOS_RECOVERY_TIMEOUT"], env["MESOS_SUBSCRIPTION_BACKOFF_MAX"]
    driver = MesosExecutorDriver(recorder, env)
    assert driver.environment.checkpoint is False  # pymesos reads "0" as true
    driver.start()
    try:
        subscribe(agent, recorder)
        agent.close_stream()
        driver.join(timeout=5)
        assert recorder.names() == ["disconnected", "shutdown"]
        assert len(agent.subscribes) == 1
    finally:
        driver.stop()


def test_with_checkpointing_gives_up_after_the_recovery_timeout(
    agent: FakeAgent, recorder: Recorder
) -> None:
    env = agent_env(agent, MESOS_RECOVERY_TIMEOUT="1secs", MESOS_SUBSCRIPTION_BACKOFF_MAX="200ms")
    driver = MesosExecutorDriver(recorder, env)
    driver.start()
    try:
        subscribe(agent, recorder)
        agent.subscribe_status = 503
        lost = time.monotonic()
        agent.close_stream()
        recorder.next("disconnected")
        recorder.next("shutdown", timeout=5)
        assert 0.9 <= time.monotonic() - lost < 3
        driver.join(timeout=5)
        times = agent.subscribe_times[1:]
        assert len(times) >= 4  # retried all along
        assert max(b - a for a, b in itertools.pairwise(times)) < 0.2 + 0.15
        assert recorder.names() == []  # no reregistered
    finally:
        driver.stop()


def test_a_silent_agent_is_detected_and_resubscribed(agent: FakeAgent, recorder: Recorder) -> None:
    driver = MesosExecutorDriver(recorder, agent_env(agent), read_timeout=0.3)
    driver.start()
    try:
        subscribe(agent, recorder)  # then nothing: no heartbeats
        recorder.next("disconnected")
        subscribe(agent, recorder, 2)
        agent.send({"type": "HEARTBEAT"})
        assert driver.connected
    finally:
        driver.stop()


def test_error_event_reaches_the_callback_and_the_driver_resubscribes(
    agent: FakeAgent, recorder: Recorder, driver: MesosExecutorDriver
) -> None:
    subscribe(agent, recorder)
    agent.send({"type": "ERROR", "error": {"message": "Received invalid call"}})
    assert recorder.next("error") == ("Received invalid call",)
    recorder.next("disconnected")
    subscribe(agent, recorder, 2)


def test_callbacks_that_raise_never_stop_the_driver(
    agent: FakeAgent, recorder: Recorder, driver: MesosExecutorDriver
) -> None:
    recorder.explode_on = {"registered", "launchTask", "killTask", "frameworkMessage"}
    subscribe(agent, recorder)
    agent.send({"type": "LAUNCH", "launch": {"task": TASK}})
    recorder.next("launchTask")
    agent.send({"type": "KILL", "kill": {"task_id": TASK["task_id"]}})
    recorder.next("killTask")
    agent.send({"type": "MESSAGE", "message": {"data": "aGk="}})
    recorder.next("frameworkMessage")
    agent.send({"type": "MESSAGE", "message": {"data": "not base64!"}})  # logged, dropped
    agent.send({"type": "KILL", "kill": {"task_id": TASK["task_id"]}})
    recorder.next("killTask")
    assert driver.connected
    assert len(agent.subscribes) == 1
    assert recorder.names() == []


def test_stop_ends_the_driver_without_callbacks(agent: FakeAgent, recorder: Recorder) -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.e30.sig"
    env = agent_env(agent, MESOS_EXECUTOR_AUTHENTICATION_TOKEN=token)
    driver = MesosExecutorDriver(recorder, env)
    driver.start()
    subscribe(agent, recorder)
    assert agent.headers[0]["Authorization"] == f"Bearer {token}"
    started = time.monotonic()
    driver.stop()
    assert time.monotonic() - started < 2
    assert not driver.running
    assert recorder.names() == []
    assert len(agent.subscribes) == 1


# -- the agent's environment (unit) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15mins", 900.0),
        ("2secs", 2.0),
        ("100ms", 0.1),
        ("1hrs", 3600.0),
        ("1days", 86400.0),
        ("1weeks", 604800.0),
        ("10us", 1e-5),
        ("10ns", 1e-8),
        ("1.5secs", 1.5),
        ("0ns", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "15", "secs", "15 mins", "15m", "-1secs", "1.2.3secs", "15MINS", "infsecs"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="MESOS_RECOVERY_TIMEOUT"):
        parse_duration(text, "MESOS_RECOVERY_TIMEOUT")


BASE = {
    "MESOS_AGENT_ENDPOINT": "10.0.0.5:5051",
    "MESOS_FRAMEWORK_ID": "fw-1",
    "MESOS_EXECUTOR_ID": "e1",
    "MESOS_DIRECTORY": "/var/lib/mesos/run",
    "MESOS_CHECKPOINT": "1",
    "MESOS_RECOVERY_TIMEOUT": "15mins",
    "MESOS_SUBSCRIPTION_BACKOFF_MAX": "2secs",
}


def test_environment_is_read_like_the_agent_writes_it() -> None:
    env = AgentEnvironment.from_env(BASE)
    assert env.url == "http://10.0.0.5:5051/api/v1/executor"
    assert env.checkpoint is True
    assert (env.recovery_timeout, env.subscription_backoff_max) == (900.0, 2.0)
    assert env.sandbox == "/var/lib/mesos/run"  # MESOS_SANDBOX unset: the host sandbox
    assert env.shutdown_grace_period == 5.0  # Mesos's default
    assert env.auth_token is None
    off = AgentEnvironment.from_env({**BASE, "MESOS_CHECKPOINT": "0"})
    assert off.checkpoint is False
    bare = {
        k: v
        for k, v in BASE.items()
        if k.startswith(("MESOS_AGENT", "MESOS_FRAMEWORK", "MESOS_EXECUTOR"))
    }
    assert AgentEnvironment.from_env(bare).recovery_timeout is None
    v6 = AgentEnvironment.from_env({**BASE, "MESOS_AGENT_ENDPOINT": "[::1]:5051"})
    assert v6.url == "http://[::1]:5051/api/v1/executor"


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"MESOS_AGENT_ENDPOINT": None}, "MESOS_AGENT_ENDPOINT"),
        ({"MESOS_AGENT_ENDPOINT": "agent"}, "MESOS_AGENT_ENDPOINT"),
        ({"MESOS_AGENT_ENDPOINT": "agent:http"}, "MESOS_AGENT_ENDPOINT"),
        ({"MESOS_AGENT_ENDPOINT": "agent:5051/x"}, "MESOS_AGENT_ENDPOINT"),
        ({"MESOS_FRAMEWORK_ID": None}, "MESOS_FRAMEWORK_ID"),
        ({"MESOS_EXECUTOR_ID": ""}, "MESOS_EXECUTOR_ID"),
        ({"MESOS_CHECKPOINT": "yes"}, "MESOS_CHECKPOINT"),
        ({"MESOS_RECOVERY_TIMEOUT": None}, "MESOS_RECOVERY_TIMEOUT"),
        ({"MESOS_RECOVERY_TIMEOUT": "15"}, "MESOS_RECOVERY_TIMEOUT"),
        ({"MESOS_SUBSCRIPTION_BACKOFF_MAX": None}, "MESOS_SUBSCRIPTION_BACKOFF_MAX"),
        ({"MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD": "5s"}, "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD"),
    ],
)
def test_environment_errors_name_the_variable(change: dict[str, str | None], variable: str) -> None:
    env = {**BASE, "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD": "5secs"}
    for key, value in change.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value
    with pytest.raises(ValueError, match=variable):
        AgentEnvironment.from_env(env)
    with pytest.raises(ValueError, match=variable):
        MesosExecutorDriver(Executor(), env)
