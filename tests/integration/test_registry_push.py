"""`git push` with a registry, every part real: `berth server --registry-addr` (its supervised
`berth registry` child is Debian's docker-registry with a generated password), the git binary
pushing a Dockerfile app, the API building it and pushing the image to the registry, the
release naming the registry reference and its digest, and the framework (local mode) running
exactly that digest, served through the router."""

from __future__ import annotations

import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from berth.framework.registry import load_or_create_credentials
from tests.conftest import need
from tests.support import images
from tests.support.gitrepo import Repo, dockerfile_app, isolated_env
from tests.support.server import ServerHarness, running
from tests.support.services import ZooKeeper, free_port

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.zookeeper, pytest.mark.haproxy]

PREFIX = "rp-"


class Berth(ServerHarness):
    """`berth server` with a registry on a free port, its tasks on ports 31850-31899."""

    def __init__(self, zk: ZooKeeper, root: Path) -> None:
        self.registry = f"127.0.0.1:{free_port()}"
        super().__init__(
            zk,
            f"/registry-push-{uuid.uuid4().hex[:10]}",
            root,
            env={"BERTH_REGISTRY_ADDR": self.registry, "BERTH_LOCAL_PORTS": "31850-31899"},
        )


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
    try:
        yield from running(Berth(zookeeper, tmp_path_factory.mktemp("registry-push")))
    finally:
        images.remove_app_artifacts(docker_client, PREFIX)


def test_a_push_goes_to_the_registry_and_the_release_runs_its_digest(
    berth: Berth, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    app = f"{PREFIX}{uuid.uuid4().hex[:6]}"
    berth.create_app(app)
    body = f"from the registry {uuid.uuid4().hex[:8]}"
    env = isolated_env(berth.api.url, berth.api.token)
    repo = Repo(tmp_path / "app", app, env, home=tmp_path)
    commit = repo.commit(dockerfile_app(body), "first")

    pushed = repo.push()
    assert pushed.returncode == 0, pushed.stderr
    ref = f"{berth.registry}/berth/app-{app}:{commit[:12]}"
    assert f"remote: -----> Pushing to {berth.registry}" in pushed.stderr
    assert f"remote:        Pushed {ref} (sha256:" in pushed.stderr

    release = berth.newest_release(app)
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
    berth.serves(app, body)
    (container,) = docker_client.containers.list(filters={"label": f"berth.app={app}"})
    assert container.attrs["Config"]["Image"] == f"{berth.registry}/berth/app-{app}@{digest}"
