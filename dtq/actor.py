"""Actors, their context, and the cell that runs one actor for a runtime.

The rule: actor code is pure. A handler gets a message and a `Context`; the context is its only
door to the world. Handlers *record* effects (fenced store writes, result writes, sends, timers,
acks, task executions) and every runtime applies them by one plan (`dtq.effectplan`): persist,
then results, then send, then ack. A result write answers: the runtime writes every result of a
batch in one round trip and hands each answer back to the actor as a message, whose handler runs
before the batch's sends leave. Task code runs through `dtq.taskrun`.

`ActorCell` is shared by every runtime: it owns an actor's vector clock and epoch, chooses the
handler by message class and collects the effects. The simulator and the process runtime only
decide *when* things happen and *how* effects reach the world.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import attrs
import structlog

from dtq.clock import VectorClock
from dtq.envelope import Envelope, Message
from dtq.store import PutTask, ResultItem, ResultWrite, Store, Write
from dtq.task import TaskRecord, TaskResult

if TYPE_CHECKING:
    from dtq.tasktypes import TaskActor, TaskInput

M = TypeVar("M", bound=Message)
Handler = Callable[[Any, Any, "Context"], None]
Recorder = Callable[[str, str, VectorClock, Mapping[str, Any]], None]
"""record(actor, kind, clock, data): append one event to the history."""


class Rng(Protocol):
    """The part of `random.Random` actors may use (seeded per actor by the runtime)."""

    def random(self) -> float: ...
    def randint(self, a: int, b: int) -> int: ...
    def uniform(self, a: float, b: float) -> float: ...
    def choice(self, seq: Sequence[Any]) -> Any: ...
    def getrandbits(self, k: int) -> int: ...


def receive(*types: type[Message]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Mark a method as the handler of the given message classes: `@receive(Submit)`."""

    def mark(fn: Callable[..., None]) -> Callable[..., None]:
        fn._dtq_receives = types  # type: ignore[attr-defined]
        return fn

    return mark


class Actor:
    """Base class of every actor. Subclasses define handlers with `@receive(MessageClass)`.

    Lifecycle hooks: `on_start(ctx)` runs when the actor (re)starts, with empty volatile state;
    `on_stop(ctx)` runs on a graceful stop (never on a crash).
    """

    _handlers: ClassVar[dict[type[Message], str]] = {}
    subscriptions: ClassVar[tuple[str, ...]] = ()
    """Shared queues the actor consumes from the start (its own mailbox is always consumed)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[type[Message], str] = {}
        for klass in reversed(cls.__mro__):
            for attr, fn in vars(klass).items():
                for t in getattr(fn, "_dtq_receives", ()):
                    handlers[t] = attr
        cls._handlers = handlers

    def __init__(self, name: str) -> None:
        self.name = name

    def on_start(self, ctx: Context) -> None:
        """Called when the actor starts or restarts."""

    def on_stop(self, ctx: Context) -> None:
        """Called on a graceful stop."""

    def handler_for(self, message: Message) -> Callable[[Message, Context], None] | None:
        for klass in type(message).__mro__:
            attr = self._handlers.get(klass)
            if attr is not None:
                fn: Callable[[Message, Context], None] = getattr(self, attr)
                return fn
        return None


@attrs.frozen
class DeliveryRef:
    """An unacknowledged delivery an actor holds on to (`ctx.hold()`), to ack later."""

    token: int


@attrs.frozen(kw_only=True)
class Timer:
    id: int
    delay_ms: int
    message: Message


@attrs.frozen(kw_only=True)
class Execution:
    """Run a task type's code off the handler loop; an `Executed` message comes back."""

    ref: str
    task_actor: TaskActor
    input: TaskInput


@attrs.frozen(kw_only=True)
class PendingResult:
    """A first-writer-wins result write; `then(answer)` is the message the actor gets back."""

    item: ResultItem
    then: Callable[[ResultWrite], Message]


class Effects:
    """What one handler run asks the runtime to do, applied as persist, send, ack."""

    __slots__ = ("acks", "cancelled_timers", "defer_ms", "epoch", "executions", "exit", "hold",
                 "results", "sends", "subscribe", "timers", "unsubscribe", "writes")

    def __init__(self, epoch: int = 0) -> None:
        self.writes: list[Write] = []
        self.results: list[PendingResult] = []
        self.epoch = epoch
        self.sends: list[Envelope] = []
        self.timers: list[Timer] = []
        self.cancelled_timers: list[int] = []
        self.hold = False
        self.acks: list[DeliveryRef] = []
        self.executions: list[Execution] = []
        self.subscribe: list[str] = []
        self.unsubscribe: list[str] = []
        self.exit: str | None = None
        self.defer_ms: int | None = None


