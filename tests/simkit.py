"""Small helpers to build simulated clusters in tests."""

from __future__ import annotations

from typing import Any

from dtq.checker import CheckResult, check
from dtq.coordinator import Coordinator, CoordinatorConfig
from dtq.task import TaskRecord, TaskSpec, TaskState
from dtq.tasktypes import load_task_types
from dtq.worker import Worker
from transports.memory import CrashPoints, NetworkConfig, SimStore, Simulation

TERMINAL = {"succeeded", "failed", "rejected", "cancelled"}


def make_sim(
    seed: int = 0, *, workers: int = 3, coordinators: int = 1, prefetch: int = 1,
    store: SimStore | None = None, crash_points: CrashPoints | None = None,
    modules: tuple[str, ...] = (), lease_ttl_ms: int = 3000, concurrency: int | None = None,
    **network: Any,
) -> Simulation:
    sim = Simulation(seed, network=NetworkConfig(**network), store=store,
                     crash_points=crash_points)
    types = load_task_types(modules)
    cfg = CoordinatorConfig(lease_ttl_ms=lease_ttl_ms)
    for i in range(1, coordinators + 1):
        sim.spawn(f"coordinator-{i}", lambda n=f"coordinator-{i}": Coordinator(n, cfg),
                  groups=("coordinators",))
    for i in range(1, workers + 1):
        sim.spawn(f"worker-{i}", lambda n=f"worker-{i}": Worker(n, types, concurrency=concurrency),
                  groups=("workers",), prefetch=prefetch)
    return sim


def spec(n: int, type: str = "echo", payload: Any = None, **kw: Any) -> TaskSpec:
    return TaskSpec(id=f"task-{n:05d}", type=type,
                    payload=payload if payload is not None else {"message": f"Message {n}"},
                    **kw)


def finished(sim: Simulation) -> set[str]:
    return {e.data["task"] for e in sim.history.events if e.kind in TERMINAL}


def run_until_done(sim: Simulation, tasks: int, *, deadline_ms: int = 60_000) -> CheckResult:
    """Run until `tasks` tasks finished (or the deadline), then a settle second; check."""
    sim.run(until_ms=deadline_ms, stop=lambda: len(finished(sim)) >= tasks)
    sim.run(until_ms=sim.now_ms + 1000)
    return check(sim.history.events)


def events(sim: Simulation, kind: str, **data: Any) -> list[Any]:
    return [e for e in sim.history.events if e.kind == kind
            and all(e.data.get(k) == v for k, v in data.items())]


def taking_over(in_flight: int, *, read_us: int = 400, lease_ttl_ms: int = 3000) -> Simulation:
    """A store holding `in_flight` dispatched tasks, reads costing `read_us` a record, one
    worker, and a coordinator that takes over (and loads them a page at a time) once run."""
    store = SimStore()
    for i in range(in_flight):
        store.put_record(TaskRecord(spec=TaskSpec(id=f"t{i:05d}", type="echo"),
                                    state=TaskState.DISPATCHED, attempt=1))
    sim = make_sim(1, workers=1, coordinators=0, store=store)
    sim.store_read_us = read_us
    sim.spawn("coordinator-1", lambda: Coordinator("coordinator-1",
                                                   CoordinatorConfig(lease_ttl_ms=lease_ttl_ms)))
    return sim
