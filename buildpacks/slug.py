"""Buildpack builds: a pushed commit without a Dockerfile (or with `BUILDPACK_URL` set) becomes
an image the Heroku way — buildpacks compile the source into a slug (/app) in a container of
the build stack image, and the slug is laid on the run stack image.

Choosing: `AppBuilder` sends a commit with a root `Dockerfile` to DockerfileBuilder unless the
app's config has `BUILDPACK_URL`; everything else comes here. The buildpacks are Berth's own
(the folders beside this module, Heroku's buildpack API: `bin/detect`, `bin/compile BUILD_DIR
CACHE_DIR ENV_DIR`, `bin/release`): python, nodejs, go, static and procfile, detected in that
order. `BUILDPACK_URL` (one) or a root `.buildpacks` file (several, run in order; the last
one's `release` wins) name them — by name, as `heroku/<name>`, or as the URL of Heroku's own
buildpack for the language; other URLs are refused, since builds fetch no buildpack code.

One build: the commit is checked out (dockerfile.checkout) into a scratch dir under
DATA_DIR/builds, `.slugignore` applied; a container of `berth/stack-build:<tag>` is created as
the user `app` (10000:10000) with every capability dropped, no-new-privileges, the build memory
limit (no swap beyond it), CPU weight and a pids limit; the source (→ /app, owned by app), the
buildpacks (→ /opt/berth/buildpacks, root's, read-only to the build) and the config vars
(ENV_DIR = /tmp/berth/env, one file per var) are copied in with one put_archive (each
costs ~0.1 s); the app's cache dir DATA_DIR/cache/<app> (owned by 10000) is bind-mounted at
/cache (CACHE_DIR). `lib/build.sh` runs the buildpacks; its output is streamed to `emit` line
by line as it comes; a timer kills the container at the build timeout. Then /app is read back
as a tar (the slug; the buildpacks' outputs are read at the same time), the launcher appended
to it, and it is put into a created — never started — container of `berth/stack-run:<tag>`,
with `lib/launch.sh` as its ENTRYPOINT (sources .profile.d, then runs the process's command)
and web's command as CMD, and `docker commit` makes `berth/app-<app>:<commit12>` (no
registry, no pull). Both containers and the scratch dir are removed whatever happens (the
build container while the image is made; after a success the run container while the push
goes on to release).

Runs in the calling thread (a push's build thread in `berth api`), plus one timer thread per
build and, briefly, a thread reading the outputs and ones removing the containers.
Imports berth.framework and this package only; never berth.api, cli, executor or router, nor
flask or kazoo.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import os
import re
import shutil
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import docker
import docker.errors
import requests
import urllib3.exceptions
from dulwich.objects import Tree
from dulwich.repo import Repo

from berth.buildpacks import stack
from berth.buildpacks.dockerfile import (
    PROCFILE,
    BuildError,
    Built,
    DockerfileBuilder,
    Limits,
    _root_file,
    _scratch,
    _tree_of,
    checkout,
    has_dockerfile,
    image_tag,
    parse_procfile,
)
from berth.framework.model import validate_app_name

HERE = Path(__file__).resolve().parent
DETECT_ORDER = ("python", "nodejs", "go", "static", "procfile")
SUPPORTED = (
    "a Dockerfile at the repository's root, or buildpacks: Python (requirements.txt or"
    " pyproject.toml), Node.js (package.json), Go (go.mod), static sites (static.json or"
    " index.html) and Procfile-only apps (Procfile)"
)
APP_UID = stack.APP_UID
BUILDPACKS_DIR = "/opt/berth/buildpacks"
BUILD_DIR = "/app"
CACHE_DIR = "/cache"
ENV_DIR = "/tmp/berth/env"  # noqa: S108 - inside the build container, which is ours alone
OUT_DIR = "/tmp/berth/out"  # noqa: S108
CA_FILE = "/tmp/berth/ca.crt"  # noqa: S108
LAUNCH = "/usr/local/bin/berth-launch"
STACK_NAME = f"berth-{stack.SUITE}"
NOT_DETECTED = 100  # lib/build.sh's exit code when no buildpack's bin/detect accepts the source
MAX_SMALL_FILE = 64 * 1024
PIDS_LIMIT = 4096
TAIL_LINES = 40

# What Heroku apps name in BUILDPACK_URL / .buildpacks, mapped to ours.
_HEROKU_URL = re.compile(
    r"^https?://github\.com/heroku/heroku-buildpack-(python|nodejs|go|static)(?:\.git)?"
    r"(?:#[\w.\-/]*)?/?$"
)
_ALIASES = {f"heroku/{name}": name for name in DETECT_ORDER} | {"heroku/node": "nodejs"}
_FORMATTED = ("----->", " !", "       ")
# The root files each buildpack's bin/detect looks for (the scripts decide; this lets a commit
# that none would accept fail at once, before any container or stack image is needed).
DETECT_FILES = {
    "python": ("requirements.txt", "pyproject.toml"),
    "nodejs": ("package.json",),
    "go": ("go.mod",),
    "static": ("static.json", "index.html"),
    "procfile": ("Procfile",),
}
NOT_DETECTED_MESSAGE = f"no buildpack detected: Berth builds {SUPPORTED}"


# -- choosing buildpacks (pure) ----------------------------------------------------------------


def resolve_buildpack(ref: str, where: str) -> str:
    """One of our buildpack names for what `where` (BUILDPACK_URL, .buildpacks line N) says."""
    ref = ref.strip()
    if ref in DETECT_ORDER:
        return ref
    if ref in _ALIASES:
        return _ALIASES[ref]
    match = _HEROKU_URL.match(ref)
    if match:
        return match.group(1)
    raise BuildError(
        f"{where}: {ref[:120]!r} is not a buildpack Berth has. Builds fetch no buildpack code;"
        f" use one of {', '.join(DETECT_ORDER)} (or heroku/<name>, or the URL of Heroku's own"
        " Python, Node.js, Go or static buildpack)"
    )


def detect_from_names(names: set[str]) -> str | None:
    """The buildpack detection would choose for a root holding these regular files."""
    for name in DETECT_ORDER:
        if any(marker in names for marker in DETECT_FILES[name]):
            return name
    return None


def root_files(repo: Repo, tree_id: bytes) -> set[str]:
    tree = repo[tree_id]
    assert isinstance(tree, Tree)
    return {
        entry.path.decode(errors="replace")
        for entry in tree.iteritems()
        if entry.path is not None and entry.mode is not None and stat.S_ISREG(entry.mode)
    }


def parse_buildpacks_file(text: str) -> tuple[str, ...]:
    """A `.buildpacks` file: one buildpack per line, `#` comments and blank lines skipped."""
    found: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        found.append(resolve_buildpack(line, f".buildpacks line {number}"))
    if not found:
        raise BuildError(".buildpacks names no buildpack")
    return tuple(found)


def choose_buildpacks(config: Mapping[str, str], buildpacks_file: str | None) -> tuple[str, ...]:
    """The buildpacks to run in order; () means detect (DETECT_ORDER, the first that applies).
    BUILDPACK_URL wins over .buildpacks, as on Heroku."""
    url = config.get("BUILDPACK_URL", "").strip()
    if url:
        return (resolve_buildpack(url, "BUILDPACK_URL"),)
    if buildpacks_file is not None:
        return parse_buildpacks_file(buildpacks_file)
    return ()


# -- bin/release's YAML (pure) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReleaseInfo:
    """What a buildpack's bin/release says: default process types and config vars."""

    default_process_types: dict[str, str] = field(default_factory=dict)
    config_vars: dict[str, str] = field(default_factory=dict)


