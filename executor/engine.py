"""The Docker Engine API, as the executor speaks it: JSON calls and streams over
berth.framework.http1, on the engine's unix socket (or DOCKER_HOST).

Why not the Docker SDK here: the executor runs once per task, and importing the SDK (with
`requests` and urllib3) costs ~8 MiB of resident memory in every executor; the few calls the
executor makes are plain JSON over the Engine API (docs/architecture.md, bench/RESULTS.md).
Builds and tests use the SDK.

The API version is pinned to 1.41 (Docker 20.10, Debian 12's docker.io); later engines still
serve it. Errors: `EngineError` when the engine answers with an error (its status and message),
OSError when it cannot be reached or a read times out. containers.py turns both into Berth's
errors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from berth.framework import http1

API_VERSION = "1.41"
DEFAULT_HOST = "unix:///var/run/docker.sock"
DEFAULT_TIMEOUT = 60.0


class EngineError(Exception):
    """The engine answered a call with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def endpoint_from_env(env: Mapping[str, str] = os.environ) -> http1.Endpoint:
    """DOCKER_HOST (`unix:///path` or `tcp://host:port`), or the local socket. ValueError
    names a setting the executor cannot use."""
    if env.get("DOCKER_TLS_VERIFY") or env.get("DOCKER_CERT_PATH"):
        raise ValueError(
            "the executor does not speak TLS to the Docker engine: point DOCKER_HOST at the "
            "agent's local socket"
        )
    host = env.get("DOCKER_HOST") or DEFAULT_HOST
    if host.startswith("tcp://"):
        host = "http://" + host.removeprefix("tcp://")
    if not host.startswith(("unix://", "http://")):
        raise ValueError(f"DOCKER_HOST={host!r} is neither unix:// nor tcp://")
    return http1.Endpoint.parse(host)


class Engine:
    """Calls to one Docker engine. Thread-safe: every call is its own connection."""

    def __init__(self, endpoint: http1.Endpoint, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint = endpoint
        self.timeout = timeout

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] = os.environ, timeout: float = DEFAULT_TIMEOUT
    ) -> Engine:
        return cls(endpoint_from_env(env), timeout)

    def open(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
    ) -> http1.Response:
        """One call whose answer the caller reads (a stream); raises EngineError on an error
        status (the answer is closed then). `headers`: e.g. a pull's X-Registry-Auth."""
        response = http1.request(
            self.endpoint,
            method,
            http1.path_with_query(f"/v{API_VERSION}{path}", query),
            json_body=body,
            headers=headers,
            connect_timeout=self.timeout,
            timeout=timeout,
        )
        if response.status < 400:
            return response
        with response:
            raise EngineError(response.status, _message(response))

    def call(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """One call; its JSON answer (None for an empty one)."""
        with self.open(
            method, path, query, body, self.timeout if timeout is None else timeout
        ) as r:
            data = r.read()
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError as e:
            raise http1.ProtocolError(f"the Docker engine answered {path} with non-JSON") from e


def _message(response: http1.Response) -> str:
    """The engine's `{"message": …}`, or its answer's text."""
    text = response.text(64 * 1024).strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500] or response.reason
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])
    return text[:500]
