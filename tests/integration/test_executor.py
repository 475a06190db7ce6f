"""The executor program end to end: `python -m berth.executor` as a real subprocess, subscribed
to the fake agent (tests/support/fake_agent.py) through the MESOS_* environment, running the
busybox test image on the real Docker engine. Tasks are built with the scheduler's own
`build_task_info`; the tests read the status updates exactly as the executor put them on the
wire. Every container of this run carries `berth.framework=<this run>` and is removed after
each test, as is every executor process."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from berth.framework.plan import Launch, Resources
from berth.framework.taskinfo import HealthCheck, Payload, build_task_info, task_env
from tests.support.fake_agent import FRAMEWORK_INFO, FakeAgent
from tests.support.services import free_port

pytestmark = pytest.mark.docker

FRAMEWORK = f"fw-test-{uuid.uuid4().hex[:10]}"
SERVE = 'mkdir -p /tmp/w && echo ok >/tmp/w/index.html && exec httpd -f -p "$PORT" -h /tmp/w'
BASE_KEYS = {"task_id", "state", "source", "message", "uuid", "timestamp", "executor_id"}


def decode(status: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any] | None]:
    """A status's labels as a dict, and its data (base64 JSON) decoded."""
    labels = {x["key"]: x["value"] for x in status.get("labels", {}).get("labels", [])}
    data = json.loads(base64.b64decode(status["data"])) if "data" in status else None
    return labels, data


def check(
    status: dict[str, Any],
    task_id: str,
    state: str,
    *,
    reason: str | None = None,
    healthy: bool | None = None,
) -> tuple[dict[str, str], dict[str, Any] | None]:
    """The fields every update must have, exactly; its labels and data."""
    assert BASE_KEYS <= set(status) <= BASE_KEYS | {"labels", "data", "reason", "healthy"}
    assert status["task_id"] == {"value": task_id}
    assert status["executor_id"] == {"value": task_id}
    assert status["state"] == state, status
    assert status["source"] == "SOURCE_EXECUTOR"
    assert status.get("reason") == reason, status
    assert status.get("healthy") == healthy, status
    assert status["message"]
    base64.b64decode(status["uuid"], validate=True)
    return decode(status)


class Harness:
    """The fake agent, the executor processes and the Docker engine of one test."""

    def __init__(self, agent: FakeAgent, client: docker.DockerClient, image: str, tmp: Path):
        self.agent = agent
        self.client = client
        self.image = image
        self.tmp = tmp
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def task(
        self,
        command: str | None = None,
        *,
        image: str | None = None,
        grace: float = 10.0,
        memory_mb: int = 64,
        health: HealthCheck | None = None,
        **changes: Any,
    ) -> dict[str, Any]:
        """A TaskInfo as the scheduler builds it; `command` runs under `sh -c`."""
        port = free_port()
        payload = Payload(
            app="myapp",
            process="web",
            index=1,
            release=7,
            image=image or self.image,
            command=["sh", "-c", command] if command else None,
            env=task_env({"GREETING": "hi"}, "myapp", "web", 1, 7, port),
            port=port,
            memory_mb=memory_mb,
            cpus=0.5,
            instance="inst-1",
            grace_seconds=grace,
            health=health or HealthCheck("tcp"),
        )
        launch = Launch("o1", "a1", "agent1", "myapp", "web", 1, 7, port, Resources(0.5, 64.0))
        info = build_task_info(launch, FRAMEWORK, payload)
        info.update(changes)
        return info

    def start(self, task: dict[str, Any], **env: str) -> subprocess.Popen[bytes]:
        """A subscribed executor process for this task (its executor id is the task id)."""
        n = len(self.processes) + 1
        sandbox = self.tmp / f"sandbox{n}"
        sandbox.mkdir()
        log = self.tmp / f"executor{n}.log"
        environment = {
            **os.environ,
            "MESOS_AGENT_ENDPOINT": self.agent.address,
            "MESOS_FRAMEWORK_ID": FRAMEWORK,
            "MESOS_EXECUTOR_ID": task["task_id"]["value"],
            "MESOS_DIRECTORY": str(sandbox),
            "MESOS_SANDBOX": str(sandbox),
            "MESOS_CHECKPOINT": "1",
            "MESOS_RECOVERY_TIMEOUT": "5secs",
            "MESOS_SUBSCRIPTION_BACKOFF_MAX": "100ms",
            "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD": "10secs",
            **env,
        }
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "berth.executor"],
                env=environment,
                stdout=out,
                stderr=out,
            )
        self.processes.append(process)
        self.logs.append(log)
        self.agent.wait_accepted(n, timeout=20)
        self.agent.subscribed()
        return process

    def sandbox(self, n: int = 1) -> Path:
        return self.tmp / f"sandbox{n}"

    def launch(self, task: dict[str, Any]) -> None:
        self.agent.send(
            {"type": "LAUNCH", "launch": {"framework_info": FRAMEWORK_INFO, "task": task}}
        )

    def kill(self, task: dict[str, Any], grace: float | None = None) -> None:
        kill: dict[str, Any] = {"task_id": task["task_id"]}
        if grace is not None:
            kill["kill_policy"] = {"grace_period": {"nanoseconds": int(grace * 1e9)}}
        self.agent.send({"type": "KILL", "kill": kill})

    def statuses(self) -> list[dict[str, Any]]:
        return [c["update"]["status"] for c in list(self.agent.calls) if c["type"] == "UPDATE"]

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            statuses = self.statuses()
            if predicate(statuses):
                return statuses
            time.sleep(0.05)
        raise AssertionError(f"no {what} within {timeout} s: {self.states()}\n{self.log_tail()}")

    def wait_state(self, state: str, timeout: float = 20.0, after: int = 0) -> dict[str, Any]:
        """The first update in `state` among those from the `after`-th on."""
        statuses = self.wait_for(
            lambda s: any(x["state"] == state for x in s[after:]), state, timeout
        )
        return next(x for x in statuses[after:] if x["state"] == state)

    def states(self) -> list[str]:
        return [s["state"] for s in self.statuses()]

    def containers(self, task: dict[str, Any]) -> list[Any]:
        label = f"berth.task={task['task_id']['value']}"
        return list(self.client.containers.list(all=True, filters={"label": label}))

    def exits(self, process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"executor still running\n{self.log_tail()}") from None

    def log_tail(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in self.logs if p.exists())

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        for container in self.client.containers.list(
            all=True, filters={"label": f"berth.framework={FRAMEWORK}"}
        ):
            container.remove(force=True)


