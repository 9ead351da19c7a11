"""Whole runs in which the store loses its data (a restart without persistence), on the
simulator: fencing holds, nothing is lost silently, the loss is reported. The real-backend run
is in tests/runtime/test_store_data_loss_real.py.

Each guarantee comes with a mutation that removes it and a check that the run then fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest

from dtq import recovery
from dtq.envelope import WORK_QUEUE
from dtq.scenario.model import load
from dtq.scenario.sim import RunResult, run_memory
from dtq.task import TaskState
from tests.simkit import events, taking_over
from transports.memory_store import SimStore

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "store-data-loss.toml"


def _run(path: Path = SCENARIO, **changes: Any) -> RunResult:
    scenario = load(path)
    return run_memory(attrs.evolve(scenario, **changes) if changes else scenario)


def _kinds(result: RunResult, kind: str) -> list[dict[str, Any]]:
    return [dict(e.data) for e in result.events if e.kind == kind]


def _invariants(result: RunResult) -> set[str]:
    return {v["invariant"] for v in result.summary["violations"]}


# --- the scenario, and what removing each guarantee does --------------------------------------


def test_the_leader_reseeds_the_store_and_every_task_completes() -> None:
    result = _run()
    assert result.ok, result.summary["violations"]
    epochs = [x["epoch"] for x in result.summary["leaders"]]
    assert epochs == sorted(set(epochs)) and epochs[-1] > 2  # above the epoch before the loss
    reseeded = [d for d in _kinds(result, "store_data_lost") if d.get("recovered")]
    assert len(reseeded) == 1 and reseeded[0]["tasks_kept"] > 0
    assert reseeded[0]["epoch"] == epochs[-1]
    sim = result.sim
    assert sim is not None
    assert sim.store.data_losses() == [{k: v for k, v in reseeded[0].items()}]
    assert sim.store.incarnation() == reseeded[0]["incarnation"]
    # every task the leader held is in the store again, and every task finished (a finished
    # task the leader had forgotten, nothing unfinished depending on it, is not re-seeded)
    assert all(r.state is TaskState.SUCCEEDED for r in sim.store.scan_tasks())
    assert reseeded[0]["tasks_kept"] <= len(sim.store.scan_tasks())
    assert len(sim.store.scan_tasks()) <= result.summary["tasks"]["submitted"]
    # workers and the standby noticed too
    noticed = {e.actor for e in result.events if e.kind == "store_data_lost"}
    assert {"worker-1", "worker-2", "worker-3", "coordinator-1", "coordinator-2"} <= noticed


def test_without_the_floor_the_epoch_goes_back_and_the_checker_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grant = SimStore._grant
    monkeypatch.setattr(SimStore, "_grant", lambda self, name, holder, ttl_ms, floor:
                        grant(self, name, holder, ttl_ms, 0))
    result = _run()
    assert not result.ok
    assert {"epochs_grow", "one_leader_per_epoch"} & _invariants(result)


def test_without_the_reseed_accepted_tasks_are_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery, "write_refused", lambda coord, ctx, *_: None)
    result = _run()
    assert not result.ok and result.summary["tasks"]["lost"] > 0


# --- what cannot be kept is reported, nothing waits forever ------------------------------------


def test_with_no_leader_left_the_loss_is_reported_and_later_tasks_run() -> None:
    """The leader dies with the data (killed as the store loses it): nobody holds a view. The
    standby waits out the grace period, starts the namespace again above every epoch seen and
    reports the loss as unrecovered; the tasks accepted before are the ones reported lost."""
    scenario = load(SCENARIO)
    kill = attrs.evolve(scenario.faults[0], at_ms=2599, duration_ms=None)
    result = _run(faults=(*scenario.faults, kill),
                  expect=attrs.evolve(scenario.expect, succeeded=None))
    reports = [d for d in _kinds(result, "store_data_lost") if "recovered" in d]
    assert reports and reports[-1]["recovered"] is False
    epochs = [x["epoch"] for x in result.summary["leaders"]]
    assert epochs == sorted(set(epochs))
    assert not {"epochs_grow", "one_leader_per_epoch"} & _invariants(result)
    sim = result.sim
    assert sim is not None and sim.store.data_losses()[-1]["recovered"] is False
    assert not [r for r in sim.store.scan_tasks() if not r.state.terminal]  # none stuck
    lost = result.summary["tasks"]["lost"]
    accepted_before = {d["task"] for e in result.events if e.kind == "accepted"
                       and e.time_ms < 2600 for d in [e.data]}
    assert 0 < lost <= len(accepted_before)


def _every_coordinator_restarts() -> RunResult:
    """Leader and standby are killed as the store loses its data and come back at once: no
    coordinator remembers the namespace, so the first to come back cannot tell the empty store
    from a new namespace. Only the workers know."""
    scenario = load(SCENARIO)
    kills = tuple(attrs.evolve(scenario.faults[0], at_ms=2599, target=target, duration_ms=100)
                  for target in ("leader", "standby"))
    return _run(faults=(*scenario.faults, *kills),
                expect=attrs.evolve(scenario.expect, succeeded=None))


def test_with_every_coordinator_restarted_the_workers_tell_the_loss() -> None:
    result = _every_coordinator_restarts()
    epochs = [x["epoch"] for x in result.summary["leaders"]]
    assert epochs == sorted(set(epochs)) and epochs[-1] > 2  # above the clock, never back to 1
    assert not {"epochs_grow", "one_leader_per_epoch"} & _invariants(result)
    sim = result.sim
    assert sim is not None
    reports = sim.store.data_losses()
    assert len(reports) == 1 and reports[0]["recovered"] is False, reports
    assert reports[0]["told_by"].startswith("worker-")
    assert not [r for r in sim.store.scan_tasks() if not r.state.terminal]  # none stuck


def test_without_the_clock_floor_a_restarted_coordinator_takes_an_old_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    acquire = SimStore.acquire_lease
    monkeypatch.setattr(SimStore, "acquire_lease", lambda self, *a, above_clock=False, **kw:
                        acquire(self, *a, **kw))
    assert {"epochs_grow"} & _invariants(_every_coordinator_restarts())


def test_without_the_workers_telling_the_loss_goes_unreported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(recovery, "told_by_worker", lambda *_: None)
    sim = _every_coordinator_restarts().sim
    assert sim is not None and sim.store.data_losses() == []


def test_a_dispatch_gone_with_the_data_is_handed_out_again_after_its_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The re-seed keeps in-flight tasks as they are (their dispatches are in the broker), and
    sweeps them after their timeout: one whose dispatch is gone gets a new attempt. Here the
    tasks are long enough for dispatches to queue up, and the loss takes the queued ones too
    (never delivered, so no worker can report them: only the sweep can hand them out again)."""
    scenario = load(SCENARIO)
    template = attrs.evolve(scenario.workload.template, payload={"ms": 400}, timeout_ms=1500)
    dropped: list[str] = []
    lose = type(scenario.faults[1])(at_ms=2600, action="lose_store_data")

    from dtq.scenario import sim as runner

    real = runner.SimFaults.lose_store_data

    def lose_queued_dispatches_too(faults: Any, f: Any, targets: list[str]) -> None:
        queue = faults.sim.queues[WORK_QUEUE]
        dropped.extend(env.body.spec.id for _, _, env in queue.ready)
        queue.ready.clear()
        real(faults, f, targets)

    monkeypatch.setattr(runner.SimFaults, "lose_store_data", lose_queued_dispatches_too)
    changes = {"workload": attrs.evolve(scenario.workload, template=template),
               "faults": (scenario.faults[0], lose),
               "expect": attrs.evolve(scenario.expect, deadline_ms=30_000)}
    result = _run(**changes)
    assert dropped
    assert result.ok, result.summary["violations"]
    swept = {d["task"] for d in _kinds(result, "reassigned")
             if d["reason"] == "no progress since the store lost its data"}
    assert set(dropped) <= swept

    monkeypatch.setattr(recovery, "sweep", lambda coord, msg, ctx: None)
    stalled = _run(**changes)
    assert stalled.summary["tasks"]["lost"] >= len(set(dropped))


