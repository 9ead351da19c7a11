"""The RabbitMQ transport (pika): durable queues, asynchronous confirms, manual acks.

pika is not thread-safe, so one I/O thread owns the connection and runs pika's `SelectConnection`
event loop (which also keeps AMQP heartbeats going while the actor works). It holds an I/O lock
except while it waits in epoll; another thread that publishes or acks takes that lock and calls
pika itself, and the frames go straight to the socket (no hand-off to the I/O thread, no wait
for its next turn). Where the loop cannot let go of the lock (a poller other than epoll), calls
are marshalled onto the loop with `add_callback_threadsafe`. Deliveries go to a callback the
runtime gives (it puts them on its inbox).

Delivery contract (the same as the simulator's): at least once. A publish batch counts as sent
when the broker has confirmed every message in it (confirms are asynchronous; the `then`
callback of `publish` runs on confirmation, which is when the runtime acks the input that caused
the batch). When the connection drops, unconfirmed publishes are sent again after reconnecting,
unacked deliveries return to their queues (their late acks are dropped: they belong to a dead
channel), and consumers are re-established, with exponential backoff between attempts.

Several brokers: a URL may be a comma-separated list (the nodes of one RabbitMQ cluster, as
`dtq testbed up` prints). The transport connects to the first that answers; when a connection
is lost or refused it goes on to the next in turn, waiting between attempts (backoff with
jitter, so that a cluster's clients do not all come back in step) only once every address has
been tried, and resumes its consumers and unconfirmed publishes on whichever node it reaches.

Topology, under a namespace (so tests never collide): `{ns}.coordinator` (leader inbox),
`{ns}.work` (shared work queue, priorities 0-9 on classic queues), `{ns}.mailbox.{actor}`, and a
dead-letter exchange `{ns}.dlx` routing to `{ns}.dead`. Quorum queues are an option for
clustered RabbitMQ (`quorum=True`; they also enforce `x-delivery-limit`); in a quorum namespace
the dead queue is a quorum queue too, so what it holds is replicated.

Priority bands: quorum queues have no message priorities before RabbitMQ 4.0 (and from 4.0 only
two levels), so a quorum namespace's work queue is two queues: dispatches of priority 5-9 go to
`{ns}.work.high`, the others to `{ns}.work`, first in first out within each. `consume("work")`
consumes both, the high band first and with twice the prefetch, so that a worker has the next
high dispatch at hand when a slot frees; the worker starts the highest priority it holds. A
high-priority task therefore waits behind the high band only, never behind a backlog of the
normal one (not a strict order: a normal dispatch the worker already holds may start first).

Bundles: the messages of one `publish` call bound for the same queue (any but the work queue,
whose messages must stay free to go to different workers) travel as one broker message, their
bodies one per line under the `x-dtq-bundle` header, up to 256 messages or 1 MiB. The broker
then stores, delivers and acks one message instead of hundreds. The consumer's transport splits
it: each part is delivered on its own, and the broker message is acked once every part is acked
(a rejected part is re-published alone, to the dead queue or its own queue, and then counts as
acked).

Refusals: a message pika cannot encode (a priority above 255, a name or id over 255 bytes, a
header of no AMQP type) is not published where it was bound; it goes to the dead queue, headed
with why (`x-dtq-refused`) and where it was going (`x-dtq-queue`), counts as sent in its batch,
and `on_refused` hears of it. A node never raises on it, so no input is handled again and again.

Work bundles: a transport made with `work_bundle=N` (a leader's, `dtq coordinator
--dispatch-bundle N`) also bundles the work queue, when one call publishes many dispatches:
`work_bundle_size` parts per broker message (at most N, and only from 32 dispatches up, cut so
that at least 16 broker messages carry them for the competing workers to share). A worker then
takes up to N dispatches per prefetch slot; those beyond its concurrency wait in it, unstarted
(its heartbeats list them, and the leader hands them on if it goes silent).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs
import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec
import structlog

try:  # pika's own classes, for the direct writes below (without them, pika's usual path)
    from pika.adapters.select_connection import EPollPoller
    from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport
except ImportError:  # pragma: no cover - a pika that moved them
    EPollPoller = _AsyncPlaintextTransport = None

from dtq import stagemarks
from dtq.envelope import COORDINATOR_QUEUE, WORK_QUEUE
from dtq.errors import ConnectionLost
from dtq.transport import (
    BUNDLE_HEADER,
    DEAD_QUEUE,
    QUORUM_DELIVERY_LIMIT,
    Delivery,
    Outgoing,
    queue_name,
)
from transports.bundles import bundled

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"

DELIVERY_COUNT_HEADER = "x-delivery-count"
"""The header a quorum queue puts on a message it delivers again: how often it got it back."""


def _count(value: object) -> int:
    """A delivery count from a header (any value: headers are untrusted): 0 unless an int."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return int(value)  # (pika hands its own `long`, an int)
    return 0