@pytest.fixture
def harness(
    docker_client: docker.DockerClient, test_image: str, tmp_path: Path
) -> Iterator[Harness]:
    agent = FakeAgent()
    h = Harness(agent, docker_client, test_image, tmp_path)
    try:
        yield h
    finally:
        h.close()
        agent.stop()


def get(port: int) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}/", timeout=5)


def test_web_task_is_starting_then_running_healthy_with_its_port_and_container(
    harness: Harness,
) -> None:
    task = harness.task(SERVE)
    tid, port = task["task_id"]["value"], json.loads(base64.b64decode(task["data"]))["port"]
    harness.start(task)
    harness.launch(task)
    running = harness.wait_state("TASK_RUNNING")
    starting, running_again = harness.statuses()[:2]
    assert running_again == running
    labels, data = check(starting, tid, "TASK_STARTING")
    assert labels == {"berth.port": str(port)}
    assert data is None
    labels, data = check(running, tid, "TASK_RUNNING", healthy=True)
    (container,) = harness.containers(task)
    assert labels == {"berth.port": str(port), "berth.container": container.id}
    assert data == {"port": port, "container": container.id, "healthy": True, "adopted": False}
    assert get(port).text == "ok\n"
    # what the container got: the payload's labels plus the executor's, the limits, a name
    # that is never mesos-*
    assert container.name == f"berth-{tid}"
    assert container.labels == {
        "berth.app": "myapp",
        "berth.process": "web",
        "berth.release": "7",
        "berth.instance": "inst-1",
        "berth.task": tid,
        "berth.executor": tid,
        "berth.framework": FRAMEWORK,
    }
    host = container.attrs["HostConfig"]
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["CpuShares"] == 512  # a weight by default (BERTH_EXECUTOR_CPU_QUOTA=0)
    assert not host["NanoCpus"]
    assert "GREETING=hi" in container.attrs["Config"]["Env"]


def test_tcp_check_waits_for_the_server_not_for_docker_proxy(harness: Harness) -> None:
    """docker-proxy accepts on the host port before anything listens in the container: the
    executor must not take that for a healthy task."""
    task = harness.task(f"sleep 2; {SERVE}")
    port = json.loads(base64.b64decode(task["data"]))["port"]
    harness.start(task)
    harness.launch(task)
    running = harness.wait_state("TASK_RUNNING")
    starting = harness.statuses()[0]
    assert running["timestamp"] - starting["timestamp"] >= 1.5
    assert get(port).text == "ok\n"


