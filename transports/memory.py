"""The deterministic simulator: virtual clock, seeded scheduler, a faulty network, crashes.

One thread, one event heap ordered by (virtual time, rank, sequence). Mailboxes and the shared
work queue behave like RabbitMQ queues: competing consumers served round robin, per-consumer
prefetch, unacked deliveries returned to the queue when a consumer's connection dies, so
delivery is at least once. The network between actors and queues delays, drops (the publisher
retransmits), duplicates and reorders messages, and partitions cut named actors or groups from
each other, from the broker or from the store until healed. The same seed and the same code give
the same history, event for event.

The rule of the schedule: every choice RabbitMQ leaves open is made by the seed, and no order
it guarantees is broken. Events due at the same virtual time run in an order drawn from the seed
(the rank): how different publishers' messages interleave on a queue, which of two nodes acts
first, whether a node's delivery, timer or finished task comes first. The seed also picks the
consumer a queue's round robin starts with, and how long each delivery takes from the broker to
its consumer (0 to `delivery_jitter_ms`). Kept as RabbitMQ keeps them (the lanes of `_lane`):
one publisher's messages to one queue arrive in the order published (one channel); a queue
hands its messages to one consumer in queue order; a queue is FIFO within a priority, by
arrival, and higher priorities go first; a requeued delivery goes back to its old place, ahead of
the messages that arrived after it; a node's timers due together fire in the order they were
set, its finished task runs report in the order they finished; the client submits in plan order.
Only the network knobs (`reorder`, `jitter_ms`, `duplicate`, `drop`) reorder one publisher's
messages, as a misbehaving network would.

Store reads cost virtual time when `store_read_us` is set: each record a read returns charges
the node that read it, and the node stays busy that long after the handler: its deliveries and
timers due meanwhile wait, in order (a leader loading a large store is late renewing its lease,
as a process would be).
"""

from __future__ import annotations

import functools
import heapq
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import attrs
import structlog

from dtq.actor import Actor, ActorCell, DeliveryRef, Effects
from dtq.causal import check_deps
from dtq.clock import VectorClock
from dtq.envelope import (
    COORDINATOR_QUEUE,
    WORK_QUEUE,
    Codec,
    Dispatch,
    Envelope,
    Message,
    Submit,
)
from dtq.history import History
from dtq.poison import INTRUDER, DeadLetter, WireBytes, decode_delivery
from dtq.store import Store
from dtq.task import TaskSpec
from transports.memory_effects import SimEffects
from transports.memory_store import SimStore, StoreView
from transports.memory_tasks import SimIO

BROKER = "broker"
STORE = "store"
CLIENT = "client"

_CODEC = Codec()
BATCH_MAX = 256
"""The most handler runs whose effects a node applies together (`Simulation._free`), as the
process runtime's `RuntimeOptions.batch_max`."""

__all__ = ["BROKER", "CLIENT", "STORE", "NetworkConfig", "SimIO", "SimStore", "Simulation"]


@attrs.define(kw_only=True)
class NetworkConfig:
    """How the simulated network treats each published message."""

    delay_ms: int = 1
    jitter_ms: int = 0
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_ms: int = 20
    retransmit_ms: int = 50
    """A dropped publish is not confirmed; the publisher sends it again after this long."""
    broker_heartbeat_ms: int = 2000
    """A connection silent for this long (paused or cut off) is closed by the broker."""
    stale_read: float = 0.0
    """Probability that a result read misses a result that is there (a lagging replica)."""
    early_dispatch: float = 0.0
    """Probability that, as the leader dispatches a task, a dispatch of one of its pending
    dependents is injected too, early (as a stale or confused leader would send it)."""


