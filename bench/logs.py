"""Issue 6's goals for logs, measured in one run on this machine: N containers (the busybox test
image) each writing K lines of 100 bytes as fast as `yes | head` can, through Berth (Docker →
executor → `berth logd` → disk, and → a syslog drain to a local listener that counts
octet-counted frames), beside the peer: `docker logs -f` of the same containers in the same run.
Then tail latency: a container prints a line stamped with the kernel's boot-time clock every
100 ms; `berth logs -t --json` (the CLI, through the API and logd) and `docker logs -f` each
report when they see it.

Everything is real: a private ZooKeeper, `berth server` (API, logd, framework in local mode,
router), executors and containers. History cap 2g per app for the run (so the cap is not what
is measured); the drain buffers as by default (50,000 lines, 8 MiB).

Reported: lines/s into the store and into the drain (from the first flood line seen to the
last, polled every 0.2 s), lines lost (written minus stored/delivered; Berth reports every
dropped line as a `berth` line, which is counted too), CPU seconds used by logd and by the
executors (and by the `docker logs` peers) over the flood; tail latency p50/p99 measured from the
container's write (its /proc/uptime stamp, 10 ms resolution) and from the record's timestamp
(the executor's read). Goals: ≥ 50,000 lines/s with 0 loss; tail p99 ≤ 250 ms.

    .venv/bin/python bench/logs.py [--containers 4] [--lines 100000] [--tail-seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from bench._common import Table, cmdline, cpu_seconds, descendants, percentile, print_machine
from tests.support import images
from tests.support.services import BerthApi, ZooKeeper, cleanup_executors

PAD = "x" * 84  # "flood 00000001 " + PAD: 99 characters + the newline, 100 bytes
SEQ = re.compile(rb"flood ([0-9]{8}) x")
RATE_GOAL, TAIL_P99_GOAL_MS = 50_000.0, 250.0
CHROOT = "/bench-logs"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def wait_until(what: Callable[[], bool], timeout: float, doing: str) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out {doing}")
        time.sleep(0.2)


class SyslogCounter:
    """A syslog receiver on loopback: counts octet-counted frames whose message contains
    `marker`, and when the first and the last arrived."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.count = 0
        self.seen: set[tuple[bytes, bytes]] = set()  # (PROCID, sequence number)
        self.frames = 0
        self.first = 0.0
        self.last = 0.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        with conn:
            while True:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    return
                data += chunk
                pos = 0
                while True:
                    space = data.find(b" ", pos, pos + 12)
                    if space < 0:
                        break
                    end = space + 1 + int(data[pos:space])
                    if end > len(data):
                        break
                    self.frames += 1
                    match = SEQ.search(data, space, end)
                    if match:
                        self.seen.add((data[space + 1 : end].split(b" ", 5)[4], match.group(1)))
                        now = time.monotonic()
                        if not self.count:
                            self.first = now
                        self.count += 1
                        self.last = now
                    pos = end
                data = data[pos:]

    def close(self) -> None:
        self._listener.close()


