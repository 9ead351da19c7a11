"""Running scenarios on the memory backend, and the JSON summary both backends print.

`run_memory` builds a simulated cluster, plays the workload and the fault timeline in virtual
time, stops when every task has finished (plus a settle period that would reveal late
duplicates) or at the deadline, then checks the history.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from dtq.checker import check
from dtq.clock import VectorClock
from dtq.coordinator import Coordinator, CoordinatorConfig
from dtq.errors import ScenarioError
from dtq.history import Event, History, digest
from dtq.poison import injections, poison_summary, poison_violations, record_injection
from dtq.scenario.faults import FAULTS, FaultTarget, Undo, bad_params, play
from dtq.scenario.links import Slowdown, SlowLinks
from dtq.scenario.model import TARGET_ROLES, FaultSpec, Scenario, finished_records
from dtq.scenario.workload import plan, workload_problem
from dtq.tasktypes import load_task_types
from dtq.worker import Worker
from transports.memory import BROKER, CrashPoints, NetworkConfig, SimStore, Simulation

TERMINAL_KINDS = frozenset({"succeeded", "failed", "rejected", "cancelled"})

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


def check_supported(scenario: Scenario, transport: str) -> None:
    """Refuse, before anything starts, a fault with bad parameters or one `transport` cannot
    play, or a workload whose tasks break the submission rules; the error names the file, the
    fault or task and why."""
    problem = workload_problem(scenario)
    if problem is not None:
        raise ScenarioError(f"{scenario.path}: {problem}")
    for i, fault in enumerate(scenario.faults):
        bad = _bad_target(scenario, fault) or bad_params(fault)
        if bad is not None:
            raise ScenarioError(f"{scenario.path}: fault[{i}].{bad[0]}: {bad[1]}")
        reason = FAULTS[fault.action].refusal(transport, fault)
        if reason:
            raise ScenarioError(
                f"{scenario.path}: fault[{i}].action: {fault.action!r} cannot be played on the "
                f"{transport} backend: {reason}")


def _bad_target(scenario: Scenario, f: FaultSpec) -> tuple[str, str] | None:
    names = coordinator_names(scenario) + worker_names(scenario)
    groups = ("coordinators", "workers") if f.action == "partition" else ()
    if f.target is None or f.target in (*TARGET_ROLES, *groups, *names):
        return None
    return "target", (f"no node or role {f.target!r} in this cluster (nodes: "
                      f"{', '.join(names)}; roles: {', '.join(TARGET_ROLES)})")


def build_simulation(
    scenario: Scenario, seed: int, *, trace: bool = False, store: SimStore | None = None,
) -> Simulation:
    net = NetworkConfig(**scenario.network)
    crash_points = CrashPoints.from_mapping(scenario.crash_points)
    sim = Simulation(seed, network=net, crash_points=crash_points, trace=trace, store=store)
    sim.store_read_us = scenario.store.read_us_per_record
    for rec in finished_records(scenario.store.finished_records):
        sim.store.put_record(rec)
    types = load_task_types(scenario.cluster.task_modules)
    c = scenario.cluster
    cfg = CoordinatorConfig(lease_ttl_ms=c.lease_ttl_ms, detector_timeout_ms=c.detector_timeout_ms)
    for name in coordinator_names(scenario):
        sim.spawn(name, functools.partial(Coordinator, name, cfg), groups=("coordinators",))
    for name in worker_names(scenario):
        worker = functools.partial(Worker, name, types, heartbeat_ms=c.heartbeat_ms)
        sim.spawn(name, worker, groups=("workers",),
                  prefetch=scenario.cluster.worker_prefetch)
    return sim


def run_memory(
    scenario: Scenario, seed: int | None = None, *, trace: bool = False,
    store: SimStore | None = None,
) -> RunResult:
    """Run a scenario on the simulator; with `trace`, record every message for diagrams;
    `store` replaces the simulated store (tests use broken ones to show the checker fails)."""
    seed = scenario.seed if seed is None else seed
    check_supported(scenario, "memory")
    started = time.perf_counter()
    sim = build_simulation(scenario, seed, trace=trace, store=store)
    planned = plan(scenario, seed)
    for p in planned:
        sim.at(p.at_ms, sim.submit, p.spec)
    faults: FaultTarget = SimFaults(sim, scenario)
    for fault in scenario.faults:
        sim.at(fault.at_ms, play, faults, fault)
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
            elif e.kind == "inject" and "task" in e.data:  # a forged submission must end too
                self.expected += 1
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


def all_accepted(events: Sequence[Event], scenario: Scenario) -> bool:
    """A leader has accepted as many tasks as the workload submits (`when = "accepted"`)."""
    accepted = {e.data.get("task") for e in events if e.kind == "accepted"}
    return len(accepted) >= len(plan(scenario, scenario.seed))


def _each(fn: Callable[[str], None], targets: list[str]) -> Callable[[], None]:
    def run() -> None:
        for t in targets:
            fn(t)

    return run


def _links(f: FaultSpec) -> list[str]:
    return list(f.params.get("from", [BROKER]))


class SimFaults:
    """The simulator as a `FaultTarget`: each fault kind played on a `Simulation`."""

    def __init__(self, sim: Simulation, scenario: Scenario) -> None:
        self.sim = sim
        self.scenario = scenario

    # --- around a fault ---------------------------------------------------------------------

    def targets(self, fault: FaultSpec) -> list[str]:
        return resolve_target(self.sim, fault.target)

    def busy(self, targets: list[str]) -> bool:
        """Every target is alive and running a task (a worker's `running` table is not
        empty)."""
        for t in targets:
            node = self.sim.nodes.get(t)
            actor = node.cell.actor if node is not None and node.alive and node.cell else None
            if not getattr(actor, "running", None):
                return False
        return True

    def accepted(self) -> bool:
        return all_accepted(self.sim.history.events, self.scenario)

    def too_late(self) -> bool:
        return self.sim.now_ms >= self.scenario.expect.deadline_ms

    def later(self, fault: FaultSpec) -> None:
        self.sim.after(1, play, self, fault)  # look again after the next virtual ms

    def record_fault(self, fault: FaultSpec, data: Mapping[str, Any]) -> None:
        self.sim.history.record("sim", "fault", VectorClock(), dict(data))

    def after(self, delay_ms: int, undo: Callable[[], None]) -> None:
        self.sim.after(delay_ms, undo)

    def _nodes(self, targets: list[str], f: FaultSpec) -> list[str]:
        """The fault's targets; a fault that names no target applies to every node."""
        return targets if f.target is not None else sorted(self.sim.nodes)

    # --- the faults -------------------------------------------------------------------------

    def kill(self, f: FaultSpec, targets: list[str]) -> Undo:
        for t in targets:
            self.sim.crash(t, "killed by scenario")
        return _each(self.sim.restart, targets)

    def crash(self, f: FaultSpec, targets: list[str]) -> Undo:
        return self.kill(f, targets)

    def restart(self, f: FaultSpec, targets: list[str]) -> Undo:
        _each(self.sim.restart, targets)()
        return None

    def pause(self, f: FaultSpec, targets: list[str]) -> Undo:
        _each(self.sim.pause, targets)()
        return _each(self.sim.resume, targets)

    def resume(self, f: FaultSpec, targets: list[str]) -> Undo:
        _each(self.sim.resume, targets)()
        return None

    def partition(self, f: FaultSpec, targets: list[str]) -> Undo:
        self.sim.partition(self._nodes(targets, f), _links(f))
        return self.sim.heal

    def heal(self, f: FaultSpec, targets: list[str]) -> Undo:
        self.sim.heal()
        return None

    def drop_connection(self, f: FaultSpec, targets: list[str]) -> Undo:
        _each(self.sim.drop_connection, self._nodes(targets, f))()
        return None

    def reset_peer(self, f: FaultSpec, targets: list[str]) -> Undo:
        """Connections reset for a while: the broker drops the node's connection (its unacked
        deliveries return) and the node cannot reconnect, or reach the store, until it ends."""
        nodes, links = self._nodes(targets, f), _links(f)
        self.sim.partition(nodes, links)
        if BROKER in links:
            self.sim.after(f.params.get("timeout", 0), _each(self.sim.drop_connection, nodes))
        return self.sim.heal

    def latency(self, f: FaultSpec, targets: list[str]) -> Undo:
        """latency, bandwidth, slicer: extra delay on every message of the nodes' broker
        links."""
        return SlowLinks.of(self.sim).add(Slowdown.of(f, self._nodes(targets, f)))

    bandwidth = slicer = latency

    def _network_knob(self, field: str, f: FaultSpec) -> Undo:
        net = self.sim.network
        old = getattr(net, field)
        setattr(net, field, f.params.get("probability", 0))
        return lambda: setattr(net, field, old)

    def duplicate(self, f: FaultSpec, targets: list[str]) -> Undo:
        return self._network_knob("duplicate", f)

    def drop(self, f: FaultSpec, targets: list[str]) -> Undo:
        return self._network_knob("drop", f)

    def reorder(self, f: FaultSpec, targets: list[str]) -> Undo:
        return self._network_knob("reorder", f)

    def lose_store_data(self, f: FaultSpec, targets: list[str]) -> Undo:
        self.sim.lose_store_data()
        return None

    def inject(self, f: FaultSpec, targets: list[str]) -> Undo:
        """Malformed and forged messages, published as bytes to a queue or to the targets'
        mailboxes; a node decodes them when they are delivered, as a process does."""
        start = sum(1 for e in self.sim.history.events if e.kind == "inject")
        for address, forged in injections(f.params, targets, start=start):
            record_injection(self.sim.history.record, address, forged)
            self.sim.send_bytes(address, forged.body)
        return None


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
    violations += poison_violations(events, dead_lettered_min=scenario.expect.dead_lettered_min,
                                    crashes_max=scenario.expect.crashes_max)
    want_refused = scenario.expect.stale_writes_refused_min
    if want_refused is not None and result.stale_writes[0] < want_refused:
        violations.append({"invariant": "expectation",
                           "detail": f"expected at least {want_refused} stale write(s) to be "
                                     f"attempted and refused, saw {result.stale_writes[0]}"})
    return {
        "scenario": scenario.name, "transport": transport, "seed": seed,
        "ok": not violations, "tasks": result.counts.to_json(), "violations": violations,
        "leaders": [{"epoch": e, "actor": a} for e, a in result.leaders],
        "failover_ms": failover, "reassign_ms": reassign,
        "stale_writes": {"attempted": result.stale_writes[0],
                         "accepted": result.stale_writes[1]},
        "causality": result.causality,
        "once": result.once.to_json(),
        "history_digest": digest(events), "virtual_ms": virtual_ms, "wall_ms": wall_ms,
        "failures": failure_reasons(events),
        **poison_summary(events),
    }


