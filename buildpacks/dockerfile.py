"""Dockerfile builds: a pushed commit that has a `Dockerfile` at its root becomes an image, built
by the Docker engine through the Docker SDK, its log streamed line by line to the caller.

The commit is checked out from the bare repository with dulwich into a scratch directory
(regular files, executables and symlinks as symlinks; submodules skipped; every name checked,
so no entry can reach outside the directory), which is removed whatever happens. The engine
builds it with `pull=False` (there is no registry: a Dockerfile's FROM must name an image this
engine has), memory and CPU limits on the build's containers, intermediate containers removed
even on failure, and an overall timeout (default 15 minutes). The image is tagged
`berth/app-<app>:<commit 12>` and labelled with the app, commit and build id.

What the release runs: the image's own ENTRYPOINT/CMD is the `web` process (an empty command,
which the framework takes as "the image's CMD"); a `Procfile` at the root, if present, adds the
other process types (and may override `web`). EXPOSEd ports are reported: Berth gives each
process its port in `PORT`, so the app must listen there.

Runs in the calling thread (a push's build thread in `berth api`). Imports berth.framework
only; never berth.api, cli, executor or router, nor flask or kazoo.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
import urllib3.exceptions
from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo

from berth.framework.errors import BerthError
from berth.framework.model import PROCESS_TYPE

DOCKERFILE = "Dockerfile"
PROCFILE = "Procfile"
IMAGE_REPOSITORY = "berth/app-"
MAX_PROCFILE_BYTES = 64 * 1024
MAX_COMMAND_CHARS = 4096
SUPPORTED = "a Dockerfile at the repository's root"
_PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")


class BuildError(BerthError):
    """The build did not produce an image: no Dockerfile, a failing step, a timeout."""

    status = 422
    code = "build_failed"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one build may use: memory (its containers get no swap beyond it), a CPU weight
    (Docker's cpu-shares; 1024 is a normal container's, so builds yield to running apps when
    the CPUs are busy), and wall time."""

    memory_mb: int = 2048
    cpu_shares: int = 512
    timeout: float = 15 * 60.0


def web_port(exposed: tuple[str, ...]) -> int | None:
    """The port web listens on, from EXPOSE entries like `8000/tcp`: the lowest TCP one."""
    ports = []
    for entry in exposed:
        number, _, proto = entry.partition("/")
        if number.isdigit() and proto in ("", "tcp") and 1 <= int(number) <= 65535:
            ports.append(int(number))
    return min(ports, default=None)


@dataclass(frozen=True, slots=True)
class Built:
    image: str  # the tag, berth/app-<app>:<commit12>
    image_id: str
    process_types: dict[str, str] = field(default_factory=dict)
    exposed: tuple[str, ...] = ()
    port: int | None = None  # the EXPOSEd port web listens on (web_port), None: $PORT
    builder: str = "dockerfile"  # which builder made it: "dockerfile" or "buildpacks"


def image_tag(app: str, commit: str) -> str:
    return f"{IMAGE_REPOSITORY}{app}:{commit[:12]}"


def parse_procfile(text: str) -> dict[str, str]:
    """`TYPE: command` lines → {type: command}. Blank lines and `#` comments are skipped; a
    bad line, a bad type name or a type given twice is a BuildError naming the line."""
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _PROCFILE_LINE.fullmatch(line)
        if not match:
            raise BuildError(f"Procfile line {number}: expected 'TYPE: command'")
        ptype, command = match.group(1), match.group(2).strip()
        if not PROCESS_TYPE.fullmatch(ptype):
            raise BuildError(
                f"Procfile line {number}: process type {ptype[:40]!r} must be lowercase letters,"
                " digits, '-' and '_', starting with a letter, at most 30 characters"
            )
        if ptype in found:
            raise BuildError(f"Procfile line {number}: process type {ptype} is given twice")
        if len(command) > MAX_COMMAND_CHARS:
            raise BuildError(f"Procfile line {number}: command over {MAX_COMMAND_CHARS} chars")
        found[ptype] = command
    return found


