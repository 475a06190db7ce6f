"""Idle memory of Berth's own processes: `berth server` and everything below it (the
`berth api` gunicorn master and its worker), with 0 apps and with 50 apps.

Starts a private ZooKeeper and `berth server` in a temp dir, lets them idle, and reads each
process's /proc/<pid>/status (VmRSS, RssAnon, RssFile, VmHWM) and /proc/<pid>/smaps_rollup
(PSS, USS = private clean + private dirty). RSS counts pages shared between the forked
processes once per process; PSS splits them, so the PSS total is what the tree really costs.
ZooKeeper's JVM is reported apart: it is not a Berth process.

    .venv/bin/python bench/rss.py [--apps 50] [--idle 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from bench._common import Table, cmdline, descendants, parent_of, print_machine
from tests.support.services import BerthApi, ZooKeeper

GOAL_MB = 150  # the budget for Berth's own processes, in MB (10^6 bytes)


@dataclass(frozen=True)
class Memory:
    pid: int
    role: str
    rss_kib: int
    anon_kib: int
    file_kib: int
    hwm_kib: int
    threads: int
    pss_kib: int | None
    uss_kib: int | None


def _fields(path: Path) -> dict[str, int]:
    """`Key:  123 kB` lines as {key: 123}; {} if the file cannot be read."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0])
    return values


def read_memory(pid: int, role: str) -> Memory:
    status = _fields(Path(f"/proc/{pid}/status"))
    rollup = _fields(Path(f"/proc/{pid}/smaps_rollup"))
    has_rollup = "Pss" in rollup
    return Memory(
        pid=pid,
        role=role,
        rss_kib=status["VmRSS"],
        anon_kib=status.get("RssAnon", 0),
        file_kib=status.get("RssFile", 0) + status.get("RssShmem", 0),
        hwm_kib=status.get("VmHWM", 0),
        threads=status.get("Threads", 0),
        pss_kib=rollup["Pss"] if has_rollup else None,
        uss_kib=rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0)
        if has_rollup
        else None,
    )


def role_of(pid: int, server_pid: int) -> str:
    if pid == server_pid:
        return "berth server (supervisor)"
    argv = cmdline(pid)
    if "api" in argv:
        if parent_of(pid) == server_pid:
            return "berth api (gunicorn master)"
        return "berth api (gunicorn worker)"
    return " ".join(argv)[:60] or "?"


def berth_tree(server_pid: int) -> list[Memory]:
    return [read_memory(pid, role_of(pid, server_pid)) for pid in descendants(server_pid)]


def mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f}"


def total(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def table(tree: list[Memory]) -> Table:
    rows = [
        [
            m.role,
            str(m.pid),
            str(m.threads),
            mib(m.rss_kib),
            mib(m.anon_kib),
            mib(m.file_kib),
            mib(m.pss_kib),
            mib(m.uss_kib),
            mib(m.hwm_kib),
        ]
        for m in tree
    ]
    rows.append(
        [
            f"**total ({len(tree)} processes)**",
            "",
            "",
            mib(sum(m.rss_kib for m in tree)),
            mib(sum(m.anon_kib for m in tree)),
            mib(sum(m.file_kib for m in tree)),
            mib(total([m.pss_kib for m in tree])),
            mib(total([m.uss_kib for m in tree])),
            "",
        ]
    )
    return Table(
        [
            "process",
            "pid",
            "threads",
            "VmRSS MiB",
            "anon MiB",
            "file+shmem MiB",
            "PSS MiB",
            "USS MiB",
            "VmHWM MiB",
        ],
        rows,
    )


def verdict(label: str, kib: int | None) -> str:
    if kib is None:
        return f"- {label}: not readable"
    mb = kib * 1024 / 1e6
    met = "MET" if mb <= GOAL_MB else "NOT MET"
    return f"- {label}: {mb:.1f} MB ({kib / 1024:.1f} MiB) vs goal ≤ {GOAL_MB} MB → {met}"


def report(title: str, tree: list[Memory], zookeeper: Memory) -> None:
    print(f"### {title}\n")
    print(table(tree).markdown())
    print()
    print(
        verdict(
            "Berth total VmRSS (shared pages counted per process)", sum(m.rss_kib for m in tree)
        )
    )
    print(verdict("Berth total PSS (shared pages split)", total([m.pss_kib for m in tree])))
    print(
        f"- ZooKeeper JVM (not Berth, for context; run with -Xmx256m): VmRSS"
        f" {mib(zookeeper.rss_kib)} MiB, PSS {mib(zookeeper.pss_kib)} MiB,"
        f" {zookeeper.threads} threads\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=50, help="apps to create (default 50)")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds to idle before reading")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="berth-bench-rss-") as tmp_name:
        tmp = Path(tmp_name)
        zookeeper = ZooKeeper(tmp / "zookeeper")
        server = BerthApi(
            zookeeper.hosts,
            f"/bench-{uuid.uuid4().hex[:8]}",
            tmp / "data",
            tmp / "server.log",
            command="server",
        )
        try:
            zookeeper.start()
            server.start()
            assert zookeeper._proc is not None
            zk_pid = zookeeper._proc.pid
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {server.admin_token}"

            def list_apps() -> int:
                response = session.get(f"{server.url}/v1/apps", timeout=30)
                response.raise_for_status()
                return len(response.json())

            print_machine(tmp)
            print(f"apps listed before: {list_apps()}; idling {args.idle:.0f} s\n")
            time.sleep(args.idle)
            report("0 apps", berth_tree(server.pid), read_memory(zk_pid, "zookeeper"))

            started = time.monotonic()
            for i in range(1, args.apps + 1):
                response = session.post(
                    f"{server.url}/v1/apps", json={"name": f"bench-{i}"}, timeout=30
                )
                response.raise_for_status()
            took = time.monotonic() - started
            listed = list_apps()
            print(
                f"created {args.apps} apps in {took:.2f} s; apps listed: {listed};"
                f" idling {args.idle:.0f} s\n"
            )
            if listed != args.apps:
                raise RuntimeError(f"expected {args.apps} apps, the API lists {listed}")
            time.sleep(args.idle)
            report(f"{args.apps} apps", berth_tree(server.pid), read_memory(zk_pid, "zookeeper"))
        finally:
            server.stop()
            zookeeper.stop()


if __name__ == "__main__":
    main()