class DockerLogs:
    """The peer: `docker logs -f` of one container, counting lines with `marker`."""

    def __init__(self, container: str, marker: str) -> None:
        self.marker = marker
        self.count = 0
        self.seen: set[bytes] = set()
        self.first = 0.0
        self.last = 0.0
        self.proc = subprocess.Popen(
            ["docker", "logs", "-f", container],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.cpu = 0.0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        marker = self.marker.encode()
        for line in self.proc.stdout:
            if marker in line:
                match = SEQ.search(line)
                if match:
                    self.seen.add(match.group(1))
                now = time.monotonic()
                if not self.count:
                    self.first = now
                self.count += 1
                self.last = now

    def stop(self) -> None:
        try:
            self.cpu = cpu_seconds(self.proc.pid)
        except OSError:
            self.cpu = float("nan")
        self.proc.terminate()
        self.proc.wait(10)


class Bench:
    def __init__(self, root: Path, zk: ZooKeeper) -> None:
        self.root = root
        self.data = root / "data"
        self.server = BerthApi(
            zk.hosts,
            CHROOT,
            self.data,
            root / "server.log",
            "server",
            {"BERTH_LOGS_MAX_BYTES": "2g"},
        )
        self.session = requests.Session()

    def start(self) -> None:
        self.server.start(60)
        self.session.headers["Authorization"] = f"Bearer {self.server.admin_token}"
        url = f"http://127.0.0.1:{self.server.logs_port}/healthz"
        wait_until(lambda: self._ok(url), 30, "for logd")

    def _ok(self, url: str) -> bool:
        try:
            return self.session.get(url, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def call(self, method: str, path: str, body: Any = None) -> Any:
        answer = self.session.request(method, self.server.url + path, json=body, timeout=30)
        if answer.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text}")
        return answer.json()

    def deploy(self, app: str, image: str, **processes: str) -> None:
        self.call("POST", "/v1/apps", {"name": app})
        self.call("POST", f"/v1/apps/{app}/deploy", {"image": image, "process_types": processes})

    def pids(self, needle: str) -> list[int]:
        return [p for p in descendants(self.server.pid) if any(needle in a for a in cmdline(p))]

    def cpu(self, needle: str) -> float:
        total = 0.0
        for pid in self.pids(needle):
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        return total

    def stored(self, app: str) -> tuple[int, int, int, list[str]]:
        """(flood records on disk, distinct ones, bytes on disk, the berth lines about drops)."""
        count, size, notes = 0, 0, []
        seen: set[tuple[str, str]] = set()
        for segment in sorted((self.data / "logs" / app).glob("*.log")):
            data = segment.read_bytes()
            size += len(data)
            for line in data.splitlines():
                if b'"text":"flood ' in line:
                    record = json.loads(line)
                    count += 1
                    seen.add((record["process"], record["text"][6:14]))
                elif b'"source":"berth"' in line and b"dropped" in line:
                    notes.append(json.loads(line)["text"])
        return count, len(seen), size, notes

    def disk_bytes(self, app: str) -> int:
        total = 0
        for segment in (self.data / "logs" / app).glob("*.log"):
            with contextlib.suppress(OSError):
                total += segment.stat().st_size
        return total

    def stop(self) -> None:
        self.server.stop()
        cleanup_executors(self.data)


def containers(app: str, process: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=berth.app={app}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    found = []
    for cid in out:
        inspect = subprocess.run(
            ["docker", "inspect", "-f", "{{json .Config.Labels}}", cid],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        labels = json.loads(inspect)
        if any(v.startswith(f"{process}.") or v == process for v in labels.values()):
            found.append(cid)
    return found


def flood(bench: Bench, image: str, n: int, k: int) -> tuple[Table, list[str]]:
    counter = SyslogCounter(b" flood ")
    write = f'BEGIN {{ for (i = 0; i < {k}; i++) printf "flood %08d {PAD}\\n", i }}'
    bench.deploy("flood", image, worker=f"sleep 3; awk '{write}'; exec sleep 3600")
    drain = bench.call(
        "POST", "/v1/apps/flood/drains", {"url": f"syslog://127.0.0.1:{counter.port}"}
    )
    wait_until(
        lambda: any(
            d["status"] in ("starting", "up") for d in bench.call("GET", "/v1/apps/flood/drains")
        ),
        30,
        "for logd to start the drain",
    )
    cpu_before = {"logd": bench.cpu("berth.api.logd"), "executors": bench.cpu("berth.executor")}
    started = time.monotonic()
    bench.call("PATCH", "/v1/apps/flood/formation", {"worker": n})
    peers: dict[str, DockerLogs] = {}
    first_store = last_store = 0.0
    last_size = 0
    expected = n * k
    deadline = started + 180
    idle_since = time.monotonic()
    while time.monotonic() < deadline:
        for cid in containers("flood", "worker"):
            if cid not in peers:
                peers[cid] = DockerLogs(cid, "flood ")
        size = bench.disk_bytes("flood")
        now = time.monotonic()
        if size > last_size:
            if not first_store and size > 64 * 1024:
                first_store = now
            last_store, last_size, idle_since = now, size, now
        peers_done = len(peers) == n and all(p.count >= k for p in peers.values())
        if peers_done and counter.count >= expected and size == last_size and now - idle_since > 3:
            break
        if peers_done and now - idle_since > 15:
            break  # Berth stopped making progress: whatever is missing is lost
        time.sleep(0.2)
    cpu_after = {"logd": bench.cpu("berth.api.logd"), "executors": bench.cpu("berth.executor")}
    for peer in peers.values():
        peer.stop()
    stored_all, stored, stored_bytes, notes = bench.stored("flood")
    drained_all, drained = counter.count, len(counter.seen)
    stats = bench.call("GET", "/v1/apps/flood/drains")
    counter.close()
    bench.call("PATCH", "/v1/apps/flood/formation", {"worker": 0})

    def rate(count: int, first: float, last: float) -> str:
        return f"{count / (last - first):,.0f}" if last > first else "?"

    peer_all = sum(p.count for p in peers.values())
    peer_count = sum(len(p.seen) for p in peers.values())
    peer_first = min((p.first for p in peers.values() if p.first), default=0.0)
    peer_last = max((p.last for p in peers.values()), default=0.0)
    peer_cpu = sum(p.cpu for p in peers.values())
    logd_cpu = cpu_after["logd"] - cpu_before["logd"]
    exec_cpu = cpu_after["executors"] - cpu_before["executors"]

    def verdict(count: int, first: float, last: float) -> str:
        ok = count == expected and last > first and count / (last - first) >= RATE_GOAL
        return "MET" if ok else "NOT MET"

    table = Table(
        [
            "path",
            "lines written",
            "distinct lines received",
            "lost",
            "duplicates",
            "lines/s (first→last seen)",
            "seconds from scale to last line",
            "CPU s",
            f"goal ≥ {RATE_GOAL:,.0f}/s, 0 lost",
        ],
        [
            [
                "Berth: executor → logd → disk",
                f"{expected:,}",
                f"{stored:,}",
                f"{expected - stored:,}",
                f"{stored_all - stored:,}",
                rate(stored, first_store, last_store),
                f"{last_store - started:.1f}",
                f"logd {logd_cpu:.1f} + executors {exec_cpu:.1f}",
                verdict(stored, first_store, last_store),
            ],
            [
                "Berth: … → logd → syslog drain",
                f"{expected:,}",
                f"{drained:,}",
                f"{expected - drained:,}",
                f"{drained_all - drained:,}",
                rate(drained, counter.first, counter.last),
                f"{counter.last - started:.1f}" if counter.last else "?",
                "(in logd's)",
                verdict(drained, counter.first, counter.last),
            ],
            [
                "peer: docker logs -f",
                f"{expected:,}",
                f"{peer_count:,}",
                f"{expected - peer_count:,}",
                f"{peer_all - peer_count:,}",
                rate(peer_count, peer_first, peer_last),
                f"{peer_last - started:.1f}" if peer_last else "?",
                f"docker logs {peer_cpu:.1f}",
                verdict(peer_count, peer_first, peer_last),
            ],
        ],
    )
    extra = [
        f"{stored_bytes / 1e6:.0f} MB of history on disk for {stored_all:,} flood records",
        f"drain {drain['id']} as logd reports it: "
        + json.dumps({k: v for k, v in stats[0].items() if k not in ("id", "created_at")}),
        *(f"berth line: {note}" for note in notes[:6]),
    ]
    return table, extra


def tail_latency(bench: Bench, image: str, seconds: float, cli_env: dict[str, str]) -> Table:
    mark = (
        'i=0; while true; do read up idle </proc/uptime; echo "mark $i $up"; i=$((i+1));'
        " usleep 100000; done"
    )
    bench.deploy("tail", image, worker=mark)
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "berth.cli",
            "logs",
            "-a",
            "tail",
            "-t",
            "--json",
            "-n",
            "0",
            "--source",
            "app",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=cli_env,
    )
    bench.call("PATCH", "/v1/apps/tail/formation", {"worker": 1})
    wait_until(lambda: bool(containers("tail", "worker")), 60, "for the tail container")
    peer = subprocess.Popen(
        ["docker", "logs", "-f", "--since", "0s", containers("tail", "worker")[0]],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    from_write: list[float] = []
    from_record: list[float] = []
    peer_from_write: list[float] = []
    pattern = re.compile(r"mark [0-9]+ ([0-9.]+)")

    def read_berth() -> None:
        assert tail.stdout is not None
        for raw in tail.stdout:
            seen, seen_wall = boottime(), time.time()
            if not raw.strip():
                continue
            record = json.loads(raw)
            match = pattern.fullmatch(record["text"])
            if match:
                from_write.append(seen - float(match.group(1)))
                ts = datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
                from_record.append(seen_wall - ts)

    def read_peer() -> None:
        assert peer.stdout is not None
        for raw in peer.stdout:
            seen = boottime()
            match = pattern.fullmatch(raw.decode().strip())
            if match:
                peer_from_write.append(seen - float(match.group(1)))

    threads = [
        threading.Thread(target=read_berth, daemon=True),
        threading.Thread(target=read_peer, daemon=True),
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(from_write) >= 3, 60, "for the first tailed lines")
    skip_berth, skip_peer = len(from_write), len(peer_from_write)
    time.sleep(seconds)
    tail.terminate()
    peer.terminate()
    tail.wait(10)
    peer.wait(10)
    bench.call("PATCH", "/v1/apps/tail/formation", {"worker": 0})

    def row(label: str, values: list[float], goal: bool) -> list[str]:
        ordered = sorted(v * 1000 for v in values)
        p99 = percentile(ordered, 99)
        verdict = ("MET" if p99 <= TAIL_P99_GOAL_MS else "NOT MET") if goal else ""
        return [
            label,
            str(len(ordered)),
            f"{percentile(ordered, 50):.0f}",
            f"{p99:.0f}",
            f"{ordered[-1]:.0f}" if ordered else "?",
            verdict,
        ]

    return Table(
        ["tail", "lines", "p50 ms", "p99 ms", "max ms", f"goal p99 ≤ {TAIL_P99_GOAL_MS:.0f} ms"],
        [
            row("berth logs -t, from the container's write", from_write[skip_berth:], True),
            row("berth logs -t, from the record's timestamp", from_record[skip_berth:], False),
            row("peer: docker logs -f, from the write", peer_from_write[skip_peer:], False),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=4)
    parser.add_argument("--lines", type=int, default=100_000, help="per container")
    parser.add_argument("--tail-seconds", type=float, default=20.0)
    args = parser.parse_args()
    client = images.docker_client()
    if client is None:
        sys.exit("a running Docker engine is needed")
    image = images.ensure_test_image(client)
    with tempfile.TemporaryDirectory(prefix="berth-bench-logs-") as tmp:
        root = Path(tmp)
        zk = ZooKeeper(root / "zk")
        zk.start()
        bench = Bench(root, zk)
        try:
            bench.start()
            print_machine(root)
            log(f"flood: {args.containers} containers x {args.lines:,} lines")
            table, extra = flood(bench, image, args.containers, args.lines)
            print(f"#### Flood: {args.containers} containers x {args.lines:,} lines of 100 bytes\n")
            print(table.markdown())
            print()
            for line in extra:
                print(f"- {line}")
            env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
            env.update(
                BERTH_URL=bench.server.url,
                BERTH_TOKEN=bench.server.admin_token,
                XDG_CONFIG_HOME=str(root / "config"),
            )
            log(f"tail latency: {args.tail_seconds:.0f} s of a line every 100 ms")
            print(f"\n#### Tail latency ({args.tail_seconds:.0f} s, a line every 100 ms)\n")
            print(tail_latency(bench, image, args.tail_seconds, env).markdown())
        finally:
            bench.stop()
            for container in client.containers.list(all=True, filters={"label": "berth.app"}):
                if container.labels.get("berth.app") in ("flood", "tail"):
                    container.remove(force=True)
            zk.stop()


if __name__ == "__main__":
    main()
