"""Issue 3's goals for the framework and its executors, measured in one run on this machine:
a private ZooKeeper, a real `berth api`, `berth framework` in local mode (its local agent starts
one `python -m berth.executor` per task, each running a hardened Docker container) and the
local busybox test image (`berth-test/busybox:1`, which serves HTTP on $PORT as uid 10000).

1. Scale-up time: `web=0 → web=N` (20) through PATCH /v1/apps/<app>/formation, timed until
   /ps shows N tasks running and healthy. Peer, same run: N `docker run -d` of the same image
   and limits, issued one after another by the Docker CLI (each with its own published port and
   PORT, the same hardening flags as Berth's containers), timed until all N answer HTTP 200.
   Goal: Berth faster than this sequential floor (its executors launch in parallel). `--rounds`
   rounds, alternating who goes first, each side after `--gap` s of quiet; both warmed up once
   before. Also the CPU each side spends to launch (Berth, executors, docker CLI, dockerd and
   containerd, the containers' shims).
2. Memory each task costs beyond its container, with N tasks running: VmRSS, PSS and USS of
   every executor process (from /proc/<pid>/status and smaps_rollup), per executor and in
   total. Goal ≤ 20 MB per executor. Also Berth's own processes, for context what each
   container costs anyway (its cgroup, its containerd shim, its docker-proxy), and what a new
   interpreter costs after the imports an executor needs.
3. Idle CPU with as many tasks as fit (50 asked; the offer is this machine's cpus, and each
   task needs its cpu limit plus the executor's own reservation; `--cpu` 0.02 is asked for
   and, if the API refuses it, its minimum is used): CPU seconds over `--idle` s of Berth's
   processes (api; framework with its local agent), of all executors together, and for
   context of the containers themselves (cgroup cpuacct) and Docker's processes.

Every port is on 127.0.0.1 as far as this script decides (Berth publishes task ports on every
address, as Mesos offers them). Everything started is stopped and every container removed at
the end, also on error, Ctrl-C or SIGTERM.

    .venv/bin/python bench/scale.py [--tasks 20] [--idle-tasks 50] [--idle 30] [--rounds 4]
                                    [--gap 5] [--settle 10] [--keep-logs DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from bench._common import (
    CLOCK_TICKS,
    Table,
    cmdline,
    cpu_seconds,
    descendants,
    parent_of,
    print_machine,
)
from bench.rss import Memory, mib, read_memory, table
from berth.framework.model import MIN_CPUS, TERMINAL_STATES
from berth.framework.plan import EXECUTOR
from tests.support.images import busybox_available, docker_client, ensure_test_image
from tests.support.services import (
    BerthApi,
    BerthFramework,
    ZooKeeper,
    cleanup_executors,
    executor_pids,
    zookeeper_available,
)

GOAL_EXECUTOR_MB = 20  # per executor, MB (10^6 bytes)
# Task ports. Both ranges sit below the kernel's ephemeral range (32768-60999 by default):
# a port in it can be taken at any moment as the local end of some outgoing connection, and
# then a container publishing it fails ("bind: address already in use"), as happened here.
BERTH_PORTS = (30000, 30499)  # --local-ports for the framework
PEER_PORTS = 30500  # the peer's containers publish 30500, 30501, ...
RESERVE_MEM_MB = 1024.0  # what local mode keeps back from MemTotal (local_driver's default)
POLL = 0.1  # seconds between /ps polls while waiting
CGROUP = Path("/sys/fs/cgroup")
DAEMONS = ("dockerd", "containerd")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally` below


# -- Berth through its API --------------------------------------------------------------------


class Api:
    def __init__(self, server: BerthApi) -> None:
        self.url = server.url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {server.admin_token}"

    def call(self, method: str, path: str, body: object = None) -> requests.Response:
        return self.session.request(method, self.url + path, json=body, timeout=30)

    def must(self, method: str, path: str, body: object = None) -> Any:
        response = self.call(method, path, body)
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    def tasks(self, app: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.must("GET", f"/v1/apps/{app}/ps")["tasks"]
        return found

    def live(self, app: str) -> list[dict[str, Any]]:
        return [t for t in self.tasks(app) if t["state"] not in TERMINAL_STATES]


def serving(task: dict[str, Any]) -> bool:
    return task["state"] == "running" and task["healthy"] is True


@dataclass
class ScaleUp:
    """One timed `web=0 → web=n`: wall time until /ps showed n running and healthy, and
    when (seconds after the PATCH) each task was first seen listed and first seen serving,
    plus the framework's own launched_at / started_at stamps."""

    n: int
    seconds: float
    listed: list[float]
    served: list[float]
    launched: list[float]  # launched_at - PATCH time
    started: list[float]  # started_at - launched_at
    polls: int
    tasks: list[dict[str, Any]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU s spent launching, by group


def scale_up(
    api: Api, app: str, n: int, timeout: float, berth_pids: list[int], data: Path, docker: Any
) -> ScaleUp:
    """PATCH web=n (from 0), then poll /ps until n tasks run healthy. CPU spent meanwhile:
    Berth's processes and Docker's daemons as deltas; the executors and the containers'
    shims are all new, so their whole CPU time counts."""
    first_listed: dict[str, float] = {}
    first_served: dict[str, float] = {}
    berth_before = cpu_total(berth_pids)
    daemons_before = cpu_total(pids_named(*DAEMONS))
    wall = time.time()
    start = time.perf_counter()
    api.must("PATCH", f"/v1/apps/{app}/formation", {"web": n})
    polls = 0
    while True:
        tasks = api.live(app)
        now = time.perf_counter() - start
        polls += 1
        for task in tasks:
            first_listed.setdefault(task["id"], now)
            if serving(task):
                first_served.setdefault(task["id"], now)
        if len(tasks) == n and all(serving(t) for t in tasks):
            break
        if now > timeout:
            states = sorted(f"{t['process']}.{t['index']}={t['state']}" for t in tasks)
            raise TimeoutError(f"{n} tasks not all serving after {timeout:.0f} s: {states}")
        time.sleep(POLL)
    ids = [c.id for c in app_containers(docker, app)]
    cpu = {
        "berth": cpu_total(berth_pids) - berth_before,
        "executors": cpu_total(executor_pids(data)),
        "daemons": cpu_total(pids_named(*DAEMONS)) - daemons_before,
        "shims": cpu_total(docker_helpers(ids, [])["shim"]),
    }
    return ScaleUp(
        n=n,
        seconds=now,
        listed=sorted(first_listed[t["id"]] for t in tasks),
        served=sorted(first_served[t["id"]] for t in tasks),
        launched=sorted(t["launched_at"] - wall for t in tasks),
        started=sorted(t["started_at"] - t["launched_at"] for t in tasks),
        polls=polls,
        tasks=tasks,
        cpu=cpu,
    )


def scale_to(api: Api, app: str, n: int, timeout: float) -> None:
    api.must("PATCH", f"/v1/apps/{app}/formation", {"web": n})
    deadline = time.monotonic() + timeout
    while not (len(live := api.live(app)) == n and all(map(serving, live))):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} tasks did not all run in {timeout:.0f} s")
        time.sleep(POLL)