def test_nonzero_exit_is_failed_with_the_exit_code(harness: Harness) -> None:
    task = harness.task("exit 3", health=HealthCheck("none"))
    tid = task["task_id"]["value"]
    process = harness.start(task)
    harness.launch(task)
    failed = harness.wait_state("TASK_FAILED")
    labels, data = check(failed, tid, "TASK_FAILED", reason="REASON_COMMAND_EXECUTOR_FAILED")
    assert failed["message"] == "exited with code 3"
    assert data is not None
    assert (data["exit_code"], data["oom"]) == (3, False)
    assert labels["berth.container"] == data["container"]
    assert harness.exits(process) == 0
    assert harness.containers(task) == []
    assert harness.states()[0] == "TASK_STARTING"
    assert harness.states()[-1] == "TASK_FAILED"


def test_exit_zero_is_finished_and_output_lands_in_the_sandbox_bounded(
    harness: Harness,
) -> None:
    task = harness.task(
        "echo to-stderr >&2; yes 0123456789abcdef0123456789abcdef0123456789abcdef"
        " | head -n 200; echo last-line",
        health=HealthCheck("none"),
    )
    tid = task["task_id"]["value"]
    process = harness.start(task, BERTH_EXECUTOR_LOG_MAX_BYTES="4096")
    harness.launch(task)
    finished = harness.wait_state("TASK_FINISHED")
    _, data = check(finished, tid, "TASK_FINISHED")
    assert finished["message"] == "exited with code 0"
    assert data is not None
    assert (data["exit_code"], data["oom"]) == (0, False)
    assert harness.exits(process) == 0
    sandbox = harness.sandbox()
    assert (sandbox / "stderr").read_bytes() == b"to-stderr\n"
    stdout, older = (sandbox / "stdout").read_bytes(), (sandbox / "stdout.1").read_bytes()
    assert stdout.endswith(b"\nlast-line\n")
    assert 0 < len(stdout) <= 4096
    assert 0 < len(older) <= 4096
    assert set(older.splitlines()) == {b"0123456789abcdef" * 3}
    assert harness.containers(task) == []


def test_out_of_memory_is_failed_with_the_memory_reason(harness: Harness) -> None:
    task = harness.task(
        "a=$(yes | head -c 200000000); echo survived", memory_mb=16, health=HealthCheck("none")
    )
    tid = task["task_id"]["value"]
    harness.start(task)
    harness.launch(task)
    failed = harness.wait_state("TASK_FAILED", timeout=30)
    _, data = check(failed, tid, "TASK_FAILED", reason="REASON_CONTAINER_LIMITATION_MEMORY")
    assert failed["message"] == "out of memory (limit 16 MB)"
    assert data is not None
    assert data["oom"] is True
    assert data["exit_code"] != 0


def test_kill_is_killing_then_killed_within_the_grace_and_removes_the_container(
    harness: Harness,
) -> None:
    task = harness.task(SERVE, grace=10.0)
    tid = task["task_id"]["value"]
    process = harness.start(task)
    harness.launch(task)
    harness.wait_state("TASK_RUNNING")
    begun = time.monotonic()
    harness.kill(task)
    killing = harness.wait_state("TASK_KILLING")
    killed = harness.wait_state("TASK_KILLED", timeout=10)
    assert time.monotonic() - begun < 10.0
    check(killing, tid, "TASK_KILLING")
    _, data = check(killed, tid, "TASK_KILLED")
    assert killed["message"] == "killed on request (exit code 143)"
    assert data is not None
    assert data["exit_code"] == 128 + signal.SIGTERM  # SIGTERM was enough
    assert harness.states() == ["TASK_STARTING", "TASK_RUNNING", "TASK_KILLING", "TASK_KILLED"]
    assert harness.containers(task) == []
    assert harness.exits(process) == 0


def test_a_process_ignoring_sigterm_is_sigkilled_after_the_kill_policy_grace(
    harness: Harness,
) -> None:
    task = harness.task(
        "trap '' TERM; while true; do sleep 1; done", grace=30.0, health=HealthCheck("none")
    )
    tid = task["task_id"]["value"]
    harness.start(task)
    harness.launch(task)
    harness.wait_state("TASK_RUNNING")
    begun = time.monotonic()
    harness.kill(task, grace=1.0)  # the KILL's policy overrides the TaskInfo's 30 s
    killed = harness.wait_state("TASK_KILLED", timeout=15)
    took = time.monotonic() - begun
    assert 0.9 <= took < 8.0
    _, data = check(killed, tid, "TASK_KILLED")
    assert data is not None
    assert data["exit_code"] == 128 + signal.SIGKILL
    assert harness.containers(task) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (base64.b64encode(b"not json").decode(), "bad payload in TaskInfo.data"),
        (None, "TaskInfo.data carries no Berth payload"),
        ("memory_mb=1", "below Docker's 6 MiB"),
    ],
)
def test_a_bad_payload_is_task_error(harness: Harness, data: str | None, message: str) -> None:
    task = harness.task(SERVE)
    if data is None:
        del task["data"]
    elif data == "memory_mb=1":
        payload = json.loads(base64.b64decode(task["data"]))
        payload["memory_mb"] = 1
        task["data"] = base64.b64encode(json.dumps(payload).encode()).decode()
    else:
        task["data"] = data
    tid = task["task_id"]["value"]
    process = harness.start(task)
    harness.launch(task)
    error = harness.wait_state("TASK_ERROR")
    check(error, tid, "TASK_ERROR", reason="REASON_TASK_INVALID")
    assert message in error["message"]
    assert harness.exits(process) == 0
    assert harness.states() == ["TASK_ERROR"]
    assert harness.containers(task) == []


