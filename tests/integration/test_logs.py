"""Logs end to end, every part real: ZooKeeper, `berth server` (API, logd, framework in local
mode, router), executors, Docker containers of the busybox test image, and the `berth logs`
CLI. Plus `berth logd` alone, fed by the executor's own shipper, for the size cap, restarts
and who may write and read."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from berth.framework import http1, logship
from berth.framework.loglines import Record, platform_token, read_token, task_token
from tests.conftest import Api
from tests.support import waiting
from tests.support.server import ServerHarness, remove_containers, running
from tests.support.services import ZooKeeper, free_port

pytestmark = [pytest.mark.slow, pytest.mark.zookeeper]

APPS = ("lg-out", "lg-tick", "lg-flood", "lg-quiet", "lg-restart", "lg-routed", "lg-reborn")
SERVE = 'mkdir -p /tmp/www && echo ok >/tmp/www/index.html && exec httpd -f -p "$PORT" -h /tmp/www'
# The output the first test checks: a line, a 100 KiB line, a line, a last line with no newline.
PRINT = (
    "echo first; head -c 102400 /dev/zero | tr '\\0' a; echo; echo third;"
    " printf 'last without newline'; exit 3"
)
TICK = 'i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.3; done'
FLOOD = "while true; do yes flood-flood-flood-flood | head -n 10000; sleep 0.5; done"
THREE = "echo one; echo two; echo three; exec sleep 3600"


def wait_for(what: Callable[[], Any], timeout: float = 90.0) -> Any:
    return waiting.wait_for(what, timeout, interval=0.2)


class Berth(ServerHarness):
    """`berth server` (its logd answering once started) and a CLI logged in to it."""

    def start(self) -> None:
        super().start()
        wait_for(self.logd_up, 30)

    def logd_up(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.server.logs_port}/healthz"
            return requests.get(url, timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def records_if_up(self, app: str) -> list[dict[str, Any]] | None:
        """The records, or None while the API or logd does not answer."""
        result = self.cli("logs", "-a", app, "--json", "-n", "10000", check=False)
        if result.returncode != 0:
            return None
        return [json.loads(line) for line in result.stdout.splitlines()]

    def deploy(self, app: str, image: str, **processes: str) -> None:
        self.create_app(app)
        body = {"image": image, "process_types": processes}
        answer = self.api.call("POST", f"/v1/apps/{app}/deploy", json=body)
        assert answer.status_code == 201, answer.text

    def scale(self, app: str, **formation: int) -> None:
        answer = self.api.call("PATCH", f"/v1/apps/{app}/formation", json=formation)
        assert answer.status_code == 200, answer.text

    def logd_pid(self) -> int | None:
        """The `berth logd` this server runs (found through /proc)."""
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if b"berth.api.logd" in argv and f"--data-dir={self.data}".encode() in argv:
                    return int(proc.name)
        return None


@pytest.fixture(scope="module")
def berth(
    zookeeper: ZooKeeper,
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    test_image: str,
) -> Iterator[Berth]:
    yield from running(
        Berth(zookeeper, f"/test-logs-{os.getpid()}", tmp_path_factory.mktemp("logs"))
    )
    remove_containers(docker_client, *APPS)


def texts(records: list[dict[str, Any]], process: str) -> list[str]:
    return [r["text"] for r in records if r["process"] == process and r["source"] == "app"]


@pytest.mark.docker
def test_output_arrives_whole_in_order_with_crashes_reported(berth: Berth, test_image: str) -> None:
    berth.deploy("lg-out", test_image, web=SERVE, worker=PRINT)
    berth.scale("lg-out", worker=1)
    expected = ["first", *["a" * 16384] * 6, "a" * 4096, "third", "last without newline"]

    def first_run() -> list[str] | None:
        found = texts(berth.records("lg-out", "--ps", "worker"), "worker.1")
        return found[: len(expected)] if len(found) >= len(expected) else None

    assert wait_for(first_run) == expected  # split at 16 KiB, nothing lost, nothing reordered
    crash = wait_for(
        lambda: [
            r
            for r in berth.records("lg-out", "--source", "berth")
            if r["text"].startswith("crashed with exit code 3")
        ]
    )[0]
    assert crash["process"] == "worker.1"
    assert crash["app"] == "lg-out"
    platform = [r["text"] for r in berth.records("lg-out", "--source", "berth")]
    assert any(t.startswith(f"Release v2: Deploy {test_image}") for t in platform)
    assert "Scaled to web=1, worker=1" in platform
    berth.scale("lg-out", worker=0)

    # -n: the last N, oldest first, in Heroku's format
    out = berth.cli("logs", "-a", "lg-out", "--ps", "worker.1", "--source", "app", "-n", "2").stdout
    lines = out.splitlines()
    assert len(lines) == 2
    for line in lines:
        stamp, who, _text = line.split(" ", 2)
        assert who == "app[worker.1]:"
        assert len(stamp) == 27
        assert stamp.endswith("Z")
    assert lines[-1].endswith(" app[worker.1]: last without newline")
    assert lines[0].endswith(" app[worker.1]: third")
    grep = berth.records("lg-out", "--grep", "without")
    assert {r["text"] for r in grep} == {"last without newline"}
    assert berth.records("lg-out", "--since", "1s", "--ps", "web.7") == []


@pytest.mark.docker
def test_a_tail_shows_new_lines_and_ctrl_c_ends_it_quietly(berth: Berth, test_image: str) -> None:
    berth.deploy("lg-tick", test_image, web=SERVE, worker=TICK)
    berth.scale("lg-tick", worker=1)
    wait_for(lambda: texts(berth.records("lg-tick"), "worker.1"))
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "berth.cli",
            "logs",
            "-a",
            "lg-tick",
            "-t",
            "-n",
            "0",
            "--ps",
            "worker",
        ],
        env=berth.cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []

    def read_tail() -> None:
        assert tail.stdout is not None
        for text in tail.stdout:
            seen.append(text)

    reader = threading.Thread(target=read_tail)
    reader.start()
    try:
        before = max(int(t.split()[1]) for t in texts(berth.records("lg-tick"), "worker.1"))
        line = wait_for(lambda: [s for s in seen if "tick" in s and int(s.split()[-1]) > before])[0]
        assert " app[worker.1]: tick " in line
    finally:
        tail.send_signal(signal.SIGINT)
        code = tail.wait(30)
        reader.join(30)
    assert tail.stderr is not None
    assert tail.stdout is not None
    errors = tail.stderr.read()
    tail.stderr.close()
    tail.stdout.close()
    assert code == 0
    assert errors == ""  # no traceback
    berth.scale("lg-tick", worker=0)


@pytest.mark.docker
def test_a_flooding_app_does_not_stall_another_and_drops_are_reported(
    berth: Berth, test_image: str
) -> None:
    berth.deploy("lg-flood", test_image, web=SERVE, worker=FLOOD)
    berth.deploy("lg-quiet", test_image, web=SERVE, worker=TICK)
    berth.scale("lg-flood", worker=1)
    berth.scale("lg-quiet", worker=1)
    wait_for(lambda: texts(berth.records("lg-flood", "-n", "1", "--ps", "worker"), "worker.1"))

    def newest_tick() -> int:
        ticks = texts(berth.records("lg-quiet", "-n", "1", "--ps", "worker"), "worker.1")
        return int(ticks[-1].split()[1]) if ticks else -1

    start = wait_for(lambda: newest_tick() + 1) - 1
    wait_for(lambda: newest_tick() >= start + 5)  # the quiet app's lines keep arriving

    # logd stops answering (SIGSTOP): the apps keep running; lines that did not fit in the
    # executor's buffer meanwhile are counted and reported once logd is back
    pid = berth.logd_pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(6)  # the flood fills the executor's bounded buffer (10,000 lines)
        tasks = berth.api.call("GET", "/v1/apps/lg-flood/ps").json()["tasks"]
        assert [t["state"] for t in tasks if t["process"] == "worker"] == ["running"]
    finally:
        os.kill(pid, signal.SIGCONT)
    note = wait_for(
        lambda: [
            r
            for r in berth.records("lg-flood", "--source", "berth")
            if r["text"].startswith("worker.1: ") and "lines dropped" in r["text"]
        ]
    )[0]
    assert int(note["text"].split()[1]) > 0
    after = newest_tick()
    wait_for(lambda: newest_tick() > after)  # and new lines flow again
    berth.scale("lg-flood", worker=0)
    berth.scale("lg-quiet", worker=0)


@pytest.mark.docker
def test_history_survives_a_logd_restart(berth: Berth, test_image: str) -> None:
    berth.deploy("lg-restart", test_image, web=SERVE, worker=THREE)
    berth.scale("lg-restart", worker=1)
    wait_for(lambda: texts(berth.records("lg-restart"), "worker.1") == ["one", "two", "three"])
    before = berth.records("lg-restart")
    pid = berth.logd_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: berth.logd_pid() not in (None, pid), 60)  # `berth server` restarts it
    after = wait_for(lambda: berth.records_if_up("lg-restart"))
    assert after[: len(before)] == before  # (a platform line may have come since)
    berth.scale("lg-restart", worker=0)


def test_router_access_lines_join_the_app_s_log(berth: Berth, test_image: str) -> None:
    """Requests through `berth server`'s router become `router[web.1]` lines of the app's log:
    method, path, status, bytes, timings, the request id; a request for an unknown host, of no
    app, is in nobody's log."""
    berth.deploy("lg-routed", test_image, web=SERVE)
    berth.scale("lg-routed", web=1)
    router = f"http://127.0.0.1:{berth.server.http_port}"

    def served() -> bool:
        try:
            reply = requests.get(
                f"{router}/index.html?q=1",
                headers={"Host": "lg-routed.localhost", "X-Request-Id": "trace-42"},
                timeout=5,
            )
        except requests.RequestException:
            return False
        return reply.status_code == 200

    wait_for(served)
    requests.get(router, headers={"Host": "nobody.localhost"}, timeout=5)

    def access_line() -> dict[str, Any] | None:
        for record in berth.records("lg-routed", "--source", "router"):
            if "request_id=trace-42" in record["text"] and "status=200" in record["text"]:
                return record
        return None

    record = wait_for(access_line, 30)
    assert record["process"] == "web.1"
    assert record["source"] == "router"
    text = record["text"]
    for field in ("method=GET", 'path="/index.html"', "host=lg-routed.localhost", "bytes="):
        assert field in text, text
    assert "duration_ms=" in text
    assert "backend=" not in text
    assert "q=1" not in text  # query strings (tokens, often) stay out of logs
    heroku = berth.cli("logs", "-a", "lg-routed", "--source", "router").stdout
    assert "router[web.1]: request_id=trace-42" in heroku
    assert "nobody.localhost" not in heroku