class Context:
    """A handler's only door to the world. Created by `ActorCell` for one handler run."""

    __slots__ = ("_cell", "_ref", "effects", "envelope", "now_ms")

    def __init__(
        self, cell: ActorCell, now_ms: int, envelope: Envelope | None, ref: DeliveryRef | None,
    ) -> None:
        self._cell = cell
        self._ref = ref
        self.now_ms = now_ms
        self.envelope = envelope
        self.effects = Effects(epoch=cell.epoch)

    # identity and environment -----------------------------------------------------------
    @property
    def name(self) -> str:
        return self._cell.name

    @property
    def wall_ms(self) -> int:
        """Wall-clock milliseconds since the epoch (virtual in the simulator): for display and
        for records other processes read; never for timeouts (use `now_ms`)."""
        return self._cell.wall_ms()

    @property
    def rng(self) -> Rng:
        return self._cell.rng

    @property
    def store(self) -> Store:
        """The store as it answers now: it does not hold the fenced writes of this node that
        wait to be applied (`read_task` sees those)."""
        return self._cell.store

    def read_task(self, task_id: str) -> TaskRecord | None:
        """A task's record as this node last wrote it, or as the store holds it. A runtime
        applies the writes of a batch of handler runs after the last of them (the process
        runtime handles what its inbox holds as one batch), so a handler that reads a record
        an earlier handler of its batch wrote must find it here, not in the store."""
        rec = self._cell.unapplied.get(task_id)
        return rec if rec is not None else self._cell.store.get_task(task_id)

    @property
    def clock(self) -> VectorClock:
        return self._cell.clock

    def merge_clock(self, entries: Mapping[str, int]) -> None:
        """Join a clock learnt from the store (a stored result's, a record's) into this
        actor's: what it does next happens after what that clock saw."""
        cell = self._cell
        cell.clock = cell.clock.merge(VectorClock.of(entries))

    @property
    def epoch(self) -> int:
        return self._cell.epoch

    def set_epoch(self, epoch: int) -> None:
        """Adopt a fencing epoch: later writes are fenced by it and sends carry it."""
        self._cell.epoch = epoch
        self.effects.epoch = epoch
        self._cell.log = self._cell.log.bind(epoch=epoch)

    @property
    def log(self) -> Any:
        if self.envelope is None:
            return self._cell.log
        return self._cell.log.bind(msg=self.envelope.id, kind=self.envelope.kind)

    def new_id(self) -> str:
        return self._cell.new_id()

    # effects ------------------------------------------------------------------------------
    def send(self, target: str, message: Message, *, attempt: int = 0) -> Envelope:
        """Send `message` to a mailbox or shared queue; it leaves after the writes persist."""
        cell = self._cell
        cell.clock = cell.clock.tick(cell.name)
        env = Envelope(id=cell.new_id(), sender=cell.name, target=target, body=message,
                       clock=cell.clock, epoch=cell.epoch, attempt=attempt)
        self.effects.sends.append(env)
        if cell.trace:
            cell.record(cell.name, "send", cell.clock,
                        {"msg": env.id, "to": target, "kind": env.kind})
        return env

    def write(self, write: Write) -> None:
        """Record a fenced store write, applied (with the others of this run) before any send."""
        self.effects.writes.append(write)
        if isinstance(write, PutTask):
            self._cell.unapplied[write.record.id] = write.record

    def store_result(
        self, result: TaskResult, *, then: Callable[[ResultWrite], Message],
        ttl_ms: int | None = None, notify: str | None = None,
    ) -> None:
        """Store a task's result, first writer wins (`Store.put_result`). The answer comes
        back as the message `then(answer)`, handled before this run's sends leave."""
        item = ResultItem(result=result, ttl_ms=ttl_ms, notify=notify)
        self.effects.results.append(PendingResult(item=item, then=then))

    def schedule(self, delay_ms: int, message: Message) -> int:
        """Deliver `message` back to this actor after `delay_ms`; returns a timer id."""
        tid = self._cell.next_timer()
        self.effects.timers.append(Timer(id=tid, delay_ms=max(0, int(delay_ms)), message=message))
        return tid

    def cancel(self, timer_id: int) -> None:
        self.effects.cancelled_timers.append(timer_id)

    def hold(self) -> DeliveryRef:
        """Keep the current delivery unacknowledged; ack it later with `ctx.ack(ref)`."""
        if self._ref is None:
            raise RuntimeError("only a delivered message can be held, not a timer or hook")
        self.effects.hold = True
        return self._ref

    def ack(self, ref: DeliveryRef) -> None:
        self.effects.acks.append(ref)

    def defer(self, delay_ms: int = 0) -> None:
        """Put the current delivery back at the end of its queue (after about `delay_ms`, where
        the transport can wait) instead of acking it: it will be handled again later."""
        if self._ref is None:
            raise RuntimeError("only a delivered message can be deferred")
        self.effects.defer_ms = max(0, int(delay_ms))

    def execute(self, ref: str, task_actor: TaskActor, task_input: TaskInput) -> None:
        """Run a task off the handler loop; an `Executed(ref=...)` message comes back."""
        self.effects.executions.append(Execution(ref=ref, task_actor=task_actor, input=task_input))

    def subscribe(self, queue: str) -> None:
        self.effects.subscribe.append(queue)

    def unsubscribe(self, queue: str) -> None:
        self.effects.unsubscribe.append(queue)

    def exit(self, reason: str) -> None:
        """Crash-only exit: after this run, the runtime stops the actor (unacked work returns)."""
        self.effects.exit = reason

    def record(self, kind: str, **data: Any) -> None:
        """Append an event to the history, stamped with this actor's current clock."""
        cell = self._cell
        cell.clock = cell.clock.tick(cell.name)
        cell.record(cell.name, kind, cell.clock, data)


