"""On real processes: a waiting Submitter hears the end of every task it submitted exactly
once, across a leader killed mid-run while the standby had crashed (the reply address is in
the task's record; the supervisor restarts the standby, which takes over) and ends published
while its listener was not subscribed (it re-reads them from the store when it
subscribes again). Skipped when RabbitMQ or Redis is down locally; failing under CI."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from dtq.client.submitter import Submitter
from dtq.envelope import Finished
from dtq.runtime.process import NodeConfig, Supervisor
from dtq.scenario.real import wait_for
from dtq.store import finished_channel
from dtq.task import TaskSpec
from transports.rabbitmq import delete_namespace
from transports.redis import RedisHistory, RedisStore

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


def _next_end(heard: queue.Queue[Finished], sup: Supervisor, timeout_s: float) -> Finished:
    """The next end heard, restarting crashed nodes while waiting: a leader that lost its lease
    under load exits to come back as a standby, and unsupervised the cluster has no coordinator
    left once the test kills the other. Raises queue.Empty after `timeout_s` of silence."""
    deadline = time.monotonic() + timeout_s
    while True:
        sup.poll()
        try:
            return heard.get(timeout=0.2)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise


def _hear(heard: queue.Queue[Finished], ends: Counter[str], until: int, specs: list[TaskSpec],
          sup: Supervisor, ns: str, store: RedisStore, redis_url: str) -> None:
    """Count heard ends until `until` tasks are heard; on a 60 s silence fail naming the tasks
    not heard, with their records, results and history events."""
    while len(ends) < until:
        try:
            ends[_next_end(heard, sup, 60).task_id] += 1
        except queue.Empty:
            history = RedisHistory.from_url(redis_url, prefix=ns)
            events = history.read_events()
            history.close()
            lines = []
            for task_id in sorted({s.id for s in specs} - set(ends)):
                lines.append(f"{task_id}: {store.get_task(task_id)!r} "
                             f"result={store.get_result(task_id)!r}")
                lines += [f"    {e.seq} {e.actor} {e.kind} {e.data}" for e in events
                          if task_id in str(e.data)]
            pytest.fail("ends not heard within 60 s:\n" + "\n".join(lines))


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
        _hear(heard, ends, 10, specs, sup, ns, store, redis_url)
        lease = store.lease("coordinator")
        assert lease is not None
        # The standby crashed too (as a leader that lost its lease under load exits): the
        # supervisor brings it back and it takes over from the leader killed next.
        standby = next(n for n in NODES if n.startswith("c") and n != lease.holder)
        standby_process = sup.nodes[standby].process
        assert standby_process is not None and standby_process.pid is not None
        os.kill(standby_process.pid, signal.SIGKILL)
        standby_process.join(5)
        sup.kill(lease.holder)  # DAG tasks still wait: the next leader dispatches them
        _hear(heard, ends, len(specs), specs, sup, ns, store, redis_url)
        # Ends published while the listener is not subscribed are lost to it ...
        pubsub = submitter.listener._pubsub  # type: ignore[union-attr]
        pubsub.unsubscribe()
        submitter.submit(later)
        wait_for(lambda: all((r := store.get_task(t.id)) is not None and r.state.terminal
                             for t in later), 30, "the later tasks", sup.poll)
        assert heard.empty()
        pubsub.subscribe(finished_channel(ns, "client"))  # ... and re-read when it subscribes
        assert resubscribed.wait(30), "the listener subscribed again"
        _hear(heard, ends, len(specs) + len(later), specs + later, sup, ns, store, redis_url)
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