def scale_down(api: Api, app: str, docker: Any, timeout: float) -> float:
    """web=0; seconds until no live task and no container of the app is left."""
    start = time.perf_counter()
    api.must("PATCH", f"/v1/apps/{app}/formation", {"web": 0})
    while api.live(app) or docker.containers.list(
        all=True, sparse=True, filters={"label": f"berth.app={app}"}
    ):
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{app} did not scale to 0 in {timeout:.0f} s")
        time.sleep(POLL)
    return time.perf_counter() - start


def answers_http(port: int, timeout: float = 1.0) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


# -- the peer: docker run, one after another --------------------------------------------------


def port_free(port: int) -> bool:
    """Nothing listens on it (connections in TIME_WAIT do not count: docker-proxy, like most
    servers, listens with SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class PeerRun:
    n: int
    seconds: float  # first docker run issued → all n answer HTTP 200
    runs_done: float  # first docker run issued → the last docker run returned
    run_seconds: list[float]  # each docker run's own duration, sorted
    container_ids: list[str]
    cpu: dict[str, float] = field(default_factory=dict)  # as ScaleUp.cpu


def docker_run_argv(
    image: str, name: str, label: str, port: int, cpus: float, memory_mb: int
) -> list[str]:
    """The Docker CLI's equivalent of what executor/containers.py asks of the engine."""
    return [
        "docker", "run", "--detach", "--name", name, "--label", label,
        "--env", f"PORT={port}", "--publish", f"127.0.0.1:{port}:{port}",
        "--user", "10000:10000", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--pids-limit", "256", "--memory", f"{memory_mb}m", "--memory-swap", f"{memory_mb}m",
        "--cpus", f"{cpus:g}", "--restart", "no", "--stop-signal", "SIGTERM", "--init",
        "--log-driver", "json-file", "--log-opt", "max-size=10m", "--log-opt", "max-file=2",
        image,
    ]  # fmt: skip


def peer(
    image: str, label: str, ports: list[int], cpus: float, memory_mb: int, timeout: float
) -> PeerRun:
    prefix = f"bench-peer-{uuid.uuid4().hex[:6]}"
    ids: list[str] = []
    durations: list[float] = []
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    daemons_before = cpu_total(pids_named(*DAEMONS))
    start = time.perf_counter()
    for i, port in enumerate(ports):
        began = time.perf_counter()
        done = subprocess.run(
            docker_run_argv(image, f"{prefix}-{i}", label, port, cpus, memory_mb),
            capture_output=True,
            text=True,
            check=False,
        )
        durations.append(time.perf_counter() - began)
        if done.returncode != 0:
            raise RuntimeError(f"docker run failed: {done.stderr.strip()[:300]}")
        ids.append(done.stdout.strip())
    runs_done = time.perf_counter() - start
    waiting = set(ports)
    while waiting:
        waiting = {p for p in waiting if not answers_http(p, timeout=0.5)}
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"peer containers on {sorted(waiting)} never answered")
        if waiting:
            time.sleep(0.02)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = {
        "docker CLI": after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime,
        "daemons": cpu_total(pids_named(*DAEMONS)) - daemons_before,
        "shims": cpu_total(docker_helpers(ids, [])["shim"]),
    }
    return PeerRun(len(ports), seconds, runs_done, sorted(durations), ids, cpu)


