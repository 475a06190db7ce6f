"""Issue 4's goals for the router, measured in one run on this machine: `berth router` (its
HAProxy, fed from a private ZooKeeper) against nginx (Debian's, as a reverse proxy with upstream
keep-alive on) in front of the same backends, with wrk (Debian's) as the load.

The backends are one nginx process listening on three ports (b1, b2, b3), each answering `/`
with its name and `/64k` with 64 KiB. Berth's side is only the router: apps and task records
are written straight into ZooKeeper with Berth's Store (no framework or containers, so the
proxies are what is compared). The peer nginx proxies `app.bench.test` to b1 and b2 the same
way (round robin, keep-alive to the backends, X-Forwarded-For set).

1. wrk through each proxy, interleaved rounds (who goes first alternates), medians:
   keep-alive small responses, `Connection: close`, 64 KiB bodies. Goal: ≥ 0.95 times nginx's req/s,
   p99 ≤ 1.2 times nginx's. A third side for reference: the same HAProxy binary alone with the
   least config that proxies (no rules, no checks, no access lines, connections to the
   backends reused), to tell what HAProxy itself does on this machine from what Berth's
   config adds to it.
2. The same keep-alive test with 10,000 routes (apps `r-00001`…, one server each, on both
   proxies), requesting one host among them.
3. Route churn during load: while wrk runs against `app.bench.test`, a task on b3 is added and
   removed every 100 ms. Goal: 0 errors.
4. Route change latency: a task written to ZooKeeper → the first answer from it through the
   router (polling on a keep-alive connection); and a custom domain added → the first 200.
   Goal ≤ 100 ms.

    .venv/bin/python bench/router.py [--duration 10] [--rounds 3] [--connections 64]
                                     [--routes 10000] [--changes 20]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Table, print_machine
from berth.framework.model import Task
from berth.framework.sealing import Sealer, load_or_create_key
from berth.framework.state import Store
from tests.support.services import BerthRouter, ZooKeeper, free_port, terminate

DOMAIN = "bench.test"
APP = "app"
THROUGHPUT_GOAL, P99_GOAL, CHANGE_GOAL_MS = 0.95, 1.2, 100.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the processes ----------------------------------------------------------------------------


class Nginx:
    """An nginx master with its own prefix and config; `reload()` swaps the config."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root / name
        (self.root / "logs").mkdir(parents=True)
        self.conf = self.root / "nginx.conf"
        self._proc: subprocess.Popen[bytes] | None = None

    def write(self, http_block: str) -> None:
        user = "user root;" if os.getuid() == 0 else ""
        self.conf.write_text(
            f"{user}\nworker_processes 2;\npid {self.root}/nginx.pid;\n"
            f"error_log {self.root}/logs/error.log warn;\n"
            "events { worker_connections 4096; }\n"
            f"http {{\n  access_log {self.root}/logs/access.log;\n"
            "  server_names_hash_max_size 65536;\n  server_names_hash_bucket_size 128;\n"
            f"{http_block}\n}}\n"
        )

    def start(self) -> None:
        self._proc = subprocess.Popen(
            ["nginx", "-p", str(self.root), "-c", str(self.conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "logs" / "stderr.log").open("ab"),
            start_new_session=True,
        )

    def reload(self) -> None:
        subprocess.run(
            ["nginx", "-p", str(self.root), "-c", str(self.conf), "-t", "-q"], check=True
        )
        assert self._proc is not None
        self._proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        terminate(self._proc)


class PlainHAProxy:
    """Debian's HAProxy alone, with the least config that proxies every request to the
    backends: what the data plane costs before Berth's rules, checks and access lines."""

    def __init__(self, root: Path, port: int, backends: list[int]) -> None:
        self.root = root / "haproxy-alone"
        self.root.mkdir()
        self.port = port
        servers = "\n".join(f"    server b{p} 127.0.0.1:{p}" for p in backends)
        self.conf = self.root / "haproxy.cfg"
        self.conf.write_text(
            "global\n    maxconn 4096\n"
            "defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n"
            "    timeout server 30s\n    http-reuse always\n"
            f"frontend f\n    bind 127.0.0.1:{port}\n    default_backend b\n"
            f"backend b\n    balance roundrobin\n{servers}\n"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            ["haproxy", "-f", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "stderr.log").open("ab"),
            start_new_session=True,
        )

    def stop(self) -> None:
        terminate(self._proc)


def backend_block(ports: dict[str, int], root: Path) -> str:
    www = root / "www"
    for name in ports:
        (www / name).mkdir(parents=True, exist_ok=True)
        (www / name / "index.html").write_text(f"{name}\n")
        (www / name / "64k").write_bytes(b"x" * 65536)
    return "\n".join(
        f"  server {{ listen 127.0.0.1:{port}; root {www / name}; keepalive_requests 100000; }}"
        for name, port in ports.items()
    )


def proxy_block(port: int, routes: dict[str, list[int]]) -> str:
    """routes: host → backend ports."""
    parts = []
    for n, (host, backends) in enumerate(sorted(routes.items())):
        servers = " ".join(f"server 127.0.0.1:{p};" for p in backends)
        parts.append(f"  upstream u{n} {{ {servers} keepalive 64; }}")
        parts.append(
            f"  server {{ listen 127.0.0.1:{port}; server_name {host};\n"
            f"    location / {{ proxy_pass http://u{n}; proxy_http_version 1.1;\n"
            '      proxy_set_header Connection ""; proxy_set_header Host $host;\n'
            "      proxy_set_header X-Forwarded-For $remote_addr; }\n  }"
        )
    parts.append(f"  server {{ listen 127.0.0.1:{port} default_server; return 404; }}")
    return "\n".join(parts)


def http_get(port: int, host: str, path: str = "/") -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head.startswith(b"HTTP/") else 0
    return status, body.decode(errors="replace").strip()


def wait_until(what: Callable[[], bool], timeout: float, doing: str) -> float:
    started = time.monotonic()
    while not what():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{doing}: not done in {timeout:.0f}s")
        time.sleep(0.02)
    return time.monotonic() - started


# -- wrk --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wrk:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors + non-2xx/3xx
    requests: int


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(port: int, host: str, path: str, seconds: float, connections: int, close: bool) -> Wrk:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-H", f"Host: {host}"]
    if close:
        argv += ["-H", "Connection: close"]
    out = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\n\s+50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\n\s+99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return Wrk(rps, p50, p99, errors, total)


# -- the measurements -------------------------------------------------------------------------


def task(app: str, name: str, port: int, release: int = 1) -> Task:
    process, _, index = name.partition(".")
    return Task(
        id=f"{app}.{process}.{index}.v{release}.{uuid.uuid4().hex[:8]}",
        app=app,
        process=process,
        index=int(index),
        release=release,
        state="running",
        hostname="127.0.0.1",
        port=port,
        healthy=True,
        started_at=time.time(),
        updated_at=time.time(),
    )


def compare(
    scenarios: list[tuple[str, str, bool]],
    sides: dict[str, tuple[int, str]],
    rounds: int,
    seconds: float,
    connections: int,
) -> Table:
    """Interleaved wrk rounds per scenario; medians, and Berth/nginx ratios (and HAProxy
    alone's, when `sides` has "haproxy")."""
    rows = []
    for label, path, close in scenarios:
        results: dict[str, list[Wrk]] = {side: [] for side in sides}
        for r in range(rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                port, host = sides[side]
                log(f"{label}: round {r + 1}, {side}")
                results[side].append(wrk(port, host, path, seconds, connections, close))
        med = {
            side: (
                statistics.median(w.rps for w in runs),
                statistics.median(w.p99_ms for w in runs),
                sum(w.errors for w in runs),
            )
            for side, runs in results.items()
        }
        (b_rps, b_p99, b_err), (n_rps, n_p99, n_err) = med["berth"], med["nginx"]
        rows.append(
            [
                label,
                f"{b_rps:,.0f}",
                f"{n_rps:,.0f}",
                f"{b_rps / n_rps:.2f}x {'MET' if b_rps / n_rps >= THROUGHPUT_GOAL else 'NOT MET'}",
                f"{b_p99:.2f}",
                f"{n_p99:.2f}",
                f"{b_p99 / n_p99:.2f}x {'MET' if b_p99 / n_p99 <= P99_GOAL else 'NOT MET'}",
                f"{b_err} / {n_err}",
                ", ".join(f"{w.rps:,.0f}" for w in results["berth"]),
                ", ".join(f"{w.rps:,.0f}" for w in results["nginx"]),
            ]
        )
        if "haproxy" in med:
            h_rps, h_p99, h_err = med["haproxy"]
            rows[-1] += [
                f"{h_rps:,.0f} ({h_rps / n_rps:.2f}x)",
                f"{h_p99:.2f} ({h_p99 / n_p99:.2f}x)",
                f"{b_rps / h_rps:.2f}x",
                str(h_err),
            ]
    alone = (
        [
            "HAProxy alone req/s (/nginx)",
            "HAProxy alone p99 ms (/nginx)",
            "Berth/HAProxy alone req/s",
            "errors HAProxy alone",
        ]
        if "haproxy" in sides
        else []
    )
    return Table(
        [
            "test",
            "Berth req/s (median)",
            "nginx req/s",
            "Berth/nginx req/s (goal ≥ 0.95)",
            "Berth p99 ms",
            "nginx p99 ms",
            "p99 Berth/nginx (goal ≤ 1.2)",
            "errors Berth / nginx",
            "Berth rounds req/s",
            "nginx rounds req/s",
            *alone,
        ],
        rows,
    )


def churn(store: Store, port: int, b3: int, seconds: float, connections: int) -> list[str]:
    stop = threading.Event()
    changes = 0

    def toggle() -> None:
        nonlocal changes
        current: Task | None = None
        while not stop.is_set():
            if current is None:
                current = task(APP, "web.3", b3)
                store.put_task(current)
            else:
                store.delete_task(current.id)
                current = None
            changes += 1
            stop.wait(0.1)
        if current is not None:
            store.delete_task(current.id)

    thread = threading.Thread(target=toggle, name="churn")
    thread.start()
    try:
        result = wrk(port, f"{APP}.{DOMAIN}", "/", seconds, connections, close=False)
    finally:
        stop.set()
        thread.join()
    return [
        f"- route churn: {changes} changes (a server on b3 added or removed every 100 ms) during"
        f" {seconds:g} s of wrk keep-alive load: {result.requests:,} requests, {result.rps:,.0f}"
        f" req/s, p99 {result.p99_ms:.2f} ms, errors {result.errors}"
        f" → goal 0 errors: {'MET' if result.errors == 0 else 'NOT MET'}"
    ]


def change_latency(store: Store, port: int, b1: int, b3: int, n: int) -> Table:
    """Task written → first answer from it; domain added → first 200. Milliseconds."""
    app = "probe"
    store.create_app(app, "bench")
    store.put_task(task(app, "web.1", b1))
    wait_until(lambda: http_get(port, f"{app}.{DOMAIN}")[0] == 200, 60, "the probe app routed")
    servers, domains = [], []
    for i in range(n):
        extra = task(app, "web.2", b3)
        started = time.monotonic()
        store.put_task(extra)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.settimeout(5)
            reader = sock.makefile("rb")
            request = f"GET / HTTP/1.1\r\nHost: {app}.{DOMAIN}\r\n\r\n".encode()
            while True:
                sock.sendall(request)
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if reader.read(length).strip() == b"b3":
                    break
                if time.monotonic() - started > 10:
                    raise TimeoutError("the new server never answered")
        servers.append(1000 * (time.monotonic() - started))
        store.delete_task(extra.id)
        hostname = f"d{i}.probe.example"
        started = time.monotonic()
        store.add_domain(app, hostname)

        def routed(h: str = hostname) -> bool:
            return http_get(port, h)[0] == 200

        wait_until(routed, 10, "domain routed")
        domains.append(1000 * (time.monotonic() - started))
        time.sleep(0.2)

    def row(label: str, values: list[float]) -> list[str]:
        ordered = sorted(values)
        verdict = "MET" if max(values) <= CHANGE_GOAL_MS else "NOT MET"
        return [
            label,
            str(len(values)),
            f"{statistics.median(values):.1f}",
            f"{ordered[int(0.95 * (len(ordered) - 1))]:.1f}",
            f"{max(values):.1f}",
            f"{verdict} (max ≤ {CHANGE_GOAL_MS:g} ms)",
        ]

    return Table(
        ["change (written to ZooKeeper → first answer)", "n", "median ms", "p95 ms", "max", "goal"],
        [
            row("a server added (runtime API, no reload)", servers),
            row("a custom domain added (map, no reload)", domains),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="s per wrk run (10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side and test (3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--routes", type=int, default=10000, help="routes for test 2 (10000)")
    parser.add_argument("--changes", type=int, default=20, help="route changes timed (20)")
    parser.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="run the router without access lines to logd (to measure what they cost)",
    )
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "haproxy"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install wrk nginx-light haproxy")

    with tempfile.TemporaryDirectory(prefix="berth-bench-router-") as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o755)
        zookeeper = ZooKeeper(tmp / "zookeeper")
        ports = {"b1": free_port(), "b2": free_port(), "b3": free_port()}
        backends, peer = Nginx(tmp, "backends"), Nginx(tmp, "peer")
        alone = PlainHAProxy(tmp, free_port(), [ports["b1"], ports["b2"]])
        chroot = f"/bench-{uuid.uuid4().hex[:8]}"
        router: BerthRouter | None = None
        store: Store | None = None
        logd: subprocess.Popen[bytes] | None = None
        started = time.monotonic()

        def on_term(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, on_term)
        try:
            zookeeper.start()
            # the router ships an access line per request to logd, as in production (the
            # peer nginx writes its access log to a file)
            logs_port = free_port()
            logd = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "berth.cli",
                    "logd",
                    f"--data-dir={tmp / 'data'}",
                    f"--logs-addr=127.0.0.1:{logs_port}",
                ],
                stdout=(tmp / "logd.log").open("ab"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            router = BerthRouter(
                zookeeper.hosts,
                chroot,
                tmp / "data",
                tmp / "router.log",
                domain=DOMAIN,
                extra_args=(
                    f"--logs-addr=127.0.0.1:{logs_port}",
                    *(() if args.access_log else ("--no-access-log",)),
                ),
            )
            backends.write(backend_block(ports, tmp))
            backends.start()
            peer_port = free_port()
            peer.write(proxy_block(peer_port, {f"{APP}.{DOMAIN}": [ports["b1"], ports["b2"]]}))
            peer.start()
            alone.start()
            (tmp / "data").mkdir(mode=0o700, exist_ok=True)
            store = Store(zookeeper.hosts, chroot, Sealer(load_or_create_key(tmp / "data")))
            store.start()
            store.create_app(APP, "bench")
            store.put_task(task(APP, "web.1", ports["b1"]))
            store.put_task(task(APP, "web.2", ports["b2"]))
            router.start()
            host = f"{APP}.{DOMAIN}"
            wait_until(lambda: http_get(router.port, host)[0] == 200, 60, "router serving")
            wait_until(lambda: http_get(peer_port, host)[0] == 200, 30, "nginx serving")
            wait_until(lambda: http_get(alone.port, host)[0] == 200, 30, "HAProxy alone serving")

            print_machine(tmp)
            print(
                f"wrk -t2 -c{args.connections} -d{args.duration:g}s; {args.rounds} rounds per side;"
                " haproxy "
                + subprocess.run(["haproxy", "-v"], capture_output=True, text=True)
                .stdout.split("\n")[0]
                .split(" - ")[0]
                + "; "
                + subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
                + "\n"
            )
            sides = {
                "berth": (router.port, host),
                "nginx": (peer_port, host),
                "haproxy": (alone.port, host),
            }
            scenarios = [
                ("keep-alive, small", "/", False),
                ("Connection: close, small", "/", True),
                ("keep-alive, 64 KiB", "/64k", False),
            ]
            print("### Throughput and latency (2 routes)\n")
            print(
                compare(scenarios, sides, args.rounds, args.duration, args.connections).markdown()
            )
            print()

            print("### Route churn and change latency\n")
            for line in churn(store, router.port, ports["b3"], args.duration, args.connections):
                print(line)
            print()
            print(
                change_latency(
                    store, router.port, ports["b1"], ports["b3"], args.changes
                ).markdown()
            )
            print()

            log(f"writing {args.routes} routes")
            routes = {host: [ports["b1"], ports["b2"]]}
            t0 = time.monotonic()
            for i in range(1, args.routes + 1):
                name = f"r-{i:05d}"
                store.create_app(name, "bench")
                store.put_task(task(name, "web.1", ports["b1" if i % 2 else "b2"]))
                routes[f"{name}.{DOMAIN}"] = [ports["b1" if i % 2 else "b2"]]
            written = time.monotonic() - t0
            probe = f"r-{args.routes:05d}.{DOMAIN}"
            took = wait_until(lambda: http_get(router.port, probe)[0] == 200, 600, "10k routes")
            peer.write(proxy_block(peer_port, routes))
            peer.reload()
            wait_until(lambda: http_get(peer_port, probe)[0] == 200, 120, "nginx 10k routes")
            middle = f"r-{args.routes // 2:05d}.{DOMAIN}"
            print(f"### {args.routes:,} routes\n")
            print(
                f"- {args.routes:,} apps with one task each written to ZooKeeper in"
                f" {written:.1f} s;"
                f" the router served the last one {took:.1f} s after the last write\n"
            )
            many = {"berth": (router.port, middle), "nginx": (peer_port, middle)}
            print(
                compare(
                    [(f"keep-alive, small, {args.routes:,} routes", "/", False)],
                    many,
                    args.rounds,
                    args.duration,
                    args.connections,
                ).markdown()
            )
            print(f"\nwhole run: {time.monotonic() - started:.0f} s")
        finally:
            log("cleaning up")
            if router is not None:
                with suppress(Exception):
                    router.stop()
            if store is not None:
                with suppress(Exception):
                    store.stop()
            if logd is not None:
                logd.terminate()
                with suppress(subprocess.TimeoutExpired):
                    logd.wait(10)
            peer.stop()
            alone.stop()
            backends.stop()
            zookeeper.stop()


if __name__ == "__main__":
    main()
