"""The release phase end to end, every part real: `berth server` (API, logd, framework in local
mode, router with HAProxy), the git binary pushing Dockerfile apps (built from the busybox test
image by the Docker engine) whose Procfile has a `release:` command, and the `berth` CLI.

A release command that exits 0 runs once, from the new release (its config, as `run.N`), its
output streamed into the push, before the release goes live; one that exits 3 fails the push
with "release command failed (exit 3)": the old release keeps serving through the router,
`releases` shows the failed one, the current release and the branch stay, its image goes; one
still running at BERTH_RELEASE_PHASE_TIMEOUT (30 s in this module) is stopped."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.support import gitrepo, images
from tests.support.gitrepo import dockerfile_app
from tests.support.server import ServerHarness, running
from tests.support.services import ZooKeeper

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.zookeeper, pytest.mark.haproxy]

PREFIX = "rp-"


class Berth(ServerHarness):
    """`berth server` stopping a release command after 30 s, its tasks on ports
    31900-31949."""

    def __init__(self, zk: ZooKeeper, root: Path) -> None:
        super().__init__(
            zk,
            f"/release-phase-{uuid.uuid4().hex[:10]}",
            root,
            # every release command here but one ends in a second or two
            env={"BERTH_LOCAL_PORTS": "31900-31949", "BERTH_RELEASE_PHASE_TIMEOUT": "30"},
        )

    def page(self, app: str) -> str:
        """What the router answers for the app: its body, stripped, or "HTTP <status>"."""
        answer = self.get(f"{app}.localhost")
        return answer.text.strip() if answer.status_code == 200 else f"HTTP {answer.status_code}"


@pytest.fixture(scope="module")
def berth(
    zookeeper: ZooKeeper,
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    test_image: str,
) -> Iterator[Berth]:
    yield from running(Berth(zookeeper, tmp_path_factory.mktemp("release-phase")))
    images.remove_app_artifacts(docker_client, PREFIX)


class Repo(gitrepo.Repo):
    """A working copy of `app`, which it creates, whose git and CLI run with the harness's
    CLI environment; a push may take 10 minutes."""

    push_timeout = 600.0

    def __init__(self, berth: Berth, path: Path, app: str) -> None:
        berth.create_app(app)
        super().__init__(path, app, berth.cli_env())

    def commit_app(self, body: str, procfile: str | None) -> str:
        """A Dockerfile app serving `body` with busybox httpd, with that Procfile (or none)."""
        files: dict[str, str | None] = {**dockerfile_app(body), "Procfile": procfile}
        return self.commit(files, body)

    def remote_main(self) -> str:
        """Where the app's branch is on Berth (git ls-remote, through the credential helper)."""
        return self.git("ls-remote", "berth", "refs/heads/main").stdout.split()[0]


def test_a_release_command_runs_once_before_the_release_goes_live(
    berth: Berth, tmp_path: Path
) -> None:
    app = f"{PREFIX}ok"
    repo = Repo(berth, tmp_path / "ok", app)
    berth.cli("config:set", "-a", app, "RP_GREETING=hej")  # v2: the release command sees it
    body = f"migrated {uuid.uuid4().hex[:8]}"
    # the shell computes what is printed, so the output cannot be the command's echo
    repo.commit_app(body, 'release: echo "migrating-$((6*7)) $RP_GREETING from $DYNO"\n')
    pushed = repo.push()
    assert pushed.returncode == 0, pushed.stderr
    out = pushed.stderr
    assert "remote: -----> Running release command: echo" in out
    assert "remote:        migrating-42 hej from run.1" in out  # its output, in the push
    assert "remote:        Release command succeeded: v3 goes live" in out
    assert f"remote: -----> Released v3, http://{app}.localhost/" in out
    assert out.index("migrating-42") < out.index("Release v3 made")  # before it went live
    berth.serves(app, body)

    releases = berth.releases(app)
    assert releases[0]["version"] == 3
    assert releases[0]["status"] == "succeeded"
    assert releases[0]["current"] is True
    assert releases[0]["process_types"] == {
        "web": "",
        "release": 'echo "migrating-$((6*7)) $RP_GREETING from $DYNO"',
    }
    assert [r["status"] for r in releases] == ["succeeded"] * 3
    # it ran once, as a detached one-off run of v3, and its output is in the app's log
    runs = berth.api.call("GET", f"/v1/apps/{app}/runs").json()
    assert [(r["name"], r["release"], r["exit_code"]) for r in runs] == [("run.1", 3, 0)]
    assert runs[0]["command"][:2] == ["/bin/sh", "-c"]
    logged = berth.cli("logs", "-a", app, "--ps", "run.1", "-n", "50").stdout
    assert "app[run.1]: migrating-42 hej from run.1" in logged
    # `release` is never a formation process
    assert berth.api.call("GET", f"/v1/apps/{app}/formation").json() == {"web": 1}
    refused = berth.cli("ps:scale", "release=1", "-a", app, check=False)
    assert refused.returncode != 0
    assert "release phase" in refused.stderr
    answer = berth.api.call("PATCH", f"/v1/apps/{app}/formation", json={"release": 1})
    assert answer.status_code == 422
    assert "never scaled" in answer.json()["error"]["message"]
    assert berth.api.call("GET", f"/v1/apps/{app}/formation").json() == {"web": 1}


