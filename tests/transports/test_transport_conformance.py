"""The transport conformance suite on both backends: in-process (local) and RabbitMQ."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from dtq.testing.conformance import TransportConformance
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
        pytest.skip("quorum queues have no message priorities before RabbitMQ 4.0; dtq declares "
                    "x-max-priority on classic queues only")
