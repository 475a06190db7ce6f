"""Which deploys started and which finished: the scheduler's `deploy` platform lines
(`berth: Deploy of v5 started (web: 2, worker: 1)`, `berth: Deploy of v5 finished`).

A *deploy* of release vN is a rollout that replaces tasks of older releases: it starts when
the scheduler has launched a task of vN while a task of an older release still runs (in a
process type the formation wants), and it finishes once every slot of the formation has a
serving task of vN (running, not unhealthy) and no older task of those process types is left
(drained, killed, gone). A first start (nothing older running) or a scale-up is not a deploy,
nor is a rolling restart (`ps:restart`: same release). A deploy overtaken by a newer release
(another push, a config change, the framework's rollback, whose own `Release vN: Rollback to
…` line says why) just stops being followed; the newer release's rollout is a deploy of its
own. Process types outside the formation (one-off runs, a type scaled to 0) never hold a
deploy open.

Pure: `progress(following, apps, tasks)` → the deploys now in progress and the lines to write.
The caller keeps `following` between calls; None on the first look (a new leader): deploys
already under way are followed without a "started" line, so one is never said twice.
Imports only the standard library and berth.framework.model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from berth.framework.model import Task


@dataclass(frozen=True, slots=True)
class Wanted:
    """An app's current release and formation, as the scheduler plans them."""

    app: str
    release: int
    formation: Mapping[str, int]


def _counts(formation: Mapping[str, int]) -> str:
    wanted = [(p, n) for p, n in formation.items() if n > 0]
    wanted.sort(key=lambda item: (item[0] != "web", item[0]))  # web first, then by name
    return ", ".join(f"{p}: {n}" for p, n in wanted)


def progress(
    following: Mapping[str, int] | None, apps: Iterable[Wanted], tasks: Iterable[Task]
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(app → release whose deploy is in progress, [(app, line)]) after this look."""
    by_app: dict[str, list[Task]] = {}
    for task in tasks:
        if task.live:
            by_app.setdefault(task.app, []).append(task)
    now: dict[str, int] = {}
    lines: list[tuple[str, str]] = []
    for want in sorted(apps, key=lambda w: w.app):
        wanted = {p for p, n in want.formation.items() if n > 0}
        live = [t for t in by_app.get(want.app, []) if t.process in wanted]
        new = [t for t in live if t.release == want.release]
        old = [t for t in live if t.release < want.release]
        was = following.get(want.app) if following is not None else None
        if was != want.release:
            if not (new and old):
                continue  # no rollout of this release under way
            now[want.app] = want.release
            if following is not None:
                started = f"Deploy of v{want.release} started ({_counts(want.formation)})"
                lines.append((want.app, started))
            continue
        serving = {(t.process, t.index) for t in new if t.serving}
        slots = {(p, i) for p in wanted for i in range(1, want.formation[p] + 1)}
        if slots <= serving and not old:
            lines.append((want.app, f"Deploy of v{want.release} finished"))
        else:
            now[want.app] = want.release
    return now, lines
