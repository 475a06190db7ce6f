"""The stack images for real: mmdebstrap writes Debian trixie from deb.debian.org, Docker
imports it, and containers of both images show what they hold. The images are built once per
test session (conftest.py's `stack_build`, which the buildpack tests share), under the
repository `berth-test` (so Berth's own `berth/stack-*` images are never touched), and removed
at the end; every container is removed after its test."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from berth.buildpacks import stack
from berth.buildpacks.stack import StackError, StackImages, StackSpec
from tests.conftest import need
from tests.support import stackimages
from tests.support.stackimages import StackBuild
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPOSITORY = stackimages.REPOSITORY
RUN_LABEL = "berth.test.run"
RUN = uuid.uuid4().hex[:12]

Sh = Callable[..., tuple[int, str]]  # (image, script, **containers.run kwargs) -> (code, output)


Built = StackBuild


@pytest.fixture(scope="module")
def built(stack_build: StackBuild) -> StackBuild:
    """The session's one forced build (conftest's `stack_build`, shared with the buildpack
    tests so CI builds the stack once)."""
    if not stack_build.forced:
        pytest.skip("BERTH_TEST_STACK_REPOSITORY reuses images: the stack build is not tested")
    return stack_build


@pytest.fixture
def sh(docker_client: docker.DockerClient) -> Iterator[Sh]:
    """`sh(image, script, **run_kwargs) -> (exit code, output)`: bash -c in a new container."""

    def run(image: str, script: str, **kwargs: object) -> tuple[int, str]:
        container = docker_client.containers.run(
            image,
            ["bash", "-c", script],
            detach=True,
            labels={RUN_LABEL: RUN},
            network_mode="none",
            **kwargs,
        )
        try:
            code = int(container.wait(timeout=300)["StatusCode"])
            return code, container.logs().decode(errors="replace")
        finally:
            container.remove(force=True)

    yield run
    for container in docker_client.containers.list(
        all=True, filters={"label": f"{RUN_LABEL}={RUN}"}
    ):
        container.remove(force=True)


def run_in(sh: Sh, image: str, script: str, **kwargs: object) -> str:
    code, output = sh(image, script, **kwargs)
    assert code == 0, f"exit {code}:\n{output}"
    return output


def test_the_build_made_both_images_with_progress_and_left_no_scratch(built: Built) -> None:
    assert built.images.build.built
    assert built.images.run.built
    assert not built.images.reused
    assert built.images.build.name == stack.image_name(stack.BUILD, REPOSITORY)
    assert built.images.run.name == stack.image_name(stack.RUN, REPOSITORY)
    for phase in ("downloading packages with apt", "installing remaining packages", "importing"):
        assert any(phase in line for line in built.progress if line.startswith("build:"))
        assert any(phase in line for line in built.progress if line.startswith("run:"))
    assert any(" set up " in line for line in built.progress)  # condensed dpkg counts
    assert any(line.startswith("run:") and "ready: built in" in line for line in built.progress)
    assert list(built.work_dir.glob("build-*")) == []
    assert {p.name for p in built.work_dir.iterdir()} == {"stack.lock"}


def test_images_carry_their_manifest_and_config(
    built: Built, docker_client: docker.DockerClient
) -> None:
    for spec, image in ((stack.BUILD, built.images.build), (stack.RUN, built.images.run)):
        config = docker_client.images.get(image.name).attrs["Config"]
        labels = config["Labels"]
        assert labels[stack.LABEL_KIND] == spec.kind
        assert labels[stack.LABEL_DIGEST] == stack.stack_digest(spec)
        assert labels[stack.LABEL_MANIFEST] == stack.manifest_json(spec)
        assert config["User"] == "10000:10000"
        assert config["WorkingDir"] == "/app"
        assert "LANG=C.UTF-8" in config["Env"]
        assert "HOME=/home/app" in config["Env"]
    assert built.images.run.size < built.images.build.size / 3


def test_run_image_has_python_313_node_20_and_no_compilers(built: Built, sh: Sh) -> None:
    out = run_in(
        sh,
        built.images.run.name,
        "python3 --version; node --version; id -u; id -g; echo home=$HOME; pwd;"
        " python3 -c 'import ssl, sqlite3, ctypes, zlib, json; print(\"stdlib ok\")';"
        " for tool in gcc cc g++ make go npm apt-get; do command -v $tool || echo no-$tool; done;"
        " find /var/lib/apt/lists -type f ! -name lock 2>/dev/null | wc -l;"
        " find /usr/share/doc -type f ! -name copyright | wc -l;"
        " ls /usr/share/man 2>/dev/null | wc -l;"
        " test -f /etc/ssl/certs/ca-certificates.crt && echo certs;"
        " test -f /usr/share/zoneinfo/Europe/Paris && echo tzdata",
    )
    lines = out.split()
    assert lines[0] == "Python"
    assert lines[1].startswith("3.13.")
    assert lines[2].startswith("v20.")
    assert lines[3:5] == ["10000", "10000"]
    assert "home=/home/app" in lines
    assert "/app" in lines
    assert "stdlib ok" in out
    for tool in ("gcc", "cc", "g++", "make", "go", "npm", "apt-get"):
        assert f"no-{tool}" in lines
    assert lines[-5:] == ["0", "0", "0", "certs", "tzdata"]


def test_build_image_compiles_c_and_has_go_npm_ruby_and_venv(built: Built, sh: Sh) -> None:
    out = run_in(
        sh,
        built.images.build.name,
        "set -e; id -u; cd /tmp;"
        " printf '#include <stdio.h>\\nint main(void){puts(\"compiled ok\");return 0;}\\n' >t.c;"
        " gcc -O2 -o t t.c && ./t;"
        " go version; npm --version; ruby --version; git --version; pkg-config --modversion libpq;"
        " python3 -m venv /tmp/venv && /tmp/venv/bin/python -c 'import sys; print(sys.prefix)';"
        " /tmp/venv/bin/pip --version >/dev/null && echo pip-ok;"
        # apt keeps lists/partial (root's, mode 700): the user cannot look in, nor need to
        " find /var/lib/apt/lists /var/cache/apt -type f ! -name lock 2>/dev/null | wc -l",
    )
    lines = out.splitlines()
    assert lines[0] == "10000"
    assert "compiled ok" in lines
    assert any(line.startswith("go version go1.") for line in lines)
    assert any(line.startswith("ruby 3.") for line in lines)
    assert any(line.startswith("git version 2.") for line in lines)
    assert "/tmp/venv" in lines
    assert "pip-ok" in lines
    assert lines[-1] == "0"  # no apt lists or cached packages
    npm = lines[lines.index(next(x for x in lines if x.startswith("go version"))) + 1]
    assert npm[0].isdigit(), npm


def test_a_python_venv_built_on_the_build_image_runs_on_the_run_image(
    built: Built, sh: Sh, docker_client: docker.DockerClient
) -> None:
    volume = docker_client.volumes.create(f"berth-test-stack-{RUN}", labels={RUN_LABEL: RUN})
    try:
        mount = {volume.name: {"bind": "/app", "mode": "rw"}}  # filled from the image's /app
        run_in(
            sh,
            built.images.build.name,
            "python3 -m venv /app/venv && /app/venv/bin/python -c 'import venv' && echo made",
            volumes=mount,
        )
        out = run_in(
            sh,
            built.images.run.name,
            "/app/venv/bin/python -c 'import sys, ssl; print(sys.version.split()[0], sys.prefix)'",
            volumes=mount,
        )
        version, prefix = out.split()
        assert version.startswith("3.13.")
        assert prefix == "/app/venv"
    finally:
        volume.remove(force=True)


def test_a_second_call_reuses_both_images(built: Built, docker_client: docker.DockerClient) -> None:
    progress: list[str] = []
    again = stack.ensure_stack(
        docker_client, progress.append, work_dir=built.work_dir, repository=REPOSITORY
    )
    assert again.reused
    assert not again.build.built
    assert not again.run.built
    assert again.build.image_id == built.images.build.image_id
    assert again.run.image_id == built.images.run.image_id
    assert sum("is up to date" in line for line in progress) == 2
    assert not any("mmdebstrap" in line for line in progress)


def test_a_build_waits_for_the_lock_another_holds(
    built: Built, docker_client: docker.DockerClient
) -> None:
    progress: list[str] = []
    result: list[StackImages] = []
    errors: list[BaseException] = []

    def ensure() -> None:
        try:
            result.append(
                stack.ensure_stack(
                    docker_client, progress.append, work_dir=built.work_dir, repository=REPOSITORY
                )
            )
        except BaseException as exc:  # reported by the assertions below
            errors.append(exc)

    thread = threading.Thread(target=ensure)
    with stack.stack_lock(built.work_dir, lambda line: None):
        thread.start()
        wait_for(lambda: any("waiting for another stack build" in line for line in progress))
        assert thread.is_alive()
        assert result == []  # blocked while the lock is held
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert errors == []
    assert result[0].reused


def test_a_failed_build_raises_with_mmdebstraps_words_and_leaves_nothing(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    need(shutil.which("mmdebstrap") is not None, "mmdebstrap (Debian packages mmdebstrap, uidmap)")
    spec = StackSpec("run", "essential", ("python3", "berth-no-such-package"))
    progress: list[str] = []
    with pytest.raises(StackError) as failed:
        stack.ensure_image(
            docker_client, spec, progress.append, work_dir=tmp_path, repository=REPOSITORY
        )
    assert "mmdebstrap failed" in failed.value.message
    assert "berth-no-such-package" in failed.value.message
    assert list(tmp_path.glob("build-*")) == []
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(stack.image_name(spec, REPOSITORY))


def test_without_mmdebstrap_the_error_says_what_to_install(
    docker_client: docker.DockerClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(StackError, match="mmdebstrap is not installed: apt-get install mmdebstrap"):
        stack.ensure_image(
            docker_client,
            stack.RUN,
            lambda line: None,
            work_dir=tmp_path,
            force=True,
            repository=REPOSITORY,
        )
    assert list(tmp_path.glob("build-*")) == []


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def test_stack_build_stopped_mid_build_cleans_up(
    built: Built, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """`berth stack:build` given SIGTERM while mmdebstrap installs: exit 130, mmdebstrap gone,
    no scratch dir left, and the existing image untouched."""
    data_dir = tmp_path / "data"
    seen: list[str] = []
    with subprocess.Popen(
        [
            *(sys.executable, "-m", "berth.cli", "stack:build", "--force", "--only", "run"),
            *("--repository", REPOSITORY, "--data-dir", str(data_dir)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                seen.append(line)
                if "extracting archives" in line or "installing essential packages" in line:
                    break
            scratch = list((data_dir / "stack").glob("build-*"))
            assert len(scratch) == 1, seen
            proc.send_signal(signal.SIGTERM)
            rest = proc.stdout.read()
            assert proc.wait(timeout=120) == 130, "".join(seen) + rest
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "interrupted" in rest
    assert not scratch[0].exists()
    assert _processes_mentioning(str(scratch[0])) == []
    assert list((data_dir / "stack").glob("build-*")) == []
    assert docker_client.images.get(built.images.run.name).id == built.images.run.image_id