def test_a_missing_image_fails_the_launch(harness: Harness) -> None:
    task = harness.task(SERVE, image="berth-test/not-here:0")
    tid = task["task_id"]["value"]
    process = harness.start(task)
    harness.launch(task)
    failed = harness.wait_state("TASK_FAILED")
    check(failed, tid, "TASK_FAILED", reason="REASON_CONTAINER_LAUNCH_FAILED")
    assert "is not on this Docker engine" in failed["message"]
    assert harness.exits(process) == 0
    assert harness.states() == ["TASK_STARTING", "TASK_FAILED"]


def test_a_restarted_executor_adopts_the_running_container(harness: Harness) -> None:
    task = harness.task(SERVE)
    tid, port = task["task_id"]["value"], json.loads(base64.b64decode(task["data"]))["port"]
    first = harness.start(task)
    harness.launch(task)
    labels, _ = decode(harness.wait_state("TASK_RUNNING"))
    container_id = labels["berth.container"]
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert get(port).text == "ok\n"  # the container outlives its executor…
    seen = len(harness.statuses())
    harness.start(task)  # …until the agent starts the executor again for the task
    harness.launch(task)
    running = harness.wait_state("TASK_RUNNING", after=seen)
    labels, data = check(running, tid, "TASK_RUNNING", healthy=True)
    assert labels["berth.container"] == container_id
    assert data == {"port": port, "container": container_id, "healthy": True, "adopted": True}
    assert [c.id for c in harness.containers(task)] == [container_id]
    assert get(port).text == "ok\n"
    harness.kill(task)
    harness.wait_state("TASK_KILLED", after=seen)
    assert harness.containers(task) == []


def test_health_checks_report_unhealthy_then_healthy_again(harness: Harness) -> None:
    serve = 'httpd -f -p "$PORT" -h /tmp/w'
    task = harness.task(
        f"mkdir -p /tmp/w && echo ok >/tmp/w/index.html && {serve} & p=$!; sleep 3; kill $p;"
        f" sleep 3; exec {serve}",
        health=HealthCheck("http", "/index.html"),
    )
    tid = task["task_id"]["value"]
    harness.start(task, BERTH_EXECUTOR_HEALTH_INTERVAL="0.3", BERTH_EXECUTOR_HEALTH_FAILURES="2")
    harness.launch(task)

    def running(statuses: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [s for s in statuses if s["state"] == "TASK_RUNNING"]

    harness.wait_for(lambda s: len(running(s)) >= 3, "healthy, unhealthy, healthy", 20)
    up, down, again = running(harness.statuses())[:3]
    check(up, tid, "TASK_RUNNING", healthy=True)
    reason = "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED"
    _, data = check(down, tid, "TASK_RUNNING", healthy=False, reason=reason)
    assert data is not None
    assert data["healthy"] is False
    assert "2 health checks failed" in down["message"]
    check(again, tid, "TASK_RUNNING", healthy=True, reason=reason)


@pytest.mark.parametrize("how", ["agent SHUTDOWN", "SIGTERM"])
def test_shutdown_kills_reports_and_removes_the_container(harness: Harness, how: str) -> None:
    task = harness.task(SERVE, grace=30.0)
    tid = task["task_id"]["value"]
    process = harness.start(task)
    harness.launch(task)
    harness.wait_state("TASK_RUNNING")
    begun = time.monotonic()
    if how == "SIGTERM":
        process.send_signal(signal.SIGTERM)
    else:
        harness.agent.send({"type": "SHUTDOWN"})
    killed = harness.wait_state("TASK_KILLED", timeout=15)
    assert harness.exits(process) == 0
    assert time.monotonic() - begun < 10.0  # MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD
    check(killed, tid, "TASK_KILLED")
    assert killed["message"].startswith("killed: the executor was shut down")
    assert harness.states() == ["TASK_STARTING", "TASK_RUNNING", "TASK_KILLING", "TASK_KILLED"]
    assert harness.containers(task) == []
