"""Conformance suites a third-party store or transport can run (as trio ships check_one_way_stream).

The rule: a suite states the contract in tests and nothing else; it knows no backend. A backend
passes by subclassing the suite in a test module and providing fixtures.

* `StoreConformance` — every method of `dtq.store.Store`, with the semantics of `SimStore`.
  Provide two fixtures: `store`, a fresh and empty store (epoch 0 everywhere) that also exposes
  `stale_writes_refused: int`; and `store_clock`, a `StoreClock` that lets the store's time pass:
  `ManualClock` for a store on a virtual clock, `PollingClock` for a real server. Tests never
  sleep to synchronise: they wait for a condition (a lease or result gone) with a deadline.
  The store also needs `lose_data()`, which drops every key (a restart without persistence).

      class TestMyStore(StoreConformance):
          short_ttl_ms = 150

          @pytest.fixture
          def store_clock(self) -> StoreClock:
              return PollingClock()

          @pytest.fixture
          def store(self) -> Iterator[Store]:
              ...

* `TransportConformance` — the delivery contract of `dtq.transport`. Provide a `namespace`
  fixture (fresh for each test) and a `connect(name, on_delivery)` fixture returning a started
  transport in that namespace; close them and remove the namespace afterwards.
"""

from __future__ import annotations

import functools
import queue
import random
import threading
import time
from collections.abc import Callable, Collection
from typing import ClassVar, Protocol, cast

import attrs
import pytest

from dtq.errors import StaleEpoch
from dtq.store import (
    LEADER_LEASE,
    AddDependents,
    CountsTasks,
    NoteDataLoss,
    PutTask,
    ResultItem,
    ResultWrite,
    Store,
    StoreDataLost,
    WorkerInfo,
    Write,
)
from dtq.task import TaskRecord, TaskResult, TaskSpec, TaskState
from dtq.transport import DEAD_QUEUE, Delivery, Outgoing, Transport, queue_name

__all__ = ["Connect", "Inbox", "ManualClock", "PollingClock", "StoreClock", "StoreConformance",
           "TransportConformance"]


# -- clocks ---------------------------------------------------------------------------------------
class StoreClock(Protocol):
    """Lets the store's own time pass, however that store keeps time."""

    def wait_until(self, condition: Callable[[], bool], *, within_ms: int, what: str) -> None:
        """Return once condition() holds; fail the test after `within_ms` of store time."""
        ...


