"""executor/containers.py against the real Docker engine, with the busybox test image
(tests/support/images.py). Every container carries this run's label and is removed after each
test, so `docker ps -a` is left as it was."""

from __future__ import annotations

import itertools
import json
import logging
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import docker
import pytest
import requests

from berth.executor.containers import (
    DEFAULT_USER,
    ContainerError,
    Containers,
    ContainerSpec,
    ImageNotFound,
    InvalidSpec,
    StartFailed,
    Stream,
    WaitTimedOut,
)
from tests.support import images
from tests.support.services import free_port

RUN_LABEL = "berth.test.run"
RUN = uuid.uuid4().hex[:12]
_names = itertools.count()

pytestmark = pytest.mark.docker


@pytest.fixture
def containers(docker_client: docker.DockerClient) -> Iterator[Containers]:
    yield Containers.from_env()
    for container in docker_client.containers.list(
        all=True, filters={"label": f"{RUN_LABEL}={RUN}"}
    ):
        container.remove(force=True)


def spec(image: str, *command: str, **changes: Any) -> ContainerSpec:
    """A small container of this test run; `command` runs under `sh -c`."""
    base = ContainerSpec(
        name=f"berth-test-{RUN}-{next(_names)}",
        image=image,
        command=["sh", "-c", *command] if command else None,
        labels={RUN_LABEL: RUN},
        memory_bytes=64 * 1024 * 1024,
        cpus=0.5,
    )
    return replace(base, **changes)


def inspect(client: docker.DockerClient, container_id: str) -> dict[str, Any]:
    attrs: dict[str, Any] = client.api.inspect_container(container_id)
    return attrs


def output(containers: Containers, container_id: str) -> dict[Stream, bytes]:
    out: dict[Stream, bytes] = {"stdout": b"", "stderr": b""}
    for stream, line in containers.logs(container_id):
        out[stream] += line
    return out


def first_line(containers: Containers, container_id: str, timeout: float = 10.0) -> bytes:
    """The first line the container prints, read while it runs."""
    lines: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        for _, line in containers.logs(container_id):
            lines.put(line)
            return

    threading.Thread(target=read, daemon=True).start()
    return lines.get(timeout=timeout)


def test_serves_http_on_the_offered_port(containers: Containers, test_image: str) -> None:
    port = free_port()
    container_id = containers.run(spec(test_image, port=port))
    deadline = time.monotonic() + 10
    while True:
        try:
            reply = requests.get(f"http://127.0.0.1:{port}/", timeout=2)
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert reply.status_code == 200
    assert reply.text == "ok\n"
    assert containers.is_running(container_id)


