"""A message the broker client cannot encode goes to the dead queue with a record: the transport
never raises on it, and a node whose dispatch is refused hears that its attempt failed instead
of restarting over and over. Needs RabbitMQ."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from dtq.actor import Actor, Context, receive
from dtq.envelope import WORK_QUEUE, Completed, Dispatch
from dtq.runtime.node import EXIT_ACTOR, ProcessRuntime
from dtq.task import TaskSpec
from dtq.testing.conformance import Inbox
from dtq.transport import Outgoing, queue_name
from transports.memory_store import SimStore
from transports.rabbitmq import ORIGIN_HEADER, REFUSED_HEADER, RabbitTransport, delete_namespace

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def namespace(rabbitmq_url: str) -> Iterator[str]:
    ns = f"test-refusal-{uuid.uuid4().hex[:8]}"
    yield ns
    delete_namespace(rabbitmq_url, ns, ["box", "coordinator-1", "worker-1", "client"])


def test_an_unencodable_message_goes_to_the_dead_queue_and_its_batch_completes(
    rabbitmq_url: str, namespace: str,
) -> None:
    inbox = Inbox()
    refused: list[tuple[str, str]] = []
    t = RabbitTransport(rabbitmq_url, namespace=namespace, name="box", on_delivery=inbox.put)
    t.on_refused = lambda m, reason: refused.append((m.queue, reason))
    t.start()
    try:
        t.consume("work")
        work = queue_name(namespace, "work")
        done = threading.Event()
        t.publish([Outgoing(queue=work, body=b"first"),
                   Outgoing(queue=work, body=b"too high", priority=999),
                   Outgoing(queue=work, body=b"after")], then=done.set)
        assert done.wait(10), "the batch with a refused message never completed"
        assert sorted([inbox.get().body, inbox.get().body]) == [b"after", b"first"]
        assert len(refused) == 1 and refused[0][0] == work and "255" in refused[0][1]
        again = threading.Event()  # confirms still match their messages
        box = queue_name(namespace, "box")  # a queue without priorities: they are not sent
        t.consume("box")
        t.publish([Outgoing(queue=box, body=b"next", priority=999)], then=again.set)
        assert again.wait(10) and inbox.get().body == b"next"
    finally:
        t.close()
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        _, props, body = conn.channel().basic_get(queue_name(namespace, "dead"), auto_ack=True)
    finally:
        conn.close()
    assert body == b"too high"
    assert props.headers[ORIGIN_HEADER] == work and "255" in props.headers[REFUSED_HEADER]


class _Dispatcher(Actor):
    """Sends one dispatch no submission check saw (priority 999), then waits for its end."""

    def on_start(self, ctx: Context) -> None:
        spec = TaskSpec(id="loud", type="echo", payload=1, priority=999)
        ctx.send(WORK_QUEUE, Dispatch(spec=spec, attempt=1), attempt=1)

    @receive(Completed)
    def on_completed(self, msg: Completed, ctx: Context) -> None:
        ctx.record("heard", task=msg.task_id, ok=msg.ok, error=msg.error)
        ctx.exit("heard")


def test_a_refused_dispatch_fails_its_attempt_and_the_node_keeps_running(
    rabbitmq_url: str, namespace: str,
) -> None:
    """The transport refuses the dispatch; the node records it and hears its attempt failed,
    saying why, as the leader would (it fails the task after its last attempt): nothing
    raises, nothing is handled again."""
    records: list[tuple[str, dict[str, Any]]] = []
    transport = RabbitTransport(rabbitmq_url, namespace=namespace, name="box")
    runtime = ProcessRuntime(_Dispatcher("box"), transport=transport, store=SimStore(),
                             record=lambda actor, kind, clock, data: records.append(
                                 (kind, dict(data))))
    code: list[int] = []
    thread = threading.Thread(target=lambda: code.append(runtime.run()), daemon=True)
    thread.start()
    thread.join(30)
    assert code == [EXIT_ACTOR], "the node did not hear its dispatch failed"
    kinds = [kind for kind, _ in records]
    assert kinds.count("dead_lettered") == 1
    heard = [data for kind, data in records if kind == "heard"]
    assert heard and heard[0]["task"] == "loud" and heard[0]["ok"] is False
    assert "refused" in heard[0]["error"] and "255" in heard[0]["error"]
