"""A whole Berth for an integration test module, and what its tests do with it.

`ServerHarness` is `berth server` as one real process (API, logd, framework in local mode,
router with its HAProxy); `SplitHarness` is `berth api`, `berth framework` and `berth router`
as three. Both give, once started, a logged-in `Api` (`.api`), the `berth` CLI as a real
process with its environment, requests through the router, and the reads and waits the
tests share. A test module subclasses one and passes its own configuration in its
constructor — its chroot, its BERTH_* variables, the port range of its tasks — so a reader
of the module sees what its Berth runs with. `running` is the body of a fixture;
`remove_containers` is what a module cleans up after.

Test code: imports `tests.support.services` and `tests.conftest`, never a test module."""

from __future__ import annotations

import abc
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import docker
import requests

from tests.conftest import Api
from tests.support import waiting
from tests.support.services import (
    BerthApi,
    BerthFramework,
    BerthRouter,
    ZooKeeper,
    cleanup_executors,
)


class Startable(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=Startable)


def running(berth: S) -> Iterator[S]:
    """Starts `berth`, hands it over, stops it: `yield from running(Berth(...))` in a fixture,
    with the module's own clean-up after it."""
    berth.start()
    try:
        yield berth
    finally:
        berth.stop()


def remove_containers(client: docker.DockerClient, *apps: str) -> None:
    """Removes every container, running or not, of these apps (once their Berth has stopped)."""
    for app in apps:
        for container in client.containers.list(all=True, filters={"label": f"berth.app={app}"}):
            container.remove(force=True)


class Harness(abc.ABC):
    """What both harnesses share: `root` holds the processes' logs and the data dir
    (`data`); `api` is set by `start`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.api: Api

    @abc.abstractmethod
    def start(self) -> None:
        """Starts the processes, returning once they answer; sets `api`."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stops the processes and the executors they left."""

    @property
    @abc.abstractmethod
    def router_url(self) -> str:
        """`http://127.0.0.1:PORT` of the router's HAProxy."""

    def cli_env(self) -> dict[str, str]:
        """The `berth` CLI's environment: this process's, without its BERTH_* variables,
        logged in by BERTH_URL and BERTH_TOKEN, with a config dir of its own (ROOT/config)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        env.update(
            BERTH_URL=self.api.url,
            BERTH_TOKEN=self.api.token,
            XDG_CONFIG_HOME=str(self.root / "config"),
        )
        return env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`berth ARGS` as a real process (two minutes at most); `check`: assert it exits 0."""
        done = subprocess.run(
            [sys.executable, "-m", "berth.cli", *args],
            env=self.cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def create_app(self, app: str) -> None:
        reply = self.api.call("POST", "/v1/apps", json={"name": app})
        assert reply.status_code == 201, reply.text

    def releases(self, app: str) -> list[dict[str, Any]]:
        """The app's releases, newest first."""
        found: list[dict[str, Any]] = self.api.call("GET", f"/v1/apps/{app}/releases").json()
        return found

    def newest_release(self, app: str) -> dict[str, Any]:
        return self.releases(app)[0]

    def builds(self, app: str) -> list[dict[str, Any]]:
        """The app's builds, newest first, as `berth builds --json` lists them."""
        found: list[dict[str, Any]] = json.loads(self.cli("builds", "-a", app, "--json").stdout)
        return found

    def get(self, host: str, path: str = "/", **kwargs: Any) -> requests.Response:
        """GET `path` through the router with this Host (APP.localhost for an app);
        `kwargs`: more of requests' arguments (`headers` are added to Host)."""
        headers = {"Host": host, **kwargs.pop("headers", {})}
        return requests.get(f"{self.router_url}{path}", headers=headers, timeout=10, **kwargs)

    def serves(self, app: str, body: str, path: str = "/") -> requests.Response:
        """Waits (60 s at most) until the router answers 200 with `body` (stripped) for
        APP.localhost, and returns that answer. The router follows tasks in a moment: a
        refused connection or another answer meanwhile is waited through."""

        def check() -> requests.Response | None:
            try:
                response = self.get(f"{app}.localhost", path)
            except requests.RequestException:
                return None
            ok = response.status_code == 200 and response.text.strip() == body
            return response if ok else None

        found: requests.Response = waiting.wait_for(check, 60, interval=0.1)
        return found


class ServerHarness(Harness):
    """`berth server` as one real process, on ZooKeeper `zk` under `chroot`, logging to
    ROOT/server.log. `env`: its BERTH_* variables (BERTH_LOCAL_PORTS: the ports of its
    tasks), none of this process's own."""

    def __init__(
        self, zk: ZooKeeper, chroot: str, root: Path, env: dict[str, str] | None = None
    ) -> None:
        super().__init__(root)
        self.server = BerthApi(zk.hosts, chroot, self.data, root / "server.log", "server", env=env)

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    def start(self) -> None:
        self.server.start(60)
        self.api = Api(self.server)

    def stop(self) -> None:
        self.server.stop()
        cleanup_executors(self.data)

    def records(self, app: str, *args: str) -> list[dict[str, Any]]:
        """The app's log records (10,000 at most) from `berth logs --json ARGS`."""
        out = self.cli("logs", "-a", app, "--json", "-n", "10000", *args).stdout
        return [json.loads(line) for line in out.splitlines()]


class SplitHarness(Harness):
    """`berth api`, `berth framework` (local mode, its tasks on `ports`) and `berth router`
    as three real processes, on ZooKeeper `zk` under `chroot`, logging to ROOT/api.log,
    framework.log and router.log. `api_env`: the API's BERTH_* variables; `router_args`:
    more `berth router` flags."""

    def __init__(
        self,
        zk: ZooKeeper,
        chroot: str,
        root: Path,
        ports: str,
        *,
        api_env: dict[str, str] | None = None,
        router_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(root)
        self.api_server = BerthApi(zk.hosts, chroot, self.data, root / "api.log", env=api_env)
        self.framework = BerthFramework(zk.hosts, chroot, self.data, root / "framework.log", ports)
        self.router = BerthRouter(
            zk.hosts, chroot, self.data, root / "router.log", extra_args=router_args
        )

    @property
    def router_url(self) -> str:
        return self.router.url

    def start(self) -> None:
        """The API, then the framework until it leads, then the router."""
        self.api_server.start()
        self.api = Api(self.api_server)
        self.framework.start()
        self.framework.wait_leading()
        self.router.start()

    def stop(self) -> None:
        self.router.stop()
        self.framework.stop()
        self.api_server.stop()
        cleanup_executors(self.data)
