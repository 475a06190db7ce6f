"""Issue 5's goal for `git push`, measured in one run on this machine: the time from `git push`
to the first 200 from the new release through the router, for a small app of each kind, cold (a
new app: no build cache, first deploy) and warm (the same app again with one file changed),
beside the floor measured in the same run: a `git push` of the same commit to a plain bare
repository on disk, plus a `docker run` of the image Berth built until it answers.

Everything is real: a private ZooKeeper, `berth server` (API with the git receiver and builder,
logd, framework in local mode, router with its HAProxy), git, the Docker engine, the stack
images (built first if missing; that time is not counted). Each push changes `body.txt`, which
every sample app serves; the clock stops when the router answers 200 with the new body (polled
every 20 ms from the moment the push starts).

Goal: a warm push of a small app serving in ≤ 5 s p50 and ≤ 3 s over the floor.

    .venv/bin/python bench/push.py [--apps dockerfile,static,python,node,go,procfile]
                                   [--cold 3] [--warm 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Table, percentile, print_machine
from tests.support import images
from tests.support.services import BerthApi, ZooKeeper, cleanup_executors, free_port

GOAL_P50, GOAL_OVER_FLOOR = 5.0, 3.0
POLL = 0.02

# Small apps, each serving the text of body.txt on $PORT. Our own; nothing fetched.
PY_SERVER = """\
import http.server, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = open("body.txt", "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), Handler).serve_forever()
"""
NODE_SERVER = """\
const http = require("http"), fs = require("fs");
http.createServer((req, res) => res.end(fs.readFileSync("body.txt")))
  .listen(Number(process.env.PORT));
"""
GO_SERVER = """\
package main

import (
\t"net/http"
\t"os"
)

func main() {
\thttp.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
\t\tbody, _ := os.ReadFile("body.txt")
\t\tw.Write(body)
\t})
\thttp.ListenAndServe(":"+os.Getenv("PORT"), nil)
}
"""
APPS: dict[str, dict[str, str]] = {
    "dockerfile": {
        "Dockerfile": f"FROM {images.TEST_IMAGE}\nCOPY body.txt /www/index.html\n"
        'CMD httpd -f -p "$PORT" -h /www\n',
    },
    "static": {"index.html": "<!-- the body is body.txt -->\n"},
    "python": {"requirements.txt": "", "Procfile": "web: python3 app.py\n", "app.py": PY_SERVER},
    "node": {
        "package.json": '{"name": "bench", "version": "1.0.0", "private": true,'
        ' "scripts": {"start": "node server.js"}}\n',
        "server.js": NODE_SERVER,
    },
    "go": {"go.mod": "module bench\n\ngo 1.22\n", "main.go": GO_SERVER},
    "procfile": {"Procfile": "web: python3 app.py\n", "app.py": PY_SERVER},
}
# The static buildpack serves index.html: its body is the page itself.
SERVED_FILE = {"static": "index.html"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sample:
    kind: str  # cold | warm
    push: float  # git push → first 200 with the new body, through the router
    floor_push: float  # git push of the same commit to a bare repo on disk
    floor_run: float  # docker run of the built image until it answers


class Git:
    """A working copy driven by the real git binary, with the `berth` remote and credential
    helper set by `berth git:remote`, and a `floor` remote: a bare repository on disk."""

    def __init__(self, path: Path, app: str, url: str, token: str) -> None:
        self.path = path
        home = path.parent / f"{path.name}-home"
        home.mkdir()
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": "Bench",
            "GIT_AUTHOR_EMAIL": "bench@example.com",
            "GIT_COMMITTER_NAME": "Bench",
            "GIT_COMMITTER_EMAIL": "bench@example.com",
            "BERTH_URL": url,
            "BERTH_TOKEN": token,
        }
        path.mkdir()
        self.run("init", "-q", "-b", "main")
        floor = path.parent / f"{path.name}-floor.git"
        subprocess.run(["git", "init", "-q", "--bare", str(floor)], check=True, env=self.env)
        self.run("remote", "add", "floor", str(floor))
        subprocess.run(
            [sys.executable, "-m", "berth.cli", "git:remote", "-a", app],
            cwd=path,
            env=self.env,
            check=True,
            capture_output=True,
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["git", *args], cwd=self.path, env=self.env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()[-2000:]}")
        return done

    def commit(self, files: dict[str, str]) -> None:
        for name, text in files.items():
            (self.path / name).write_text(text)
        self.run("add", "-A")
        self.run("commit", "-q", "-m", "bench")


class Bench:
    def __init__(self, root: Path, zk: ZooKeeper) -> None:
        self.root = root
        self.data = root / "data"
        self.server = BerthApi(
            zk.hosts,
            f"/bench-push-{uuid.uuid4().hex[:8]}",
            self.data,
            root / "server.log",
            "server",
        )
        self.session = requests.Session()
        self.docker = docker.from_env()

    def start(self) -> None:
        self.server.start(60)
        self.session.headers["Authorization"] = f"Bearer {self.server.admin_token}"

    def stop(self) -> None:
        self.server.stop()
        cleanup_executors(self.data)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        answer = self.session.request(method, self.server.url + path, json=body, timeout=30)
        if answer.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text}")
        return answer.json()

    def served(self, app: str) -> str | None:
        try:
            answer = requests.get(
                f"http://127.0.0.1:{self.server.http_port}/",
                headers={"Host": f"{app}.localhost"},
                timeout=2,
            )
        except requests.RequestException:
            return None
        return answer.text if answer.status_code == 200 else None


def until(what: Callable[[], bool], timeout: float, doing: str) -> float:
    """Seconds until `what` holds, polled every POLL seconds."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if what():
            return time.monotonic() - started
        time.sleep(POLL)
    raise TimeoutError(f"{doing}: not within {timeout:.0f}s")


