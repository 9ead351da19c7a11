"""The process runtime fires a timer that falls due in the middle of a batch between two of its
items, so a long batch never holds up a leader's lease renewal or a worker's heartbeat.

No broker is needed: a stub transport hands the runtime a batch of deliveries before it starts,
so the whole batch is taken at once.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence

import attrs
import pytest

from dtq.actor import Actor, Context, receive
from dtq.envelope import Codec, Envelope, Message
from dtq.runtime.node import ProcessRuntime, RuntimeOptions
from dtq.store import PutTask
from dtq.task import TaskRecord, TaskSpec
from dtq.transport import Delivery, Outgoing
from transports.memory_store import SimStore

ITEMS = 20
HANDLER_S = 0.01
TIMER_MS = 30


@attrs.frozen(kw_only=True)
class Slow(Message):
    """A message whose handler takes HANDLER_S of CPU."""

    n: int


@attrs.frozen(kw_only=True)
class Due(Message):
    """Timer: note how many items were handled when it fired."""


class _SlowHandler(Actor):
    def __init__(self) -> None:
        super().__init__("slow")
        self.handled = 0
        self.fired_after: int | None = None
        self.persisted_then: int | None = None
        """How many of the items handled before the timer had their writes in the store."""

    def on_start(self, ctx: Context) -> None:
        ctx.schedule(TIMER_MS, Due())

    @receive(Slow)
    def on_slow(self, msg: Slow, ctx: Context) -> None:
        deadline = time.monotonic() + HANDLER_S
        while time.monotonic() < deadline:  # the handler's own work, not a wait for anything
            pass
        self.handled += 1
        ctx.write(PutTask(record=TaskRecord(spec=TaskSpec(id=f"t{msg.n:03d}", type="echo"))))
        if self.handled == ITEMS:
            ctx.exit("the batch is done")

    @receive(Due)
    def on_due(self, msg: Due, ctx: Context) -> None:
        self.fired_after = self.handled
        self.persisted_then = len(ctx.store.scan_tasks())


class _StubTransport:
    """Takes publishes, acks and rejects, and confirms every publish at once."""

    namespace = "test"
    on_delivery: Callable[[Delivery], None] | None = None

    def start(self, timeout_s: float = 10.0) -> None: ...

    def close(self) -> None: ...

    def consume(self, address: str, prefetch: int = 0) -> None: ...

    def cancel(self, address: str, *, wait_s: float = 0.0) -> None: ...

    def publish(self, messages: Sequence[Outgoing],
                then: Callable[[], None] | None = None) -> None:
        if then is not None:
            then()

    def ack(self, delivery: Delivery, *, multiple: bool = False) -> None: ...

    def reject(self, delivery: Delivery, *, requeue: bool) -> None: ...


def _run(monkeypatch: pytest.MonkeyPatch | None = None) -> _SlowHandler:
    actor = _SlowHandler()
    runtime = ProcessRuntime(actor, transport=_StubTransport(),  # type: ignore[arg-type]
                             store=SimStore(), options=RuntimeOptions())
    if monkeypatch is not None:  # the batch handled whole, timers only after it
        monkeypatch.setattr(runtime, "_handle_batch",
                            lambda batch: runtime._apply([runtime._handle(i) for i in batch]))
    codec = Codec()
    for n in range(ITEMS):
        body = codec.encode(Envelope(id=f"m{n}", sender="test", target="work", body=Slow(n=n)))
        runtime._on_delivery(Delivery(generation=1, tag=n + 1, queue="test.work", body=body,
                                      redelivered=False))
    runtime.run()
    return actor


def test_a_timer_due_in_the_middle_of_a_batch_fires_there() -> None:
    actor = _run()
    assert actor.handled == ITEMS
    assert actor.fired_after is not None and actor.fired_after < ITEMS
    assert actor.persisted_then == actor.fired_after  # what came before it is in the store


def test_without_it_the_timer_waits_for_the_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    actor = _run(monkeypatch)
    assert actor.handled == ITEMS and actor.fired_after is None  # the node stopped first


def test_the_runtime_puts_back_the_signal_handlers_it_replaced() -> None:
    """A process that runs a node and then forks (a test worker, an explore pool) must not
    leave its children a SIGTERM handler that only takes a note: they would never stop."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    _run()
    assert {sig: signal.getsignal(sig) for sig in before} == before
