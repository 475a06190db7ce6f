"""Deploy started/finished lines (framework/deploylog.py, pure), step by step through a
rollout the way plan.py runs one: new before old, slot by slot."""

from __future__ import annotations

from berth.framework.deploylog import Wanted, progress
from berth.framework.model import Task


def task(
    process: str,
    index: int,
    release: int,
    state: str = "running",
    healthy: bool | None = True,
    app: str = "shop",
) -> Task:
    return Task(f"{app}.{process}.{index}.v{release}", app, process, index, release, state,
                healthy=healthy)  # fmt: skip


WANT = Wanted("shop", 3, {"web": 2, "worker": 1})
OLD = [task("web", 1, 2), task("web", 2, 2), task("worker", 1, 2)]


def test_a_rollout_says_started_once_then_finished_once() -> None:
    following, lines = progress({}, [WANT], OLD)
    assert (following, lines) == ({}, [])  # v2 runs, v3 not launched yet: nothing to say

    staging = [*OLD, task("web", 1, 3, state="staging", healthy=None)]
    following, lines = progress(following, [WANT], staging)
    assert lines == [("shop", "Deploy of v3 started (web: 2, worker: 1)")]
    assert following == {"shop": 3}

    # halfway: web.1 replaced, the rest still old; nothing more to say
    halfway = [task("web", 1, 3), OLD[1], OLD[2], task("web", 2, 3, state="starting")]
    following, lines = progress(following, [WANT], halfway)
    assert (following, lines) == ({"shop": 3}, [])

    # every slot serves v3, but an old task is still draining: not finished yet
    new = [task("web", 1, 3), task("web", 2, 3), task("worker", 1, 3)]
    draining = [*new, task("worker", 1, 2, state="killing")]
    following, lines = progress(following, [WANT], draining)
    assert (following, lines) == ({"shop": 3}, [])

    # a slot that is running but unhealthy does not count as serving
    unhealthy = [task("web", 1, 3), task("web", 2, 3, healthy=False), task("worker", 1, 3)]
    following, lines = progress(following, [WANT], unhealthy)
    assert (following, lines) == ({"shop": 3}, [])

    gone = [*new, task("worker", 1, 2, state="killed")]
    following, lines = progress(following, [WANT], gone)
    assert lines == [("shop", "Deploy of v3 finished")]
    assert following == {}
    assert progress(following, [WANT], gone) == ({}, [])


def test_first_starts_scale_ups_and_restarts_are_not_deploys() -> None:
    first = [task("web", 1, 3, state="staging", healthy=None)]
    assert progress({}, [Wanted("shop", 3, {"web": 1})], first) == ({}, [])
    scaled = [task("web", 1, 3), task("web", 2, 3, state="staging", healthy=None)]
    assert progress({}, [Wanted("shop", 3, {"web": 2})], scaled) == ({}, [])
    restarted = [task("web", 1, 3), task("web", 1, 3, state="staging")]
    assert progress({}, [Wanted("shop", 3, {"web": 1})], restarted) == ({}, [])


def test_a_new_leader_follows_a_deploy_under_way_without_repeating_started() -> None:
    mixed = [*OLD, task("web", 1, 3)]
    following, lines = progress(None, [WANT], mixed)
    assert (following, lines) == ({"shop": 3}, [])
    done = [task("web", 1, 3), task("web", 2, 3), task("worker", 1, 3)]
    assert progress(following, [WANT], done) == ({}, [("shop", "Deploy of v3 finished")])


def test_a_newer_release_overtakes_a_deploy() -> None:
    following, _ = progress({}, [WANT], [*OLD, task("web", 1, 3)])
    assert following == {"shop": 3}
    # v4 (say the framework's rollback to v2) is launched while v2 and v3 tasks run
    v4 = Wanted("shop", 4, {"web": 2, "worker": 1})
    mixed = [*OLD, task("web", 1, 3, state="failed"), task("web", 1, 4, state="staging")]
    following, lines = progress(following, [v4], mixed)
    assert lines == [("shop", "Deploy of v4 started (web: 2, worker: 1)")]
    assert following == {"shop": 4}
    # v4 not launched yet while v3 was followed: v3 is dropped, nothing said
    assert progress({"shop": 3}, [v4], OLD) == ({}, [])


def test_process_types_outside_the_formation_never_hold_a_deploy_open() -> None:
    want = Wanted("shop", 3, {"web": 1, "worker": 0})
    running = [task("web", 1, 3), task("run", 1, 2), task("worker", 1, 2, state="killing")]
    assert progress({"shop": 3}, [want], running) == ({}, [("shop", "Deploy of v3 finished")])


def test_apps_are_independent_and_a_destroyed_app_is_forgotten() -> None:
    other = Wanted("blog", 7, {"web": 1})
    tasks = [*OLD, task("web", 1, 3), task("web", 1, 6, app="blog"),
             task("web", 1, 7, app="blog", state="staging")]  # fmt: skip
    following, lines = progress({}, [WANT, other], tasks)
    assert following == {"blog": 7, "shop": 3}
    assert lines == [
        ("blog", "Deploy of v7 started (web: 1)"),
        ("shop", "Deploy of v3 started (web: 2, worker: 1)"),
    ]
    assert progress(following, [WANT], tasks) == ({"shop": 3}, [])
