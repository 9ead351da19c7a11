"""Clients of a quorum namespace: a client declares the leader's queue as the nodes did when it
is told the namespace runs on quorum queues (`$DTQ_QUORUM`, as the nodes read it, or
`quorum=True`); RabbitMQ refuses a queue declared with other arguments, and a client that
declared it classic never got a submission through."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from dtq.client.submitter import Submitter
from dtq.envelope import COORDINATOR_QUEUE, Codec, Submit
from dtq.errors import ConnectionLost
from dtq.task import TaskSpec
from dtq.testing.conformance import Inbox
from transports.rabbitmq import RabbitTransport, delete_namespace

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def leader_queue(rabbitmq_url: str) -> Iterator[tuple[str, Inbox]]:
    """A namespace whose leader's queue a quorum node declared and consumes."""
    ns = f"test-quorum-{uuid.uuid4().hex[:8]}"
    inbox = Inbox()
    node = RabbitTransport(rabbitmq_url, namespace=ns, name="coordinator-1", quorum=True,
                           on_delivery=inbox.put)
    node.start()
    node.consume(COORDINATOR_QUEUE)
    try:
        yield ns, inbox
    finally:
        node.close()
        delete_namespace(rabbitmq_url, ns, ["coordinator-1", "client"])


def test_a_client_told_by_the_environment_submits_to_a_quorum_namespace(
    rabbitmq_url: str, leader_queue: tuple[str, Inbox], monkeypatch: pytest.MonkeyPatch,
) -> None:
    ns, inbox = leader_queue
    monkeypatch.setenv("DTQ_QUORUM", "1")
    submitter = Submitter(rabbitmq_url, namespace=ns)
    try:
        submitter.submit([TaskSpec(id="q1", type="echo", payload=1)], timeout_s=10)
        body = Codec().decode(inbox.get(10).body).body
        assert isinstance(body, Submit) and body.spec.id == "q1"
    finally:
        submitter.close()


def test_a_client_that_declares_the_queue_classic_gets_nothing_through(
    rabbitmq_url: str, leader_queue: tuple[str, Inbox], monkeypatch: pytest.MonkeyPatch,
) -> None:
    ns, _ = leader_queue
    monkeypatch.delenv("DTQ_QUORUM", raising=False)
    submitter = Submitter(rabbitmq_url, namespace=ns, quorum=False)
    try:
        with pytest.raises(ConnectionLost):
            submitter.submit([TaskSpec(id="q2", type="echo", payload=1)], timeout_s=3)
    finally:
        submitter.close()


def test_the_dead_queue_of_a_quorum_namespace_is_replicated(
    rabbitmq_url: str, leader_queue: tuple[str, Inbox],
) -> None:
    """RabbitMQ answers a declare with other arguments with 406: the dead queue
    exists as a quorum queue (replicated), not as a classic one."""
    import pika
    import pika.exceptions

    from dtq.transport import DEAD_QUEUE, queue_name

    ns, _ = leader_queue
    dead = queue_name(ns, DEAD_QUEUE)
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        conn.channel().queue_declare(dead, durable=True, arguments={"x-queue-type": "quorum"})
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="inequivalent"):
            conn.channel().queue_declare(dead, durable=True, arguments={})
    finally:
        conn.close()
