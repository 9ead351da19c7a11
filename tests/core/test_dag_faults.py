"""Dependency graphs under faults: long failure chains, wide fan-ins under stale reads, the
result race's clock, cancellation, and a worker's epoch check against forged dispatches."""

from __future__ import annotations

import random
from typing import Any

from dtq.actor import ActorCell, DeliveryRef
from dtq.clock import VectorClock
from dtq.envelope import WORK_QUEUE, Cancel, Completed, Dispatch, Envelope, Refused
from dtq.store import ResultWrite
from dtq.task import TaskResult, TaskSpec, TaskState
from dtq.tasktypes import load_task_types
from dtq.worker import RecheckDeps, ResultStored, Worker
from transports.memory import SimStore

from ..simkit import events, make_sim, run_until_done


def by_task(sim: Any, kind: str) -> dict[str, str]:
    return {e.data["task"]: e.data.get("reason") for e in events(sim, kind)}


def test_a_failure_at_the_head_of_a_long_chain_fails_every_task_without_recursion() -> None:
    """500 overflowed the stack when failure propagation recursed; 1,000 would overflow it
    even with one frame per task."""
    n = 1000
    sim = make_sim(1, workers=2)
    sim.submit(TaskSpec(id="c0000", type="nope", max_attempts=1))
    for i in range(1, n):
        sim.submit(TaskSpec(id=f"c{i:04d}", type="echo", deps=(f"c{i - 1:04d}",)))
    result = run_until_done(sim, n)
    assert result.ok, result.violations
    failed = by_task(sim, "failed")
    assert len(failed) == n
    assert all(failed[f"c{i:04d}"] == f"dependency c{i - 1:04d} failed" for i in range(1, n))


def test_a_fan_in_of_200_runs_under_stale_reads() -> None:
    sim = make_sim(1, workers=2, modules=("tests.fixtures.usertasks",), stale_read=0.1)
    for i in range(200):
        sim.submit(TaskSpec(id=f"leaf{i:03d}", type="echo", payload=i))
    sim.submit(TaskSpec(id="sum", type="sum-deps",
                        deps=tuple(f"leaf{i:03d}" for i in range(200))))
    result = run_until_done(sim, 201, deadline_ms=120_000)
    assert result.ok, result.violations
    total = sim.store.get_result("sum")
    assert total is not None and total.value == sum(range(200))
    assert events(sim, "inject_stale_read")
    tries = [e.data["tries"] for e in events(sim, "causality_violation", task="sum")]
    assert tries and max(tries) <= 8, "it ran within the first dispatch's re-checks"


def _worker_cell(store: SimStore) -> tuple[Worker, ActorCell]:
    worker = Worker("worker-2", load_task_types())
    cell = ActorCell(worker, store=store, rng=random.Random(0),
                     record=lambda *a: None, new_id=lambda: "m1")
    return worker, cell


def test_a_worker_that_loses_the_result_race_reports_after_the_winners_clock() -> None:
    winner = TaskResult(task_id="t", attempt=1, worker="worker-1", ok=True, value=1,
                        clock={"worker-1": 40, "coordinator-1": 9})
    _, cell = _worker_cell(SimStore())
    mine = TaskResult(task_id="t", attempt=1, worker="worker-2", ok=True, value=1,
                      clock={"worker-2": 3})
    fx = cell.fire(ResultStored(result=mine, write=ResultWrite(stored=winner, created=False)),
                   0)
    [report] = fx.sends
    assert isinstance(report.body, Completed) and report.body.worker == "worker-1"
    assert VectorClock.of(winner.clock) <= report.clock


def test_a_redelivered_dispatch_already_done_reports_after_the_stored_clock() -> None:
    store = SimStore()
    stored = TaskResult(task_id="t", attempt=1, worker="worker-1", ok=True, value=1,
                        clock={"worker-1": 77})
    store.results["t"] = (stored, None)
    _, cell = _worker_cell(store)
    env = Envelope(id="d1", sender="coordinator-1", target=WORK_QUEUE, redelivered=True,
                   body=Dispatch(spec=TaskSpec(id="t", type="echo"), attempt=1))
    fx = cell.deliver(env, DeliveryRef(1), 0)
    [report] = fx.sends
    assert isinstance(report.body, Completed)
    assert VectorClock.of(stored.clock) <= report.clock


