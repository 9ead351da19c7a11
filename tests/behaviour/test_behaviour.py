"""Behaviour that must hold on both backends: the same scenario files, the same checks.

Each test runs once on the simulator and once on real processes over RabbitMQ and Redis: the
`run` fixture (tests/conftest.py) runs a scenario file on the `backend` fixture's backend.
"""

from __future__ import annotations

from ..scenariokit import Run, held
from ..simkit import finished, make_sim, spec


def test_round_robin_delivers_ten_messages_to_three_workers(run: Run) -> None:
    result = run("round-robin.toml")
    s = held(result)
    assert s["tasks"] == {"submitted": 10, "succeeded": 10, "failed": 0, "cancelled": 0,
                          "lost": 0, "duplicated": 0, "unexpected": 0, "recovered": 0}
    receivers = {e.actor for e in result.events if e.kind == "started"}
    assert receivers == {"worker-1", "worker-2", "worker-3"}
    assert len([e for e in result.events if e.kind == "effect"]) == 10


def test_a_killed_worker_tasks_are_reassigned(run: Run) -> None:
    result = run("worker-crash.toml")
    s = held(result)
    assert s["tasks"]["succeeded"] == 12 and s["tasks"]["duplicated"] == 0
    assert s["reassign_ms"], "the killed worker held no task"
    assert any(e.kind == "crash" and e.actor == "worker-1" for e in result.events)


def test_killed_workers_tasks_are_reassigned_on_quorum_queues(run: Run) -> None:
    result = run("quorum-worker-crash.toml")
    s = held(result)
    assert s["tasks"]["succeeded"] == 16 and s["tasks"]["duplicated"] == 0
    assert {e.actor for e in result.events if e.kind == "crash"} >= {"worker-1", "worker-2"}
    assert not [e for e in result.events if e.kind == "dead_lettered"]


def test_dropped_broker_connections_lose_nothing(run: Run) -> None:
    result = run("broker-link-reset.toml")
    s = held(result)
    assert s["tasks"]["succeeded"] == 40
    assert s["tasks"]["lost"] == 0 and s["tasks"]["duplicated"] == 0


def test_a_worker_runs_no_more_than_its_concurrency_however_much_it_holds() -> None:
    """Dispatches held beyond the concurrency wait, not started (their time-out has not begun);
    inline ones (echo) take no slot."""
    sim = make_sim(1, workers=1, prefetch=6, concurrency=2)
    for n in range(4):
        sim.submit(spec(n, type="sleep", payload={"ms": 100}))
    sim.submit(spec(9))  # echo
    sim.run(stop=lambda: len(finished(sim)) == 5, until_ms=10_000)
    starts = sorted((e.time_ms, e.data["task"]) for e in sim.history.events
                    if e.kind == "started")
    ends = {e.data["task"]: e.time_ms for e in sim.history.events if e.kind == "effect"}
    assert len(finished(sim)) == 5 and len(starts) == 5
    for t, task in starts:
        if task != "task-00009":
            running = [s for s, other in starts if other != "task-00009" and other != task
                       and s <= t < ends[other]]
            assert len(running) <= 1, f"{task} started at {t} beside {running}"
    assert dict((task, t) for t, task in starts)["task-00009"] < max(ends.values()) - 100
