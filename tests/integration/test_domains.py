"""Custom domains end to end: a real `berth api` on a real ZooKeeper, the Store the router
reads, and the CLI. A domain belongs to at most one app, refused input writes nothing, and
destroying an app frees its domains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner, Result
from kazoo.client import KazooClient

from berth.cli.main import cli
from berth.framework.errors import Conflict, Invalid, NotFound
from berth.framework.model import MAX_DOMAINS_PER_APP
from berth.framework.state import Store
from tests.conftest import Api, need
from tests.support.services import BerthApi, ZooKeeper, zookeeper_available


def error(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    message: str = body["error"]["message"]
    assert message
    return message


@pytest.fixture
def store(api: Api, zookeeper: ZooKeeper, chroot: str) -> Iterator[Store]:
    """The router's view: a Store without a config key, on the API's chroot."""
    found = Store(zookeeper.hosts, chroot, None)
    found.start()
    yield found
    found.stop()


def hostnames(api: Api, app: str) -> list[str]:
    response = api.call("GET", f"/v1/apps/{app}/domains")
    assert response.status_code == 200, response.text
    return [d["hostname"] for d in response.json()]


def test_add_list_remove(api: Api, store: Store) -> None:
    api.call("POST", "/v1/apps", json={"name": "shop"})
    assert api.call("GET", "/v1/apps/shop/domains").json() == []

    added = api.call("POST", "/v1/apps/shop/domains", json={"hostname": "WWW.Shop.example."})
    assert added.status_code == 201, added.text
    body = added.json()
    assert body["hostname"] == "www.shop.example"
    assert body["kind"] == "custom"
    assert body["app"] == "shop"
    assert body["created_at"].endswith("Z")

    wild = api.call("POST", "/v1/apps/shop/domains", json={"hostname": "*.shop.example"})
    assert wild.status_code == 201, wild.text
    assert wild.json()["kind"] == "wildcard"

    listed = api.call("GET", "/v1/apps/shop/domains").json()
    assert [(d["hostname"], d["kind"]) for d in listed] == [
        ("*.shop.example", "wildcard"),
        ("www.shop.example", "custom"),
    ]
    assert [d.hostname for d in store.domains("shop")] == ["*.shop.example", "www.shop.example"]
    assert store.all_domains() == {"*.shop.example": "shop", "www.shop.example": "shop"}

    # the same app again: a clear 409, nothing changes
    assert "already added to shop" in error(
        api.call("POST", "/v1/apps/shop/domains", json={"hostname": "www.shop.example"}),
        409,
        "conflict",
    )
    assert len(hostnames(api, "shop")) == 2

    removed = api.call("DELETE", "/v1/apps/shop/domains/WWW.shop.example")
    assert removed.status_code == 200, removed.text
    assert removed.json() == {"removed": "www.shop.example"}
    assert hostnames(api, "shop") == ["*.shop.example"]
    assert "shop has no domain www.shop.example" in error(
        api.call("DELETE", "/v1/apps/shop/domains/www.shop.example"), 404, "not_found"
    )
    # a wildcard in a path, escaped or not
    assert api.call("DELETE", "/v1/apps/shop/domains/%2A.shop.example").status_code == 200
    assert hostnames(api, "shop") == []
    assert store.all_domains() == {}
    # and it can be added again
    assert (
        api.call("POST", "/v1/apps/shop/domains", json={"hostname": "www.shop.example"}).status_code
        == 201
    )


def test_two_apps_cannot_share_a_domain(api: Api, store: Store) -> None:
    for name in ("one", "other"):
        api.call("POST", "/v1/apps", json={"name": name})
    api.call("POST", "/v1/apps/other/domains", json={"hostname": "www.x.com"})
    before = store.all_domains()
    for hostname in ("www.x.com", "WWW.X.COM", "www.x.com."):
        message = error(
            api.call("POST", "/v1/apps/one/domains", json={"hostname": hostname}),
            409,
            "conflict",
        )
        assert message == "domain www.x.com is already used by app other"
    assert store.all_domains() == before == {"www.x.com": "other"}
    assert hostnames(api, "one") == []
    # an exact name and a wildcard over it are different domains
    assert api.call("POST", "/v1/apps/one/domains", json={"hostname": "*.x.com"}).status_code == 201
    assert store.all_domains() == {"*.x.com": "one", "www.x.com": "other"}


def test_removing_another_apps_domain_is_not_found(api: Api, store: Store) -> None:
    for name in ("owner", "thief"):
        api.call("POST", "/v1/apps", json={"name": name})
    api.call("POST", "/v1/apps/owner/domains", json={"hostname": "api.owner.io"})
    assert "thief has no domain api.owner.io" in error(
        api.call("DELETE", "/v1/apps/thief/domains/api.owner.io"), 404, "not_found"
    )
    with pytest.raises(NotFound):
        store.remove_domain("thief", "api.owner.io")
    assert store.all_domains() == {"api.owner.io": "owner"}
    assert hostnames(api, "owner") == ["api.owner.io"]


def test_bad_input_gets_a_clear_error_and_writes_nothing(
    api: Api, store: Store, zookeeper: ZooKeeper, chroot: str
) -> None:
    api.call("POST", "/v1/apps", json={"name": "keep"})
    api.call("POST", "/v1/apps/keep/domains", json={"hostname": "keep.example.org"})

    def snapshot() -> Any:
        return store.all_domains(), api.call("GET", "/v1/apps/keep/domains").json()

    before = snapshot()
    path = "/v1/apps/keep/domains"
    json_headers = {"Content-Type": "application/json"}
    assert "not valid JSON" in error(
        api.call("POST", path, data=b"{nope", headers=json_headers), 400, "bad_request"
    )
    error(api.call("POST", path, json=["www.example.com"]), 400, "bad_request")
    error(api.call("POST", path), 400, "bad_request")
    assert "hostname" in error(api.call("POST", path, json={"host": "a.com"}), 422, "invalid")
    assert "must be a string" in error(
        api.call("POST", path, json={"hostname": 42}), 422, "invalid"
    )
    for hostname, message in [
        ("https://www.example.com", "without a scheme"),
        ("www.example.com:443", "without a port"),
        ("www.example.com/shop", "without a path"),
        ("a*.example.com", "whole leftmost label"),
        ("*.com", "two labels after the *"),
        ("*", "two labels after the *"),
        ("localhost", "at least two labels"),
        ("bad_name.example.com", "not allowed"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("10.0.0.1", "not an IP"),
        ("a" * 64 + ".example.com", "limit is 63"),
        (".".join(["a" * 63] * 4), "limit is 253"),
        # this Berth's own domain (`--domain`, localhost here): each app has APP.localhost
        ("keep.localhost", "own domain localhost"),
        ("*.apps.localhost", "own domain localhost"),
    ]:
        got = error(api.call("POST", path, json={"hostname": hostname}), 422, "invalid")
        assert message in got, (hostname, got)
    error(api.call("POST", path, data=b"x" * (1024 * 1024 + 1)), 413, "too_large")
    error(api.call("DELETE", f"{path}/not_a_domain.com"), 422, "invalid")

    # unknown app: 404 for every verb, and nothing is created under it
    for method, url, body in [
        ("GET", "/v1/apps/ghost/domains", None),
        ("POST", "/v1/apps/ghost/domains", {"hostname": "www.ghost.com"}),
        ("DELETE", "/v1/apps/ghost/domains/www.ghost.com", None),
        ("DELETE", "/v1/apps/ghost/domains/keep.example.org", None),
    ]:
        assert "no app named ghost" in error(api.call(method, url, json=body), 404, "not_found")

    assert snapshot() == before
    # and under the chroot itself: no index for the unknown app, one record per domain
    zk = KazooClient(hosts=f"{zookeeper.hosts}{chroot}")
    zk.start()
    try:
        assert zk.get_children("/domains") == ["keep.example.org"]
        assert zk.exists("/apps/ghost") is None
        record = json.loads(zk.get("/domains/keep.example.org")[0])
        assert record["app"] == "keep"
        assert set(record) == {"app", "created_at", "op"}
        assert zk.get_children("/apps/keep/domains") == ["keep.example.org"]
    finally:
        zk.stop()
        zk.close()


def test_every_domain_route_needs_a_token(api: Api, store: Store) -> None:
    api.call("POST", "/v1/apps", json={"name": "locked"})
    api.call("POST", "/v1/apps/locked/domains", json={"hostname": "in.locked.dev"})
    for method, path, body in [
        ("GET", "/v1/apps/locked/domains", None),
        ("POST", "/v1/apps/locked/domains", {"hostname": "new.locked.dev"}),
        ("DELETE", "/v1/apps/locked/domains/in.locked.dev", None),
    ]:
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer nope"}):
            response = api.session.request(
                method, api.url + path, json=body, headers=headers, timeout=10
            )
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"]["code"] == "unauthorized"
    assert store.all_domains() == {"in.locked.dev": "locked"}


def test_destroying_an_app_frees_its_domains(api: Api, store: Store) -> None:
    for name in ("old", "new"):
        api.call("POST", "/v1/apps", json={"name": name})
    for hostname in ("old.example.net", "*.old.example.net"):
        api.call("POST", "/v1/apps/old/domains", json={"hostname": hostname})
    api.call("POST", "/v1/apps/new/domains", json={"hostname": "new.example.net"})
    assert api.call("DELETE", "/v1/apps/old").status_code == 200
    assert store.all_domains() == {"new.example.net": "new"}
    for hostname in ("old.example.net", "*.old.example.net"):
        added = api.call("POST", "/v1/apps/new/domains", json={"hostname": hostname})
        assert added.status_code == 201, added.text
    # an app made again under the old name starts with no domains
    api.call("POST", "/v1/apps", json={"name": "old"})
    assert hostnames(api, "old") == []
    # an app that never had a domain is destroyed as before
    api.call("POST", "/v1/apps", json={"name": "plain"})
    assert api.call("DELETE", "/v1/apps/plain").status_code == 200
    assert store.all_domains() == {
        "*.old.example.net": "new",
        "new.example.net": "new",
        "old.example.net": "new",
    }


def test_an_app_has_at_most_a_hundred_domains_even_when_racing(api: Api, store: Store) -> None:
    api.call("POST", "/v1/apps", json={"name": "many"})
    for n in range(MAX_DOMAINS_PER_APP - 5):
        store.add_domain("many", f"d{n}.many.test")
    outcomes: list[str] = []

    def add(n: int) -> None:
        try:
            store.add_domain("many", f"race{n}.many.test")
            outcomes.append("added")
        except Invalid:
            outcomes.append("refused")

    threads = [threading.Thread(target=add, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["added"] * 5 + ["refused"] * 7
    assert len(store.domains("many")) == MAX_DOMAINS_PER_APP
    message = error(
        api.call("POST", "/v1/apps/many/domains", json={"hostname": "one-more.many.test"}),
        422,
        "invalid",
    )
    assert f"the limit is {MAX_DOMAINS_PER_APP}" in message
    assert len(store.all_domains()) == MAX_DOMAINS_PER_APP


def test_racing_apps_get_a_domain_once(api: Api, store: Store) -> None:
    names = [f"racer{n}" for n in range(6)]
    for name in names:
        api.call("POST", "/v1/apps", json={"name": name})
    winners: list[str] = []
    losers: list[str] = []

    def claim(name: str) -> None:
        try:
            store.add_domain(name, "contested.example.com")
            winners.append(name)
        except Conflict as exc:
            losers.append(exc.message)

    threads = [threading.Thread(target=claim, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert len(losers) == len(names) - 1
    assert all(m.endswith(f"already used by app {winners[0]}") for m in losers)
    assert store.all_domains() == {"contested.example.com": winners[0]}


def test_destroy_racing_adds_leaves_no_orphan_domain(api: Api, store: Store) -> None:
    api.call("POST", "/v1/apps", json={"name": "doomed"})
    stop = threading.Event()

    def keep_adding() -> None:
        n = 0
        while not stop.is_set():
            try:
                store.add_domain("doomed", f"x{n}.doomed.test")
            except NotFound:
                return
            n += 1

    adder = threading.Thread(target=keep_adding)
    adder.start()
    try:
        threading.Event().wait(0.2)
        store.destroy_app("doomed")
    finally:
        stop.set()
        adder.join(30)
    assert store.all_domains() == {}


def test_the_router_is_told_when_domains_change(api: Api, store: Store) -> None:
    api.call("POST", "/v1/apps", json={"name": "watched"})
    changed = threading.Event()
    assert store.all_domains(watch=lambda event: changed.set()) == {}
    api.call("POST", "/v1/apps/watched/domains", json={"hostname": "w.watched.test"})
    assert changed.wait(10)
    changed.clear()
    assert store.all_domains(watch=lambda event: changed.set()) == {"w.watched.test": "watched"}
    api.call("DELETE", "/v1/apps/watched")
    assert changed.wait(10)
    assert store.all_domains() == {}


@pytest.mark.zookeeper
@pytest.mark.slow
def test_zookeeper_killed_mid_add_loses_no_acknowledged_domain(tmp_path: Path) -> None:
    """Adds retried through an outage: each ends added exactly once, and a retry of an add
    whose answer was lost says "already added" to the same app, never "used by another"."""
    need(zookeeper_available(), "ZooKeeper (Debian package zookeeper)")
    zk = ZooKeeper(tmp_path / "zk")
    zk.start()
    server = BerthApi(zk.hosts, "/berth", tmp_path / "data", tmp_path / "api.log")
    server.start()
    api = Api(server)
    try:
        acknowledged: list[str] = []
        statuses: list[int] = []
        stop = threading.Event()

        def writer(app: str) -> None:
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {api.token}"
            for i in range(MAX_DOMAINS_PER_APP):
                hostname = f"d{i}.{app}.test"
                while True:  # retry this one until it is settled
                    r = session.post(
                        f"{api.url}/v1/apps/{app}/domains", json={"hostname": hostname}, timeout=30
                    )
                    statuses.append(r.status_code)
                    if r.status_code == 201 or (r.status_code == 409 and "already added" in r.text):
                        acknowledged.append(hostname)
                        break
                    assert r.status_code == 503, r.text
                    time.sleep(0.2)
                if stop.is_set():
                    return
                time.sleep(0.03)

        apps = [f"w{n}" for n in range(3)]
        for app in apps:
            api.call("POST", "/v1/apps", json={"name": app})
        threads = [threading.Thread(target=writer, args=(app,)) for app in apps]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        zk.kill()
        time.sleep(7)  # longer than a request waits for ZooKeeper (5 s): some answer 503
        zk.start()
        server.wait_healthy(30)
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(60)

        assert 503 in statuses
        assert 500 not in statuses
        store = Store(zk.hosts, "/berth", None)
        store.start()
        try:
            mapping = store.all_domains()
            assert sorted(mapping) == sorted(acknowledged)
            assert all(mapping[h] == h.split(".")[1] for h in acknowledged)
            for app in apps:
                assert {d.hostname for d in store.domains(app)} == {
                    h for h in acknowledged if h.split(".")[1] == app
                }
        finally:
            store.stop()
    finally:
        server.stop()
        zk.stop()


# -- the CLI ---------------------------------------------------------------------------------


class Berth:
    def __init__(self, api: Api, home: Path) -> None:
        self.env = {
            "XDG_CONFIG_HOME": str(home),
            "BERTH_URL": api.url,
            "BERTH_TOKEN": api.token,
            "BERTH_APP": "",
        }
        self.runner = CliRunner()

    def __call__(self, *args: str, ok: bool = True) -> Result:
        result = self.runner.invoke(cli, list(args), env=self.env)
        if ok:
            assert result.exit_code == 0, (args, result.output, result.exception)
        else:
            # one line on stderr, exit 1, no traceback
            assert result.exit_code == 1, (args, result.output, result.exception)
            assert result.stdout == ""
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert "Traceback" not in result.output
        return result


@pytest.fixture
def berth(api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Berth:
    monkeypatch.chdir(tmp_path)
    return Berth(api, tmp_path / "config")


def test_cli_domains(berth: Berth, api: Api, store: Store) -> None:
    berth("apps:create", "site")
    berth("apps:create", "blog")
    assert berth("domains", "-a", "site").stdout.startswith("No custom domains for site")
    assert berth("domains:add", "WWW.site.dev", "-a", "site").stdout == (
        "Added www.site.dev to site\n"
    )
    added = json.loads(berth("domains:add", "*.site.dev", "-a", "site", "--json").stdout)
    assert added["kind"] == "wildcard"
    table = berth("domains", "-a", "site").stdout.splitlines()
    assert table[0] == "=== site custom domains"
    assert table[1].split() == ["HOSTNAME", "KIND", "CREATED"]
    assert table[3].split()[:2] == ["*.site.dev", "wildcard"]
    assert table[4].split()[:2] == ["www.site.dev", "custom"]
    listed = json.loads(berth("domains", "-a", "site", "--json").stdout)
    assert [d["hostname"] for d in listed] == ["*.site.dev", "www.site.dev"]

    for args, message in [
        (["domains:add", "www.site.dev", "-a", "blog"], "already used by app site"),
        (["domains:add", "www.site.dev", "-a", "site"], "already added to site"),
        (["domains:add", "https://blog.dev/", "-a", "blog"], "without a scheme"),
        (["domains:add", "a*.blog.dev", "-a", "blog"], "whole leftmost label"),
        (["domains:add", "site.localhost", "-a", "blog"], "own domain localhost"),
        (["domains:add", "blog.dev", "-a", "ghost"], "no app named ghost"),
        (["domains", "-a", "ghost"], "no app named ghost"),
        (["domains:remove", "www.site.dev", "-a", "blog"], "blog has no domain www.site.dev"),
        (["domains:remove", "blog.dev/x", "-a", "blog"], "is not a hostname"),
        (["domains:remove", "bad_name.dev", "-a", "blog"], "not allowed"),
    ]:
        result = berth(*args, ok=False)
        assert message in result.stderr, (args, result.stderr)
    assert store.all_domains() == {"*.site.dev": "site", "www.site.dev": "site"}

    assert berth("domains:remove", "*.site.dev", "-a", "site").stdout == (
        "Removed *.site.dev from site\n"
    )
    assert berth("domains:remove", "www.site.dev", "-a", "site").stdout == (
        "Removed www.site.dev from site\n"
    )
    assert store.all_domains() == {}
    assert "no app given" in berth("domains", ok=False).stderr


def test_the_installed_command_reports_a_taken_domain(api: Api) -> None:
    for name in ("first", "second"):
        api.call("POST", "/v1/apps", json={"name": name})
    api.call("POST", "/v1/apps/first/domains", json={"hostname": "taken.example.com"})
    env = {**os.environ, "BERTH_URL": api.url, "BERTH_TOKEN": api.token}
    done = subprocess.run(
        [sys.executable, "-m", "berth.cli", "domains:add", "taken.example.com", "-a", "second"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == "Error: domain taken.example.com is already used by app first"