def test_a_cancelled_dependency_cancels_its_dependents_naming_it() -> None:
    sim = make_sim(1, workers=1)
    sim.submit(TaskSpec(id="slow", type="sleep", payload={"ms": 2000}))
    sim.submit(TaskSpec(id="mid", type="echo", deps=("slow",)))
    sim.submit(TaskSpec(id="leaf", type="echo", deps=("mid",)))
    sim.submit(TaskSpec(id="leaf2", type="echo", deps=("leaf",)))
    sim.run(until_ms=500)
    sim.send("client", "coordinator", Cancel(task_id="mid"))
    sim.run(until_ms=1000)
    sim.submit(TaskSpec(id="late", type="echo", deps=("mid",)))
    result = run_until_done(sim, 5)
    assert result.ok, result.violations
    assert by_task(sim, "cancelled") == {
        "mid": "cancelled", "leaf": "dependency mid cancelled",
        "leaf2": "dependency leaf cancelled", "late": "dependency mid cancelled"}
    for task_id in ("leaf", "leaf2", "late"):
        rec = sim.store.get_task(task_id)
        assert rec is not None and rec.state is TaskState.CANCELLED
    assert events(sim, "succeeded", task="slow")


def _forge(sim: Any, task_id: str, epoch: int) -> None:
    sim._publish(Envelope(id=sim.new_id(), sender="forger", target=WORK_QUEUE, epoch=epoch,
                          body=Dispatch(spec=TaskSpec(id=task_id, type="echo"), attempt=1)))


def test_a_forged_high_epoch_dispatch_does_not_stop_a_worker() -> None:
    sim = make_sim(1, workers=1)
    sim.submit(TaskSpec(id="before", type="echo"))
    sim.run(until_ms=1000)
    _forge(sim, "forged", 10**9)
    sim.run(until_ms=1500)
    for i in range(5):
        sim.submit(TaskSpec(id=f"after{i}", type="echo"))
    result = run_until_done(sim, 6)
    assert result.ok, result.violations
    assert result.counts.succeeded == 6
    [forged] = events(sim, "forged_dispatch_refused")
    assert forged.data["epoch"] == 10**9 and forged.data["store_epoch"] == 1
    assert {e.data["epoch"] for e in events(sim, "started")} == {1}
    worker = sim.nodes["worker-1"].cell.actor  # type: ignore[union-attr]
    assert isinstance(worker, Worker) and worker.epoch == 1, "the forged epoch not adopted"


def test_a_dispatch_below_the_stores_epoch_is_refused_as_stale() -> None:
    sim = make_sim(1, workers=1)
    sim.submit(TaskSpec(id="before", type="echo"))
    sim.run(until_ms=1000)
    _forge(sim, "old", 0)
    result = run_until_done(sim, 1)
    assert result.ok, result.violations
    [stale] = events(sim, "stale_dispatch_refused")
    assert stale.data["epoch"] == 0 and stale.data["store_epoch"] == 1
    assert not events(sim, "started", task="old")


def test_a_new_leaders_dispatch_happens_after_the_success_it_learnt_from_the_store() -> None:
    """The dependent waits for its retry when the leader dies; the new leader dispatches it
    from the records it loads, and that dispatch happens after the old leader's `succeeded` of
    the dependency: the success's record carries the old leader's clock."""
    sim = make_sim(1, workers=1, coordinators=2, modules=("tests.fixtures.usertasks",))
    sim.submit(TaskSpec(id="dep", type="echo", payload=1))
    sim.submit(TaskSpec(id="child", type="flaky", payload={"fail_until": 2}, deps=("dep",)))
    sim.run(until_ms=30_000, stop=lambda: bool(events(sim, "retry_scheduled", task="child")))
    [first] = events(sim, "leader")
    sim.crash(first.actor)
    result = run_until_done(sim, 2)
    assert result.ok, result.violations
    [succeeded] = events(sim, "succeeded", task="dep")
    again = next(e for e in events(sim, "dispatched", task="child") if e.actor != first.actor)
    assert succeeded.actor == first.actor
    assert succeeded.clock.before(again.clock)