QUORUM_ENV = "DTQ_QUORUM"
"""Set (to anything but "", "0", "false") in every process of a namespace on clustered RabbitMQ:
each transport, nodes and clients alike, then declares quorum queues, so none declares a queue
differently from another (RabbitMQ refuses inequivalent arguments)."""


HIGH_BAND = 5
"""The lowest priority that goes to the high band of a quorum namespace's work queue."""
HIGH_BAND_SUFFIX = ".high"
"""The high band's queue: the work queue's name with this after it."""


def quorum_from_environment() -> bool:
    return os.environ.get(QUORUM_ENV, "").strip().lower() not in ("", "0", "false")


REFUSED_HEADER = "x-dtq-refused"
"""On a message in the dead queue that could not be published where it was bound: why."""
ORIGIN_HEADER = "x-dtq-queue"
"""On such a message: the queue it was bound for."""
_UNENCODABLE = (struct.error, TypeError, ValueError, OverflowError,
                pika.exceptions.UnsupportedAMQPFieldException,
                pika.exceptions.ShortStringTooLong)
"""What pika raises for a message it cannot encode."""
HEARTBEAT_S = 5
"""The AMQP heartbeat timeout asked for (the broker may only lower it). It bounds how long a frozen
process (alive, connection open, silent) keeps the deliveries it has not acked: RabbitMQ drops
its connection, and they go back to their queues, about three timeouts after it froze (15 s here,
30 s at 10 s; measured on RabbitMQ 3.10). RabbitMQ advises against going under 5 s: a busy but
healthy peer would then be taken for a dead one."""


@attrs.define(eq=False)
class _Batch:
    remaining: int
    then: Callable[[], None] | None


def connection_name(namespace: str, actor: str) -> str:
    """How a node's connection is named on the broker (`rabbitmqctl list_connections name`)."""
    return f"dtq:{namespace}:{actor}"


def close_connections(namespace: str, actors: Sequence[str] | None = None) -> int:
    """Have the broker close the connections of a namespace's nodes (all, or the named ones),
    as `rabbitmqctl close_connection` does. Returns how many were closed."""
    import subprocess

    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True, text=True, timeout=30, check=True).stdout
    wanted = {connection_name(namespace, a) for a in actors} if actors else None
    closed = 0
    for line in listing.splitlines()[1:]:
        pid, _, props = line.partition("\t")
        found = re.search(r'\{"connection_name","([^"]*)"\}', props)
        name = found.group(1) if found else ""
        ours = name.startswith(f"dtq:{namespace}:") if wanted is None else name in wanted
        if ours:
            subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "dtq scenario fault"],
                           capture_output=True, timeout=30, check=False)
            closed += 1
    return closed


def broker_urls(url: str) -> list[str]:
    """The addresses a broker URL names: one, or several separated by commas."""
    urls = [u.strip() for u in url.split(",") if u.strip()]
    if not urls:
        raise ConnectionLost(f"no broker address in {url!r}")
    return urls