MAX_FAILURES_LISTED = 20
"""A summary names the first this many failed tasks and their reasons (the counts say how many)."""


def failure_reasons(events: Sequence[Event]) -> list[dict[str, str]]:
    """The first `MAX_FAILURES_LISTED` tasks that failed (or were rejected), with the reason
    their record gives, in the order they ended."""
    out: dict[str, str] = {}
    for e in events:
        if len(out) >= MAX_FAILURES_LISTED:
            break
        if e.kind in ("failed", "rejected") and e.data.get("task") not in out:
            out[str(e.data.get("task"))] = str(e.data.get("reason") or e.kind)
    return [{"task": task, "reason": reason} for task, reason in out.items()]


def failure_lines(summary: Mapping[str, Any], shown: int = 5) -> list[str]:
    """The scenario table's lines on failed tasks: how many, then some of them and why."""
    failures = summary.get("failures") or []
    if not failures:
        return []
    total = summary["tasks"].get("failed", len(failures))
    lines = [f"  failures  {total} task{'s' if total != 1 else ''} failed"]
    lines += [f"    {f['task']}: {f['reason']}" for f in failures[:shown]]
    if total > shown:
        lines.append(f"    ... {total - shown} more (--json lists the first "
                     f"{MAX_FAILURES_LISTED})")
    return lines


