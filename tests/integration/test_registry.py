"""Artifacts every agent can run, end to end with real parts (docs/architecture.md "Artifacts"):
an image built on the first Docker engine (A, the API's) is pushed by `api/artifacts.py`'s
Publisher to Berth's registry (`berth registry`: Debian's docker-registry, htpasswd auth, a
generated password), and the real executor (`python -m berth.executor`, subscribed to the fake
agent) runs it on a second Docker engine (B, its own dockerd, standing in for an agent on
another host) that has never seen it: it pulls the pinned reference with the credentials the
TaskInfo carries, and the container serves the image's own file. A wrong password is a
TASK_FAILED that says why; nothing is left on B."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from berth.api.artifacts import Publisher
from berth.buildpacks.dockerfile import BuildError, Built
from berth.executor.containers import Containers, PullFailed
from berth.executor.engine import Engine
from berth.framework import http1
from berth.framework.model import Artifact
from berth.framework.plan import Launch, Resources
from berth.framework.registry import Credentials, load_or_create_credentials
from berth.framework.taskinfo import HealthCheck, Payload, build_task_info, task_env
from tests.conftest import need
from tests.support.fake_agent import FRAMEWORK_INFO, FakeAgent
from tests.support.registry import (
    Registry,
    SecondEngine,
    registry_available,
    second_engine_available,
)
from tests.support.services import free_port
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]

FRAMEWORK = f"fw-registry-{uuid.uuid4().hex[:10]}"
SERVE_MARKER = (
    'mkdir -p /tmp/w && cp /marker /tmp/w/index.html && exec httpd -f -p "$PORT" -h /tmp/w'
)


@pytest.fixture(scope="module")
def engine_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecondEngine]:
    need(second_engine_available(), "root with dockerd and ip (a second Docker engine)")
    # a short path: the socket's path must fit in sun_path
    engine = SecondEngine(Path(f"/tmp/berth-engine-b-{uuid.uuid4().hex[:8]}"))
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def berth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    need(
        registry_available(), "docker-registry and htpasswd (Debian docker-registry, apache2-utils)"
    )
    registry = Registry(tmp_path_factory.mktemp("registry") / "data")
    try:
        registry.start()
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def pushed(
    docker_client: docker.DockerClient,
    test_image: str,
    berth_registry: Registry,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Artifact, str]]:
    """An app image built on engine A with a file only it has, pushed as a build would be;
    the artifact and that file's text."""
    marker = f"built-on-a {uuid.uuid4().hex}\n"
    context = tmp_path_factory.mktemp("context")
    (context / "marker").write_text(marker)
    (context / "Dockerfile").write_text(f"FROM {test_image}\nCOPY marker /marker\n")
    app = f"reg-{uuid.uuid4().hex[:8]}"
    tag = f"berth/app-{app}:{uuid.uuid4().hex[:12]}"
    image, _ = docker_client.images.build(
        path=str(context), tag=tag, pull=False, rm=True, labels={"berth.app": app}
    )
    lines: list[str] = []
    publisher = Publisher(
        berth_registry.address, load_or_create_credentials(berth_registry.data_dir)
    )
    artifact = publisher.publish(
        Built(image=tag, image_id=str(image.id), process_types={"web": ""}), lines.append
    )
    try:
        assert lines[0] == f"-----> Pushing to {berth_registry.address}"
        assert lines[-1].startswith(f"       Pushed {berth_registry.address}/")
        yield artifact, marker
    finally:
        for name in (tag, artifact.ref):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(name, force=True)


