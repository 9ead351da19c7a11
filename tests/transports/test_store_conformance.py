"""The store conformance suite on SimStore and on RedisStore, plus Redis-only behaviour."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from uuid import uuid4

import attrs
import pytest

from dtq.clock import VectorClock
from dtq.errors import StaleEpoch, StoreUnavailable
from dtq.store import Notify, PutTask, ResultItem, ResultWrite
from dtq.task import TaskRecord, TaskResult, TaskSpec
from dtq.testing.conformance import ManualClock, PollingClock, StoreClock, StoreConformance
from transports.memory_store import SimStore
from transports.redis import FinishedListener, RedisHistory, RedisStore


class TestSimStore(StoreConformance):
    @pytest.fixture
    def store_clock(self) -> ManualClock:
        return ManualClock()

    @pytest.fixture
    def store(self, store_clock: ManualClock) -> SimStore:
        return SimStore(now_ms=store_clock.now)


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisStore]:
    store = RedisStore.from_url(redis_url, prefix=f"test-{uuid4().hex}")
    try:
        yield store
    finally:
        store.delete_all()
        store.close()


class TestRedisStore(StoreConformance):
    short_ttl_ms = 150

    @pytest.fixture
    def store_clock(self) -> StoreClock:
        return PollingClock()

    @pytest.fixture
    def store(self, redis_store: RedisStore) -> RedisStore:
        return redis_store


def test_a_durable_write_waits_for_its_replicas_longer_than_a_socket_timeout(
    redis_url: str,
) -> None:
    """`?wait_replicas=1&wait_ms=1300` on a Redis without replicas: each write (the lease's
    too, on its own short-timeout connection) waits the whole 1.3 s for a replica, and is
    reported as not replicated, not as a connection that timed out and was dropped (the
    sockets outwait the WAIT)."""
    store = RedisStore.from_url(f"{redis_url}?wait_replicas=1&wait_ms=1300",
                                prefix=f"test-{uuid4().hex[:8]}")
    try:
        with pytest.raises(StoreUnavailable, match="NOT REPLICATED: 0 of 1"):
            store.acquire_lease("coordinator", "c1", 5000)
        with pytest.raises(StoreUnavailable, match="NOT REPLICATED: 0 of 1"):
            store.apply([PutTask(record=TaskRecord(spec=TaskSpec(id="t", type="echo"),
                                                   epoch=1))], epoch=1)
    finally:
        store.delete_all()
        store.close()


class TestRedisOnly:
    def test_every_key_lives_under_the_prefix(self, redis_store: RedisStore) -> None:
        spec = TaskSpec(id="t-1", type="io")
        redis_store.apply([PutTask(record=TaskRecord(spec=spec))], epoch=0)
        redis_store.put_result(TaskResult(task_id="t-1", attempt=1, worker="w", ok=True))
        keys = list(redis_store.client.scan_iter(match=f"{redis_store.prefix}:*"))
        assert len(keys) >= 6
        assert redis_store.delete_all() == len(keys)
        assert list(redis_store.client.scan_iter(match=f"{redis_store.prefix}:*")) == []

    def test_stale_count_is_shared_between_clients(
        self, redis_store: RedisStore, redis_url: str,
    ) -> None:
        other = RedisStore.from_url(redis_url, prefix=redis_store.prefix)
        try:
            with pytest.raises(Exception, match="stale epoch"):
                other.apply([], epoch=4)
            assert redis_store.stale_writes_refused == 1
        finally:
            other.close()

    def test_unreachable_server_raises_store_unavailable_quickly(self) -> None:
        store = RedisStore.from_url("redis://127.0.0.1:1/0", prefix=f"test-{uuid4().hex}")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as err:
            store.epoch()
        assert time.monotonic() - started < 1.0
        assert err.value.__cause__ is not None

    def test_retried_first_write_recognises_its_own_lost_write(
        self, redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        import redis as redis_py

        real = redis_store._put_results
        calls: list[int] = []

        def lose_first_reply(*args: object, **kwargs: object) -> object:
            reply = real(*args, **kwargs)  # type: ignore[arg-type]
            calls.append(1)
            if len(calls) == 1:
                raise redis_py.ConnectionError("reply lost")
            return reply

        monkeypatch.setattr(redis_store, "_put_results", lose_first_reply)
        mine = TaskResult(task_id="t-1", attempt=1, worker="w", ok=True)
        assert redis_store.put_result(mine) == ResultWrite(stored=mine, created=True)
        assert len(calls) == 2
        assert redis_store.put_result(mine) == ResultWrite(stored=mine, created=False)


class TestRedisHistory:
    @pytest.fixture
    def history(self, redis_store: RedisStore) -> RedisHistory:
        ticks = iter(range(100, 10_000))
        return RedisHistory(redis_store.client, prefix=redis_store.prefix,
                            now_ms=lambda: next(ticks), buffer_size=3)

    def test_events_read_back_in_order(self, history: RedisHistory) -> None:
        clock = VectorClock().tick("a")
        history.record("a", "submit", clock, {"task": "t-1"})
        history.record("b", "start", clock.tick("b"), {})
        assert history.read_events() == []  # still buffered
        history.flush()
        events = history.read_events()
        assert [(e.seq, e.time_ms, e.actor, e.kind) for e in events] == [
            (0, 100, "a", "submit"), (1, 101, "b", "start")]
        assert events[1].clock == clock.tick("b") and events[0].data == {"task": "t-1"}

    def test_writers_share_one_sequence(self, history: RedisHistory, redis_url: str) -> None:
        other = RedisHistory.from_url(redis_url, prefix=history.key.rsplit(":", 1)[0])
        try:
            history.record("a", "x", VectorClock(), {})
            history.flush()
            other.record("b", "y", VectorClock(), {})
            history.record("a", "z", VectorClock(), {})
            history.flush()
            assert [(e.seq, e.kind) for e in history.read_events()] == [
                (0, "x"), (1, "y"), (2, "z")]
        finally:
            other.close()

    def test_a_retried_push_is_read_once(self, history: RedisHistory) -> None:
        history.record("a", "x", VectorClock(), {})
        batch = list(history._buffer)
        history.flush()
        history.client.rpush(history.key, *batch)  # as a retry after a lost reply would
        assert [e.kind for e in history.read_events()] == ["x"]


class TestNotices:
    """A waiting client hears of a task's end from the write that records it, and only then."""

    @pytest.fixture
    def heard(self, redis_store: RedisStore, redis_url: str) -> Iterator[queue.Queue[tuple]]:
        got: queue.Queue[tuple] = queue.Queue()
        listener = FinishedListener(redis_url, prefix=redis_store.prefix, client="client-1",
                                    on_notice=lambda *notice: got.put(notice))
        yield got
        listener.close()

    def test_a_stored_result_notifies_once(
        self, redis_store: RedisStore, heard: queue.Queue[tuple],
    ) -> None:
        result = TaskResult(task_id="t-1", attempt=1, worker="w", ok=True, value=1)
        assert redis_store.put_result(result, notify="client-1").created
        assert heard.get(timeout=5) == ("t-1", "succeeded", None)
        again = TaskResult(task_id="t-1", attempt=2, worker="w2", ok=True, value=2)
        assert not redis_store.put_result(again, notify="client-1").created
        redis_store.put_result(TaskResult(task_id="t-2", attempt=1, worker="w", ok=True))
        with pytest.raises(queue.Empty):  # a lost race and a write without notify: silence
            heard.get(timeout=0.3)

    def test_a_fenced_batch_notifies_only_when_applied(
        self, redis_store: RedisStore, heard: queue.Queue[tuple],
    ) -> None:
        epoch = redis_store.acquire_lease("coordinator", "c1", 10_000)
        assert epoch is not None
        notice = Notify(client="client-1", task_id="t-9", state="failed", reason="boom")
        with pytest.raises(StaleEpoch):
            redis_store.apply([notice], epoch=epoch - 1)
        redis_store.apply([notice], epoch=epoch)
        assert heard.get(timeout=5) == ("t-9", "failed", "boom")
        with pytest.raises(queue.Empty):
            heard.get(timeout=0.3)

    def test_a_listener_cut_off_by_the_server_subscribes_again(
        self, redis_store: RedisStore, heard: queue.Queue[tuple],
    ) -> None:
        name = f"dtq-notices:{redis_store.prefix}:finished:client-1"
        ours = [c["id"] for c in redis_store.client.client_list() if c["name"] == name]
        assert len(ours) == 1
        redis_store.client.client_kill_filter(_id=ours[0])
        result = TaskResult(task_id="t-1", attempt=1, worker="w", ok=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # a notice published while it is away is lost
            redis_store.put_results([ResultItem(result=attrs.evolve(
                result, task_id=f"t-{time.monotonic_ns()}"), notify="client-1")])
            try:
                heard.get(timeout=0.2)
                return
            except queue.Empty:
                continue
        pytest.fail("the listener did not come back within 10 s")

    def test_sim_store_keeps_the_notices(self) -> None:
        store = SimStore()
        store.put_result(TaskResult(task_id="t-1", attempt=1, worker="w", ok=True),
                         notify="client-1")
        store.apply([Notify(client="client-1", task_id="t-2", state="cancelled")], epoch=0)
        assert [(n.client, n.task_id, n.state) for n in store.notices] == [
            ("client-1", "t-1", "succeeded"), ("client-1", "t-2", "cancelled")]