class ManualClock:
    """A virtual clock: pass `clock.now` as the store's time source; waiting moves it forward."""

    def __init__(self, start_ms: int = 0, step_ms: int = 1) -> None:
        self.now_ms = start_ms
        self.step_ms = step_ms

    def now(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms

    def wait_until(self, condition: Callable[[], bool], *, within_ms: int, what: str) -> None:
        deadline = self.now_ms + within_ms
        while not condition():
            if self.now_ms >= deadline:
                pytest.fail(f"{what}: still false after {within_ms} ms of virtual time")
            self.advance(self.step_ms)


class PollingClock:
    """Real time: polls the condition every `poll_ms` until a deadline on the monotonic clock."""

    def __init__(self, poll_ms: int = 5, slack_ms: int = 2000) -> None:
        self.poll_ms = poll_ms
        self.slack_ms = slack_ms
        """Added to every deadline: a loaded test machine may be slow to look."""

    def wait_until(self, condition: Callable[[], bool], *, within_ms: int, what: str) -> None:
        deadline = time.monotonic() + (within_ms + self.slack_ms) / 1000
        while not condition():
            if time.monotonic() >= deadline:
                pytest.fail(f"{what}: still false after {within_ms + self.slack_ms} ms")
            time.sleep(self.poll_ms / 1000)


# -- helpers --------------------------------------------------------------------------------------
class _CountsStaleWrites(Protocol):
    stale_writes_refused: int


def _refused(store: Store) -> int:
    return cast(_CountsStaleWrites, store).stale_writes_refused


class _LosesData(Protocol):
    def lose_data(self) -> None: ...


def _record(
    task_id: str, state: TaskState = TaskState.READY, task_type: str = "compute",
) -> TaskRecord:
    return TaskRecord(spec=TaskSpec(id=task_id, type=task_type), state=state)


def _result(task_id: str, attempt: int = 1, worker: str = "w1", value: object = 1) -> TaskResult:
    return TaskResult(task_id=task_id, attempt=attempt, worker=worker, ok=True, value=value)


def _puts(*records: TaskRecord) -> list[Write]:
    return [PutTask(record=r) for r in records]


def _ids(records: list[TaskRecord]) -> list[str]:
    return [r.id for r in records]


def _scan_all(
    store: Store, limit: int, states: Collection[TaskState] | None = None,
    task_type: str | None = None,
) -> list[str]:
    """Page through scan_tasks with the `after` cursor until a page comes back empty."""
    ids: list[str] = []
    while True:
        page = _ids(store.scan_tasks(states=states, task_type=task_type,
                                     after=ids[-1] if ids else None, limit=limit))
        if not page:
            return ids
        assert len(page) <= limit
        ids += page


# -- store conformance ----------------------------------------------------------------------------
class StoreConformance:
    """The Store contract. Subclass it as `Test...` and provide `store` and `store_clock`."""

    short_ttl_ms: ClassVar[int] = 100
    """A TTL the tests wait out (leases, results)."""
    long_ttl_ms: ClassVar[int] = 600_000
    """A TTL that never runs out during a test."""
    expiry_within_ms: ClassVar[int] = 5_000
    """How long to wait for a short TTL to run out before failing."""

    def _wait_gone(self, clock: StoreClock, condition: Callable[[], bool], what: str) -> None:
        clock.wait_until(condition, within_ms=self.short_ttl_ms + self.expiry_within_ms,
                         what=what)

    def test_is_a_store(self, store: Store) -> None:
        assert isinstance(store, Store)
        assert store.epoch() == 0 and _refused(store) == 0

    # records --------------------------------------------------------------------------------
    def test_get_task_unknown_is_none(self, store: Store) -> None:
        assert store.get_task("nope") is None

    def test_put_task_round_trips(self, store: Store) -> None:
        rec = TaskRecord(
            spec=TaskSpec(id="t-1", type="io", payload={"url": "x", "n": [1, 2]}, deps=("t-0",),
                          idempotency_key="k", max_attempts=5, timeout_ms=7, priority=2,
                          metadata={"label": "é"}, created_ms=3),
            state=TaskState.FAILED, attempt=2, updated_ms=9, reason="boom", epoch=0)
        store.apply(_puts(rec), epoch=0)
        assert store.get_task("t-1") == rec

    def test_put_task_replaces_and_moves_between_indexes(self, store: Store) -> None:
        store.apply(_puts(_record("t-1", TaskState.READY, "compute")), epoch=0)
        moved = _record("t-1", TaskState.DISPATCHED, "io")
        store.apply(_puts(moved), epoch=0)
        assert store.get_task("t-1") == moved
        assert store.scan_tasks(states=[TaskState.READY]) == []
        assert store.scan_tasks(task_type="compute") == []
        assert store.scan_tasks(states=[TaskState.DISPATCHED], task_type="io") == [moved]
        assert store.scan_tasks() == [moved]

    def test_scan_orders_by_id_bytewise(self, store: Store) -> None:
        ids = ["b", "a_1", "a1", "A1", "a-1", "a.1", "a:1", "a", "ab", "a-"]
        states = [TaskState.READY, TaskState.PENDING]
        store.apply(_puts(*(_record(i, states[n % 2]) for n, i in enumerate(ids))), epoch=0)
        assert _ids(store.scan_tasks()) == sorted(ids)
        assert _ids(store.scan_tasks(states=states)) == sorted(ids)

    def test_scan_paginates_after_cursor(self, store: Store) -> None:
        ids = [f"t-{i:02d}" for i in range(10)]
        store.apply(_puts(*(_record(i) for i in reversed(ids))), epoch=0)
        assert _ids(store.scan_tasks(limit=3)) == ids[:3]
        assert _ids(store.scan_tasks(after="t-03", limit=3)) == ids[4:7]
        assert _ids(store.scan_tasks(after="t-035", limit=100)) == ids[4:]
        assert store.scan_tasks(after="t-09") == []
        assert _scan_all(store, limit=4) == ids

    def test_scan_filters_by_states_and_type(self, store: Store) -> None:
        recs = [_record("a", TaskState.READY, "io"), _record("b", TaskState.PENDING, "compute"),
                _record("c", TaskState.READY, "compute"), _record("d", TaskState.FAILED, "io")]
        store.apply(_puts(*recs), epoch=0)
        ready_or_failed = {TaskState.READY, TaskState.FAILED}
        assert _ids(store.scan_tasks(states=ready_or_failed)) == ["a", "c", "d"]
        assert _ids(store.scan_tasks(task_type="io")) == ["a", "d"]
        assert _ids(store.scan_tasks(states=ready_or_failed, task_type="compute")) == ["c"]
        assert _ids(store.scan_tasks(states=ready_or_failed, after="a", limit=1)) == ["c"]
        assert store.scan_tasks(states=[]) == []
        assert store.scan_tasks(task_type="sleep") == []

    def test_counts_by_state_follow_each_change(self, store: Store) -> None:
        if not isinstance(store, CountsTasks):
            pytest.skip("this store does not count records by state")
        assert store.count_by_state() == {s.value: 0 for s in TaskState}
        store.apply(_puts(_record("a"), _record("b"), _record("c", TaskState.PENDING)), epoch=0)
        store.apply(_puts(_record("a", TaskState.SUCCEEDED)), epoch=0)
        counts = store.count_by_state()
        assert counts == {**{s.value: 0 for s in TaskState}, "ready": 1, "pending": 1,
                          "succeeded": 1}

    def test_scan_matches_a_model(self, store: Store) -> None:
        rng = random.Random(1)
        states = [TaskState.READY, TaskState.PENDING, TaskState.RUNNING, TaskState.SUCCEEDED]
        recs = {i: _record(i, rng.choice(states), rng.choice(["io", "compute"]))
                for i in (f"t{rng.randrange(10_000)}" for _ in range(80))}
        store.apply(_puts(*recs.values()), epoch=0)
        for _ in range(20):
            chosen = set(rng.sample(states, rng.randint(1, 3))) if rng.random() < 0.7 else None
            ttype = rng.choice([None, "io", "compute"])
            expected = sorted(i for i, r in recs.items() if (chosen is None or r.state in chosen)
                              and (ttype is None or r.spec.type == ttype))
            assert _scan_all(store, rng.randint(1, 9), states=chosen, task_type=ttype) == expected

    def test_scan_unfinished_leaves_out_terminal_records(self, store: Store) -> None:
        S = TaskState
        store.apply(_puts(_record("a", S.PENDING), _record("b", S.SUCCEEDED),
                          _record("c", S.READY, "io"), _record("d", S.FAILED),
                          _record("e", S.DISPATCHED), _record("f", S.CANCELLED),
                          _record("g", S.RUNNING), _record("h", S.SUBMITTED)), epoch=0)
        assert _ids(store.scan_unfinished()) == ["a", "c", "e", "g", "h"]
        assert _ids(store.scan_unfinished(after="c", limit=2)) == ["e", "g"]
        assert store.scan_unfinished(after="h") == []
        # A record entering a terminal state leaves the index in the same apply.
        store.apply(_puts(_record("a", S.SUCCEEDED), _record("e", S.FAILED)), epoch=0)
        assert _ids(store.scan_unfinished()) == ["c", "g", "h"]
        assert store.scan_unfinished(limit=1) == [store.get_task("c")]

    def test_scan_unfinished_pages_match_a_model(self, store: Store) -> None:
        rng = random.Random(2)
        model: dict[str, TaskState] = {}
        for _ in range(6):
            recs = [_record(f"t{rng.randrange(200):03d}", rng.choice(list(TaskState)))
                    for _ in range(40)]
            store.apply(_puts(*recs), epoch=0)
            model.update((r.id, r.state) for r in recs)
            limit, ids = rng.randint(1, 9), list[str]()
            while page := _ids(store.scan_unfinished(after=ids[-1] if ids else None,
                                                     limit=limit)):
                assert len(page) <= limit
                ids += page
            assert ids == sorted(i for i, s in model.items() if not s.terminal)

    def test_dependents_keep_order_without_duplicates(self, store: Store) -> None:
        assert store.dependents("t-1") == ()
        store.apply([AddDependents(task_id="t-1", dependents=("c", "a")),
                     AddDependents(task_id="t-1", dependents=("a", "b"))], epoch=0)
        store.apply([AddDependents(task_id="t-1", dependents=("c", "d"))], epoch=0)
        store.apply([AddDependents(task_id="t-2", dependents=("a",))], epoch=0)
        assert store.dependents("t-1") == ("c", "a", "b", "d")
        assert store.dependents("t-2") == ("a",)

    # fencing --------------------------------------------------------------------------------
    def test_current_epoch_applies_the_whole_batch(self, store: Store) -> None:
        epoch = store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms)
        assert epoch == 1
        last = _record("t-1", TaskState.PENDING)
        writes = [*_puts(_record("t-1"), _record("t-2"), last),
                  AddDependents(task_id="t-2", dependents=("t-1",))]
        store.apply(writes, epoch=epoch)
        assert store.get_task("t-1") == last and store.get_task("t-2") == _record("t-2")
        assert store.dependents("t-2") == ("t-1",)
        assert _refused(store) == 0

    def test_stale_epoch_refused_nothing_applied_counted(self, store: Store) -> None:
        old = store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms)
        assert old == 1
        store.apply(_puts(_record("t-1")), epoch=old)
        store.release_lease(LEADER_LEASE, "c1", old)
        assert store.acquire_lease(LEADER_LEASE, "c2", self.long_ttl_ms) == 2
        writes = [*_puts(_record("t-1", TaskState.DISPATCHED), _record("t-2")),
                  AddDependents(task_id="t-1", dependents=("t-2",))]
        with pytest.raises(StaleEpoch) as err:
            store.apply(writes, epoch=old)
        assert (err.value.attempted, err.value.current) == (1, 2)
        assert store.get_task("t-1") == _record("t-1") and store.get_task("t-2") is None
        assert store.dependents("t-1") == () and _ids(store.scan_tasks()) == ["t-1"]
        assert _refused(store) == 1

    def test_any_epoch_but_the_current_is_refused(self, store: Store) -> None:
        with pytest.raises(StaleEpoch) as err:
            store.apply(_puts(_record("t-1")), epoch=1)
        assert (err.value.attempted, err.value.current) == (1, 0)
        with pytest.raises(StaleEpoch):
            store.apply([], epoch=-1)
        assert _refused(store) == 2 and store.get_task("t-1") is None
        store.apply(_puts(_record("t-1")), epoch=0)
        assert store.get_task("t-1") is not None

    def test_fencing_follows_the_named_lease(self, store: Store) -> None:
        assert store.acquire_lease("other", "x", self.long_ttl_ms) == 1
        assert store.epoch("other") == 1 and store.epoch() == 0
        store.apply(_puts(_record("t-1")), epoch=1, lease="other")
        with pytest.raises(StaleEpoch):
            store.apply(_puts(_record("t-2")), epoch=1)
        assert _ids(store.scan_tasks()) == ["t-1"]

    def test_apply_answers_the_epoch_it_was_accepted_at(self, store: Store) -> None:
        assert store.apply(_puts(_record("t-0")), epoch=0) == 0
        epoch = store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms, floor=6)
        assert epoch == 7
        assert store.apply(_puts(_record("t-1")), epoch=7) == 7

    def test_lower_or_higher_epochs_are_refused(self, store: Store) -> None:
        store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms)
        store.release_lease(LEADER_LEASE, "c1", 1)
        assert store.acquire_lease(LEADER_LEASE, "c2", self.long_ttl_ms) == 2
        for epoch in (0, 1, 3):
            with pytest.raises(StaleEpoch) as err:
                store.apply(_puts(_record(f"t-{epoch}")), epoch=epoch)
            assert (err.value.attempted, err.value.current) == (epoch, 2)
            assert not isinstance(err.value, StoreDataLost)
        assert store.scan_tasks() == [] and _refused(store) == 3

    def test_apply_needs_the_lease_held_at_its_epoch(
        self, store: Store, store_clock: StoreClock,
    ) -> None:
        epoch = store.acquire_lease(LEADER_LEASE, "c1", self.short_ttl_ms)
        assert epoch == 1
        self._wait_gone(store_clock, lambda: store.lease(LEADER_LEASE) is None, "lease expiry")
        with pytest.raises(StaleEpoch):
            store.apply(_puts(_record("t-1")), epoch=epoch)
        assert store.get_task("t-1") is None

    def test_apply_is_refused_when_the_data_is_gone(self, store: Store) -> None:
        epoch = store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms)
        assert epoch is not None
        store.apply(_puts(_record("t-1")), epoch=epoch)
        self.lose_data(store)
        with pytest.raises(StoreDataLost) as err:
            store.apply(_puts(_record("t-2")), epoch=epoch)
        assert err.value.attempted == epoch
        assert store.scan_tasks() == [] and store.epoch() == 0

    def test_acquire_takes_the_floor_so_epochs_never_go_back(self, store: Store) -> None:
        assert store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms) == 1
        store.release_lease(LEADER_LEASE, "c1", 1)
        assert store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms, floor=5) == 6
        store.release_lease(LEADER_LEASE, "c1", 6)
        assert store.acquire_lease(LEADER_LEASE, "c2", self.long_ttl_ms, floor=2) == 7
        self.lose_data(store)
        assert store.acquire_lease(LEADER_LEASE, "c2", self.long_ttl_ms, floor=7) == 8
        assert store.epoch() == 8

    def test_a_namespace_started_again_takes_an_epoch_above_the_clock(self, store: Store) -> None:
        for expected in (1, 2, 3):
            assert store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms) == expected
            store.release_lease(LEADER_LEASE, "c1", expected)
        epoch = store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms, above_clock=True)
        held = store.lease(LEADER_LEASE)
        assert epoch is not None and held is not None and epoch > 3
        assert epoch >= held.expires_ms - self.long_ttl_ms - 1000  # the store's clock then
        store.release_lease(LEADER_LEASE, "c1", epoch)
        assert store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms) == epoch + 1

    def test_incarnation_is_written_once(self, store: Store) -> None:
        assert store.incarnation() is None
        assert store.claim_incarnation("a") == "a"
        assert store.claim_incarnation("b") == "a"
        assert store.incarnation() == "a"
        self.lose_data(store)
        assert store.incarnation() is None

    def test_leases_check_the_incarnation(self, store: Store) -> None:
        store.claim_incarnation("a")
        assert store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms, incarnation="b") is None
        epoch = store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms, incarnation="a")
        assert epoch == 1
        assert store.renew_lease(LEADER_LEASE, "c1", 1, self.long_ttl_ms, incarnation="a")
        assert not store.renew_lease(LEADER_LEASE, "c1", 1, self.long_ttl_ms, incarnation="b")

    def test_recover_lease_only_after_a_loss(self, store: Store) -> None:
        store.claim_incarnation("a")
        assert store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms, floor=3) == 4
        assert store.recover_lease(LEADER_LEASE, "c1", self.long_ttl_ms, floor=4, lost="a",
                                   incarnation="b") is None
        self.lose_data(store)
        store.claim_incarnation("z")  # somebody started the namespace again: too late
        assert store.recover_lease(LEADER_LEASE, "c1", self.long_ttl_ms, floor=4, lost="a",
                                   incarnation="b") is None
        self.lose_data(store)
        assert store.acquire_lease(LEADER_LEASE, "c2", self.long_ttl_ms) == 1  # no floor known
        epoch = store.recover_lease(LEADER_LEASE, "c1", self.long_ttl_ms, floor=4, lost="a",
                                    incarnation="b")
        assert epoch == 5 and store.incarnation() == "b"
        held = store.lease(LEADER_LEASE)
        assert held is not None and (held.holder, held.epoch) == ("c1", 5)
        report = {"lost": "a", "incarnation": "b", "tasks_kept": 1}
        assert store.apply([NoteDataLoss(report=report), *_puts(_record("t-1"))], epoch=5) == 5
        with pytest.raises(StaleEpoch):
            store.apply(_puts(_record("t-2")), epoch=1)
        assert store.data_losses() == [report]

    def lose_data(self, store: Store) -> None:
        """Drop every key, as a restart without persistence does (override for your store)."""
        cast(_LosesData, store).lose_data()

    # leases ---------------------------------------------------------------------------------
    def test_acquire_free_lease(self, store: Store) -> None:
        assert store.lease(LEADER_LEASE) is None
        assert store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms) == 1
        held = store.lease(LEADER_LEASE)
        assert held is not None
        assert (held.name, held.holder, held.epoch) == (LEADER_LEASE, "c1", 1)
        assert store.epoch(LEADER_LEASE) == 1

    def test_held_lease_is_refused_to_everyone(self, store: Store) -> None:
        store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms)
        assert store.acquire_lease(LEADER_LEASE, "c2", self.long_ttl_ms) is None
        assert store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms) is None
        assert store.epoch() == 1

    def test_renew_compares_holder_and_epoch(self, store: Store) -> None:
        epoch = store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms)
        assert epoch is not None
        before = store.lease(LEADER_LEASE)
        assert not store.renew_lease(LEADER_LEASE, "c2", epoch, 2 * self.long_ttl_ms)
        assert not store.renew_lease(LEADER_LEASE, "c1", epoch + 1, 2 * self.long_ttl_ms)
        assert not store.renew_lease("other", "c1", epoch, 2 * self.long_ttl_ms)
        assert store.renew_lease(LEADER_LEASE, "c1", epoch, 2 * self.long_ttl_ms)
        after = store.lease(LEADER_LEASE)
        assert before is not None and after is not None
        assert after.expires_ms - before.expires_ms >= self.long_ttl_ms * 9 // 10
        assert (after.holder, after.epoch) == ("c1", epoch) and store.epoch() == epoch

    def test_renew_resets_ttl_and_expired_lease_cannot_be_renewed(
        self, store: Store, store_clock: StoreClock,
    ) -> None:
        epoch = store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms)
        assert epoch is not None
        assert store.renew_lease(LEADER_LEASE, "c1", epoch, self.short_ttl_ms)
        self._wait_gone(store_clock, lambda: store.lease(LEADER_LEASE) is None, "lease expiry")
        assert not store.renew_lease(LEADER_LEASE, "c1", epoch, self.long_ttl_ms)
        assert store.lease(LEADER_LEASE) is None

    def test_expired_lease_goes_to_the_next_holder_with_a_new_epoch(
        self, store: Store, store_clock: StoreClock,
    ) -> None:
        first = store.acquire_lease(LEADER_LEASE, "c1", self.short_ttl_ms)
        assert first == 1
        self._wait_gone(store_clock, lambda: store.lease(LEADER_LEASE) is None, "lease expiry")
        assert store.epoch() == 1
        assert store.acquire_lease(LEADER_LEASE, "c2", self.long_ttl_ms) == 2
        assert not store.renew_lease(LEADER_LEASE, "c1", first, self.long_ttl_ms)
        held = store.lease(LEADER_LEASE)
        assert held is not None and (held.holder, held.epoch) == ("c2", 2)

    def test_release_compares_holder_and_epoch(self, store: Store) -> None:
        epoch = store.acquire_lease(LEADER_LEASE, "c1", self.long_ttl_ms)
        assert epoch == 1
        store.release_lease(LEADER_LEASE, "c2", epoch)
        store.release_lease(LEADER_LEASE, "c1", epoch + 1)
        assert store.lease(LEADER_LEASE) is not None
        store.release_lease(LEADER_LEASE, "c1", epoch)
        assert store.lease(LEADER_LEASE) is None and store.epoch() == 1
        assert not store.renew_lease(LEADER_LEASE, "c1", epoch, self.long_ttl_ms)
        store.release_lease(LEADER_LEASE, "c1", epoch)

    def test_epochs_only_grow_and_are_per_name(self, store: Store) -> None:
        assert store.epoch("unknown") == 0
        for expected in (1, 2, 3):
            assert store.acquire_lease(LEADER_LEASE, f"c{expected}", self.long_ttl_ms) == expected
            store.release_lease(LEADER_LEASE, f"c{expected}", expected)
        assert store.acquire_lease("other", "x", self.long_ttl_ms) == 1
        assert store.epoch() == 3 and store.epoch(LEADER_LEASE) == 3 and store.epoch("other") == 1

    # idempotency and exactly-once -----------------------------------------------------------
    def test_first_result_wins(self, store: Store) -> None:
        first = _result("t-1", attempt=1, worker="w1", value={"x": [1, 2]})
        assert store.get_result("t-1") is None
        assert store.put_result(first) == ResultWrite(stored=first, created=True)
        assert store.put_result(_result("t-1", attempt=2, worker="w2")) == ResultWrite(
            stored=first, created=False)
        assert store.put_result(first) == ResultWrite(stored=first, created=False)
        assert store.get_result("t-1") == first
        failed = TaskResult(task_id="t-2", attempt=3, worker="w", ok=False, error="boom",
                            finished_ms=12)
        store.put_result(failed)
        assert store.get_result("t-2") == failed

    def test_results_in_one_batch_act_as_in_sequence(self, store: Store) -> None:
        rec = _record("t-3", TaskState.DISPATCHED)
        store.apply(_puts(attrs.evolve(rec, attempt=2)), epoch=0)
        a1, a2 = _result("t-1", attempt=1, worker="w1"), _result("t-1", attempt=2, worker="w2")
        late, b = _result("t-3", attempt=1), _result("t-2")
        writes = store.put_results([ResultItem(result=r) for r in (a1, a2, late, b)])
        assert writes == [ResultWrite(stored=a1, created=True),
                          ResultWrite(stored=a1, created=False),
                          ResultWrite(stored=None, created=False, stale=True),
                          ResultWrite(stored=b, created=True)]
        assert store.put_results([]) == []

    def test_result_ttl(self, store: Store, store_clock: StoreClock) -> None:
        store.put_result(_result("t-1"), ttl_ms=self.short_ttl_ms)
        store.put_result(_result("t-2"))
        store.put_result(_result("t-3"), ttl_ms=0)  # 0 means no expiry, like None
        self._wait_gone(store_clock, lambda: store.get_result("t-1") is None, "result expiry")
        assert store.get_result("t-2") == _result("t-2")
        assert store.get_result("t-3") == _result("t-3")
        late = _result("t-1", attempt=2)
        assert store.put_result(late, ttl_ms=self.long_ttl_ms).created
        assert store.get_result("t-1") == late

    def test_late_attempts_lose(self, store: Store) -> None:
        rec = _record("t-1", TaskState.DISPATCHED)
        store.apply(_puts(attrs.evolve(rec, attempt=2)), epoch=0)
        refused = store.put_result(_result("t-1", attempt=1))
        assert refused == ResultWrite(stored=None, created=False, stale=True)
        assert store.get_result("t-1") is None
        current = _result("t-1", attempt=2, worker="w2")
        assert store.put_result(current) == ResultWrite(stored=current, created=True)
        assert store.put_result(_result("t-1", attempt=1)) == ResultWrite(
            stored=current, created=False)

    def test_results_keep_their_clock(self, store: Store) -> None:
        result = TaskResult(task_id="t-9", attempt=1, worker="w", ok=True, value=3,
                            clock={"w": 4, "c": 2})
        store.put_result(result)
        assert store.get_result("t-9") == result

    def test_claim_key_binds_once(self, store: Store) -> None:
        assert store.claim_key("k1", "t-1", "fp1") == ("t-1", "fp1")
        assert store.claim_key("k1", "t-2", "fp2") == ("t-1", "fp1")
        assert store.claim_key("k1", "t-1", "fp2") == ("t-1", "fp1")
        assert store.claim_key("k2", "t-2", "fp2") == ("t-2", "fp2")

    def test_once_begun_and_never_done_is_in_doubt(self, store: Store) -> None:
        assert store.once_begin("k", "t#1") == "new"
        assert store.once_begin("k", "t#1") == "in_doubt"  # the same run, delivered again
        assert store.once_begin("k", "t#2") == "in_doubt"
        assert store.once_begin("other", "t#2") == "new"

    def test_once_done_is_final(self, store: Store) -> None:
        assert store.once_begin("k", "t#1") == "new"
        store.once_done("k", "t#1")
        for owner in ("t#1", "t#2"):
            assert store.once_begin("k", owner) == "done"
        store.once_done("k", "t#2")
        assert store.once_begin("k", "t#3") == "done"
        assert store.once_begin("other", "t#3") == "new"

    def test_once_done_by_a_run_that_was_overtaken(self, store: Store) -> None:
        """A slow run ends after another began in doubt: done all the same (it ran)."""
        assert store.once_begin("k", "t#1") == "new"
        assert store.once_begin("k", "t#2") == "in_doubt"
        store.once_done("k", "t#1")
        assert store.once_begin("k", "t#2") == "done"
        store.once_done("k", "t#2")
        assert store.once_begin("k", "t#3") == "done"

    # workers --------------------------------------------------------------------------------
    def test_workers_sorted_by_name_and_replaced(self, store: Store) -> None:
        assert store.workers() == []
        w2 = WorkerInfo(name="w2", last_heartbeat_ms=5, state="suspect", running=("t-1", "t-2"))
        w1 = WorkerInfo(name="w1", last_heartbeat_ms=3)
        store.put_worker(w2)
        store.put_worker(w1)
        assert store.workers() == [w1, w2]
        w1b = WorkerInfo(name="w1", last_heartbeat_ms=8, running=("t-3",), epoch=4,
                         incarnation="a")
        store.put_worker(w1b)
        assert store.workers() == [w1b, w2]