def test_the_push_names_the_registry_reference_pinned_by_digest(
    pushed: tuple[Artifact, str], berth_registry: Registry
) -> None:
    artifact, _ = pushed
    repository, _, tag = artifact.ref.rpartition(":")
    assert repository.startswith(f"{berth_registry.address}/berth/app-reg-")
    assert artifact.digest is not None
    assert artifact.digest.startswith("sha256:")
    assert artifact.image == f"{repository}@{artifact.digest}"
    # the registry serves that manifest, to its user only
    path = repository.removeprefix(berth_registry.address)
    url = f"http://{berth_registry.address}/v2{path}/manifests/{tag}"
    accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    assert requests.get(url, headers=accept, timeout=10).status_code == 401
    creds = load_or_create_credentials(berth_registry.data_dir)
    wrong = requests.get(url, headers=accept, auth=("berth", "not-it"), timeout=10)
    assert wrong.status_code == 401
    right = requests.get(url, headers=accept, auth=(creds.username, creds.password), timeout=10)
    assert right.status_code == 200
    assert right.headers["Docker-Content-Digest"] == artifact.digest
    # the generated files: a random password, private files, no default
    folder = berth_registry.data_dir / "registry"
    assert len(creds.password) == 32
    for name in ("credentials.json", "htpasswd", "config.yml"):
        assert (folder / name).stat().st_mode & 0o777 == 0o600, name
    assert creds.password not in (folder / "htpasswd").read_text()


def test_a_push_with_a_wrong_password_fails_the_build(
    docker_client: docker.DockerClient, test_image: str, berth_registry: Registry
) -> None:
    publisher = Publisher(berth_registry.address, Credentials("berth", "wrong-password"))
    image = docker_client.images.get(test_image)
    with pytest.raises(BuildError) as caught:
        publisher.publish(
            Built(image="berth/app-nopush:000000000000", image_id=str(image.id)), lambda _: None
        )
    assert f"the push to {berth_registry.address} failed" in caught.value.message
    assert "credentials" in caught.value.message
    docker_client.images.remove(f"{berth_registry.address}/berth/app-nopush:000000000000")


class Executor:
    """The real executor program on engine B, subscribed to the fake agent."""

    def __init__(self, agent: FakeAgent, engine: SecondEngine, tmp: Path) -> None:
        self.agent = agent
        self.engine = engine
        self.tmp = tmp
        self.processes: list[subprocess.Popen[bytes]] = []

    def task(self, image: str, user: str, password: str) -> dict[str, Any]:
        port = free_port()
        payload = Payload(
            app="regapp",
            process="web",
            index=1,
            release=3,
            image=image,
            command=["sh", "-c", SERVE_MARKER],
            env=task_env({}, "regapp", "web", 1, 3, port),
            port=port,
            memory_mb=64,
            cpus=0.5,
            instance="inst-registry",
            grace_seconds=5.0,
            health=HealthCheck("tcp", startup=30.0),
            registry_user=user,
            registry_password=password,
        )
        launch = Launch("o1", "a1", "agent1", "regapp", "web", 1, 3, port, Resources(0.5, 64.0))
        return build_task_info(launch, FRAMEWORK, payload)

    def run(self, task: dict[str, Any]) -> None:
        sandbox = self.tmp / f"sandbox{len(self.processes) + 1}"
        sandbox.mkdir()
        env = {
            **os.environ,
            "DOCKER_HOST": self.engine.host,  # the agent's own engine: B
            "MESOS_AGENT_ENDPOINT": self.agent.address,
            "MESOS_FRAMEWORK_ID": FRAMEWORK,
            "MESOS_EXECUTOR_ID": task["task_id"]["value"],
            "MESOS_DIRECTORY": str(sandbox),
            "MESOS_SANDBOX": str(sandbox),
            "MESOS_CHECKPOINT": "1",
            "MESOS_RECOVERY_TIMEOUT": "5secs",
            "MESOS_SUBSCRIPTION_BACKOFF_MAX": "100ms",
            "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD": "10secs",
        }
        with (sandbox / "executor.log").open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "berth.executor"], env=env, stdout=out, stderr=out
            )
        self.processes.append(process)
        self.agent.wait_accepted(len(self.processes), timeout=20)
        self.agent.subscribed()
        self.agent.send(
            {"type": "LAUNCH", "launch": {"framework_info": FRAMEWORK_INFO, "task": task}}
        )

    def statuses(self) -> list[dict[str, Any]]:
        return [c["update"]["status"] for c in list(self.agent.calls) if c["type"] == "UPDATE"]

    def state(self, state: str, timeout: float = 90.0) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            lambda: next((s for s in self.statuses() if s["state"] == state), None), timeout
        )
        return found

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.fixture
def executor(engine_b: SecondEngine, tmp_path: Path) -> Iterator[Executor]:
    agent = FakeAgent()
    runner = Executor(agent, engine_b, tmp_path)
    try:
        yield runner
    finally:
        runner.close()
        agent.stop()
        client = engine_b.client()
        for container in client.containers.list(all=True):
            container.remove(force=True)
        for image in client.images.list():
            client.images.remove(image.id, force=True)
        client.close()


