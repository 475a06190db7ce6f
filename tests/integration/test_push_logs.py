"""A push's lines in `berth logs`, deploy started/finished lines, and the pruning of old images,
end to end with every part real: `berth server` (API, logd, framework in local mode, router)
with BERTH_KEEP_RELEASES=2, the git binary pushing Dockerfile apps built by the Docker engine,
and the `berth` CLI reading the logs."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.support import gitrepo, images, waiting
from tests.support.gitrepo import dockerfile_app
from tests.support.server import ServerHarness, running
from tests.support.services import ZooKeeper

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.zookeeper, pytest.mark.haproxy]

PREFIX = "pl-"


class Berth(ServerHarness):
    """`berth server` keeping the images of 2 releases per app, its tasks on ports
    31750-31799."""

    def __init__(self, zk: ZooKeeper, root: Path) -> None:
        super().__init__(
            zk,
            f"/push-logs-{uuid.uuid4().hex[:10]}",
            root,
            env={"BERTH_KEEP_RELEASES": "2", "BERTH_LOCAL_PORTS": "31750-31799"},
        )

    def berth_lines(self, app: str) -> list[str]:
        return [r["text"] for r in self.records(app, "--source", "berth")]


@pytest.fixture(scope="module")
def berth(
    zookeeper: ZooKeeper,
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    test_image: str,
) -> Iterator[Berth]:
    yield from running(Berth(zookeeper, tmp_path_factory.mktemp("push-logs")))
    images.remove_app_artifacts(docker_client, PREFIX)


class Repo(gitrepo.Repo):
    """A working copy of `app` whose git and CLI run with the harness's CLI environment."""

    def __init__(self, berth: Berth, path: Path, app: str) -> None:
        super().__init__(path, app, berth.cli_env())

    def push_app(self, body: str, extra: str = "") -> subprocess.CompletedProcess[str]:
        """Commits a Dockerfile app serving `body` (`extra`: more Dockerfile lines) and
        pushes it."""
        self.commit(dockerfile_app(body, extra), body)
        return self.push()


def app_images(client: docker.DockerClient, app: str) -> dict[str, str]:
    """tag → image id of the images Berth built for `app`."""
    found = {}
    for image in client.api.images(filters={"label": f"berth.app={app}"}):  # no inspect races
        for tag in image.get("RepoTags") or ():
            if tag != "<none>:<none>":
                found[tag] = image["Id"]
    return found


def newest_ref(berth: Berth, app: str) -> str:
    return str(berth.newest_release(app)["artifact"]["ref"])


def deployed(berth: Berth, app: str, version: int) -> None:
    """Wait for `Deploy of vN finished` (a first release: its process serving)."""
    if version == 2:
        return  # a first start, no deploy: the push waited for it to serve
    line = f"Deploy of v{version} finished"
    waiting.wait_for(lambda: line in berth.berth_lines(app), 60, interval=0.5)


