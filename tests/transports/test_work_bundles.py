"""Work bundles: a leader's transport made with `work_bundle=N` lets a burst of dispatches share
broker messages. Unit tests of how a publish is cut, then RabbitMQ itself: the parts reach
competing workers bundle by bundle, each is acked on its own, and a cluster with bundles runs
every task of a burst, a worker killed in the middle of it included."""

from __future__ import annotations

import contextlib
import queue
import uuid
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from dtq.client.submitter import Submitter
from dtq.envelope import Finished
from dtq.runtime.process import NodeConfig, Supervisor
from dtq.scenario.real import wait_for
from dtq.task import TaskSpec, TaskState
from dtq.testing.conformance import Inbox
from dtq.transport import BUNDLE_HEADER, Delivery, Outgoing, queue_name
from transports.bundles import work_bundle_size
from transports.rabbitmq import RabbitTransport, delete_namespace
from transports.redis import RedisHistory, RedisStore


@pytest.mark.parametrize(("dispatches", "cap", "parts"), [
    (1, 8, 1), (10, 8, 1), (31, 8, 1), (32, 8, 2), (100, 8, 6), (250, 8, 8), (5000, 8, 8),
    (250, 1, 1), (250, 32, 15)])
def test_a_burst_is_cut_into_at_least_sixteen_bundles(dispatches: int, cap: int,
                                                       parts: int) -> None:
    assert work_bundle_size(dispatches, cap) == parts


def _work(i: int, priority: int = 0) -> Outgoing:
    return Outgoing(queue="ns.work", body=f"d{i}".encode(), priority=priority)


def test_publish_bundles_the_work_queue_only_when_asked() -> None:
    burst = [_work(i) for i in range(64)]
    plain = RabbitTransport(namespace="ns")._bundled(burst)
    assert plain == burst
    out = RabbitTransport(namespace="ns", work_bundle=8)._bundled(burst)
    assert len(out) == 16  # 64 // 16 = 4 parts each
    assert all(m.headers == {BUNDLE_HEADER: 4} for m in out)
    assert b"\n".join(m.body for m in out) == b"\n".join(m.body for m in burst)


def test_work_bundles_keep_priorities_apart_and_other_queues_in_order() -> None:
    t = RabbitTransport(namespace="ns", work_bundle=8)
    burst = [_work(i, priority=i % 2) for i in range(64)]
    burst += [Outgoing(queue="ns.coordinator", body=f"c{i}".encode(), priority=i % 2)
              for i in range(3)]
    out = t._bundled(burst)
    work = [m for m in out if m.queue == "ns.work"]
    assert {m.priority for m in work} == {0, 1}
    for m in work:
        assert {int(b[1:]) % 2 for b in m.body.split(b"\n")} == {m.priority}
    (coordinator,) = [m for m in out if m.queue == "ns.coordinator"]
    assert coordinator.body == b"c0\nc1\nc2"  # one bundle, in publish order


def test_a_small_burst_and_marked_messages_travel_alone() -> None:
    t = RabbitTransport(namespace="ns", work_bundle=8)
    few = [_work(i) for i in range(31)]
    assert t._bundled(few) == few
    marked = [Outgoing(queue="ns.work", body=b"x", headers={"x-dtq-failures": 1}),
              Outgoing(queue="ns.work", body=b"two\nlines")]
    out = t._bundled([_work(i) for i in range(40)] + marked)
    assert out[-2:] == marked


def test_work_bundle_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RabbitTransport(namespace="ns", work_bundle=0)


@pytest.fixture
def namespace(rabbitmq_url: str) -> Iterator[str]:
    ns = f"test-wb-{uuid.uuid4().hex[:8]}"
    yield ns
    delete_namespace(rabbitmq_url, ns, [])


@pytest.mark.rabbitmq
def test_competing_workers_take_a_bundle_each_and_ack_its_parts(
    rabbitmq_url: str, namespace: str,
) -> None:
    opened: list[RabbitTransport] = []

    def connect(name: str, inbox: Inbox, work_bundle: int = 1) -> RabbitTransport:
        t = RabbitTransport(rabbitmq_url, namespace=namespace, name=name, work_bundle=work_bundle,
                            on_delivery=inbox.put)
        t.start()
        opened.append(t)
        return t

    try:
        a, b, unused = Inbox(), Inbox(), Inbox()
        ca, cb = connect("a", a), connect("b", b)
        ca.consume("work", prefetch=1)  # one broker message each until it is acked
        cb.consume("work", prefetch=1)
        leader = connect("leader", unused, work_bundle=4)
        bodies = [f"d{i}".encode() for i in range(64)]
        leader.publish([Outgoing(queue=queue_name(namespace, "work"), body=x) for x in bodies])
        first_a = [a.get() for _ in range(4)]
        first_b = [b.get() for _ in range(4)]
        assert all(d.parts == 4 for d in first_a + first_b)
        assert a.empty_for(0.3) and b.empty_for(0.0)  # nothing more until a bundle is acked
        got: list[Delivery] = first_a + first_b
        for d in first_a[:3]:
            ca.ack(d)
        assert a.empty_for(0.3)  # three parts of four acked: the bundle is still held
        ca.ack(first_a[3])
        pending = {"a": (ca, a), "b": (cb, b)}
        for d in first_b:
            cb.ack(d)
        while len(got) < len(bodies):
            for consumer, inbox in pending.values():
                d = inbox.poll(0.05)
                if d is None:
                    continue
                got.append(d)
                consumer.ack(d)
        assert sorted(d.body for d in got) == sorted(bodies)
        assert leader.queue_depths(["work"]) == {"work": 0}
    finally:
        for t in opened:
            t.close()