def test_an_agent_without_the_image_pulls_it_and_runs_it(
    executor: Executor,
    engine_b: SecondEngine,
    pushed: tuple[Artifact, str],
    berth_registry: Registry,
    docker_client: docker.DockerClient,
) -> None:
    artifact, marker = pushed
    client = engine_b.client()
    assert client.images.list() == []  # B has never seen it
    creds = load_or_create_credentials(berth_registry.data_dir)
    task = executor.task(artifact.image, creds.username, creds.password)
    executor.run(task)
    running = executor.state("TASK_RUNNING")
    assert running.get("healthy") is True
    data = json.loads(base64.b64decode(running["data"]))
    # the container runs on engine B, from the pulled image, and serves A's file
    container = client.containers.get(data["container"])
    assert container.attrs["Config"]["Image"] == artifact.image
    pulled = client.images.get(artifact.image)
    assert container.attrs["Image"] == pulled.id
    assert f"{artifact.image}" in pulled.attrs["RepoDigests"]
    answer = requests.get(f"http://127.0.0.1:{data['port']}/", timeout=10)
    assert answer.text == marker
    assert not docker_client.containers.list(
        all=True, filters={"label": f"berth.task={task['task_id']['value']}"}
    )  # nothing ran on engine A
    client.close()


def test_a_wrong_registry_password_is_a_clear_task_failure(
    executor: Executor, engine_b: SecondEngine, pushed: tuple[Artifact, str]
) -> None:
    artifact, _ = pushed
    task = executor.task(artifact.image, "berth", "not-the-password")
    executor.run(task)
    failed = executor.state("TASK_FAILED")
    assert failed["reason"] == "REASON_CONTAINER_LAUNCH_FAILED"
    message = failed["message"]
    assert message.startswith(f"container did not start: could not pull {artifact.image}")
    assert "unauthorized" in message or "authentication required" in message
    assert "the registry refused the framework's credentials" in message
    assert [s["state"] for s in executor.statuses()] == ["TASK_STARTING", "TASK_FAILED"]
    client = engine_b.client()
    assert client.containers.list(all=True) == []
    assert client.images.list() == []
    client.close()


def test_ensure_image_pulls_once_and_names_an_unknown_digest(
    engine_b: SecondEngine, pushed: tuple[Artifact, str], berth_registry: Registry
) -> None:
    artifact, _ = pushed
    containers = Containers(Engine(http1.Endpoint.parse(engine_b.host)))
    creds = load_or_create_credentials(berth_registry.data_dir)
    try:
        assert containers.ensure_image(artifact.image, creds.username, creds.password) is True
        assert containers.ensure_image(artifact.image, creds.username, creds.password) is False
        repository = artifact.image.partition("@")[0]
        missing = f"{repository}@sha256:{'0' * 64}"
        with pytest.raises(PullFailed) as caught:
            containers.ensure_image(missing, creds.username, creds.password)
        assert caught.value.message.startswith(f"could not pull {missing}")
        assert "unknown" in caught.value.message or "not found" in caught.value.message
    finally:
        client = engine_b.client()
        for image in client.images.list():
            client.images.remove(image.id, force=True)
        client.close()