def test_a_new_app_of_a_destroyed_app_s_name_starts_with_no_history(
    berth: Berth, test_image: str, docker_client: docker.DockerClient
) -> None:
    berth.deploy("lg-reborn", test_image, web=f"echo secret-of-the-first-app && {SERVE}")
    berth.scale("lg-reborn", web=1)
    wait_for(lambda: any("secret-of" in r["text"] for r in berth.records("lg-reborn")))
    assert berth.api.call("DELETE", "/v1/apps/lg-reborn").status_code == 200
    # sparse: the SDK would inspect each container listed, and one removed meanwhile is a 404
    wait_for(
        lambda: (
            not docker_client.containers.list(
                all=True, sparse=True, filters={"label": "berth.app=lg-reborn"}
            )
        )
    )
    assert berth.api.call("POST", "/v1/apps", json={"name": "lg-reborn"}).status_code == 201
    assert not any("secret-of" in r["text"] for r in berth.records("lg-reborn"))


def test_bad_requests_are_refused_with_a_reason(berth: Berth) -> None:
    assert berth.api.call("POST", "/v1/apps", json={"name": "lg-errors"}).status_code == 201
    for query, message in [
        ("lines=10001", "lines"),
        ("since=yesterday", "since"),
        ("source=kernel", "source"),
        ("ps=Web!", "ps"),
        ("lines=1&lines=2", "twice"),
    ]:
        answer = berth.api.call("GET", f"/v1/apps/lg-errors/logs?{query}")
        assert answer.status_code == 422, query
        assert message in answer.json()["error"]["message"]
    assert berth.api.call("GET", "/v1/apps/lg-none/logs").status_code == 404
    result = berth.cli("logs", "-a", "lg-none", check=False)
    assert result.returncode == 1
    assert "lg-none" in result.stderr
    assert "Traceback" not in result.stderr
    assert berth.cli("logs", "-a", "lg-errors", "-n", "20000", check=False).returncode == 2
    assert berth.cli("logs", "-a", "lg-errors", "-s", "kernel", check=False).returncode == 2
    result = berth.cli("logs", "-a", "lg-errors", "--since", "soon", check=False)
    assert result.returncode == 1
    assert "since" in result.stderr
    assert requests.get(f"{berth.api.url}/v1/apps/lg-errors/logs", timeout=10).status_code == 401


