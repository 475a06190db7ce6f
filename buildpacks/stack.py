"""The stack: the two base images every build starts from, made on this machine from Debian
trixie packages — nothing is pulled from a registry.

- `berth/stack-build:<tag>`: compilers, headers, git, Python 3.13, Node.js 20 + npm, Go, Ruby;
  the image build containers run (`slug.py`).
- `berth/stack-run:<tag>`: what a built app needs at run time (Python, Node.js, the common
  runtime libraries), and nothing to compile with; apps' images are made from it.

How an image is made: `mmdebstrap --mode=unshare` writes the root filesystem of the suite with
the spec's packages straight into a tar (its chroot lives in the scratch dir and nothing is
mounted outside its own namespaces, so a killed build leaves nothing mounted), with dpkg told
to leave out docs, man
pages and translations, and a customize hook that adds the user `app` (10000:10000) and clears
apt's lists and caches; the tar is then `docker import`ed with the image config (USER, WORKDIR,
ENV, CMD) and labels that record the manifest.

Tags: `<suite>-<12 hex>`, from a SHA-256 of the manifest — suite, format version, variant,
package list, dpkg filters, hook and image config — so any change makes a new tag (a rebuild)
and an unchanged stack is found by its tag and reused. A file lock in the work dir
(`DATA_DIR/stack/stack.lock`) serialises builds between processes; the temp dir holding the
rootfs tar is removed whatever happens (an error, Ctrl-C, and SIGTERM in `stack:build`).

Runs in the caller's thread (`berth stack:build`, or a buildpack build in `berth api`). Imports
berth.framework only; no berth.cli, api, executor or router.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import click
import docker
import docker.errors

from berth.framework.errors import BerthError, Invalid
from berth.framework.settings import default_data_dir

log = logging.getLogger(__name__)

STACK_FORMAT = 1  # bump when the way images are made changes in a way the manifest misses
SUITE = "trixie"
MIRROR = "http://deb.debian.org/debian"
REPOSITORY = "berth"
APP_UID = 10000
HOME = "/home/app"
WORKDIR = "/app"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Kind = Literal["build", "run"]
KINDS: tuple[Kind, ...] = ("build", "run")
Progress = Callable[[str], None]

LABEL_KIND = "berth.stack.kind"
LABEL_DIGEST = "berth.stack.digest"
LABEL_MANIFEST = "berth.stack.manifest"

# A Debian package name (Debian Policy 5.6.1), so nothing else reaches mmdebstrap's --include.
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_SUITE = re.compile(r"^[a-z][a-z0-9-]*$")
_REPOSITORY = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
_VARIANTS = ("essential", "apt", "minbase")


class StackError(BerthError):
    """A stack image could not be made (the message says why, with mmdebstrap's last lines)."""


@dataclass(frozen=True, slots=True)
class StackSpec:
    """What goes into one stack image. `variant` is mmdebstrap's: `essential` (only
    Essential:yes packages, no apt) or `apt` (those plus apt)."""

    kind: Kind
    variant: str
    packages: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise Invalid(f"stack kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.variant not in _VARIANTS:
            raise Invalid(f"stack variant {self.variant!r}: expected one of {_VARIANTS}")
        if not self.packages:
            raise Invalid(f"the {self.kind} stack lists no packages")
        for name in self.packages:
            if not _PACKAGE.match(name):
                raise Invalid(f"stack package {name!r} is not a Debian package name")


BUILD = StackSpec(
    kind="build",
    variant="apt",  # apt stays, so an operator can derive an image with more packages
    packages=(
        *("build-essential", "pkg-config", "git", "ca-certificates", "curl", "tzdata"),
        *("xz-utils", "unzip"),
        *("python3", "python3-dev", "python3-venv", "python3-pip"),
        *("nodejs", "npm", "golang-go", "ruby", "ruby-dev"),
        *("libpq-dev", "libssl-dev", "libffi-dev", "zlib1g-dev", "libsqlite3-dev"),
        "libyaml-dev",
    ),
)
RUN = StackSpec(
    kind="run",
    variant="essential",  # no apt: nothing installs into a running app
    packages=(
        *("ca-certificates", "tzdata", "python3", "nodejs"),
        *("libpq5", "libssl3t64", "libffi8", "libsqlite3-0", "libyaml-0-2", "zlib1g"),
    ),
)
SPECS: dict[Kind, StackSpec] = {"build": BUILD, "run": RUN}

# dpkg leaves these out as it unpacks (the options also stay in the image's dpkg.cfg.d, so a
# later apt-get install honours them); copyright files are kept.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
)

# apt downloads as root inside mmdebstrap's namespace: its `_apt` sandbox user cannot enter the
# data dir (0700), and the packages are checked against Debian's signed Release files anyway.
APT_OPTIONS = ('APT::Sandbox::User "root"',)

# mmdebstrap runs each customize hook with `sh -c`, the root filesystem as "$1". Constants
# only: nothing from a user reaches them.
CUSTOMIZE_HOOKS = (
    f'echo "app:x:{APP_UID}:{APP_UID}:app:{HOME}:/bin/bash" >>"$1/etc/passwd"',
    f'echo "app:x:{APP_UID}:" >>"$1/etc/group"',
    'if [ -f "$1/etc/shadow" ]; then echo "app:*:0:0:99999:7:::" >>"$1/etc/shadow"; fi',
    f'mkdir -p "$1{HOME}" "$1{WORKDIR}" && chown {APP_UID}:{APP_UID} "$1{HOME}" "$1{WORKDIR}"',
    'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/cache/debconf/*-old',
    'find "$1/var/log" -mindepth 1 -delete',
)


def image_config() -> tuple[str, ...]:
    """The `docker import` changes (Dockerfile instructions) both images get."""
    return (
        f"USER {APP_UID}:{APP_UID}",
        f"WORKDIR {WORKDIR}",
        f"ENV PATH={PATH}",
        "ENV LANG=C.UTF-8",
        f"ENV HOME={HOME}",
        'CMD ["/bin/bash"]',
    )


def manifest(spec: StackSpec, suite: str = SUITE, version: int = STACK_FORMAT) -> dict[str, Any]:
    """Everything that decides an image's content; its hash is the tag."""
    if not _SUITE.match(suite):
        raise Invalid(f"suite {suite!r} is not a Debian suite name")
    return {
        "format": version,
        "suite": suite,
        "kind": spec.kind,
        "variant": spec.variant,
        "packages": sorted(set(spec.packages)),
        "apt": list(APT_OPTIONS),
        "dpkg": list(DPKG_OPTIONS),
        "customize": list(CUSTOMIZE_HOOKS),
        "config": list(image_config()),
    }


def manifest_json(spec: StackSpec, suite: str = SUITE, version: int = STACK_FORMAT) -> str:
    return json.dumps(manifest(spec, suite, version), sort_keys=True, separators=(",", ":"))


def stack_digest(spec: StackSpec, suite: str = SUITE, version: int = STACK_FORMAT) -> str:
    return hashlib.sha256(manifest_json(spec, suite, version).encode()).hexdigest()


def stack_tag(spec: StackSpec, suite: str = SUITE, version: int = STACK_FORMAT) -> str:
    """`<suite>-<first 12 hex digits of the manifest's SHA-256>`."""
    return f"{suite}-{stack_digest(spec, suite, version)[:12]}"


def image_name(spec: StackSpec, repository: str = REPOSITORY, suite: str = SUITE) -> str:
    """`<repository>/stack-<kind>:<tag>`."""
    if not _REPOSITORY.match(repository) or len(repository) > 200:
        raise Invalid(f"image repository {repository!r}: lower-case letters, digits, . _ - and /")
    return f"{repository}/stack-{spec.kind}:{stack_tag(spec, suite)}"


def mmdebstrap_argv(
    spec: StackSpec, out: Path, suite: str = SUITE, mirror: str = MIRROR
) -> list[str]:
    """The mmdebstrap command line that writes the spec's root filesystem to `out` (a tar)."""
    return [
        "mmdebstrap",
        "--mode=unshare",
        "--format=tar",
        "--verbose",
        f"--variant={spec.variant}",
        f"--include={','.join(sorted(set(spec.packages)))}",
        *(f"--aptopt={option}" for option in APT_OPTIONS),
        *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
        *(f"--customize-hook={hook}" for hook in CUSTOMIZE_HOOKS),
        suite,
        str(out),
        mirror,
    ]


@dataclass(frozen=True, slots=True)
class StackImage:
    kind: Kind
    name: str  # repository:tag
    image_id: str
    size: int  # bytes, as Docker reports it
    built: bool  # False: found by its tag and reused
    seconds: float  # time this call spent on it (building, or finding it)


@dataclass(frozen=True, slots=True)
class StackImages:
    build: StackImage
    run: StackImage

    @property
    def reused(self) -> bool:
        """True when neither image had to be built (the fast path)."""
        return not (self.build.built or self.run.built)


# -- progress -----------------------------------------------------------------------------------

# mmdebstrap's own phase lines ("I: …") that say nothing a person waiting needs.
_QUIET_PHASES = (
    "chroot architecture",
    "finding correct signed-by",
    "automatically chosen format",
    "using /",
    "removing tempdir",
    "running --customize-hook",
)


@dataclass
class Condenser:
    """Turns mmdebstrap's verbose output into a few progress lines: its phases, and every
    `every` seconds a count of the packages fetched, unpacked and set up so far; each distinct
    warning once. Keeps the last lines for an error message. Pure: the caller passes the clock."""

    label: str
    started: float
    every: float = 5.0
    fetched: int = 0
    unpacked: int = 0
    set_up: int = 0
    last_package: str = ""
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))
    _reported_at: float = 0.0
    _warned: set[str] = field(default_factory=set)
    _reported: tuple[int, int, int] = (0, 0, 0)

    def feed(self, line: str, now: float) -> list[str]:
        line = line.rstrip()
        if not line:
            return []
        self.tail.append(line)
        out: list[str] = []
        if line.startswith("I: "):
            text = line[3:].strip()
            if not any(text.startswith(quiet) for quiet in _QUIET_PHASES):
                out.append(self._line(text, now))
        elif line.startswith(("W: ", "E: ")):
            if line not in self._warned:
                self._warned.add(line)
                out.append(self._line(line, now))
        else:
            self._count(line)
            counts = (self.fetched, self.unpacked, self.set_up)
            if counts != self._reported and now - self._reported_at >= self.every:
                self._reported = counts
                last = f" (last: {self.last_package})" if self.last_package else ""
                text = (
                    f"  {self.fetched} fetched, {self.unpacked} unpacked, "
                    f"{self.set_up} set up{last}"
                )
                out.append(self._line(text, now))
        if out:
            self._reported_at = now
        return out

    def _count(self, line: str) -> None:
        if re.match(r"^Get:\d+ ", line):
            self.fetched += 1
        elif line.startswith("Unpacking "):
            self.unpacked += 1
            self.last_package = line.split()[1]
        elif line.startswith("Setting up "):
            self.set_up += 1
            self.last_package = line.split()[2]

    def _line(self, text: str, now: float) -> str:
        return f"{self.label}: {text} [{now - self.started:.0f}s]"


