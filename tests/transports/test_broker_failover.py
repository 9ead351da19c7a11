"""Several broker addresses: a transport given a comma-separated list of RabbitMQ URLs reaches the
first that answers, and when the node it is connected to goes away it goes on to the next one,
resuming its consumers and the publishes not yet confirmed.

The two "nodes" are two fault proxies in front of the one local RabbitMQ (dtq's
Toxiproxy-compatible server, driven by the toxiproxy client): disabling a proxy closes the
connections through it and refuses new ones, as a killed node does.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator

import pytest
from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer

from dtq.chaos import ToxiproxyServer
from dtq.chaos.testkit import free_port, wait_until
from dtq.transport import Delivery, Outgoing, queue_name
from transports.rabbitmq import RabbitTransport, broker_urls, delete_namespace, redact

pytestmark = pytest.mark.rabbitmq


def _via(url: str, address: str) -> str:
    """`url` with its host and port replaced by `address`."""
    scheme, _, rest = url.partition("://")
    creds, _, tail = rest.rpartition("@")
    path = tail.partition("/")[2]
    return f"{scheme}://{creds}@{address}/{path}"


@pytest.fixture
def proxies(monkeypatch: pytest.MonkeyPatch, rabbitmq_url: str) -> Iterator[Toxiproxy]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with ToxiproxyServer() as server:
        client = Toxiproxy()
        monkeypatch.setattr(APIConsumer, "host", APIConsumer.host)
        monkeypatch.setattr(APIConsumer, "port", APIConsumer.port)
        client.update_api_consumer(server.host, server.port)
        yield client


def test_a_url_list_is_split_and_redacted() -> None:
    urls = broker_urls("amqp://u:secret@a:1/%2F, amqp://u:secret@b:2/%2F")
    assert urls == ["amqp://u:secret@a:1/%2F", "amqp://u:secret@b:2/%2F"]
    shown = redact(",".join(urls))
    assert shown == "amqp://a:1/%2F,amqp://b:2/%2F" and "secret" not in shown


def test_a_transport_connects_to_the_first_broker_that_answers(rabbitmq_url: str) -> None:
    dead = _via(rabbitmq_url, f"127.0.0.1:{free_port()}")  # nothing listens there
    ns = f"test-{uuid.uuid4().hex[:8]}"
    t = RabbitTransport(f"{dead},{rabbitmq_url}", namespace=ns, name="client")
    try:
        t.start(timeout_s=20)
        assert t.connects >= 1
    finally:
        t.close()
        delete_namespace(rabbitmq_url, ns, ["box"])


def test_a_lost_node_is_left_for_the_next_and_nothing_is_lost(
    proxies: Toxiproxy, rabbitmq_url: str,
) -> None:
    upstream = rabbitmq_url.partition("@")[2].partition("/")[0] or "127.0.0.1:5672"
    first = proxies.create(upstream=upstream, name="node-1", listen=f"127.0.0.1:{free_port()}")
    second = proxies.create(upstream=upstream, name="node-2", listen=f"127.0.0.1:{free_port()}")
    url = ",".join(_via(rabbitmq_url, p.listen) for p in (first, second))
    ns = f"test-{uuid.uuid4().hex[:8]}"
    got: queue.Queue[Delivery] = queue.Queue()
    t = RabbitTransport(url, namespace=ns, name="box", on_delivery=got.put)
    try:
        t.start(timeout_s=20)
        t.consume("box", prefetch=10)
        confirmed = threading.Event()
        t.publish([Outgoing(queue=queue_name(ns, "box"), body=b"before")], then=confirmed.set)
        wait_until(confirmed.is_set, 20, "the first publish to be confirmed")
        d = got.get(timeout=20)
        assert d.body == b"before"
        t.ack(d)
        connects = t.connects

        first.disable()  # node-1 goes away: its connections close and new ones are refused
        wait_until(lambda: t.connects > connects, 30, "a connection to the other node")
        after = threading.Event()
        t.publish([Outgoing(queue=queue_name(ns, "box"), body=b"after")], then=after.set)
        wait_until(after.is_set, 30, "the publish to be confirmed through node-2")
        bodies = set()
        while b"after" not in bodies:
            d = got.get(timeout=30)  # the consumer was resumed on node-2
            bodies.add(d.body)
            t.ack(d)
        assert bodies <= {b"before", b"after"}
    finally:
        t.close()
        delete_namespace(rabbitmq_url, ns, ["box"])
