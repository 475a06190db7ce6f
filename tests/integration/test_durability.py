"""State survives restarts, ZooKeeper crashes and session loss; concurrent writers lose
nothing; config values never reach ZooKeeper's disk or any log; Berths side by side on one
ZooKeeper don't see each other. Real ZooKeeper, real `berth api` processes."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import Api, need
from tests.support.services import BerthApi, ZooKeeper, zookeeper_available


@pytest.fixture
def own_zookeeper(tmp_path: Path) -> Iterator[ZooKeeper]:
    """A ZooKeeper this test alone may kill and restart."""
    need(zookeeper_available(), "ZooKeeper (Debian package zookeeper)")
    server = ZooKeeper(tmp_path / "zk")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_api(own_zookeeper: ZooKeeper, tmp_path: Path) -> Iterator[Api]:
    server = BerthApi(own_zookeeper.hosts, "/berth", tmp_path / "data", tmp_path / "api.log")
    server.start()
    yield Api(server)
    server.stop()


pytestmark = pytest.mark.zookeeper


def test_state_survives_restarting_everything(own_zookeeper: ZooKeeper, own_api: Api) -> None:
    own_api.call("POST", "/v1/apps", json={"name": "durable"})
    own_api.call("PATCH", "/v1/apps/durable/config", json={"K": "v"})
    own_api.call("PATCH", "/v1/apps/durable/formation", json={"web": 3})
    token = own_api.call("POST", "/v1/tokens", json={"description": "x"}).json()["token"]
    own_api.server.stop()
    own_zookeeper.stop()

    own_zookeeper.start()
    own_api.server.start()
    assert own_api.call("GET", "/v1/apps/durable/config").json() == {"K": "v"}
    assert own_api.call("GET", "/v1/apps/durable").json()["formation"] == {"web": 3}
    assert [r["version"] for r in own_api.call("GET", "/v1/apps/durable/releases").json()] == [
        2,
        1,
    ]
    r = requests.get(
        f"{own_api.url}/v1/apps", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert r.status_code == 200
    # the admin token is not generated twice
    assert len(own_api.call("GET", "/v1/tokens").json()) == 2


@pytest.mark.slow
def test_zookeeper_killed_mid_stream_loses_no_acknowledged_write(
    own_zookeeper: ZooKeeper, own_api: Api
) -> None:
    own_api.call("POST", "/v1/apps", json={"name": "stream"})
    acknowledged: list[str] = []
    statuses: list[int] = []
    stop = threading.Event()

    def writer(n: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {own_api.token}"
        i = 0
        while not stop.is_set():
            key = f"W{n}_{i}"
            try:
                r = session.patch(
                    f"{own_api.url}/v1/apps/stream/config", json={key: "x"}, timeout=30
                )
            except requests.RequestException:
                statuses.append(0)
            else:
                statuses.append(r.status_code)
                if r.status_code == 200:
                    acknowledged.append(key)
            i += 1
            time.sleep(0.02)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    own_zookeeper.kill()
    time.sleep(7)  # longer than a request waits for ZooKeeper (5 s): some must answer 503
    own_zookeeper.start()
    own_api.server.wait_healthy(30)
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(60)

    config = own_api.call("GET", "/v1/apps/stream/config").json()
    missing = [k for k in acknowledged if k not in config]
    assert not missing, f"{len(missing)} acknowledged writes lost"
    assert len(acknowledged) > 20
    # during the outage the API said 503 (try again), never crashed or answered 500
    assert 503 in statuses
    assert 500 not in statuses
    assert 0 not in statuses
    # release numbers stayed contiguous: nothing written twice or skipped
    newest = own_api.call("GET", "/v1/apps/stream").json()["release"]
    versions = [
        r["version"]
        for r in own_api.call("GET", "/v1/apps/stream/releases", params={"limit": 1000}).json()
    ]
    assert versions == list(range(newest, 0, -1))
    assert own_api.call("PATCH", "/v1/apps/stream/config", json={"AFTER": "1"}).status_code == 200


@pytest.mark.slow
def test_expired_session_is_replaced_without_a_crash(own_api: Api) -> None:
    """Freeze the API worker past its session timeout (like a long GC pause): ZooKeeper
    expires the session; on waking, the worker gets a new one and carries on."""
    own_api.call("POST", "/v1/apps", json={"name": "paused"})
    worker = _worker_pid(own_api.server.pid)
    os.kill(worker, signal.SIGSTOP)
    try:
        time.sleep(13)  # the session timeout is 10 s
    finally:
        os.kill(worker, signal.SIGCONT)
    own_api.server.wait_healthy(30)
    r = own_api.call("PATCH", "/v1/apps/paused/config", json={"A": "1"})
    assert r.status_code == 200, r.text
    assert _worker_pid(own_api.server.pid) == worker  # the same process: it did not crash
    log = own_api.server.log_path.read_text()
    assert '"zk_state": "LOST"' in log


def _worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1
    return int(children[0])


def test_concurrent_config_sets_lose_no_update(api: Api) -> None:
    api.call("POST", "/v1/apps", json={"name": "busy"})
    clients, writes = 8, 6
    errors: list[str] = []

    def client(n: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {api.token}"
        for i in range(writes):
            r = session.patch(
                f"{api.url}/v1/apps/busy/config", json={f"C{n}_{i}": str(i)}, timeout=60
            )
            if r.status_code != 200:
                errors.append(r.text)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    config = api.call("GET", "/v1/apps/busy/config").json()
    assert config == {f"C{n}_{i}": str(i) for n in range(clients) for i in range(writes)}
    assert api.call("GET", "/v1/apps/busy").json()["release"] == 1 + clients * writes


def test_config_values_never_reach_zookeeper_disk_or_logs(
    own_zookeeper: ZooKeeper, own_api: Api, tmp_path: Path
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    own_api.call("POST", "/v1/apps", json={"name": "vault"})
    assert own_api.call("PATCH", "/v1/apps/vault/config", json={"SECRET": canary}).ok
    # a rejected write must not echo the value either
    own_api.call("PATCH", "/v1/apps/vault/config", json={"bad-key": canary})
    own_api.call("PATCH", "/v1/apps/vault/config", json={"BIG": canary * 2000})
    own_api.call("POST", "/v1/apps/vault/rollback")
    own_api.server.stop()
    own_zookeeper.stop()  # flush the transaction log
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    zk_files = [p for p in own_zookeeper.data_dir.rglob("*") if p.is_file()]
    assert zk_files
    # positive control: we are reading the right bytes (the app name is stored in clear)
    assert any(b"vault" in p.read_bytes() for p in zk_files)
    leaked = [str(p) for p in files if canary.encode() in p.read_bytes()]
    assert not leaked


def test_two_berths_side_by_side_on_one_zookeeper(zookeeper: ZooKeeper, tmp_path: Path) -> None:
    one = BerthApi(zookeeper.hosts, "/side-one", tmp_path / "one", tmp_path / "one.log")
    two = BerthApi(zookeeper.hosts, "/side-two", tmp_path / "two", tmp_path / "two.log")
    one.start()
    two.start()
    try:
        a, b = Api(one), Api(two)
        assert a.call("POST", "/v1/apps", json={"name": "same-name"}).status_code == 201
        assert b.call("POST", "/v1/apps", json={"name": "same-name"}).status_code == 201
        a.call("PATCH", "/v1/apps/same-name/config", json={"ONLY_IN": "one"})
        assert b.call("GET", "/v1/apps/same-name/config").json() == {}
        assert a.token != b.token
        crossed = requests.get(
            f"{two.url}/v1/apps", timeout=10, headers={"Authorization": f"Bearer {a.token}"}
        )
        assert crossed.status_code == 401
    finally:
        one.stop()
        two.stop()


def test_a_revoked_token_stops_working_on_every_api_process(
    zookeeper: ZooKeeper, chroot: str, tmp_path: Path
) -> None:
    """Two API processes of one Berth (same chroot and key): a token cached by one is refused
    by it once the other revokes it."""
    one = BerthApi(zookeeper.hosts, chroot, tmp_path / "data", tmp_path / "one.log")
    two = BerthApi(zookeeper.hosts, chroot, tmp_path / "data", tmp_path / "two.log")
    one.start()
    two.start()
    try:
        a = Api(one)
        secret = a.call("POST", "/v1/tokens", json={"description": "t"}).json()
        headers = {"Authorization": f"Bearer {secret['token']}"}
        assert requests.get(f"{two.url}/v1/apps", headers=headers, timeout=10).status_code == 200
        assert a.call("DELETE", f"/v1/tokens/{secret['id']}").status_code == 200
        statuses = []
        for _ in range(50):
            statuses.append(
                requests.get(f"{two.url}/v1/apps", headers=headers, timeout=10).status_code
            )
            if statuses[-1] == 401:
                break
            time.sleep(0.1)
        assert statuses[-1] == 401, statuses
    finally:
        one.stop()
        two.stop()
