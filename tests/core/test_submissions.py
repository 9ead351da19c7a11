"""Every submission ends in a record: the leader checks what clients publish to the broker
themselves with the API's rules, and rejects what breaks them (a failed record whose reason
starts "rejected: ", a `rejected` event, a notice) instead of persisting something that would
crash it or wait forever. Cycles among held-back submissions are rejected, naming the cycle."""

from __future__ import annotations

from typing import Any

from dtq.clock import VectorClock
from dtq.coordinator import Coordinator, CoordinatorConfig
from dtq.envelope import COORDINATOR_QUEUE, Envelope, Submit
from dtq.store import PutTask
from dtq.task import TaskRecord, TaskSpec, TaskState
from dtq.tasktypes import load_task_types
from transports.memory import SimStore

from ..simkit import events, finished, make_sim, run_until_done, spec


def submit_raw(sim: Any, task: TaskSpec, reply_to: str | None = None) -> None:
    """Publish a Submit straight to the leader's queue, as a client with pika could."""
    sim.history.record("client", "submit", VectorClock(), {"task": task.id})
    sim._publish(Envelope(id=sim.new_id(), sender="client", target=COORDINATOR_QUEUE,
                          body=Submit(spec=task, reply_to=reply_to)))


def reasons(sim: Any, kind: str = "rejected") -> dict[str, str]:
    return {e.data["task"]: e.data["reason"] for e in events(sim, kind)}


def test_a_priority_999_submission_is_rejected_with_a_record_and_the_cluster_keeps_working(
) -> None:
    sim = make_sim(1, workers=2, coordinators=2)
    submit_raw(sim, TaskSpec(id="poison", type="echo", priority=999), reply_to="client-7")
    for n in range(5):
        sim.submit(spec(n))
    result = run_until_done(sim, 6)
    assert result.ok, result.violations
    rec = sim.store.get_task("poison")
    assert rec is not None and rec.state is TaskState.FAILED
    assert rec.reason == "rejected: priority: must be an integer from 0 to 9"
    assert rec.spec.priority == 0, "the stored record keeps no value that breaks a rule"
    assert reasons(sim) == {"poison": rec.reason}
    assert not events(sim, "dispatched", task="poison")
    [notice] = [n for n in sim.store.notices if n.task_id == "poison"]
    assert (notice.client, notice.state, notice.reason) == ("client-7", "failed", rec.reason)
    assert result.counts.succeeded == 5

    # A new leader loads the rejected record and carries on.
    leader = next(e.actor for e in events(sim, "leader"))
    sim.crash(leader, restart=True)
    for n in range(5, 10):
        sim.submit(spec(n))
    result = run_until_done(sim, 11)
    assert result.ok, result.violations
    assert len(result.leaders) == 2 and result.counts.succeeded == 10


def test_an_invalid_record_in_the_store_is_failed_at_takeover_not_dispatched() -> None:
    store = SimStore()
    bad = TaskRecord(spec=TaskSpec(id="stored-poison", type="echo", priority=999),
                     state=TaskState.READY)
    store.apply([PutTask(record=bad)], epoch=0)
    sim = make_sim(1, workers=1, store=store)
    sim.submit(spec(1))
    sim.run(until_ms=5000)
    rec = sim.store.get_task("stored-poison")
    assert rec is not None and rec.state is TaskState.FAILED
    assert rec.reason == "rejected: priority: must be an integer from 0 to 9"
    assert rec.spec.priority == 0
    assert not events(sim, "dispatched", task="stored-poison")
    assert events(sim, "succeeded", task=spec(1).id)


def test_a_self_dependency_is_rejected_at_once() -> None:
    sim = make_sim(1, workers=1)
    sim.submit(TaskSpec(id="selfish", type="echo", deps=("selfish",)))
    result = run_until_done(sim, 1)
    assert result.ok, result.violations
    why = "rejected: deps: task selfish cannot depend on itself"
    assert reasons(sim) == {"selfish": why}
    rec = sim.store.get_task("selfish")
    assert rec is not None and rec.state is TaskState.FAILED and rec.reason == why
    assert sim.now_ms < 5000, "rejected on receipt, not after the hold-back time-out"


def test_an_unknown_dependency_ends_in_a_record_naming_it() -> None:
    sim = make_sim(1, workers=1)
    sim.nodes["coordinator-1"].cell.actor.buffer.timeout_ms = 500  # type: ignore[union-attr]
    submit_raw(sim, TaskSpec(id="orphan", type="echo", deps=("ghost",)), reply_to="c")
    result = run_until_done(sim, 1)
    assert result.ok, result.violations
    rec = sim.store.get_task("orphan")
    assert rec is not None and rec.state is TaskState.FAILED
    why = "rejected: unknown dependency ghost (never submitted or expired)"
    assert rec.reason == why == reasons(sim)["orphan"]
    assert [n.task_id for n in sim.store.notices] == ["orphan"]


def test_a_two_cycle_from_separate_submissions_is_rejected_naming_the_cycle() -> None:
    sim = make_sim(1, workers=1)
    sim.submit(TaskSpec(id="a", type="echo", deps=("b",)))
    sim.submit(TaskSpec(id="b", type="echo", deps=("a",)))
    result = run_until_done(sim, 2)
    assert result.ok, result.violations
    why = "rejected: dependency cycle b -> a -> b"
    assert reasons(sim) == {"a": why, "b": why}
    for task_id in ("a", "b"):
        rec = sim.store.get_task(task_id)
        assert rec is not None and rec.state is TaskState.FAILED and rec.reason == why
    assert not events(sim, "causal_timeout")
    assert sim.now_ms < 5000, "found when the cycle closed, not at the hold-back time-out"