def push_once(bench: Bench, git: Git, app: str, body: str) -> float:
    """git push to Berth → the router's first 200 with `body`; the push must also succeed."""
    result: dict[str, subprocess.CompletedProcess[str]] = {}

    def push() -> None:
        result["push"] = subprocess.run(
            ["git", "push", "-q", "berth", "main"],
            cwd=git.path,
            env=git.env,
            capture_output=True,
            text=True,
        )

    started = time.monotonic()
    pusher = threading.Thread(target=push)
    pusher.start()
    try:
        until(lambda: (bench.served(app) or "").strip() == body, 900, f"{app} serving {body}")
    finally:
        pusher.join()
    seconds = time.monotonic() - started
    done = result["push"]
    if done.returncode != 0:
        raise RuntimeError(f"git push to {app} failed: {done.stderr.strip()[-2000:]}")
    return seconds


def floor_once(bench: Bench, git: Git, app: str, body: str) -> tuple[float, float]:
    """(git push to a bare repo, docker run of the release's image until it answers `body`)."""
    started = time.monotonic()
    git.run("push", "-q", "--force", "floor", "main")
    pushed = time.monotonic() - started
    release = bench.call("GET", f"/v1/apps/{app}/releases")[0]
    image = release["artifact"]["ref"]
    port = free_port()
    container_port = release["artifact"].get("port") or 5000
    web = (release.get("process_types") or {}).get("web", "")
    started = time.monotonic()
    argv = [
        *("docker", "run", "-d", "--rm", "-e", f"PORT={container_port}"),
        *("-p", f"127.0.0.1:{port}:{container_port}", image),
        *(("/bin/sh", "-c", f"exec {web}") if web else ()),
    ]
    container = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    try:

        def answers() -> bool:
            try:
                got = requests.get(f"http://127.0.0.1:{port}/", timeout=2)
            except requests.RequestException:
                return False
            return got.status_code == 200 and got.text.strip() == body

        until(answers, 120, f"docker run of {image}")
        ran = time.monotonic() - started
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)
    return pushed, ran


