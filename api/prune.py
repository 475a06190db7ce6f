"""Pruning an app's old images from the Docker engine that builds them (issue 5: "old artifacts
are pruned, keeping every rollback target").

**When.** After each `git push` whose release came up, and after one whose release phase
failed (api/builds.py calls `Pruner.after_release` under the app's push lock, so no other push
of that app runs meanwhile), and when the app is destroyed (`Pruner.forget`, called where the
app's repository is removed, api/git.py).

**What is kept.** The images of the app's current release, of its newest `keep` releases that
did not fail (`BERTH_KEEP_RELEASES`, default 10; a config change is a release too, sharing its
predecessor's image; a release whose release phase failed never went live and is no rollback
target, so it neither counts nor keeps its image; a pending one keeps it), of every release a
live task of the app runs (a release phase's run too), and any image a container on this
engine uses (running or not: Docker refuses to remove those and Berth never forces). These
kept images are the *rollback targets*: `berth rollback vN` (`POST /v1/apps/<app>/rollback`)
to a release whose image was pruned is refused with 409 and says so (`check_rollback`),
instead of making a release no agent can start.

**What is Berth's.** Only images Berth built for this app: labelled `berth.app=<app>` and
`berth.build` (what buildpacks/dockerfile.py's DockerfileBuilder sets), and of those only
the tags in the app's repository, `berth/app-<app>` (also under a registry host:
`host:5000/berth/app-<app>`). An untagged one (a rebuild moved its tag) is removed by id. An
image someone also tagged under another name loses only Berth's tag and stays. Images given
to `berth deploy --image`, stack images and anything else are never touched.

**Races.** The keep set is read from ZooKeeper, then the engine is listed; just before
removing, the app's current and newest releases are read again and, if either moved (a
rollback or deploy meanwhile), this round removes nothing (the next push prunes). Docker's
own refusal covers an image a task started using in between.

The pure decision is `removals`; `Pruner` does the I/O (the Docker SDK in the calling thread,
a push's build thread; `forget` in a thread of its own). Imports berth.framework and the
Docker SDK; never berth.cli, executor or router.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import docker
import docker.errors
import requests
from flask import current_app

from berth.api.context import store
from berth.buildpacks.dockerfile import IMAGE_REPOSITORY
from berth.framework.errors import BerthError, Conflict, Invalid
from berth.framework.model import RELEASE_FAILED, Release
from berth.framework.state import Store

log = logging.getLogger(__name__)

EXTENSION = "berth.pruner"
_current_lock = threading.Lock()

DEFAULT_KEEP = 10
FORGET_FOR = 120.0  # seconds a destroyed app's images are retried while containers hold them
FORGET_EVERY = 2.0
_DOCKER_ERRORS = (docker.errors.DockerException, requests.RequestException, OSError)


def keep_from_env(env: Mapping[str, str] = os.environ) -> int:
    """BERTH_KEEP_RELEASES: a whole number from 1 to 1000, 10 unless set."""
    raw = env.get("BERTH_KEEP_RELEASES", "")
    if raw == "":
        return DEFAULT_KEEP
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise Invalid(f"BERTH_KEEP_RELEASES={raw[:20]!r}: expected a whole number from 1 to 1000")
    return int(raw)


def repository(app: str) -> str:
    return f"{IMAGE_REPOSITORY}{app}"


def is_berth_tag(tag: str, app: str) -> bool:
    """`berth/app-<app>:<tag>`, also under a registry host (`host:5000/berth/app-<app>:…`)."""
    ref = tag.split("@", 1)[0]  # a digest, if any, names the same repository
    name, colon, version = ref.rpartition(":")
    if not colon or "/" in version:  # no tag (`host:5000/x`: that colon is the port's)
        name = ref
    return name == repository(app) or name.endswith(f"/{repository(app)}")


@dataclass(frozen=True, slots=True)
class Image:
    id: str
    tags: tuple[str, ...]
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Removal:
    image: str  # the id
    tags: tuple[str, ...]  # Berth's tags to remove; empty: remove the (untagged) image by id


def removals(app: str, images: Iterable[Image], kept: set[str], in_use: set[str]) -> list[Removal]:
    """What to remove of `app`'s images: Berth-built ones (labels), not kept, not in use."""
    found = []
    for image in images:
        labels = image.labels or {}
        if labels.get("berth.app") != app or not labels.get("berth.build"):
            continue  # not built by Berth for this app
        if image.id in kept or image.id in in_use:
            continue
        ours = tuple(sorted(t for t in image.tags if is_berth_tag(t, app)))
        if image.tags and not ours:
            continue  # tagged only under other names: someone else's now
        found.append(Removal(image.id, ours))
    return found