def process_types(procfile: dict[str, str], has_command: bool) -> dict[str, str]:
    """The release's process types: `web` runs the image's own command ("") unless the
    Procfile names one; the Procfile's other types are added, `release` among them (the
    release phase: api/releasephase.py runs it once before the release goes live)."""
    types = dict(procfile)
    if "web" not in types:
        if not has_command:
            raise BuildError(
                "the image has no CMD or ENTRYPOINT and the Procfile names no web process:"
                " add a CMD to the Dockerfile"
            )
        types["web"] = ""
    return types


def _safe_name(name: bytes) -> str:
    text = name.decode("utf-8", errors="surrogateescape")
    if text in ("", ".", "..", ".git") or "/" in text or "\0" in text:
        raise BuildError(f"the commit has an entry named {text[:60]!r}, which is not allowed")
    return text


def checkout(repo: Repo, tree_id: bytes, dest: Path) -> int:
    """Write the tree's files under `dest` (which exists and is empty); returns how many.
    Names are checked one by one (no `..`, `/`, `.git`), so nothing lands outside `dest`;
    a symlink is written as a symlink and never followed; submodules are skipped."""
    count = 0
    stack: list[tuple[bytes, Path]] = [(tree_id, dest)]
    while stack:
        current, where = stack.pop()
        tree = repo[current]
        if not isinstance(tree, Tree):
            raise BuildError("the commit's tree is damaged")
        for entry in tree.iteritems():
            name, mode, sha = entry.path, entry.mode, entry.sha
            assert name is not None
            assert mode is not None
            assert sha is not None
            target = where / _safe_name(name)
            if stat.S_ISDIR(mode):
                target.mkdir()
                stack.append((sha, target))
            elif stat.S_ISLNK(mode):
                blob = repo[sha]
                assert isinstance(blob, Blob)
                os.symlink(blob.as_raw_string(), target)
                count += 1
            elif stat.S_ISREG(mode):
                blob = repo[sha]
                assert isinstance(blob, Blob)
                fd = os.open(
                    target,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                    0o755 if mode & 0o111 else 0o644,
                )
                with os.fdopen(fd, "wb") as f:
                    for chunk in blob.chunked:
                        f.write(chunk)
                count += 1
            # else: a gitlink (submodule): its commit is not in this repository
    return count


def _root_file(repo: Repo, tree_id: bytes, name: str, limit: int) -> bytes | None:
    tree = repo[tree_id]
    assert isinstance(tree, Tree)
    try:
        mode, sha = tree[name.encode()]
    except KeyError:
        return None
    if not stat.S_ISREG(mode):
        return None
    blob = repo[sha]
    assert isinstance(blob, Blob)
    data = blob.as_raw_string()
    if len(data) > limit:
        raise BuildError(f"{name} is over {limit // 1024} KiB")
    return data


def has_dockerfile(repo: Repo, commit: str) -> bool:
    return _root_file(repo, _tree_of(repo, commit), DOCKERFILE, 1 << 20) is not None


def _tree_of(repo: Repo, commit: str) -> bytes:
    obj = repo[commit.encode()]
    if not isinstance(obj, Commit):
        raise BuildError(f"{commit[:12]} is not a commit")
    tree: bytes = obj.tree
    return tree


@contextlib.contextmanager
def _scratch(root: Path | None) -> Iterator[Path]:
    if root is not None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="build-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _lines(chunk: dict[str, Any]) -> list[str]:
    text = chunk.get("stream") or chunk.get("status") or ""
    return [line for line in str(text).replace("\r", "\n").split("\n") if line.strip()]