def test_tails_that_went_away_free_their_slots(berth: Berth) -> None:
    """A tail holds one API thread; at most MAX_TAILS (4) run at once. A client that leaves
    gives its slot back: the keepalive the API passes on every second fails to reach it."""
    assert berth.api.call("POST", "/v1/apps", json={"name": "lg-tails"}).status_code == 201
    url = f"{berth.api.url}/v1/apps/lg-tails/logs?tail=1&lines=0"
    headers = {"Authorization": f"Bearer {berth.api.token}"}

    def open_tail() -> requests.Response:
        return requests.get(url, headers=headers, stream=True, timeout=30)

    def four_tails() -> list[requests.Response]:
        """Four live tails, taking each slot as it comes back (a refused one is closed)."""
        held: list[requests.Response] = []

        def one_more() -> bool:
            tail = open_tail()
            if tail.status_code == 200:
                held.append(tail)
            else:
                tail.close()
            return len(held) == 4

        wait_for(one_more, 30)
        return held

    for _round in range(3):  # every slot comes back, again and again
        tails = four_tails()
        assert next(tails[0].iter_content(1)) == b"\n"  # a keepalive: the tail is live
        extra = open_tail()
        assert extra.status_code == 503
        assert "tails" in extra.json()["error"]["message"]
        extra.close()
        _close_all(iter(tails))  # the clients go away