def redact(url: str) -> str:
    """The URL (or each of a comma-separated list) without its credentials."""
    def one(u: str) -> str:
        parts = urlsplit(u.strip())
        return f"{parts.scheme}://{parts.hostname or '?'}:{parts.port or 5672}{parts.path}"

    return ",".join(one(u) for u in url.split(","))


class _Connection(pika.SelectConnection):  # type: ignore[misc]
    """pika's SelectConnection, writing a message's frames as one piece, straight to the socket.

    pika buffers every frame and sends it on the loop's next turn, once the socket is reported
    writable. Here the frames of one publish (method, header, body) go out together, and they
    go out at once when nothing is buffered before them; only what the socket does not take
    waits for writability.
    """

    def _output_marshaled_frames(self, marshaled_frames: Sequence[bytes]) -> None:
        if len(marshaled_frames) == 1:
            super()._output_marshaled_frames(marshaled_frames)
            return
        self.bytes_sent += sum(len(f) for f in marshaled_frames)
        self.frames_sent += len(marshaled_frames)
        self._adapter_emit_data(b"".join(marshaled_frames))

    def _adapter_emit_data(self, data: bytes) -> None:
        sock = _direct_socket(self._transport)
        if sock is not None:
            try:
                sent = sock.send(data)
            except OSError:  # would block, or failed: the buffered path sees it through
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        super()._adapter_emit_data(data)


def _direct_socket(t: Any) -> Any:
    """The socket that data for pika transport `t` may go straight to (a plain TCP one, up, with
    nothing buffered that would have to go first), or None."""
    if _AsyncPlaintextTransport is None or not isinstance(t, _AsyncPlaintextTransport) \
            or getattr(t, "_state", None) != getattr(t, "_STATE_ACTIVE", None) \
            or t.get_write_buffer_size() != 0:
        return None
    return getattr(t, "_sock", None)