def remove_containers(docker: Any, label: str) -> int:
    found = docker.containers.list(all=True, filters={"label": label})
    for container in found:
        with suppress(Exception):
            container.remove(force=True)
    return len(found)


# -- memory -----------------------------------------------------------------------------------


def berth_processes(api_pid: int, framework_pid: int, executors: set[int]) -> list[Memory]:
    """api: the gunicorn master and its worker; framework: its process and any children that
    are not executors (the local agent runs inside the framework process)."""
    found = []
    for pid in descendants(api_pid):
        role = "berth api (gunicorn master)" if pid == api_pid else "berth api (gunicorn worker)"
        found.append(read_memory(pid, role))
    for pid in descendants(framework_pid):
        if pid in executors or (pid != framework_pid and parent_of(pid) in executors):
            continue
        role = (
            "berth framework (+ local agent)"
            if pid == framework_pid
            else " ".join(cmdline(pid))[:50]
        )
        found.append(read_memory(pid, role))
    return found


def executor_table(rows: list[Memory]) -> Table:
    """Mean, min, max and total over the executors, column by column."""
    columns: list[Callable[[Memory], int]] = [
        lambda m: m.rss_kib,
        lambda m: m.anon_kib,
        lambda m: m.file_kib,
        lambda m: m.pss_kib or 0,
        lambda m: m.uss_kib or 0,
        lambda m: m.hwm_kib,
    ]
    summaries: list[tuple[str, Callable[[list[int]], float]]] = [
        ("mean", statistics.fmean),
        ("min", min),
        ("max", max),
        ("total", sum),
    ]
    body = []
    for how, summary in summaries:
        threads = summary([m.threads for m in rows])
        cells = [mib(round(summary([get(m) for m in rows]))) for get in columns]
        if how == "total":
            cells[-1] = ""  # a sum of peaks reached at different times means nothing
        body.append(
            [f"{how} of {len(rows)} executors", f"{threads:.1f}".removesuffix(".0"), *cells]
        )
    return Table(
        [
            "executors",
            "threads",
            "VmRSS MiB",
            "anon MiB",
            "file+shmem MiB",
            "PSS MiB",
            "USS MiB",
            "VmHWM MiB",
        ],
        body,
    )


def cgroup_file(container_id: str, controller: str, name: str) -> Path | None:
    """The container's cgroup file: v1 (cgroupfs driver), else v2 (cgroupfs or systemd)."""
    for path in (
        CGROUP / controller / "docker" / container_id / name,
        CGROUP / "docker" / container_id / name,
        CGROUP / "system.slice" / f"docker-{container_id}.scope" / name,
    ):
        if path.exists():
            return path
    return None


def container_memory_kib(container_id: str) -> int | None:
    path = cgroup_file(container_id, "memory", "memory.usage_in_bytes") or cgroup_file(
        container_id, "memory", "memory.current"
    )
    return None if path is None else int(path.read_text()) // 1024


def container_cpu_seconds(container_id: str) -> float | None:
    v1 = cgroup_file(container_id, "cpuacct", "cpuacct.usage")
    if v1 is not None:
        return int(v1.read_text()) / 1e9
    v2 = cgroup_file(container_id, "cpu", "cpu.stat")
    if v2 is None:
        return None
    for line in v2.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    return None


def docker_helpers(container_ids: Iterable[str], ports: Iterable[int]) -> dict[str, list[int]]:
    """The per-container processes Docker runs outside the container: a containerd shim per
    container, a docker-proxy per published port (and address family). Same for docker run."""
    ids, port_args = set(container_ids), {str(p) for p in ports}
    found: dict[str, list[int]] = {"shim": [], "proxy": []}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        argv = cmdline(int(entry.name))
        if not argv:
            continue
        program = Path(argv[0]).name
        if program.startswith("containerd-shim") and _after(argv, "-id") in ids:
            found["shim"].append(int(entry.name))
        elif program == "docker-proxy" and _after(argv, "-host-port") in port_args:
            found["proxy"].append(int(entry.name))
    return found


def _after(argv: list[str], flag: str) -> str | None:
    """The value following `flag` in an argv, if any."""
    if flag in argv[:-1]:
        return argv[argv.index(flag) + 1]
    return None


