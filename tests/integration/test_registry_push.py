"""`git push` with a registry, every part real: `berth server --registry-addr` (its supervised
`berth registry` child is Debian's docker-registry with a generated password), the git binary
pushing a Dockerfile app, the API building it and pushing the image to the registry, the
release naming the registry reference and its digest, and the framework (local mode) running
exactly that digest, served through the router."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from berth.framework.registry import load_or_create_credentials
from tests.conftest import Api, need
from tests.support import images, waiting
from tests.support.services import BerthApi, ZooKeeper, cleanup_executors, free_port

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.zookeeper, pytest.mark.haproxy]

PREFIX = "rp-"


class Berth:
    def __init__(self, zk: ZooKeeper, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.registry = f"127.0.0.1:{free_port()}"
        self.server = BerthApi(
            zk.hosts,
            f"/registry-push-{uuid.uuid4().hex[:10]}",
            self.data,
            root / "server.log",
            "server",
            env={"BERTH_REGISTRY_ADDR": self.registry, "BERTH_LOCAL_PORTS": "31850-31899"},
        )
        self.api: Api

    def start(self) -> None:
        self.server.start(60)
        self.api = Api(self.server)

    def stop(self) -> None:
        self.server.stop()
        cleanup_executors(self.data)


@pytest.fixture(scope="module")
def berth(
    zookeeper: ZooKeeper,
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    test_image: str,
) -> Iterator[Berth]:
    need(
        shutil.which("docker-registry") is not None and shutil.which("htpasswd") is not None,
        "docker-registry and htpasswd (Debian docker-registry, apache2-utils)",
    )
    b = Berth(zookeeper, tmp_path_factory.mktemp("registry-push"))
    b.start()
    try:
        yield b
    finally:
        b.stop()
        images.remove_app_artifacts(docker_client, PREFIX)


def git(path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=path, env=env, capture_output=True, text=True, check=False
    )


def test_a_push_goes_to_the_registry_and_the_release_runs_its_digest(
    berth: Berth, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    app = f"{PREFIX}{uuid.uuid4().hex[:6]}"
    assert berth.api.call("POST", "/v1/apps", json={"name": app}).status_code == 201
    body = f"from the registry {uuid.uuid4().hex[:8]}"
    work = tmp_path / "app"
    work.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / ".config"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        "BERTH_URL": berth.api.url,
        "BERTH_TOKEN": berth.api.token,
    }
    assert git(work, env, "init", "-q", "-b", "main").returncode == 0
    remote = subprocess.run(
        [sys.executable, "-m", "berth.cli", "git:remote", "-a", app],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert remote.returncode == 0, remote.stderr
    (work / "Dockerfile").write_text(
        'FROM berth-test/busybox:1\nCOPY index.html /www/index.html\nCMD httpd -f -p "$PORT"'
        " -h /www\n"
    )
    (work / "index.html").write_text(body + "\n")
    assert git(work, env, "add", "-A").returncode == 0
    assert git(work, env, "commit", "-q", "-m", "first").returncode == 0
    commit = git(work, env, "rev-parse", "HEAD").stdout.strip()

    pushed = git(work, env, "push", "berth", "main")
    assert pushed.returncode == 0, pushed.stderr
    ref = f"{berth.registry}/berth/app-{app}:{commit[:12]}"
    assert f"remote: -----> Pushing to {berth.registry}" in pushed.stderr
    assert f"remote:        Pushed {ref} (sha256:" in pushed.stderr

    release = berth.api.call("GET", f"/v1/apps/{app}/releases").json()[0]
    digest = release["artifact"]["digest"]
    assert release["artifact"] == {"kind": "image", "ref": ref, "digest": digest}
    assert digest.startswith("sha256:")

    # the registry holds exactly that manifest, behind the generated password
    creds = load_or_create_credentials(berth.data)
    mode = (berth.data / "registry" / "credentials.json").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    manifest = requests.get(
        f"http://{berth.registry}/v2/berth/app-{app}/manifests/{commit[:12]}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        auth=(creds.username, creds.password),
        timeout=10,
    )
    assert manifest.status_code == 200
    assert manifest.headers["Docker-Content-Digest"] == digest
    anonymous = requests.get(f"http://{berth.registry}/v2/", timeout=10)
    assert anonymous.status_code == 401

    # the task runs the pinned reference, and serves through the router
    def serves() -> bool:
        try:
            answer = requests.get(
                f"http://127.0.0.1:{berth.server.http_port}/",
                headers={"Host": f"{app}.localhost"},
                timeout=5,
            )
        except requests.RequestException:
            return False
        return answer.status_code == 200 and answer.text.strip() == body

    waiting.wait_for(serves, 60)
    (container,) = docker_client.containers.list(filters={"label": f"berth.app={app}"})
    assert container.attrs["Config"]["Image"] == f"{berth.registry}/berth/app-{app}@{digest}"