@attrs.define
class _Cluster:
    sup: Supervisor
    store: RedisStore
    history: RedisHistory
    submitter: Submitter
    heard: queue.Queue[Finished]
    ends: dict[str, str] = attrs.field(factory=dict)

    def hear(self, count: int) -> None:
        """Wait until `count` different tasks were heard ending (each end kept once)."""
        while len(self.ends) < count:
            f = self.heard.get(timeout=60)
            self.ends.setdefault(f.task_id, f.state)


@contextlib.contextmanager
def _cluster(
    rabbitmq_url: str, redis_url: str, *, concurrency: int, **options: Any,
) -> Iterator[_Cluster]:
    """A leader with bundles of up to 8 and two workers, a waiting client, and the clean-up."""
    ns = f"test-wb-{uuid.uuid4().hex[:8]}"
    common = {"broker_url": rabbitmq_url, "store_url": redis_url, "namespace": ns,
              "log_level": "error", "history": True, **options}
    sup = Supervisor([
        NodeConfig(role="coordinator", name="coordinator-1", dispatch_bundle=8, **common),
        *(NodeConfig(role="worker", name=f"worker-{i}", concurrency=concurrency, **common)
          for i in (1, 2))])
    store = RedisStore.from_url(redis_url, prefix=ns)
    history = RedisHistory.from_url(redis_url, prefix=ns)
    heard: queue.Queue[Finished] = queue.Queue()
    sup.start()
    submitter = None
    try:
        wait_for(lambda: store.lease("coordinator") is not None, 30, "a leader", sup.poll)
        submitter = Submitter(rabbitmq_url, namespace=ns, name="client", on_finished=heard.put,
                              store_url=redis_url)
        yield _Cluster(sup=sup, store=store, history=history, submitter=submitter, heard=heard)
    finally:
        if submitter is not None:
            submitter.close()
        sup.stop_all()
        store.delete_all()
        store.close()
        history.client.close()
        delete_namespace(rabbitmq_url, ns, ["coordinator-1", "worker-1", "worker-2", "client"])


@pytest.mark.rabbitmq
def test_every_task_of_a_bundled_burst_succeeds_through_a_worker_kill(
    rabbitmq_url: str, redis_url: str,
) -> None:
    with _cluster(rabbitmq_url, redis_url, concurrency=4) as c:
        # Sleep tasks keep the burst in the workers long enough for the kill to land in it.
        specs = [TaskSpec(id=f"t{i}", type="sleep", payload={"ms": 10})
                 for i in range(256)]
        c.submitter.submit(specs)
        c.hear(20)
        c.sup.kill("worker-1")
        c.hear(len(specs))
        assert set(c.ends.values()) == {"succeeded"}
        records = [c.store.get_task(s.id) for s in specs]
        assert all(r is not None and r.state is TaskState.SUCCEEDED for r in records)
        assert all(c.store.get_result(s.id) is not None for s in specs)


@pytest.mark.rabbitmq
def test_parts_a_frozen_worker_held_are_handed_on_when_the_leader_suspects_it(
    rabbitmq_url: str, redis_url: str,
) -> None:
    """worker-1 is frozen while the leader knows it holds unstarted parts. Whether it started
    them between the leader hearing so and the freeze is a race outside the test's control: a
    freeze that missed is undone and the next one tried (each one waits for events only)."""
    # Prefetch 4 with one slot: a worker holds unstarted dispatches whether or not the leader
    # bundled them (on a loaded machine its handler batches, and so its bursts, come smaller
    # than the 32 dispatches a work bundle needs, and one message then holds one dispatch).
    with _cluster(rabbitmq_url, redis_url, concurrency=1, prefetch=4, heartbeat_ms=200,
                  detector_timeout_ms=1000) as c:
        submitted = 0
        for attempt in range(8):
            # A fresh burst each try: a freeze that missed may have left nothing to hold.
            specs = [TaskSpec(id=f"t{attempt}-{i}", type="sleep", payload={"ms": 300})
                     for i in range(64)]
            c.submitter.submit(specs)  # bundles of parts, one run at a time per worker
            submitted += len(specs)
            if _freeze_while_holding(c):
                break
        c.hear(submitted)
        assert set(c.ends.values()) == {"succeeded"}
        handed_on = [e for e in c.history.read_events() if e.kind == "reassigned"
                     and e.data.get("reason") == "held by a suspected worker"]
        # (worker-2 may be suspected too: with a 1 s detector on a loaded machine its
        # heartbeats can come late, and handing its parts on is as safe)
        assert "worker-1" in {e.data["worker"] for e in handed_on}


def _freeze_while_holding(c: _Cluster) -> bool:
    """Freeze worker-1 once the leader has heard that it holds a part it has not started,
    until the leader suspects it; whether the leader then handed a held part on."""
    def holding() -> bool:
        events = c.history.read_events()
        started = {e.data["task"] for e in events
                   if e.kind == "started" and e.actor == "worker-1"}
        heard = [e for e in events if e.kind == "heard_held" and e.data["worker"] == "worker-1"]
        return bool(heard) and any(ref.rpartition("#")[0] not in started
                                   for ref in heard[-1].data["held"])

    seen = len([e for e in c.history.read_events() if e.kind == "worker_suspected"])
    wait_for(holding, 30, "the leader to hear worker-1 hold a part", c.sup.poll)
    c.sup.pause("worker-1")
    try:
        wait_for(lambda: len([e for e in c.history.read_events()
                              if e.kind == "worker_suspected"]) > seen,
                 30, "the leader to suspect worker-1", c.sup.poll)
    finally:
        c.sup.resume("worker-1")
    return any(e.kind == "reassigned" and e.data.get("reason") == "held by a suspected worker"
               for e in c.history.read_events())
