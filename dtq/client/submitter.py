"""Publishing submissions straight to the leader's queue, with publisher confirms.

Used by the scenario runner, the benchmarks and the REST API. `submit` returns once RabbitMQ has
confirmed every message (persisted to the durable coordinator queue). A submitter that waits for
its tasks hears their ends on Redis pub/sub (`transports.redis.FinishedListener`): a success as
the worker stores the result, any other end as the leader records it.

Each task's end reaches `on_finished` exactly once: the submitter keeps the ids it still waits
for, drops a notice for any other id (a second one for the same task), and when its listener
subscribes again after a lost connection it re-reads from the store the ends it may have missed
(a stored successful result, or a terminal record) for the tasks it still waits for.

Group commit: submissions and cancels from many threads at once (the REST API's requests) go
out through one `GroupCommit`. While one `publish` waits for its confirm, what others submit
gathers, and goes out as the next single `publish` once it is confirmed; each caller returns
(or hears `done`) only when the batch holding its messages was confirmed. One thread alone
sees no delay (nothing in flight: its batch goes at once), and many share one broker round
trip and, the messages being bound for one queue, one bundled broker message (see
`transports.rabbitmq`).
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import structlog

from dtq.clock import VectorClock
from dtq.envelope import COORDINATOR_QUEUE, Cancel, Codec, Envelope, Finished, Message, Submit
from dtq.errors import ConnectionLost
from dtq.task import TaskSpec, TaskState
from dtq.transport import Outgoing, Transport, queue_name
from transports.redis import FinishedListener
from transports.registry import ClosingStore, open_store, open_transport

Recorder = Callable[[str, str, VectorClock, Mapping[str, Any]], None]
Done = Callable[[BaseException | None], None]
"""Told once a submission's batch is confirmed (None), or why it could not be published."""
log = structlog.get_logger("dtq.submitter")


class GroupCommit:
    """One confirmed `publish` in flight at a time; what is added meanwhile waits for it and
    then goes out together, as one `publish` (a group commit). Thread-safe."""

    def __init__(self, publish: Callable[[list[Outgoing], Callable[[], None]], None]) -> None:
        self._publish = publish
        self._lock = threading.Lock()
        self._pending: list[tuple[list[Outgoing], Done]] = []
        self._busy = False
        self.batches = 0
        """`publish` calls made (how well the submissions were grouped)."""

    def add(self, out: list[Outgoing], done: Done) -> None:
        """Publish `out` with the next batch; `done` runs once it is confirmed (on the
        transport's I/O thread) or could not be published (with the error)."""
        with self._lock:
            self._pending.append((out, done))
            if self._busy:
                return
            self._busy = True
            batch = self._take()
        self._send(batch)

    def _take(self) -> list[tuple[list[Outgoing], Done]]:
        batch, self._pending = self._pending, []
        if not batch:
            self._busy = False
        return batch

    def _send(self, batch: list[tuple[list[Outgoing], Done]]) -> None:
        """Publish batches until one is in flight (or nothing is left to send). Never holds
        the lock while calling the transport (its confirm runs `_confirmed` under its own)."""
        while batch:
            messages = [m for out, _ in batch for m in out]
            self.batches += 1
            try:
                self._publish(messages, functools.partial(self._confirmed, batch))
                return
            except Exception as exc:  # not published: every caller in it hears why
                _tell(batch, exc)
            with self._lock:
                batch = self._take()

    def _confirmed(self, batch: list[tuple[list[Outgoing], Done]]) -> None:
        with self._lock:
            following = self._take()
        self._send(following)
        _tell(batch, None)


def _tell(batch: Sequence[tuple[list[Outgoing], Done]], exc: BaseException | None) -> None:
    for _, done in batch:
        try:
            done(exc)
        except Exception as err:  # a caller's callback must not stall the others
            log.error("a submission's done callback failed", error=repr(err))


