"""The scheduler's decisions as one pure function: what should run (each app's release and
formation), what runs (tasks), what is offered (offers) → launches, kills and declines.

Rules:
- A *slot* is one process instance, `(app, process, index)`, indexes 1..quantity. Each slot
  should hold one running task of the app's current release.
- Scale down: every task in a slot above the quantity is killed (highest indexes go first
  because they are the ones above the quantity).
- Deploy (or rolling restart: tasks launched before the restart count as old), new before old:
  a slot holding only an older release gets a new task first; once that
  task is running and healthy the old one is killed. At most `max_surge` such replacements per
  process type are in flight at once, so a deploy rolls through the slots. Deploys in quick
  succession leave a slot one old task only (serving first, then the newest release): the
  superseded ones are killed at once, so they never hold the room the new task needs.
- A slot with no live task (scale up, crash, lost task) is refilled at once unless its crash
  backoff says to wait (`backoff_after_exit`: first crash → relaunch now; again → 10 s doubling
  to 300 s; reset by a new release or 10 minutes up).
- Duplicates (a partitioned task that came back) are killed, keeping a healthy, older one.
- Tasks of apps that no longer exist are killed.
- One-off runs (runs.py): each pending run of `Desired.runs` is launched once, as process
  `run`, index N, from the run's own release; its tasks are never counted in a formation,
  replaced, restarted or killed by the plan (`ps:stop` and the end of the run end them).
- Placement: pending slots go to offers with room for the task plus its executor (cpus, mem,
  disk, one port from the offer's ranges), preferring agents with the fewest tasks of the same
  app and process (spread), then the roomiest. Unused offers are declined.

Pure and deterministic: no I/O, no clock (the caller passes `now`), no Mesos types. Any thread
may call it; the scheduler thread does.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from berth.framework.model import Task
from berth.framework.runs import PROCESS as RUN

# Tasks that no longer hold their slot: being killed, or on an agent out of reach (it may still
# run; if it comes back it is a duplicate and is killed then).
_LEAVING = frozenset({"killing", "unreachable"})

BACKOFF_FIRST = 10.0
BACKOFF_MAX = 300.0
BACKOFF_RESET_AFTER = 600.0


@dataclass(frozen=True, slots=True)
class Resources:
    cpus: float
    mem: float  # MB, as Mesos counts
    disk: float = 0.0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.mem + other.mem, self.disk + other.disk)

    def fits_in(self, other: Resources) -> bool:
        eps = 1e-9
        return (
            self.cpus <= other.cpus + eps
            and self.mem <= other.mem + eps
            and self.disk <= other.disk + eps
        )

    def minus(self, other: Resources) -> Resources:
        return Resources(self.cpus - other.cpus, self.mem - other.mem, self.disk - other.disk)


# What Berth's own executor needs beside each task (one executor per task): measured, an idle
# executor uses ~0.05% of a core and ~20 MiB (bench/RESULTS.md), so 0.01 cpu and 32 MB.
EXECUTOR = Resources(cpus=0.01, mem=32.0, disk=0.0)


@dataclass(frozen=True, slots=True)
class Desired:
    """One app's wish: its current release, the formation and each process type's needs."""

    app: str
    release: int
    formation: Mapping[str, int]
    needs: Mapping[str, Resources]
    # process type → epoch: tasks launched before count as old (`ps:restart`, rolling)
    restarted: Mapping[str, float] = field(default_factory=dict)
    runs: Sequence[PendingRun] = ()  # one-off runs not launched yet


@dataclass(frozen=True, slots=True)
class PendingRun:
    """A one-off run waiting for its launch: its number (the task's index) and release."""

    number: int
    release: int
    needs: Resources


@dataclass(frozen=True, slots=True)
class Offer:
    id: str
    agent_id: str
    hostname: str
    resources: Resources
    ports: tuple[tuple[int, int], ...]  # inclusive ranges


@dataclass(frozen=True, slots=True)
class Backoff:
    """A slot's crash history: launches wait until `not_before`."""

    failures: int
    not_before: float
    release: int


@dataclass(frozen=True, slots=True)
class Launch:
    offer_id: str
    agent_id: str
    hostname: str
    app: str
    process: str
    index: int
    release: int
    port: int
    resources: Resources  # the task's own, without the executor's


@dataclass(frozen=True, slots=True)
class Unplaced:
    """A task that should launch now but that no offer had room for."""

    app: str
    process: str
    index: int
    release: int
    needs: Resources  # with its executor's


@dataclass(frozen=True, slots=True)
class Plan:
    launches: list[Launch] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)  # task ids
    declines: list[str] = field(default_factory=list)  # offer ids
    unplaced: int = 0  # pending slots no offer could take
    waiting: list[Unplaced] = field(default_factory=list)  # those slots
    waiting_until: float | None = None  # earliest backoff expiry, if any slot waits

    @property
    def wants_offers(self) -> bool:
        """Something is pending now: keep offers coming (REVIVE), else SUPPRESS."""
        return self.unplaced > 0