# -- transport conformance ------------------------------------------------------------------------
# The delivery contract of `dtq.transport`: at least once, confirms, redelivery of unacked
# messages, round robin with prefetch, dead-lettering, priorities.


class Connect(Protocol):
    """Open a started transport in the test's namespace; deliveries go to `on_delivery`."""

    def __call__(self, name: str, on_delivery: Callable[[Delivery], None]) -> Transport: ...


class Inbox:
    """Collects deliveries from a transport's I/O thread; waits with a deadline."""

    def __init__(self) -> None:
        self._q: queue.Queue[Delivery] = queue.Queue()

    def put(self, d: Delivery) -> None:
        self._q.put(d)

    def get(self, within_s: float = 10.0) -> Delivery:
        try:
            return self._q.get(timeout=within_s)
        except queue.Empty:
            pytest.fail(f"no delivery within {within_s} s")

    def poll(self, within_s: float) -> Delivery | None:
        """The next delivery, or None if none comes within `within_s`."""
        try:
            return self._q.get(timeout=within_s)
        except queue.Empty:
            return None

    def empty_for(self, s: float) -> bool:
        """True if nothing arrives for `s` seconds (proving a negative needs a wait)."""
        try:
            self._q.put(self._q.get(timeout=s))
            return False
        except queue.Empty:
            return True


