"""Settings: one frozen value read once from flags and BERTH_* variables, then passed down.

Pure parsing; the click options that fill it live with each process's command.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from berth.framework.errors import Invalid
from berth.framework.registry import parse_registry

DEFAULT_ZK = "127.0.0.1:2181/berth"
DEFAULT_API_ADDR = ":7070"
DEFAULT_DOMAIN = "localhost"
DEFAULT_LOGS_ADDR = "127.0.0.1:7071"  # berth logd (loopback: set a reachable address in a cluster)


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/berth")
    return Path.home() / ".local" / "share" / "berth"


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    zk_hosts: str  # host:port[,host:port…]
    zk_chroot: str  # "/berth"
    api_host: str
    api_port: int
    domain: str
    logs_host: str = "127.0.0.1"
    logs_port: int = 7071
    # Berth's image registry, HOST:PORT as the API and every agent reach it ("" = none: images
    # stay on the engine that built them). framework/registry.py, docs "Artifacts".
    registry: str = ""

    @property
    def zk(self) -> str:
        return f"{self.zk_hosts}{self.zk_chroot}"

    @property
    def api_url(self) -> str:
        host = self.api_host if self.api_host not in ("", "0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.api_port}"

    @property
    def logs_url(self) -> str:
        """Where executors, the framework and the API reach `berth logd`."""
        host = self.logs_host if self.logs_host not in ("", "0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.logs_port}"


def parse_zk(value: str) -> tuple[str, str]:
    """`h1:2181,h2:2181/chroot` → ("h1:2181,h2:2181", "/chroot"). The chroot is required to be
    a plain path so that several Berths can share one ZooKeeper without touching each other."""
    hosts, slash, chroot = value.partition("/")
    if not hosts:
        raise Invalid(f"--zk {value!r}: expected HOST:PORT[,HOST:PORT…][/chroot]")
    chroot = "/" + chroot.strip("/") if slash else "/berth"
    if chroot == "/" or any(not part for part in chroot.split("/")[1:]):
        raise Invalid(f"--zk {value!r}: the chroot must be a path like /berth, not the root")
    return hosts, chroot


def parse_addr(value: str) -> tuple[str, int]:
    """`:7070` → ("0.0.0.0", 7070); `127.0.0.1:7070`; `[::1]:7070`."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(f"address {value!r}: expected [HOST]:PORT")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - the documented default: all interfaces
    return host, int(port)


def make_settings(
    data_dir: Path | None,
    zk: str,
    api_addr: str,
    domain: str,
    logs_addr: str = DEFAULT_LOGS_ADDR,
    registry: str = "",
) -> Settings:
    hosts, chroot = parse_zk(zk)
    host, port = parse_addr(api_addr)
    logs_host, logs_port = parse_addr(logs_addr)
    return Settings(
        data_dir=data_dir or default_data_dir(),
        zk_hosts=hosts,
        zk_chroot=chroot,
        api_host=host,
        api_port=port,
        domain=domain.strip(".").lower(),
        logs_host=logs_host,
        logs_port=logs_port,
        registry=parse_registry(registry) if registry else "",
    )