def kept_refs(newest: Sequence[Release], running: Iterable[Release]) -> set[str]:
    """The image refs of the newest releases and of the releases tasks run."""
    return {
        r.artifact.ref
        for r in [*newest, *running]
        if r.artifact is not None and r.artifact.kind == "image"
    }


def rollback_targets(listed: Sequence[Release], keep: int) -> list[Release]:
    """Of releases listed newest first, the newest `keep` that did not fail (a release whose
    release phase failed never went live: it is no rollback target)."""
    return [r for r in listed if r.status != RELEASE_FAILED][:keep]


def _client() -> docker.DockerClient:
    return docker.from_env(timeout=60)


class Pruner:
    def __init__(
        self,
        store: Store,
        keep: int,
        client: Callable[[], docker.DockerClient] = _client,
    ) -> None:
        self.store = store
        self.keep = keep
        self._client = client

    def after_release(self, app: str, emit: Callable[[str], None]) -> None:
        """Prune `app`, saying what went in one line; a failure is logged, never raised (the
        push succeeded; the next one prunes)."""
        try:
            removed = self.prune(app)
        except (BerthError, *_DOCKER_ERRORS) as exc:
            log.warning("could not prune old images: %s", exc, extra={"app": app})
            return
        except Exception:  # a bug here must not fail a push that succeeded
            log.exception("pruning failed", extra={"app": app})
            return
        if removed:
            emit(
                f"       Removed {len(removed)} old image{'s' if len(removed) > 1 else ''}"
                f" (kept: the newest {self.keep} releases' and running ones)"
            )

    def _kept_releases(self, app: str) -> list[Release]:
        """The newest `keep` releases that did not fail, reading further back past failed
        ones."""
        limit = self.keep
        while True:
            listed = self.store.list_releases(app, limit)
            kept = rollback_targets(listed, self.keep)
            if len(kept) >= self.keep or len(listed) < limit or limit >= 1000:
                return kept
            limit = min(limit * 2, 1000)

    def prune(self, app: str) -> list[Removal]:
        """Remove `app`'s images that no kept release and no live task uses."""
        before = self.store.get_app(app)
        newest = self._kept_releases(app)
        listed = {r.version for r in newest}
        live = {t.release for t in self.store.list_tasks(app) if t.live}
        versions = (live | {before.release}) - listed
        running = [self.store.get_release(app, v) for v in sorted(versions)]
        refs = kept_refs(newest, running)
        client = self._client()
        try:
            kept = set()
            for ref in refs:
                try:
                    kept.add(str(client.api.inspect_image(ref)["Id"]))
                except docker.errors.ImageNotFound:
                    continue
            todo = removals(app, _images(client, app), kept, _in_use(client))
            if not todo:
                return []
            after = self.store.get_app(app)
            if (after.release, after.newest) != (before.release, before.newest):
                log.info("releases changed while pruning: next time", extra={"app": app})
                return []
            return [r for r in todo if _remove(client, r, app)]
        finally:
            client.close()

    def remove_all(self, app: str, only: set[str] | None = None) -> tuple[int, int]:
        """Remove every Berth-built image of `app` (of the ids `only`, if given) that no
        container uses: (removed, left because in use)."""
        client = self._client()
        try:
            images = [i for i in _images(client, app) if only is None or i.id in only]
            todo = removals(app, images, set(), _in_use(client))
            removed = sum(1 for r in todo if _remove(client, r, app))
            left = len(removals(app, images, set(), set())) - removed
            return removed, left
        finally:
            client.close()

    def check_rollback(self, app: str, release: Release) -> None:
        """Conflict if rolling back to `release` would run an image Berth built and pruned.
        Images Berth did not build, images in a registry (pruning removes only local
        images), and an engine that does not answer, are not judged."""
        artifact = release.artifact
        if artifact is None or artifact.kind != "image" or not is_berth_tag(artifact.ref, app):
            return
        first = artifact.ref.split("/", 1)[0]
        if "." in first or ":" in first or first == "localhost":
            return  # a registry's reference: agents pull it from there, whatever is local
        try:
            client = self._client()
            try:
                client.api.inspect_image(artifact.ref)
            finally:
                client.close()
        except docker.errors.ImageNotFound:
            raise Conflict(
                f"v{release.version}'s image ({artifact.ref}) was pruned: Berth keeps the images"
                " of the app's newest releases (BERTH_KEEP_RELEASES, 10 unless set) and of"
                " running processes; roll back to one of those, or push that commit again"
            ) from None
        except _DOCKER_ERRORS as exc:
            log.warning("could not check a rollback's image: %s", exc, extra={"app": app})

    def forget(self, app: str) -> threading.Thread:
        """A destroyed app's images, removed in a thread of their own: those its stopping
        containers still hold are retried every 2 s for up to 2 minutes. Only the images
        there at the destroy are removed, so an app created again under the name keeps its
        own."""

        def run() -> None:
            try:
                client = self._client()
                try:
                    only = {i.id for i in _images(client, app)}
                finally:
                    client.close()
                deadline = time.monotonic() + FORGET_FOR
                total = left = 0
                while only:
                    removed, left = self.remove_all(app, only)
                    total += removed
                    if not left or time.monotonic() > deadline:
                        break
                    time.sleep(FORGET_EVERY)
                if only:
                    log.info(
                        "images of a destroyed app removed",
                        extra={"app": app, "images": total, "left": left},
                    )
            except Exception as exc:  # a thread of its own: nothing above it would log this
                log.warning(
                    "could not remove a destroyed app's images: %s", exc, extra={"app": app}
                )

        thread = threading.Thread(target=run, name=f"forget-images-{app}", daemon=True)
        thread.start()
        return thread