class ActorCell:
    """Runs one actor incarnation for a runtime: clocks, handler choice, effect collection."""

    def __init__(
        self, actor: Actor, *, store: Store, rng: Rng, record: Recorder,
        new_id: Callable[[], str], clock: VectorClock | None = None, log: Any = None,
        trace: bool = False, wall_ms: Callable[[], int] | None = None,
    ) -> None:
        """With `trace`, every send and receive is recorded too (for space-time diagrams)."""
        self.wall_ms: Callable[[], int] = wall_ms or (lambda: 0)
        self.actor = actor
        self.name = actor.name
        self.store = store
        self.rng = rng
        self.record = record
        self.new_id = new_id
        self.clock = clock or VectorClock()
        self.epoch = 0
        self.log: Any = log or structlog.get_logger("dtq").bind(actor=actor.name)
        self._timer_seq = 0
        self.trace = trace
        self.unapplied: dict[str, TaskRecord] = {}
        """Records this actor wrote that its runtime has not applied yet (`Context.read_task`);
        the runtime calls `applied()` once a batch's writes are in the store."""

    def applied(self) -> None:
        """Every fenced write recorded so far is in the store."""
        self.unapplied.clear()

    def next_timer(self) -> int:
        self._timer_seq += 1
        return self._timer_seq

    def start(self, now_ms: int) -> Effects:
        ctx = Context(self, now_ms, None, None)
        ctx.effects.subscribe.extend(self.actor.subscriptions)
        self.actor.on_start(ctx)
        return ctx.effects

    def stop(self, now_ms: int) -> Effects:
        ctx = Context(self, now_ms, None, None)
        self.actor.on_stop(ctx)
        return ctx.effects

    def deliver(self, env: Envelope, ref: DeliveryRef | None, now_ms: int) -> Effects:
        """Handle a delivered envelope: merge its clock, tick, run the handler."""
        self.clock = self.clock.merge(env.clock).tick(self.name)
        if self.trace:
            self.record(self.name, "recv", self.clock,
                        {"msg": env.id, "from": env.sender, "kind": env.kind})
        ctx = Context(self, now_ms, env, ref)
        self._dispatch(env.body, ctx)
        return ctx.effects

    def fire(self, message: Message, now_ms: int) -> Effects:
        """Handle a local event (a timer, an execution result): tick, run the handler."""
        self.clock = self.clock.tick(self.name)
        ctx = Context(self, now_ms, None, None)
        self._dispatch(message, ctx)
        return ctx.effects

    def _dispatch(self, message: Message, ctx: Context) -> None:
        handler = self.actor.handler_for(message)
        if handler is None:
            ctx.log.warning("unhandled message", kind=type(message).__name__)
            return
        handler(message, ctx)