# -- the lock -----------------------------------------------------------------------------------


@contextlib.contextmanager
def stack_lock(work_dir: Path, progress: Progress) -> Iterator[None]:
    """Holds `work_dir/stack.lock` (flock, exclusive); says so when it has to wait."""
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = work_dir / "stack.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another stack build to finish (lock {path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# -- building -----------------------------------------------------------------------------------


def _find(client: docker.DockerClient, name: str, digest: str) -> Any | None:
    """The image tagged `name` if its label says it was made from this manifest."""
    try:
        image = client.images.get(name)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.DockerException as exc:
        raise StackError(f"Docker could not look up {name}: {exc}") from exc
    labels = image.attrs.get("Config", {}).get("Labels") or {}
    return image if labels.get(LABEL_DIGEST) == digest else None


def ensure_image(
    client: docker.DockerClient,
    spec: StackSpec,
    progress: Progress,
    *,
    work_dir: Path | None = None,
    force: bool = False,
    repository: str = REPOSITORY,
    suite: str = SUITE,
    mirror: str = MIRROR,
) -> StackImage:
    """The stack image for `spec`: found by its tag, else built (always, with `force`)."""
    started = time.monotonic()
    work_dir = work_dir or default_data_dir() / "stack"
    name = image_name(spec, repository, suite)
    digest = stack_digest(spec, suite)
    with stack_lock(work_dir, progress):
        # Checked under the lock: a build that held it may have just made this image.
        image = None if force else _find(client, name, digest)
        if image is not None:
            progress(f"{spec.kind}: {name} is up to date")
            return StackImage(
                kind=spec.kind,
                name=name,
                image_id=image.id,
                size=int(image.attrs.get("Size", 0)),
                built=False,
                seconds=time.monotonic() - started,
            )
        _remove_leftovers(work_dir)
        scratch = Path(tempfile.mkdtemp(prefix="build-", dir=work_dir))
        try:
            tar = scratch / "rootfs.tar"
            _mmdebstrap(spec, tar, scratch, progress, started, suite, mirror)
            image = _import(client, spec, tar, name, digest, suite, progress, started)
        finally:
            _remove_tree(scratch)
        _prune(client, repository, spec.kind, keep=image.id, progress=progress)
    seconds = time.monotonic() - started
    size = int(image.attrs.get("Size", 0))
    progress(f"{spec.kind}: {name} ready: built in {seconds:.0f}s, {size / 1e6:.0f} MB")
    return StackImage(spec.kind, name, image.id, size, built=True, seconds=seconds)


