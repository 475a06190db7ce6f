"""Fixtures with real parts. A service that is missing skips its tests locally; under CI
(CI=true) it fails them, so a green CI never hides a skipped test."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
import requests

from berth.buildpacks import stack
from tests.support import images, stackimages
from tests.support.services import BerthApi, ZooKeeper, zookeeper_available
from tests.support.stackimages import StackBuild

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(available: bool, what: str) -> None:
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing, and CI must not skip: install it (.ci/run does)")
    pytest.skip(f"{what} is not installed")


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeper]:
    need(zookeeper_available(), "ZooKeeper (Debian package zookeeper)")
    server = ZooKeeper(tmp_path_factory.mktemp("zookeeper"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = images.docker_client()
    need(client is not None, "a running Docker engine (scripts/test installs and starts one)")
    assert client is not None
    yield client
    client.close()


@pytest.fixture(scope="session")
def test_image(docker_client: docker.DockerClient) -> str:
    """The busybox test image's tag, imported from Debian's busybox-static when missing."""
    need(images.busybox_available(), "busybox (Debian package busybox-static)")
    return images.ensure_test_image(docker_client)


@pytest.fixture(scope="session")
def stack_build(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StackBuild]:
    """Both stack images, built (forced) once per session under `berth-test` and removed at
    the end. Locally, BERTH_TEST_STACK_REPOSITORY=berth reuses existing images instead (no
    build: test_stack.py's build checks skip); CI refuses that shortcut."""
    reuse = os.environ.get("BERTH_TEST_STACK_REPOSITORY", "")
    if reuse and IN_CI:
        pytest.fail("BERTH_TEST_STACK_REPOSITORY is a local shortcut; CI builds the stack")
    need(shutil.which("mmdebstrap") is not None, "mmdebstrap (Debian packages mmdebstrap, uidmap)")
    work_dir = tmp_path_factory.mktemp("stack")
    progress: list[str] = []
    found = stack.ensure_stack(
        docker_client,
        progress.append,
        work_dir=work_dir,
        force=not reuse,
        repository=reuse or stackimages.REPOSITORY,
    )
    yield StackBuild(found, work_dir, progress, reuse or stackimages.REPOSITORY, not reuse)
    if not reuse:
        for image in (found.build, found.run):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(image.image_id, force=True)


@pytest.fixture
def chroot() -> str:
    """Each test its own Berth, side by side in one ZooKeeper."""
    return f"/test-{uuid.uuid4().hex[:10]}"


class Api:
    """A running `berth api` and a logged-in requests session for it."""

    def __init__(self, server: BerthApi) -> None:
        self.server = server
        self.url = server.url
        self.token = server.admin_token
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {self.token}"

    def call(self, method: str, path: str, **kwargs: object) -> requests.Response:
        return self.session.request(method, self.url + path, timeout=30, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def api(zookeeper: ZooKeeper, chroot: str, tmp_path: Path) -> Iterator[Api]:
    server = BerthApi(zookeeper.hosts, chroot, tmp_path / "data", tmp_path / "api.log")
    server.start()
    yield Api(server)
    server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if {"zookeeper", "api"} & fixtures:
            item.add_marker(pytest.mark.zookeeper)
        if {"docker_client", "test_image"} & fixtures:
            item.add_marker(pytest.mark.docker)
