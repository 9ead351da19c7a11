"""The cost of one submission: a fresh task is published without reading the store, a replay is
still looked up; concurrent submissions share one confirmed publish (group commit), each caller
answered only once its batch is confirmed; and `POST /tasks` awaits that confirm on the event
loop on a backend that can (`AsyncSubmit`), reading nothing for a fresh task."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from dtq.api.server import create_app
from dtq.client.backend import AsyncSubmit, SimBackend
from dtq.client.submissions import Submissions
from dtq.client.submitter import GroupCommit, Submitter
from dtq.envelope import COORDINATOR_QUEUE
from dtq.errors import ConnectionLost
from dtq.store import Store
from dtq.task import TaskSpec, id_for_key
from dtq.transport import Outgoing
from tests.api.test_api_kit import TOKEN, api_over, post
from transports.rabbitmq import delete_namespace


class CountingStore:
    """A store that counts its `get_task` calls."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.reads = 0

    def get_task(self, task_id: str) -> Any:
        self.reads += 1
        return self.inner.get_task(task_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class CountingSim(SimBackend):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.counting = CountingStore(super().store)
        self.published: list[str] = []

    @property
    def store(self) -> Store:
        return self.counting  # type: ignore[return-value]

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        self.published.extend(s.id for s in specs)
        super().submit(specs)


def test_a_fresh_task_is_published_without_a_store_read() -> None:
    backend = CountingSim(autorun=False)
    subs = Submissions(backend=backend)
    accepted = subs.submit_task({"type": "echo", "payload": 1}, None)
    assert accepted.state == "submitted" and backend.published == [accepted.id]
    assert backend.counting.reads == 0


@pytest.mark.parametrize("body,key", [
    ({"type": "echo", "payload": 1, "id": "mine-1"}, None),
    ({"type": "echo", "payload": 1}, "k-1"),
    ({"type": "echo", "payload": 1, "idempotency_key": "k-2"}, None),
])
def test_a_client_given_id_or_key_is_looked_up_and_a_replay_publishes_nothing(
    body: dict[str, Any], key: str | None,
) -> None:
    backend = CountingSim()
    subs = Submissions(backend=backend)
    first = subs.submit_task(body, key)
    assert first.state == "submitted" and backend.counting.reads == 1
    again = subs.submit_task(body, key)
    assert again.id == first.id and again.state == "succeeded"  # the sim ran it meanwhile
    assert backend.counting.reads == 2 and backend.published == [first.id]
    if key is not None:
        assert first.id == id_for_key(key)


def test_a_fresh_task_with_dependencies_reads_only_them() -> None:
    backend = CountingSim(autorun=False)
    subs = Submissions(backend=backend)
    a = subs.submit_task({"type": "echo"}, None)
    subs.submit_task({"type": "echo", "deps": [a.id]}, None)
    assert backend.counting.reads == 0  # `a` is known from this process's recent submissions
    backend.advance(1_000)  # recorded by the leader; another process knows it from the store
    Submissions(backend=backend).submit_task({"type": "echo", "deps": [a.id]}, None)
    assert backend.counting.reads == 1


# --- group commit ---------------------------------------------------------------------------


class SlowBroker:
    """A `publish` that confirms each call after `delay_s`, on its own thread."""

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self.calls: list[list[Outgoing]] = []
        self.confirmed: set[bytes] = set()
        self.lock = threading.Lock()

    def publish(self, out: list[Outgoing], then: Callable[[], None]) -> None:
        with self.lock:
            self.calls.append(out)

        def confirm() -> None:
            time.sleep(self.delay_s)
            with self.lock:
                self.confirmed.update(m.body for m in out)
            then()

        threading.Thread(target=confirm, daemon=True).start()


def test_concurrent_submissions_share_a_publish_and_wait_for_its_confirm() -> None:
    broker = SlowBroker()
    group = GroupCommit(broker.publish)
    n = 40
    answered_before_confirm: list[int] = []
    start = threading.Barrier(n)

    def submit(i: int) -> None:
        body = f"m{i}".encode()
        done = threading.Event()
        start.wait()
        group.add([Outgoing(queue="q", body=body)], lambda exc: done.set())
        assert done.wait(5)
        with broker.lock:
            if body not in broker.confirmed:
                answered_before_confirm.append(i)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not answered_before_confirm
    assert sum(len(c) for c in broker.calls) == n
    assert group.batches == len(broker.calls) < n
    # one caller alone is not held back: nothing in flight, its batch goes at once
    done = threading.Event()
    group.add([Outgoing(queue="q", body=b"alone")], lambda exc: done.set())
    assert broker.calls[-1][0].body == b"alone" and done.wait(5)


def test_a_publish_that_raises_tells_its_callers_and_the_group_goes_on() -> None:
    calls: list[int] = []

    def publish(out: list[Outgoing], then: Callable[[], None]) -> None:
        calls.append(len(out))
        if len(calls) == 1:
            raise ConnectionLost("down")
        then()

    group = GroupCommit(publish)
    heard: list[BaseException | None] = []
    group.add([Outgoing(queue="q", body=b"1")], heard.append)
    group.add([Outgoing(queue="q", body=b"2")], heard.append)
    assert [type(e).__name__ for e in heard] == ["ConnectionLost", "NoneType"]


@pytest.mark.rabbitmq
def test_concurrent_submits_on_rabbitmq_are_grouped_and_all_confirmed(rabbitmq_url: str) -> None:
    ns = f"t-group-{uuid.uuid4().hex[:8]}"
    sub = Submitter(rabbitmq_url, namespace=ns, name="grouper")
    try:
        n = 60
        start = threading.Barrier(n)

        def submit(i: int) -> None:
            start.wait()
            sub.submit([TaskSpec(id=f"g-{i}", type="echo")], timeout_s=10)

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert sub.group.batches < n
        from dtq.bench.common import queue_counts
        from dtq.transport import queue_name
        ready, _ = queue_counts(rabbitmq_url, queue_name(ns, COORDINATOR_QUEUE))
        assert 0 < ready < n  # bundled: fewer broker messages than submissions
    finally:
        sub.close()
        delete_namespace(rabbitmq_url, ns, ["grouper", COORDINATOR_QUEUE])


# --- the route --------------------------------------------------------------------------------


class AwaitableSim(CountingSim):
    """A simulated cluster whose submissions the API can await."""

    awaited = 0

    async def submit_async(self, specs: Sequence[TaskSpec]) -> None:
        self.awaited += 1
        await asyncio.sleep(0)
        self.submit(specs)


def test_post_tasks_awaits_a_fresh_task_and_reads_nothing() -> None:
    backend = AwaitableSim(autorun=False)
    assert isinstance(backend, AsyncSubmit)
    api = api_over(backend, create_app(backend, tokens=[TOKEN]))
    r = post(api, "/tasks", {"type": "echo", "payload": 1})
    assert r.status_code == 202 and r.json()["state"] == "submitted", r.text
    assert backend.awaited == 1 and backend.counting.reads == 0
    r = post(api, "/tasks", {"type": "echo", "payload": 1}, **{"Idempotency-Key": "k"})
    assert r.status_code == 202 and backend.awaited == 1 and backend.counting.reads == 1
    again = post(api, "/tasks", {"type": "echo", "payload": 1}, **{"Idempotency-Key": "k"})
    assert again.json()["id"] == r.json()["id"] and backend.published.count(r.json()["id"]) == 1
    assert post(api, "/tasks", {"type": "echo", "payload": 2},
                **{"Idempotency-Key": "k"}).status_code == 409
