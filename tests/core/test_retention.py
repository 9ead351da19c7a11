"""Retention: a finished task's record, indexes, dependency edges and result are removed once
the namespace's retention is over after it ended (by the fenced writes that follow, a bounded
number each, or by a purge), on both stores; unfinished tasks are never removed; a submission
that depends on an expired task is rejected naming it."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator

import pytest

from dtq.cli.main import main
from dtq.store import DEFAULT_RETENTION_MS, AddDependents, PutTask
from dtq.task import TaskRecord, TaskResult, TaskSpec, TaskState
from transports.memory import SimStore
from transports.redis import RedisStore

from ..simkit import events, make_sim, run_until_done, spec

S = TaskState


def _rec(task_id: str, state: TaskState) -> TaskRecord:
    return TaskRecord(spec=TaskSpec(id=task_id, type="echo"), state=state)


def _fill(store: SimStore | RedisStore) -> None:
    """Two finished tasks (one with a result and the other as its dependent) and one still
    running."""
    store.apply([PutTask(record=_rec("done-1", S.SUCCEEDED)),
                 PutTask(record=_rec("done-2", S.FAILED)),
                 PutTask(record=_rec("open-1", S.RUNNING)),
                 AddDependents(task_id="done-1", dependents=("done-2",))], epoch=0)
    store.put_result(TaskResult(task_id="done-1", attempt=1, worker="w", ok=True, value=1,
                                finished_ms=0))


def _held(store: SimStore | RedisStore) -> dict[str, object]:
    return {"records": sorted(r.id for r in store.scan_tasks()),
            "finished": sorted(r.id for r in store.scan_tasks(states=[S.SUCCEEDED, S.FAILED])),
            "edges": store.dependents("done-1"), "result": store.get_result("done-1") is not None}


KEPT = {"records": ["done-1", "done-2", "open-1"], "finished": ["done-1", "done-2"],
        "edges": ("done-2",), "result": True}
GONE = {"records": ["open-1"], "finished": [], "edges": (), "result": False}


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisStore]:
    """A namespace of its own, emptied afterwards."""
    with contextlib.closing(RedisStore.from_url(redis_url, prefix=f"ret-{uuid.uuid4().hex}")) \
            as store, contextlib.ExitStack() as cleanup:
        cleanup.callback(store.delete_all)
        yield store


def test_sim_store_expires_finished_state_after_the_retention() -> None:
    now = [0]
    store = SimStore(lambda: now[0])
    assert store.retention_ms == DEFAULT_RETENTION_MS == 86_400_000
    store.retention_ms = 1000
    _fill(store)
    now[0] = 999
    store.apply([], epoch=0)
    assert _held(store) == KEPT, "kept until the retention is over"
    now[0] = 1000
    store.apply([], epoch=0)
    assert _held(store) == GONE
    assert store.get_task("open-1") is not None


def test_sim_store_purges_every_finished_task_on_demand() -> None:
    store = SimStore()
    _fill(store)
    assert store.expire(limit=None, everything=True) == 2
    assert _held(store) == GONE


def test_redis_store_expires_finished_state_after_the_retention(redis_store: RedisStore) -> None:
    assert redis_store.retention_ms() == DEFAULT_RETENTION_MS
    _fill(redis_store)
    redis_store.apply([], epoch=0)
    assert _held(redis_store) == KEPT, "a day is not over"
    report = redis_store.report()
    assert report["records"] == {"succeeded": 1, "failed": 1, "running": 1}
    assert report["expiring"] == 2 and report["keys"] > 0 and report["bytes"] > 0
    redis_store.client.zadd(redis_store._k("expiry"), {"done-1": 0, "done-2": 0})  # now due
    redis_store.apply([], epoch=0)
    assert _held(redis_store) == GONE
    assert redis_store.report()["records"] == {"running": 1}


def test_redis_store_takes_the_namespace_retention_and_purges(redis_store: RedisStore) -> None:
    redis_store.set_retention_ms(0)  # forever: nothing expires
    _fill(redis_store)
    assert redis_store.report()["expiring"] == 0
    assert redis_store.purge() == 0 and _held(redis_store) == KEPT
    assert redis_store.purge(everything=True) == 2 and _held(redis_store) == GONE
    _fill(redis_store)
    redis_store.set_retention_ms(60_000)
    redis_store.apply([PutTask(record=_rec("done-1", S.SUCCEEDED)),
                       PutTask(record=_rec("done-2", S.FAILED))], epoch=0)
    score = redis_store.client.zscore(redis_store._k("expiry"), "done-1")
    assert score is not None and 59_000 < score - redis_store.client.time()[0] * 1000 <= 61_000
    assert redis_store.purge() == 0, "not due yet"
    assert redis_store.purge(everything=True) == 2
    assert _held(redis_store) == GONE


def test_a_submission_depending_on_an_expired_task_is_rejected_naming_it() -> None:
    sim = make_sim(1, workers=1, coordinators=2)
    sim.store.retention_ms = 2000
    sim.submit(spec(1))
    run_until_done(sim, 1)
    sim.run(until_ms=sim.now_ms + 3000)
    sim.submit(spec(2))  # its writes remove what expired
    run_until_done(sim, 2)
    assert sim.store.get_task(spec(1).id) is None, "expired"
    leader = next(e.actor for e in events(sim, "leader"))
    sim.crash(leader, restart=True)  # a leader that never held it
    sim.submit(TaskSpec(id="late", type="echo", deps=(spec(1).id,)))
    result = run_until_done(sim, 3)
    assert result.ok, result.violations
    [rejected] = events(sim, "rejected", task="late")
    assert rejected.data["reason"] == (
        f"rejected: unknown dependency {spec(1).id} (never submitted or expired)")


def test_the_namespace_command_sets_the_retention_reports_and_purges(
    redis_store: RedisStore, capsys: pytest.CaptureFixture[str],
) -> None:
    ns = ["namespace", "--namespace", redis_store.prefix]

    def dtq(*argv: str) -> dict[str, object]:
        assert main([*ns, *argv]) == 0
        out: dict[str, object] = json.loads(capsys.readouterr().out)
        return out

    assert dtq("retention", "60000")["retention_ms"] == 60_000
    _fill(redis_store)
    report = dtq("report")
    assert report["records"] == {"succeeded": 1, "failed": 1, "running": 1}
    assert report["expiring"] == 2 and report["retention_ms"] == 60_000
    assert dtq("purge")["purged"] == 0, "nothing is due"
    assert dtq("purge", "--all")["purged"] == 2
    assert dtq("report")["records"] == {"running": 1}


def test_a_result_without_a_ttl_of_its_own_expires_after_the_retention(
    redis_store: RedisStore,
) -> None:
    """A result is a key of its own: it expires on its own (PX), written or not afterwards."""
    def put(task_id: str) -> int:
        redis_store.put_result(TaskResult(task_id=task_id, attempt=1, worker="w", ok=True,
                                          value=1, finished_ms=0))
        return int(redis_store.client.pttl(redis_store._k("result", task_id)))

    assert DEFAULT_RETENTION_MS - 60_000 < put("a") <= DEFAULT_RETENTION_MS
    redis_store.set_retention_ms(0)
    assert put("b") == -1, "kept"
    now = [0]
    sim = SimStore(lambda: now[0])
    sim.retention_ms = 1000
    sim.put_result(TaskResult(task_id="a", attempt=1, worker="w", ok=True, value=1,
                              finished_ms=0))
    now[0] = 999
    assert sim.get_result("a") is not None
    now[0] = 1000
    assert sim.get_result("a") is None


def _held_back(store: SimStore | RedisStore) -> list[str]:
    """A finished dependency of a task that is still pending, and one of a finished task."""
    store.apply([PutTask(record=_rec("dep-open", S.SUCCEEDED)),
                 PutTask(record=_rec("dep-done", S.SUCCEEDED)),
                 PutTask(record=_rec("waits", S.PENDING)),
                 PutTask(record=_rec("ended", S.SUCCEEDED)),
                 AddDependents(task_id="dep-open", dependents=("waits",)),
                 AddDependents(task_id="dep-done", dependents=("ended",))], epoch=0)
    return sorted(r.id for r in store.scan_tasks())


def test_a_finished_task_that_an_unfinished_one_depends_on_is_kept() -> None:
    now = [0]
    store = SimStore(lambda: now[0])
    store.retention_ms = 1000
    _held_back(store)
    now[0] = 1000
    store.apply([], epoch=0)
    assert sorted(r.id for r in store.scan_tasks()) == ["dep-open", "waits"]
    store.apply([PutTask(record=_rec("waits", S.SUCCEEDED))], epoch=0)
    now[0] = 2000
    store.apply([], epoch=0)
    assert store.scan_tasks() == []


def test_redis_keeps_a_finished_task_that_an_unfinished_one_depends_on(
    redis_store: RedisStore,
) -> None:
    _held_back(redis_store)
    assert redis_store.purge(everything=True) == 2
    assert sorted(r.id for r in redis_store.scan_tasks()) == ["dep-open", "waits"]
    redis_store.client.zadd(redis_store._k("expiry"), {"dep-open": 0})
    redis_store.apply([], epoch=0)
    assert redis_store.get_task("dep-open") is not None, "still needed"
    assert (redis_store.client.zscore(redis_store._k("expiry"), "dep-open") or 0) > 0, "later"
    redis_store.apply([PutTask(record=_rec("waits", S.FAILED))], epoch=0)
    assert redis_store.purge(everything=True) == 2
    assert redis_store.scan_tasks() == []


# --- idempotency keys and once-markers ----------------------------------------------------------


def _keyed(store: SimStore | RedisStore) -> None:
    """A finished task submitted with an idempotency key, and the key claimed for it."""
    spec = TaskSpec(id="keyed-1", type="echo", idempotency_key="order-7")
    store.claim_key("order-7", "keyed-1", "fp")
    store.apply([PutTask(record=TaskRecord(spec=spec, state=S.SUCCEEDED))], epoch=0)


def test_sim_store_frees_an_idempotency_key_with_its_expired_task() -> None:
    store = SimStore()
    _keyed(store)
    assert store.claim_key("order-7", "other", "fp2") == ("keyed-1", "fp")
    assert store.expire(limit=None, everything=True) == 1
    assert store.claim_key("order-7", "keyed-2", "fp2") == ("keyed-2", "fp2")


def test_redis_store_frees_an_idempotency_key_with_its_expired_task(
    redis_store: RedisStore,
) -> None:
    _keyed(redis_store)
    assert redis_store.claim_key("order-7", "other", "fp2") == ("keyed-1", "fp")
    assert redis_store.purge(everything=True) == 1
    assert redis_store.claim_key("order-7", "keyed-2", "fp2") == ("keyed-2", "fp2")


def test_sim_store_once_marks_expire_after_the_retention() -> None:
    now = [0]
    store = SimStore(lambda: now[0])
    store.retention_ms = 1000
    assert store.once_begin("k", "t#1") == "new"
    store.once_done("k", "t#1")
    now[0] = 999
    assert store.once_begin("k", "t#2") == "done"
    now[0] = 1000
    assert store.once_begin("k", "t#2") == "new"


def test_redis_store_once_marks_expire_after_the_retention(redis_store: RedisStore) -> None:
    redis_store.set_retention_ms(60_000)
    assert redis_store.once_begin("k", "t#1") == "new"
    key = redis_store._k("once", "k")
    assert 0 < redis_store.client.pttl(key) <= 60_000
    redis_store.once_done("k", "t#1")
    assert 0 < redis_store.client.pttl(key) <= 60_000
    redis_store.set_retention_ms(0)  # kept forever
    redis_store.once_done("k2", "t#1")
    assert redis_store.client.pttl(redis_store._k("once", "k2")) == -1