def cpu_total(pids: Iterable[int]) -> float:
    """CPU seconds of these processes and of the children they have waited for (runc under
    a shim, the shim's starter under containerd); processes gone are skipped."""
    total = 0.0
    for pid in pids:
        with suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += sum(int(f) for f in fields[11:15]) / CLOCK_TICKS
    return total


def pids_named(*names: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
    return found


def app_containers(docker: Any, app: str) -> list[Any]:
    return list(docker.containers.list(filters={"label": f"berth.app={app}"}))


IMPORTS = [
    ("nothing (bare interpreter)", "pass"),
    (
        "the stdlib modules the executor uses",
        "import base64, dataclasses, json, logging, queue, random, re, shutil, signal, socket,"
        " threading, uuid",
    ),
    ("berth.framework.http1 (the executor's HTTP client)", "import berth.framework.http1"),
    ("for comparison: requests", "import requests"),
    ("for comparison: docker (the SDK; imports requests)", "import docker"),
    ("berth.executor.main (what each executor loads)", "import berth.executor.main"),
]
_PROBE = (
    "import resource, sys\n{code}\n"
    "s = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())\n"
    "u = resource.getrusage(resource.RUSAGE_SELF)\n"
    "print(s['VmRSS'].split()[0], s['RssAnon'].split()[0], u.ru_utime + u.ru_stime)"
)


def import_cost_table(repeats: int = 3) -> Table:
    """Why an executor costs what it does: a fresh interpreter (the venv's, as the local agent
    starts executors) after each import, its VmRSS, RssAnon and the CPU time it took."""
    rows = []
    for label, code in IMPORTS:
        rss, anon, cpu = [], [], []
        for _ in range(repeats):
            done = subprocess.run(
                [sys.executable, "-c", _PROBE.format(code=code)],
                capture_output=True,
                text=True,
                check=True,
            )
            r, a, c = done.stdout.split()
            rss.append(int(r))
            anon.append(int(a))
            cpu.append(float(c))
        rows.append(
            [
                label,
                mib(round(statistics.median(rss))),
                mib(round(statistics.median(anon))),
                f"{1000 * statistics.median(cpu):.0f}",
            ]
        )
    return Table(
        ["a new interpreter, after importing", "VmRSS MiB", "anon MiB", "CPU ms (median)"],
        rows,
    )


def report_memory(
    api_pid: int, framework_pid: int, data: Path, docker: Any, app: str, ports: list[int]
) -> list[Memory]:
    executors = sorted(executor_pids(data))
    rows = [read_memory(pid, "executor") for pid in executors]
    print(executor_table(rows).markdown())
    print()
    own = berth_processes(api_pid, framework_pid, set(executors))
    print(table(own).markdown())
    print()

    containers = app_containers(docker, app)
    cg = [container_memory_kib(c.id) for c in containers]
    helpers = docker_helpers([c.id for c in containers], ports)
    shims = [read_memory(pid, "shim") for pid in helpers["shim"]]
    proxies = [read_memory(pid, "proxy") for pid in helpers["proxy"]]
    n = len(rows)

    def avg(values: list[int]) -> str:
        return mib(round(sum(values) / n)) if n else "n/a"

    known = [k for k in cg if k is not None]
    context = Table(
        ["per task (average over the tasks)", "processes", "RSS MiB", "PSS MiB"],
        [
            [
                "Berth's executor (python -m berth.executor)",
                str(n),
                avg([m.rss_kib for m in rows]),
                avg([m.pss_kib or 0 for m in rows]),
            ],
            [
                "the container itself (cgroup memory usage, incl. page cache)",
                str(len(containers)),
                avg(known) if len(known) == len(cg) else "n/a",
                "",
            ],
            [
                "its containerd-shim-runc-v2 (docker run has it too)",
                str(len(shims)),
                avg([m.rss_kib for m in shims]),
                avg([m.pss_kib or 0 for m in shims]),
            ],
            [
                "its docker-proxy processes (docker run has them too)",
                str(len(proxies)),
                avg([m.rss_kib for m in proxies]),
                avg([m.pss_kib or 0 for m in proxies]),
            ],
        ],
    )
    print(context.markdown())
    print()
    print(import_cost_table().markdown())
    print()
    if n:
        for label, kib in (
            ("VmRSS", sum(m.rss_kib for m in rows) / n),
            ("PSS", sum(m.pss_kib or 0 for m in rows) / n),
        ):
            mb = kib * 1024 / 1e6
            met = "MET" if mb <= GOAL_EXECUTOR_MB else "NOT MET"
            over = f" ({mb / GOAL_EXECUTOR_MB:.2f}x the goal)" if mb > GOAL_EXECUTOR_MB else ""
            print(
                f"- {label} per executor (mean of {n}): {mb:.1f} MB ({kib / 1024:.1f} MiB)"
                f" vs goal ≤ {GOAL_EXECUTOR_MB} MB → {met}{over}"
            )
        total = sum(m.pss_kib or 0 for m in rows)
        print(
            f"- all {n} executors together: VmRSS {mib(sum(m.rss_kib for m in rows))} MiB,"
            f" PSS {mib(total)} MiB; Berth's own processes: VmRSS"
            f" {mib(sum(m.rss_kib for m in own))} MiB, PSS {mib(sum(m.pss_kib or 0 for m in own))}"
            " MiB\n"
        )
    return rows


# -- idle CPU ---------------------------------------------------------------------------------


def fit(cpus: float, mem_mb: float, task_cpus: float, task_mem_mb: float) -> tuple[int, int]:
    """How many tasks fit by cpus and by memory, each with its executor's reservation."""
    eps = 1e-9  # as plan.Resources.fits_in
    by_cpu = math.floor((cpus + eps) / (task_cpus + EXECUTOR.cpus))
    by_mem = math.floor((mem_mb + eps) / (task_mem_mb + EXECUTOR.mem))
    return by_cpu, by_mem


def idle_cpu(
    groups: dict[str, list[int]], containers: list[str], seconds: float
) -> tuple[float, dict[str, float], int]:
    """CPU seconds per group of pids over `seconds` of wall time (processes that vanish in
    between are counted as 0 and reported), the containers' from cgroup cpuacct."""

    def read() -> tuple[dict[int, float], dict[str, float | None]]:
        procs: dict[int, float] = {}
        for pids in groups.values():
            for pid in pids:
                with suppress(OSError):
                    procs[pid] = cpu_seconds(pid)
        return procs, {c: container_cpu_seconds(c) for c in containers}

    before, cg_before = read()
    start = time.perf_counter()
    time.sleep(seconds)
    after, cg_after = read()
    wall = time.perf_counter() - start
    used = {
        name: sum(after[p] - before[p] for p in pids if p in before and p in after)
        for name, pids in groups.items()
    }
    vanished = sum(1 for pids in groups.values() for p in pids if p not in after)
    cg = [
        (cg_after[c] or 0.0) - (cg_before[c] or 0.0)
        for c in containers
        if cg_before[c] is not None and cg_after[c] is not None
    ]
    used["containers"] = sum(cg) if len(cg) == len(containers) else float("nan")
    return wall, used, vanished


# -- main -------------------------------------------------------------------------------------


def seconds_table(berth: list[ScaleUp], peers: list[PeerRun]) -> Table:
    rows = []
    for i, (b, p) in enumerate(zip(berth, peers, strict=True), 1):
        rows.append(
            [
                f"{i} ({'Berth' if i % 2 else 'peer'} first)",
                f"{b.seconds:.2f}",
                f"{p.seconds:.2f}",
                f"{p.seconds / b.seconds:.2f}x",
                f"{b.served[0]:.2f} / {statistics.median(b.served):.2f}",
                f"{p.runs_done:.2f}",
                f"{statistics.median(p.run_seconds):.3f} / {p.run_seconds[-1]:.3f}",
            ]
        )
    return Table(
        [
            "round",
            f"Berth web=0→{berth[0].n}: s until all serving (/ps)",
            f"peer: {peers[0].n} x docker run, s until all answer HTTP",
            "peer / Berth",
            "Berth: first / median task serving, s",
            "peer: s until the last docker run returned",
            "peer: one docker run, median / max s",
        ],
        rows,
    )


def berth_detail_table(berth: list[ScaleUp]) -> Table:
    rows = []
    for i, b in enumerate(berth, 1):
        rows.append(
            [
                str(i),
                f"{b.launched[0]:.2f} / {statistics.median(b.launched):.2f} / {b.launched[-1]:.2f}",
                f"{b.started[0]:.2f} / {statistics.median(b.started):.2f} / {b.started[-1]:.2f}",
                f"{b.listed[-1]:.2f}",
                f"{b.served[-1]:.2f}",
                str(b.polls),
            ]
        )
    return Table(
        [
            "round",
            "launched_at - PATCH, min / median / max s",
            "started_at - launched_at, min / median / max s",
            "last task listed in /ps, s",
            "last task serving, s",
            "/ps polls",
        ],
        rows,
    )


def docker_facts(docker: Any, image: str) -> str:
    cli = subprocess.run(
        ["docker", "version", "--format", "{{.Client.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    info = docker.info()
    return (
        f"docker: engine {docker.version().get('Version', '?')}, CLI {cli or '?'}, SDK"
        f" {version('docker')}; cgroup v{info.get('CgroupVersion', '?')}"
        f" ({info.get('CgroupDriver', '?')} driver); image {image}"
    )


def keep_logs(tmp: Path, target: Path) -> None:
    """Copy the API's and framework's logs and every sandbox's output out of the temp dir."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("api.log", "framework.log"):
        if (tmp / name).exists():
            shutil.copy2(tmp / name, target / name)
    sandboxes = tmp / "data" / "agent" / "sandboxes"
    if sandboxes.is_dir():
        shutil.copytree(sandboxes, target / "sandboxes", dirs_exist_ok=True)


def launch_cpu_table(berth: list[ScaleUp], peers: list[PeerRun]) -> Table:
    """CPU seconds spent while scaling up (see scale_up and peer for what each counts)."""

    def cell(cpu: dict[str, float], key: str) -> str:
        return f"{cpu[key]:.2f}" if key in cpu else ""

    rows = []
    for i, (b, p) in enumerate(zip(berth, peers, strict=True), 1):
        for side, wall, cpu in (("Berth", b.seconds, b.cpu), ("peer", p.seconds, p.cpu)):
            rows.append(
                [
                    str(i),
                    side,
                    f"{wall:.2f}",
                    cell(cpu, "berth"),
                    cell(cpu, "executors"),
                    cell(cpu, "docker CLI"),
                    cell(cpu, "daemons"),
                    cell(cpu, "shims"),
                    f"{sum(cpu.values()):.2f}",
                    f"{sum(cpu.values()) / wall:.2f}",
                ]
            )
    return Table(
        [
            "round",
            "side",
            "wall s",
            "CPU s: api + framework",
            "executors",
            "docker CLI",
            "dockerd + containerd",
            "shims (+ runc)",
            "total",
            "cores busy (total / wall)",
        ],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20, help="tasks for goals 1 and 2 (20)")
    parser.add_argument("--idle-tasks", type=int, default=50, help="tasks wanted for goal 3 (50)")
    parser.add_argument("--idle", type=float, default=30.0, help="idle CPU window, s (30)")
    parser.add_argument("--settle", type=float, default=10.0, help="s to idle before (10)")
    parser.add_argument("--rounds", type=int, default=4, help="scale-up rounds, Berth and peer (4)")
    parser.add_argument("--gap", type=float, default=5.0, help="s of quiet before each (5)")
    parser.add_argument("--cpu", type=float, default=0.02, help="task cpu limit to ask for (0.02)")
    parser.add_argument("--memory", type=int, default=32, help="task memory limit, MiB (32)")
    parser.add_argument("--timeout", type=float, default=120.0, help="per wait, s (120)")
    parser.add_argument("--keep-logs", type=Path, help="copy Berth's logs and sandboxes here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _sigterm)

    if not (zookeeper_available() and busybox_available()):
        raise SystemExit("needs java + Debian's zookeeper and busybox-static")
    docker = docker_client()
    if docker is None:
        raise SystemExit("needs a running Docker engine")
    image = ensure_test_image(docker)
    run_id = uuid.uuid4().hex[:8]
    app = f"bench-scale-{run_id}"
    peer_label = f"bench.peer={run_id}"
    peer_ports = [PEER_PORTS + i for i in range(args.tasks)]
    low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    if BERTH_PORTS[0] <= high and peer_ports[-1] >= low:
        log(f"warning: task ports overlap the ephemeral range {low}-{high}; binds may fail")
    if busy := [p for p in peer_ports if not port_free(p)]:
        raise SystemExit(f"peer ports in use: {busy}")
    run_started = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="berth-bench-scale-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        chroot = f"/bench-{run_id}"
        zookeeper = ZooKeeper(tmp / "zookeeper")
        server = BerthApi(zookeeper.hosts, chroot, data, tmp / "api.log")
        framework = BerthFramework(
            zookeeper.hosts, chroot, data, tmp / "framework.log", "{}-{}".format(*BERTH_PORTS)
        )
        try:
            zookeeper.start()
            server.start()
            framework.start()
            framework.wait_leading()
            assert framework._proc is not None
            framework_pid = framework._proc.pid
            api = Api(server)

            print_machine(tmp)
            print(docker_facts(docker, image) + "\n")

            # -- the app and its limits ---------------------------------------------------
            api.must("POST", "/v1/apps", {"name": app})
            asked = api.call("PATCH", f"/v1/apps/{app}/limits", {"web": {"cpu": args.cpu}})
            task_cpus = args.cpu
            if asked.status_code != 200:
                error = asked.json().get("error") or {}
                message = error.get("message", asked.text[:200])
                print(
                    f"- the API refused cpu {args.cpu:g} ({asked.status_code}: {message});"
                    f" using its minimum, {MIN_CPUS:g}"
                )
                task_cpus = MIN_CPUS
            api.must(
                "PATCH",
                f"/v1/apps/{app}/limits",
                {"web": {"cpu": task_cpus, "memory": f"{args.memory}m"}},
            )
            cpus = float(os.cpu_count() or 1)
            mem = 0.0
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) // 1024 - RESERVE_MEM_MB
            by_cpu, by_mem = fit(cpus, mem, task_cpus, args.memory)
            fits = min(by_cpu, by_mem)
            per_task = task_cpus + EXECUTOR.cpus
            print(
                f"- task limits: cpu {task_cpus:g}, memory {args.memory} MiB; each executor"
                f" also reserves cpu {EXECUTOR.cpus:g}, {EXECUTOR.mem:g} MB. The local agent"
                f" offers cpus {cpus:g}, mem {mem:.0f} MB → at most {by_cpu} tasks by cpu"
                f" ({cpus:g} / {per_task:g}), {by_mem} by memory\n"
            )
            if args.tasks > fits:
                raise SystemExit(f"{args.tasks} tasks do not fit; at most {fits} do")
            idle_n = min(args.idle_tasks, fits)

            # -- warm-up: the first deploy (web=1), then back to 0 -------------------------
            log("deploying (web=1) and scaling back to 0: warm-up")
            api.must("POST", f"/v1/apps/{app}/deploy", {"image": image})
            deadline = time.monotonic() + args.timeout
            while not (
                (live := api.live(app)) and len(live) == 1 and all(serving(t) for t in live)
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError("the first deploy did not run")
                time.sleep(POLL)
            scale_down(api, app, docker, args.timeout)
            log("peer warm-up: one docker run")
            warm = peer(image, peer_label, peer_ports[:1], task_cpus, args.memory, args.timeout)
            remove_containers(docker, peer_label)
            del warm

            berth_runs: list[ScaleUp] = []
            peer_runs: list[PeerRun] = []
            downs: list[float] = []
            idle_report: list[str] = []
            berth_pids = [*descendants(server.pid), framework_pid]
            for round_no in range(1, args.rounds + 1):
                # Alternate who goes first; let Docker settle after the last removal.
                sides = ("berth", "peer") if round_no % 2 else ("peer", "berth")
                for side in sides:
                    time.sleep(args.gap)
                    if side == "peer":
                        log(f"round {round_no}: peer, {args.tasks} x docker run")
                        try:
                            peer_runs.append(
                                peer(
                                    image,
                                    peer_label,
                                    peer_ports,
                                    task_cpus,
                                    args.memory,
                                    args.timeout,
                                )
                            )
                        finally:
                            remove_containers(docker, peer_label)
                        continue
                    log(f"round {round_no}: Berth web=0→{args.tasks}")
                    up = scale_up(api, app, args.tasks, args.timeout, berth_pids, data, docker)
                    berth_runs.append(up)
                    answering = sum(answers_http(t["port"]) for t in up.tasks)
                    if answering != args.tasks:
                        raise RuntimeError(f"only {answering} of {args.tasks} tasks answer HTTP")
                    if round_no == 1:
                        log(f"memory with {args.tasks} tasks (after {args.settle:g} s)")
                        time.sleep(args.settle)
                        print(f"### Memory with {args.tasks} tasks running\n")
                        report_memory(
                            server.pid,
                            framework_pid,
                            data,
                            docker,
                            app,
                            [t["port"] for t in up.tasks],
                        )
                        if idle_n != args.tasks:
                            log(f"scaling to {idle_n} for the idle CPU window")
                            scale_to(api, app, idle_n, args.timeout)
                            time.sleep(args.settle)
                        idle_report = measure_idle(
                            api, server.pid, framework_pid, data, docker, app, idle_n, args
                        )
                    downs.append(scale_down(api, app, docker, args.timeout))

            print(f"### Scale-up: Berth web=0→{args.tasks} against {args.tasks} x docker run\n")
            print(seconds_table(berth_runs, peer_runs).markdown())
            print()
            print(berth_detail_table(berth_runs).markdown())
            print()
            print(launch_cpu_table(berth_runs, peer_runs).markdown())
            print()
            b_med = statistics.median(b.seconds for b in berth_runs)
            p_med = statistics.median(p.seconds for p in peer_runs)
            print(
                f"- Berth scale-down web={args.tasks}→0 until no task or container was left:"
                f" {', '.join(f'{d:.2f}' for d in downs)} s"
            )
            print(
                f"- Berth, median of {len(berth_runs)}: {b_med:.2f} s; peer: {p_med:.2f} s;"
                f" peer/Berth {p_med / b_med:.2f}x → goal (Berth faster than the sequential"
                f" docker-run floor): {'MET' if b_med < p_med else 'NOT MET'}"
                + ("" if b_med < p_med else f" (Berth {b_med / p_med:.2f}x the peer's time)")
            )
            print()
            print(f"### Idle CPU with {idle_n} tasks running\n")
            if idle_n < args.idle_tasks:
                need = args.idle_tasks * per_task
                print(
                    f"{args.idle_tasks} tasks asked, {idle_n} fit: {args.idle_tasks} x (task cpu"
                    f" {task_cpus:g} + executor {EXECUTOR.cpus:g}) = {need:g} cpus, and the"
                    f" local agent offers {cpus:g}.\n"
                )
            print("\n".join(idle_report))
            print(f"\nwhole run: {time.perf_counter() - run_started:.0f} s")
        finally:
            log("cleaning up")
            cleanup(framework, server, zookeeper, data, docker, app, peer_label)
            if args.keep_logs is not None:
                keep_logs(tmp, args.keep_logs)


def measure_idle(
    api: Api,
    api_pid: int,
    framework_pid: int,
    data: Path,
    docker: Any,
    app: str,
    n: int,
    args: argparse.Namespace,
) -> list[str]:
    before = {t["id"] for t in api.live(app) if serving(t)}
    executors = sorted(executor_pids(data))
    containers = [c.id for c in app_containers(docker, app)]
    api_tree = descendants(api_pid)
    framework_tree = [p for p in descendants(framework_pid) if p not in set(executors)]
    helpers = docker_helpers(containers, _ports_of(docker, containers))
    groups = {
        "api": api_tree,
        "framework": framework_tree,
        "executors": executors,
        "dockerd + containerd": pids_named("dockerd", "containerd"),
        "shims": helpers["shim"],
        "docker-proxy": helpers["proxy"],
    }
    log(f"idle CPU: {len(executors)} executors, {len(containers)} containers, {args.idle:g} s")
    wall, used, vanished = idle_cpu(groups, containers, args.idle)

    def pct(seconds: float) -> str:
        return "n/a" if math.isnan(seconds) else f"{100 * seconds / wall:.2f}"

    def per(seconds: float, count: int) -> str:
        if not count or math.isnan(seconds):
            return ""
        return f"{100 * seconds / wall / count:.3f}"

    labels = {
        "api": "berth api (gunicorn master + worker)",
        "framework": "berth framework (scheduler + local agent)",
        "executors": "all executors",
        "containers": "the containers themselves (cgroup cpuacct)",
        "dockerd + containerd": "context: dockerd + containerd",
        "shims": "context: the containers' containerd shims",
        "docker-proxy": "context: the containers' docker-proxy processes",
    }
    counts = {**{k: len(v) for k, v in groups.items()}, "containers": len(containers)}
    order = ["api", "framework", "executors", "containers", "dockerd + containerd"]
    order += ["shims", "docker-proxy"]
    rows = [
        [labels[k], str(counts[k]), f"{used[k]:.2f}", pct(used[k]), per(used[k], n)]
        for k in order
        if k in used
    ]
    berth_s = used["api"] + used["framework"]
    rows.insert(
        2, ["**Berth's own processes (api + framework)**", "", f"{berth_s:.2f}", pct(berth_s), ""]
    )
    table = Table(
        ["processes", "count", "CPU s", "% of one core", "% of one core per task"],
        rows,
    )
    after = {t["id"] for t in api.live(app) if serving(t)}
    lines = [
        f"{n} tasks; window {wall:.1f} s wall after {args.settle:g} s of settling; CPU from"
        " /proc/<pid>/stat utime+stime (10 ms ticks), containers from cgroup cpuacct.usage.\n",
        table.markdown(),
        "",
    ]
    if vanished:
        lines.append(f"- {vanished} processes exited during the window (counted as 0)")
    per_executor = used["executors"] / wall / max(len(executors), 1)
    line = f"- per executor: {100 * per_executor:.3f}% of one core"
    if len(executors) < 50:
        line += (
            f"; if it scales linearly, 50 executors would use {100 * per_executor * 50:.2f}%"
            " (an extrapolation, not measured)"
        )
    lines.append(line)
    lines.append(
        f"- tasks serving before / after the window: {len(before)} / {len(after)}"
        f" ({len(before - after)} of them replaced or gone)"
    )
    return lines


def _ports_of(docker: Any, container_ids: list[str]) -> list[int]:
    ports = []
    for cid in container_ids:
        with suppress(Exception):
            bindings = docker.api.inspect_container(cid)["HostConfig"]["PortBindings"] or {}
            for values in bindings.values():
                for value in values or []:
                    ports.append(int(value["HostPort"]))
    return ports


def cleanup(
    framework: BerthFramework,
    server: BerthApi,
    zookeeper: ZooKeeper,
    data: Path,
    docker: Any,
    app: str,
    peer_label: str,
) -> None:
    """Every step runs even if an earlier one fails."""
    steps: list[tuple[str, Callable[[], object]]] = [
        ("stop the framework", framework.stop),
        ("kill the executors", lambda: cleanup_executors(data)),
        ("wait for the executors", lambda: _wait_gone(data)),
        ("remove Berth's containers", lambda: remove_containers(docker, f"berth.app={app}")),
        ("remove the peer's containers", lambda: remove_containers(docker, peer_label)),
        ("stop the API", server.stop),
        ("stop ZooKeeper", zookeeper.stop),
        ("close the Docker client", docker.close),
    ]
    for what, step in steps:
        try:
            step()
        except Exception as e:
            log(f"cleanup: {what} failed: {type(e).__name__}: {e}")


def _wait_gone(data: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while executor_pids(data) and time.monotonic() < deadline:
        time.sleep(0.1)
    if left := executor_pids(data):
        raise RuntimeError(f"executors still alive: {left}")


if __name__ == "__main__":
    main()
