"""The transport conformance suite on both backends: in-process (local) and RabbitMQ."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from dtq.testing.conformance import Inbox, TransportConformance, _confirmed
from dtq.transport import Delivery, Transport
from transports.local import LocalBroker, LocalTransport
from transports.rabbitmq import RabbitTransport, delete_namespace


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


class TestLocalTransport(TransportConformance):
    @pytest.fixture
    def connect(self, namespace: str) -> Iterator[Callable[..., Transport]]:
        broker = LocalBroker()
        opened: list[LocalTransport] = []

        def connect(name: str, on_delivery: Callable[[Delivery], None]) -> Transport:
            t = LocalTransport(broker, namespace=namespace, name=name, on_delivery=on_delivery)
            t.start()
            opened.append(t)
            return t

        yield connect
        for t in opened:
            t.close()


@pytest.mark.rabbitmq
class TestRabbitTransport(TransportConformance):
    quorum = False

    @pytest.fixture
    def connect(
        self, namespace: str, rabbitmq_url: str,
    ) -> Iterator[Callable[..., Transport]]:
        opened: list[RabbitTransport] = []

        def connect(name: str, on_delivery: Callable[[Delivery], None]) -> Transport:
            t = RabbitTransport(rabbitmq_url, namespace=namespace, name=name,
                                on_delivery=on_delivery, quorum=self.quorum)
            t.start()
            opened.append(t)
            return t

        yield connect
        for t in opened:
            t.close()
        delete_namespace(rabbitmq_url, namespace, ["box"])


@pytest.mark.rabbitmq
class TestRabbitQuorumTransport(TestRabbitTransport):
    """The same contract on quorum queues (the option for clustered RabbitMQ)."""

    quorum = True

    def test_higher_priority_first_on_the_work_queue(
        self, connect: Callable[..., Transport], namespace: str,
    ) -> None:
        """Before RabbitMQ 4.0 a quorum queue has no priorities: the work queue is two bands.
        A high-priority message published behind a backlog of normal ones is among the first
        two delivered (the high band's and the normal band's first), not behind the backlog;
        within the high band, first in first out."""
        producer = connect("p", lambda d: None)
        backlog = [self._msg(namespace, "work", f"low{i}".encode()) for i in range(20)]
        _confirmed(producer, [*backlog, self._msg(namespace, "work", b"high", priority=9),
                              self._msg(namespace, "work", b"mid", priority=5)])
        inbox = Inbox()
        c = connect("c1", inbox.put)
        c.consume("work", prefetch=1)
        first = [inbox.get(), inbox.get()]
        assert b"high" in [d.body for d in first]
        for d in first:
            c.ack(d)
        order = [d.body for d in first]
        while len(order) < 22:
            d = inbox.get()
            order.append(d.body)
            c.ack(d)
        assert order.index(b"mid") < 6 and order.index(b"high") < order.index(b"mid")
        assert [b for b in order if b.startswith(b"low")] == [f"low{i}".encode() for i in range(20)]