@attrs.define(kw_only=True)
class CrashPoints:
    """Probabilities of crashing a node at each crash point: after a step of the effect plan
    (`dtq.effectplan`: `after_persist`, `after_results`, `after_send`, `after_ack`), or at a
    point of a task's run (`dtq.taskrun.CRASH_POINTS`: inside `ctx.once` before its marker is
    begun, before `fn`, after `fn` before the done marker; before the result is written)."""

    after_persist: float = 0.0
    after_results: float = 0.0
    after_send: float = 0.0
    after_ack: float = 0.0
    once_before_begin: float = 0.0
    once_before_fn: float = 0.0
    once_after_fn: float = 0.0
    before_result: float = 0.0
    until_ms: int | None = None
    """Stop injecting at this virtual time (None: for the whole run)."""

    @classmethod
    def from_mapping(cls, points: Mapping[str, Any]) -> CrashPoints:
        """From a scenario's `[crash_points]` table: probabilities by point, and `until_ms`."""
        until = points.get("until_ms")
        return cls(**{k: float(v) for k, v in points.items() if k != "until_ms"},
                   until_ms=int(until) if until is not None else None)

    def probability(self, point: str) -> float:
        value: float = getattr(self, point)
        return value


@attrs.define(eq=False)
class _Queue:
    name: str
    owner: str
    ready: list[tuple[int, int, Envelope]] = attrs.field(factory=list)
    consumers: list[str] = attrs.field(factory=list)
    rr: int = 0


@attrs.define(eq=False)
class _Node:
    name: str
    factory: Callable[[], Actor]
    groups: tuple[str, ...]
    prefetch: int
    cell: ActorCell | None = None
    alive: bool = False
    connected: bool = False
    paused: bool = False
    incarnation: int = 0
    clock: VectorClock = VectorClock()
    subscriptions: list[str] = attrs.field(factory=list)
    unacked: dict[int, str] = attrs.field(factory=dict)
    """delivery tag -> queue name"""
    credit: dict[str, int] = attrs.field(factory=dict)
    backlog: deque[tuple[bool, Callable[[], None]]] = attrs.field(factory=deque)
    """What waits for the node, in order; each call with whether it joins a batch (a delivery,
    a finished task run) or runs on its own (a timer)."""
    batch: list[tuple[Effects, int | None]] | None = None
    """While the node handles what waited: the handler runs whose effects are not applied yet
    (`Simulation._free`)."""
    cancelled_timers: set[int] = attrs.field(factory=set)
    store_cut: bool = False
    auto_restart: bool = True
    blocked_since: int | None = None
    """When the node started waiting for the store to take its writes (None: not waiting)."""
    busy_us: int = 0
    """Store work charged by the handler running (`Simulation.store_read_us`)."""
    busy_until_ms: int = 0
    """The node is still busy with its last handler's store work until then: what falls due
    meanwhile waits, in order (a process handles one thing at a time)."""
    draining: bool = False


def _lane(fn: Callable[..., object], args: tuple[Any, ...]) -> tuple[str, ...] | None:
    """The lane of a scheduled call: calls of one lane due at the same time run in the order
    they were scheduled; calls of no lane (None) are ordered by the seed.

    * a publisher's messages to one queue (one channel: RabbitMQ keeps their order), both the
      publish (retransmits, slowed links) and the arrival at the queue;
    * messages returned to one queue by the broker;
    * the deliveries of one queue to one consumer (in queue order, as on its channel);
    * a node's timers, and a node's finished task runs (each in the order they were set);
    * the client's submissions (the runner submits in plan order).

    Calls are known by their method's name, so that a wrapper of the same name and arguments
    (the slowed links of `dtq.scenario.links`) keeps the lane of what it wraps.
    """
    call = fn.func if isinstance(fn, functools.partial) else fn
    name = getattr(call, "__name__", "") if hasattr(call, "__self__") else ""
    if not args:
        return None
    if name == "_enqueue":
        env = args[0]
        return ("requeue", env.target) if len(args) > 1 and args[1] else (
            "channel", env.sender, env.target)
    if name in ("_publish", "_on_publish"):
        return ("publish", args[0].sender, args[0].target)
    if name in ("_deliver", "_on_deliver"):
        return ("deliver", args[0].name, args[3].target)
    if name == "_fire":
        return ("timers" if args[2] else "tasks", args[0].name)
    if name == "submit":
        return ("client",)
    return None


def _default_log() -> Any:
    """The configured logger, or (when nothing configured logging) warnings only: a simulator
    runs thousands of actors' lives and should not chatter."""
    if structlog.is_configured():
        return structlog.get_logger("dtq.sim")
    return structlog.wrap_logger(
        structlog.PrintLogger(), wrapper_class=structlog.make_filtering_bound_logger(30))