def test_a_cpu_quota_caps_the_container_when_asked(
    containers: Containers, docker_client: docker.DockerClient, test_image: str
) -> None:
    container_id = containers.run(spec(test_image, "true", cpu_quota=True))
    containers.wait(container_id)
    host = inspect(docker_client, container_id)["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["CpuShares"] == 512


def test_container_is_hardened(
    containers: Containers, docker_client: docker.DockerClient, test_image: str
) -> None:
    port = free_port()
    container_id = containers.run(
        spec(
            test_image,
            "id -u; id -g; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; echo $PORT",
            port=port,
            env={"PORT": "1", "GREETING": "hi"},
        )
    )
    assert containers.wait(container_id).code == 0
    assert output(containers, container_id)["stdout"].split() == [
        b"10000",
        b"10000",
        b"CapEff:",
        b"0000000000000000",
        b"NoNewPrivs:",
        b"1",
        str(port).encode(),
    ]
    attrs = inspect(docker_client, container_id)
    host = attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["PidsLimit"] == 256
    assert host["Memory"] == host["MemorySwap"] == 64 * 1024 * 1024
    assert host["CpuShares"] == 512  # cpus 0.5 is a weight: idle CPU may be used
    assert not host["NanoCpus"]
    assert host["Privileged"] is False
    assert host["RestartPolicy"]["Name"] == "no"
    assert not host["Binds"]
    assert not host.get("Mounts")
    assert not attrs["Mounts"]
    assert "docker.sock" not in json.dumps(attrs)
    every_address = "0.0.0.0"  # noqa: S104 - what ContainerSpec publishes on by default
    assert host["PortBindings"] == {
        f"{port}/tcp": [{"HostIp": every_address, "HostPort": str(port)}]
    }
    assert attrs["Config"]["User"] == "10000:10000"
    assert f"PORT={port}" in attrs["Config"]["Env"]
    assert "GREETING=hi" in attrs["Config"]["Env"]


def test_root_image_runs_as_the_default_user(
    containers: Containers, docker_client: docker.DockerClient
) -> None:
    image = images.ensure_test_image(docker_client, "berth-test/busybox:1-root", user="root")
    container_id = containers.run(spec(image, "id -u"))
    assert containers.wait(container_id).code == 0
    assert output(containers, container_id)["stdout"] == b"10000\n"
    assert inspect(docker_client, container_id)["Config"]["User"] == DEFAULT_USER


def test_explicit_user(containers: Containers, test_image: str) -> None:
    container_id = containers.run(spec(test_image, "id -u; id -g", user="4242:4343"))
    containers.wait(container_id)
    assert output(containers, container_id)["stdout"] == b"4242\n4343\n"


def test_specs_berth_must_not_run_are_refused(test_image: str) -> None:
    with pytest.raises(InvalidSpec, match="mesos-"):
        spec(test_image, name="mesos-1234-abcd")
    with pytest.raises(InvalidSpec, match="mesos-"):
        spec(test_image, name="MESOS-x")
    for user in ("root", "0", "0:0", "root:app"):
        with pytest.raises(InvalidSpec, match="root"):
            spec(test_image, user=user)
    with pytest.raises(InvalidSpec, match="6 MiB"):
        spec(test_image, memory_bytes=1024)
    with pytest.raises(InvalidSpec, match="pids"):
        spec(test_image, pids_limit=0)
    with pytest.raises(InvalidSpec, match="port"):
        spec(test_image, port=70000)


def test_exit_code_is_propagated(containers: Containers, test_image: str) -> None:
    container_id = containers.run(spec(test_image, "exit 42"))
    ended = containers.wait(container_id, timeout=30)
    assert ended.code == 42
    assert ended.signal is None
    assert not ended.oom_killed
    assert ended.finished_at is not None
    assert not containers.is_running(container_id)


def test_out_of_memory_is_reported(containers: Containers, test_image: str) -> None:
    container_id = containers.run(
        spec(test_image, "a=$(yes | head -c 200000000); echo survived", memory_bytes=16 << 20)
    )
    ended = containers.wait(container_id, timeout=60)
    assert ended.oom_killed
    assert ended.code == 137
    assert ended.signal == 9
    assert b"survived" not in output(containers, container_id)["stdout"]


def test_stop_lets_a_process_that_honours_sigterm_exit(
    containers: Containers, test_image: str
) -> None:
    container_id = containers.run(
        spec(test_image, 'trap "echo bye; exit 0" TERM; echo ready; while :; do sleep 0.1; done')
    )
    assert first_line(containers, container_id) == b"ready\n"
    started = time.monotonic()
    containers.stop(container_id, grace_seconds=2)
    assert time.monotonic() - started < 2
    assert containers.wait(container_id).code == 0
    assert output(containers, container_id)["stdout"] == b"ready\nbye\n"


def test_stop_kills_a_process_that_ignores_sigterm_after_the_grace(
    containers: Containers, test_image: str
) -> None:
    container_id = containers.run(
        spec(test_image, 'trap "" TERM; echo ready; while :; do sleep 0.1; done')
    )
    assert first_line(containers, container_id) == b"ready\n"
    started = time.monotonic()
    containers.stop(container_id, grace_seconds=1)
    assert time.monotonic() - started >= 1
    ended = containers.wait(container_id)
    assert ended.signal == 9
    assert not ended.oom_killed


def test_logs_keep_stdout_and_stderr_apart(containers: Containers, test_image: str) -> None:
    container_id = containers.run(
        spec(test_image, "echo out 1; echo err 1 >&2; echo out 2; sleep 1; printf 'no newline'")
    )
    lines: dict[Stream, list[bytes]] = {"stdout": [], "stderr": []}
    for stream, line in containers.logs(container_id):
        lines[stream].append(line)
    assert lines == {"stdout": [b"out 1\n", b"out 2\n", b"no newline"], "stderr": [b"err 1\n"]}
    # Read again after the end, without following: the same.
    again = list(containers.logs(container_id, follow=False))
    assert sorted(again) == sorted((s, line) for s, ls in lines.items() for line in ls)


def test_logs_arrive_while_the_container_runs(containers: Containers, test_image: str) -> None:
    container_id = containers.run(spec(test_image, "echo early; sleep 30"))
    assert first_line(containers, container_id) == b"early\n"
    assert containers.is_running(container_id)


def test_long_lines_come_in_pieces(containers: Containers, test_image: str) -> None:
    container_id = containers.run(spec(test_image, "yes x | head -c 300000 | tr -d '\\n'; echo"))
    pieces = [line for _, line in containers.logs(container_id)]
    assert b"".join(pieces) == b"x" * 150000 + b"\n"
    assert max(len(p) for p in pieces) <= 64 * 1024


def test_find_by_labels_running_or_not(containers: Containers, test_image: str) -> None:
    a = containers.run(spec(test_image, "sleep 30", labels={RUN_LABEL: RUN, "group": "a"}))
    b = containers.run(spec(test_image, "exit 3", labels={RUN_LABEL: RUN, "group": "b"}))
    containers.wait(b)
    found_a = containers.find({RUN_LABEL: RUN, "group": "a"})
    found_b = containers.find({RUN_LABEL: RUN, "group": "b"})
    assert [c.id for c in found_a] == [a]
    assert found_a[0].running
    assert found_a[0].labels["group"] == "a"
    assert [c.id for c in found_b] == [b]
    assert not found_b[0].running
    assert found_b[0].state == "exited"
    assert {c.id for c in containers.find({RUN_LABEL: RUN})} == {a, b}
    assert containers.find({RUN_LABEL: RUN, "group": "c"}) == []
    with pytest.raises(InvalidSpec):
        containers.find({})


def test_remove_is_tolerant_of_gone_containers(containers: Containers, test_image: str) -> None:
    container_id = containers.run(spec(test_image, "sleep 30"))
    containers.remove(container_id)
    containers.remove(container_id)
    containers.remove("no-such-container")
    assert not containers.is_running(container_id)
    assert containers.find({RUN_LABEL: RUN}) == []


def test_wait_with_a_timeout(containers: Containers, test_image: str) -> None:
    container_id = containers.run(spec(test_image, "sleep 30"))
    with pytest.raises(WaitTimedOut):
        containers.wait(container_id, timeout=0.5)


def test_missing_image_is_named_and_never_pulled(containers: Containers) -> None:
    with pytest.raises(ImageNotFound, match="berth-test/absent:0"):
        containers.run(spec("berth-test/absent:0"))


def test_taken_port_fails_the_start_and_leaves_nothing(
    containers: Containers, test_image: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 - the container publishes on every address
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartFailed, match=str(port)):
            containers.run(spec(test_image, port=port))
    assert containers.find({RUN_LABEL: RUN}) == []


def test_a_taken_name_is_an_error(containers: Containers, test_image: str) -> None:
    first = spec(test_image, "sleep 30")
    containers.run(first)
    with pytest.raises(ContainerError, match="already in use"):
        containers.run(replace(first, command=["true"]))


def test_run_logs_without_clashing_with_logging_fields(
    containers: Containers, test_image: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`extra=` keys must not collide with LogRecord attributes (such as `name`)."""
    caplog.set_level(logging.INFO, logger="berth.executor.containers")
    containers.run(spec(test_image, "true"))
    assert any("container_name" in vars(r) for r in caplog.records)
