"""A dispatch its workers gave back again and again, in a quorum namespace, on both backends
(and a submission its leaders gave back, on RabbitMQ).

The guarantee: a dispatch is never left to the broker's delivery limit. A quorum queue counts
what its consumers give back (they went away holding it: a task that kills its worker, a crash
loop) and, past `QUORUM_DELIVERY_LIMIT`, dead-letters the message: the task's only dispatch
would be gone and its record dispatched for ever. A worker that receives a dispatch on its last
delivery hands it back to the leader instead of running it (`dispatch_handed_back`), and the
leader fails that attempt: it retries within the task's attempts (here: the next attempt
succeeds) or fails the task with the reason. Here the dispatch is given back five times before
any worker handles it: in the simulator the worker holding it is killed each time (the work
queue counts as a quorum queue does, `Simulation.delivery_limit`); on RabbitMQ a bare AMQP
client takes it and gives it back (`basic_nack`), before the worker starts.
"""

from __future__ import annotations

from typing import Any

import pika
import pytest

from dtq.client.submitter import Submitter
from dtq.envelope import COORDINATOR_QUEUE, WORK_QUEUE
from dtq.history import Event
from dtq.runtime.process import NodeConfig, Supervisor
from dtq.scenario.model import load
from dtq.scenario.real import wait_for
from dtq.scenario.sim import run_memory
from dtq.task import TaskRecord, TaskSpec, TaskState
from dtq.transport import QUORUM_DELIVERY_LIMIT, queue_name
from tests.scenariokit import ROOT, held
from tests.simkit import events, make_sim, run_until_done
from transports.redis import RedisHistory, RedisStore


def _handed_back(history: list[Event], task: str) -> list[Event]:
    return [e for e in history if e.kind == "dispatch_handed_back" and e.data["task"] == task]


def _check_handed_back(history: list[Event], rec: TaskRecord | None) -> None:
    """Handed back on its last delivery, never run at attempt 1; succeeded at attempt 2."""
    assert rec is not None and rec.state is TaskState.SUCCEEDED and rec.attempt == 2, rec
    [handed] = _handed_back(history, "given-back")
    assert handed.data == {"task": "given-back", "attempt": 1,
                           "deliveries": QUORUM_DELIVERY_LIMIT}
    started = [e.data["attempt"] for e in history
               if e.kind == "started" and e.data["task"] == "given-back"]
    assert started == [2]


def test_a_dispatch_on_its_last_delivery_is_handed_back_in_the_simulator() -> None:
    sim = make_sim(1, workers=1)
    sim.delivery_limit = QUORUM_DELIVERY_LIMIT
    worker = sim.nodes["worker-1"]
    sim.submit(TaskSpec(id="given-back", type="echo", payload=1))
    for _ in range(QUORUM_DELIVERY_LIMIT):  # killed holding it, before it handles it
        sim.run(until_ms=sim.now_ms + 30_000, stop=lambda: worker.alive and bool(worker.unacked))
        assert worker.unacked and not events(sim, "started", task="given-back")
        sim.crash("worker-1", restart=True)
    result = run_until_done(sim, 1)
    assert result.ok, result.violations
    _check_handed_back(sim.history.events, sim.store.get_task("given-back"))
    assert not [e for e in sim.history.events if e.kind == "dead_lettered"]