def _expectations(
    scenario: Scenario, counts: dict[str, int], failover: list[int], reassign: list[int],
) -> list[dict[str, Any]]:
    """The scenario's own `[expect]` bounds, each violation explained in plain words."""
    ex = scenario.expect
    out = [_count_violation(key, want, counts) for key in ("succeeded", "failed")
           if (want := getattr(ex, key)) is not None and counts[key] != want]
    if ex.failover_ms_max is not None and any(f > ex.failover_ms_max for f in failover):
        out.append({"invariant": "failover_bound", "detail": (
            f"after the leader was lost, {max(failover)} ms passed before a new leader acted, "
            f"but [expect] failover_ms_max allows {ex.failover_ms_max} ms (measured: "
            f"{failover}). A standby can take over only when the old leader's lease has "
            f"expired, so a failover takes about cluster.lease_ttl_ms "
            f"({scenario.cluster.lease_ttl_ms} ms) plus a standby's next try")})
    if ex.reassign_ms_max is not None and any(r > ex.reassign_ms_max for r in reassign):
        out.append({"invariant": "reassign_bound", "detail": (
            f"a task held by a crashed or frozen worker waited {max(reassign)} ms before "
            f"another worker started it, but [expect] reassign_ms_max allows "
            f"{ex.reassign_ms_max} ms (measured: {reassign}). A killed worker's tasks come "
            f"back when its connection closes; a frozen worker's only when the failure "
            f"detector (or the broker's heartbeat) gives up on it")})
    return out


def _count_violation(key: str, want: int, counts: dict[str, int]) -> dict[str, Any]:
    got = counts[key]
    why = []
    if counts["lost"]:
        why.append(f"{counts['lost']} never finished before the deadline")
    other = "failed" if key == "succeeded" else "succeeded"
    if counts[other]:
        why.append(f"{counts[other]} {other}")
    because = f" ({', '.join(why)})" if why else ""
    return {"invariant": "expectation",
            "detail": f"[expect] {key} = {want}, but {got} of {counts['submitted']} submitted "
                      f"tasks {key}{because}"}


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


def running_tasks(events: Sequence[Event]) -> dict[str, dict[str, int]]:
    """Actor -> the tasks it started and has not ended (when each started), at the end of
    `events` (a crash or restart of the actor forgets its tasks)."""
    running: dict[str, dict[str, int]] = {}
    for e in events:
        _track(running.setdefault(e.actor, {}), e)
    return running


def _track(tasks: dict[str, int], e: Event) -> None:
    if e.kind == "started":
        tasks[e.data["task"]] = e.time_ms
    elif e.kind in ("effect", "duplicate_refused", "attempt_failed"):
        tasks.pop(e.data["task"], None)
    elif e.kind in ("crash", "restart", "worker_started"):
        tasks.clear()


def reassign_times(events: Sequence[Event]) -> list[int]:
    """For each task held by a worker when it crashed or froze: time until the task was handed
    on — the leader re-dispatched it, or another worker started it (after a redelivery)."""
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
        if e.data.get("task") != task:
            continue
        if e.kind == "reassigned" or (e.kind in ("started", "already_done") and e.actor != actor):
            return e.time_ms
    return None