def ensure_stack(
    client: docker.DockerClient,
    progress: Progress,
    *,
    work_dir: Path | None = None,
    force: bool = False,
    repository: str = REPOSITORY,
    suite: str = SUITE,
    mirror: str = MIRROR,
) -> StackImages:
    """Both stack images, built on first need (or every time with `force`): the call a build
    makes before it starts. `reused` on the result says whether anything was built."""
    images = {
        spec.kind: ensure_image(
            client,
            spec,
            progress,
            work_dir=work_dir,
            force=force,
            repository=repository,
            suite=suite,
            mirror=mirror,
        )
        for spec in (BUILD, RUN)
    }
    return StackImages(build=images["build"], run=images["run"])


def _remove_leftovers(work_dir: Path) -> None:
    """Scratch dirs of a build that was SIGKILLed: nobody else uses them while we hold the lock."""
    for stale in work_dir.glob("build-*"):
        _remove_tree(stale)


def _remove_tree(path: Path, attempts: int = 20) -> None:
    """Remove a scratch dir even while a process that was just stopped still has a file open or
    creates one in it: rmtree again until it is gone (a few seconds at most)."""
    for _ in range(attempts):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.25)
    log.warning("scratch dir left behind", extra={"path": str(path)})


def _mmdebstrap(
    spec: StackSpec,
    tar: Path,
    scratch: Path,
    progress: Progress,
    started: float,
    suite: str,
    mirror: str,
) -> None:
    if shutil.which("mmdebstrap") is None:
        raise StackError(
            "mmdebstrap is not installed: apt-get install mmdebstrap uidmap (scripts/setup does)"
        )
    progress(f"{spec.kind}: making the {suite} root filesystem with mmdebstrap ({mirror})")
    condenser = Condenser(label=spec.kind, started=started)
    env = {**os.environ, "TMPDIR": str(scratch), "LC_ALL": "C.UTF-8"}
    env["PATH"] = env.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
    proc = subprocess.Popen(
        mmdebstrap_argv(spec, tar, suite, mirror),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
        start_new_session=True,  # a Ctrl-C reaches us; we stop it and clean up
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            for message in condenser.feed(line, time.monotonic()):
                progress(message)
        code = proc.wait()
    finally:
        _stop(proc)
    if code != 0:
        tail = "\n".join(condenser.tail)
        raise StackError(f"mmdebstrap failed (exit {code}) making the {spec.kind} image:\n{tail}")


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop mmdebstrap and everything it started. It removes its own temp dir on SIGTERM, but
    the apt or dpkg it ran inside its namespace can outlive it for a moment, still writing into
    the scratch dir: its whole process group (its own session) is killed once it is gone."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.stdout is not None:
        proc.stdout.close()


def _import(
    client: docker.DockerClient,
    spec: StackSpec,
    tar: Path,
    name: str,
    digest: str,
    suite: str,
    progress: Progress,
    started: float,
) -> Any:
    repository, _, tag = name.rpartition(":")
    labels = {
        LABEL_KIND: spec.kind,
        LABEL_DIGEST: digest,
        LABEL_MANIFEST: manifest_json(spec, suite),
    }
    changes = [*image_config(), *(f"LABEL {k}={_label_value(v)}" for k, v in labels.items())]
    size_mb = tar.stat().st_size / 1e6
    progress(
        f"{spec.kind}: importing {size_mb:.0f} MB into Docker [{time.monotonic() - started:.0f}s]"
    )
    try:
        client.api.import_image_from_file(str(tar), repository=repository, tag=tag, changes=changes)
        image = client.images.get(name)
    except docker.errors.DockerException as exc:
        raise StackError(f"docker import of {name} failed: {exc}") from exc
    labels_seen = image.attrs.get("Config", {}).get("Labels") or {}
    if labels_seen.get(LABEL_DIGEST) != digest:
        raise StackError(f"docker import of {name} did not keep its labels")
    return image


def _label_value(value: str) -> str:
    """A Dockerfile LABEL value that reads back as `value`: double-quoted with JSON's escapes
    (which Docker's parser shares for quotes and backslashes), and `$` escaped, since LABEL
    expands variables. Control characters would not survive, so none are allowed."""
    if any(ord(char) < 32 for char in value):
        raise Invalid("a stack image label may not hold control characters")
    return json.dumps(value, ensure_ascii=False).replace("$", "\\$")


def _prune(
    client: docker.DockerClient, repository: str, kind: Kind, keep: str, progress: Progress
) -> None:
    """Removes earlier images of this stack kind that nothing uses any more (Docker refuses to
    remove an image a container or another image still needs; those stay)."""
    try:
        old = client.images.list(filters={"label": f"{LABEL_KIND}={kind}"})
    except docker.errors.DockerException:
        return
    prefix = f"{repository}/stack-{kind}:"
    for image in old:
        if image.id == keep:
            continue
        tags = image.tags
        if tags and not all(tag.startswith(prefix) for tag in tags):
            continue  # another repository's stack (e.g. the tests'): not ours to remove
        try:
            client.images.remove(image.id)
        except docker.errors.DockerException:
            continue
        progress(f"{kind}: removed the previous stack image {', '.join(tags) or image.id[:19]}")


# -- berth stack:build ----------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.command(name="stack:build")
@click.option("--force", is_flag=True, help="Build even if the images exist")
@click.option(
    "--only",
    type=click.Choice(KINDS),
    default=None,
    help="Only the build or the run image",
)
@click.option(
    "--data-dir",
    envvar="BERTH_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="The lock and scratch space live in DATA_DIR/stack "
    "[default: /var/lib/berth as root, else ~/.local/share/berth]",
)
@click.option(
    "--repository",
    default=REPOSITORY,
    show_default=True,
    help="Images are REPOSITORY/stack-build and REPOSITORY/stack-run",
)
def command(force: bool, only: Kind | None, data_dir: Path | None, repository: str) -> None:
    """Build the stack images (Debian trixie) that apps are built and run on."""
    signal.signal(signal.SIGTERM, _raise_interrupt)  # cleans up like Ctrl-C
    work_dir = (data_dir or default_data_dir()) / "stack"

    def progress(line: str) -> None:
        click.echo(line)

    try:
        client = docker.from_env(timeout=120)
    except docker.errors.DockerException as exc:
        raise click.ClickException(f"no Docker engine answers: {exc}") from None
    try:
        kinds = (only,) if only else KINDS
        for kind in kinds:
            ensure_image(
                client, SPECS[kind], progress, work_dir=work_dir, force=force, repository=repository
            )
    except BerthError as exc:
        raise click.ClickException(exc.message) from None
    except KeyboardInterrupt:
        click.echo("interrupted; the scratch files are removed", err=True)
        raise SystemExit(130) from None
    finally:
        client.close()
