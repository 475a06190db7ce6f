"""Log drains end to end, every part real: ZooKeeper, `berth server` (its logd sends), Docker
containers of the busybox test image, the `berth drains` CLI, and receivers: Debian's rsyslog
(imtcp, octet-counted RFC 5424, written to a file), a TLS syslog listener that parses the
framing strictly, an HTTPS server taking NDJSON batches, and a port where nothing listens."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.conftest import need
from tests.integration.test_logs import Berth, texts, wait_for
from tests.support.certs import TestCA
from tests.support.services import BerthApi, ZooKeeper, free_port

pytestmark = [pytest.mark.slow, pytest.mark.zookeeper]

APPS = ("dr-sys", "dr-tls", "dr-bad")
SERVE = 'mkdir -p /tmp/www && echo ok >/tmp/www/index.html && exec httpd -f -p "$PORT" -h /tmp/www'
# 20 bursts of 300 numbered lines, then a tick: more than a drain buffers (3000 lines, set
# below) reach a dead drain, while a live drain keeps up with every burst.
BURSTS = (
    'i=0; while [ $i -lt 20 ]; do n=1; while [ $n -le 300 ]; do echo "burst $i line $n";'
    " n=$((n+1)); done; i=$((i+1)); sleep 0.3; done;"
    ' n=0; while true; do echo "tick $n"; n=$((n+1)); sleep 0.5; done'
)
FEW = "echo 'first line'; echo 'second line' >&2; echo 'héllo ✓'; exec sleep 3600"
BUFFER_LINES = 3000

RFC5424 = re.compile(
    rb"<(?P<pri>[0-9]{1,3})>1 (?P<ts>[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\.[0-9]{6}Z)"
    rb" (?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) - -(?: (?P<msg>.*))?",
    re.DOTALL,
)


class DrainBerth(Berth):
    """`berth server` whose logd trusts the test CA and buffers 3000 lines per drain."""

    def __init__(self, zk: ZooKeeper, chroot: str, root: Path, ca_file: Path) -> None:
        super().__init__(zk, chroot, root)
        env = {
            "BERTH_DRAINS_CA_FILE": str(ca_file),
            "BERTH_DRAINS_BUFFER_LINES": str(BUFFER_LINES),
        }
        self.server = BerthApi(zk.hosts, chroot, self.data, root / "server.log", "server", env)

    def create(self, app: str) -> None:
        assert self.api.call("POST", "/v1/apps", json={"name": app}).status_code == 201

    def release(self, app: str, image: str, **processes: str) -> None:
        body = {"image": image, "process_types": processes}
        answer = self.api.call("POST", f"/v1/apps/{app}/deploy", json=body)
        assert answer.status_code == 201, answer.text

    def drains(self, app: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(self.cli("drains", "-a", app, "--json").stdout)
        return found

    def add_drain_and_wait(self, app: str, url: str) -> str:
        """Add a drain and wait until logd runs it (so no line is sent before it listens)."""
        out = self.cli("drains:add", url, "-a", app, "--json").stdout
        drain_id = str(json.loads(out)["id"])
        wait_for(
            lambda: any(
                d["id"] == drain_id and d["status"] in ("starting", "up", "retrying")
                for d in self.drains(app)
            ),
            30,
        )
        return drain_id


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestCA, Path]:
    authority = TestCA("Berth Drains Test CA")
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_text(authority.pem)
    return authority, path


@pytest.fixture(scope="module")
def berth(
    zookeeper: ZooKeeper,
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    test_image: str,
    ca: tuple[TestCA, Path],
) -> Iterator[DrainBerth]:
    b = DrainBerth(zookeeper, "/test-drains", tmp_path_factory.mktemp("drains"), ca[1])
    b.start()
    yield b
    b.stop()
    for app in APPS:
        for container in docker_client.containers.list(
            all=True, filters={"label": f"berth.app={app}"}
        ):
            container.remove(force=True)


# -- receivers ------------------------------------------------------------------------------------


class Rsyslog:
    """Debian's rsyslogd in the foreground with a config, pid file and work dir of its own:
    imtcp on a free loopback port, every message's fields written to a file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.out = root / "received.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        (self.root / "work").mkdir(parents=True, exist_ok=True)
        template = (
            "%pri%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%procid%|%msgid%"
            "|%structured-data%|%msg%\\n"
        )
        (self.root / "rsyslog.conf").write_text(
            f'global(workDirectory="{self.root / "work"}" maxMessageSize="64k")\n'
            'module(load="imtcp")\n'
            f'input(type="imtcp" port="{self.port}" address="127.0.0.1")\n'
            f'template(name="fields" type="string" string="{template}")\n'
            f'*.* action(type="omfile" file="{self.out}" template="fields")\n'
        )
        binary = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
        with (self.root / "rsyslogd.out").open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-n", "-f", str(self.root / "rsyslog.conf"), "-i", str(self.root / "pid")],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def listening() -> bool:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                return True
            return False

        wait_for(listening, 30)

    def lines(self) -> list[list[str]]:
        if not self.out.exists():
            return []
        return [line.split("|", 7) for line in self.out.read_text().splitlines()]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    need(
        Path("/usr/sbin/rsyslogd").exists() or shutil.which("rsyslogd") is not None,
        "rsyslogd (Debian package rsyslog)",
    )
    server = Rsyslog(tmp_path / "rsyslog")
    server.start()
    yield server
    server.stop()


