"""Running scenarios on the memory backend, and the JSON summary both backends print.

`run_memory` builds a simulated cluster, plays the workload and the fault timeline in virtual
time, stops when every task has finished (plus a settle period that would reveal late
duplicates) or at the deadline, then checks the history.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from dtq.checker import check
from dtq.clock import VectorClock
from dtq.coordinator import Coordinator, CoordinatorConfig
from dtq.errors import ScenarioError
from dtq.history import Event, History, digest
from dtq.scenario import FaultSpec, Scenario
from dtq.tasktypes import load_task_types
from dtq.worker import Worker
from dtq.workload import plan
from transports.memory import BROKER, CrashPoints, NetworkConfig, Simulation

TERMINAL_KINDS = frozenset({"succeeded", "failed", "rejected", "cancelled"})
MEMORY_UNSUPPORTED = {"bandwidth", "slicer", "reset_peer"}


@attrs.define(kw_only=True)
class RunResult:
    summary: dict[str, Any]
    events: list[Event]
    sim: Simulation | None = None

    @property
    def ok(self) -> bool:
        return bool(self.summary["ok"])


def coordinator_names(scenario: Scenario) -> list[str]:
    return [f"coordinator-{i}" for i in range(1, scenario.cluster.coordinators + 1)]


def worker_names(scenario: Scenario) -> list[str]:
    return [f"worker-{i}" for i in range(1, scenario.cluster.workers + 1)]


def check_supported(scenario: Scenario, unsupported: set[str], transport: str) -> None:
    for i, fault in enumerate(scenario.faults):
        if fault.action in unsupported:
            raise ScenarioError(
                f"{scenario.path}: fault[{i}].action: {fault.action!r} cannot be played on the "
                f"{transport} backend (it needs a real TCP stream through Toxiproxy)")


def build_simulation(scenario: Scenario, seed: int, *, trace: bool = False) -> Simulation:
    net = NetworkConfig(**scenario.network)
    sim = Simulation(seed, network=net, crash_points=CrashPoints(**scenario.crash_points),
                     trace=trace)
    types = load_task_types(scenario.cluster.task_modules)
    cfg = CoordinatorConfig(lease_ttl_ms=scenario.cluster.lease_ttl_ms)
    for name in coordinator_names(scenario):
        sim.spawn(name, functools.partial(Coordinator, name, cfg), groups=("coordinators",))
    for name in worker_names(scenario):
        sim.spawn(name, functools.partial(Worker, name, types), groups=("workers",),
                  prefetch=scenario.cluster.worker_prefetch)
    return sim


def run_memory(scenario: Scenario, seed: int | None = None, *, trace: bool = False) -> RunResult:
    """Run a scenario on the simulator; with `trace`, record every message for diagrams."""
    seed = scenario.seed if seed is None else seed
    check_supported(scenario, MEMORY_UNSUPPORTED, "memory")
    started = time.perf_counter()
    sim = build_simulation(scenario, seed, trace=trace)
    planned = plan(scenario, seed)
    for p in planned:
        sim.at(p.at_ms, sim.submit, p.spec)
    for fault in scenario.faults:
        sim.at(fault.at_ms, _play, sim, scenario, fault)
    done = _CompletionTap(sim.history, len(planned))
    quiet_after = max([p.at_ms for p in planned] + [_fault_end(f) for f in scenario.faults] + [0])
    deadline = scenario.expect.deadline_ms
    sim.run(until_ms=deadline, stop=lambda: done.all_done and sim.now_ms >= quiet_after)
    if done.all_done:
        sim.run(until_ms=min(deadline, sim.now_ms + scenario.expect.settle_ms))
    wall_ms = int((time.perf_counter() - started) * 1000)
    summary = summarize(scenario, "memory", seed, sim.history.events, virtual_ms=sim.now_ms,
                        wall_ms=wall_ms)
    summary["messages_delivered"] = sim.delivered
    return RunResult(summary=summary, events=sim.history.events, sim=sim)


class _CompletionTap:
    """Counts finished tasks as the history grows, without rescanning it."""

    def __init__(self, history: History, expected: int) -> None:
        self.history = history
        self.expected = expected
        self.seen = 0
        self.finished: set[str] = set()

    @property
    def all_done(self) -> bool:
        events = self.history.events
        for e in events[self.seen:]:
            if e.kind in TERMINAL_KINDS:
                self.finished.add(e.data["task"])
        self.seen = len(events)
        return len(self.finished) >= self.expected


def _fault_end(f: FaultSpec) -> int:
    return f.at_ms + (f.duration_ms or 0)


def resolve_target(sim: Simulation, target: str | None) -> list[str]:
    """Names for a fault target: a node name, or a role resolved now."""
    workers = sorted(n for n, node in sim.nodes.items() if "workers" in node.groups)
    coords = sorted(n for n, node in sim.nodes.items() if "coordinators" in node.groups)
    lease = sim.store.lease("coordinator")
    leader = lease.holder if lease else None
    if target is None:
        return []
    if target == "leader":
        return [leader] if leader else []
    if target == "standby":
        return [c for c in coords if c != leader][:1]
    if target == "any-worker":
        return [sim.rng.choice(workers)] if workers else []
    if target == "all-workers":
        return workers
    if target == "any-coordinator":
        return [sim.rng.choice(coords)]
    if target in sim.nodes or target in ("coordinators", "workers"):
        return [target]
    raise ScenarioError(f"unknown fault target {target!r}")


def _play(sim: Simulation, scenario: Scenario, fault: FaultSpec) -> None:
    targets = resolve_target(sim, fault.target)
    sim.history.record("sim", "fault", VectorClock(), {"action": fault.action, "targets": targets,
                                                   "duration_ms": fault.duration_ms})
    action = _ACTIONS[fault.action]
    undo = action(sim, targets, fault)
    if undo is not None and fault.duration_ms:
        sim.after(fault.duration_ms, undo)


def _each(fn: Callable[[str], None], targets: list[str]) -> Callable[[], None]:
    def run() -> None:
        for t in targets:
            fn(t)

    return run


def _kill(sim: Simulation, targets: list[str], f: FaultSpec) -> Callable[[], None]:
    for t in targets:
        sim.crash(t, "killed by scenario")
    return _each(sim.restart, targets)


def _restart(sim: Simulation, targets: list[str], f: FaultSpec) -> None:
    _each(sim.restart, targets)()


def _pause(sim: Simulation, targets: list[str], f: FaultSpec) -> Callable[[], None]:
    _each(sim.pause, targets)()
    return _each(sim.resume, targets)


def _resume(sim: Simulation, targets: list[str], f: FaultSpec) -> None:
    _each(sim.resume, targets)()


def _partition(sim: Simulation, targets: list[str], f: FaultSpec) -> Callable[[], None]:
    other = f.params.get("from", [BROKER])
    sim.partition(targets, other)
    return sim.heal


def _heal(sim: Simulation, targets: list[str], f: FaultSpec) -> None:
    sim.heal()


def _drop_connection(sim: Simulation, targets: list[str], f: FaultSpec) -> None:
    _each(sim.drop_connection, targets or sorted(sim.nodes))()


def _network_knob(field: str, param: str) -> Callable[..., Callable[[], None]]:
    def apply(sim: Simulation, targets: list[str], f: FaultSpec) -> Callable[[], None]:
        net = sim.network
        old = attrs.evolve(net)
        setattr(net, field, f.params.get(param, 0))
        if field == "delay_ms" and "jitter" in f.params:
            net.jitter_ms = f.params["jitter"]

        def undo() -> None:
            setattr(net, field, getattr(old, field))
            net.jitter_ms = old.jitter_ms

        return undo

    return apply


_ACTIONS: dict[str, Callable[..., Callable[[], None] | None]] = {
    "kill": _kill, "crash": _kill, "restart": _restart, "pause": _pause, "resume": _resume,
    "partition": _partition, "heal": _heal, "drop_connection": _drop_connection,
    "latency": _network_knob("delay_ms", "latency"),
    "duplicate": _network_knob("duplicate", "probability"),
    "drop": _network_knob("drop", "probability"),
    "reorder": _network_knob("reorder", "probability"),
}


# --- the summary -------------------------------------------------------------------------------


def summarize(
    scenario: Scenario, transport: str, seed: int, events: Sequence[Event], *,
    virtual_ms: int, wall_ms: int,
) -> dict[str, Any]:
    result = check(events)
    violations = [v.to_json() for v in result.violations]
    failover = failover_times(events)
    reassign = reassign_times(events)
    violations += _expectations(scenario, result.counts.to_json(), failover, reassign)
    return {
        "scenario": scenario.name, "transport": transport, "seed": seed,
        "ok": not violations, "tasks": result.counts.to_json(), "violations": violations,
        "leaders": [{"epoch": e, "actor": a} for e, a in result.leaders],
        "failover_ms": failover, "reassign_ms": reassign,
        "history_digest": digest(events), "virtual_ms": virtual_ms, "wall_ms": wall_ms,
    }


def _expectations(
    scenario: Scenario, counts: dict[str, int], failover: list[int], reassign: list[int],
) -> list[dict[str, Any]]:
    ex = scenario.expect
    out = []
    for key in ("succeeded", "failed"):
        want = getattr(ex, key)
        if want is not None and counts[key] != want:
            out.append({"invariant": "expectation",
                        "detail": f"expected {want} {key} tasks, got {counts[key]}"})
    if ex.failover_ms_max is not None and any(f > ex.failover_ms_max for f in failover):
        out.append({"invariant": "failover_bound",
                    "detail": f"failover took {max(failover)} ms; the scenario allows "
                              f"{ex.failover_ms_max} ms"})
    if ex.reassign_ms_max is not None and any(r > ex.reassign_ms_max for r in reassign):
        out.append({"invariant": "reassign_bound",
                    "detail": f"reassignment took {max(reassign)} ms; the scenario allows "
                              f"{ex.reassign_ms_max} ms"})
    return out


def failover_times(events: Sequence[Event]) -> list[int]:
    """For each crash of the acting leader: time until the next leader's first dispatch (or,
    with nothing to dispatch, until it took over)."""
    out = []
    leader = None
    for i, e in enumerate(events):
        if e.kind == "leader":
            leader = e.actor
        elif e.kind in ("crash", "abdicated") and e.actor == leader:
            leader = None
            took = _next_takeover(events, i)
            if took is not None:
                out.append(took - e.time_ms)
    return out


def _next_takeover(events: Sequence[Event], start: int) -> int | None:
    new_leader, took_ms = None, None
    for e in events[start + 1:]:
        if new_leader is None and e.kind == "leader":
            new_leader, took_ms = e.actor, e.time_ms
        elif new_leader is not None and e.actor == new_leader and e.kind == "dispatched":
            return e.time_ms
    return took_ms


def reassign_times(events: Sequence[Event]) -> list[int]:
    """For each task held by a worker when it crashed or froze: time until another worker
    started it."""
    out = []
    running: dict[str, dict[str, int]] = {}
    for i, e in enumerate(events):
        tasks = running.setdefault(e.actor, {})
        if e.kind == "started":
            tasks[e.data["task"]] = e.time_ms
        elif e.kind in ("effect", "duplicate_refused", "attempt_failed"):
            tasks.pop(e.data["task"], None)
        elif e.kind in ("crash", "pause") and tasks:
            for task in sorted(tasks):
                when = _started_elsewhere(events, i, task, e.actor)
                if when is not None:
                    out.append(when - e.time_ms)
            tasks.clear()
    return out


def _started_elsewhere(events: Sequence[Event], start: int, task: str, actor: str) -> int | None:
    for e in events[start + 1:]:
        if e.kind in ("started", "already_done") and e.data.get("task") == task \
                and e.actor != actor:
            return e.time_ms
    return None
