"""Artifacts every agent can run: after a build, the image goes to Berth's registry
(framework/registry.py; docs/architecture.md "Artifacts").

With a registry (`--registry HOST:PORT`, which `berth server` sets in Mesos mode or with
`--registry-addr`), `Publisher.publish` tags the built image `HOST:PORT/berth/app-<app>:<tag>`
(the local tag with the registry in front, so api/prune.py knows it as Berth's), pushes it with
the registry's credentials, and returns the release's Artifact: that reference plus the
manifest digest the registry answered, so every agent runs exactly what was built
(`Artifact.image` = `HOST:PORT/berth/app-<app>@sha256:…`). A push that fails is a BuildError:
no release is made and the old one keeps serving. Without a registry the image stays on the
engine that built it (local mode).

Runs in a push's build thread (api/builds.py), through the Docker SDK. Imports berth.framework
and berth.buildpacks only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import docker
import docker.errors
import requests
import urllib3.exceptions

from berth.buildpacks.dockerfile import BuildError, Built
from berth.framework.model import Artifact
from berth.framework.registry import Credentials, parse_reference

PUSH_TIMEOUT = 600.0  # seconds of silence from the engine during a push
REPORT_EVERY = 5.0  # seconds between progress lines


class Publisher:
    """Pushes built images to the registry at `registry` (HOST:PORT). `client` makes a Docker
    SDK client with a socket timeout (as DockerfileBuilder's does)."""

    def __init__(
        self,
        registry: str,
        credentials: Credentials,
        client: Callable[[float], docker.DockerClient] | None = None,
    ) -> None:
        self.registry = registry
        self._credentials = credentials
        self._client = client or (lambda timeout: docker.from_env(timeout=int(timeout) + 1))

    def target(self, local_tag: str) -> tuple[str, str]:
        """(repository, tag) in the registry for a local tag like `berth/app-x:1a2b3c4d5e6f`."""
        ref = parse_reference(local_tag)
        return f"{self.registry}/{ref.path}", ref.tag or "latest"

    def publish(self, built: Built, emit: Callable[[str], None]) -> Artifact:
        repository, tag = self.target(built.image)
        emit(f"-----> Pushing to {self.registry}")
        started = time.monotonic()
        client = self._client(PUSH_TIMEOUT)
        digest = ""
        try:
            client.api.tag(built.image_id, repository, tag, force=True)
            auth = {"username": self._credentials.username, "password": self._credentials.password}
            last_report = started
            stream = client.api.push(repository, tag, stream=True, decode=True, auth_config=auth)
            error = ""
            for chunk in stream:  # read to its end even after an error: the socket is freed
                if "error" in chunk:
                    error = error or str(chunk.get("error") or "").strip() or "?"
                digest = _digest(chunk) or digest
                if time.monotonic() - last_report > REPORT_EVERY:
                    last_report = time.monotonic()
                    emit(f"       pushing… {time.monotonic() - started:.0f}s")
            if error:
                raise BuildError(f"the push to {self.registry} failed: {_explain(error)}")
        except docker.errors.APIError as exc:
            raise BuildError(f"the push to {self.registry} failed: {exc.explanation}") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise BuildError(
                f"the push to {self.registry} failed: lost the Docker engine ({exc})"
            ) from None
        finally:
            client.close()
        if not digest:
            raise BuildError(f"the push to {self.registry} ended without a digest")
        ref = f"{repository}:{tag}"
        emit(f"       Pushed {ref} ({digest[:19]}…) in {time.monotonic() - started:.1f}s")
        return Artifact("image", ref, built.port, digest=digest)


def _digest(chunk: dict[str, Any]) -> str:
    """The manifest digest from a push's stream (its `aux`), or ""."""
    aux = chunk.get("aux")
    if isinstance(aux, dict) and str(aux.get("Digest", "")).startswith("sha256:"):
        return str(aux["Digest"])
    return ""


def _explain(detail: str) -> str:
    if "unauthorized" in detail or "authentication required" in detail:
        return (
            f"{detail} (the registry refused Berth's credentials: does this host's"
            " DATA_DIR/registry/credentials.json match the registry's?)"
        )
    if "connection refused" in detail or "no such host" in detail:
        return f"{detail} (is `berth registry` running and reachable at this address?)"
    if "server gave HTTP response to HTTPS client" in detail:
        return (
            f"{detail} (the Docker engine wants TLS for this registry: list it under"
            " insecure-registries in /etc/docker/daemon.json, or use 127.0.0.1)"
        )
    return detail
