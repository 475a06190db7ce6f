"""Write latency of the API (PATCH /v1/apps/<app>/config) next to raw kazoo doing the same
ZooKeeper write, in one run against one private ZooKeeper.

Targets:
  api       PATCH /v1/apps/<app>/config {"BENCH_VALUE": <64 chars>} on a real `berth api`
            (gunicorn master + 1 gthread worker). Each one is, inside the API: a token read, an
            app read, a release read + decrypt, then one transaction (set_data on /apps/<app>
            at the version read + create of the sealed release znode).
  raw       the equivalent ZooKeeper work alone: one kazoo transaction, set_data on an "app"
            znode at its known version + create of the next "release" znode, with payloads of
            the sizes the API just wrote. The version is cached from the last commit (re-read
            and retried only on BadVersion), so this is one ZooKeeper round trip per write.
  raw-rmw   context: the API's four ZooKeeper round trips done from kazoo directly (get token,
            get app, get newest release, the same transaction); no HTTP, Flask or crypto.
  healthz   context: GET /healthz on the same API (no auth, no ZooKeeper): the HTTP floor.

Modes:
  open loop   requests are scheduled at fixed times (rate/s) and sent by a thread pool whether
              or not earlier ones have finished; latency runs from the *scheduled* time, so a
              stall is charged to every request it delays (no coordinated omission).
  saturation  N closed-loop clients, each writing its own app (its own znodes), back to back.

Also reported: server-side time per PATCH from the API's own request log ("ms": before_request
to after_request, so it includes the token check but not gunicorn's HTTP handling), and CPU
milliseconds per operation used by the API processes, ZooKeeper and this client process.

    .venv/bin/python bench/api_latency.py [--rate 20] [--duration 30] [--clients 8]
                                          [--sat-duration 20] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests
from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, RolledBackError

from bench._common import Table, cpu_seconds, descendants, percentile, print_machine
from tests.support.services import BerthApi, ZooKeeper

P99_GOAL_MS = 50.0
OVERHEAD_GOAL = 3.0
VALUE_CHARS = 64
RAW_ROOT = "/bench-raw"

Write = Callable[[int, int], None]  # (slot, sequence number) → None; raises on failure


# -- the things measured ----------------------------------------------------------------------


class ApiTarget:
    """PATCH config through the real API; one keep-alive session per client thread."""

    def __init__(self, server: BerthApi) -> None:
        self._url = server.url
        self._token = server.admin_token
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self._token}"
            self._local.session = session
        return session

    def create_app(self, slot: int) -> None:
        response = self._session().post(
            f"{self._url}/v1/apps", json={"name": f"bench-{slot}"}, timeout=30
        )
        response.raise_for_status()

    def write(self, slot: int, seq: int) -> None:
        value = f"{seq:012d}".ljust(VALUE_CHARS, "v")
        response = self._session().patch(
            f"{self._url}/v1/apps/bench-{slot}/config", json={"BENCH_VALUE": value}, timeout=30
        )
        if response.status_code != 200:
            raise RuntimeError(f"PATCH answered {response.status_code}: {response.text[:200]}")

    def healthz(self, slot: int, seq: int) -> None:
        response = self._session().get(f"{self._url}/healthz", timeout=30)
        if response.status_code != 200:
            raise RuntimeError(f"/healthz answered {response.status_code}")


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    version: int = 0  # data version of the app znode, as last seen
    release: int = 1  # newest release number, as last seen


class RawTarget:
    """The same ZooKeeper writes from a kazoo client in this process, one znode set per slot:
    /bench-raw/<slot> (the "app": {"release": N, padding}), /bench-raw/<slot>/releases/<N>
    (the "release", padding of the size the API writes), /bench-raw/token (read by raw-rmw)."""

    def __init__(self, zk: KazooClient, app_bytes: int, release_bytes: int) -> None:
        self._zk = zk
        self._app_bytes = app_bytes
        self._release_bytes = release_bytes
        self._slots: dict[int, _Slot] = {}
        self.retries = 0

    def _app_data(self, release: int) -> bytes:
        head = json.dumps({"release": release, "pad": ""}).encode()
        return json.dumps(
            {"release": release, "pad": "a" * max(0, self._app_bytes - len(head))}
        ).encode()

    def _release_data(self, seq: int) -> bytes:
        return f"{seq:012d}".encode().ljust(self._release_bytes, b"r")

    def setup(self, slots: int, token_bytes: int) -> None:
        self._zk.ensure_path(RAW_ROOT)
        self._zk.create(f"{RAW_ROOT}/token", b"t" * token_bytes)
        for slot in range(1, slots + 1):
            tx = self._zk.transaction()
            tx.create(f"{RAW_ROOT}/{slot}", self._app_data(1))
            tx.create(f"{RAW_ROOT}/{slot}/releases", b"")
            tx.create(f"{RAW_ROOT}/{slot}/releases/{1:010d}", self._release_data(0))
            self._check(tx.commit())
            self._slots[slot] = _Slot()

    @staticmethod
    def _check(results: list[Any]) -> Exception | None:
        errors = [r for r in results if isinstance(r, Exception)]
        real = [e for e in errors if not isinstance(e, RolledBackError)]
        if real:
            return real[0]
        return errors[0] if errors else None

    def _commit(self, slot: int, version: int, release: int, seq: int) -> Exception | None:
        tx = self._zk.transaction()
        tx.set_data(f"{RAW_ROOT}/{slot}", self._app_data(release), version)
        tx.create(f"{RAW_ROOT}/{slot}/releases/{release:010d}", self._release_data(seq))
        results = tx.commit()
        failure = self._check(results)
        if failure is None:
            state = self._slots[slot]
            with state.lock:
                if results[0].version > state.version:
                    state.version, state.release = results[0].version, release
        return failure

    def _reread(self, slot: int) -> tuple[int, int]:
        data, stat = self._zk.get(f"{RAW_ROOT}/{slot}")
        return stat.version, int(json.loads(data)["release"])

    def write(self, slot: int, seq: int) -> None:
        """One transaction at the cached version; on a lost race, re-read and try again."""
        state = self._slots[slot]
        with state.lock:
            version, release = state.version, state.release
        for _ in range(50):
            failure = self._commit(slot, version, release + 1, seq)
            if failure is None:
                return
            if not isinstance(failure, BadVersionError | NodeExistsError):
                raise failure
            self.retries += 1
            version, release = self._reread(slot)
        raise RuntimeError(f"slot {slot}: gave up after 50 lost races")

    def write_rmw(self, slot: int, seq: int) -> None:
        """What the API does in ZooKeeper for a PATCH, without HTTP, Flask or crypto."""
        for _ in range(50):
            self._zk.get(f"{RAW_ROOT}/token")
            version, release = self._reread(slot)
            self._zk.get(f"{RAW_ROOT}/{slot}/releases/{release:010d}")
            failure = self._commit(slot, version, release + 1, seq)
            if failure is None:
                return
            if not isinstance(failure, BadVersionError | NodeExistsError):
                raise failure
            self.retries += 1
        raise RuntimeError(f"slot {slot}: gave up after 50 lost races")


# -- running them -----------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds used by groups of processes between start() and stop()."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self._groups = groups
        self._before: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        totals = {}
        for name, pids in self._groups.items():
            totals[name] = 0.0
            for pid in pids():
                with suppress(OSError):  # gone: counted up to its last reading only
                    totals[name] += cpu_seconds(pid)
        return totals

    def start(self) -> None:
        self._before = self._read()

    def stop(self) -> dict[str, float]:
        after = self._read()
        return {name: after[name] - self._before[name] for name in after}


@dataclass
class Result:
    target: str
    mode: str  # "open 20/s" or "8 clients"
    elapsed: float
    latencies_ms: list[float]  # successful operations only, sorted
    errors: Counter[str]
    cpu_s: dict[str, float]
    server_ms: list[float] = field(default_factory=list)  # sorted; api only

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else float("nan")

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def run_open_loop(
    write: Write, slot: int, rate: float, duration: float
) -> tuple[float, list[float], Counter[str]]:
    """Send `rate` per second for `duration` s on schedule; latency from the scheduled time."""
    count = round(rate * duration)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()

    def one(seq: int, scheduled: float) -> None:
        try:
            write(slot, seq)
        except Exception as exc:
            with lock:
                errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
            return
        done = time.perf_counter()
        with lock:
            latencies.append((done - scheduled) * 1000)

    with ThreadPoolExecutor(max_workers=64, thread_name_prefix="open-loop") as pool:
        start = time.perf_counter() + 0.05
        for seq in range(count):
            scheduled = start + seq / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, seq, scheduled)
    elapsed = time.perf_counter() - start
    return elapsed, sorted(latencies), errors


def run_closed_loop(
    write: Write, clients: int, duration: float
) -> tuple[float, list[float], Counter[str]]:
    """`clients` threads, each writing its own slot back to back until the deadline."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + duration

    def client(slot: int) -> None:
        seq = 0
        mine: list[float] = []
        while True:
            began = time.perf_counter()
            if began >= deadline:
                break
            try:
                write(slot, seq)
            except Exception as exc:
                with lock:
                    errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
            else:
                mine.append((time.perf_counter() - began) * 1000)
            seq += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(s,)) for s in range(1, clients + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, sorted(latencies), errors


class ApiLog:
    """The API's request log: one JSON line per request, with its in-Flask duration."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0

    def mark(self) -> None:
        self._offset = self._path.stat().st_size

    def patch_ms(self) -> list[float]:
        with self._path.open("rb") as f:
            f.seek(self._offset)
            lines = f.read().splitlines()
        found = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("route") == "/v1/apps/<app>/config" and record.get("ms") is not None:
                found.append(float(record["ms"]))
        return sorted(found)


# -- reporting --------------------------------------------------------------------------------


def ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def results_table(results: list[Result]) -> Table:
    rows = []
    for r in results:
        server = (
            f"{ms(percentile(r.server_ms, 50))} / {ms(percentile(r.server_ms, 99))}"
            if r.server_ms
            else ""
        )
        per_op = " / ".join(
            f"{1000 * r.cpu_s[k] / r.ok:.2f}" if r.ok else "n/a" for k in ("api", "zk", "client")
        )
        rows.append(
            [
                r.target,
                r.mode,
                f"{r.elapsed:.1f}",
                str(r.ok),
                str(sum(r.errors.values())),
                f"{r.throughput:.1f}",
                ms(r.p(50)),
                ms(r.p(90)),
                ms(r.p(99)),
                ms(r.latencies_ms[-1] if r.latencies_ms else float("nan")),
                server,
                per_op,
            ]
        )
    return Table(
        [
            "target",
            "load",
            "s",
            "ok",
            "errors",
            "ops/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "in-Flask p50 / p99 ms",
            "CPU ms/op api / zk / client",
        ],
        rows,
    )


def ratio_rows(api: Result, raw: Result, label: str) -> list[str]:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b > 0 and not math.isnan(a + b) else "n/a"

    return [
        label,
        ratio(api.p(50), raw.p(50)),
        ratio(api.p(99), raw.p(99)),
        ratio(raw.throughput, api.throughput),
    ]


def goals(open_api: Result, open_raw: Result, sat_api: Result, sat_raw: Result) -> list[str]:
    p99 = open_api.p(99)
    lines = [
        f"- API p99 at {open_api.mode}: {ms(p99)} ms vs goal ≤ {P99_GOAL_MS:.0f} ms → "
        + ("MET" if p99 <= P99_GOAL_MS else "NOT MET")
    ]
    for result, raw in ((open_api, open_raw), (sat_api, sat_raw)):
        for q in (50, 99):
            r = result.p(q) / raw.p(q)
            lines.append(
                f"- API/raw p{q} at {result.mode}: {r:.2f}x vs goal ≤ {OVERHEAD_GOAL:.0f}x → "
                + ("MET" if r <= OVERHEAD_GOAL else "NOT MET")
            )
    errors = sum(sum(r.errors.values()) for r in (open_api, open_raw, sat_api, sat_raw))
    if errors:
        lines.append(f"- {errors} operations failed; see the errors above")
    return lines


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="open-loop ops/s (20)")
    parser.add_argument("--duration", type=float, default=30.0, help="open-loop seconds (30)")
    parser.add_argument("--clients", type=int, default=8, help="saturation clients (8)")
    parser.add_argument("--sat-duration", type=float, default=20.0, help="saturation s (20)")
    parser.add_argument(
        "--context-duration",
        type=float,
        default=0.5,
        help="raw-rmw and healthz run this fraction of the durations above (0.5)",
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up s per target (2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: every duration / 6")
    args = parser.parse_args()
    scale = 1 / 6 if args.quick else 1.0
    duration, sat_duration = args.duration * scale, args.sat_duration * scale
    context = args.context_duration

    with tempfile.TemporaryDirectory(prefix="berth-bench-latency-") as tmp_name:
        tmp = Path(tmp_name)
        zookeeper = ZooKeeper(tmp / "zookeeper")
        chroot = f"/bench-{uuid.uuid4().hex[:8]}"
        server = BerthApi(zookeeper.hosts, chroot, tmp / "data", tmp / "api.log")
        zk = KazooClient(hosts=zookeeper.hosts, timeout=10.0)
        try:
            zookeeper.start()
            server.start()
            zk.start(timeout=15)
            assert zookeeper._proc is not None
            zk_pid = zookeeper._proc.pid
            meter = CpuMeter(
                {
                    "api": lambda: descendants(server.pid),
                    "zk": lambda: [zk_pid],
                    "client": lambda: [os.getpid()],
                }
            )
            api = ApiTarget(server)
            for slot in range(1, args.clients + 1):
                api.create_app(slot)
            api.write(1, 0)
            # Size the raw payloads like what the API really stores.
            app_bytes = len(zk.get(f"{chroot}/apps/bench-1")[0])
            release_bytes = len(zk.get(f"{chroot}/apps/bench-1/releases/{2:010d}")[0])
            tokens = zk.get_children(f"{chroot}/tokens")
            token_bytes = len(zk.get(f"{chroot}/tokens/{tokens[0]}")[0])
            raw = RawTarget(zk, app_bytes, release_bytes)
            raw.setup(args.clients, token_bytes)

            print_machine(tmp)
            print(
                f"payloads: app znode {app_bytes} B, release znode {release_bytes} B, token znode"
                f" {token_bytes} B; API request body {len(json.dumps({'BENCH_VALUE': 'v' * 64}))}"
                f" B; {args.clients} apps / raw slots\n"
            )
            log = ApiLog(server.log_path)
            targets: list[tuple[str, Write]] = [
                ("api", api.write),
                ("raw", raw.write),
                ("raw-rmw", raw.write_rmw),
                ("healthz", api.healthz),
            ]
            for name, write in targets:
                print(f"warming up {name} for {args.warmup:.0f} s", file=sys.stderr)
                run_closed_loop(write, args.clients, args.warmup * scale)

            results: list[Result] = []

            def measure(
                name: str, mode: str, run: Callable[[], tuple[float, list[float], Counter[str]]]
            ) -> Result:
                print(f"measuring {name}, {mode}", file=sys.stderr)
                log.mark()
                meter.start()
                elapsed, latencies, errors = run()
                cpu = meter.stop()
                time.sleep(0.2)  # the last log lines
                result = Result(
                    name,
                    mode,
                    elapsed,
                    latencies,
                    errors,
                    cpu,
                    log.patch_ms() if name == "api" else [],
                )
                results.append(result)
                for error, n in errors.items():
                    print(f"  {n} x {error}", file=sys.stderr)
                return result

            open_mode = f"open {args.rate:g}/s"
            sat_mode = f"{args.clients} clients"
            for name, write in targets:
                d = duration if name in ("api", "raw") else duration * context
                measure(name, open_mode, partial(run_open_loop, write, 1, args.rate, d))
            for name, write in targets[:3]:
                d = sat_duration if name in ("api", "raw") else sat_duration * context
                measure(name, sat_mode, partial(run_closed_loop, write, args.clients, d))

            by = {(r.target, r.mode): r for r in results}
            print(results_table(results).markdown())
            print(
                "\nLatency: open loop from the scheduled send time; saturation per operation."
                " CPU ms/op: CPU time of the API processes / the ZooKeeper JVM / this client"
                " process during the phase, divided by successful operations."
                f" raw lost-race retries: {raw.retries}.\n"
            )
            ratios = Table(
                ["load", "API/raw p50", "API/raw p99", "raw/API throughput"],
                [
                    ratio_rows(by["api", open_mode], by["raw", open_mode], open_mode),
                    ratio_rows(by["api", sat_mode], by["raw", sat_mode], sat_mode),
                    ratio_rows(
                        by["api", open_mode], by["raw-rmw", open_mode], f"{open_mode}, vs raw-rmw"
                    ),
                    ratio_rows(
                        by["api", sat_mode], by["raw-rmw", sat_mode], f"{sat_mode}, vs raw-rmw"
                    ),
                ],
            )
            print(ratios.markdown())
            print()
            print(
                "\n".join(
                    goals(
                        by["api", open_mode],
                        by["raw", open_mode],
                        by["api", sat_mode],
                        by["raw", sat_mode],
                    )
                )
            )
        finally:
            zk.stop()
            zk.close()
            server.stop()
            zookeeper.stop()


if __name__ == "__main__":
    main()
