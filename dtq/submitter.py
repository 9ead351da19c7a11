"""Publishing submissions straight to the leader's queue, with publisher confirms.

Used by the scenario runner, the benchmarks and the REST API. `submit` returns once RabbitMQ has
confirmed every message (persisted to the durable coordinator queue). A submitter that waits for
its tasks hears their ends on Redis pub/sub (`transports.redis.FinishedListener`): a success as
the worker stores the result, any other end as the leader records it.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dtq.clock import VectorClock
from dtq.envelope import COORDINATOR_QUEUE, Cancel, Codec, Envelope, Finished, Message, Submit
from dtq.errors import ConnectionLost
from dtq.task import TaskSpec
from dtq.transport import Outgoing, queue_name
from transports.rabbitmq import RabbitTransport
from transports.redis import FinishedListener

Recorder = Callable[[str, str, VectorClock, Mapping[str, Any]], None]


class Submitter:
    def __init__(
        self, broker_url: str, *, namespace: str = "dtq", name: str = "client",
        record: Recorder | None = None, start_timeout_s: float = 10.0,
        on_finished: Callable[[Finished], None] | None = None, store_url: str | None = None,
    ) -> None:
        """With `on_finished` (and the `store_url` of the cluster's Redis), the submitter
        listens for the ends of the tasks it submits (name it uniquely) and calls `on_finished`
        for each, on its listener thread."""
        self.name = name
        self.namespace = namespace
        self.codec = Codec()
        self.listener: FinishedListener | None = None
        if on_finished is not None:
            if store_url is None:
                raise ValueError("waiting for tasks (on_finished) needs the store_url")
            self.listener = FinishedListener(
                store_url, prefix=namespace, client=name, timeout_s=start_timeout_s,
                on_notice=lambda t, s, r: on_finished(Finished(task_id=t, state=s, reason=r)))
        self.transport = RabbitTransport(broker_url, namespace=namespace, name=name)
        try:
            self.transport.start(start_timeout_s)
        except ConnectionLost:
            self._close_listener()
            raise
        self.clock = VectorClock()
        self.record: Recorder = record or (lambda *_: None)
        self._ids = itertools.count(1)
        self._boot = uuid.uuid4().hex[:8]
        self._lock = threading.Lock()

    def _envelope(self, body: Message) -> Envelope:
        with self._lock:
            self.clock = self.clock.tick(self.name)
            return Envelope(id=f"{self.name}.{self._boot}.{next(self._ids)}", sender=self.name,
                            target=COORDINATOR_QUEUE, body=body, clock=self.clock)

    def submit(self, specs: Sequence[TaskSpec], *, timeout_s: float = 30.0) -> None:
        """Publish submissions; return when the broker has confirmed all of them."""
        out = []
        reply_to = self.name if self.listener is not None else None
        for spec in specs:
            env = self._envelope(Submit(spec=spec, reply_to=reply_to))
            self.record(self.name, "submit", env.clock, {"task": spec.id, "label": spec.label})
            out.append(Outgoing(queue=queue_name(self.namespace, COORDINATOR_QUEUE),
                                body=self.codec.encode(env), priority=spec.priority,
                                message_id=env.id))
        self._publish(out, timeout_s)

    def cancel(self, task_id: str, *, timeout_s: float = 30.0) -> None:
        env = self._envelope(Cancel(task_id=task_id))
        self._publish([Outgoing(queue=queue_name(self.namespace, COORDINATOR_QUEUE),
                                body=self.codec.encode(env), message_id=env.id)], timeout_s)

    def _publish(self, out: list[Outgoing], timeout_s: float) -> None:
        confirmed = threading.Event()
        self.transport.publish(out, then=confirmed.set)
        if not confirmed.wait(timeout_s):
            raise ConnectionLost(f"RabbitMQ did not confirm {len(out)} message(s) within "
                                 f"{timeout_s:.0f} s")

    def close(self) -> None:
        self.transport.close()
        self._close_listener()

    def _close_listener(self) -> None:
        if self.listener is not None:
            self.listener.close()
