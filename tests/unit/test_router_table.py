"""The route table: which tasks become servers, which hosts go where, and the changes between
two tables (berth.router.table; pure)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from berth.framework.model import Task
from berth.router.table import (
    EMPTY,
    Backend,
    Changes,
    Server,
    Table,
    build,
    diff,
    server_name,
    wildcard_order,
)


def task(app: str, n: int, **fields: Any) -> Task:
    values: dict[str, Any] = {
        "id": f"{app}.web.{n}.v1.{n:08x}",
        "app": app,
        "process": "web",
        "index": n,
        "release": 1,
        "state": "running",
        "hostname": "10.0.0.1",
        "port": 31000 + n,
        "healthy": True,
    }
    values.update(fields)
    return Task(**values)


def server(t: Task, draining: bool = False) -> Server:
    return Server(server_name(t.id), t.hostname, t.port, t.id, draining)


# -- build ------------------------------------------------------------------------------------


def test_every_app_gets_a_backend_and_its_own_host() -> None:
    table = build(["blog", "shop"], [], {}, "apps.example.com")
    assert table.backends == {
        "blog": Backend("blog", "app_blog", ()),
        "shop": Backend("shop", "app_shop", ()),
    }
    assert table.hosts == {"blog.apps.example.com": "blog", "shop.apps.example.com": "shop"}
    assert table.wildcards == {}


def test_only_web_tasks_that_can_serve_become_servers() -> None:
    serving = [
        task("blog", 1),
        task("blog", 2, healthy=None),  # no check reported yet: serves
    ]
    draining = [task("blog", 3, state="killing")]
    left_out = [
        task("blog", 4, healthy=False),
        task("blog", 5, state="starting"),
        task("blog", 6, state="staging", port=0, hostname=""),
        task("blog", 7, state="finished"),
        task("blog", 8, state="killed"),
        task("blog", 9, process="worker"),
        task("blog", 10, port=0),
        task("blog", 11, hostname=""),
        task("blog", 12, state="killing", port=0),
        task("gone", 1),  # an app that does not exist (any more)
    ]
    table = build(["blog"], serving + draining + left_out, {}, "example.com")
    assert table.backends["blog"].servers == tuple(
        sorted(
            [server(t) for t in serving] + [server(t, draining=True) for t in draining],
            key=lambda s: s.name,
        )
    )
    assert set(table.backends) == {"blog"}


def test_servers_are_sorted_by_name_whatever_the_task_order() -> None:
    tasks = [task("blog", n) for n in (3, 1, 2)]
    forward = build(["blog"], tasks, {}, "example.com")
    backward = build(["blog"], list(reversed(tasks)), {}, "example.com")
    names = [s.name for s in forward.backends["blog"].servers]
    assert names == sorted(names)
    assert forward == backward


def test_a_task_listed_twice_is_one_server_and_serving_wins() -> None:
    running = task("blog", 1)
    killing = dataclasses.replace(running, state="killing")
    for tasks in ([running, killing], [killing, running]):
        table = build(["blog"], tasks, {}, "example.com")
        assert table.backends["blog"].servers == (server(running),)


def test_custom_domains_exact_and_wildcard() -> None:
    domains = {
        "www.blog.test": "blog",
        "WWW.Shop.TEST.": "shop",  # case and a final dot do not matter
        "*.blog.test": "blog",
        "*.eu.shop.test": "shop",
        "other.test": "nobody",  # an app that does not exist
        "*.nobody.test": "nobody",
        "bad host.test": "blog",  # not a host name: never reaches a map
        "*.": "blog",
        "a.*.test": "blog",
    }
    table = build(["blog", "shop"], [], domains, "example.com")
    assert table.hosts == {
        "blog.example.com": "blog",
        "shop.example.com": "shop",
        "www.blog.test": "blog",
        "www.shop.test": "shop",
    }
    assert table.wildcards == {".blog.test": "blog", ".eu.shop.test": "shop"}


def test_an_apps_own_host_wins_over_a_custom_domain() -> None:
    table = build(["blog", "shop"], [], {"shop.example.com": "blog"}, "example.com")
    assert table.hosts["shop.example.com"] == "shop"


def test_tables_iterate_in_sorted_order() -> None:
    table = build(
        ["zeta", "alpha", "mid"], [], {"b.test": "alpha", "a.test": "zeta"}, "example.com"
    )
    assert list(table.backends) == ["alpha", "mid", "zeta"]
    assert list(table.hosts) == sorted(table.hosts)


def test_no_base_domain_means_custom_domains_only() -> None:
    table = build(["blog"], [], {"www.blog.test": "blog"}, "")
    assert table.hosts == {"www.blog.test": "blog"}


# -- server names -----------------------------------------------------------------------------


NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def test_a_valid_task_id_is_its_own_server_name() -> None:
    task_id = "blog.web.1.v12.0123456789abcdef"
    assert server_name(task_id) == task_id


@pytest.mark.parametrize(
    "task_id",
    [
        "blog.web.1.v12." + "f" * 64,  # too long
        "blog web:1/v2",  # characters HAProxy names do not take
        "ünïcode.web.1",
        "x" * 300,
    ],
)
def test_other_task_ids_get_safe_stable_names(task_id: str) -> None:
    name = server_name(task_id)
    assert NAME.fullmatch(name)
    assert server_name(task_id) == name  # stable
    assert name != task_id


def test_names_stay_unique_when_ids_differ_only_where_they_are_cut_or_replaced() -> None:
    long_ids = ["blog.web.1.v1." + "a" * 60 + suffix for suffix in ("x", "y", "z")]
    odd_ids = ["blog web 1", "blog/web/1", "blog:web:1", "blog_web_1"]
    names = {server_name(i) for i in long_ids + odd_ids}
    assert len(names) == len(long_ids) + len(odd_ids)


# -- diff -------------------------------------------------------------------------------------


def base(
    *tasks: Task, apps: tuple[str, ...] = ("blog", "shop"), domains: dict[str, str] | None = None
) -> Table:
    return build(apps, tasks, domains or {}, "example.com")


def test_the_same_table_needs_nothing() -> None:
    table = base(task("blog", 1), task("shop", 1), domains={"www.blog.test": "blog"})
    changes = diff(table, table)
    assert changes == Changes()
    assert changes.empty


def test_a_new_task_is_an_added_server() -> None:
    one, two = task("blog", 1), task("blog", 2)
    changes = diff(base(one), base(one, two))
    assert changes == Changes(add=(("app_blog", server(two)),))
    assert not changes.empty


def test_a_task_that_is_gone_is_a_removed_server() -> None:
    one, two = task("blog", 1), task("blog", 2)
    assert diff(base(one, two), base(one)) == Changes(remove=(("app_blog", server(two).name),))


def test_a_task_being_killed_drains_and_then_goes() -> None:
    one, two = task("blog", 1), task("blog", 2)
    killing = dataclasses.replace(one, state="killing")
    assert diff(base(one, two), base(killing, two)) == Changes(
        drain=(("app_blog", server(one).name),)
    )
    assert diff(base(killing, two), base(two)) == Changes(remove=(("app_blog", server(one).name),))


def test_a_draining_server_that_serves_again_is_ready() -> None:
    one = task("blog", 1)
    killing = dataclasses.replace(one, state="killing")
    assert diff(base(killing), base(one)) == Changes(ready=(("app_blog", server(one).name),))


def test_an_unhealthy_task_is_removed_and_comes_back_when_healthy() -> None:
    one = task("blog", 1)
    sick = dataclasses.replace(one, healthy=False)
    assert diff(base(one), base(sick)).remove == (("app_blog", server(one).name),)
    assert diff(base(sick), base(one)).add == (("app_blog", server(one)),)


def test_a_server_that_moved_is_removed_and_added() -> None:
    one = task("blog", 1)
    moved = dataclasses.replace(one, port=one.port + 1)
    changes = diff(base(one), base(moved))
    assert changes.remove == (("app_blog", server(one).name),)
    assert changes.add == (("app_blog", server(moved)),)
    assert not changes.structural


def test_apps_added_or_removed_are_structural() -> None:
    one = task("blog", 1)
    before = base(one, apps=("blog",))
    after = base(one, task("shop", 1), apps=("blog", "shop"))
    added = diff(before, after)
    assert added.structural
    assert added.add == (("app_shop", server(task("shop", 1))),)
    assert added.map_set == (("hosts", "shop.example.com", "app_shop"),)
    removed = diff(after, before)
    assert removed.structural
    assert removed.map_del == (("hosts", "shop.example.com"),)
    assert diff(EMPTY, before).structural


def test_domains_added_moved_and_removed_are_map_changes() -> None:
    before = base(domains={"www.blog.test": "blog", "www.old.test": "blog", "*.blog.test": "blog"})
    after = base(domains={"www.blog.test": "shop", "www.new.test": "shop", "*.shop.test": "shop"})
    changes = diff(before, after)
    assert not changes.structural
    assert changes.map_set == (
        ("hosts", "www.blog.test", "app_shop"),
        ("hosts", "www.new.test", "app_shop"),
        ("wildcards", ".shop.test", "app_shop"),
    )
    assert changes.map_del == (("hosts", "www.old.test"), ("wildcards", ".blog.test"))


def test_a_wildcard_inside_another_needs_a_reload() -> None:
    """HAProxy appends runtime map entries, but the more specific wildcard must match first."""
    outer = base(domains={"*.blog.test": "blog"})
    inner = base(domains={"*.blog.test": "blog", "*.eu.blog.test": "shop"})
    assert diff(outer, inner).structural
    # the other way round (a wildcard around an existing one) is fine at run time
    assert not diff(base(domains={"*.eu.blog.test": "shop"}), inner).structural
    # so is a wildcard next to, not inside, another; and "xblog.test" is not inside "blog.test"
    beside = base(domains={"*.blog.test": "blog", "*.xblog.test": "shop"})
    assert not diff(outer, beside).structural


def test_wildcards_are_matched_most_specific_first() -> None:
    assert wildcard_order([".test", ".b.test", ".a.b.test", ".c.test"]) == [
        ".a.b.test",
        ".b.test",
        ".c.test",
        ".test",
    ]
