"""Causality: dependencies, causal delivery of submissions, the worker's causality gate."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtq.coordinator import Coordinator, CoordinatorConfig
from dtq.scenario.model import load
from dtq.scenario.sim import run_memory
from dtq.scenario.swarm import swarm
from dtq.task import TaskSpec
from dtq.tasktypes import load_task_types
from dtq.worker import Worker
from transports.memory import NetworkConfig, Simulation

from ..simkit import events, make_sim, run_until_done

ROOT = Path(__file__).resolve().parents[2]
RANDOM_DAG = ROOT / "scenarios" / "dag-random.toml"


def chain(n: int, prefix: str = "c") -> list[TaskSpec]:
    return [TaskSpec(id=f"{prefix}{i:04d}", type="echo", payload=i,
                     deps=(f"{prefix}{i - 1:04d}",) if i else ()) for i in range(n)]


@pytest.mark.parametrize("seed", range(1, 101))
def test_random_dags_never_run_a_task_early(seed: int) -> None:
    s = run_memory(load(RANDOM_DAG), seed).summary
    how = f"reproduce: dtq scenario run {RANDOM_DAG} --seed {seed}"
    assert s["ok"], f"{s['violations']}\n{how}"
    c = s["causality"]
    assert c["violations"] == 0 and c["detected"] == c["provoked"] > 0, how


def test_turning_the_causality_check_off_makes_the_checker_fail() -> None:
    failures = 0
    for seed in range(1, 6):
        sim = Simulation(seed, network=NetworkConfig(delay_ms=2, jitter_ms=5,
                                                     early_dispatch=0.5))
        types = load_task_types()
        sim.spawn("coordinator-1", lambda: Coordinator("coordinator-1", CoordinatorConfig()))
        for i in (1, 2):
            sim.spawn(f"worker-{i}", lambda i=i, t=types: Worker(f"worker-{i}", t,
                                                                 check_causality=False),
                      prefetch=2)
        for spec in chain(30):
            sim.submit(spec)
        result = run_until_done(sim, 30)
        failures += any(v.invariant == "dependency_order" for v in result.violations)
    assert failures >= 1, "with the check off, an early dispatch should have run a task early"


def test_the_same_runs_with_the_check_on_pass() -> None:
    for seed in range(1, 6):
        sim = make_sim(seed, workers=2, prefetch=2, delay_ms=2, jitter_ms=5,
                       early_dispatch=0.5)
        for spec in chain(30):
            sim.submit(spec)
        result = run_until_done(sim, 30)
        assert result.ok, result.violations
        assert events(sim, "causality_violation")


def test_a_chain_of_1000_runs_in_order() -> None:
    sim = make_sim(1, workers=3, prefetch=2, delay_ms=1, jitter_ms=3, reorder=0.2)
    for spec in chain(1000):
        sim.submit(spec)
    result = run_until_done(sim, 1000, deadline_ms=600_000)
    assert result.ok and result.counts.succeeded == 1000
    order = [e.data["task"] for e in events(sim, "effect")]
    assert order == [f"c{i:04d}" for i in range(1000)]


def test_fan_out_fan_in_and_dependency_results() -> None:
    sim = make_sim(1, workers=3, modules=("tests.fixtures.usertasks",))
    sim.submit(TaskSpec(id="root", type="echo", payload=1))
    for i in range(5):
        sim.submit(TaskSpec(id=f"leaf{i}", type="echo", payload=i, deps=("root",)))
    sim.submit(TaskSpec(id="sum", type="sum-deps", deps=tuple(f"leaf{i}" for i in range(5))))
    assert run_until_done(sim, 7).ok
    assert sim.store.get_result("sum").value == 0 + 1 + 2 + 3 + 4


def test_a_failed_dependency_fails_its_dependents() -> None:
    sim = make_sim(1, workers=2)
    sim.submit(TaskSpec(id="bad", type="nope", max_attempts=1))
    sim.submit(TaskSpec(id="child", type="echo", deps=("bad",)))
    sim.submit(TaskSpec(id="grandchild", type="echo", deps=("child",)))
    result = run_until_done(sim, 3)
    assert result.counts.failed == 3
    reasons = {e.data["task"]: e.data["reason"] for e in events(sim, "failed")}
    assert reasons["child"] == "dependency bad failed"
    assert reasons["grandchild"] == "dependency child failed"


def test_submissions_that_overtake_a_dependency_wait_for_it() -> None:
    sim = make_sim(1, workers=1)
    for spec in reversed(chain(5)):
        sim.submit(spec)
    result = run_until_done(sim, 5)
    assert result.ok and result.counts.succeeded == 5
    assert len(events(sim, "causal_buffered")) == 4
    assert len(events(sim, "causal_released")) == 4


def test_a_dependency_that_never_comes_times_out_with_its_name() -> None:
    sim = make_sim(1, workers=1)
    sim.nodes["coordinator-1"].cell.actor.buffer.timeout_ms = 500  # type: ignore[union-attr]
    sim.submit(TaskSpec(id="orphan", type="echo", deps=("ghost",)))
    result = run_until_done(sim, 1)
    assert result.counts.failed == 1
    assert events(sim, "causal_timeout")
    [rejected] = events(sim, "rejected")
    assert "unknown dependency ghost" in rejected.data["reason"]


def test_a_full_buffer_sends_submissions_back_to_the_queue() -> None:
    sim = make_sim(1, workers=2)
    sim.nodes["coordinator-1"].cell.actor.buffer.capacity = 3  # type: ignore[union-attr]
    for spec in reversed(chain(10)):
        sim.submit(spec)
    result = run_until_done(sim, 10)
    assert result.ok and result.counts.succeeded == 10
    assert events(sim, "causal_overflow")


def test_a_held_submission_survives_its_connection_dropping_and_a_leader_crash() -> None:
    """The broker returns a held submission when the leader's connection closes and delivers it
    again: that copy must be held in its place (the held one is dead), or the crash that
    follows loses the only copy there was."""
    sim = make_sim(1, workers=1)
    sim.submit(TaskSpec(id="child", type="echo", deps=("parent",)))
    sim.run(until_ms=1000, stop=lambda: bool(events(sim, "causal_buffered", task="child")))
    assert events(sim, "causal_buffered", task="child")
    sim.drop_connection("coordinator-1")  # the held delivery goes back to the queue
    sim.run(until_ms=sim.now_ms + 500)  # and comes back once the leader reconnected
    sim.crash("coordinator-1", restart=True)
    sim.submit(TaskSpec(id="parent", type="echo"))
    result = run_until_done(sim, 2)
    assert result.ok, result.violations
    assert result.counts.succeeded == 2
    assert len(events(sim, "causal_buffered", task="child")) == 2  # held again after the crash


def test_dag_chain_swarm_seed_2039_loses_no_submission() -> None:
    """A held submission's connection dropped, its redelivered copy was acked, and the leader
    crashed: reproduce with `dtq scenario explore scenarios/dag-chain.toml --swarm --runs 1
    --seed-start 2039`."""
    scenario, _ = swarm(load(ROOT / "scenarios" / "dag-chain.toml"), 2039)
    s = run_memory(scenario, 2039).summary
    assert s["ok"], s["violations"]