def test_a_dispatch_that_waited_while_a_newer_epoch_came_is_refused_not_started() -> None:
    """Held for its dependency, an epoch-1 dispatch must not start once the worker has taken
    an epoch-2 dispatch: it goes back to the leader as stale."""
    store = SimStore()
    store.epochs["coordinator"] = 1
    seen: list[tuple[str, dict[str, Any]]] = []
    worker = Worker("worker-1", load_task_types())
    cell = ActorCell(worker, store=store, rng=random.Random(0), new_id=lambda: "m",
                     record=lambda actor, kind, clock, data: seen.append((kind, dict(data))))

    def dispatch(tag: int, task: TaskSpec, epoch: int) -> list[Envelope]:
        env = Envelope(id=f"d{tag}", sender="coordinator-1", target=WORK_QUEUE, epoch=epoch,
                       body=Dispatch(spec=task, attempt=1))
        return cell.deliver(env, DeliveryRef(tag), 0).sends

    dispatch(1, TaskSpec(id="late", type="echo", deps=("dep",)), epoch=1)
    assert ("causality_violation", "late") in [(k, d.get("task")) for k, d in seen]
    store.epochs["coordinator"] = 2
    dispatch(2, TaskSpec(id="new", type="echo"), epoch=2)
    store.results["dep"] = (TaskResult(task_id="dep", attempt=1, worker="w", ok=True), None)
    fx = cell.fire(RecheckDeps(ref="late#1"), 0)
    started = [d["task"] for k, d in seen if k == "started"]
    assert started == ["new"]
    assert ("stale_dispatch_refused", "late") in [(k, d.get("task")) for k, d in seen]
    [refused] = fx.sends
    assert isinstance(refused.body, Refused) and refused.body.task_id == "late"
    assert fx.acks == [DeliveryRef(1)]


def test_a_refusal_redelivered_after_a_crash_before_the_send_resends_the_dispatch() -> None:
    """A leader persists the new attempt a refusal asks for and crashes before sending it; the
    refusal comes back to the next leader, naming the attempt before the record's. That leader
    sends the record's attempt again at once, not only when the sweep finds it stuck (the
    task's timeout and the failure detector's after the takeover)."""
    sim = make_sim(1, workers=0)
    sim.submit(TaskSpec(id="t", type="echo", timeout_ms=10_000))
    sim.run(until_ms=1000, stop=lambda: bool(events(sim, "dispatched", task="t")))
    sim.crash("coordinator-1", restart=True)  # the next leader finds attempt 1 dispatched
    sim.run(until_ms=20_000, stop=lambda: bool(events(sim, "leader", epoch=2)))
    real = sim._crash_point

    def crash_before_sending(node: Any, point: str) -> bool:
        if point == "after_persist" and events(sim, "redispatched") \
                and not events(sim, "crash", reason="before sending"):
            sim.crash(node.name, "before sending", restart=True)
            return True
        return real(node, point)

    sim._crash_point = crash_before_sending  # type: ignore[method-assign]
    sim.spawn("worker-1", lambda: Worker("worker-1", load_task_types()), groups=("workers",))
    result = run_until_done(sim, 1)
    assert result.ok and result.counts.succeeded == 1, result.violations
    [crash] = events(sim, "crash", reason="before sending")
    [took_over] = [e for e in events(sim, "leader") if e.seq > crash.seq]
    [succeeded] = events(sim, "succeeded", task="t")
    assert succeeded.data["attempt"] == 2  # the attempt persisted before the crash, sent again
    assert succeeded.time_ms - took_over.time_ms < 10_000  # before any sweep could
    assert not events(sim, "reassigned")
    [resent] = events(sim, "dispatch_resent", task="t")
    assert (resent.data["attempt"], resent.data["refused_attempt"]) == (2, 1)