def backoff_after_exit(
    previous: Backoff | None, release: int, now: float, up_for: float
) -> Backoff:
    """The slot's backoff once its task ended unexpectedly (crash, or a web process exiting)."""
    if previous is None or previous.release != release or up_for >= BACKOFF_RESET_AFTER:
        return Backoff(failures=1, not_before=now, release=release)
    failures = previous.failures + 1
    delay = min(BACKOFF_FIRST * 2 ** (failures - 2), BACKOFF_MAX)
    return Backoff(failures=failures, not_before=now + delay, release=release)


@dataclass(slots=True)
class _Pending:
    app: str
    process: str
    index: int
    release: int
    needs: Resources


def plan(
    desired: Iterable[Desired],
    tasks: Iterable[Task],
    offers: Sequence[Offer],
    backoffs: Mapping[tuple[str, str, int], Backoff],
    now: float,
    *,
    max_surge: int = 1,
    executor: Resources = EXECUTOR,
) -> Plan:
    wanted = {d.app: d for d in desired}
    # (app, process) → index → live tasks
    groups: dict[tuple[str, str], dict[int, list[Task]]] = defaultdict(lambda: defaultdict(list))
    kills: list[str] = []
    launched_runs: set[tuple[str, int]] = set()  # (app, run number) with a live task
    for task in tasks:
        if not task.live:
            continue
        if task.app not in wanted:
            if task.state != "killing":
                kills.append(task.id)
            continue
        if task.process == RUN:
            launched_runs.add((task.app, task.index))
            continue
        groups[(task.app, task.process)][task.index].append(task)
    processes_of: dict[str, set[str]] = defaultdict(set)
    for app, process in groups:
        processes_of[app].add(process)

    pending: list[_Pending] = []
    waiting_until: float | None = None
    for app in sorted(wanted):
        want = wanted[app]
        for run in want.runs:
            if (app, run.number) not in launched_runs:
                pending.append(_Pending(app, RUN, run.number, run.release, run.needs))
        for process in sorted(set(want.formation) | processes_of[app]):
            if process == RUN:
                continue  # a Procfile type named `run` would collide with one-off runs
            quantity = want.formation.get(process, 0)
            slots = groups.get((app, process), {})
            for index in sorted(slots):
                if index > quantity:
                    kills.extend(t.id for t in slots[index] if t.state != "killing")
            surging = 0
            to_replace: list[int] = []
            for index in range(1, quantity + 1):
                live = [t for t in slots.get(index, ()) if t.state not in _LEAVING]
                since = want.restarted.get(process, 0.0)
                current = [t for t in live if t.release == want.release and t.launched_at >= since]
                old = [t for t in live if t not in current]
                if old:  # one old task holds the slot until a new one serves; the rest go
                    old_keep = _old_keeper(old)
                    kills.extend(t.id for t in old if t is not old_keep)
                    old = [old_keep]
                if current:
                    keep = _keeper(current)
                    kills.extend(t.id for t in current if t is not keep)
                    if keep.serving:
                        kills.extend(t.id for t in old)
                    elif old:
                        surging += 1
                    continue
                if old:
                    to_replace.append(index)
                    continue
                backoff = backoffs.get((app, process, index))
                if (
                    backoff is not None
                    and backoff.release == want.release
                    and backoff.not_before > now
                ):
                    waiting_until = _earliest(waiting_until, backoff.not_before)
                    continue
                needs = want.needs.get(process, Resources(0.1, 128.0))
                pending.append(_Pending(app, process, index, want.release, needs))
            for index in to_replace[: max(0, max_surge - surging)]:
                needs = want.needs.get(process, Resources(0.1, 128.0))
                pending.append(_Pending(app, process, index, want.release, needs))

    launches, used = _place(pending, offers, groups, executor)
    declines = [o.id for o in offers if o.id not in used]
    placed = {(x.app, x.process, x.index) for x in launches}
    waiting = [
        Unplaced(p.app, p.process, p.index, p.release, p.needs + executor)
        for p in pending
        if (p.app, p.process, p.index) not in placed
    ]
    return Plan(
        launches=launches,
        kills=kills,
        declines=declines,
        unplaced=len(waiting),
        waiting=waiting,
        waiting_until=waiting_until,
    )


