"""Scheduler decision throughput: `framework.plan.plan` placing tasks on a simulated cluster
of N agents' offers (issue 3's goal: ≥ 1,000 placements/s in pure Python; Nomad's published
C1M rate, 3,750/s, is quoted for context, not measured here).

Run: .venv/bin/python bench/plan_throughput.py [--agents 1000] [--apps 500] [--rounds 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from berth.framework.model import Task
from berth.framework.plan import Desired, Offer, Resources, plan


def cluster(agents: int, rng: random.Random) -> list[Offer]:
    return [
        Offer(
            id=f"offer-{n}",
            agent_id=f"agent-{n}",
            hostname=f"host-{n}.cluster",
            resources=Resources(
                cpus=rng.choice([4.0, 8.0, 16.0]),
                mem=rng.choice([8192.0, 16384.0, 32768.0]),
                disk=100_000.0,
            ),
            ports=((31000, 31999),),
        )
        for n in range(agents)
    ]


def apps(count: int, rng: random.Random) -> list[Desired]:
    result = []
    for n in range(count):
        formation = {"web": rng.randint(1, 6), "worker": rng.randint(0, 3)}
        needs = {"web": Resources(0.25, 256.0, 100.0), "worker": Resources(0.5, 512.0, 100.0)}
        result.append(Desired(f"app-{n}", 1, formation, needs))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--apps", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(7)
    offers = cluster(args.agents, rng)
    desired = apps(args.apps, rng)
    wanted = sum(sum(d.formation.values()) for d in desired)

    rates, steady = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        result = plan(desired, [], offers, {}, now=0.0)
        elapsed = time.perf_counter() - start
        assert len(result.launches) == wanted, (len(result.launches), wanted)
        rates.append(len(result.launches) / elapsed)
        # the steady state: everything runs, every offer is declined
        tasks = [
            Task(f"t{n}", x.app, x.process, x.index, x.release, "running", x.agent_id, healthy=True)
            for n, x in enumerate(result.launches)
        ]
        start = time.perf_counter()
        idle = plan(desired, tasks, offers, {}, now=0.0)
        steady.append(time.perf_counter() - start)
        assert not idle.launches
        assert len(idle.declines) == len(offers)

    print(f"agents (offers): {args.agents}; apps: {args.apps}; tasks placed per round: {wanted}")
    print("| measure | median | min | max |")
    print("|---|---|---|---|")
    print(
        f"| placements/s (empty cluster → all placed) | {statistics.median(rates):,.0f} |"
        f" {min(rates):,.0f} | {max(rates):,.0f} |"
    )
    print(
        f"| steady-state round, all running, {args.agents} offers declined (ms) |"
        f" {statistics.median(steady) * 1000:.1f} | {min(steady) * 1000:.1f} |"
        f" {max(steady) * 1000:.1f} |"
    )
    goal = statistics.median(rates) >= 1000
    print(
        f"- goal ≥ 1,000 placements/s: {'MET' if goal else 'NOT MET'}"
        f" ({statistics.median(rates) / 3750:.2f}x Nomad's C1M rate of 3,750/s)"
    )


if __name__ == "__main__":
    main()
