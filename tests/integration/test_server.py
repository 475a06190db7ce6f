"""`berth server`: starts the API, prints how to log in, restarts a component that dies, and
stops cleanly."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest

from tests.support.services import BerthApi, ZooKeeper


@pytest.mark.slow
def test_server_supervises_the_api(zookeeper: ZooKeeper, chroot: str, tmp_path: Path) -> None:
    server = BerthApi(
        zookeeper.hosts, chroot, tmp_path / "data", tmp_path / "server.log", command="server"
    )
    server.start()
    try:
        token_file = tmp_path / "data" / "admin.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "data" / "config.key").stat().st_mode) == 0o600
        assert "berth login http://127.0.0.1:" in server.log_path.read_text()
        assert token_file.read_text().strip() not in server.log_path.read_text()
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        commands = {
            pid: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[2].decode()
            for pid in children
        }
        assert sorted(commands.values()) == [
            "berth.api",
            "berth.api.logd",
            "berth.framework",
            "berth.router",
        ]
        api_pid = next(pid for pid, module in commands.items() if module == "berth.api")
        os.kill(int(api_pid), signal.SIGKILL)
        time.sleep(0.5)
        server.wait_healthy(30)
        assert "api exited with -9; restarting" in server.log_path.read_text()
    finally:
        server.stop()
    assert "berth server stopped" in server.log_path.read_text()