class Simulation:
    """A whole cluster in one thread. Spawn actors, submit tasks, inject faults, run."""

    def __init__(
        self, seed: int = 0, *, network: NetworkConfig | None = None,
        store: SimStore | None = None, crash_points: CrashPoints | None = None,
        restart_ms: int = 1000, io: SimIO | None = None, log: Any = None,
        trace: bool = False,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.network = network or NetworkConfig()
        self.crash_points = crash_points or CrashPoints()
        self.restart_ms = restart_ms
        self.store_retry_ms = 100
        self.store_wait_ms = 10_000
        self.store_read_us = 0
        """Virtual time a store read costs per record it returns (0: reads are free)."""
        self.delivery_limit: int | None = None
        """The work queue counts what its consumers give back and dead-letters a dispatch given
        back more often than this, as a quorum queue does (`QUORUM_DELIVERY_LIMIT`); None: it
        counts nothing, as a classic queue. (Only the work queue: it is where dtq acts on the
        count.)"""
        self.trace = trace
        self.now_ms = 0
        self.store = store or SimStore()
        self.store.now_ms = lambda: self.now_ms
        self.history = History(lambda: self.now_ms)
        self.io = io or SimIO()
        self.log = log or _default_log()
        self.nodes: dict[str, _Node] = {}
        self.queues: dict[str, _Queue] = {}
        self.partitions: list[tuple[frozenset[str], frozenset[str]]] = []
        self.blocked: list[Envelope] = []
        self.delivered = 0
        self._heap: list[tuple[int, float, int, Callable[..., object], tuple[Any, ...]]] = []
        self._seq = 0
        self.schedule_rng = random.Random(f"{seed}:schedule")
        """Breaks ties among events due at the same virtual time, and picks where each queue's
        round robin starts: the schedule's own stream, apart from the network's."""
        self._lanes: dict[tuple[str, ...], tuple[int, float]] = {}
        """lane -> (time, rank) of the last event scheduled in it (see `_lane`)"""
        self._positions: dict[int, tuple[int, int]] = {}
        """delivery tag -> the delivered message's place in its queue, to requeue it there"""
        self.delivery_jitter_ms = 1
        """A delivery takes 0 to this many ms from the broker to its consumer (the seed says)."""
        self._delivered_at: dict[tuple[str, str], int] = {}
        """(consumer, queue) -> when its last delivery arrives"""
        self._ids = 0
        self._tags = 0
        self._client_clock = VectorClock()
        self._inflight: dict[int, Envelope] = {}

    # --- scheduling -------------------------------------------------------------------------

    def at(self, time_ms: int, fn: Callable[..., object], *args: Any) -> None:
        """Run `fn(*args)` at `time_ms`. Among events due at the same time a seeded random rank
        decides, except that events of one lane (`_lane`) keep the order they were scheduled in."""
        time_ms = max(time_ms, self.now_ms)
        rank = self.schedule_rng.random()
        lane = _lane(fn, args)
        if lane is not None:
            last = self._lanes.get(lane)
            if last is not None and last[0] == time_ms and last[1] > rank:
                rank = last[1]  # equal ranks fall back on the sequence number: FIFO
            if last is None or (time_ms, rank) >= last:
                self._lanes[lane] = (time_ms, rank)
        self._seq += 1
        heapq.heappush(self._heap, (time_ms, rank, self._seq, fn, args))

    def after(self, delay_ms: int, fn: Callable[..., object], *args: Any) -> None:
        self.at(self.now_ms + delay_ms, fn, *args)

    def run(
        self, *, until_ms: int | None = None, stop: Callable[[], bool] | None = None,
        max_events: int = 50_000_000,
    ) -> int:
        """Process events in order until `stop()` holds, time passes `until_ms`, or none remain.
        Returns the number of events processed."""
        n = 0
        heap = self._heap
        while heap and n < max_events:
            if until_ms is not None and heap[0][0] > until_ms:
                self.now_ms = until_ms
                break
            time_ms, _, _, fn, args = heapq.heappop(heap)
            self.now_ms = time_ms
            fn(*args)
            n += 1
            if stop is not None and stop():
                break
        return n

    def new_id(self) -> str:
        self._ids += 1
        return f"m{self._ids}"

    # --- nodes ------------------------------------------------------------------------------

    def spawn(
        self, name: str, factory: Callable[[], Actor], *, groups: Iterable[str] = (),
        prefetch: int = 0, auto_restart: bool = True,
    ) -> None:
        """Add an actor (started at the current time). `prefetch` 0 means unlimited."""
        if name in self.nodes or name in (BROKER, STORE, CLIENT):
            raise ValueError(f"actor name {name!r} is taken")
        node = _Node(name=name, factory=factory, groups=tuple(groups), prefetch=prefetch,
                     auto_restart=auto_restart)
        self.nodes[name] = node
        self._queue(name, owner=name)
        self._start(node)

    def _queue(self, name: str, owner: str = BROKER) -> _Queue:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = _Queue(name=name, owner=owner)
        return q

    def _start(self, node: _Node) -> None:
        node.incarnation += 1
        node.alive, node.connected, node.paused = True, True, False
        node.subscriptions, node.unacked, node.credit = [], {}, {}
        node.backlog.clear()
        node.busy_us, node.busy_until_ms = 0, 0
        node.blocked_since = None
        node.cancelled_timers = set()
        actor = node.factory()
        view = cast(Store, StoreView(self.store, lambda: not self._store_cut(node.name),
                                     stale_read=lambda task_id: self._stale_read(node, task_id),
                                     charge=lambda n: self._charge(node, n)))
        rng = random.Random(f"{self.seed}:{node.name}:{node.incarnation}")
        counter = iter(range(1, 1 << 62))
        node.cell = ActorCell(
            actor, store=view, rng=rng, record=self.history.record, clock=node.clock,
            new_id=lambda: f"{node.name}.{node.incarnation}.{next(counter)}",
            log=self.log.bind(actor=node.name), trace=self.trace, wall_ms=lambda: self.now_ms)
        self._subscribe(node, node.name)
        self._run_handler(node, None, lambda cell: cell.start(self.now_ms))

    def crash(self, name: str, reason: str = "killed", *, restart: bool = False) -> None:
        """Kill an actor: its volatile state is lost and its unacked deliveries return."""
        node = self.nodes[name]
        if not node.alive:
            return
        self.history.record(name, "crash", node.clock, {"reason": reason})
        node.alive = False
        self._disconnect(node)
        if restart:
            self.after(self.restart_ms, self.restart, name)

    def restart(self, name: str) -> None:
        node = self.nodes[name]
        if node.alive:
            return
        self.history.record(name, "restart", node.clock, {})
        self._start(node)

    def pause(self, name: str) -> None:
        """Stop an actor's process (like SIGSTOP): nothing runs; the broker notices later."""
        node = self.nodes[name]
        if not node.alive or node.paused:
            return
        node.paused = True
        self.history.record(name, "pause", node.clock, {})
        inc = node.incarnation
        self.after(self.network.broker_heartbeat_ms, self._heartbeat_check, node, inc)

    def _heartbeat_check(self, node: _Node, inc: int) -> None:
        if node.incarnation == inc and node.alive and (node.paused or self._cut(node.name, BROKER)):
            self.history.record(node.name, "connection_closed", node.clock, {})
            self._disconnect(node)

    def resume(self, name: str) -> None:
        node = self.nodes[name]
        if not node.alive or not node.paused:
            return
        node.paused = False
        self.history.record(name, "resume", node.clock, {})
        self._reconnect(node)
        self._free(node, node.incarnation)

    def drop_connection(self, name: str, reconnect_ms: int = 50) -> None:
        """The broker closes an actor's connection: its unacked deliveries return to their
        queues; the actor reconnects a little later and consumes again."""
        node = self.nodes[name]
        self.history.record(name, "connection_closed", node.clock, {})
        self._disconnect(node)
        self.after(reconnect_ms, self._reconnect, node)

    def lose_store_data(self) -> None:
        """The store restarts without persistence: every key is gone at once (records, results,
        leases, epochs, the incarnation marker). Store calls are atomic here, so no connection
        is caught in the middle of one; the next call of every node finds the store empty."""
        self.history.record("sim", "store_data_wiped", VectorClock(), {})
        self.store.lose_data()

    def _disconnect(self, node: _Node) -> None:
        """The broker drops the node's connection: unacked deliveries go back to their queues."""
        if not node.connected:
            return
        node.connected = False
        for tag, qname in list(node.unacked.items()):
            self._requeue(qname, tag)
        node.unacked.clear()
        node.credit.clear()
        for q in self.queues.values():
            if node.name in q.consumers:
                q.consumers.remove(node.name)

    def _reconnect(self, node: _Node) -> None:
        if node.connected or not node.alive or self._cut(node.name, BROKER):
            return
        node.connected = True
        for qname in node.subscriptions:
            q = self._queue(qname)
            if node.name not in q.consumers:
                q.consumers.append(node.name)
            self.after(0, self._pump, q)

    # --- partitions -------------------------------------------------------------------------

    def partition(self, side_a: Iterable[str], side_b: Iterable[str]) -> None:
        """Cut every member of side_a from every member of side_b (names, groups, 'broker',
        'store')."""
        a, b = frozenset(side_a), frozenset(side_b)
        self.partitions.append((a, b))
        self.history.record("sim", "partition", VectorClock(),
                            {"a": sorted(a), "b": sorted(b)})
        for node in self.nodes.values():
            if self._cut(node.name, BROKER):
                inc = node.incarnation
                self.after(self.network.broker_heartbeat_ms, self._heartbeat_check, node, inc)

    def heal(self) -> None:
        self.partitions.clear()
        self.history.record("sim", "heal", VectorClock(), {})
        self._healed()

    def unpartition(self, side_a: Iterable[str], side_b: Iterable[str]) -> None:
        """Remove one partition made by `partition(side_a, side_b)`; the others stay."""
        a, b = frozenset(side_a), frozenset(side_b)
        if (a, b) in self.partitions:
            self.partitions.remove((a, b))
        self.history.record("sim", "unpartition", VectorClock(),
                            {"a": sorted(a), "b": sorted(b)})
        self._healed()

    def _healed(self) -> None:
        """After a partition is removed: nodes reconnect, held publishes go out."""
        for node in self.nodes.values():
            if not node.paused:
                self._reconnect(node)
        blocked, self.blocked = self.blocked, []
        for env in blocked:
            self._publish(env)
        for q in self.queues.values():
            self.after(0, self._pump, q)

    def _members(self, name: str) -> set[str]:
        node = self.nodes.get(name)
        return {name, *(node.groups if node else ())}

    def _cut(self, x: str, y: str) -> bool:
        if not self.partitions or x == y:
            return False
        mx, my = self._members(x), self._members(y)
        return any((mx & a and my & b) or (mx & b and my & a) for a, b in self.partitions)

    def _store_cut(self, name: str) -> bool:
        return self._cut(name, STORE)

    # --- messaging --------------------------------------------------------------------------

    def submit(self, spec: TaskSpec, *, sender: str = CLIENT) -> Envelope:
        """A client publishes a submission to the coordinator queue."""
        self._client_clock = self._client_clock.tick(sender)
        env = Envelope(id=self.new_id(), sender=sender, target=COORDINATOR_QUEUE,
                       body=Submit(spec=spec), clock=self._client_clock)
        self.history.record(sender, "submit", self._client_clock,
                            {"task": spec.id, "label": spec.label})
        if self.trace:
            self.history.record(sender, "send", self._client_clock,
                                {"msg": env.id, "to": env.target, "kind": env.kind})
        self._publish(env)
        return env

    def send(self, sender: str, target: str, body: Message) -> None:
        """Inject a message as if `sender` had published it."""
        self._publish(Envelope(id=self.new_id(), sender=sender, target=target, body=body))

    def send_bytes(self, target: str, data: bytes, *, sender: str = INTRUDER) -> None:
        """Publish raw bytes to a queue: the node they are delivered to decodes them as a
        process decodes a delivery (`dtq.poison.decode_delivery`), and dead-letters them, with
        a record, if they do not decode."""
        self.send(sender, target, WireBytes(data=data))

    def _stale_read(self, node: _Node, task_id: str) -> bool:
        p = self.network.stale_read
        if p and self.rng.random() < p:  # only ever asked about results that exist
            self.history.record(node.name, "inject_stale_read", node.clock, {"task": task_id})
            return True
        return False

    def _inject_early_dispatch(self, env: Envelope) -> None:
        """A dispatch of a pending dependent, sent with the clock of its dependency's
        dispatch: before the dependency completed. Workers must not run it."""
        body = env.body
        assert isinstance(body, Dispatch)
        pending = [d for d in self.store.dependents(body.spec.id)
                   if (rec := self.store.get_task(d)) is not None and rec.state.value == "pending"
                   and check_deps(rec.spec.deps, env.clock, self.store)[1] is not None]
        if not pending:
            return
        rec = self.store.get_task(self.rng.choice(sorted(pending)))
        assert rec is not None
        early = attrs.evolve(env, id=self.new_id(),
                             body=Dispatch(spec=rec.spec, attempt=rec.attempt + 1))
        self.history.record(env.sender, "inject_early_dispatch", env.clock,
                            {"task": rec.id, "msg": early.id})
        self._publish(early, inject=False)

    def _publish(self, env: Envelope, *, inject: bool = True) -> None:
        if (inject and self.network.early_dispatch and isinstance(env.body, Dispatch)
                and self.rng.random() < self.network.early_dispatch):
            self._inject_early_dispatch(env)
        owner = self._queue(env.target).owner
        if self._cut(env.sender, BROKER) or self._cut(env.sender, owner):
            self.blocked.append(env)  # unconfirmed: the publisher holds it until it gets through
            return
        net, rng = self.network, self.rng
        delay = net.delay_ms + (rng.randint(0, net.jitter_ms) if net.jitter_ms else 0)
        if net.reorder and rng.random() < net.reorder:
            delay += rng.randint(1, max(1, net.reorder_ms))
        if net.drop and rng.random() < net.drop:
            self.history.record("sim", "drop", VectorClock(), {"msg": env.id})
            self.after(delay + net.retransmit_ms, self._publish, env)
            return
        self.after(delay, self._enqueue, env)
        if net.duplicate and rng.random() < net.duplicate:
            self.history.record("sim", "duplicate", VectorClock(), {"msg": env.id})
            self.after(delay + rng.randint(0, max(1, net.reorder_ms)), self._enqueue, env)

    def _enqueue(
        self, env: Envelope, redelivered: bool = False, position: tuple[int, int] | None = None,
    ) -> None:
        """A message reaches its queue: behind every message of its priority that arrived
        before it, or at `position` (a requeued message's old place)."""
        q = self._queue(env.target)
        if redelivered:
            env = attrs.evolve(env, redelivered=True)
        if position is None:
            prio = env.body.spec.priority if hasattr(env.body, "spec") else 0
            self._seq += 1
            position = (-prio, self._seq)
        heapq.heappush(q.ready, (*position, env))
        self._pump(q)

    def _requeue(self, qname: str, tag: int) -> None:
        """An unacked delivery returns to its queue at its old place, ahead of every message
        that arrived after it (RabbitMQ requeues to the original position or nearer the head)."""
        env = self._inflight.pop(tag, None)
        position = self._positions.pop(tag, None)
        if env is not None and self.delivery_limit is not None and qname == WORK_QUEUE:
            if env.deliveries >= self.delivery_limit:
                self.history.record(BROKER, "dead_lettered", VectorClock(), {
                    "reason": f"given back {env.deliveries + 1} times (delivery limit)",
                    "msg": env.id, "kind": env.kind})
                return
            env = attrs.evolve(env, deliveries=env.deliveries + 1)
        if env is not None:
            self.after(0, self._enqueue, env, True, position)

    def _pump(self, q: _Queue) -> None:
        """Hand ready messages to consumers with credit, round robin. A consumer partitioned
        from a message's sender cannot get that message; it waits for another or for a heal."""
        skipped: list[tuple[int, int, Envelope]] = []
        while q.ready and q.consumers:
            item = heapq.heappop(q.ready)
            node = self._next_consumer(q, item[2].sender)
            if node is None:
                skipped.append(item)
                if not self.partitions:
                    break
                continue
            self._tags += 1
            tag = self._tags
            node.unacked[tag] = q.name
            node.credit[q.name] = node.credit.get(q.name, 0) + 1
            self._inflight[tag] = item[2]
            self._positions[tag] = (item[0], item[1])
            self.at(self._delivery_time(node.name, q.name), self._deliver, node, node.incarnation,
                    tag, item[2])
        for item in skipped:
            heapq.heappush(q.ready, item)
        if len(self._positions) > 2 * len(self._inflight) + 64:  # acked deliveries' places
            self._positions = {t: p for t, p in self._positions.items() if t in self._inflight}

    def _delivery_time(self, consumer: str, qname: str) -> int:
        """When a delivery reaches its consumer: now or up to `delivery_jitter_ms` later (the
        seed says), never before an earlier delivery of the same queue to the same consumer."""
        link = (consumer, qname)
        due = max(self.now_ms + self.schedule_rng.randint(0, self.delivery_jitter_ms),
                  self._delivered_at.get(link, 0))
        self._delivered_at[link] = due
        return due

    def _next_consumer(self, q: _Queue, sender: str) -> _Node | None:
        n = len(q.consumers)
        for i in range(n):
            node = self.nodes[q.consumers[(q.rr + i) % n]]
            has_credit = (node.prefetch == 0 or q.name == node.name
                          or node.credit.get(q.name, 0) < node.prefetch)
            if has_credit and not self._cut(sender, node.name) and not self._cut(node.name, BROKER):
                q.rr = (q.rr + i + 1) % n
                return node
        return None

    def _deliver(self, node: _Node, inc: int, tag: int, env: Envelope) -> None:
        if node.incarnation != inc or not node.alive or tag not in node.unacked:
            return
        if node.paused or node.blocked_since is not None:
            node.backlog.append((True, lambda: self._deliver(node, inc, tag, env)))
            return
        if node.busy_until_ms and self._busy(
                node, True, lambda: self._deliver(node, inc, tag, env)):
            return
        if isinstance(env.body, WireBytes):  # bytes off the wire: decoded as production does
            decoded = decode_delivery(_CODEC, env.body.data, redelivered=env.redelivered,
                                      deliveries=env.deliveries)
            if isinstance(decoded, DeadLetter):
                self.history.record(node.name, "dead_lettered", node.clock, decoded.record)
                self._ack(node, tag)
                return
            env = decoded
        self.delivered += 1
        self._run_handler(node, tag, lambda cell: cell.deliver(env, DeliveryRef(tag), self.now_ms))

    def _ack(self, node: _Node, tag: int) -> None:
        qname = node.unacked.pop(tag, None)
        if qname is None:
            return  # the delivery was already returned to its queue (connection closed)
        self._inflight.pop(tag, None)
        node.credit[qname] -= 1
        self._pump(self.queues[qname])

    def _subscribe(self, node: _Node, qname: str) -> None:
        if qname not in node.subscriptions:
            node.subscriptions.append(qname)
        q = self._queue(qname)
        if node.connected and node.name not in q.consumers:
            q.consumers.append(node.name)
            q.rr = self.schedule_rng.randrange(len(q.consumers))  # who is served first: any
            self.after(0, self._pump, q)

    def _unsubscribe(self, node: _Node, qname: str) -> None:
        if qname in node.subscriptions:
            node.subscriptions.remove(qname)
        q = self.queues.get(qname)
        if q is not None and node.name in q.consumers:
            q.consumers.remove(node.name)

    # --- running handlers and applying their effects ----------------------------------------

    def _run_handler(
        self, node: _Node, tag: int | None, run: Callable[[ActorCell], Effects],
    ) -> None:
        """Run a handler, then apply its effects by the one plan (`dtq.effectplan`), or, while
        the node handles what waited, add them to its batch."""
        world = SimEffects(self, node)
        fx = world.handle(run)
        if fx is not None and node.batch is not None and node.alive:
            node.batch.append((fx, tag))
            return  # its store work counts when the batch is applied
        if fx is not None:
            world.apply([(fx, tag)])
        self._charged(node)

    def _charged(self, node: _Node) -> None:
        """The node is busy for the store work its handlers were charged."""
        if node.busy_us:
            node.busy_until_ms = self.now_ms + -(-node.busy_us // 1000)
            node.busy_us = 0

    def _charge(self, node: _Node, records: int) -> None:
        node.busy_us += records * self.store_read_us

    def _busy(self, node: _Node, joins: bool, call: Callable[[], None]) -> bool:
        """While the node is busy, `call` waits its turn (after what waited before it)."""
        if self.now_ms >= node.busy_until_ms and node.backlog and not node.draining:
            self._free(node, node.incarnation)  # what waited goes first
        if self.now_ms >= node.busy_until_ms:
            return False
        if not node.backlog:
            self.at(node.busy_until_ms, self._free, node, node.incarnation)
        node.backlog.append((joins, call))
        return True

    def _free(self, node: _Node, inc: int) -> None:
        """Handle what waited (for the store, a pause, a busy node) while the node can, as a
        process handles what its inbox holds: the deliveries and finished task runs as one
        batch (up to `BATCH_MAX`) whose effects are applied after the last of them, so that
        its handlers do not find in the store what earlier ones wrote. A timer runs on its
        own, after the batch so far is applied."""
        if node.incarnation != inc or not node.alive or node.draining:
            return
        node.draining = True
        node.batch = []
        try:
            while (node.backlog and not node.paused and node.blocked_since is None
                   and self.now_ms >= node.busy_until_ms and node.incarnation == inc
                   and node.alive):
                joins, call = node.backlog[0]
                if node.batch and (not joins or len(node.batch) >= BATCH_MAX):
                    self._apply_batch(node, inc)
                    continue  # the batch may have left the node waiting for the store
                node.backlog.popleft()
                if joins:
                    call()
                else:
                    node.batch = None
                    call()
                    node.batch = []
        finally:
            node.draining = False
            self._apply_batch(node, inc)
            node.batch = None
        if (node.backlog and node.alive and node.incarnation == inc and not node.paused
                and node.blocked_since is None):
            self.at(node.busy_until_ms, self._free, node, inc)

    def _fail(self, node: _Node, reason: str) -> None:
        """Crash-only: an actor that cannot go on exits, and its supervisor restarts it."""
        self.crash(node.name, reason, restart=node.auto_restart)

    def _apply_batch(self, node: _Node, inc: int) -> None:
        batch, node.batch = node.batch, []
        if batch and node.incarnation == inc and node.alive:
            SimEffects(self, node).apply(batch)
        self._charged(node)

    def _retry_apply(self, node: _Node, inc: int, world: SimEffects) -> None:
        """Try again to apply the effects of a node waiting for the store; then handle what
        waited meanwhile."""
        if node.incarnation != inc or not node.alive:
            return
        if node.paused:  # frozen: try again later (the wait for the store goes on)
            self.after(self.store_retry_ms, self._retry_apply, node, inc, world)
            return
        world.run_plan()
        self._free(node, inc)

    def _fire(self, node: _Node, inc: int, timer_id: int, message: Message) -> None:
        if node.incarnation != inc or not node.alive:
            return
        if timer_id and timer_id in node.cancelled_timers:
            node.cancelled_timers.discard(timer_id)
            return
        if node.paused or node.blocked_since is not None:
            node.backlog.append((not timer_id, lambda: self._fire(node, inc, timer_id, message)))
            return
        if node.busy_until_ms and self._busy(
                node, not timer_id, lambda: self._fire(node, inc, timer_id, message)):
            return
        self._run_handler(node, None, lambda cell: cell.fire(message, self.now_ms))

    def _crash_drawn(self, point: str) -> bool:
        """Whether a node crashes at `point` now, as `crash_points` draws it."""
        p, until = self.crash_points.probability(point), self.crash_points.until_ms
        return bool(p) and (until is None or self.now_ms < until) and self.rng.random() < p

    def _crash_point(self, node: _Node, point: str) -> bool:
        """Crash `node` at `point` if drawn; True when it crashed."""
        if self._crash_drawn(point):
            self.crash(node.name, f"injected crash {point}", restart=node.auto_restart)
            return True
        return False
