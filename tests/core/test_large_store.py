"""A takeover costs what is unfinished, and a leader forgets what finished.

The simulator charges store reads by the records they return, so a store of 100,000 finished
records makes a leader that loads them all lose its lease; the leader that loads only the
unfinished ones takes over within it. A finished task leaves the leader's memory once nothing
unfinished depends on it, and is read from the store when a submission needs it again.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from dtq.coordinator import Coordinator
from dtq.scenario.model import load
from dtq.scenario.sim import run_memory
from dtq.task import TaskSpec, TaskState

from ..scenariokit import ROOT
from ..simkit import events, make_sim, run_until_done, taking_over

LARGE = ROOT / "scenarios" / "load" / "large-store-takeover.toml"


def _load_everything(self: Coordinator, ctx: Any, after: str | None) -> list[Any]:
    """The takeover before: every record, finished ones included, in one handler run."""
    out: list[Any] = []
    while page := ctx.store.scan_tasks(after=after, limit=1000):
        out += page
        after = page[-1].id
    return out


def test_a_takeover_over_a_large_store_stays_within_the_lease() -> None:
    result = run_memory(load(LARGE))
    assert result.ok, result.summary["violations"]
    done = [e for e in result.events if e.kind == "takeover_done"]
    assert [e.actor for e in done] == ["coordinator-1", "coordinator-2"]
    assert all(e.data["records"] <= 40 for e in done)  # the unfinished ones only
    assert done[1].data["ms"] < 2000 * 8 // 10
    assert not [e for e in result.events if e.kind == "abdicated"]


def test_loading_every_record_loses_the_lease_over_the_same_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Coordinator, "_scan_chunk", _load_everything)
    result = run_memory(load(LARGE))
    assert not result.ok
    lost = [e for e in result.events if e.kind == "abdicated" and e.data["reason"] == "lease lost"]
    assert len(lost) > 5  # every new leader in turn: the cluster has no leader that lasts


def test_without_the_read_cost_loading_everything_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The failure above is the reads' cost: free reads hide it, as they did before."""
    monkeypatch.setattr(Coordinator, "_scan_chunk", _load_everything)
    scenario = load(LARGE)
    free = attrs.evolve(scenario, store=attrs.evolve(scenario.store, read_us_per_record=0))
    assert run_memory(free).ok


def _leader(sim: Any) -> Coordinator:
    [first] = events(sim, "leader")
    actor = sim.nodes[first.actor].cell.actor
    assert isinstance(actor, Coordinator)
    return actor


def test_a_finished_task_leaves_the_leaders_memory() -> None:
    sim = make_sim(1, workers=2)
    for i in range(30):
        sim.submit(TaskSpec(id=f"a{i:02d}", type="echo", payload=i))
    sim.submit(TaskSpec(id="b", type="echo", deps=("a00", "a01")))
    assert run_until_done(sim, 31).ok
    leader = _leader(sim)
    assert leader.tasks == {} and not leader.dependents


def test_a_finished_dependency_is_held_while_a_task_waits_for_it() -> None:
    sim = make_sim(1, workers=1)
    sim.submit(TaskSpec(id="first", type="echo"))
    sim.submit(TaskSpec(id="slow", type="sleep", payload={"ms": 5000}))
    sim.submit(TaskSpec(id="after", type="echo", deps=("first", "slow")))
    sim.run(until_ms=2000)
    leader = _leader(sim)
    assert leader.tasks["first"].state is TaskState.SUCCEEDED
    assert leader.dependents["first"] == {"after"}
    assert run_until_done(sim, 3).ok
    assert leader.tasks == {}


@pytest.mark.parametrize("read_store", [True, False])
def test_a_forgotten_task_is_read_from_the_store(
    monkeypatch: pytest.MonkeyPatch, read_store: bool,
) -> None:
    """A dependency on a forgotten task runs after it, and a submission of a forgotten task
    again does not run it again; without the store read, both go wrong."""
    if not read_store:
        monkeypatch.setattr(Coordinator, "_get",
                            lambda self, task_id, ctx: self.tasks.get(task_id))
    sim = make_sim(1, workers=1)
    sim.submit(TaskSpec(id="dep", type="echo", payload=1))
    sim.run(until_ms=2000)
    assert "dep" not in _leader(sim).tasks
    sim.submit(TaskSpec(id="dep", type="echo", payload=1))
    sim.submit(TaskSpec(id="child", type="echo", deps=("dep",)))
    result = run_until_done(sim, 2, deadline_ms=60_000)
    runs = len(events(sim, "dispatched", task="dep"))
    child = [e.kind for e in sim.history.events if e.data.get("task") == "child"
             and e.kind in ("succeeded", "rejected")]
    if read_store:
        assert result.ok, result.violations
        assert runs == 1 and child == ["succeeded"]
    else:
        assert runs == 2 or child != ["succeeded"]


def _one_page(self: Coordinator, ctx: Any, after: str | None) -> list[Any]:
    """A load without pages: every unfinished record in one handler run."""
    return list(ctx.store.scan_unfinished(after=after, limit=10**9)) if after is None else []


@pytest.mark.parametrize("paged", [True, False])
def test_the_lease_is_renewed_between_pages_of_a_long_load(
    monkeypatch: pytest.MonkeyPatch, paged: bool,
) -> None:
    """10,000 tasks in flight at 400 us a record: 4 s of reads against a 3 s lease. Loaded a
    page at a time the leader renews between pages and completes its view; in one page it
    loses the lease first."""
    if not paged:
        monkeypatch.setattr(Coordinator, "_scan_chunk", _one_page)
    sim = taking_over(10_000)
    sim.run(until_ms=20_000,
            stop=lambda: bool(events(sim, "takeover_done") or events(sim, "abdicated")))
    done, abdicated = events(sim, "takeover_done"), events(sim, "abdicated")
    if paged:
        assert not abdicated and len(done) == 1
        assert done[0].data["records"] == 10_000 and done[0].data["ms"] >= 3600
    else:
        assert abdicated and not done