def test_a_new_leader_hands_out_again_a_dispatch_that_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same sweep after any takeover: a leader that crashed between persisting a new
    attempt and sending it left a record no dispatch stands for (played here by dropping the
    queued dispatches as the leader is killed); the next leader hands it out again after the
    task's timeout instead of waiting forever."""
    scenario = load(SCENARIO)
    template = attrs.evolve(scenario.workload.template, payload={"ms": 400}, timeout_ms=1500)
    dropped: list[str] = []

    from dtq.scenario import sim as runner

    real = runner.SimFaults.kill

    def kill_and_drop(faults: Any, f: Any, targets: list[str]) -> Any:
        queue = faults.sim.queues[WORK_QUEUE]
        dropped.extend(env.body.spec.id for _, _, env in queue.ready)
        queue.ready.clear()
        return real(faults, f, targets)

    monkeypatch.setattr(runner.SimFaults, "kill", kill_and_drop)
    kill = attrs.evolve(scenario.faults[0], at_ms=2000)
    changes = {"workload": attrs.evolve(scenario.workload, template=template),
               "faults": (kill,), "expect": attrs.evolve(scenario.expect, deadline_ms=30_000)}
    result = _run(**changes)
    assert dropped
    assert result.ok, result.summary["violations"]
    swept = {d["task"] for d in _kinds(result, "reassigned")
             if d["reason"] == "no progress since this leader took over"}
    assert set(dropped) <= swept

    monkeypatch.setattr(recovery, "sweep", lambda coord, msg, ctx: None)
    assert _run(**changes).summary["tasks"]["lost"] >= len(set(dropped))