class DockerfileBuilder:
    """Builds one commit with the Docker engine. `client` makes a Docker SDK client with the
    given socket timeout (tests and `berth api` pass `docker.from_env`-like factories)."""

    builder = "dockerfile"

    def __init__(
        self,
        client: Callable[[float], docker.DockerClient] | None = None,
        limits: Limits | None = None,
        scratch_root: Path | None = None,
    ) -> None:
        self._client = client or (lambda timeout: docker.from_env(timeout=int(timeout) + 1))
        self.limits = limits or Limits()
        self._scratch_root = scratch_root

    def build(
        self,
        repo: Repo,
        app: str,
        commit: str,
        build_id: str,
        emit: Callable[[str], None],
    ) -> Built:
        tree = _tree_of(repo, commit)
        if _root_file(repo, tree, DOCKERFILE, 1 << 20) is None:
            raise BuildError(f"no way to build this commit: Berth builds {SUPPORTED}")
        raw_procfile = _root_file(repo, tree, PROCFILE, MAX_PROCFILE_BYTES)
        procfile = parse_procfile(raw_procfile.decode(errors="replace")) if raw_procfile else {}
        tag = image_tag(app, commit)
        started = time.monotonic()
        emit("-----> Building with the Dockerfile")
        with _scratch(self._scratch_root) as scratch:
            context = scratch / "src"
            context.mkdir()
            files = checkout(repo, tree, context)
            emit(f"       {files} files at {commit[:12]}")
            image_id = self._docker_build(context, app, commit, build_id, tag, emit, started)
        client = self._client(60.0)
        try:
            config = client.api.inspect_image(image_id).get("Config") or {}
        finally:
            client.close()
        has_command = bool(config.get("Cmd") or config.get("Entrypoint"))
        types = process_types(procfile, has_command)
        exposed = tuple(sorted(config.get("ExposedPorts") or {}))
        port = web_port(exposed)
        if port is not None:
            emit(
                f"       The image EXPOSEs {', '.join(exposed)}: web listens on {port}"
                " (PORT is set to it)"
            )
        elif exposed:
            emit(
                f"       The image EXPOSEs {', '.join(exposed)}, no TCP port: each process"
                " listens on $PORT"
            )
        emit(f"       Process types: {', '.join(sorted(types))}")
        emit(f"-----> Built {tag} in {time.monotonic() - started:.1f}s")
        return Built(image=tag, image_id=image_id, process_types=types, exposed=exposed, port=port)

    def _docker_build(
        self,
        context: Path,
        app: str,
        commit: str,
        build_id: str,
        tag: str,
        emit: Callable[[str], None],
        started: float,
    ) -> str:
        limits = self.limits
        deadline = started + limits.timeout
        # The socket timeout bounds a step that prints nothing; the loop bounds the rest.
        # Either way the connection is closed, and the engine cancels a build whose client
        # went away (stopping the step's container).
        client = self._client(limits.timeout)
        stream = None
        image_id = ""
        try:
            stream = client.api.build(
                path=str(context),
                tag=tag,
                pull=False,
                rm=True,
                forcerm=True,
                decode=True,
                labels={"berth.app": app, "berth.commit": commit, "berth.build": build_id},
                container_limits={
                    "memory": limits.memory_mb * 1024 * 1024,
                    "memswap": limits.memory_mb * 1024 * 1024,
                    "cpushares": limits.cpu_shares,
                },
                timeout=int(limits.timeout) + 1,
            )
            for chunk in stream:
                if "error" in chunk:
                    detail = str(chunk.get("error") or "").strip().splitlines() or ["?"]
                    for line in detail[:-1]:
                        emit(f" !     {line}")
                    raise BuildError(f"the Docker build failed: {detail[-1]}")
                aux = chunk.get("aux")
                if isinstance(aux, dict) and aux.get("ID"):
                    image_id = str(aux["ID"])
                for line in _lines(chunk):
                    emit(f"       {line}")
                if time.monotonic() > deadline:
                    raise BuildError(self._timed_out())
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
            if time.monotonic() >= deadline - 1:
                raise BuildError(self._timed_out()) from None
            raise BuildError("lost the connection to the Docker engine during the build") from None
        except docker.errors.APIError as exc:
            raise BuildError(f"the Docker engine refused the build: {exc.explanation}") from None
        finally:
            if stream is not None:
                stream.close()
            client.close()
        if not image_id:
            raise BuildError("the Docker build ended without an image")
        return image_id

    def _timed_out(self) -> str:
        return f"the build took longer than {self.limits.timeout:.0f}s and was stopped"