def _keeper(tasks: list[Task]) -> Task:
    """Of several tasks in one slot, the one to keep: serving first, then the oldest."""
    return min(tasks, key=lambda t: (not t.serving, t.started_at, t.id))


def _old_keeper(tasks: list[Task]) -> Task:
    """Of a slot's tasks of older releases (deploys in quick succession leave several), the
    one that holds the slot until the current release serves: serving first, then the newest
    release, then the oldest. The others are superseded: keeping them would hold resources a
    new task may need (a full machine would never get the offer that lets the deploy go on)."""
    return min(tasks, key=lambda t: (not t.serving, -t.release, t.started_at, t.id))


def _earliest(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


@dataclass(slots=True)
class _Room:
    offer: Offer
    free: Resources
    ports: list[tuple[int, int]]

    def take_port(self) -> int | None:
        while self.ports:
            begin, end = self.ports[0]
            if begin > end:
                self.ports.pop(0)
                continue
            self.ports[0] = (begin + 1, end)
            return begin
        return None


def _place(
    pending: list[_Pending],
    offers: Sequence[Offer],
    groups: Mapping[tuple[str, str], Mapping[int, list[Task]]],
    executor: Resources,
) -> tuple[list[Launch], set[str]]:
    rooms = [_Room(o, o.resources, sorted(o.ports)) for o in offers]
    by_group: dict[tuple[str, str], list[_Pending]] = defaultdict(list)
    for p in pending:
        by_group[(p.app, p.process)].append(p)

    launches: list[Launch] = []
    used: set[str] = set()
    for key in sorted(by_group):
        # How many live tasks of this app and process each agent has: the spread count.
        counts: dict[str, int] = defaultdict(int)
        for slot_tasks in groups.get(key, {}).values():
            for t in slot_tasks:
                counts[t.agent_id] += 1
        # (tasks of this group on the agent, -free memory, offer order) → the best room first.
        heap = [(counts[r.offer.agent_id], -r.free.mem, n) for n, r in enumerate(rooms) if r.ports]
        heapq.heapify(heap)
        for p in by_group[key]:
            total = p.needs + executor
            while heap:
                _, _, n = heapq.heappop(heap)
                room = rooms[n]
                if not total.fits_in(room.free):
                    continue  # no later task of this group fits here either
                port = room.take_port()
                if port is None:
                    continue
                room.free = room.free.minus(total)
                counts[room.offer.agent_id] += 1
                used.add(room.offer.id)
                launches.append(
                    Launch(
                        offer_id=room.offer.id,
                        agent_id=room.offer.agent_id,
                        hostname=room.offer.hostname,
                        app=p.app,
                        process=p.process,
                        index=p.index,
                        release=p.release,
                        port=port,
                        resources=p.needs,
                    )
                )
                heapq.heappush(heap, (counts[room.offer.agent_id], -room.free.mem, n))
                break
    return launches, used
