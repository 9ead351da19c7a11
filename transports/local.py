"""An in-process broker: the Transport contract in memory, for threads of one process.

`LocalBroker` holds the queues; each `LocalTransport` is one "connection" to it. Semantics follow
RabbitMQ's: durable queues in memory, round robin among consumers with prefetch credit,
unacked deliveries returned (redelivered) when their connection closes, priorities on the work
queue, dead-lettering by `reject(requeue=False)`. Publishing is confirmed at once (the broker is
in the same process). Deliveries are handed to `on_delivery` outside the broker's lock.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Sequence

import attrs

from dtq.transport import DEAD_QUEUE, Delivery, Outgoing, queue_name


@attrs.define(eq=False)
class _Queue:
    ready: list[tuple[int, int, Outgoing, bool]] = attrs.field(factory=list)
    consumers: list[tuple[LocalTransport, int]] = attrs.field(factory=list)
    rr: int = 0


class LocalBroker:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.queues: dict[str, _Queue] = {}
        self._seq = itertools.count()
        self._tags = itertools.count(1)

    def queue(self, name: str) -> _Queue:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = _Queue()
        return q

    def put(self, msg: Outgoing, redelivered: bool = False) -> None:
        with self.lock:
            heapq.heappush(self.queue(msg.queue).ready,
                           (-msg.priority, next(self._seq), msg, redelivered))
        self.pump(msg.queue)

    def pump(self, name: str) -> None:
        out: list[tuple[LocalTransport, Delivery]] = []
        with self.lock:
            q = self.queue(name)
            while q.ready and q.consumers:
                conn = self._next_consumer(q, name)
                if conn is None:
                    break
                _, _, msg, redelivered = heapq.heappop(q.ready)
                d = Delivery(generation=conn.generation, tag=next(self._tags), queue=name,
                             body=msg.body, redelivered=redelivered,
                             headers=dict(msg.headers or {}), priority=msg.priority)
                conn.unacked[d.tag] = (name, msg)
                out.append((conn, d))
        for conn, d in out:
            conn.on_delivery(d)

    def _next_consumer(self, q: _Queue, name: str) -> LocalTransport | None:
        n = len(q.consumers)
        for i in range(n):
            conn, prefetch = q.consumers[(q.rr + i) % n]
            held = sum(1 for qn, _ in conn.unacked.values() if qn == name)
            if held < prefetch:
                q.rr = (q.rr + i + 1) % n
                return conn
        return None


class LocalTransport:
    def __init__(
        self, broker: LocalBroker, *, namespace: str = "dtq", name: str = "local",
        on_delivery: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.broker = broker
        self.namespace = namespace
        self.name = name
        self.on_delivery: Callable[[Delivery], None] = on_delivery or (lambda d: None)
        self.generation = 1
        self.unacked: dict[int, tuple[str, Outgoing]] = {}
        self._wanted: dict[str, int] = {}
        self._open = False

    def start(self, timeout_s: float = 10.0) -> None:
        self._open = True
        for queue, prefetch in self._wanted.items():
            self._attach(queue, prefetch)

    def close(self) -> None:
        """Like a dropped connection: unacked deliveries go back to their queues."""
        with self.broker.lock:
            self._open = False
            for q in self.broker.queues.values():
                q.consumers = [(c, p) for c, p in q.consumers if c is not self]
            returned = list(self.unacked.values())
            self.unacked.clear()
            self.generation += 1
        for _, msg in returned:
            self.broker.put(msg, redelivered=True)

    def consume(self, address: str, prefetch: int = 0) -> None:
        queue = queue_name(self.namespace, address)
        self._wanted[queue] = prefetch or 1000
        if self._open:
            self._attach(queue, prefetch or 1000)

    def _attach(self, queue: str, prefetch: int) -> None:
        with self.broker.lock:
            q = self.broker.queue(queue)
            if all(c is not self for c, _ in q.consumers):
                q.consumers.append((self, prefetch))
        self.broker.pump(queue)

    def cancel(self, address: str, *, wait_s: float = 0.0) -> None:
        queue = queue_name(self.namespace, address)
        self._wanted.pop(queue, None)
        with self.broker.lock:
            q = self.broker.queue(queue)
            q.consumers = [(c, p) for c, p in q.consumers if c is not self]

    def publish(
        self, messages: Sequence[Outgoing], then: Callable[[], None] | None = None,
    ) -> None:
        for msg in messages:
            self.broker.put(msg)
        if then is not None:
            then()

    def _settle(self, delivery: Delivery) -> tuple[str, Outgoing] | None:
        with self.broker.lock:
            if delivery.generation != self.generation:
                return None
            return self.unacked.pop(delivery.tag, None)

    def ack(self, delivery: Delivery, *, multiple: bool = False) -> None:
        settled = self._settle(delivery)
        if settled is not None:
            self.broker.pump(settled[0])

    def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        settled = self._settle(delivery)
        if settled is None:
            return
        queue, msg = settled
        if requeue:
            self.broker.put(msg, redelivered=True)
        else:
            dead = queue_name(self.namespace, DEAD_QUEUE)
            self.broker.put(attrs.evolve(msg, queue=dead, priority=0))
        self.broker.pump(queue)