def measure(bench: Bench, kind: str, cold: int, warm: int) -> list[Sample]:
    samples: list[Sample] = []
    token = bench.server.admin_token
    served_file = SERVED_FILE.get(kind, "body.txt")
    for round_ in range(cold):
        app = f"bp-{kind}-{round_}-{uuid.uuid4().hex[:4]}"
        bench.call("POST", "/v1/apps", {"name": app})
        git = Git(bench.root / app, app, bench.server.url, token)
        body = f"{kind} cold {round_}"
        git.commit({**APPS[kind], served_file: body + "\n"})
        seconds = push_once(bench, git, app, body)
        floor_push, floor_run = floor_once(bench, git, app, body)
        samples.append(Sample("cold", seconds, floor_push, floor_run))
        log(f"{kind} cold {round_}: {seconds:.2f}s (floor {floor_push:.2f}+{floor_run:.2f}s)")
        if round_ < cold - 1:
            bench.call("DELETE", f"/v1/apps/{app}")
    for round_ in range(warm):
        body = f"{kind} warm {round_}"
        git.commit({served_file: body + "\n"})
        seconds = push_once(bench, git, app, body)
        floor_push, floor_run = floor_once(bench, git, app, body)
        samples.append(Sample("warm", seconds, floor_push, floor_run))
        log(f"{kind} warm {round_}: {seconds:.2f}s (floor {floor_push:.2f}+{floor_run:.2f}s)")
    bench.call("DELETE", f"/v1/apps/{app}")
    return samples


def summary(results: dict[str, list[Sample]]) -> tuple[Table, list[str]]:
    table = Table(
        [
            "app",
            "kind",
            "runs",
            "push → 200 p50",
            "p90",
            "floor p50 (push + run)",
            "over floor p50",
            "ratio",
        ],
        [],
    )
    verdicts: list[str] = []
    for app, samples in results.items():
        for kind in ("cold", "warm"):
            chosen = [s for s in samples if s.kind == kind]
            if not chosen:
                continue
            pushes = sorted(s.push for s in chosen)
            floors = sorted(s.floor_push + s.floor_run for s in chosen)
            p50, floor = percentile(pushes, 50), percentile(floors, 50)
            table.rows.append(
                [
                    app,
                    kind,
                    str(len(chosen)),
                    f"{p50:.2f} s",
                    f"{percentile(pushes, 90):.2f} s",
                    f"{floor:.2f} s ({percentile(sorted(s.floor_push for s in chosen), 50):.2f}"
                    f" + {percentile(sorted(s.floor_run for s in chosen), 50):.2f})",
                    f"{p50 - floor:+.2f} s",
                    f"{p50 / floor:.1f}x",
                ]
            )
            if kind == "warm":
                met = p50 <= GOAL_P50 and p50 - floor <= GOAL_OVER_FLOOR
                verdicts.append(
                    f"- {app} warm: p50 {p50:.2f} s (goal ≤ {GOAL_P50:.0f} s), "
                    f"{p50 - floor:+.2f} s over the floor (goal ≤ {GOAL_OVER_FLOOR:.0f} s): "
                    + ("**met**" if met else "**not met**")
                )
    return table, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", default=",".join(APPS), help="sample apps, comma-separated")
    parser.add_argument("--cold", type=int, default=3, help="cold pushes per app (3)")
    parser.add_argument("--warm", type=int, default=10, help="warm pushes per app (10)")
    args = parser.parse_args()
    kinds = [k for k in args.apps.split(",") if k]
    unknown = [k for k in kinds if k not in APPS]
    if unknown or args.cold < 1 or args.warm < 0:
        sys.exit(f"--apps: choose from {', '.join(APPS)}; --cold ≥ 1, --warm ≥ 0")
    for tool in ("git", "docker", "haproxy"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: scripts/setup installs it")

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    with tempfile.TemporaryDirectory(prefix="berth-bench-push-") as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o755)
        client = docker.from_env()
        images.ensure_test_image(client)
        if set(kinds) - {"dockerfile"}:
            log("making sure the stack images exist (not timed)")
            subprocess.run([sys.executable, "-m", "berth.cli", "stack:build"], check=True)
        zookeeper = ZooKeeper(tmp / "zookeeper")
        bench = Bench(tmp, zookeeper)
        try:
            zookeeper.start()
            bench.start()
            print_machine(tmp)
            results = {kind: measure(bench, kind, args.cold, args.warm) for kind in kinds}
        finally:
            bench.stop()
            zookeeper.stop()
            for container in client.containers.list(all=True, filters={"label": "berth.app"}):
                if container.labels.get("berth.app", "").startswith("bp-"):
                    container.remove(force=True)
            for image in client.images.list(filters={"label": "berth.app"}):
                if image.labels.get("berth.app", "").startswith("bp-"):
                    client.images.remove(image.id, force=True)
    table, verdicts = summary(results)
    print(f"### git push → first 200 ({args.cold} cold, {args.warm} warm per app)\n")
    print(table.markdown())
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
