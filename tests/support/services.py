"""Real services for tests and benchmarks: a standalone ZooKeeper from Debian's package, and
`berth api` as a real process. No mocks: these are the parts users run."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ZK_CLASSPATH = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar"
ZK_MAIN = "org.apache.zookeeper.server.ZooKeeperServerMain"


def zookeeper_available() -> bool:
    return shutil.which("java") is not None and Path("/usr/share/java/zookeeper.jar").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """Stops `proc` if it still runs: SIGTERM, then SIGKILL after `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"srvr")
                if s.recv(64):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"nothing answered on port {port} in {timeout:.0f}s")


class ZooKeeper:
    """One standalone ZooKeeper server with its own data dir and port; can be killed (-9) and
    restarted on the same data to test recovery."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.data_dir = root / "data"
        self.log_path = root / "zookeeper.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.root / "zoo.cfg"
        config.write_text(
            f"tickTime=500\ndataDir={self.data_dir}\nclientPort={self.port}\n"
            "clientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
            "maxSessionTimeout=20000\n4lw.commands.whitelist=srvr\n"
        )
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                ["java", "-Xmx256m", "-cp", ZK_CLASSPATH, ZK_MAIN, str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port)

    def kill(self) -> None:
        """kill -9: what a crash looks like."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


class BerthApi:
    """`berth api` (or `berth server`) as a real process, on its own port, data dir and chroot."""

    def __init__(
        self,
        zk_hosts: str,
        chroot: str,
        data_dir: Path,
        log_path: Path,
        command: str = "api",
        env: dict[str, str] | None = None,
    ) -> None:
        """`env`: BERTH_* variables for the process (the caller's own are not passed on)."""
        self.extra_env = dict(env or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.zk = f"{zk_hosts}{chroot}"
        self.data_dir = data_dir
        self.log_path = log_path
        self.command = command
        # `berth server` also runs the router: its HAProxy on a port of its own
        self.http_port = free_port() if command == "server" else 0
        self.logs_port = free_port()  # `berth server` runs berth logd there
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        env.update(self.extra_env)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "berth.cli",
                    self.command,
                    f"--data-dir={self.data_dir}",
                    f"--zk={self.zk}",
                    f"--api-addr=127.0.0.1:{self.port}",
                    f"--logs-addr=127.0.0.1:{self.logs_port}",
                    *([f"--http-addr=127.0.0.1:{self.http_port}"] if self.http_port else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"berth {self.command} exited; see {self.log_path}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"berth {self.command} not healthy in {timeout:.0f}s")

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._proc = None
        stop_haproxy(self.data_dir / "router")


def stop_haproxy(run_dir: Path) -> None:
    """Stops an HAProxy a router left running in `run_dir` (it keeps serving when its router
    is killed, by design), so no test leaves one behind."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((run_dir / "haproxy.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"haproxy" in cmdline and str(run_dir).encode() in cmdline:
            os.kill(pid, signal.SIGTERM)


class BerthFramework:
    """`berth framework` (local mode) as a real process. Its executors outlive it on purpose,
    so `cleanup` finds them by their sandbox under this data dir."""

    def __init__(
        self, zk_hosts: str, chroot: str, data_dir: Path, log_path: Path, ports: str
    ) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "berth.cli",
            "framework",
            f"--data-dir={data_dir}",
            f"--zk={zk_hosts}{chroot}",
            f"--local-ports={ports}",
        ]
        self.data_dir = data_dir
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait_leading(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while b'"msg": "leading"' not in self.log_path.read_bytes():
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"berth framework exited; see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError("berth framework did not lead")
            time.sleep(0.1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, sig)
            self._proc.wait(30)
        self._proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


def executor_pids(data_dir: Path) -> list[int]:
    """Executor processes whose sandbox is under `data_dir` (found through /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if f"MESOS_DIRECTORY={data_dir}".encode() in environ:
            pids.append(int(proc.name))
    return pids


def cleanup_executors(data_dir: Path) -> None:
    for pid in executor_pids(data_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class BerthRouter:
    """`berth router` as a real process, with its HAProxy serving on its own port. The router
    keeps HAProxy running when it stops (by design); `stop()` stops both."""

    def __init__(
        self,
        zk_hosts: str,
        chroot: str,
        data_dir: Path,
        log_path: Path,
        domain: str = "localhost",
        *,
        https: bool = False,
        extra_args: tuple[str, ...] = (),
        port: int | None = None,
    ) -> None:
        """`https`: also serve HTTPS, on `https_port`; `extra_args`: more `berth router`
        flags (ACME's, say); `port`: the HTTP port (a free one by default)."""
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.https_port = free_port() if https else 0
        self.run_dir = data_dir / "router"
        self.argv = [
            sys.executable,
            "-m",
            "berth.cli",
            "router",
            f"--data-dir={data_dir}",
            f"--zk={zk_hosts}{chroot}",
            f"--domain={domain}",
            f"--http-addr=127.0.0.1:{self.port}",
            *([f"--https-addr=127.0.0.1:{self.https_port}"] if https else []),
            *extra_args,
        ]
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"berth router exited; see {self.log_path}")
            with contextlib.suppress(OSError):
                for port in (self.port, self.https_port) if self.https_port else (self.port,):
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the router did not listen on {self.port}")
            time.sleep(0.1)

    def haproxy_pid(self) -> int:
        return int((self.run_dir / "haproxy.pid").read_text().split()[0])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signals the controller only: HAProxy is in a session of its own."""
        assert self._proc is not None
        self._proc.send_signal(sig)
        self._proc.wait(20)
        self._proc = None

    def stop(self) -> None:
        terminate(self._proc, 20)
        self._proc = None
        stop_haproxy(self.run_dir)