class TlsSyslog:
    """A TLS syslog receiver that checks RFC 6587 octet counting and RFC 5424 strictly: a
    frame is MSG-LEN (digits, no leading zero) SP and exactly that many bytes of a message."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.messages: list[dict[str, bytes]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            conn = self._context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        data = b""
        with conn:
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    if data:
                        self.errors.append(f"connection ended inside a frame: {data[:40]!r}")
                    return
                data += chunk
                while b" " in data[:12]:
                    length_text, _, rest = data.partition(b" ")
                    if not re.fullmatch(rb"[1-9][0-9]{0,8}", length_text):
                        self.errors.append(f"bad MSG-LEN {length_text[:20]!r}")
                        return
                    length = int(length_text)
                    if len(rest) < length:
                        break
                    message, data = rest[:length], rest[length:]
                    match = RFC5424.fullmatch(message)
                    with self._lock:
                        if match is None:
                            self.errors.append(f"not RFC 5424: {message[:80]!r}")
                        else:
                            self.messages.append(match.groupdict())

    def close(self) -> None:
        self._listener.close()


class HttpsCollector:
    """An HTTPS server that takes POSTed NDJSON batches."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.content_types: set[str] = set()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.content_types.add(self.headers.get("Content-Type", ""))
                collector.batches.append([json.loads(line) for line in body.splitlines()])
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.2,), daemon=True).start()

    def records(self) -> list[dict[str, Any]]:
        return [r for batch in list(self.batches) for r in batch]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def server_context(authority: TestCA, tmp_path: Path, name: str = "localhost") -> ssl.SSLContext:
    pair = authority.issue(name)
    tmp_path.mkdir(parents=True, exist_ok=True)
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert.write_text(pair.cert)
    key.write_text(pair.key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


# -- tests ----------------------------------------------------------------------------------------


def test_bad_drains_are_refused_with_a_reason_and_nothing_is_stored(berth: DrainBerth) -> None:
    berth.create("dr-bad")
    for url, message in [
        ("ftp://logs.example.com", "the scheme must be syslog, syslog+tls or https"),
        ("http://logs.example.com/in", "plain http:// is not accepted"),
        ("syslog://logs.example.com:99999", "port must be a number from 1 to 65535"),
        ("syslog://logs.example.com:514/x", "only a host and port"),
        ("syslog://", "a host is missing"),
    ]:
        result = berth.cli("drains:add", url, "-a", "dr-bad", check=False)
        assert result.returncode == 1
        assert message in result.stderr
    secret = berth.cli(
        "drains:add", "https://me:hunter2@c.example.com/", "-a", "dr-bad", check=False
    )
    assert secret.returncode == 1
    assert "credentials" in secret.stderr
    assert "hunter2" not in secret.stderr
    answer = berth.api.call("POST", "/v1/apps/dr-bad/drains", json={"url": "syslog://a b"})
    assert answer.status_code == 422
    assert berth.api.call("POST", "/v1/apps/dr-bad/drains", json={"uri": "x"}).status_code == 422
    assert berth.drains("dr-bad") == []

    added = [f"syslog://collector-{i}.example.com:514" for i in range(10)]
    for url in added:
        berth.cli("drains:add", url, "-a", "dr-bad")
    again = berth.api.call("POST", "/v1/apps/dr-bad/drains", json={"url": added[0].upper()})
    assert again.status_code == 409  # the same drain, however it is written
    eleventh = berth.api.call(
        "POST", "/v1/apps/dr-bad/drains", json={"url": "syslog://one-more.example.com"}
    )
    assert eleventh.status_code == 422
    assert "10 drains" in eleventh.json()["error"]["message"]
    assert [d["url"] for d in berth.drains("dr-bad")] == added

    first = berth.drains("dr-bad")[0]
    berth.cli("drains:remove", first["id"], "-a", "dr-bad")
    berth.cli("drains:remove", "SYSLOG://Collector-1.example.com", "-a", "dr-bad")
    assert [d["url"] for d in berth.drains("dr-bad")] == added[2:]
    gone = berth.cli("drains:remove", added[0], "-a", "dr-bad", check=False)
    assert gone.returncode == 1
    assert "has no drain" in gone.stderr
    assert berth.api.call("GET", "/v1/apps/dr-nope/drains").status_code == 404
    assert berth.api.call("DELETE", "/v1/apps/dr-bad/drains/nonsense").status_code == 422


@pytest.mark.docker
def test_rsyslog_receives_the_apps_lines_as_rfc5424(
    berth: DrainBerth, rsyslog: Rsyslog, test_image: str
) -> None:
    berth.create("dr-sys")
    berth.add_drain_and_wait("dr-sys", f"syslog://127.0.0.1:{rsyslog.port}")
    berth.release("dr-sys", test_image, web=SERVE, worker=FEW)
    berth.scale("dr-sys", worker=1)

    def app_lines() -> list[list[str]] | None:
        found = [f for f in rsyslog.lines() if f[3] == "app" and f[4] == "worker.1"]
        return found if len(found) >= 3 else None

    received = wait_for(app_lines)
    stored = [r for r in berth.records("dr-sys", "--ps", "worker.1") if r["source"] == "app"]
    assert [f[7] for f in received] == [r["text"] for r in stored][:3]
    # stdout and stderr are two pipes: their relative order is Docker's, the same as stored
    pri = {f[7]: int(f[0]) for f in received}
    assert pri == {"first line": 14, "second line": 11, "héllo ✓": 14}  # user.info, user.err
    for fields, record in zip(received, stored, strict=False):
        assert fields[2] == "dr-sys"  # HOSTNAME: the app
        assert fields[5] == "-"  # MSGID
        assert fields[6] == "-"  # no structured data
        # rsyslog writes the time in its own RFC 3339 form: compare the instant
        assert fields[1][:19] == record["ts"][:19]
    platform = wait_for(lambda: [f for f in rsyslog.lines() if f[3] == "berth"])
    assert any(f[7].startswith("Scaled to") for f in platform)


@pytest.mark.docker
def test_tls_and_https_drains_deliver_while_a_dead_drain_drops_and_says_so(
    berth: DrainBerth, ca: tuple[TestCA, Path], tmp_path: Path, test_image: str
) -> None:
    authority, _ = ca
    listener = TlsSyslog(server_context(authority, tmp_path))
    collector = HttpsCollector(server_context(authority, tmp_path))
    stranger = TlsSyslog(server_context(TestCA("Not Trusted CA"), tmp_path / "other"))
    dead_port = free_port()  # nothing listens there
    try:
        berth.create("dr-tls")
        berth.add_drain_and_wait("dr-tls", f"syslog+tls://localhost:{listener.port}")
        berth.add_drain_and_wait("dr-tls", f"https://localhost:{collector.port}/logs?token=t0k3n")
        dead = berth.add_drain_and_wait("dr-tls", f"syslog://127.0.0.1:{dead_port}")
        untrusted = berth.add_drain_and_wait("dr-tls", f"syslog+tls://localhost:{stranger.port}")
        berth.release("dr-tls", test_image, web=SERVE, worker=BURSTS)
        berth.scale("dr-tls", worker=1)

        expected = [f"burst {i} line {n}" for i in range(20) for n in range(1, 301)]

        def tls_texts() -> list[str]:
            return [
                m["msg"].decode()
                for m in list(listener.messages)
                if m["procid"] == b"worker.1" and m["msg"] and m["msg"].startswith(b"burst")
            ]

        wait_for(lambda: len(tls_texts()) >= len(expected), 120)
        assert tls_texts() == expected  # every line, once, in order
        assert listener.errors == []
        wait_for(
            lambda: (
                len([r for r in collector.records() if r["text"].startswith("burst")])
                >= len(expected)
            ),
            60,
        )
        https = [r["text"] for r in collector.records() if r["text"].startswith("burst")]
        assert https == expected
        assert collector.content_types == {"application/x-ndjson"}
        sample = next(r for r in collector.records() if r["process"] == "worker.1")
        assert set(sample) == {"ts", "app", "source", "process", "stream", "text"}
        assert sample["app"] == "dr-tls"

        # the app ran on: its ticks keep arriving in its history
        wait_for(
            lambda: any(t.startswith("tick 3") for t in texts(berth.records("dr-tls"), "worker.1"))
        )

        # the dead drain: retrying, its drops counted in `drains` and said in the app's log
        def dead_stats() -> dict[str, Any] | None:
            found = next(d for d in berth.drains("dr-tls") if d["id"] == dead)
            return found if found["dropped"] and found["dropped"] > 0 else None

        stats = wait_for(dead_stats, 60)
        assert stats["status"] == "retrying"
        assert stats["last_error"] == "connection refused"
        assert stats["delivered"] == 0
        assert stats["dropped"] >= len(expected) - BUFFER_LINES - 500
        notes = wait_for(
            lambda: [
                r["text"]
                for r in berth.records("dr-tls", "--source", "berth")
                if r["text"].startswith(f"drain syslog://127.0.0.1:{dead_port}: ")
            ]
        )
        assert re.fullmatch(
            r"drain syslog://127\.0\.0\.1:[0-9]+: [0-9]+ lines dropped .*", notes[0]
        )
        refused = wait_for(
            lambda: [d for d in berth.drains("dr-tls") if d["id"] == untrusted and d["last_error"]]
        )[0]
        assert refused["status"] == "retrying"
        assert refused["last_error"].startswith("TLS: ")  # the server's certificate is not trusted
        assert refused["delivered"] == 0
        assert stranger.messages == []
        for live in berth.drains("dr-tls"):
            if live["id"] not in (dead, untrusted):
                assert live["status"] == "up"
                assert live["dropped"] == 0
        listed = berth.cli("drains", "-a", "dr-tls").stdout
        assert "retrying" in listed
        assert "t0k3n" in listed  # the owner sees the URL it gave
        server_log = (berth.root / "server.log").read_text()
        assert "t0k3n" not in server_log  # but Berth's own logs never show the query
    finally:
        listener.close()
        stranger.close()
        collector.close()
