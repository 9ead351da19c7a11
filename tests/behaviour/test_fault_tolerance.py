"""Fault tolerance on both backends: a hung worker's task finishes elsewhere and its late result
is refused; a zombie leader's stale writes are all refused; a killed leader is replaced."""

from __future__ import annotations

from collections.abc import Sequence

from dtq.scenario.model import load
from dtq.scenario.sim import run_memory
from dtq.store import LEADER_LEASE, Write
from transports.memory_store import SimStore

from ..scenariokit import ROOT, Run, held


def test_a_frozen_worker_task_finishes_elsewhere_and_its_late_result_is_refused(run: Run) -> None:
    result = run("worker-hang.toml")
    s = held(result)
    assert s["tasks"]["duplicated"] == 0 and s["tasks"]["succeeded"] == 4
    ev = result.events
    paused = next(e for e in ev if e.kind == "pause" and e.actor == "worker-1")
    frozen = {e.data["task"] for e in ev if e.kind == "started" and e.actor == "worker-1"
              and e.time_ms <= paused.time_ms}
    assert frozen, "worker-1 held no task when it was frozen"
    for task in frozen:
        assert any(e.kind == "reassigned" and e.data["task"] == task for e in ev)
        [effect] = [e for e in ev if e.kind == "effect" and e.data["task"] == task]
        assert effect.actor != "worker-1"
    refused = {e.data["task"] for e in ev if e.actor == "worker-1"
               and e.kind in ("late_result_refused", "duplicate_refused")}
    assert frozen <= refused, "the frozen worker's late result was not refused"
    assert s["reassign_ms"] and max(s["reassign_ms"]) <= 2000  # detector timeout + 1 s


def test_a_zombie_leaders_stale_writes_are_all_refused(run: Run) -> None:
    s = held(run("zombie-leader.toml"))
    assert s["stale_writes"]["attempted"] > 0
    assert s["stale_writes"]["accepted"] == 0
    first, second = [x["epoch"] for x in s["leaders"]][:2]
    assert second == first + 1


def test_a_killed_leader_is_replaced_within_the_bound(run: Run) -> None:
    s = held(run("leader-crash.toml"))
    assert len(s["leaders"]) >= 2 and s["failover_ms"]
    assert max(s["failover_ms"]) <= 3000



class Unfenced(SimStore):
    """A broken store: it applies writes whatever their epoch."""

    def apply(self, writes: Sequence[Write], *, epoch: int, lease: str = LEADER_LEASE) -> int:
        return super().apply(writes, epoch=self.epoch(lease), lease=lease)


def test_the_checker_catches_a_store_that_accepts_stale_writes() -> None:
    scenario = load(ROOT / "scenarios" / "zombie-leader.toml")
    summary = run_memory(scenario, store=Unfenced()).summary
    assert not summary["ok"]
    assert summary["stale_writes"]["accepted"] >= 1
    assert any(v["invariant"] == "no_stale_write" for v in summary["violations"])


def test_dispatches_a_frozen_worker_held_unstarted_are_handed_on_by_the_leader() -> None:
    """A worker holding more dispatches than it runs (prefetch above its concurrency) reports
    them in its heartbeats; frozen, it stops heartbeating, and the leader hands every one of
    them to another worker as a new attempt once the detector suspects it, long before the
    broker would drop the silent connection and hand the old attempts out again."""
    from dtq.checker import check
    from dtq.coordinator import Coordinator, CoordinatorConfig
    from dtq.tasktypes import load_task_types
    from dtq.worker import Worker
    from transports.memory import NetworkConfig, Simulation

    from ..simkit import finished, spec

    sim = Simulation(3, network=NetworkConfig(broker_heartbeat_ms=60_000))
    cfg = CoordinatorConfig(lease_ttl_ms=2000, detector_timeout_ms=1000)
    sim.spawn("coordinator-1", lambda: Coordinator("coordinator-1", cfg),
              groups=("coordinators",))
    types = load_task_types(())
    for name, prefetch in (("worker-1", 8), ("worker-2", 1)):
        sim.spawn(name, lambda n=name: Worker(n, types, concurrency=1, heartbeat_ms=200),
                  groups=("workers",), prefetch=prefetch)
    sim.run(until_ms=500)
    for n in range(10):
        sim.submit(spec(n, type="sleep", payload={"ms": 300}))
    sim.run(until_ms=sim.now_ms + 150)
    sim.pause("worker-1")
    paused_at = sim.now_ms
    sim.run(until_ms=paused_at + 30_000, stop=lambda: len(finished(sim)) == 10)
    ev = sim.history.events
    handed_on = [e for e in ev if e.kind == "reassigned"
                 and e.data.get("reason") == "held by a suspected worker"]
    assert handed_on, "worker-1 held no unstarted dispatch when it froze"
    assert len(finished(sim)) == 10 and sim.now_ms < paused_at + 30_000
    assert all(e.time_ms - paused_at <= 2000 for e in handed_on)  # detector timeout + 1 s
    assert not [e for e in ev if e.kind == "connection_closed"]  # not the broker's doing
    result = check(ev)
    assert result.ok, result.violations
    assert result.counts.duplicated == 0 and result.counts.succeeded == 10