class Submitter:
    def __init__(
        self, broker_url: str, *, namespace: str = "dtq", name: str = "client",
        record: Recorder | None = None, start_timeout_s: float = 10.0,
        on_finished: Callable[[Finished], None] | None = None, store_url: str | None = None,
        quorum: bool | None = None,
    ) -> None:
        """With `on_finished` (and the `store_url` of the cluster's Redis), the submitter
        listens for the ends of the tasks it submits (name it uniquely) and calls `on_finished`
        for each, on its listener thread. `quorum`: the namespace runs on quorum queues
        (default: `$DTQ_QUORUM`, as for the nodes)."""
        self.name = name
        self.namespace = namespace
        self.codec = Codec()
        self.listener: FinishedListener | None = None
        self.store: ClosingStore | None = None
        self.on_finished = on_finished
        self.waiting: set[str] = set()
        """The tasks submitted whose end has not been heard yet."""
        self._waiting_lock = threading.Lock()
        if on_finished is not None:
            if store_url is None:
                raise ValueError("waiting for tasks (on_finished) needs the store_url")
            self.store = open_store(store_url, prefix=namespace)
            self.listener = FinishedListener(
                store_url, prefix=namespace, client=name, timeout_s=start_timeout_s,
                on_notice=self._heard, on_resubscribed=self.reread)
        self.transport: Transport = open_transport(broker_url, namespace=namespace, name=name,
                                                   quorum=quorum)
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
        self.group = GroupCommit(lambda out, then: self.transport.publish(out, then=then))

    def _envelope(self, body: Message) -> Envelope:
        with self._lock:
            self.clock = self.clock.tick(self.name)
            return Envelope(id=f"{self.name}.{self._boot}.{next(self._ids)}", sender=self.name,
                            target=COORDINATOR_QUEUE, body=body, clock=self.clock)

    def _heard(self, task_id: str, state: str, reason: str | None) -> None:
        """Pass an end on once: only for a task still waited for."""
        with self._waiting_lock:
            if task_id not in self.waiting:
                return
            self.waiting.discard(task_id)
        assert self.on_finished is not None
        self.on_finished(Finished(task_id=task_id, state=state, reason=reason))

    def reread(self) -> None:
        """Read from the store the ends of the tasks still waited for (a notice published while
        the listener was not subscribed is gone): a stored successful result, or a terminal
        record. Run when the listener subscribes again; safe to call at any time."""
        if self.store is None:
            return
        with self._waiting_lock:
            ids = sorted(self.waiting)
        for result in self.store.get_results(ids).values():
            if result.ok:
                self._heard(result.task_id, "succeeded", None)
        for task_id in ids:
            rec = self.store.get_task(task_id)
            if rec is not None and rec.state.terminal:
                ok = rec.state is TaskState.SUCCEEDED
                self._heard(task_id, rec.state.value, None if ok else rec.reason)

    def submit(self, specs: Sequence[TaskSpec], *, timeout_s: float = 30.0) -> None:
        """Publish submissions; return when the broker has confirmed all of them."""
        self._wait(lambda done: self.submit_nowait(specs, done), len(specs), timeout_s)

    def submit_nowait(self, specs: Sequence[TaskSpec], done: Done) -> None:
        """Publish submissions (in this order) with the next batch; `done(None)` runs, on the
        transport's I/O thread, once the broker has confirmed all of them."""
        out = []
        reply_to = self.name if self.listener is not None else None
        if self.on_finished is not None:  # (a listener set from outside keeps its own)
            with self._waiting_lock:
                self.waiting.update(spec.id for spec in specs)
        now_ms = int(time.time() * 1000)
        for spec in specs:
            if not spec.created_ms:  # a spec made by hand: created now, on the wall clock
                spec = attrs.evolve(spec, created_ms=now_ms)
            env = self._envelope(Submit(spec=spec, reply_to=reply_to))
            self.record(self.name, "submit", env.clock, {"task": spec.id, "label": spec.label})
            out.append(Outgoing(queue=queue_name(self.namespace, COORDINATOR_QUEUE),
                                body=self.codec.encode(env), priority=spec.priority,
                                message_id=env.id))
        self.group.add(out, done)

    def cancel(self, task_id: str, *, timeout_s: float = 30.0) -> None:
        env = self._envelope(Cancel(task_id=task_id))
        out = [Outgoing(queue=queue_name(self.namespace, COORDINATOR_QUEUE),
                        body=self.codec.encode(env), message_id=env.id)]
        self._wait(lambda done: self.group.add(out, done), 1, timeout_s)

    @staticmethod
    def _wait(start: Callable[[Done], None], count: int, timeout_s: float) -> None:
        confirmed = threading.Event()
        failed: list[BaseException] = []

        def done(exc: BaseException | None) -> None:
            if exc is not None:
                failed.append(exc)
            confirmed.set()

        start(done)
        if not confirmed.wait(timeout_s):
            raise ConnectionLost(f"RabbitMQ did not confirm {count} message(s) within "
                                 f"{timeout_s:.0f} s")
        if failed:
            raise failed[0]

    def close(self) -> None:
        self.transport.close()
        self._close_listener()

    def _close_listener(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self.store is not None:
            self.store.close()
