"""The Transport protocol: how a process runtime reaches its mailboxes and queues.

Delivery contract (RabbitMQ's, and every transport's):

* at least once: a delivery that is not acked before its consumer goes away is delivered again
  (with `redelivered=True`), possibly to another consumer;
* `publish(messages, then)` calls `then` once every message is safely stored by the broker
  (confirmed); a message is never lost once confirmed;
* competing consumers of one queue share it round robin, each holding at most `prefetch`
  unacked deliveries;
* `reject(d, requeue=False)` dead-letters: the message moves to the namespace's `dead` queue;
* messages with a higher priority are delivered first from the work queue (RabbitMQ's
  quorum namespaces in two bands: priorities 5-9 before 0-4, see transports/rabbitmq.py);
* messages published in one call to one queue arrive in that order. A transport may carry them
  as one broker message (RabbitMQ bundles them to every queue but the work queue, and to the
  work queue too when its publisher is made with `work_bundle`): each is still delivered, acked
  and rejected on its own, but while any of them is unacked the others may come back with it
  when the consumer goes (handlers are idempotent), and they all go to the same consumer.

`transports/rabbitmq.py` implements it on RabbitMQ, `transports/local.py` in process memory;
`dtq.testing.conformance.TransportConformance` checks an implementation against this contract.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

from dtq.envelope import COORDINATOR_QUEUE, WORK_QUEUE

DEAD_QUEUE = "dead"
FAILURES_HEADER = "x-dtq-failures"
"""Header counting how often handlers failed on a message (poison messages are dead-lettered)."""
QUORUM_DELIVERY_LIMIT = 5
"""A quorum namespace's delivery limit: a message its consumers gave back (went away holding
it) this many times is delivered once more, and dead-lettered if given back again. A worker
hands a dispatch on that last delivery back to the leader instead of running it
(`Worker.on_dispatch`): a task that kills its workers cannot crash-loop them for ever, and its
attempt fails instead of its dispatch vanishing into the dead queue. A leader fails a new
submission on its last delivery, with the reason, instead of accepting it
(`Coordinator.on_submit`)."""
BUNDLE_HEADER = "x-dtq-bundle"
"""Header of a broker message that carries this many messages, one per line."""


@attrs.frozen(kw_only=True)
class Delivery:
    """One message handed to a consumer, identified by its channel generation and tag."""

    generation: int
    tag: int
    queue: str
    body: bytes
    redelivered: bool
    headers: dict[str, Any] = attrs.field(factory=dict)
    priority: int = 0
    parts: int = 1
    """How many messages came in the same broker message as this one (see BUNDLE_HEADER)."""
    deliveries: int = 0
    """How many times the broker delivered this message before and got it back, where it
    counts (RabbitMQ's quorum queues: `x-delivery-count`); else 0."""


@attrs.frozen(kw_only=True)
class Outgoing:
    queue: str
    body: bytes
    priority: int = 0
    headers: dict[str, Any] | None = None
    message_id: str | None = None


def queue_name(namespace: str, address: str) -> str:
    """The queue behind an actor address."""
    if address in (COORDINATOR_QUEUE, WORK_QUEUE, DEAD_QUEUE):
        return f"{namespace}.{address}"
    return f"{namespace}.mailbox.{address}"


class Transport(Protocol):
    namespace: str
    on_delivery: Callable[[Delivery], None]

    def start(self, timeout_s: float = 10.0) -> None: ...

    def close(self) -> None: ...

    def consume(self, address: str, prefetch: int = 0) -> None: ...

    def cancel(self, address: str, *, wait_s: float = 0.0) -> None:
        """Stop consuming; with `wait_s`, return once no more deliveries can come from it."""
        ...

    def publish(
        self, messages: Sequence[Outgoing], then: Callable[[], None] | None = None,
    ) -> None: ...

    def ack(self, delivery: Delivery, *, multiple: bool = False) -> None: ...

    def reject(self, delivery: Delivery, *, requeue: bool) -> None: ...

