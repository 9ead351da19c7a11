"""On real processes: a waiting Submitter hears the end of every task it submitted exactly
once, across a leader killed mid-run (the reply address is in the task's record) and ends
published while its listener was not subscribed (it re-reads them from the store when it
subscribes again). Skipped when RabbitMQ or Redis is down locally; failing under CI."""

from __future__ import annotations

import contextlib
import queue
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from dtq.envelope import Finished
from dtq.process import NodeConfig, Supervisor
from dtq.realrun import wait_for
from dtq.store import finished_channel
from dtq.submitter import Submitter
from dtq.task import TaskSpec
from transports.rabbitmq import delete_namespace
from transports.redis import RedisStore

pytestmark = pytest.mark.rabbitmq

NODES = ("coordinator-1", "coordinator-2", "worker-1", "worker-2")


@pytest.fixture
def cluster(rabbitmq_url: str, redis_url: str) -> Iterator[tuple[str, Supervisor, RedisStore]]:
    """Two coordinators and two workers in a namespace of their own, removed afterwards."""
    ns = f"notices-{uuid.uuid4().hex[:8]}"
    common: dict[str, Any] = {"broker_url": rabbitmq_url, "store_url": redis_url,
                              "namespace": ns, "history": True, "log_level": "warning"}
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(delete_namespace, rabbitmq_url, ns, [*NODES, "client"])
        store = cleanup.enter_context(contextlib.closing(RedisStore.from_url(redis_url,
                                                                             prefix=ns)))
        cleanup.callback(store.delete_all)
        sup = Supervisor([NodeConfig(role="coordinator" if n.startswith("c") else "worker",
                                     name=n, **common) for n in NODES])
        cleanup.callback(sup.stop_all)
        sup.start()
        yield ns, sup, store


def _dags(n: int) -> list[TaskSpec]:
    out = []
    for k in range(n):
        out += [TaskSpec(id=f"d{k}-a", type="sleep", payload={"ms": 150}),
                TaskSpec(id=f"d{k}-b", type="echo", payload=k, deps=(f"d{k}-a",)),
                TaskSpec(id=f"d{k}-c", type="nope" if k % 4 == 0 else "echo", payload=k,
                         deps=(f"d{k}-a",), max_attempts=1),
                TaskSpec(id=f"d{k}-d", type="echo", payload=k, deps=(f"d{k}-b", f"d{k}-c"))]
    return out


def test_every_end_is_heard_once_across_a_leader_kill_and_ends_missed_while_unsubscribed(
    cluster: tuple[str, Supervisor, RedisStore], rabbitmq_url: str, redis_url: str,
) -> None:
    ns, sup, store = cluster
    wait_for(lambda: store.lease("coordinator") is not None, 30, "a leader", sup.poll)
    heard: queue.Queue[Finished] = queue.Queue()
    submitter = Submitter(rabbitmq_url, namespace=ns, name="client", on_finished=heard.put,
                          store_url=redis_url)
    resubscribed = threading.Event()
    reread = submitter.reread
    submitter.listener.on_resubscribed = lambda: (reread(), resubscribed.set())  # type: ignore
    specs, later = _dags(20), [TaskSpec(id=f"late-{n}", type="echo", payload=n)
                               for n in range(10)]
    ends: Counter[str] = Counter()
    try:
        submitter.submit(specs)
        while len(ends) < 10:
            ends[heard.get(timeout=60).task_id] += 1
        lease = store.lease("coordinator")
        assert lease is not None
        sup.kill(lease.holder)  # DAG tasks still wait: the next leader dispatches them
        while len(ends) < len(specs):
            ends[heard.get(timeout=60).task_id] += 1
        # Ends published while the listener is not subscribed are lost to it ...
        pubsub = submitter.listener._pubsub  # type: ignore[union-attr]
        pubsub.unsubscribe()
        submitter.submit(later)
        wait_for(lambda: all((r := store.get_task(t.id)) is not None and r.state.terminal
                             for t in later), 30, "the later tasks", sup.poll)
        assert heard.empty()
        pubsub.subscribe(finished_channel(ns, "client"))  # ... and re-read when it subscribes
        assert resubscribed.wait(30), "the listener subscribed again"
        while len(ends) < len(specs) + len(later):
            ends[heard.get(timeout=60).task_id] += 1
        submitter.reread()  # nothing is heard twice, however often it re-reads
        assert heard.empty()
    finally:
        submitter.close()
    specs += later
    assert set(ends) == {s.id for s in specs}
    assert max(ends.values()) == 1
    failed = {s.id for s in specs if s.id.endswith(("-c", "-d")) and int(s.id[1:-2]) % 4 == 0}
    for s in specs:
        rec = store.get_task(s.id)
        assert rec is not None and rec.state.value == ("failed" if s.id in failed
                                                       else "succeeded")