# --- what a re-seed may and may not claim -------------------------------------------------------


def _loss_during_a_long_load() -> Any:
    """5,000 tasks in flight at 400 us a record: a new leader loads its view for about 2 s, a
    page at a time, and the store loses its data 1 s in."""
    sim = taking_over(5_000)
    sim.run(until_ms=1000)
    assert not events(sim, "takeover_done"), "the load ended before the loss"
    sim.lose_store_data()
    sim.run(until_ms=6000)
    return sim


def test_a_leader_still_loading_its_view_steps_down_rather_than_reseed_a_part() -> None:
    sim = _loss_during_a_long_load()
    [stepped] = events(sim, "abdicated")
    assert "still loading" in stepped.data["reason"]
    assert not [e for e in events(sim, "store_data_lost") if e.data.get("recovered")]


def test_without_the_step_down_a_partial_view_is_reported_as_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(recovery, "loading", lambda coord: False)
    sim = _loss_during_a_long_load()
    [report] = [e.data for e in events(sim, "store_data_lost") if e.data.get("recovered")]
    assert report["tasks_kept"] < 5_000  # the rest vanished, reported as kept


def _succeeded_without_a_record(seed: int) -> list[str]:
    """Tasks a leader recorded succeeded after the store lost its data whose record the store
    does not hold after the run (one that ended before the loss and was forgotten is gone with
    it: the report says the re-seed kept finished tasks it held only)."""
    scenario = load(SCENARIO)
    kill, lose = scenario.faults  # the loss at times between submissions too
    lose = attrs.evolve(lose, at_ms=lose.at_ms + seed % 40)
    result = run_memory(attrs.evolve(scenario, faults=(kill, lose)), seed)
    sim = result.sim
    assert sim is not None
    [wiped] = [i for i, e in enumerate(result.events) if e.kind == "store_data_wiped"]
    ended = {e.data["task"] for e in result.events[wiped:] if e.kind == "succeeded"}
    return sorted(t for t in ended if sim.store.get_task(t) is None)


SEEDS = range(1, 41)


def test_the_reseed_keeps_the_finished_records_of_the_refused_batch() -> None:
    """The batch whose write the loss refused may end a task the leader then forgot (nothing
    depended on it): its record is in no view, only in that batch."""
    missing = {seed: _succeeded_without_a_record(seed) for seed in SEEDS}
    assert not any(missing.values()), missing


def test_without_the_refused_batch_a_finished_record_is_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reseed = recovery._reseed
    monkeypatch.setattr(recovery, "_reseed", lambda coord, ctx, epoch, report, unapplied=():
                        reseed(coord, ctx, epoch, report, ()))
    assert any(_succeeded_without_a_record(seed) for seed in SEEDS)
