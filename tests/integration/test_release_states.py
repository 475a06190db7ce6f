"""Release statuses in ZooKeeper (framework/state.py), real ZooKeeper: a pending release is
written but not current; it goes live only while it is the newest; a failed or pending one is
never current, never rolled back to; versions are never reused; records written before
statuses existed read as succeeded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from berth.framework.errors import Conflict, Invalid
from berth.framework.model import Artifact
from berth.framework.sealing import Sealer, load_or_create_key
from berth.framework.state import Store
from tests.support.services import ZooKeeper

pytestmark = pytest.mark.zookeeper

OLD = Artifact("image", "berth/app-shop:old")
NEW = Artifact("image", "berth/app-shop:new")
TYPES = {"web": "serve", "release": "migrate"}


@pytest.fixture
def store(zookeeper: ZooKeeper, chroot: str, tmp_path: Path) -> Iterator[Store]:
    s = Store(zookeeper.hosts, chroot, Sealer(load_or_create_key(tmp_path)))
    s.start()
    s.create_app("shop", "test")
    s.deploy("shop", OLD, {"web": "serve"}, "Deploy old", "test")  # v2, live
    yield s
    s.stop()


def test_a_pending_release_goes_live_only_when_finished(store: Store) -> None:
    pending = store.deploy("shop", NEW, TYPES, "Deploy new", "test", pending=True)
    assert (pending.version, pending.status) == (3, "pending")
    app = store.get_app("shop")
    assert (app.release, app.latest, app.newest) == (2, 3, 3)
    assert store.get_release("shop").version == 2  # what runs, what config:get shows
    listed = store.list_releases("shop")
    assert [(r.version, r.status) for r in listed] == [
        (3, "pending"),
        (2, "succeeded"),
        (1, "succeeded"),
    ]
    # the release phase's run is of the pending release
    run = store.create_run(
        "shop",
        ["/bin/sh", "-c", "migrate"],
        attach=False,
        tty=False,
        memory_mb=256,
        cpus=0.25,
        created_by="test",
        secret="s",
        release_version=3,
    )
    assert run.release == 3
    with pytest.raises(Conflict, match="still running its release command"):
        store.rollback("shop", 3, "test")

    live = store.finish_release("shop", 3, True, "")
    assert (live.status, live.status_reason) == ("succeeded", "")
    app = store.get_app("shop")
    assert (app.release, app.latest) == (3, None)
    current = store.get_release("shop")
    assert (current.version, current.status, current.artifact) == (3, "succeeded", NEW)
    # finishing again changes nothing
    assert store.finish_release("shop", 3, False, "late").status == "succeeded"
    assert store.get_app("shop").release == 3


def test_a_failed_release_never_goes_live_and_is_no_rollback_target(store: Store) -> None:
    store.deploy("shop", NEW, TYPES, "Deploy new", "test", pending=True)  # v3
    failed = store.finish_release("shop", 3, False, "release command failed (exit 3)")
    assert (failed.status, failed.status_reason) == ("failed", "release command failed (exit 3)")
    app = store.get_app("shop")
    assert (app.release, app.newest) == (2, 3)
    assert store.get_release("shop").artifact == OLD
    with pytest.raises(Conflict, match=r"never went live \(release command failed \(exit 3\)\)"):
        store.rollback("shop", 3, "test")
    # versions are never reused: the next release is v4, built on the current one (v2)
    v4 = store.set_config("shop", {"A": "1"}, "test")
    assert (v4.version, v4.artifact, v4.status) == (4, OLD, "succeeded")
    app = store.get_app("shop")
    assert (app.release, app.latest) == (4, None)
    # the default rollback target skips the failed v3
    assert store.rollback_target("shop", None).version == 2
    rolled = store.rollback("shop", None, "test")
    assert (rolled.version, rolled.description, rolled.artifact) == (5, "Rollback to v2", OLD)


def test_a_release_superseded_while_its_command_ran_fails(store: Store) -> None:
    store.deploy("shop", NEW, TYPES, "Deploy new", "test", pending=True)  # v3
    changed = store.set_config("shop", {"B": "2"}, "test")  # v4, on v2's artifact, live
    assert (changed.version, changed.artifact) == (4, OLD)
    assert store.get_app("shop").release == 4
    superseded = store.finish_release("shop", 3, True, "")
    assert superseded.status == "failed"
    assert superseded.status_reason == (
        "superseded: v4 (Set B config vars) was made while its release command ran"
    )
    assert store.get_app("shop").release == 4
    assert store.get_release("shop").artifact == OLD


def test_pending_releases_left_behind_are_failed(store: Store) -> None:
    store.deploy("shop", NEW, TYPES, "Deploy new", "test", pending=True)  # v3
    assert store.fail_pending_releases("shop", "abandoned") == [3]
    assert store.get_release("shop", 3).status == "failed"
    assert store.fail_pending_releases("shop", "abandoned") == []
    assert store.get_app("shop").release == 2


def test_release_is_never_scaled(store: Store) -> None:
    store.deploy("shop", NEW, TYPES, "Deploy new", "test")  # live at once (no phase)
    with pytest.raises(Invalid, match="never scaled"):
        store.scale("shop", {"release": 1})
    assert store.get_formation("shop") == {}
    assert store.scale("shop", {"web": 1}) == {"web": 1}


def test_records_without_a_status_read_as_succeeded(
    store: Store, zookeeper: ZooKeeper, chroot: str
) -> None:
    """A release written before statuses existed: its znode has no status fields."""
    raw = KazooClient(hosts=f"{zookeeper.hosts}{chroot}")
    raw.start(10)
    try:
        path = "/apps/shop/releases/0000000002"
        data = json.loads(raw.get(path)[0])
        assert data["status"] == "succeeded"
        del data["status"], data["status_reason"]
        raw.set(path, json.dumps(data).encode())
    finally:
        raw.stop()
        raw.close()
    old = store.get_release("shop", 2)
    assert (old.status, old.status_reason, old.artifact) == ("succeeded", "", OLD)
    assert store.rollback_target("shop", 2).version == 2