def _scalar(text: str, where: str) -> str:
    text = text.strip()
    if text.startswith('"'):
        # JSON's escapes are a subset of YAML's double-quoted ones
        try:
            value = json.loads(text)
        except ValueError:
            raise BuildError(f"bin/release: bad double-quoted value at {where}") from None
        if not isinstance(value, str):
            raise BuildError(f"bin/release: bad value at {where}")
        return value
    if text.startswith("'"):
        if len(text) < 2 or not text.endswith("'"):
            raise BuildError(f"bin/release: bad single-quoted value at {where}")
        return text[1:-1].replace("''", "'")
    if " #" in text:
        text = text[: text.index(" #")].rstrip()
    return text


def parse_release(text: str) -> ReleaseInfo:
    """The subset of YAML Heroku's bin/release uses: top-level keys, each either a flow `{}`/`[]`
    (empty) or a block of `  name: value` lines. `default_process_types` and `config_vars` are
    read; other keys (`addons`) are skipped."""
    sections: dict[str, dict[str, str]] = {"default_process_types": {}, "config_vars": {}}
    current: dict[str, str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            continue
        if not line.startswith((" ", "\t")):
            key, colon, rest = line.partition(":")
            if not colon:
                raise BuildError(f"bin/release line {number}: expected 'key: value'")
            rest = rest.strip()
            current = sections.get(key.strip())
            if current is None:
                current = {}  # a key we do not use: its block is read and dropped
            if rest not in ("", "{}", "[]", "~", "null"):
                raise BuildError(
                    f"bin/release line {number}: {key.strip()} must be a block of 'name: value'"
                )
            continue
        if current is None:
            raise BuildError(f"bin/release line {number}: indented line outside a key")
        if stripped.startswith("- "):
            continue  # a list item (addons)
        name, colon, value = stripped.partition(":")
        if not colon:
            raise BuildError(f"bin/release line {number}: expected 'name: value'")
        current[_scalar(name, f"line {number}")] = _scalar(value, f"line {number}")
    return ReleaseInfo(sections["default_process_types"], sections["config_vars"])


def merge_process_types(procfile: Mapping[str, str], defaults: Mapping[str, str]) -> dict[str, str]:
    """The Procfile's types over the buildpack's defaults, `release` among them (the release
    phase: api/releasephase.py runs it once before the release goes live). No process type
    to run (a `release` alone is none) is an error."""
    types = {**{k: v for k, v in defaults.items() if v}, **procfile}
    if not set(types) - {"release"}:
        raise BuildError(
            "nothing to run: add a Procfile naming the app's processes (e.g. 'web: gunicorn"
            " app:app' for Python)"
        )
    return types


# -- .slugignore (pure) ------------------------------------------------------------------------


def _segments_match(pattern: list[str], path: list[str]) -> bool:
    if not pattern:
        return not path
    if pattern[0] == "**":
        return any(_segments_match(pattern[1:], path[i:]) for i in range(len(path) + 1))
    return (
        bool(path)
        and fnmatch.fnmatchcase(path[0], pattern[0])
        and _segments_match(pattern[1:], path[1:])
    )


def slugignore_matcher(text: str) -> Callable[[str, bool], bool]:
    """Heroku's `.slugignore`: .gitignore-like lines (no negation). `match(path, is_dir)` for a
    path relative to the root ("a/b.txt"): a pattern with a slash (other than a trailing one) is
    anchored at the root, one without matches a name at any depth; a trailing `/` matches only
    directories; `*` and `?` never cross `/`, `**` spans directories."""
    rules: list[tuple[list[str], bool, bool]] = []  # (segments, anchored, dir_only)
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("!"):
            raise BuildError(f".slugignore: negation ({line[:60]}) is not supported")
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        anchored = "/" in line
        segments = [s for s in line.lstrip("/").split("/") if s]
        if segments:
            rules.append((segments, anchored, dir_only))

    def match(path: str, is_dir: bool) -> bool:
        parts = PurePosixPath(path).parts
        for segments, anchored, dir_only in rules:
            if dir_only and not is_dir:
                continue
            if anchored:
                if _segments_match(segments, list(parts)):
                    return True
            elif len(segments) == 1 and parts and fnmatch.fnmatchcase(parts[-1], segments[0]):
                return True
        return False

    return match


def apply_slugignore(root: Path, text: str) -> list[str]:
    """Removes what `.slugignore` matches under `root`; returns the removed paths (sorted)."""
    match = slugignore_matcher(text)
    removed: list[str] = []
    for current, dirs, files in os.walk(root):
        base = Path(current).relative_to(root)
        for name in list(dirs):
            rel = (base / name).as_posix()
            path = Path(current) / name
            if match(rel, not path.is_symlink()):
                if path.is_symlink():
                    path.unlink()
                else:
                    shutil.rmtree(path)
                dirs.remove(name)
                removed.append(rel)
        for name in files:
            rel = (base / name).as_posix()
            if match(rel, False):
                (Path(current) / name).unlink()
                removed.append(rel)
    return sorted(removed)


# -- the builder -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BuildpackOptions:
    """From the API's environment: BERTH_STACK_REPOSITORY (the stack images' repository,
    default `berth`) and BERTH_BUILD_CA_BUNDLE (a PEM file of CA certificates builds trust
    instead of the stack's, for a network whose TLS is intercepted; default none)."""

    stack_repository: str = stack.REPOSITORY
    ca_bundle: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> BuildpackOptions:
        ca = env.get("BERTH_BUILD_CA_BUNDLE") or None
        return cls(
            stack_repository=env.get("BERTH_STACK_REPOSITORY") or stack.REPOSITORY,
            ca_bundle=Path(ca) if ca else None,
        )


def _tar_add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int, uid: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.uid = info.gid = uid
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _tar_add_dir(tar: tarfile.TarFile, name: str, mode: int, uid: int) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    info.uid = info.gid = uid
    info.mtime = int(time.time())
    tar.addfile(info)


def _add_buildpacks(tar: tarfile.TarFile) -> None:
    """Our buildpacks and lib/ at opt/berth/buildpacks/…, owned by root."""
    for name in ("opt", "opt/berth", "opt/berth/buildpacks"):
        _tar_add_dir(tar, name, 0o755, 0)
    for top in ("lib", *DETECT_ORDER):
        _tar_add_dir(tar, f"opt/berth/buildpacks/{top}", 0o755, 0)
        for path in sorted((HERE / top).rglob("*")):
            if "__pycache__" in path.parts:
                continue
            rel = f"opt/berth/buildpacks/{path.relative_to(HERE).as_posix()}"
            if path.is_dir():
                _tar_add_dir(tar, rel, 0o755, 0)
            else:
                mode = 0o755 if os.access(path, os.X_OK) else 0o644
                _tar_add_bytes(tar, rel, path.read_bytes(), mode, 0)


def _add_env(tar: tarfile.TarFile, config: Mapping[str, str], ca: bytes | None) -> None:
    """ENV_DIR (one file per config var, Heroku's way) and the CA bundle, under tmp/ (no entry
    for tmp itself: the image's /tmp keeps its mode)."""
    _tar_add_dir(tar, "tmp/berth", 0o700, APP_UID)
    _tar_add_dir(tar, "tmp/berth/env", 0o700, APP_UID)
    for key, value in sorted(config.items()):
        _tar_add_bytes(tar, f"tmp/berth/env/{key}", value.encode(), 0o600, APP_UID)
    if ca is not None:
        _tar_add_bytes(tar, "tmp/berth/ca.crt", ca, 0o644, 0)


def build_input_tar(src: Path, dest: Path, config: Mapping[str, str], ca: bytes | None) -> None:
    """Everything a build container starts with, as one tar for / (one put_archive: each costs
    ~0.1 s): the checked-out source at app/ (owned by app, 10000), the buildpacks, ENV_DIR."""

    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = APP_UID
        info.uname = info.gname = "app"
        return info

    with tarfile.open(dest, mode="w") as tar:
        tar.add(src, arcname=BUILD_DIR.lstrip("/"), filter=owned)
        _add_buildpacks(tar)
        _add_env(tar, config, ca)


def add_launcher(slug: Path) -> None:
    """Appends the launcher (LAUNCH, root's, 0755) to the slug tar, which is put at /."""
    with tarfile.open(slug, mode="a") as tar:
        data = (HERE / "lib" / "launch.sh").read_bytes()
        _tar_add_bytes(tar, LAUNCH.lstrip("/"), data, 0o755, 0)


def _read_small_tar(chunks: Iterator[bytes]) -> dict[str, str]:
    """A get_archive stream of a few small files → {basename: text}."""
    data = b"".join(chunks)
    found: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.size <= MAX_SMALL_FILE:
                extracted = tar.extractfile(member)
                if extracted is not None:
                    found[PurePosixPath(member.name).name] = extracted.read().decode(
                        errors="replace"
                    )
    return found


class _LineSplitter:
    """Bytes as they come → whole lines to `emit`, Heroku-indented, keeping the last few."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._pending = b""
        self.tail: list[str] = []

    def feed(self, chunk: bytes) -> None:
        self._pending += chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            self._line(line.decode(errors="replace"))

    def close(self) -> None:
        if self._pending:
            self._line(self._pending.decode(errors="replace"))
            self._pending = b""

    def _line(self, text: str) -> None:
        text = text.rstrip()
        if not text.strip():
            return
        self.tail = [*self.tail[-(TAIL_LINES - 1) :], text]
        self._emit(text if text.startswith(_FORMATTED) else f"       {text}")

    def problem(self) -> str:
        """The last ` !` line: what a buildpack said went wrong."""
        for line in reversed(self.tail):
            if line.startswith(" !"):
                return line[2:].strip()
        return ""


class BuildpackBuilder:
    """Builds one commit with buildpacks. `client` makes a Docker SDK client with the given
    socket timeout; `data_dir` holds builds/ (scratch), cache/<app>/ and stack/ (the stack
    images' lock)."""

    builder = "buildpacks"

    def __init__(
        self,
        data_dir: Path,
        client: Callable[[float], docker.DockerClient] | None = None,
        limits: Limits | None = None,
        options: BuildpackOptions | None = None,
    ) -> None:
        self._client = client or (lambda timeout: docker.from_env(timeout=int(timeout) + 1))
        self.limits = limits or Limits()
        self.options = options or BuildpackOptions()
        self.data_dir = data_dir

    def cache_dir(self, app: str) -> Path:
        return cache_dir(self.data_dir, app)

    def build(
        self,
        repo: Repo,
        app: str,
        commit: str,
        build_id: str,
        emit: Callable[[str], None],
        config: Mapping[str, str] | None = None,
    ) -> Built:
        config = dict(config or {})
        started = time.monotonic()
        tree = _tree_of(repo, commit)
        listed = _root_file(repo, tree, ".buildpacks", MAX_SMALL_FILE)
        chosen = choose_buildpacks(config, listed.decode(errors="replace") if listed else None)
        if not chosen and detect_from_names(root_files(repo, tree)) is None:
            raise BuildError(NOT_DETECTED_MESSAGE)
        raw_procfile = _root_file(repo, tree, PROCFILE, MAX_SMALL_FILE)
        procfile = parse_procfile(raw_procfile.decode(errors="replace")) if raw_procfile else {}
        ignore = _root_file(repo, tree, ".slugignore", MAX_SMALL_FILE)
        ca = self._ca()
        tag = image_tag(app, commit)
        labels = {"berth.app": app, "berth.commit": commit, "berth.build": build_id}
        client = self._client(self.limits.timeout)
        containers: list[str] = []
        removing: threading.Thread | None = None
        built = False
        try:
            self._remove_stale(client, app)
            stack_images = self._stack(client, emit)
            emit(f"-----> Building with buildpacks on {stack_images.build.name}")
            with _scratch(self.data_dir / "builds") as scratch:
                src = scratch / "src"
                src.mkdir()
                files = checkout(repo, tree, src)
                emit(f"       {files} files at {commit[:12]}")
                if ignore is not None:
                    removed = apply_slugignore(src, ignore.decode(errors="replace"))
                    emit(f"       .slugignore: {len(removed)} paths left out")
                build_input_tar(src, scratch / "input.tar", config, ca)
                shutil.rmtree(src)
                cache = self._prepare_cache(app)
                build_container = self._create_build_container(
                    client, stack_images.build.name, cache, chosen, commit, labels, ca is not None
                )
                containers.append(build_container)
                with (scratch / "input.tar").open("rb") as given:
                    client.api.put_archive(build_container, "/", given)
                self._run(client, build_container, emit)
                slug = scratch / "slug.tar"
                # the buildpacks' outputs and the slug, read at the same time
                with ThreadPoolExecutor(1, thread_name_prefix="build-out") as pool:
                    outputs = pool.submit(
                        lambda: _read_small_tar(client.api.get_archive(build_container, OUT_DIR)[0])
                    )
                    with slug.open("wb") as f:
                        for chunk in client.api.get_archive(build_container, BUILD_DIR)[0]:
                            f.write(chunk)
                    out = outputs.result()
                # the build container goes while the image is made (joined in `finally`)
                containers.remove(build_container)
                removing = threading.Thread(
                    target=_remove_containers,
                    args=(client, [build_container]),
                    name="build-remove",
                )
                removing.start()
                release = parse_release(out.get("release.yml", ""))
                used = out.get("buildpacks", "").split()
                types = merge_process_types(procfile, release.default_process_types)
                emit(f"-----> Compiled slug size is {slug.stat().st_size / 1e6:.1f} MB")
                add_launcher(slug)
                run_id = self._create_run_container(
                    client, stack_images.run.name, types.get("web"), release, labels
                )
                containers.append(run_id)
                with slug.open("rb") as f:
                    client.api.put_archive(run_id, "/", f)
                repository, _, image_tag_ = tag.rpartition(":")
                committed = client.api.commit(run_id, repository=repository, tag=image_tag_)
                image_id = str(committed["Id"])
                built = True
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise BuildError(f"lost the Docker engine during the build: {exc}") from None
        except docker.errors.APIError as exc:
            raise BuildError(f"the Docker engine refused a build step: {exc.explanation}") from None
        finally:
            cleanup = threading.Thread(
                target=_clean_up, args=(client, containers, removing), name="build-cleanup"
            )
            if built:  # the push goes on to release while the containers go (not a daemon:
                cleanup.start()  # an exiting API waits for it)
            else:  # a failed build has left nothing behind when the push hears of it
                cleanup.run()
        emit(f"       Buildpacks: {', '.join(used)}")
        emit(f"       Process types: {', '.join(f'{k}' for k in sorted(types))}")
        emit(f"-----> Built {tag} in {time.monotonic() - started:.1f}s")
        return Built(
            image=tag, image_id=image_id, process_types=types, port=None, builder=self.builder
        )

    @staticmethod
    def _remove_stale(client: docker.DockerClient, app: str) -> None:
        """Build containers of this app an API killed mid-build left behind (the app's builds
        run one at a time, so none of them is running a build now)."""
        for found in client.api.containers(
            all=True, filters={"label": [f"berth.app={app}", "berth.role=build"]}
        ):
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                client.api.remove_container(found["Id"], force=True, v=True)

    def _ca(self) -> bytes | None:
        path = self.options.ca_bundle
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            raise BuildError(f"BERTH_BUILD_CA_BUNDLE={path}: {exc.strerror}") from None

    def _stack(self, client: docker.DockerClient, emit: Callable[[str], None]) -> Any:
        def progress(line: str) -> None:
            emit(f"       stack {line}")

        return stack.ensure_stack(
            client,
            progress,
            work_dir=self.data_dir / "stack",
            repository=self.options.stack_repository,
        )

    def _prepare_cache(self, app: str) -> Path:
        path = self.cache_dir(app)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.stat()
        if (st.st_uid, st.st_gid) != (APP_UID, APP_UID):
            try:
                os.chown(path, APP_UID, APP_UID)
            except PermissionError:
                raise BuildError(
                    f"the build cache {path} must belong to uid {APP_UID}: run the API as root"
                    " (as `berth server` does), or chown it"
                ) from None
        return path

    def _create_build_container(
        self,
        client: docker.DockerClient,
        image: str,
        cache: Path,
        chosen: tuple[str, ...],
        commit: str,
        labels: dict[str, str],
        with_ca: bool,
    ) -> str:
        memory = self.limits.memory_mb * 1024 * 1024
        host_config = client.api.create_host_config(
            binds={str(cache): {"bind": CACHE_DIR, "mode": "rw"}},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit=memory,
            memswap_limit=memory,
            cpu_shares=self.limits.cpu_shares,
            pids_limit=PIDS_LIMIT,
            init=True,
        )
        env = {
            "STACK": STACK_NAME,
            "SOURCE_VERSION": commit,
            "BERTH_DETECT": " ".join(DETECT_ORDER),
            "BERTH_BUILDPACKS": " ".join(chosen),
        }
        if with_ca:
            for name in (
                "SSL_CERT_FILE",
                "PIP_CERT",
                "REQUESTS_CA_BUNDLE",
                "NODE_EXTRA_CA_CERTS",
                "npm_config_cafile",
                "GIT_SSL_CAINFO",
            ):
                env[name] = CA_FILE
        created = client.api.create_container(
            image,
            command=["bash", f"{BUILDPACKS_DIR}/lib/build.sh"],
            user=f"{APP_UID}:{APP_UID}",
            working_dir=BUILD_DIR,
            environment=env,
            labels={**labels, "berth.role": "build"},
            host_config=host_config,
        )
        return str(created["Id"])

    def _run(
        self, client: docker.DockerClient, container: str, emit: Callable[[str], None]
    ) -> None:
        """Starts the build container and streams its output until it ends; a timer kills it
        at the timeout. Raises BuildError unless it exits 0."""
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                client.api.kill(container)

        timer = threading.Timer(self.limits.timeout, kill)
        timer.daemon = True
        lines = _LineSplitter(emit)
        client.api.start(container)
        timer.start()
        try:
            for chunk in client.api.logs(container, stream=True, follow=True):
                lines.feed(chunk)
            lines.close()
            code = int(client.api.wait(container, timeout=60)["StatusCode"])
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
            if timed_out.is_set():
                raise BuildError(self._timed_out()) from None
            raise
        finally:
            timer.cancel()
        if timed_out.is_set():
            raise BuildError(self._timed_out())
        if code == 0:
            return
        if code == NOT_DETECTED:
            raise BuildError(NOT_DETECTED_MESSAGE)
        state = client.api.inspect_container(container).get("State") or {}
        if state.get("OOMKilled"):
            raise BuildError(
                f"the build ran out of memory (BERTH_BUILD_MEMORY_MB={self.limits.memory_mb})"
            )
        problem = lines.problem() or f"a build step exited {code}"
        raise BuildError(f"the buildpack failed: {problem}")

    def _create_run_container(
        self,
        client: docker.DockerClient,
        image: str,
        web: str | None,
        release: ReleaseInfo,
        labels: dict[str, str],
    ) -> str:
        """A container of the run image that is never started: the slug goes in, the image
        comes out (`docker commit` keeps its config: entrypoint, CMD, env, labels)."""
        env = {k: v for k, v in release.config_vars.items() if _ENV_NAME.match(k)}
        env["HOME"] = BUILD_DIR
        created = client.api.create_container(
            image,
            command=["/bin/sh", "-c", web] if web else None,
            entrypoint=[LAUNCH],
            user=f"{APP_UID}:{APP_UID}",
            working_dir=BUILD_DIR,
            environment=env,
            labels=labels,
        )
        return str(created["Id"])

    def _timed_out(self) -> str:
        return f"the build took longer than {self.limits.timeout:.0f}s and was stopped"


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _remove_containers(client: docker.DockerClient, containers: list[str]) -> None:
    for container in containers:
        with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
            client.api.remove_container(container, force=True, v=True)


def _clean_up(
    client: docker.DockerClient, containers: list[str], removing: threading.Thread | None
) -> None:
    """A build's containers removed (waiting for the one already being removed), then its
    Docker client closed."""
    _remove_containers(client, containers)
    if removing is not None:
        removing.join()
    client.close()


def cache_dir(data_dir: Path, app: str) -> Path:
    """DATA_DIR/cache/<app>: the app's build cache (CACHE_DIR of its builds)."""
    return data_dir / "cache" / validate_app_name(app)


def remove_cache(data_dir: Path, app: str) -> bool:
    """Removes the app's build cache (when the app is destroyed); True if there was one."""
    path = cache_dir(data_dir, app)
    if not path.exists():
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


class AppBuilder:
    """The builder `berth api` uses: a commit with a root Dockerfile goes to the Docker engine
    unless the app sets BUILDPACK_URL; anything else is built with buildpacks. `config` reads
    the app's current config vars."""

    builder = "auto"

    def __init__(
        self,
        dockerfile: DockerfileBuilder,
        buildpacks: BuildpackBuilder,
        config: Callable[[str], Mapping[str, str]],
    ) -> None:
        self.dockerfile = dockerfile
        self.buildpacks = buildpacks
        self._config = config

    def build(
        self, repo: Repo, app: str, commit: str, build_id: str, emit: Callable[[str], None]
    ) -> Built:
        config = self._config(app)
        if not config.get("BUILDPACK_URL") and has_dockerfile(repo, commit):
            return self.dockerfile.build(repo, app, commit, build_id, emit)
        return self.buildpacks.build(repo, app, commit, build_id, emit, config)
