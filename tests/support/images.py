"""The tests' container image, made on this machine: no registry is reachable, so nothing is
pulled. A root filesystem is written as a tar in memory — Debian busybox-static's
`/bin/busybox`, a symlink per applet the tests use, a passwd and group with the non-root user
`app` (10000:10000), /tmp (1777) and /www — and given to `docker import` with the image config
as Dockerfile-style changes. Its default command serves HTTP with busybox httpd on `$PORT`.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import tarfile
import time
import warnings
from pathlib import Path

import docker
import docker.errors

BUSYBOX = Path("/bin/busybox")  # from Debian's busybox-static: one static binary
TEST_IMAGE = "berth-test/busybox:1"  # bump the tag when the image below changes
APP_UID = 10000
APPLETS = (
    *("sh", "cat", "echo", "env", "false", "grep", "head", "httpd", "id", "kill", "ls"),
    *("mkdir", "printf", "ps", "rm", "sleep", "tail", "tr", "true", "wc", "yes"),
)
SERVE = 'mkdir -p /tmp/www && echo ok >/tmp/www/index.html && exec httpd -f -p "$PORT" -h /tmp/www'


def docker_client() -> docker.DockerClient | None:
    """A client for the local Docker engine, or None when no engine answers."""
    with warnings.catch_warnings():
        # docker-py leaves the socket of a failed connection unclosed; it is no test's fault.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client: docker.DockerClient | None = docker.from_env(timeout=60)  # asks /version
        except docker.errors.DockerException:
            client = None
        gc.collect()
    return client


def busybox_available() -> bool:
    return BUSYBOX.is_file()


def rootfs_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", uid: int = 0) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = kind, mode, int(time.time())
            info.uid = info.gid = uid
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        def link(name: str, target: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            tar.addfile(info)

        for directory in ("bin", "etc", "dev", "proc", "sys", "home"):
            add(directory, tarfile.DIRTYPE, 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("home/app", tarfile.DIRTYPE, 0o755, uid=APP_UID)
        add("www", tarfile.DIRTYPE, 0o755, uid=APP_UID)
        add("www/index.html", tarfile.REGTYPE, 0o644, b"berth test image\n", uid=APP_UID)
        add("bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes())
        for applet in APPLETS:
            link(f"bin/{applet}", "busybox")
        passwd = f"root:x:0:0:root:/root:/bin/sh\napp:x:{APP_UID}:{APP_UID}:app:/home/app:/bin/sh\n"
        add("etc/passwd", tarfile.REGTYPE, 0o644, passwd.encode())
        add("etc/group", tarfile.REGTYPE, 0o644, f"root:x:0:\napp:x:{APP_UID}:\n".encode())
    return buffer.getvalue()


def ensure_test_image(
    client: docker.DockerClient, tag: str = TEST_IMAGE, user: str = f"{APP_UID}:{APP_UID}"
) -> str:
    """Imports the image under `tag` unless it is there already; returns the tag."""
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        repository, _, version = tag.partition(":")
        client.api.import_image_from_data(
            rootfs_tar(),
            repository=repository,
            tag=version or "latest",
            changes=[
                "ENV PATH=/bin",
                f"USER {user}",
                "WORKDIR /",
                "CMD " + json.dumps(["sh", "-c", SERVE]),
            ],
        )
        client.images.get(tag)  # fails loudly if the import did not land
    return tag


def remove_app_artifacts(client: docker.DockerClient, prefix: str) -> None:
    """Containers and images of apps whose name starts with `prefix` (a test module's apps).
    Listed with the engine's plain listings, not the SDK's list-then-inspect, and each removal
    tolerates a thing already gone: Berth's own pruning may remove an image meanwhile."""
    for found in client.api.containers(all=True, filters={"label": "berth.app"}):
        if (found.get("Labels") or {}).get("berth.app", "").startswith(prefix):
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(found["Id"], force=True)
    for found in client.api.images(filters={"label": "berth.app"}):
        if (found.get("Labels") or {}).get("berth.app", "").startswith(prefix):
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_image(found["Id"], force=True)
