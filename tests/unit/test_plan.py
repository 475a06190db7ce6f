"""The planner's rules, one by one, on made-up clusters."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from berth.framework.model import Task
from berth.framework.plan import (
    BACKOFF_MAX,
    EXECUTOR,
    Backoff,
    Desired,
    Offer,
    Resources,
    backoff_after_exit,
    plan,
)

WEB = Resources(cpus=0.5, mem=256.0)


def offer(
    n: int,
    cpus: float = 4.0,
    mem: float = 4096.0,
    ports: tuple[int, int] = (31000, 31009),
    agent: str | None = None,
) -> Offer:
    return Offer(f"o{n}", agent or f"a{n}", f"host{n}", Resources(cpus, mem, 1000.0), (ports,))


def want(app: str = "shop", release: int = 2, **formation: int) -> Desired:
    return Desired(app, release, formation, dict.fromkeys(formation, WEB))


def task(
    index: int,
    release: int = 2,
    state: str = "running",
    healthy: bool | None = True,
    process: str = "web",
    app: str = "shop",
    agent: str = "a1",
    started: float = 0.0,
) -> Task:
    return Task(
        f"{app}.{process}.{index}.v{release}",
        app,
        process,
        index,
        release,
        state,
        agent_id=agent,
        healthy=healthy,
        started_at=started,
    )


def test_scale_up_launches_one_task_per_missing_slot_with_ports_from_the_offer() -> None:
    result = plan([want(web=3)], [], [offer(1)], {}, now=0)
    assert [(launch.index, launch.port) for launch in result.launches] == [
        (1, 31000),
        (2, 31001),
        (3, 31002),
    ]
    assert result.declines == []
    assert not result.wants_offers


def test_nothing_to_do_declines_every_offer_and_wants_none() -> None:
    running = [task(1), task(2)]
    result = plan([want(web=2)], running, [offer(1), offer(2)], {}, now=0)
    assert result.launches == []
    assert result.kills == []
    assert result.declines == ["o1", "o2"]
    assert not result.wants_offers


def test_scale_down_kills_the_highest_slots() -> None:
    running = [task(1), task(2), task(3)]
    assert plan([want(web=1)], running, [], {}, now=0).kills == ["shop.web.2.v2", "shop.web.3.v2"]
    assert plan([want(web=0)], running, [], {}, now=0).kills == [t.id for t in running]


def test_tasks_of_destroyed_apps_are_killed() -> None:
    result = plan([], [task(1, app="gone"), task(1)], [], {}, now=0)
    assert result.kills == ["gone.web.1.v2", "shop.web.1.v2"]


def test_spreads_a_process_type_across_agents() -> None:
    result = plan([want(web=4)], [], [offer(1), offer(2), offer(3)], {}, now=0)
    per_agent = Counter(launch.agent_id for launch in result.launches)
    assert sorted(per_agent.values()) == [1, 1, 2]
    # an agent that already runs one gets new ones last
    result = plan([want(web=3)], [task(1, agent="a1")], [offer(1), offer(2)], {}, now=0)
    assert [launch.agent_id for launch in result.launches] == ["a2", "a1"]


def test_an_offer_too_small_for_task_plus_executor_is_declined() -> None:
    tight = offer(1, cpus=WEB.cpus, mem=WEB.mem)  # fits the task but not its executor too
    result = plan([want(web=1)], [], [tight], {}, now=0)
    assert result.launches == []
    assert result.declines == ["o1"]
    assert result.wants_offers
    roomy = offer(2, cpus=WEB.cpus + EXECUTOR.cpus, mem=WEB.mem + EXECUTOR.mem)
    assert len(plan([want(web=1)], [], [roomy], {}, now=0).launches) == 1


def test_ports_run_out() -> None:
    result = plan([want(web=3)], [], [offer(1, ports=(31000, 31001))], {}, now=0)
    assert [launch.port for launch in result.launches] == [31000, 31001]
    assert result.unplaced == 1


def test_deploy_starts_new_before_old_one_slot_at_a_time() -> None:
    old = [task(1, release=1), task(2, release=1)]
    step1 = plan([want(web=2)], old, [offer(1)], {}, now=0)
    assert [(launch.index, launch.release) for launch in step1.launches] == [(1, 2)]
    assert step1.kills == []
    # the new task is starting: nothing more yet (surge 1)
    starting = [*old, task(1, state="starting", healthy=None)]
    step2 = plan([want(web=2)], starting, [offer(1)], {}, now=0)
    assert step2.launches == []
    assert step2.kills == []
    # it is healthy: the old one in its slot goes, the next slot's replacement starts
    healthy = [*old, task(1)]
    step3 = plan([want(web=2)], healthy, [offer(1)], {}, now=0)
    assert step3.kills == ["shop.web.1.v1"]
    assert [(launch.index, launch.release) for launch in step3.launches] == [(2, 2)]
    # a new task that runs but fails its health check never replaces the old one
    unhealthy = [*old, task(1, healthy=False)]
    assert plan([want(web=2)], unhealthy, [offer(1)], {}, now=0).kills == []


def test_deploys_in_quick_succession_keep_one_old_task_per_slot() -> None:
    # v2 and v3 serve (v3 had just become healthy), v4 is starting, v5 is wanted: only v3
    # holds the slot until v5 serves; the room the others hold is what v5 needs
    tasks = [task(1, release=2), task(1, release=3), task(1, release=4, healthy=None)]
    tasks[2] = replace(tasks[2], state="starting")
    full = offer(1, cpus=WEB.cpus + EXECUTOR.cpus - 0.01)  # too small for a v5 task
    step1 = plan([want(release=5, web=1)], tasks, [full], {}, now=0)
    assert sorted(step1.kills) == ["shop.web.1.v2", "shop.web.1.v4"]
    assert step1.launches == []
    assert step1.wants_offers
    # once their room is offered again, v5 launches; v3 goes only when v5 serves
    step2 = plan([want(release=5, web=1)], [tasks[1]], [offer(1)], {}, now=0)
    assert [(launch.index, launch.release) for launch in step2.launches] == [(1, 5)]
    assert step2.kills == []
    step3 = plan([want(release=5, web=1)], [tasks[1], task(1, release=5)], [], {}, now=0)
    assert step3.kills == ["shop.web.1.v3"]
    # with no old task serving, the newest old one holds the slot
    starting = [replace(t, state="starting", healthy=None) for t in tasks]
    assert sorted(plan([want(release=5, web=1)], starting, [], {}, now=0).kills) == [
        "shop.web.1.v2",
        "shop.web.1.v3",
    ]


def test_duplicates_are_killed_keeping_a_serving_older_one() -> None:
    tasks = [task(1, started=5.0), task(1, started=1.0, agent="a2"), task(1, healthy=False)]
    tasks = [replace(t, id=f"t{n}") for n, t in enumerate(tasks)]
    assert sorted(plan([want(web=1)], tasks, [], {}, now=0).kills) == ["t0", "t2"]


def test_a_crashed_slot_waits_for_its_backoff() -> None:
    first = backoff_after_exit(None, release=2, now=100.0, up_for=3.0)
    assert first.not_before == 100.0  # relaunched at once
    second = backoff_after_exit(first, release=2, now=101.0, up_for=1.0)
    assert second.not_before == 111.0
    third = backoff_after_exit(second, release=2, now=112.0, up_for=1.0)
    assert third.not_before == 132.0
    capped = Backoff(failures=30, not_before=0, release=2)
    assert backoff_after_exit(capped, 2, now=0, up_for=1).not_before == BACKOFF_MAX
    assert backoff_after_exit(capped, 3, now=0, up_for=1).failures == 1  # new release
    assert backoff_after_exit(capped, 2, now=0, up_for=601).failures == 1  # was up 10 min

    backoffs = {("shop", "web", 1): second}
    waiting = plan([want(web=1)], [], [offer(1)], backoffs, now=105.0)
    assert waiting.launches == []
    assert waiting.waiting_until == 111.0
    assert not waiting.wants_offers
    assert len(plan([want(web=1)], [], [offer(1)], backoffs, now=111.0).launches) == 1
    # a backoff from an older release does not hold back the new one
    assert len(plan([want(release=3, web=1)], [], [offer(1)], backoffs, now=105.0).launches) == 1


def test_killing_tasks_are_not_killed_twice_and_leave_their_slot_free() -> None:
    tasks = [task(1, state="killing"), task(2, state="killing")]
    result = plan([want(web=1)], tasks, [offer(1)], {}, now=0)
    assert result.kills == []
    assert [launch.index for launch in result.launches] == [1]


def test_many_apps_and_process_types() -> None:
    desired = [
        Desired(f"app{n}", 1, {"web": 2, "worker": 1}, {"web": WEB, "worker": WEB})
        for n in range(10)
    ]
    offers = [offer(n) for n in range(5)]
    result = plan(desired, [], offers, {}, now=0)
    assert len(result.launches) == 30
    assert len({(launch.app, launch.process, launch.index) for launch in result.launches}) == 30
    for o in offers:
        placed = [launch for launch in result.launches if launch.offer_id == o.id]
        total = sum(launch.resources.mem + EXECUTOR.mem for launch in placed)
        assert total <= o.resources.mem


def test_an_unreachable_task_is_replaced_and_killed_if_it_comes_back() -> None:
    gone = task(1, state="unreachable", agent="a1", started=1.0)
    result = plan([want(web=1)], [gone], [offer(2)], {}, now=0)
    assert [launch.index for launch in result.launches] == [1]
    back = [replace(gone, state="running"), replace(task(1, agent="a2", started=5.0), id="new")]
    assert plan([want(web=1)], back, [], {}, now=0).kills == ["new"]


def test_a_rolling_restart_replaces_tasks_launched_before_it_new_before_old() -> None:
    tasks = [replace(task(1), launched_at=10.0), replace(task(2), launched_at=10.0)]
    restarted = Desired("shop", 2, {"web": 2}, {"web": WEB}, restarted={"web": 20.0})
    step1 = plan([restarted], tasks, [offer(1)], {}, now=30)
    assert [(launch.index, launch.release) for launch in step1.launches] == [(1, 2)]
    assert step1.kills == []
    fresh = replace(task(1), id="fresh", launched_at=30.0)
    step2 = plan([restarted], [*tasks, fresh], [offer(1)], {}, now=31)
    assert step2.kills == [tasks[0].id]
    assert [launch.index for launch in step2.launches] == [2]
    # other process types are not restarted
    worker = replace(task(1, process="worker"), launched_at=10.0)
    both = Desired("shop", 2, {"worker": 1}, {"worker": WEB}, restarted={"web": 20.0})
    assert plan([both], [worker], [offer(1)], {}, now=30).launches == []