def test_a_failing_release_command_keeps_the_old_release_serving(
    berth: Berth, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    app = f"{PREFIX}fail"
    repo = Repo(berth, tmp_path / "fail", app)
    old_body = f"old {uuid.uuid4().hex[:8]}"
    old = repo.commit_app(old_body, None)
    pushed = repo.push()
    assert pushed.returncode == 0, pushed.stderr
    berth.serves(app, old_body)

    new = repo.commit_app("never served", "release: echo failing-$((1+1)); exit 3\n")
    pushed = repo.push()
    assert pushed.returncode != 0
    out = pushed.stderr
    assert "remote:        failing-2" in out
    assert "remote:  !     release command failed (exit 3)" in out
    assert "remote:        v3 did not go live; the current release stays" in out
    assert "[remote rejected] main -> main (release command failed (exit 3))" in out
    assert "Release v3 made" not in out  # it never went live: no scaling, no waiting
    # the old release keeps serving; v3 is listed, failed, and is not current
    assert berth.page(app) == old_body
    assert berth.api.call("GET", f"/v1/apps/{app}").json()["release"] == 2
    v3, v2 = berth.releases(app)[:2]
    assert (v3["version"], v3["status"], v3["current"]) == (3, "failed", False)
    assert v3["status_reason"] == "release command failed (exit 3)"
    assert (v2["version"], v2["status"], v2["current"]) == (2, "succeeded", True)
    table = berth.cli("releases", "-a", app).stdout
    line = next(row for row in table.splitlines() if row.startswith("v3 "))
    assert "failed" in line
    assert "release command failed (exit 3)" in line
    assert next(row for row in table.splitlines() if row.startswith("v2 ")).split()[1] == "current"
    info = berth.cli("releases:info", "v3", "-a", app).stdout
    assert "Status:        failed (release command failed (exit 3))" in info
    # the branch did not move: a clone gets the old commit
    assert repo.remote_main() == old
    assert new != old
    # nothing can roll back to it
    refused = berth.api.call("POST", f"/v1/apps/{app}/rollback", json={"version": 3})
    assert refused.status_code == 409
    assert "never went live" in refused.json()["error"]["message"]
    build = berth.builds(app)[0]
    assert (build["release"], build["error"]) == (3, "release command failed (exit 3)")
    # its image is gone (pruned after the failure); the serving one stays
    tags = {
        tag
        for image in docker_client.api.images(filters={"label": f"berth.app={app}"})
        for tag in image.get("RepoTags") or ()
    }
    assert f"berth/app-{app}:{new[:12]}" not in tags
    assert f"berth/app-{app}:{old[:12]}" in tags
    assert berth.page(app) == old_body

    # fixed: the next push is v4 (versions are never reused) and goes live
    fixed_body = f"fixed {uuid.uuid4().hex[:8]}"
    repo.commit_app(fixed_body, "release: echo fixed\n")
    pushed = repo.push()
    assert pushed.returncode == 0, pushed.stderr
    assert "remote: -----> Released v4" in pushed.stderr
    berth.serves(app, fixed_body)
    assert [r["status"] for r in berth.releases(app)[:2]] == ["succeeded", "failed"]


def test_a_release_command_over_its_time_is_stopped(
    berth: Berth, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    app = f"{PREFIX}slow"
    repo = Repo(berth, tmp_path / "slow", app)
    repo.commit_app("never served", "release: echo started-$((2*3)); sleep 600\n")
    pushed = repo.push()
    assert pushed.returncode != 0
    out = pushed.stderr
    assert "remote:        started-6" in out
    assert "remote:  !     The release command is still running after 30s:" in out
    reason = "release command did not finish within 30s and was stopped"
    assert f"[remote rejected] main -> main ({reason})" in out
    # nothing went live, nothing was scaled, the run ended and its container is gone
    assert berth.api.call("GET", f"/v1/apps/{app}").json()["release"] == 1
    assert berth.api.call("GET", f"/v1/apps/{app}/formation").json() == {}
    newest = berth.releases(app)[0]
    assert (newest["version"], newest["status"], newest["status_reason"]) == (2, "failed", reason)
    run = berth.api.call("GET", f"/v1/apps/{app}/runs").json()[0]
    assert (run["state"], run["outcome"]) == ("finished", "killed")
    assert not docker_client.api.containers(
        all=True, filters={"label": [f"berth.app={app}", "berth.process=run"]}
    )