def _close_all(responses: Iterator[requests.Response]) -> list[requests.Response]:
    opened = list(responses)
    for response in opened:
        response.close()
    return opened


def test_without_logd_the_api_says_so(api: Api) -> None:
    assert api.call("POST", "/v1/apps", json={"name": "lg-nologd"}).status_code == 201
    answer = api.call("GET", "/v1/apps/lg-nologd/logs")
    assert answer.status_code == 503
    assert "berth logd" in answer.json()["error"]["message"]


# -- berth logd alone ----------------------------------------------------------------------------


class Logd:
    def __init__(self, data: Path, log_path: Path, max_bytes: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = data
        self.log_path = log_path
        self.max_bytes = max_bytes
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "berth.cli",
                    "logd",
                    f"--data-dir={self.data}",
                    f"--logs-addr=127.0.0.1:{self.port}",
                    f"--logs-max-bytes={self.max_bytes}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        wait_for(self.up, 30)

    def up(self) -> bool:
        try:
            requests.get(self.url + "/healthz", timeout=1)
        except requests.RequestException:
            return False
        return True

    def get(self, path: str, token: str = "") -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(self.url + path, headers=headers, timeout=30)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None


@pytest.fixture
def logd(tmp_path: Path) -> Iterator[Logd]:
    server = Logd(tmp_path / "data", tmp_path / "logd.log", "256k")
    server.start()
    yield server
    server.stop()


def ship(url: str, token: str, app: str, process: str, lines: list[bytes]) -> None:
    shipper = logship.Shipper(url, token, identity=(app, process, 1)).start()
    for line in lines:
        shipper.put("stdout", line)
    shipper.close(60)
    assert shipper.dropped_total == 0


def read(logd: Logd, key: bytes, app: str, query: str = "lines=10000") -> list[Record]:
    answer = logd.get(f"/v1/logs/{app}?{query}", read_token(key))
    assert answer.status_code == 200, answer.text
    return [Record.decode(line) for line in answer.content.splitlines() if line]


def test_logd_keeps_its_size_cap_and_its_history_across_restarts(logd: Logd) -> None:
    key = logship.load_or_create_key(logd.data)
    token = task_token(key, "capped", "web.1", 1)
    lines = [f"{n:06d} {'p' * 200}\n".encode() for n in range(10_000)]  # ~2 MB
    for start in range(0, len(lines), 2000):
        ship(logd.url, token, "capped", "web.1", lines[start : start + 2000])
    wait_for(lambda: [r for r in read(logd, key, "capped", "lines=1") if r.text[:6] == "009999"])
    files = list((logd.data / "logs" / "capped").glob("*.log"))
    assert sum(f.stat().st_size for f in files) <= 256 * 1024
    kept = read(logd, key, "capped")
    numbers = [int(r.text.split()[0]) for r in kept]
    assert numbers == list(range(numbers[0], 10_000))  # the newest, contiguous: oldest went first
    assert numbers[0] > 0

    logd.kill()  # kill -9: what was written is on disk
    logd.start()
    assert read(logd, key, "capped") == kept
    ship(logd.url, token, "capped", "web.1", [b"after the restart\n"])
    wait_for(
        lambda: [r.text for r in read(logd, key, "capped", "lines=1")] == ["after the restart"]
    )
    assert read(logd, key, "capped")[:-1] == kept


def test_logd_trusts_only_its_own_tokens(logd: Logd) -> None:
    key = logship.load_or_create_key(logd.data)
    endpoint = http1.Endpoint.parse(logd.url)

    def post(token: str, body: object) -> int:
        with http1.request(
            endpoint,
            "POST",
            "/v1/ingest",
            json_body=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as answer:
            answer.read()
            return answer.status

    batch = {"dropped": 0, "lines": [["2026-01-02T03:04:05.678901Z", "stdout", "hi"]]}
    assert post(task_token(key, "mine", "web.1", 1), batch) == 200
    assert post(task_token(b"x" * 32, "mine", "web.1", 1), batch) == 401  # another key
    assert post(read_token(key), batch) == 403
    bad = {"dropped": 0, "lines": [["yesterday", "stdout", "hi"]]}
    assert post(task_token(key, "mine", "web.1", 1), bad) == 422
    platform = {
        "records": [
            {
                "ts": "2026-01-02T03:04:06.000000Z",
                "app": "mine",
                "source": "berth",
                "process": "web.1",
                "stream": "stdout",
                "text": "crashed with exit code 3",
            }
        ]
    }
    assert post(platform_token(key), platform) == 200
    assert logd.get("/v1/logs/mine").status_code == 401
    assert logd.get("/v1/logs/mine", task_token(key, "mine", "web.1", 1)).status_code == 403
    found = wait_for(lambda: len(read(logd, key, "mine")) == 2 and read(logd, key, "mine"))
    assert [(r.source, r.process, r.text) for r in found] == [
        ("app", "web.1", "hi"),
        ("berth", "web.1", "crashed with exit code 3"),
    ]
    text = logd.get("/v1/logs/mine?format=text&source=app", read_token(key)).text
    assert text == "2026-01-02T03:04:05.678901Z app[web.1]: hi\n"


def test_a_shipper_keeps_running_while_logd_is_away_and_reports_its_drops(tmp_path: Path) -> None:
    logd = Logd(tmp_path / "data", tmp_path / "logd.log", "1m")  # not started yet
    key = logship.load_or_create_key(logd.data)
    shipper = logship.Shipper(
        logd.url, task_token(key, "away", "web.1", 1), identity=("away", "web.1", 1), max_records=10
    ).start()
    try:
        for n in range(50):
            shipper.put("stdout", f"line {n}\n".encode())  # never blocks, logd or not
        dropped = shipper.dropped_total
        assert dropped >= 40 - 1  # the queue holds 10 (and the thread may hold one batch)
        logd.start()
        wait_for(lambda: shipper.shipped == 50 - dropped, 60)  # retried with backoff
        found = wait_for(lambda: (r := read(logd, key, "away")) and len(r) == 51 - dropped and r)
    finally:
        shipper.close(5)
        logd.stop()
    notes = [r.text for r in found if r.source == "berth"]
    assert notes == [
        f"web.1: {dropped} lines dropped (the log service was unreachable or its buffer was full)"
    ]
    kept = [r.text for r in found if r.source == "app"]
    assert kept == sorted(kept, key=lambda t: int(t.split()[1]))  # in order, gaps where dropped
    assert len(kept) == 50 - dropped