def test_a_three_cycle_is_rejected_and_what_waits_on_it_fails_naming_its_dependency() -> None:
    sim = make_sim(1, workers=1)
    sim.submit(TaskSpec(id="after", type="echo", deps=("x",)))
    sim.submit(TaskSpec(id="x", type="echo", deps=("y",)))
    sim.submit(TaskSpec(id="y", type="echo", deps=("z",)))
    sim.submit(TaskSpec(id="fine", type="echo"))
    sim.submit(TaskSpec(id="z", type="echo", deps=("x", "fine")))
    result = run_until_done(sim, 5)
    assert result.ok, result.violations
    why = "rejected: dependency cycle z -> x -> y -> z"
    assert reasons(sim) == {"x": why, "y": why, "z": why}
    assert reasons(sim, "failed") == {"after": "dependency x failed"}
    assert events(sim, "succeeded", task="fine")


def test_a_leader_that_knows_the_task_types_rejects_unknown_types_and_refused_payloads(
) -> None:
    sim = make_sim(1, workers=1, coordinators=0)
    cfg = CoordinatorConfig(task_types=load_task_types())
    sim.spawn("coordinator-1", lambda: Coordinator("coordinator-1", cfg))
    sim.submit(TaskSpec(id="nope", type="nope"))
    sim.submit(TaskSpec(id="neg", type="compute", payload={"size": -1}))
    sim.submit(TaskSpec(id="ok", type="compute", payload={"size": 3}))
    result = run_until_done(sim, 3)
    assert result.ok, result.violations
    assert reasons(sim) == {
        "nope": "rejected: type: unknown task type 'nope'",
        "neg": "rejected: payload.size: must be from 0 to 50000000",
    }
    assert events(sim, "succeeded", task="ok")


def test_without_the_types_the_worker_fails_a_refused_payload_once_for_good() -> None:
    sim = make_sim(1, workers=2)
    sim.submit(TaskSpec(id="neg", type="compute", payload={"size": -1}, max_attempts=5))
    result = run_until_done(sim, 1)
    assert result.ok, result.violations
    why = "rejected: payload.size: must be from 0 to 50000000"
    assert [e.data["error"] for e in events(sim, "attempt_failed")] == [why]
    assert reasons(sim, "failed") == {"neg": why}


def test_a_forged_dispatch_of_an_invalid_spec_fails_cleanly_at_the_worker() -> None:
    from dtq.envelope import WORK_QUEUE, Dispatch

    sim = make_sim(1, workers=1)
    sim.run(until_ms=500)
    epoch = sim.store.epoch()
    for body in (Dispatch(spec=TaskSpec(id=["not", "an", "id"], type="echo"),  # type: ignore[arg-type]
                          attempt=1),
                 Dispatch(spec=TaskSpec(id="t", type=7, priority=999), attempt=1)):  # type: ignore[arg-type]
        sim._publish(Envelope(id=sim.new_id(), sender="x", target=WORK_QUEUE, body=body,
                              epoch=epoch))
    sim.submit(spec(1))
    result = run_until_done(sim, 1)
    assert result.ok, result.violations
    assert events(sim, "invalid_dispatch_dropped")
    [failed] = events(sim, "attempt_failed", task="t")
    assert failed.data["error"].startswith("rejected: type: must be a lower-case name")


def test_an_invalid_id_is_rejected_without_a_record() -> None:
    sim = make_sim(1, workers=1)
    sim.submit(TaskSpec(id="bad id!", type="echo"))
    sim.submit(spec(1))
    result = run_until_done(sim, 2)
    assert result.ok, result.violations
    assert reasons(sim)["bad id!"].startswith("rejected: id: must be 1-128 characters")
    assert sim.store.get_task("bad id!") is None
    assert finished(sim) == {"bad id!", spec(1).id}


def test_an_idempotency_key_conflict_is_rejected_with_its_holder() -> None:
    sim = make_sim(1, workers=1)
    sim.submit(TaskSpec(id="first", type="echo", idempotency_key="k"))
    sim.submit(TaskSpec(id="second", type="echo", payload=2, idempotency_key="k"))
    result = run_until_done(sim, 2)
    assert result.ok, result.violations
    why = "rejected: idempotency key conflict (the key is held by task first)"
    assert reasons(sim) == {"second": why}
    rec = sim.store.get_task("second")
    assert rec is not None and rec.reason == why



def test_at_takeover_a_record_is_held_to_the_field_limits_not_to_todays_task_types() -> None:
    store = SimStore()
    old = TaskRecord(spec=TaskSpec(id="retired", type="retired", max_attempts=1),
                     state=TaskState.READY)
    store.apply([PutTask(record=old)], epoch=0)
    sim = make_sim(1, workers=1, coordinators=0, store=store)
    cfg = CoordinatorConfig(task_types=load_task_types())
    sim.spawn("coordinator-1", lambda: Coordinator("coordinator-1", cfg))
    sim.run(until_ms=5000, stop=lambda: bool(events(sim, "failed", task="retired")))
    [failed] = events(sim, "failed", task="retired")
    assert failed.data["reason"].startswith("failed after 1 attempts: unknown task type")
    assert events(sim, "dispatched", task="retired") and not events(sim, "rejected")