def test_build_output_and_deploys_are_in_the_apps_log(berth: Berth, tmp_path: Path) -> None:
    app = f"{PREFIX}logs"
    berth.create_app(app)
    repo = Repo(berth, tmp_path / "logs", app)
    pushed = repo.push_app("first")
    assert pushed.returncode == 0, pushed.stderr
    first = berth.builds(app)[0]

    def build_lines() -> list[dict[str, Any]] | None:
        found = berth.records(app, "--source", "build")
        return found if any("Released v2" in r["text"] for r in found) else None

    lines = waiting.wait_for(build_lines, 30)
    assert {r["process"] for r in lines} == {first["id"]}
    texts = [r["text"] for r in lines]
    assert texts[0] == f"-----> Build {first['id']} of {app} at {first['commit'][:12]}"
    assert "-----> Building with the Dockerfile" in texts
    assert texts.index("-----> Building with the Dockerfile") < texts.index(
        next(t for t in texts if t.startswith("-----> Released v2"))
    )
    # the CLI, in Heroku's format
    shown = berth.cli("logs", "-a", app, "--source", "build", "-n", "500").stdout
    assert f" build[{first['id']}]: -----> Building with the Dockerfile" in shown
    platform = berth.berth_lines(app)
    started = f"Build {first['id']} started by "
    assert any(t.startswith(started) and t.endswith(")") for t in platform)
    assert f"Build {first['id']} succeeded: v2" in platform
    assert platform.index(next(t for t in platform if t.startswith(started))) < platform.index(
        f"Build {first['id']} succeeded: v2"
    )
    # the first start is not a deploy: nothing older was running
    assert not [t for t in platform if t.startswith("Deploy of")]

    # a second release replaces the first: started, then finished, after its release line
    pushed = repo.push_app("second")
    assert pushed.returncode == 0, pushed.stderr

    def deploy_lines() -> list[str] | None:
        found = berth.berth_lines(app)
        return found if "Deploy of v3 finished" in found else None

    platform = waiting.wait_for(deploy_lines, 60)
    release = next(i for i, t in enumerate(platform) if t.startswith("Release v3: Deploy "))
    assert platform.index("Deploy of v3 started (web: 1)") > release
    assert platform.index("Deploy of v3 finished") > platform.index("Deploy of v3 started (web: 1)")
    assert platform.count("Deploy of v3 started (web: 1)") == 1

    # a failing build: its lines, and the berth line saying why
    pushed = repo.push_app("broken", extra="RUN echo nope-$((6*7)) && false\n")
    assert pushed.returncode != 0
    failed = berth.builds(app)[0]
    assert failed["status"] == "failed"

    def failure() -> list[str] | None:
        found = [t for t in berth.berth_lines(app) if t.startswith(f"Build {failed['id']} failed")]
        return found or None

    assert "the Docker build failed" in waiting.wait_for(failure, 30)[0]
    nope = [r for r in berth.records(app, "--source", "build") if "nope-42" in r["text"]]
    assert nope
    assert {r["process"] for r in nope} == {failed["id"]}


def test_old_images_are_pruned_keeping_rollback_targets_and_used_ones(
    berth: Berth, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    app = f"{PREFIX}prune"
    berth.create_app(app)
    repo = Repo(berth, tmp_path / "prune", app)
    refs = {}
    for version, body in ((2, "one"), (3, "two"), (4, "three")):
        if version > 2:  # the tasks of the release before are gone, containers and all
            deployed(berth, app, version - 1)
        pushed = repo.push_app(body)
        assert pushed.returncode == 0, pushed.stderr
        refs[version] = newest_ref(berth, app)
    # keep=2: v3's and v4's images (v4 serving); v2's went
    assert sorted(app_images(docker_client, app)) == sorted([refs[3], refs[4]])
    assert "Removed 1 old image" in pushed.stderr

    # a release whose image was pruned is no rollback target: 409, nothing written
    answer = berth.api.call("POST", f"/v1/apps/{app}/rollback", json={"version": "v2"})
    assert answer.status_code == 409, answer.text
    assert "was pruned" in answer.json()["error"]["message"]
    assert "BERTH_KEEP_RELEASES" in answer.json()["error"]["message"]
    assert newest_ref(berth, app) == refs[4]
    releases = berth.api.call("GET", f"/v1/apps/{app}/releases").json()
    assert releases[0]["version"] == 4

    # an image a container uses is never removed, even when no kept release has it
    holder = docker_client.containers.run(refs[3], ["sleep", "600"], detach=True)
    try:
        pushed = repo.push_app("four")  # v5: keep v4, v5; v3 is in use
        assert pushed.returncode == 0, pushed.stderr
        refs[5] = newest_ref(berth, app)
        assert sorted(app_images(docker_client, app)) == sorted([refs[3], refs[4], refs[5]])
    finally:
        holder.remove(force=True)
    deployed(berth, app, 5)
    pushed = repo.push_app("five")  # v6: now v3 and v4 go
    assert pushed.returncode == 0, pushed.stderr
    refs[6] = newest_ref(berth, app)
    assert sorted(app_images(docker_client, app)) == sorted([refs[5], refs[6]])
    assert "Removed 2 old images" in pushed.stderr

    # a kept one is a rollback target
    answer = berth.api.call("POST", f"/v1/apps/{app}/rollback", json={"version": "v5"})
    assert answer.status_code == 201, answer.text

    # destroying the app removes its images once its containers are gone
    assert berth.api.call("DELETE", f"/v1/apps/{app}").status_code == 200
    waiting.wait_for(lambda: not app_images(docker_client, app), 150, interval=0.5)
