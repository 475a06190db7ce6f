"""The API end to end: a real `berth api` process on a real ZooKeeper."""

from __future__ import annotations

import time
from typing import Any

from berth.framework.model import Task
from berth.framework.sealing import Sealer, load_or_create_key
from berth.framework.state import Store
from tests.conftest import Api
from tests.support.services import ZooKeeper


def error(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    assert message
    return message


def test_apps_lifecycle(api: Api) -> None:
    created = api.call("POST", "/v1/apps", json={"name": "shop"})
    assert created.status_code == 201
    assert created.json()["web_url"] == "http://shop.localhost"
    assert "already exists" in error(
        api.call("POST", "/v1/apps", json={"name": "shop"}), 409, "conflict"
    )
    random = api.call("POST", "/v1/apps").json()["name"]
    names = [a["name"] for a in api.call("GET", "/v1/apps").json()]
    assert sorted(names) == sorted(["shop", random])
    info = api.call("GET", "/v1/apps/shop").json()
    assert info["release"] == 1
    assert info["formation"] == {}
    api.call("PATCH", "/v1/apps/shop/config", json={"OLD": "1"})
    assert api.call("GET", "/v1/apps/shop/config").json() == {"OLD": "1"}
    assert api.call("DELETE", "/v1/apps/shop").status_code == 200
    error(api.call("GET", "/v1/apps/shop"), 404, "not_found")
    assert [a["name"] for a in api.call("GET", "/v1/apps").json()] == [random]
    # the name is free again, and the new app starts from v1
    assert api.call("POST", "/v1/apps", json={"name": "shop"}).json()["release"] == 1
    assert api.call("GET", "/v1/apps/shop/config").json() == {}
    api.call("PATCH", "/v1/apps/shop/config", json={"NEW": "1"})
    assert api.call("GET", "/v1/apps/shop/config").json() == {"NEW": "1"}


def test_config_changes_make_releases_and_rollback_restores_config(api: Api) -> None:
    api.call("POST", "/v1/apps", json={"name": "blog"})
    r = api.call("PATCH", "/v1/apps/blog/config", json={"DATABASE_URL": "postgres://a", "X": "1"})
    assert r.status_code == 200
    assert r.json()["release"]["version"] == 2
    api.call("PATCH", "/v1/apps/blog/config", json={"X": None, "Y": "2"})
    assert api.call("GET", "/v1/apps/blog/config").json() == {
        "DATABASE_URL": "postgres://a",
        "Y": "2",
    }
    releases = api.call("GET", "/v1/apps/blog/releases").json()
    assert [r["version"] for r in releases] == [3, 2, 1]
    assert [r["description"] for r in releases] == [
        "Set Y and remove X config vars",
        "Set DATABASE_URL, X config vars",
        "Initial release",
    ]
    assert all(r["created_by"].startswith("admin (") for r in releases)
    assert "config" not in releases[0]  # listings carry keys, not values
    assert releases[0]["config_keys"] == ["DATABASE_URL", "Y"]

    rolled = api.call("POST", "/v1/apps/blog/rollback", json={"version": "v2"})
    assert rolled.status_code == 201
    assert rolled.json()["description"] == "Rollback to v2"
    assert rolled.json()["version"] == 4
    assert api.call("GET", "/v1/apps/blog/config").json() == {
        "DATABASE_URL": "postgres://a",
        "X": "1",
    }
    # no version: back to the previous release (v3's config)
    assert api.call("POST", "/v1/apps/blog/rollback").json()["description"] == "Rollback to v3"
    assert api.call("GET", "/v1/apps/blog/config").json() == {
        "DATABASE_URL": "postgres://a",
        "Y": "2",
    }
    v4 = api.call("GET", "/v1/apps/blog/releases/v4").json()
    assert v4["config"] == {"DATABASE_URL": "postgres://a", "X": "1"}
    error(api.call("GET", "/v1/apps/blog/releases/v99"), 404, "not_found")
    error(api.call("POST", "/v1/apps/blog/rollback", json={"version": 99}), 404, "not_found")
    error(api.call("GET", "/v1/apps/blog/releases/latest"), 422, "invalid")


def test_rollback_needs_an_earlier_release(api: Api) -> None:
    api.call("POST", "/v1/apps", json={"name": "fresh"})
    assert "no earlier release" in error(
        api.call("POST", "/v1/apps/fresh/rollback"), 409, "conflict"
    )


def test_formation_is_stored(api: Api) -> None:
    api.call("POST", "/v1/apps", json={"name": "svc"})
    assert api.call("PATCH", "/v1/apps/svc/formation", json={"web": 2}).json() == {"web": 2}
    assert api.call("PATCH", "/v1/apps/svc/formation", json={"worker": 1}).json() == {
        "web": 2,
        "worker": 1,
    }
    assert api.call("GET", "/v1/apps/svc").json()["formation"] == {"web": 2, "worker": 1}
    error(api.call("PATCH", "/v1/apps/svc/formation", json={"web": -1}), 422, "invalid")
    error(api.call("PATCH", "/v1/apps/svc/formation", json={"web": "many"}), 422, "invalid")
    assert api.call("GET", "/v1/apps/svc/formation").json() == {"web": 2, "worker": 1}


def test_bad_input_gets_a_clear_error_and_changes_nothing(api: Api) -> None:
    api.call("POST", "/v1/apps", json={"name": "keep"})
    api.call("PATCH", "/v1/apps/keep/config", json={"A": "1"})

    def snapshot() -> Any:
        return (
            api.call("GET", "/v1/apps").json(),
            api.call("GET", "/v1/apps/keep/releases").json(),
            api.call("GET", "/v1/apps/keep/config").json(),
        )

    before = snapshot()
    for name in ("Bad", "a", "1abc", "a_b", "x" * 31, 42):
        assert "app name" in error(
            api.call("POST", "/v1/apps", json={"name": name}), 422, "invalid"
        )
    assert "config key" in error(
        api.call("PATCH", "/v1/apps/keep/config", json={"9LIVES": "x"}), 422, "invalid"
    )
    message = error(
        api.call("PATCH", "/v1/apps/keep/config", json={"BIG": "v" * (32 * 1024 + 1)}),
        422,
        "invalid",
    )
    assert "32768" in message
    assert "vvvv" not in message
    error(api.call("PATCH", "/v1/apps/keep/config", json={"N": 5}), 422, "invalid")
    error(api.call("PATCH", "/v1/apps/keep/config", json={}), 422, "invalid")
    assert "not valid JSON" in error(
        api.call(
            "PATCH",
            "/v1/apps/keep/config",
            data=b"{nope",
            headers={"Content-Type": "application/json"},
        ),
        400,
        "bad_request",
    )
    error(api.call("PATCH", "/v1/apps/keep/config", json=["A"]), 400, "bad_request")
    error(api.call("PATCH", "/v1/apps/keep/config"), 400, "bad_request")
    assert "no app named ghost" in error(
        api.call("PATCH", "/v1/apps/ghost/config", json={"A": "1"}), 404, "not_found"
    )
    error(api.call("DELETE", "/v1/apps/ghost"), 404, "not_found")
    error(api.call("GET", "/v1/apps/ghost/releases"), 404, "not_found")
    error(api.call("PATCH", "/v1/apps/ghost/formation", json={"web": 1}), 404, "not_found")
    error(api.call("POST", "/v1/apps", data=b"x" * (1024 * 1024 + 1)), 413, "too_large")
    error(api.call("GET", "/v1/nothing-here"), 404, "not_found")
    error(api.call("PUT", "/v1/apps"), 405, "method_not_allowed")
    assert snapshot() == before


def test_tokens_create_use_revoke(api: Api) -> None:
    created = api.call("POST", "/v1/tokens", json={"description": "deploy bot"})
    assert created.status_code == 201
    secret = created.json()["token"]
    token_id = created.json()["id"]
    assert secret.startswith(f"berth_{token_id}_")
    headers = {"Authorization": f"Bearer {secret}"}
    assert api.session.get(f"{api.url}/v1/apps", headers=headers, timeout=10).status_code == 200
    listed = api.call("GET", "/v1/tokens").json()
    assert {t["description"] for t in listed} == {"admin", "deploy bot"}
    assert secret not in str(listed)
    assert all("digest" not in t for t in listed)
    # releases record who made them
    api.session.post(f"{api.url}/v1/apps", json={"name": "bot-app"}, headers=headers, timeout=10)
    release = api.call("GET", "/v1/apps/bot-app/releases/v1").json()
    assert release["created_by"] == f"deploy bot ({token_id})"

    assert api.call("DELETE", f"/v1/tokens/{token_id}").status_code == 200
    r = api.session.get(f"{api.url}/v1/apps", headers=headers, timeout=10)
    assert r.status_code == 401
    assert "revoked" in r.json()["error"]["message"]
    error(api.call("DELETE", f"/v1/tokens/{token_id}"), 404, "not_found")
    admin_id = api.call("GET", "/v1/tokens").json()[0]["id"]
    assert "last token" in error(api.call("DELETE", f"/v1/tokens/{admin_id}"), 409, "conflict")


def test_healthz_is_public_and_basic_auth_carries_the_token(api: Api) -> None:
    assert api.session.get(f"{api.url}/healthz", headers={"Authorization": ""}).status_code == 200
    r = api.session.get(
        f"{api.url}/v1/apps", headers={"Authorization": ""}, auth=("git", api.token)
    )
    assert r.status_code == 200
    r = api.session.get(f"{api.url}/v1/apps", headers={"Authorization": ""}, auth=("git", "x"))
    assert r.status_code == 401


def test_image_deploy_and_ps(api: Api, zookeeper: ZooKeeper, chroot: str) -> None:
    api.call("POST", "/v1/apps", json={"name": "img"})
    for bad in ("UPPER:case", "a b", "", "x" * 300, 5):
        error(api.call("POST", "/v1/apps/img/deploy", json={"image": bad}), 422, "invalid")
    error(
        api.call(
            "POST", "/v1/apps/img/deploy", json={"image": "img:v1", "process_types": {"Web": ""}}
        ),
        422,
        "invalid",
    )
    assert api.call("GET", "/v1/apps/img").json()["release"] == 1  # nothing written

    deployed = api.call("POST", "/v1/apps/img/deploy", json={"image": "registry:5000/img:v1"})
    assert deployed.status_code == 201
    assert deployed.json()["description"] == "Deploy registry:5000/img:v1"
    assert deployed.json()["artifact"] == {"kind": "image", "ref": "registry:5000/img:v1"}
    assert deployed.json()["process_types"] == {"web": ""}
    assert api.call("GET", "/v1/apps/img/formation").json() == {"web": 1}
    assert "no process type 'worker'" in error(
        api.call("PATCH", "/v1/apps/img/formation", json={"worker": 1}), 422, "invalid"
    )

    # the framework records tasks in ZooKeeper; ps shows them
    sealer_dir = api.server.data_dir
    store = Store(zookeeper.hosts, chroot, Sealer(load_or_create_key(sealer_dir)))
    store.start()
    try:
        now = time.time()
        store.put_task(
            Task(
                "img.web.1.v2.aa",
                "img",
                "web",
                1,
                2,
                "running",
                hostname="h",
                port=31000,
                healthy=True,
                started_at=now - 65,
            )
        )
        store.put_task(
            Task(
                "img.web.2.v2.bb",
                "img",
                "web",
                2,
                2,
                "failed",
                exit_code=3,
                message="crashed (exit 3); restarting in 10s",
            )
        )
        store.put_task(Task("imgx.web.1.v1.cc", "imgx", "web", 1, 1, "running"))
    finally:
        store.stop()
    ps = api.call("GET", "/v1/apps/img/ps").json()
    assert ps["formation"] == {"web": 1}
    assert [(t["name"], t["state"]) for t in ps["tasks"]] == [
        ("web.1", "running"),
        ("web.2", "failed"),
    ]
    assert ps["tasks"][0]["uptime"] >= 65
    assert ps["tasks"][1]["uptime"] is None
    assert ps["tasks"][1]["exit_code"] == 3
    error(api.call("GET", "/v1/apps/ghost/ps"), 404, "not_found")


def test_limits_stop_and_restart(api: Api, zookeeper: ZooKeeper, chroot: str) -> None:
    api.call("POST", "/v1/apps", json={"name": "ops"})
    api.call("POST", "/v1/apps/ops/deploy", json={"image": "ops:v1"})
    assert api.call("GET", "/v1/apps/ops/limits").json() == {
        "web": {"memory_mb": 256, "cpus": 0.25}
    }
    changed = api.call("PATCH", "/v1/apps/ops/limits", json={"web": {"memory": "1g", "cpu": 1}})
    assert changed.json() == {"web": {"memory_mb": 1024, "cpus": 1.0}}
    for bad in ({"web": {"memory": "huge"}}, {"worker": {"cpu": 1}}, {"web": {"cpu": -1}}):
        error(api.call("PATCH", "/v1/apps/ops/limits", json=bad), 422, "invalid")
    assert api.call("GET", "/v1/apps/ops/limits").json()["web"]["memory_mb"] == 1024

    store = Store(zookeeper.hosts, chroot, Sealer(load_or_create_key(api.server.data_dir)))
    store.start()
    try:
        store.put_task(Task("ops.web.1.v2.aa", "ops", "web", 1, 2, "running"))
        stopped = api.call("POST", "/v1/apps/ops/ps/stop", json={"task": "web.1"})
        assert stopped.json() == {"stopping": ["ops.web.1.v2.aa"]}
        assert store.stop_requests() == ["ops.web.1.v2.aa"]
        assert "no running process web.7" in error(
            api.call("POST", "/v1/apps/ops/ps/stop", json={"task": "web.7"}), 404, "not_found"
        )
        before = time.time()
        assert api.call("POST", "/v1/apps/ops/ps/restart").json() == {"restarting": ["web"]}
        assert store.get_restarts("ops")["web"] >= before
        error(api.call("POST", "/v1/apps/ops/ps/restart", json={"target": "Bad.1"}), 422, "invalid")
    finally:
        store.stop()


def test_checks_set_show_and_reset(api: Api) -> None:
    api.call("POST", "/v1/apps", json={"name": "chk"})
    api.call(
        "POST",
        "/v1/apps/chk/deploy",
        json={"image": "chk:v1", "process_types": {"web": "serve", "worker": "work"}},
    )
    assert api.call("GET", "/v1/apps/chk/checks").json() == {
        "web": {"type": "tcp", "startup": 60, "default": True},
        "worker": {"type": "none", "startup": 60, "default": True},
    }
    changed = api.call("PATCH", "/v1/apps/chk/checks", json={"web": {"path": "/up"}})
    assert changed.status_code == 200, changed.text
    assert changed.json()["web"] == {"type": "http", "path": "/up", "startup": 60, "default": False}
    api.call("PATCH", "/v1/apps/chk/checks", json={"worker": {"type": "tcp", "startup": "90s"}})
    for bad, words in (
        ({"web": {"path": "up"}}, "must start with /"),
        ({"web": {"path": "/a b"}}, "without spaces"),
        ({"web": {"path": "/" + "a" * 300}}, "over 256"),
        ({"web": {"type": "udp"}}, "not http, tcp or none"),
        ({"web": {"type": "tcp", "path": "/up"}}, "needs type http"),
        ({"web": {"startup": 0}}, "1 to 900 seconds"),
        ({"web": {"startup": "soon"}}, "whole seconds"),
        ({"web": {"interval": 5}}, "takes type"),
        ({"clock": {"path": "/up"}}, "no process type 'clock'"),
        ({}, "non-empty object"),
    ):
        assert words in error(api.call("PATCH", "/v1/apps/chk/checks", json=bad), 422, "invalid")
    stored = api.call("GET", "/v1/apps/chk/checks").json()
    assert stored["web"]["path"] == "/up"  # nothing above changed anything
    assert stored["worker"] == {"type": "tcp", "startup": 90, "default": False}
    reset = api.call("PATCH", "/v1/apps/chk/checks", json={"web": None}).json()
    assert reset["web"] == {"type": "tcp", "startup": 60, "default": True}
    error(api.call("GET", "/v1/apps/nope/checks"), 404, "not_found")


def test_routing_settings(api: Api) -> None:
    api.call("POST", "/v1/apps", json={"name": "rtg"})
    assert api.call("GET", "/v1/apps/rtg/routing").json() == {"timeout": None, "https_only": False}
    changed = api.call("PATCH", "/v1/apps/rtg/routing", json={"timeout": "90s", "https_only": "on"})
    assert changed.json() == {"timeout": 90, "https_only": True}, changed.text
    api.call("PATCH", "/v1/apps/rtg/config", json={"A": "1"})  # a release keeps the settings
    for bad, words in (
        ({"timeout": 0}, "1 to 3600 seconds"),
        ({"timeout": "soon"}, "whole seconds"),
        ({"timeout": True}, "whole seconds"),
        ({"https_only": "maybe"}, "on or off"),
        ({"sticky": True}, "unknown routing setting 'sticky'"),
        ({}, "non-empty object"),
    ):
        assert words in error(api.call("PATCH", "/v1/apps/rtg/routing", json=bad), 422, "invalid")
    assert api.call("GET", "/v1/apps/rtg/routing").json() == {"timeout": 90, "https_only": True}
    reset = api.call("PATCH", "/v1/apps/rtg/routing", json={"timeout": None, "https_only": False})
    assert reset.json() == {"timeout": None, "https_only": False}
    error(api.call("PATCH", "/v1/apps/nope/routing", json={"timeout": 5}), 404, "not_found")
