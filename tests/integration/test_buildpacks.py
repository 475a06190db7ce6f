"""Buildpack builds end to end, every part real: the git binary pushing the sample apps of
tests/apps/ to `berth server` (API, framework in local mode, router with HAProxy, logd), the
build running Berth's buildpacks in a container of the build stack image (the session's
`berth-test/stack-*`, conftest's `stack_build`), pip and npm fetching from their registries,
the slug laid on the run stack image, and each app answering through the router.

One `berth server` serves the module; each test uses apps of its own (prefix bp-). Builds
trust the host's CA bundle (BERTH_BUILD_CA_BUNDLE), so registries are reachable where TLS is
intercepted too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import docker
import pytest
from dulwich.repo import Repo as DulwichRepo

from berth.buildpacks.dockerfile import BuildError, Limits
from berth.buildpacks.slug import BuildpackBuilder, BuildpackOptions
from tests.support import gitrepo, images
from tests.support.gitrepo import isolated_env
from tests.support.server import ServerHarness, running
from tests.support.services import ZooKeeper
from tests.support.stackimages import StackBuild

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.zookeeper, pytest.mark.haproxy]

PREFIX = "bp-"
APPS = Path(__file__).resolve().parent.parent / "apps"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def ca_env() -> dict[str, str]:
    return {"BERTH_BUILD_CA_BUNDLE": str(HOST_CA)} if HOST_CA.is_file() else {}


class Berth(ServerHarness):
    """`berth server` building with the session's stack images and trusting the host's CA
    bundle, its tasks on ports 31850-31899."""

    def __init__(self, zk: ZooKeeper, root: Path, stack_repository: str) -> None:
        super().__init__(
            zk,
            f"/buildpacks-{uuid.uuid4().hex[:10]}",
            root,
            env={
                "BERTH_STACK_REPOSITORY": stack_repository,
                "BERTH_LOCAL_PORTS": "31850-31899",
                **ca_env(),
            },
        )

    def set_config(self, app: str, **values: str | None) -> None:
        reply = self.api.call("PATCH", f"/v1/apps/{app}/config", json=values)
        assert reply.status_code == 200, reply.text


@pytest.fixture(scope="module")
def berth(
    zookeeper: ZooKeeper,
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    stack_build: StackBuild,
) -> Iterator[Berth]:
    b = Berth(zookeeper, tmp_path_factory.mktemp("buildpacks"), stack_build.repository)
    yield from running(b)
    remove_app_images(docker_client)


def remove_app_images(client: docker.DockerClient) -> None:
    """The apps' containers and images, before the session removes the stack images they are
    made from."""
    images.remove_app_artifacts(client, PREFIX)


class Repo(gitrepo.Repo):
    """A working copy of `app` that sees nothing of this process's environment, and takes
    the sample apps of tests/apps."""

    def __init__(self, berth: Berth, path: Path, app: str) -> None:
        super().__init__(path, app, isolated_env(berth.api.url, berth.api.token))

    def commit(
        self,
        files: Mapping[str, str | bytes | None] | None = None,
        message: str = "change",
        *,
        sample: str | None = None,
    ) -> str:
        """Adds a sample app of tests/apps (if named) and `files`, commits, returns the commit."""
        if sample is not None:
            shutil.copytree(
                APPS / sample,
                self.path,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        return super().commit(files, message)


def leftovers(berth: Berth, client: docker.DockerClient, app: str) -> list[str]:
    """Scratch dirs of builds and build or slug containers of `app` still there."""
    found = [str(p) for p in (berth.data / "builds").glob("*")]
    for container in client.api.containers(all=True, filters={"label": f"berth.app={app}"}):
        labels = container.get("Labels") or {}
        if labels.get("berth.role") == "build" or "berth.task" not in labels:
            found.append(f"container {container['Id'][:12]} {container.get('Image')}")
    return found


def test_python_app_builds_as_app_and_its_second_push_uses_the_cache(
    berth: Berth, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    app = f"{PREFIX}python"
    berth.create_app(app)
    berth.set_config(app, BUILD_FLAVOUR="chocolate")  # reaches the build through ENV_DIR
    repo = Repo(berth, tmp_path / "python", app)
    commit = repo.commit(sample="python")
    pushed = repo.push()
    assert pushed.returncode == 0, pushed.stderr
    for line in (
        "-----> Building with buildpacks on berth",
        "-----> Building as app (uid 10000) on the berth-trixie stack",
        "-----> No build cache yet: this build starts one",
        "-----> Python app detected",
        "-----> Using Python 3.13",
        "Successfully installed gunicorn-23.0.0",
        f"post_compile: uid 10000, source {commit[:12]}",
        ".slugignore: 2 paths left out",
        "-----> Released v3",
    ):
        assert f"remote: {line}" in pushed.stderr or line in pushed.stderr, line
    expected = (
        f"python: gunicorn 23.0.0, built as uid 10000 at {commit[:12]} with flavour chocolate,"
        " hello from .profile.d, slugignore ok, dyno web.1, pip left out"
    )
    berth.serves(app, expected)
    release = berth.newest_release(app)
    assert release["process_types"] == {"web": "gunicorn --bind 0.0.0.0:$PORT --workers 1 app:app"}
    assert release["artifact"] == {"kind": "image", "ref": f"berth/app-{app}:{commit[:12]}"}
    assert berth.builds(app)[0]["builder"] == "buildpacks"
    cache = berth.data / "cache" / app
    assert cache.stat().st_uid == 10000
    assert (cache / "python" / "venv" / "bin" / "gunicorn").exists()
    assert (cache / "python" / "venv" / "bin" / "pip").exists()  # the build's pip stays cached

    second = repo.commit({"NOTES.txt": "the second push changes no requirement\n"})
    pushed = repo.push()
    assert pushed.returncode == 0, pushed.stderr
    assert "remote: -----> Using the build cache (" in pushed.stderr
    assert f"left by build {commit[:12]}" in pushed.stderr
    assert (
        "remote: -----> Restoring the virtualenv from the build cache (requirements.txt"
        " unchanged)" in pushed.stderr
    )
    assert "Downloading gunicorn" not in pushed.stderr
    assert "remote: -----> Requirements installed already (the cached virtualenv has them)" in (
        pushed.stderr
    )
    assert "Installing requirements with pip" not in pushed.stderr
    berth.serves(app, expected.replace(commit[:12], second[:12]))
    assert leftovers(berth, docker_client, app) == []

    # destroying the app removes its build cache with its repository
    assert berth.api.call("DELETE", f"/v1/apps/{app}").status_code == 200
    assert not cache.exists()
    assert not (berth.data / "repos" / f"{app}.git").exists()


@pytest.mark.parametrize(
    ("sample", "detected", "web", "body"),
    [
        ("nodejs", "Node.js", "node server.js", "node: 90 seconds is 2m, NODE_ENV production"),
        ("go", "Go", "bin/hello", "go: hello from LINUX"),
        ("static", "Static site", "python3 /app/.berth/static.py", "static: hello"),
        ("procfile", "Procfile", "python3 serve.py", "procfile: hello from web.1"),
    ],
)
def test_each_kind_of_app_serves_its_own_body(
    berth: Berth, tmp_path: Path, sample: str, detected: str, web: str, body: str
) -> None:
    app = f"{PREFIX}{sample}"
    berth.create_app(app)
    repo = Repo(berth, tmp_path / sample, app)
    repo.commit(sample=sample)
    pushed = repo.push()
    assert pushed.returncode == 0, pushed.stderr
    assert f"remote: -----> {detected} app detected" in pushed.stderr
    assert "remote: -----> Released v2" in pushed.stderr
    berth.serves(app, body)
    assert berth.newest_release(app)["process_types"] == {"web": web}
    if sample == "nodejs":
        assert "Installing dependencies with npm install (no lockfile)" in pushed.stderr
        # package.json unchanged: node_modules (with ms) comes from the cache, npm is not run
        repo.commit({"NOTES.txt": "no dependency changed\n"})
        pushed = repo.push()
        assert pushed.returncode == 0, pushed.stderr
        assert "remote: -----> Dependencies installed already (package.json and the lockfile" in (
            pushed.stderr
        )
        assert "Installing dependencies" not in pushed.stderr
        berth.serves(app, body)
        # package.json changed: npm runs again
        package = json.loads((repo.path / "package.json").read_text())
        repo.commit({"package.json": json.dumps({**package, "description": "changed"})})
        pushed = repo.push()
        assert pushed.returncode == 0, pushed.stderr
        assert "Installing dependencies with npm install (no lockfile)" in pushed.stderr
        berth.serves(app, body)
    if sample == "go":  # symbols and DWARF left out unless GO_BUILD_FLAGS says otherwise
        assert "Running go build -mod=mod -trimpath -ldflags=-s -w -o bin/ ./..." in pushed.stderr
        # no Go source changed: go build finds the cached program up to date and links nothing
        repo.commit({"NOTES.txt": "no Go source changed\n"})
        pushed = repo.push()
        assert pushed.returncode == 0, pushed.stderr
        assert "remote:        Up to date, not linked again: hello" in pushed.stderr
        berth.serves(app, body)
        # a changed program is linked again
        main = (repo.path / "main.go").read_text()
        repo.commit({"main.go": main.replace("hello from", "hello again from")})
        pushed = repo.push()
        assert pushed.returncode == 0, pushed.stderr
        assert "not linked again" not in pushed.stderr
        berth.serves(app, body.replace("hello from", "hello again from"))
    if sample == "static":  # static.json: clean URLs and headers
        about = berth.serves(app, "static: about", "/about")
        assert about.headers["X-Berth-Static"] == "yes"
        assert berth.get(f"{app}.localhost", "/Procfile-or-anything").status_code == 404


def test_buildpacks_file_and_buildpack_url_choose_the_buildpacks(
    berth: Berth, tmp_path: Path
) -> None:
    app = f"{PREFIX}multi"
    berth.create_app(app)
    repo = Repo(berth, tmp_path / "multi", app)
    repo.commit(sample="multi")  # .buildpacks: python, then procfile
    pushed = repo.push()
    assert pushed.returncode == 0, pushed.stderr
    assert "remote: -----> Python app (buildpack python, as configured)" in pushed.stderr
    assert "remote: -----> Procfile app (buildpack procfile, as configured)" in pushed.stderr
    assert "remote:        Buildpacks: python, procfile" in pushed.stderr
    berth.serves(app, "multi: running in /app/.venv, no MULTI")  # python's virtualenv

    # pushed again: the virtualenv comes from the cache (without pip: no pip run, no
    # post_compile) and still runs the app
    repo.commit({"NOTES.txt": "nothing to install either\n"})
    pushed = repo.push()
    assert pushed.returncode == 0, pushed.stderr
    assert "remote: -----> Requirements installed already" in pushed.stderr
    berth.serves(app, "multi: running in /app/.venv, no MULTI")

    # BUILDPACK_URL wins over .buildpacks; a buildpack Berth would have to fetch is refused
    berth.set_config(app, BUILDPACK_URL="https://example.com/custom-buildpack.git")
    version = berth.newest_release(app)["version"]
    repo.commit({"NOTES.txt": "refused\n"})
    pushed = repo.push()
    assert pushed.returncode != 0
    assert "'https://example.com/custom-buildpack.git' is not a buildpack Berth has" in (
        pushed.stderr
    )
    assert "[remote rejected] main -> main (build failed:" in pushed.stderr
    assert berth.newest_release(app)["version"] == version

    # BUILDPACK_URL set: buildpacks build the app even though it now has a Dockerfile
    berth.set_config(app, BUILDPACK_URL="heroku/procfile", MULTI="set by config")
    repo.commit({"Dockerfile": "FROM no-such-image:1\n", "Procfile": "web: python3 web.py\n"})
    pushed = repo.push()
    assert pushed.returncode == 0, pushed.stderr
    assert "Building with the Dockerfile" not in pushed.stderr
    assert "remote: -----> Procfile app (buildpack procfile, as configured)" in pushed.stderr
    berth.serves(app, "multi: running in /usr, set by config")


def test_builds_that_cannot_work_fail_clearly_and_leave_nothing(
    berth: Berth, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    app = f"{PREFIX}refuse"
    berth.create_app(app)
    repo = Repo(berth, tmp_path / "refuse", app)

    repo.commit({"README": "nothing to build\n"})
    pushed = repo.push()
    assert pushed.returncode != 0
    assert "no buildpack detected: Berth builds a Dockerfile at the repository's root" in (
        pushed.stderr
    )
    for supported in ("Python (requirements.txt", "Node.js (package.json)", "Go (go.mod)"):
        assert supported in pushed.stderr
    assert "static sites (static.json or index.html) and Procfile-only apps" in pushed.stderr

    repo.commit({"requirements.txt": "\n", ".python-version": "3.12\n"})
    pushed = repo.push()
    assert pushed.returncode != 0
    assert ".python-version asks for Python 3.12, but this stack has only Python 3.13" in (
        pushed.stderr
    )
    assert "[remote rejected] main -> main (build failed: the buildpack failed:" in pushed.stderr

    repo.git("rm", "-q", "requirements.txt", ".python-version")
    repo.commit(
        {
            "go.mod": "module example.com/needs\n\ngo 1.22\n\n"
            "require github.com/pkg/errors v0.9.1\n",
            "main.go": 'package main\n\nimport "github.com/pkg/errors"\n\n'
            'func main() { _ = errors.New("x") }\n',
        }
    )
    pushed = repo.push()
    assert pushed.returncode != 0
    assert "go build could not download a module through GOPROXY=" in pushed.stderr
    assert "go mod vendor" in pushed.stderr

    assert berth.newest_release(app)["version"] == 1
    assert [b["status"] for b in berth.builds(app)] == ["failed"] * 3
    assert leftovers(berth, docker_client, app) == []


def test_a_build_over_its_timeout_is_stopped_and_leaves_nothing(
    tmp_path: Path, docker_client: docker.DockerClient, stack_build: StackBuild
) -> None:
    """The builder alone (no server): a post_compile step that never ends is killed at the
    timeout; no container of the build and no scratch stay."""
    work = tmp_path / "src"
    work.mkdir()
    (work / "requirements.txt").write_text("\n")
    (work / "bin").mkdir()
    (work / "bin" / "post_compile").write_text("echo waiting-forever\nsleep 600\n")
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
    }
    for args in (("init", "-q", "-b", "main"), ("add", "-A"), ("commit", "-q", "-m", "x")):
        subprocess.run(["git", *args], cwd=work, env=env, check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True, check=True
    ).stdout.strip()
    build_id = uuid.uuid4().hex[:12]
    builder = BuildpackBuilder(
        tmp_path / "data",
        limits=Limits(timeout=15),
        options=BuildpackOptions(
            stack_repository=stack_build.repository,
            ca_bundle=HOST_CA if HOST_CA.is_file() else None,
        ),
    )
    lines: list[str] = []
    with DulwichRepo(str(work)) as repo, pytest.raises(BuildError, match="longer than 15s"):
        builder.build(repo, f"{PREFIX}timeout", commit, build_id, lines.append)
    assert "       waiting-forever" in lines
    assert list((tmp_path / "data" / "builds").iterdir()) == []
    assert (
        docker_client.api.containers(all=True, filters={"label": f"berth.build={build_id}"}) == []
    )
