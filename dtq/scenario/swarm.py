"""Swarm testing: a random fault timeline per seed, each kind of fault on or off.

As in swarm testing (Groce et al.), every seed first decides which fault kinds it uses at all
(each on with probability 1/2), then scatters a few of each over the run: crashes and restarts,
pauses, partitions from the broker or the store, dropped connections, a lossy, duplicating and
reordering network, crashes between effect steps, crashes inside task runs (around the
`ctx.once` marker, before the result write). Every fault heals before the horizon, so the
run must finish; the check is the invariants (no lost task, no duplicated effect, one leader per
epoch, no stale write) and liveness, not the scenario's timing expectations.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

from dtq.scenario.model import ExpectSpec, FaultSpec, Scenario

Maker = Callable[[random.Random, int], FaultSpec]


def _at(rng: random.Random, horizon_ms: int) -> int:
    return rng.randint(0, horizon_ms)


def _kill(target: str) -> Maker:
    return lambda rng, h: FaultSpec(at_ms=_at(rng, h), action="kill", target=target,
                                    duration_ms=rng.randint(200, 3000))


def _pause(target: str) -> Maker:
    return lambda rng, h: FaultSpec(at_ms=_at(rng, h), action="pause", target=target,
                                    duration_ms=rng.randint(100, 4000))


def _cut(target: str, service: str) -> Maker:
    return lambda rng, h: FaultSpec(at_ms=_at(rng, h), action="partition", target=target,
                                    duration_ms=rng.randint(100, 3000),
                                    params={"from": [service]})


def _drop_connection(rng: random.Random, h: int) -> FaultSpec:
    return FaultSpec(at_ms=_at(rng, h), action="drop_connection",
                     target=rng.choice(["any-worker", "leader"]))


FAULT_KINDS: dict[str, Maker] = {
    "kill-worker": _kill("any-worker"),
    "kill-leader": _kill("leader"),
    "pause-worker": _pause("any-worker"),
    "pause-leader": _pause("leader"),
    "cut-worker-from-broker": _cut("any-worker", "broker"),
    "cut-worker-from-store": _cut("any-worker", "store"),
    "cut-leader-from-store": _cut("leader", "store"),
    "cut-leader-from-broker": _cut("leader", "broker"),
    "drop-connection": _drop_connection,
}


def swarm(scenario: Scenario, seed: int) -> tuple[Scenario, list[str]]:
    """The scenario with this seed's random faults; also the fault kinds it switched on."""
    rng = random.Random(f"swarm:{seed}")
    horizon = max(2000, _horizon(scenario))
    kinds = [k for k in FAULT_KINDS if rng.random() < 0.5]
    faults = [FAULT_KINDS[k](rng, horizon) for k in kinds for _ in range(rng.randint(1, 3))]
    faults.sort(key=lambda f: f.at_ms)
    network = dict(scenario.network)
    if rng.random() < 0.5:
        kinds.append("lossy-network")
        network.update(drop=0.05, duplicate=0.05, reorder=0.1, jitter_ms=5)
    crash_points = dict(scenario.crash_points)
    if rng.random() < 0.5:
        kinds.append("crash-points")
        crash_points.update(after_persist=0.01, after_results=0.01, after_send=0.01,
                            after_ack=0.01, until_ms=horizon)
    if rng.random() < 0.5:
        kinds.append("task-crash-points")
        crash_points.update(once_before_begin=0.05, once_before_fn=0.05, once_after_fn=0.05,
                            before_result=0.01, until_ms=horizon)
    expect = ExpectSpec(deadline_ms=max(scenario.expect.deadline_ms, horizon + 60_000),
                        settle_ms=scenario.expect.settle_ms)
    return attrs.evolve(scenario, faults=tuple(faults), network=network,
                        crash_points=crash_points, expect=expect), kinds


def _horizon(scenario: Scenario) -> int:
    w = scenario.workload
    tasks = w.count + len(w.tasks) + (w.dag_size if w.dag else 0)
    return w.start_ms + w.interval_ms * tasks + 1000
