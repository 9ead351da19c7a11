"""Every end of a task is told exactly once to the client waiting for it, whatever leader or
worker ends it: the reply address travels with the task's record (`TaskRecord.reply_to`), a
success is told by the result write that stores it (first writer wins), every other end by the
leader in the fenced batch that makes the record terminal. Counted on the simulator's store,
which keeps every notice a write published."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs
import pytest

from dtq.clock import VectorClock
from dtq.envelope import COORDINATOR_QUEUE, Envelope, Submit
from dtq.store import PutTask
from dtq.task import TaskRecord, TaskResult, TaskSpec, TaskState
from transports.memory import CrashPoints, SimStore
from transports.redis import RedisStore

from ..simkit import events, finished, make_sim, run_until_done
from .test_retention import redis_store  # noqa: F401 (a fixture, for any_store)

TERMINAL_EVENTS = ("succeeded", "failed", "cancelled", "rejected")


def submit_as(sim: Any, client: str, task: TaskSpec) -> None:
    """Publish a Submit that asks for a notice to `client`, as a Submitter does."""
    sim.history.record(client, "submit", VectorClock(), {"task": task.id})
    sim._publish(Envelope(id=sim.new_id(), sender=client, target=COORDINATOR_QUEUE,
                          body=Submit(spec=task, reply_to=client)))


def dags(sim: Any, n: int) -> dict[str, str]:
    """`n` DAGs of five tasks (a -> b, c -> d -> e), each from its own client; the c of every
    third DAG is of a type no worker knows (it fails, and so do d and e). Task -> client."""
    waiting: dict[str, str] = {}
    for k in range(n):
        client = f"client-{k}"
        bad = k % 3 == 0
        specs = [TaskSpec(id=f"d{k}-a", type="sleep", payload={"ms": 400}),
                 TaskSpec(id=f"d{k}-b", type="echo", deps=(f"d{k}-a",)),
                 TaskSpec(id=f"d{k}-c", type="nope" if bad else "echo", deps=(f"d{k}-a",)),
                 TaskSpec(id=f"d{k}-d", type="echo", deps=(f"d{k}-b", f"d{k}-c")),
                 TaskSpec(id=f"d{k}-e", type="sleep", payload={"ms": 200}, deps=(f"d{k}-d",))]
        for s in specs:
            submit_as(sim, client, s)
            waiting[s.id] = client
    return waiting


def notices_by_task(sim: Any) -> Counter[tuple[str, str]]:
    return Counter((n.client, n.task_id) for n in sim.store.notices)


def assert_each_end_told_once(sim: Any, waiting: dict[str, str]) -> None:
    told = notices_by_task(sim)
    assert {k for k, c in told.items() if c > 1} == set(), "an end was told twice"
    missing = sorted(t for t, c in waiting.items() if told[(c, t)] != 1)
    assert missing == [], "ends never told"
    for n in sim.store.notices:
        rec = sim.store.get_task(n.task_id)
        assert rec is not None and rec.state.value == n.state, (n, rec)


def test_a_leader_killed_while_dag_tasks_wait_every_client_hears_every_end_once() -> None:
    for seed in range(3):
        sim = make_sim(seed, workers=3, coordinators=2)
        waiting = dags(sim, 12)

        def all_recorded(s: Any = sim, w: dict[str, str] = waiting) -> bool:
            return all(s.store.get_task(t) is not None for t in w)

        sim.run(until_ms=5000, stop=all_recorded)
        pending = [t for t in waiting if (r := sim.store.get_task(t)) is not None
                   and r.state is TaskState.PENDING]
        assert pending, "tasks wait on their dependencies when the leader dies"
        leader = next(e.actor for e in events(sim, "leader"))
        sim.crash(leader, restart=True)
        result = run_until_done(sim, len(waiting))
        assert result.ok, result.violations
        assert len(result.leaders) == 2
        assert finished(sim) >= set(waiting)
        assert_each_end_told_once(sim, waiting)
        states = Counter(n.state for n in sim.store.notices)
        assert states["succeeded"] and states["failed"], states


def test_a_result_stored_by_a_worker_that_died_before_reporting_is_told_once() -> None:
    """A redelivered task whose result is stored: the next worker reports it (it finds the result
    and tells nobody), and the leader does not tell the success again."""
    for seed in range(4):
        sim = make_sim(seed, workers=3, coordinators=2,
                       crash_points=CrashPoints(after_results=0.3, until_ms=20_000))
        waiting = dags(sim, 6)
        sim.run(until_ms=1500)
        leader = next(e.actor for e in events(sim, "leader"))
        sim.crash(leader, restart=True)
        result = run_until_done(sim, len(waiting), deadline_ms=120_000)
        assert result.ok, result.violations
        assert events(sim, "already_done"), "a stored result was reported by another worker"
        assert_each_end_told_once(sim, waiting)


def test_the_reply_address_is_kept_with_the_record() -> None:
    sim = make_sim(0, workers=1)
    submit_as(sim, "client-x", TaskSpec(id="t1", type="echo"))
    run_until_done(sim, 1)
    rec = sim.store.get_task("t1")
    assert rec is not None and rec.reply_to == "client-x"
    assert rec.to_json()["reply_to"] == "client-x"
    assert "reply_to" not in TaskRecord(spec=rec.spec).to_json(), "written only when set"


@pytest.fixture(params=["sim", "redis"])
def any_store(request: pytest.FixtureRequest) -> SimStore | RedisStore:
    if request.param == "sim":
        return SimStore()
    store: RedisStore = request.getfixturevalue("redis_store")
    return store


@pytest.mark.parametrize("end", [TaskState.FAILED, TaskState.CANCELLED])
def test_a_result_of_a_task_the_leader_ended_otherwise_is_refused(
    any_store: SimStore | RedisStore, end: TaskState,
) -> None:
    """The leader failed (or cancelled) the task and told its client so: a worker still running
    that attempt stores no success, and tells nobody."""
    rec = TaskRecord(spec=TaskSpec(id="t", type="echo"), state=TaskState.RUNNING, attempt=1)
    any_store.apply([PutTask(record=rec)], epoch=0)
    result = TaskResult(task_id="t", attempt=1, worker="w", ok=True, value=1, finished_ms=0)
    any_store.apply([PutTask(record=attrs.evolve(rec, state=end))], epoch=0)
    write = any_store.put_result(result, notify="client")
    assert write.stale and not write.created and any_store.get_result("t") is None
    if isinstance(any_store, SimStore):
        assert any_store.notices == []


def test_a_result_of_a_running_task_is_stored_and_told(any_store: SimStore | RedisStore) -> None:
    rec = TaskRecord(spec=TaskSpec(id="t", type="echo"), state=TaskState.RUNNING, attempt=1)
    any_store.apply([PutTask(record=rec)], epoch=0)
    result = TaskResult(task_id="t", attempt=1, worker="w", ok=True, value=1, finished_ms=0)
    assert any_store.put_result(result, notify="client").created
    if isinstance(any_store, SimStore):
        assert [(n.client, n.state) for n in any_store.notices] == [("client", "succeeded")]
