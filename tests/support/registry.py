"""Real parts for the artifact tests (docs/architecture.md "Artifacts"): a second Docker engine
on this machine, standing in for a Mesos agent on another host, and Berth's registry started
the way `berth server` starts it (`python -m berth.framework.registryd`, which execs Debian's
`docker-registry` with htpasswd auth and a generated password).

`SecondEngine` runs `dockerd` with everything of its own — `--data-root`, `--exec-root`,
`--pidfile`, a unix socket, a config file (so /etc/docker/daemon.json is not read), its own
bridge (`berthb<hex>`, a free 172.30.x.0/24, made with `ip link`) and `--iptables=false` (the
first engine's rules stay untouched; published ports go through docker-proxy) — so it shares
no image or container with the first engine. It needs root, as dockerd does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import docker.errors
import requests

from tests.support.services import free_port
from tests.support.waiting import wait_for


def second_engine_available() -> bool:
    return (
        os.geteuid() == 0 and shutil.which("dockerd") is not None and shutil.which("ip") is not None
    )


def registry_available() -> bool:
    return shutil.which("docker-registry") is not None and shutil.which("htpasswd") is not None


def _free_subnet() -> str:
    used = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    routes = subprocess.run(
        ["ip", "-4", "route", "show"], capture_output=True, text=True, check=True
    ).stdout
    for third in range(200, 255):
        prefix = f"172.30.{third}."
        if prefix not in used and prefix not in routes:
            return f"{prefix}1/24"
    raise RuntimeError("no free 172.30.x.0/24 for the second engine's bridge")


class SecondEngine:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.bridge = f"berthb{uuid.uuid4().hex[:6]}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / "dockerd.log"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "daemon.json").write_text("{}\n")
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", _free_subnet(), "dev", self.bridge], check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    "dockerd",
                    f"--config-file={self.root / 'daemon.json'}",
                    f"--data-root={self.root / 'data'}",
                    f"--exec-root={self.root / 'exec'}",
                    f"--pidfile={self.root / 'docker.pid'}",
                    f"--host=unix://{self.socket}",
                    f"--bridge={self.bridge}",
                    "--iptables=false",
                    "--ip6tables=false",
                ],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_for(self._answers, timeout=60)

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"dockerd exited: {self.log.read_text()[-3000:]}")
        if not self.socket.exists():
            return False
        try:
            client = self.client()
        except docker.errors.DockerException:
            return False
        client.close()
        return True

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=60)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(docker.errors.DockerException):
                client = self.client()
                for container in client.containers.list(all=True):
                    container.remove(force=True)
                client.close()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


class Registry:
    """`berth registry` on a loopback port, its data dir `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"registry-{self.port}.log"

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "berth.framework.registryd",
                    f"--data-dir={self.data_dir}",
                    f"--listen=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        wait_for(self._answers, timeout=30)

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the registry exited: {self.log.read_text()[-3000:]}")
        try:
            answer = requests.get(f"http://{self.address}/v2/", timeout=2)
        except requests.RequestException:
            return False
        return answer.status_code == 401  # up, and asking for credentials

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