@pytest.mark.rabbitmq
def test_a_dispatch_on_its_last_delivery_is_handed_back_on_rabbitmq(
    real_namespace: str, rabbitmq_url: str, redis_url: str,
) -> None:
    common = {"broker_url": rabbitmq_url, "store_url": redis_url, "namespace": real_namespace,
              "history": True, "log_level": "error", "quorum": True}
    leader = Supervisor([NodeConfig(role="coordinator", name="coordinator-1", **common)])
    workers = Supervisor([NodeConfig(role="worker", name="worker-1", **common)])
    store = RedisStore.from_url(redis_url, prefix=real_namespace)
    leader.start()
    submitter = Submitter(rabbitmq_url, namespace=real_namespace, name="client", quorum=True)
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        wait_for(lambda: store.lease("coordinator") is not None, 60, "a leader", leader.poll)
        submitter.submit([TaskSpec(id="given-back", type="echo", payload=1)])

        def dispatched() -> bool:
            rec = store.get_task("given-back")
            return rec is not None and rec.state is TaskState.DISPATCHED

        wait_for(dispatched, 60, "the dispatch", leader.poll)
        work, channel = queue_name(real_namespace, WORK_QUEUE), [conn.channel()]

        def take() -> Any:
            """The next message of the work queue, if any (the leader may have persisted the
            dispatch and not yet declared the queue: a 404 closes the channel)."""
            try:
                return channel[0].basic_get(work)
            except pika.exceptions.ChannelClosedByBroker:
                channel[0] = conn.channel()
                return None, None, None

        counts = []
        for _ in range(QUORUM_DELIVERY_LIMIT):  # taken and given back, as by a dying worker
            got: list[Any] = []
            wait_for(lambda got=got: got.append(take()) or got[-1][0] is not None,
                     60, "the dispatch in the work queue", leader.poll)
            method, props, _ = got[-1]
            counts.append((props.headers or {}).get("x-delivery-count"))
            channel[0].basic_nack(method.delivery_tag, requeue=True)
        assert counts == list(range(QUORUM_DELIVERY_LIMIT))
        workers.start()

        def ended() -> bool:
            leader.poll()
            workers.poll()
            rec = store.get_task("given-back")
            return rec is not None and rec.state.terminal

        wait_for(ended, 120, "the task's end")
        history = RedisHistory.from_url(redis_url, prefix=real_namespace).read_events()
        _check_handed_back(history, store.get_task("given-back"))
    finally:
        conn.close()
        submitter.close()
        workers.stop_all()
        leader.stop_all()
        store.close()


@pytest.mark.rabbitmq
def test_a_submission_on_its_last_delivery_fails_with_the_reason_on_rabbitmq(
    real_namespace: str, rabbitmq_url: str, redis_url: str,
) -> None:
    """The leader's queue counts too: a submission given back five times (leaders that died
    holding it) is not run on its last delivery, where one more loss would dead-letter it and
    leave no trace; the task fails with the reason instead."""
    common = {"broker_url": rabbitmq_url, "store_url": redis_url, "namespace": real_namespace,
              "history": True, "log_level": "error", "quorum": True}
    cluster = Supervisor([NodeConfig(role=name.split("-")[0], name=name, **common)
                          for name in ("coordinator-1", "worker-1")])
    store = RedisStore.from_url(redis_url, prefix=real_namespace)
    submitter = Submitter(rabbitmq_url, namespace=real_namespace, name="client", quorum=True)
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        submitter.submit([TaskSpec(id="too-often", type="echo", payload=1)])
        inbox, channel = queue_name(real_namespace, COORDINATOR_QUEUE), conn.channel()
        counts = []
        for _ in range(QUORUM_DELIVERY_LIMIT):  # taken and given back, as by a dying leader
            method, props, _ = channel.basic_get(inbox)
            assert method is not None
            counts.append((props.headers or {}).get("x-delivery-count"))
            channel.basic_nack(method.delivery_tag, requeue=True)
        assert counts == list(range(QUORUM_DELIVERY_LIMIT))
        cluster.start()

        def ended() -> bool:
            rec = store.get_task("too-often")
            return rec is not None and rec.state.terminal

        wait_for(ended, 120, "the task's end", cluster.poll)
        rec = store.get_task("too-often")
        assert rec is not None and rec.state is TaskState.FAILED, rec
        assert rec.reason is not None and "came back 5 times" in rec.reason, rec.reason
        history = RedisHistory.from_url(redis_url, prefix=real_namespace).read_events()
        assert not [e for e in history if e.kind == "dispatched"]
    finally:
        conn.close()
        submitter.close()
        cluster.stop_all()
        store.close()


def test_workers_crash_looping_on_an_unreachable_store_hand_dispatches_back() -> None:
    """scenarios/testbed-faults.toml on the simulator: while the store is out of reach, workers
    crash on their first store read of each dispatch, and each crash gives back what they
    held. The hand-back comes before any store read, so a dispatch given back five times goes
    back to the leader instead of to the dead queue (before, a task stayed dispatched until a
    takeover's sweep, 60 s on)."""
    result = run_memory(load(ROOT / "scenarios" / "testbed-faults.toml"))
    s = held(result)
    assert s["tasks"]["succeeded"] == 900
    assert [e for e in result.events if e.kind == "dispatch_handed_back"]
    assert not [e for e in result.events if e.kind == "dead_lettered"]
    assert not [e for e in result.events if e.kind == "reassigned"]