class _Unlocking:
    """The event loop's poll object, releasing the transport's I/O lock while it waits."""

    def __init__(self, inner: Any, lock: threading.RLock) -> None:
        self._inner = inner
        self._lock = lock

    def poll(self, *args: Any) -> Any:
        self._lock.release()
        try:
            return self._inner.poll(*args)
        finally:
            self._lock.acquire()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class RabbitTransport:
    """A connection to RabbitMQ owned by one I/O thread; every public method is thread-safe."""

    def __init__(
        self, url: str = DEFAULT_URL, *, namespace: str = "dtq", quorum: bool | None = None,
        delivery_limit: int = QUORUM_DELIVERY_LIMIT, heartbeat_s: int = HEARTBEAT_S,
        name: str = "dtq",
        on_delivery: Callable[[Delivery], None] | None = None, log: Any = None,
        work_bundle: int = 1,
    ) -> None:
        """`work_bundle` above 1 lets up to that many dispatches published in one call share a
        broker message (see the module's "Work bundles"). `quorum` None: `$DTQ_QUORUM`."""
        if work_bundle < 1:
            raise ValueError(f"work_bundle must be at least 1, not {work_bundle}")
        self.url = url
        self.urls = broker_urls(url)
        self._turn = 0  # which of `urls` the next connection attempt goes to
        self.namespace = namespace
        self.quorum = quorum_from_environment() if quorum is None else quorum
        self.delivery_limit = delivery_limit
        self.heartbeat_s = min(heartbeat_s, HEARTBEAT_S)
        self.name = name
        self.on_delivery = on_delivery or (lambda d: None)
        self.on_refused: Callable[[Outgoing, str], None] = lambda m, reason: None
        """Called (under the I/O lock, on whichever thread flushed it) with a message that
        could not be encoded and went to the dead queue instead, and why."""
        self.log = log or structlog.get_logger("dtq.rabbitmq").bind(actor=name)
        self.generation = 0
        self.ready = threading.Event()
        self.connects = 0
        self._lock = threading.Lock()
        self._io = threading.RLock()
        """Held by the I/O thread except while it waits for events; another thread holding it
        may use pika directly (see `_call`)."""
        self._io_guest: int | None = None
        self._direct = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._conn: pika.SelectConnection | None = None
        self._channel: pika.channel.Channel | None = None
        self._consumers: dict[str, int] = {}  # queue -> prefetch wanted
        self._consumer_tags: dict[str, str] = {}  # consumer tag -> queue
        self._declared: set[str] = set()
        self._outbox: deque[tuple[Outgoing, _Batch]] = deque()
        self._unconfirmed: dict[int, tuple[Outgoing, _Batch]] = {}
        self._seq = 0
        self._last_error: BaseException | None = None
        self._open_bundles: dict[int, int] = {}  # delivery tag -> parts not yet acked
        self.work_bundle = work_bundle
        self._work = queue_name(namespace, WORK_QUEUE)
        self._work_high = self._work + HIGH_BAND_SUFFIX
        self._unbundled = {queue_name(namespace, DEAD_QUEUE)}

    # --- life cycle ---------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        """Connect in the I/O thread; raise `ConnectionLost` if RabbitMQ cannot be reached."""
        self._thread = threading.Thread(target=self._run, name=f"amqp-{self.name}", daemon=True)
        self._thread.start()
        if not self.ready.wait(timeout_s):
            self.close()
            raise ConnectionLost(
                f"cannot reach RabbitMQ at {redact(self.url)} within {timeout_s:.0f} s "
                f"(is it running? set DTQ_BROKER_URL): {self._last_error!r}")

    def close(self) -> None:
        self._closing = True
        self._call(self._close_now)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _close_now(self) -> None:
        if self._conn is not None and self._conn.is_open:
            self._conn.close()
        elif self._conn is not None:
            self._conn.ioloop.stop()

    def _run(self) -> None:
        backoff = 0.05
        while not self._closing:
            url = self.urls[self._turn % len(self.urls)]
            self._connect_once(url)
            if self._closing:
                break
            self._turn += 1  # the next attempt goes to the next address
            self.log.warning("broker connection lost; reconnecting", backoff_s=backoff,
                             broker=redact(url), error=repr(self._last_error),
                             next_broker=redact(self.urls[self._turn % len(self.urls)]))
            if self._turn % len(self.urls) == 0:  # every address tried: wait before another round
                # a reconnect backoff in the I/O thread, not synchronisation
                time.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, 5.0)
                if self.connects:
                    backoff = min(backoff, 1.0)

    def _connect_once(self, url: str) -> None:
        params = pika.URLParameters(url)
        params.heartbeat = self.heartbeat_s
        params.blocked_connection_timeout = 30
        params.client_properties = {"connection_name": connection_name(self.namespace, self.name)}
        with self._io:
            try:
                conn = _Connection(
                    params, on_open_callback=self._on_open, on_open_error_callback=self._on_error,
                    on_close_callback=self._on_closed)
            except Exception as exc:  # DNS and similar errors surface here
                self._last_error = exc
                return
            self._direct = self._unlock_while_waiting(conn)
            self._conn = conn
            conn.ioloop.start()
            self.ready.clear()

    def _unlock_while_waiting(self, conn: pika.SelectConnection) -> bool:
        """Have the loop let go of the I/O lock while it waits in epoll (the kernel lets another
        thread change what it waits for meanwhile). With other pollers (kqueue, outside Linux)
        every call goes through the loop's callback queue instead."""
        poller = getattr(conn.ioloop, "_poller", None)
        if EPollPoller is None or not isinstance(poller, EPollPoller) \
                or not hasattr(poller, "_create_poller"):
            return False
        create = poller._create_poller
        poller._create_poller = lambda: _Unlocking(create(), self._io)
        return True

    def _on_error(self, conn: pika.SelectConnection, exc: BaseException) -> None:
        self._last_error = exc
        conn.ioloop.stop()

    def _on_closed(self, conn: pika.SelectConnection, exc: BaseException) -> None:
        self._last_error = exc
        self._channel = None
        self._requeue_unconfirmed()
        conn.ioloop.stop()

    def _on_open(self, conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=self._on_channel)

    def _on_channel(self, ch: pika.channel.Channel) -> None:
        with self._lock:
            self.generation += 1
        self._channel = ch
        self._declared = set()
        self._consumer_tags = {}
        self._open_bundles = {}
        self._seq = 0
        ch.add_on_close_callback(self._on_channel_closed)
        ch.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame: pika.frame.Method) -> None:
        ch = self._channel
        assert ch is not None
        ch.exchange_declare(f"{self.namespace}.dlx", exchange_type="fanout", durable=True)
        dead = queue_name(self.namespace, DEAD_QUEUE)
        self._declare(dead)
        ch.queue_bind(dead, f"{self.namespace}.dlx")
        for queue, prefetch in list(self._consumers.items()):
            self._start_consumer(queue, prefetch)
        self.connects += 1
        self.ready.set()
        self._flush()

    def _on_channel_closed(self, ch: pika.channel.Channel, exc: BaseException) -> None:
        self._last_error = exc
        if self._closing:
            return
        self.log.warning("channel closed", error=repr(exc))
        # A channel closed by the broker on its own (a protocol error) takes the connection
        # down too, so that the reconnect path rebuilds everything. When the connection itself
        # is going, pika is already tearing down and must not be re-entered.
        if isinstance(exc, pika.exceptions.ChannelClosedByBroker) and self._conn is not None:
            with contextlib.suppress(Exception):
                if self._conn.is_open:
                    self._conn.close()

    # --- marshalling onto the I/O thread ------------------------------------------------------

    def _call(self, fn: Callable[[], None]) -> None:
        """Run `fn` with the connection to itself: at once on the I/O thread (a `then`); on
        another thread, at once too, under the I/O lock (the I/O thread holds it except while it
        waits for events, so this waits at most for the loop's current turn) and without waking
        the I/O thread. A thread inside such a call already (a signal handler that interrupted
        it, or a `then` run from it) hands `fn` to the loop instead, as every thread does where
        the loop cannot let go of the lock."""
        if threading.current_thread() is self._thread:
            fn()
            return
        conn = self._conn
        if conn is None:
            return
        me = threading.get_ident()
        if self._direct and self._io_guest != me:
            with self._io:
                self._io_guest = me
                try:
                    fn()
                finally:
                    self._io_guest = None
            return
        # If the loop is gone, the next connection replays what matters (consumers, outbox).
        with contextlib.suppress(Exception):
            conn.ioloop.add_callback_threadsafe(fn)

    # --- topology -------------------------------------------------------------------------------

    def _arguments(self, queue: str) -> dict[str, Any]:
        if queue == queue_name(self.namespace, DEAD_QUEUE):
            # Replicated like the rest of a quorum namespace: what was dead-lettered outlives
            # the node that held it (no dead-letter exchange of its own, no delivery limit).
            return {"x-queue-type": "quorum"} if self.quorum else {}
        args: dict[str, Any] = {"x-dead-letter-exchange": f"{self.namespace}.dlx"}
        if self.quorum:
            args["x-queue-type"] = "quorum"
            args["x-delivery-limit"] = self.delivery_limit
        elif queue.endswith(f".{WORK_QUEUE}"):
            args["x-max-priority"] = 9
        return args

    def _declare(self, queue: str) -> None:
        if queue in self._declared or self._channel is None:
            return
        self._declared.add(queue)
        self._channel.queue_declare(queue, durable=True, arguments=self._arguments(queue))

    # --- consuming ------------------------------------------------------------------------------

    def _queues(self, address: str) -> list[str]:
        """The queues behind an address: the work queue of a quorum namespace is two (its high
        band first; see the module's "Priority bands")."""
        queue = queue_name(self.namespace, address)
        return [self._work_high, queue] if self.quorum and queue == self._work else [queue]

    def _band(self, msg: Outgoing) -> str:
        """The queue a message goes to: its own, or the work queue's high band for a dispatch
        of high priority in a quorum namespace."""
        if self.quorum and msg.queue == self._work and msg.priority >= HIGH_BAND:
            return self._work_high
        return msg.queue

    def consume(self, address: str, prefetch: int = 0) -> None:
        """Consume a queue (kept across reconnects). `prefetch` 0 means 1000."""
        for queue in self._queues(address):
            wanted = (prefetch or 1000) * (2 if queue == self._work_high else 1)
            self._consumers[queue] = wanted
            self._call(functools.partial(self._start_consumer, queue, wanted))

    def cancel(self, address: str, *, wait_s: float = 0.0) -> None:
        """Stop consuming a queue; with `wait_s`, wait (up to that long) until the broker has
        confirmed it, so nothing more arrives from it."""
        queues = self._queues(address)
        for queue in queues:
            self._consumers.pop(queue, None)
        done = threading.Event()

        def stop() -> None:
            tags = [t for t, q in self._consumer_tags.items() if q in queues]
            if not tags or self._channel is None:
                done.set()
                return
            left = [len(tags)]

            def cancelled(_frame: object) -> None:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

            for tag in tags:
                del self._consumer_tags[tag]
                self._channel.basic_cancel(tag, callback=cancelled)

        self._call(stop)
        if wait_s and threading.current_thread() is not self._thread:
            done.wait(wait_s)

    def _start_consumer(self, queue: str, prefetch: int) -> None:
        ch = self._channel
        if ch is None or queue in self._consumer_tags.values() or queue not in self._consumers:
            return
        self._declare(queue)
        ch.basic_qos(prefetch_count=prefetch)
        tag = ch.basic_consume(queue, self._on_message)
        self._consumer_tags[tag] = queue

    def _on_message(
        self, ch: pika.channel.Channel, method: pika.spec.Basic.Deliver,
        props: pika.spec.BasicProperties, body: bytes,
    ) -> None:
        if stagemarks.enabled():
            stagemarks.mark("receive", stagemarks.kinds([body]))
        queue = self._consumer_tags.get(method.consumer_tag or "", "")
        headers = dict(props.headers or {})
        tag = method.delivery_tag or 0
        count = headers.pop(BUNDLE_HEADER, None)
        parts = body.split(b"\n") if count is not None else [body]
        if len(parts) != (count or 1):  # a damaged bundle: its consumer dead-letters it whole
            headers[BUNDLE_HEADER], parts = count, [body]
        if len(parts) > 1:
            self._open_bundles[tag] = len(parts)
        deliveries = _count(headers.get(DELIVERY_COUNT_HEADER))
        for part in parts:
            self.on_delivery(Delivery(
                generation=self.generation, tag=tag, queue=queue, body=part,
                redelivered=bool(method.redelivered), headers=headers,
                priority=props.priority or 0, parts=len(parts), deliveries=deliveries))

    def ack(self, delivery: Delivery, *, multiple: bool = False) -> None:
        if delivery.parts > 1 and multiple:
            raise ValueError("a part of a bundle is acked on its own, not with multiple=True")
        self._call(lambda: self._ack_now(delivery.generation, delivery.tag, multiple))

    def _ack_now(self, generation: int, tag: int, multiple: bool) -> None:
        if generation != self.generation or self._channel is None or not self._channel.is_open:
            return  # (a closing channel's deliveries go back to their queues: nothing to ack)
        left = self._open_bundles.get(tag)
        if left is not None:  # a part of a bundle: ack the broker message with its last part
            if left > 1:
                self._open_bundles[tag] = left - 1
                return
            del self._open_bundles[tag]
        self._channel.basic_ack(tag, multiple=multiple)

    def reject(self, delivery: Delivery, *, requeue: bool) -> None:
        """Requeue, or (requeue=False) dead-letter a delivery."""
        if delivery.parts > 1:  # the part alone: re-published, then done with
            target = delivery.queue if requeue else queue_name(self.namespace, DEAD_QUEUE)
            copy = Outgoing(queue=target, body=delivery.body, headers=delivery.headers or None)
            self._publish_alone([copy], then=lambda: self.ack(delivery))
            return

        def reject() -> None:
            if delivery.generation == self.generation and self._channel is not None:
                self._channel.basic_reject(delivery.tag, requeue=requeue)

        self._call(reject)

    # --- publishing -----------------------------------------------------------------------------

    def publish(
        self, messages: Sequence[Outgoing], then: Callable[[], None] | None = None,
    ) -> None:
        """Publish persistent messages; `then` runs (on the I/O thread) once all are confirmed."""
        self._publish_alone(self._bundled(messages), then)

    def _bundled(self, messages: Sequence[Outgoing]) -> list[Outgoing]:
        """The messages with those bound for one queue (and one priority) in bundles: every
        queue but the dead one, and the work queue only as `work_bundle` allows."""
        return bundled(messages, work_queue=self._work, unbundled=self._unbundled,
                       work_bundle=self.work_bundle)

    def _publish_alone(
        self, messages: Sequence[Outgoing], then: Callable[[], None] | None = None,
    ) -> None:
        if not messages:
            if then is not None:
                self._call(then)
            return
        batch = _Batch(remaining=len(messages), then=then)
        with self._lock:
            self._outbox.extend((m, batch) for m in messages)
        self._call(self._flush)

    def send(self, address: str, body: bytes, **kw: Any) -> None:
        """Publish one message to an actor address (no confirmation callback)."""
        self.publish([Outgoing(queue=queue_name(self.namespace, address), body=body, **kw)])

    def _flush(self) -> None:
        ch = self._channel
        if ch is None or not self.ready.is_set():
            return
        if stagemarks.enabled() and self._outbox:
            stagemarks.mark("publish", stagemarks.kinds(m.body for m, _ in list(self._outbox)))
        while True:
            with self._lock:
                if not self._outbox:
                    return
                msg, batch = self._outbox.popleft()
            # Only the work queue has priorities; the others' messages (and bundles) need none.
            priority = (msg.priority or None) if msg.queue == self._work else None
            props = pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json",
                priority=priority, headers=msg.headers, message_id=msg.message_id)
            queue = self._band(msg)
            try:  # pika encodes a message whole before it writes any of it
                self._declare(queue)
                ch.basic_publish("", queue, msg.body, properties=props)
            except _UNENCODABLE as exc:
                self._declared.discard(queue)
                self._refuse(msg, batch, exc)
                continue
            except (pika.exceptions.AMQPChannelError, pika.exceptions.AMQPConnectionError):
                # The channel went away under this publish (the broker closed it, or the
                # connection dropped, after `ready` was set): the message waits for the next
                # connection, which flushes the outbox again; its batch is not confirmed yet.
                with self._lock:
                    self._outbox.appendleft((msg, batch))
                self._declared.discard(queue)
                return
            self._seq += 1
            self._unconfirmed[self._seq] = (msg, batch)

    def _refuse(self, msg: Outgoing, batch: _Batch, exc: Exception) -> None:
        """A message pika cannot encode (a priority outside 0-255, a queue name or message id
        over 255 bytes, a header of no AMQP type) is never sent where it was bound: it goes to
        the dead queue instead, whole, with headers saying why and where it was going, and
        counts as sent in its batch, so the input that caused it is acked and not handled
        again (a node that raised here would be restarted only to raise again, forever).
        `on_refused` hears of it."""
        reason = f"refused by the broker client ({msg.queue[:100]}): {exc!r}"[:300]
        self.log.error("a message cannot be published; it goes to the dead queue",
                       queue=msg.queue[:100], error=repr(exc)[:200], size=len(msg.body))
        dead = queue_name(self.namespace, DEAD_QUEUE)
        headers = {k: v for k, v in (msg.headers or {}).items() if k == BUNDLE_HEADER}
        if msg.queue == dead and REFUSED_HEADER in (msg.headers or {}):
            self._count_sent(batch)  # not even its dead copy can be written: dropped, logged
        else:
            copy = Outgoing(queue=dead, body=msg.body, headers={
                **headers, REFUSED_HEADER: reason, ORIGIN_HEADER: msg.queue[:255]})
            with self._lock:
                self._outbox.appendleft((copy, batch))
        self.on_refused(msg, reason)

    @staticmethod
    def _count_sent(batch: _Batch) -> None:
        batch.remaining -= 1
        if batch.remaining == 0 and batch.then is not None:
            batch.then()

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        tag = int(getattr(method, "delivery_tag", 0))
        multiple = bool(getattr(method, "multiple", False))
        tags = [t for t in self._unconfirmed if t <= tag] if multiple else [tag]
        nacked = isinstance(method, pika.spec.Basic.Nack)
        for t in sorted(tags):
            entry = self._unconfirmed.pop(t, None)
            if entry is None:
                continue
            msg, batch = entry
            if nacked:  # the broker could not take it: send it again
                with self._lock:
                    self._outbox.append((msg, batch))
                continue
            self._count_sent(batch)
        if nacked:
            self._flush()

    def _requeue_unconfirmed(self) -> None:
        with self._lock:
            pending = [self._unconfirmed[t] for t in sorted(self._unconfirmed)]
            self._unconfirmed.clear()
            self._outbox.extendleft(reversed(pending))

    # --- administration (tests, the scenario runner, the API) -----------------------------------

    def queue_depths(self, addresses: Sequence[str]) -> dict[str, int]:
        """Messages ready in each queue, both bands of a quorum work queue together (a
        short-lived blocking connection)."""
        out: dict[str, int] = {}
        with blocking(self.url) as ch:
            for address in addresses:
                out[address] = 0
                for queue in self._queues(address):
                    try:
                        ok = ch.queue_declare(queue, passive=True)
                        out[address] += int(ok.method.message_count or 0)
                    except pika.exceptions.ChannelClosedByBroker:
                        ch = ch.connection.channel()
        return out