def current(keep: int | None = None) -> Pruner:
    """The API worker's Pruner (made on first use; `keep` from BERTH_KEEP_RELEASES unless
    given the first time)."""
    app = current_app
    with _current_lock:
        found = app.extensions.get(EXTENSION)
        if found is None:
            found = Pruner(store(), keep_from_env() if keep is None else keep)
            app.extensions[EXTENSION] = found
    assert isinstance(found, Pruner)
    return found


def _images(client: docker.DockerClient, app: str) -> list[Image]:
    found = client.api.images(filters={"label": f"berth.app={app}"})
    return [
        Image(
            str(i["Id"]),
            tuple(t for t in (i.get("RepoTags") or []) if t != "<none>:<none>"),
            i.get("Labels") or {},
        )
        for i in found
    ]


def _in_use(client: docker.DockerClient) -> set[str]:
    return {str(c.get("ImageID", "")) for c in client.api.containers(all=True)}


def _remove(client: docker.DockerClient, removal: Removal, app: str) -> bool:
    """Untag Berth's tags (the last one removes the image), or remove an untagged image; an
    engine refusal (a container uses it, a child image depends on it) leaves it."""
    try:
        for tag in removal.tags or (removal.image,):
            client.api.remove_image(tag, force=False, noprune=False)
    except docker.errors.NotFound:
        return True  # gone already
    except docker.errors.APIError as exc:
        log.info(
            "image kept: %s",
            exc.explanation,
            extra={"app": app, "image": removal.image[:19]},
        )
        return False
    log.info("old image removed", extra={"app": app, "image": removal.image[:19]})
    return True
