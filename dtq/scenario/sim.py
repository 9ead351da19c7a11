"""Running scenarios on the memory backend.

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

from dtq.clock import VectorClock
from dtq.coordinator import Coordinator, CoordinatorConfig
from dtq.errors import ScenarioError
from dtq.history import Event, History
from dtq.poison import injections, record_injection
from dtq.scenario.faults import FAULTS, FaultTarget, Undo, bad_params, play
from dtq.scenario.links import Slowdown, SlowLinks
from dtq.scenario.model import TARGET_ROLES, FaultSpec, Scenario, finished_records
from dtq.scenario.summary import summarize
from dtq.scenario.workload import plan, workload_problem
from dtq.tasktypes import load_task_types
from dtq.transport import QUORUM_DELIVERY_LIMIT
from dtq.worker import Worker
from transports.memory import BROKER, STORE, CrashPoints, NetworkConfig, SimStore, Simulation

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
    sim.delivery_limit = QUORUM_DELIVERY_LIMIT if scenario.cluster.quorum else None
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


BROKER_FAILOVER_MS = 1000
"""kill_broker_node: how long the nodes take to reach another RabbitMQ node."""
STORE_FAILOVER_MS = 2000
"""redis_failover: how long the store is out of reach (promotion, then finding the primary)."""
PRIMARY_KILL_MS = 5000
"""kill_redis_primary: the same after a kill (the Sentinels must first see the primary down)."""


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

    # The testbed's service faults, as the nodes see them: the simulator has one broker and one
    # store, which stand for a RabbitMQ cluster and a replicated Redis.

    def kill_broker_node(self, f: FaultSpec, targets: list[str]) -> Undo:
        """Every node's broker connection drops (its unacked deliveries return) and comes back
        after `BROKER_FAILOVER_MS`, on another node of the cluster; the queues, replicated,
        keep every confirmed message."""
        for name in sorted(self.sim.nodes):
            self.sim.drop_connection(name, reconnect_ms=BROKER_FAILOVER_MS)
        return None

    def restart_broker_node(self, f: FaultSpec, targets: list[str]) -> Undo:
        return None  # the nodes moved on to the other nodes of the cluster already

    def redis_failover(self, f: FaultSpec, targets: list[str]) -> Undo:
        return self._store_outage(STORE_FAILOVER_MS)

    def kill_redis_primary(self, f: FaultSpec, targets: list[str]) -> Undo:
        return self._store_outage(PRIMARY_KILL_MS)

    def _store_outage(self, ms: int) -> Undo:
        """Every node is cut from the store for `ms` (the promotion of the replica, and the
        nodes finding it); nothing acknowledged is lost (writes wait for the replica)."""
        nodes = sorted(self.sim.nodes)
        self.sim.partition(nodes, [STORE])
        self.sim.after(ms, self.sim.unpartition, nodes, [STORE])
        return None