@contextlib.contextmanager
def blocking(url: str) -> Any:
    """A short-lived blocking channel, for administration and tests (to the first of the
    URL's brokers that answers)."""
    try:
        conn = pika.BlockingConnection([pika.URLParameters(u) for u in broker_urls(url)])
    except pika.exceptions.AMQPError as exc:
        raise ConnectionLost(f"cannot reach RabbitMQ at {redact(url)}: {exc!r}") from exc
    try:
        yield conn.channel()
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def publish_raw(url: str, messages: Sequence[tuple[str, bytes]]) -> None:
    """Publish (queue, bytes) pairs as they are, persistent, confirmed and mandatory (a queue
    that does not exist raises instead of swallowing them): for injecting malformed and forged
    messages in scenarios and tests."""
    with blocking(url) as ch:
        ch.confirm_delivery()
        for queue, body in messages:
            ch.basic_publish("", queue, body, properties=pika.BasicProperties(delivery_mode=2),
                             mandatory=True)


def consumer_count(url: str, namespace: str, address: str) -> int:
    """How many consumers a queue has now (0 if it does not exist yet)."""
    with blocking(url) as ch:
        try:
            ok = ch.queue_declare(queue_name(namespace, address), passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        return int(ok.method.consumer_count or 0)


def delete_namespace(url: str, namespace: str, addresses: Sequence[str]) -> None:
    """Delete the queues of a namespace (test and scenario clean-up)."""
    with blocking(url) as ch:
        queues = [queue_name(namespace, a)
                  for a in (*addresses, COORDINATOR_QUEUE, WORK_QUEUE, DEAD_QUEUE)]
        for queue in (*queues, queue_name(namespace, WORK_QUEUE) + HIGH_BAND_SUFFIX):
            with contextlib.suppress(Exception):
                ch.queue_delete(queue)
        with contextlib.suppress(Exception):
            ch.exchange_delete(f"{namespace}.dlx")
