"""`git push` end to end, every part real: the git binary, `berth api` (the smart HTTP
receiver and the build queue), the Docker engine building the Dockerfile, `berth framework` in
local mode running the release, `berth router` with its HAProxy answering for APP.localhost.
Git gets the token from `berth git:credentials`, set up by `berth git:remote`.

One Berth serves the whole module (its API with a 1 MiB pack limit, to test the refusal); each
test uses apps of its own."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo as DulwichRepo

from berth.api.builds import BuildSettings, Outcome, Pipeline, Push
from berth.buildpacks.dockerfile import BuildError, Built, DockerfileBuilder, Limits
from berth.cli.gitremote import helper_command
from berth.framework.sealing import Sealer, load_or_create_key
from berth.framework.settings import make_settings
from berth.framework.state import Store
from tests.support import gitrepo, images, waiting
from tests.support.gitrepo import dockerfile_app, isolated_env
from tests.support.server import SplitHarness, running
from tests.support.services import ZooKeeper

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.zookeeper, pytest.mark.haproxy]


class Berth(SplitHarness):
    """`berth api` refusing packs over 1 MiB, `berth framework` running tasks on ports
    31500-31549, and `berth router`, in a chroot of their own."""

    def __init__(self, zk: ZooKeeper, root: Path) -> None:
        super().__init__(
            zk,
            f"/git-{uuid.uuid4().hex[:10]}",
            root,
            "31500-31549",
            api_env={"BERTH_GIT_MAX_PACK_MB": "1"},
        )


@pytest.fixture(scope="module")
def berth(
    zookeeper: ZooKeeper,
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    test_image: str,
) -> Iterator[Berth]:
    yield from running(Berth(zookeeper, tmp_path_factory.mktemp("git-push")))
    images.remove_app_artifacts(docker_client, "gp-")


class Repo(gitrepo.Repo):
    """A working copy of `app` that sees nothing of this process's environment; git pushes
    with `token` (the admin's by default), `berth git:remote` runs with the admin's."""

    def __init__(self, berth: Berth, path: Path, app: str, token: str | None = None) -> None:
        env = isolated_env(berth.api.url, token or berth.api.token)
        super().__init__(path, app, env, remote_token=berth.api.token)


def test_push_builds_releases_and_a_failing_build_keeps_the_old_release(
    berth: Berth, tmp_path: Path
) -> None:
    app = "gp-hello"
    berth.create_app(app)
    repo = Repo(berth, tmp_path / "hello", app)
    # the token is in neither the remote URL nor the repository's config
    config = (repo.path / ".git" / "config").read_text()
    assert berth.api.token not in config
    assert f"{berth.api.url}/git/{app}.git" in config

    first = f"hello v1 {uuid.uuid4().hex[:8]}"
    commit = repo.commit(dockerfile_app(first))
    pushed = repo.push()
    assert pushed.returncode == 0, pushed.stderr
    assert "remote: -----> Building with the Dockerfile" in pushed.stderr
    assert f"remote: -----> Released v2, http://{app}.localhost/" in pushed.stderr
    berth.serves(app, first)
    release = berth.newest_release(app)
    assert release["description"] == f"Deploy {commit[:7]} (git push)"
    assert release["created_by"].endswith(")")  # the token's description and id
    assert release["artifact"] == {"kind": "image", "ref": f"berth/app-{app}:{commit[:12]}"}
    assert release["process_types"] == {"web": ""}  # the image's own CMD
    assert berth.api.call("GET", f"/v1/apps/{app}/formation").json() == {"web": 1}

    # v2 listens on the port its Dockerfile EXPOSEs, not on $PORT: Berth publishes that one
    second = f"hello v2 {uuid.uuid4().hex[:8]}"
    exposed: dict[str, str | bytes] = {
        "Dockerfile": "FROM berth-test/busybox:1\nCOPY index.html /www/index.html\n"
        "EXPOSE 8000\nCMD httpd -f -p 8000 -h /www\n",
        "index.html": second + "\n",
    }
    repo.commit(exposed)
    pushed = repo.push()
    assert pushed.returncode == 0, pushed.stderr
    assert "remote:        The image EXPOSEs 8000/tcp: web listens on 8000" in pushed.stderr
    assert "remote: -----> Released v3" in pushed.stderr
    berth.serves(app, second)
    assert berth.newest_release(app)["artifact"]["port"] == 8000

    broken = repo.commit(dockerfile_app("never served", extra="RUN echo fail-$((2+3)) && false\n"))
    pushed = repo.push()
    assert pushed.returncode != 0
    assert "fail-5" in pushed.stderr
    assert "[remote rejected] main -> main (build failed:" in pushed.stderr
    assert berth.newest_release(app)["version"] == 3
    assert berth.get(f"{app}.localhost").text.strip() == second

    listed = berth.builds(app)
    assert [b["status"] for b in listed] == ["failed", "succeeded", "succeeded"]
    assert listed[0]["commit"] == broken
    assert listed[0]["release"] is None
    assert listed[1]["release"] == 3
    assert listed[1]["builder"] == "dockerfile"
    assert "log" not in listed[0]
    shown = berth.cli("builds:info", listed[0]["id"], "-a", app).stdout
    assert "Status:" in shown
    assert "failed" in shown
    assert "fail-5" in shown  # the log
    info = json.loads(berth.cli("builds:info", listed[1]["id"], "-a", app, "--json").stdout)
    assert "-----> Released v3" in info["log"]
    assert berth.api.call("GET", f"/v1/apps/{app}/builds/nope").status_code == 422
    missing = berth.api.call("GET", f"/v1/apps/{app}/builds/000000000000")
    assert missing.status_code == 404
    assert "has no build" in missing.json()["error"]["message"]
    assert info["duration"] > 0

    # the app's repository can be cloned; the refused commit is not on main
    clone = tmp_path / "clone"
    done = subprocess.run(
        [
            "git",
            "-c",
            f"credential.{berth.api.url}.helper={helper_command()}",
            "clone",
            "-q",
            f"{berth.api.url}/git/{app}.git",
            str(clone),
        ],
        env=repo.env,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (clone / "index.html").read_text().strip() == second


def test_build_output_arrives_while_the_build_runs(
    berth: Berth, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """The build waits for a file the test creates only after git printed an earlier line:
    the push can finish only if that line came through while the build was still running."""
    app = "gp-live"
    berth.create_app(app)
    repo = Repo(berth, tmp_path / "live", app)
    gate = f"/tmp/go-{uuid.uuid4().hex[:8]}"
    wait = (
        f"RUN echo live-$((40+2)) && while [ ! -e {gate} ]; do sleep 0.1; done"
        " && echo gate-$((6*7))-opened\n"
    )
    repo.commit(dockerfile_app("live", extra=wait))
    process = subprocess.Popen(
        ["git", "push", "berth", "main"],
        cwd=repo.path,
        env=repo.env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stderr is not None
        for raw in iter(lambda: process.stderr.readline(), b""):  # type: ignore[union-attr]
            for part in raw.decode(errors="replace").replace("\r", "\n").splitlines():
                lines.put(part)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []

    def saw(text: str) -> bool:
        while not lines.empty():
            seen.append(lines.get())
        return any(text in line for line in seen)

    waiting.wait_for(lambda: saw("live-42"), 120)
    assert not saw("gate-42-opened")
    assert process.poll() is None  # still building: the line came live

    def step_container() -> str | None:
        for container in docker_client.api.containers(filters={"status": "running"}):
            if gate in container.get("Command", ""):
                return str(container["Id"])
        return None

    step = waiting.wait_for(step_container, 30)
    exec_id = docker_client.api.exec_create(step, ["sh", "-c", f": > {gate}"])
    docker_client.api.exec_start(exec_id)
    assert process.wait(300) == 0, "\n".join(seen)
    reader.join(10)
    assert process.stderr is not None
    process.stderr.close()
    assert saw("gate-42-opened")
    assert saw("remote: -----> Released v2")
    berth.serves(app, "live")


def test_a_release_that_never_starts_fails_the_push(berth: Berth, tmp_path: Path) -> None:
    """The image builds but its web process exits at once: the framework rolls back to the
    release still serving, and the push, which waits for the new release, says so and fails."""
    app = "gp-crash"
    berth.create_app(app)
    repo = Repo(berth, tmp_path / "crash", app)
    body = f"steady {uuid.uuid4().hex[:8]}"
    repo.commit(dockerfile_app(body))
    assert repo.push().returncode == 0
    berth.serves(app, body)

    repo.commit({"Dockerfile": "FROM berth-test/busybox:1\nCMD echo crashing; exit 3\n"}, "crash")
    pushed = repo.push()
    assert pushed.returncode != 0
    assert "remote: -----> Release v3 made" in pushed.stderr
    assert "v3 is no longer the newest release: v4 (Rollback to v2" in pushed.stderr
    assert "[remote rejected] main -> main" in pushed.stderr
    assert berth.get(f"{app}.localhost").text.strip() == body
    builds = berth.builds(app)
    assert builds[0]["release"] == 3
    assert "no longer the newest" in builds[0]["error"]


def test_refusals(berth: Berth, tmp_path: Path) -> None:
    app = "gp-refuse"
    berth.create_app(app)
    repo = Repo(berth, tmp_path / "refuse", app)
    repo.commit({"README": "no Dockerfile here\n"})

    # nothing to build: the error names what is supported; nothing is released
    pushed = repo.push()
    assert pushed.returncode != 0
    assert "a Dockerfile" in pushed.stderr
    assert "buildpacks" in pushed.stderr
    assert "[remote rejected] main -> main" in pushed.stderr
    assert berth.newest_release(app)["version"] == 1

    # another branch: refused with the hint
    repo.git("checkout", "-q", "-b", "dev")
    pushed = repo.push("dev")
    assert pushed.returncode != 0
    assert "git push berth HEAD:main" in pushed.stderr

    # over the pack size limit (1 MiB in this module)
    repo.commit({"blob.bin": os.urandom(2 * 1024 * 1024)})
    pushed = repo.push("HEAD:main")
    assert pushed.returncode != 0
    assert "over the 1 MiB limit" in pushed.stderr

    # a bad token: git says authentication failed
    bad = Repo(berth, tmp_path / "bad", app, token="berth_000000000000_" + "A" * 43)
    bad.commit(dockerfile_app("x"))
    pushed = bad.push()
    assert pushed.returncode != 0
    assert "Authentication failed" in pushed.stderr

    # an unknown app: the API's message, then git's own
    repo.git("remote", "set-url", "berth", f"{berth.api.url}/git/gp-ghost.git")
    pushed = repo.push("HEAD:main")
    assert pushed.returncode != 0
    assert "remote: no app named gp-ghost" in pushed.stderr
    assert "not found" in pushed.stderr
    assert berth.newest_release(app)["version"] == 1

    # destroying the app removes its repository
    repository = berth.data / "repos" / f"{app}.git"
    assert repository.is_dir()
    assert berth.api.call("DELETE", f"/v1/apps/{app}").status_code == 200
    assert not repository.exists()


def _repo_with(path: Path, files: dict[str, bytes]) -> tuple[DulwichRepo, str]:
    repo = DulwichRepo.init_bare(str(path), mkdir=True)
    tree = Tree()
    for name, data in files.items():
        blob = Blob.from_string(data)
        repo.object_store.add_object(blob)
        tree.add(name.encode(), 0o100644, blob.id)
    repo.object_store.add_object(tree)
    commit = Commit()
    commit.tree = tree.id
    commit.author = commit.committer = b"Test <test@example.com>"
    commit.author_time = commit.commit_time = 0
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = b"test"
    repo.object_store.add_object(commit)
    return repo, commit.id.decode()


@pytest.mark.parametrize("step", ["while true; do echo tick; sleep 0.2; done", "sleep 600"])
def test_a_build_over_its_timeout_is_stopped_and_leaves_nothing(
    tmp_path: Path, docker_client: docker.DockerClient, test_image: str, step: str
) -> None:
    """A chatty step (the deadline is checked between lines) and a silent one (the socket's
    timeout ends the wait): either way the connection closes, the engine stops the step's
    container, and the scratch directory is gone."""
    marker = uuid.uuid4().hex[:8]
    repo, commit = _repo_with(
        tmp_path / "r.git",
        {"Dockerfile": f"FROM {test_image}\nRUN : {marker} && {step}\n".encode()},
    )
    scratch = tmp_path / "scratch"
    builder = DockerfileBuilder(limits=Limits(timeout=3), scratch_root=scratch)
    lines: list[str] = []
    with pytest.raises(BuildError, match="longer than 3s"):
        builder.build(repo, "gp-timeout", commit, "0123456789ab", lines.append)
    repo.close()
    assert list(scratch.iterdir()) == []

    def step_gone() -> bool:
        # the low-level list: one call, no inspect of a container that may be gone meanwhile
        for container in docker_client.api.containers(all=True):
            if marker in container.get("Command", ""):
                return container.get("State") not in ("running", "created")
        return True

    waiting.wait_for(step_gone, 60)


class GatedBuilder:
    """A builder that reports when a build starts and finishes only when the test opens that
    app's gate: the queue's order made visible, without timing anything."""

    builder = "gated"

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gates: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def gate(self, app: str) -> threading.Event:
        with self._lock:
            return self.gates.setdefault(app, threading.Event())

    def build(self, repo: DulwichRepo, app: str, commit: str, build_id: str, emit: Any) -> Built:
        with self._lock:
            self.started.append(f"{app}@{commit[:4]}")
        emit(f"building {app}")
        assert self.gate(app).wait(120)
        return Built(image=f"berth/app-{app}:x", image_id="x", process_types={"worker": "w"})


def test_pushes_to_one_app_queue_and_other_apps_build_in_parallel_up_to_the_limit(
    zookeeper: ZooKeeper, chroot: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, f"{zookeeper.hosts}{chroot}", ":7070", "localhost")
    store = Store(settings.zk_hosts, settings.zk_chroot, Sealer(load_or_create_key(tmp_path)))
    store.start()
    try:
        builder = GatedBuilder()
        pipeline = Pipeline(store, settings, BuildSettings(concurrency=2), builder)
        for app in ("gq-a", "gq-b", "gq-c"):
            store.create_app(app, "test")
            DulwichRepo.init_bare(str(tmp_path / f"{app}.git"), mkdir=True).close()

        def push(app: str, new: str) -> Push:
            return Push(app, "refs/heads/main", "0" * 40, new * 40, "test", tmp_path / f"{app}.git")

        outputs: dict[str, list[Any]] = {}

        def run(name: str, p: Push) -> threading.Thread:
            outputs[name] = []
            thread = threading.Thread(
                target=lambda: outputs[name].extend(x for x in pipeline.stream(p) if x)
            )
            thread.start()
            return thread

        a1 = run("a1", push("gq-a", "1"))
        waiting.wait_for(lambda: builder.started == ["gq-a@1111"])
        b1 = run("b1", push("gq-b", "2"))
        waiting.wait_for(lambda: "gq-b@2222" in builder.started)
        c1 = run("c1", push("gq-c", "3"))
        a2 = run("a2", push("gq-a", "4"))  # pushed from the same old state as a1
        waiting.wait_for(lambda: any("Waiting for a build slot" in str(x) for x in outputs["c1"]))
        waiting.wait_for(lambda: any("Another push to gq-a" in str(x) for x in outputs["a2"]))
        assert sorted(builder.started) == ["gq-a@1111", "gq-b@2222"]  # two at once, no more

        builder.gate("gq-b").set()
        b1.join(60)
        waiting.wait_for(lambda: "gq-c@3333" in builder.started)  # b's slot went to c
        builder.gate("gq-c").set()
        builder.gate("gq-a").set()
        for thread in (a1, c1, a2):
            thread.join(60)
        results = {name: out[-1] for name, out in outputs.items()}
        assert all(isinstance(r, Outcome) for r in results.values())
        assert results["a1"].ok
        assert results["b1"].ok
        assert results["c1"].ok
        assert results["b1"].release == 2
        # a2 waited for a1, then found main moved: nothing built, nothing released
        assert not results["a2"].ok
        assert "fetch, then push again" in results["a2"].message
        assert builder.started.count("gq-a@4444") == 0
        assert store.get_app("gq-a").release == 2
        with DulwichRepo(str(tmp_path / "gq-a.git")) as repo:
            assert repo.head() == b"1" * 40  # HEAD names main, which moved to a1's commit
        builds = store.list_builds("gq-a")
        assert [b.status for b in builds] == ["succeeded"]
        assert "building gq-a" in store.get_build("gq-a", builds[0].id).log
    finally:
        store.stop()