def _tagged(into: queue.Queue[tuple[int, Delivery]], consumer: int, d: Delivery) -> None:
    into.put((consumer, d))


def _confirmed(transport: Transport, messages: list[Outgoing], within_s: float = 10.0) -> None:
    done = threading.Event()
    transport.publish(messages, then=done.set)
    assert done.wait(within_s), "publish was not confirmed in time"


class TransportConformance:
    """The delivery contract of `dtq.transport`. Provide a `connect` fixture (see `Connect`)
    whose transports share one fresh namespace, available as the `namespace` fixture."""

    def _msg(self, namespace: str, address: str, body: bytes, **kw: object) -> Outgoing:
        return Outgoing(queue=queue_name(namespace, address), body=body, **kw)  # type: ignore[arg-type]

    def test_publish_is_confirmed_and_delivered_intact(
        self, connect: Connect, namespace: str,
    ) -> None:
        inbox = Inbox()
        consumer = connect("c1", inbox.put)
        consumer.consume("box", prefetch=10)
        producer = connect("p", lambda d: None)
        _confirmed(producer, [self._msg(namespace, "box", b"hello", headers={"h": 1},
                                        priority=3)])
        d = inbox.get()
        assert (d.body, d.headers.get("h"), d.redelivered) == (b"hello", 1, False)
        consumer.ack(d)

    def test_unacked_deliveries_come_back_when_the_consumer_goes(
        self, connect: Connect, namespace: str,
    ) -> None:
        first, second = Inbox(), Inbox()
        c1 = connect("c1", first.put)
        c1.consume("work", prefetch=1)
        _confirmed(connect("p", lambda d: None), [self._msg(namespace, "work", b"job")])
        assert first.get().body == b"job"
        c2 = connect("c2", second.put)
        c2.consume("work", prefetch=1)
        c1.close()
        again = second.get()
        assert again.body == b"job" and again.redelivered
        c2.ack(again)

    def test_acked_deliveries_do_not_come_back(self, connect: Connect, namespace: str) -> None:
        first, second = Inbox(), Inbox()
        c1 = connect("c1", first.put)
        c1.consume("work", prefetch=1)
        _confirmed(connect("p", lambda d: None), [self._msg(namespace, "work", b"job")])
        c1.ack(first.get())
        c2 = connect("c2", second.put)
        c2.consume("work", prefetch=1)
        c1.close()
        assert second.empty_for(0.5)

    def test_competing_consumers_share_round_robin(
        self, connect: Connect, namespace: str,
    ) -> None:
        merged: queue.Queue[tuple[int, Delivery]] = queue.Queue()
        consumers = [connect(f"c{i}", functools.partial(_tagged, merged, i)) for i in range(2)]
        for c in consumers:
            c.consume("work", prefetch=1)
        producer = connect("p", lambda d: None)
        _confirmed(producer, [self._msg(namespace, "work", f"m{i}".encode()) for i in range(4)])
        # Nothing acked yet and one unacked delivery each at most: the first two deliveries go
        # one to each consumer. (Who gets the next ones depends on when each ack lands.)
        first = [merged.get(timeout=10) for _ in range(2)]
        assert sorted(i for i, _ in first) == [0, 1]
        got = []
        for i, d in first:
            got.append(d.body)
            consumers[i].ack(d)
        for _ in range(2):
            i, d = merged.get(timeout=10)
            got.append(d.body)
            consumers[i].ack(d)
        assert sorted(got) == [b"m0", b"m1", b"m2", b"m3"]

    def test_prefetch_limits_unacked_deliveries(self, connect: Connect, namespace: str) -> None:
        inbox = Inbox()
        c = connect("c1", inbox.put)
        c.consume("work", prefetch=1)
        _confirmed(connect("p", lambda d: None),
                   [self._msg(namespace, "work", b"a"), self._msg(namespace, "work", b"b")])
        first = inbox.get()
        assert inbox.empty_for(0.3)
        c.ack(first)
        assert inbox.get().body in (b"a", b"b")

    def test_reject_without_requeue_dead_letters(self, connect: Connect, namespace: str) -> None:
        inbox, dead = Inbox(), Inbox()
        c = connect("c1", inbox.put)
        c.consume("work", prefetch=1)
        grave = connect("grave", dead.put)
        grave.consume(DEAD_QUEUE, prefetch=10)
        _confirmed(connect("p", lambda d: None), [self._msg(namespace, "work", b"poison")])
        c.reject(inbox.get(), requeue=False)
        assert dead.get().body == b"poison"

    def test_reject_with_requeue_redelivers(self, connect: Connect, namespace: str) -> None:
        inbox = Inbox()
        c = connect("c1", inbox.put)
        c.consume("work", prefetch=1)
        _confirmed(connect("p", lambda d: None), [self._msg(namespace, "work", b"again")])
        c.reject(inbox.get(), requeue=True)
        d = inbox.get()
        assert d.body == b"again" and d.redelivered

    def test_higher_priority_first_on_the_work_queue(
        self, connect: Connect, namespace: str,
    ) -> None:
        producer = connect("p", lambda d: None)
        _confirmed(producer, [self._msg(namespace, "work", b"low", priority=0),
                              self._msg(namespace, "work", b"high", priority=9),
                              self._msg(namespace, "work", b"mid", priority=5)])
        inbox = Inbox()
        c = connect("c1", inbox.put)
        c.consume("work", prefetch=1)
        order = []
        for _ in range(3):
            d = inbox.get()
            order.append(d.body)
            c.ack(d)
        assert order == [b"high", b"mid", b"low"]

    def test_cancel_stops_deliveries(self, connect: Connect, namespace: str) -> None:
        inbox = Inbox()
        c = connect("c1", inbox.put)
        c.consume("box", prefetch=10)
        producer = connect("p", lambda d: None)
        _confirmed(producer, [self._msg(namespace, "box", b"one")])
        c.ack(inbox.get())
        c.cancel("box", wait_s=10)
        _confirmed(producer, [self._msg(namespace, "box", b"two")])
        assert inbox.empty_for(0.5)

    def test_messages_published_together_arrive_in_order_each_acked_alone(
        self, connect: Connect, namespace: str,
    ) -> None:
        inbox, later = Inbox(), Inbox()
        c1 = connect("c1", inbox.put)
        c1.consume("box", prefetch=10)
        bodies = [f"m{i}".encode() for i in range(5)]
        _confirmed(connect("p", lambda d: None), [self._msg(namespace, "box", b) for b in bodies])
        got = [inbox.get() for _ in bodies]
        assert [d.body for d in got] == bodies
        for d in got[:-1]:
            c1.ack(d)
        c2 = connect("c2", later.put)
        c2.consume("box", prefetch=10)
        c1.close()
        back = set()
        while b"m4" not in back:  # the unacked one comes back (its companions may too)
            d = later.get()
            back.add(d.body)
            c2.ack(d)
        assert back <= set(bodies)

    def test_a_rejected_companion_alone_is_dead_lettered(
        self, connect: Connect, namespace: str,
    ) -> None:
        inbox, dead, later = Inbox(), Inbox(), Inbox()
        c1 = connect("c1", inbox.put)
        c1.consume("box", prefetch=10)
        grave = connect("grave", dead.put)
        grave.consume(DEAD_QUEUE, prefetch=10)
        _confirmed(connect("p", lambda d: None),
                   [self._msg(namespace, "box", b) for b in (b"a", b"poison", b"c")])
        a, poison, c = (inbox.get() for _ in range(3))
        c1.reject(poison, requeue=False)
        c1.ack(a)
        c1.ack(c)
        assert dead.get().body == b"poison"
        assert dead.empty_for(0.3)
        c1.close()
        c2 = connect("c2", later.put)
        c2.consume("box", prefetch=10)
        assert later.empty_for(0.5)
