"""`berth run` end to end, every part real: ZooKeeper, `berth server` (API with its
rendezvous, framework in local mode), executors, Docker containers of the busybox test image,
and the `berth` CLI in pipes mode, in a real pty, detached, and killed mid-run."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from tests.integration.test_logs import Berth, wait_for
from tests.support.server import remove_containers
from tests.support.services import ZooKeeper

pytestmark = [pytest.mark.slow, pytest.mark.zookeeper, pytest.mark.docker]

APP = "rn-app"
EMPTY = "rn-empty"


@pytest.fixture(scope="module")
def berth(
    zookeeper: ZooKeeper,
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    test_image: str,
) -> Iterator[Berth]:
    b = Berth(zookeeper, f"/test-run-{os.getpid()}", tmp_path_factory.mktemp("run"))
    b.start()
    # a release with no formation: only one-off runs ever run
    b.deploy(APP, test_image, worker="sleep 3600")
    b.create_app(EMPTY)
    yield b
    b.stop()
    remove_containers(docker_client, APP)


def run_cli(berth: Berth, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "berth.cli", "run", "-a", APP, *args],
        env=berth.cli_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def popen(berth: Berth, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "berth.cli", "run", "-a", APP, *args],
        env=berth.cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_containers(client: docker.DockerClient) -> list[Any]:
    found: list[Any] = client.containers.list(
        all=True, filters={"label": [f"berth.app={APP}", "berth.process=run"]}
    )
    return found


def runs(berth: Berth) -> dict[int, dict[str, Any]]:
    answer = berth.api.call("GET", f"/v1/apps/{APP}/runs")
    assert answer.status_code == 200, answer.text
    return {r["number"]: r for r in answer.json()}


def test_pipes_keep_stdout_and_stderr_apart_and_the_exit_code_comes_back(berth: Berth) -> None:
    result = run_cli(berth, "--", "sh", "-c", "echo out; echo err >&2; exit 42")
    assert result.returncode == 42, result.stderr
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"


def test_stdin_is_copied_until_eof(berth: Berth) -> None:
    result = run_cli(berth, "--", "cat", stdin="hi\nthere\n")
    assert (result.returncode, result.stdout) == (0, "hi\nthere\n"), result.stderr


def test_arguments_arrive_as_given(berth: Berth) -> None:
    args = ["a b", '"double"', "it's", "$HOME", "*", ""]
    result = run_cli(berth, "--", "printf", "[%s]\\n", *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"[{a}]" for a in args]


def test_the_run_has_the_app_s_config(berth: Berth) -> None:
    answer = berth.api.call("PATCH", f"/v1/apps/{APP}/config", json={"RN_GREETING": "hej"})
    assert answer.status_code == 200, answer.text
    result = run_cli(berth, "--", "sh", "-c", 'echo "$RN_GREETING $DYNO"')
    assert result.stdout.startswith("hej run."), result.stderr


def test_sigint_reaches_the_process(berth: Berth) -> None:
    script = 'trap "echo got-int; exit 3" INT; echo ready; while true; do sleep 0.1; done'
    proc = popen(berth, "--", "sh", "-c", script)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert out == "got-int\n"


def test_a_tty_session_shows_a_prompt_and_runs_commands(berth: Berth) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on a real terminal
        os.execve(  # noqa: S606 - argv, no shell
            sys.executable,
            [sys.executable, "-m", "berth.cli", "run", "-a", APP, "--", "sh"],
            berth.cli_env(),
        )
    seen = b""

    def read_until(text: bytes, timeout: float = 120.0) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while text not in seen:
            assert time.monotonic() < deadline, f"no {text!r} in {seen[-500:]!r}"
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready:
                try:
                    seen += os.read(fd, 4096)
                except OSError:  # the child ended
                    break
        assert text in seen, seen[-500:]

    read_until(b"$ ")
    os.write(fd, b"tty; echo tty-$((6*7))\r")
    read_until(b"tty-42")
    assert b"/dev/pts/" in seen  # the process has a terminal of its own
    os.write(fd, b"exit 5\r")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 5


def test_detached_output_goes_to_the_logs_and_the_run_is_never_restarted(berth: Berth) -> None:
    result = run_cli(berth, "--detach", "--", "sh", "-c", "echo detached-hello; exit 4")
    assert result.returncode == 0, result.stderr
    name = result.stdout.strip()
    assert name.startswith("run.")
    number = int(name.removeprefix("run."))

    def logged() -> bool:
        texts = [r["text"] for r in berth.records(APP, "--ps", name)]
        return "detached-hello" in texts

    wait_for(logged)
    finished = wait_for(lambda: runs(berth)[number]["state"] == "finished" and runs(berth))
    assert finished[number]["exit_code"] == 4
    assert finished[number]["outcome"] == "failed"
    # it exited: no task of it runs again (the record is finished, so the plan never
    # launches it; the one ended task is all `ps` ever shows of it)
    tasks = list(berth.api.call("GET", f"/v1/apps/{APP}/ps").json()["tasks"])
    mine = [t for t in tasks if t["name"] == name]
    assert len(mine) <= 1
    assert all(t["state"] not in ("staging", "running") for t in mine)


def test_ps_shows_a_run_and_ps_stop_ends_it(berth: Berth) -> None:
    result = run_cli(berth, "-d", "--", "sleep", "600")
    assert result.returncode == 0, result.stderr
    name = result.stdout.strip()
    number = int(name.removeprefix("run."))

    def running() -> bool:
        return any(
            line.split()[:2] == [name, "running"]
            for line in berth.cli("ps", "-a", APP).stdout.splitlines()
        )

    wait_for(running)
    berth.cli("ps:stop", "-a", APP, name)
    finished = wait_for(lambda: runs(berth)[number]["state"] == "finished" and runs(berth))
    assert finished[number]["outcome"] == "killed"


def test_a_client_killed_mid_run_takes_its_container_with_it(
    berth: Berth, docker_client: docker.DockerClient
) -> None:
    proc = popen(berth, "--", "sh", "-c", "echo started; exec sleep 600")
    assert proc.stdout is not None
    assert proc.stdout.readline() == "started\n"
    mine = [
        c
        for c in run_containers(docker_client)
        if c.status == "running" and "sleep" in str(c.attrs)
    ]
    assert mine
    proc.kill()
    proc.communicate(timeout=30)
    wait_for(lambda: not run_containers(docker_client), 30)


def test_a_run_needs_a_release_a_known_app_and_an_argv(berth: Berth) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "berth.cli", "run", "-a", EMPTY, "--", "true"],
        env=berth.cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "push or deploy first" in result.stderr
    assert berth.api.call("GET", f"/v1/apps/{EMPTY}/runs").json() == []
    answer = berth.api.call("POST", "/v1/apps/rn-nope/runs", json={"command": ["true"]})
    assert answer.status_code == 404
    for bad in ([], "sh -c true", ["a\x00b"], [1]):
        answer = berth.api.call("POST", f"/v1/apps/{APP}/runs", json={"command": bad})
        assert answer.status_code == 422, (bad, answer.text)


def test_the_rendezvous_wants_the_run_s_secret(berth: Berth) -> None:
    result = run_cli(berth, "-d", "--", "true")
    number = int(result.stdout.strip().removeprefix("run."))
    path = f"/v1/apps/{APP}/runs/{number}/rendezvous"
    headers = {"Connection": "Upgrade", "Upgrade": "websocket"}
    answer = berth.api.call("GET", path, headers=headers)  # the admin token is not the secret
    assert answer.status_code == 401


def test_an_attached_run_no_client_comes_for_is_stopped(
    berth: Berth, docker_client: docker.DockerClient
) -> None:
    answer = berth.api.call(
        "POST", f"/v1/apps/{APP}/runs", json={"command": ["sleep", "600"], "attach": True}
    )
    assert answer.status_code == 201, answer.text
    number = answer.json()["number"]
    # the executor dials the rendezvous, waits there for a client that never comes, and is
    # sent away: the container stops and the run ends
    finished = wait_for(lambda: runs(berth)[number]["state"] == "finished" and runs(berth), 120)
    assert finished[number]["outcome"] == "killed"
    wait_for(lambda: not run_containers(docker_client), 30)
    # a finished run cannot be attached to any more
    answer = berth.api.call(
        "GET",
        f"/v1/apps/{APP}/runs/{number}/attach",
        headers={"Connection": "Upgrade", "Upgrade": "websocket"},
    )
    assert answer.status_code == 409
