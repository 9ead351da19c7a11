"""The effect-application plan: the one order in which every runtime applies handlers' effects.

The rule: handlers record effects; this plan applies those of one batch of handler runs, for the
simulator and for the process runtime alike, in this order:

1. `persist`: the batch's fenced writes, one store call per run of writes with the same epoch.
   A refused write stops the plan: nothing of the batch is sent or acked.
2. `results`: the batch's result writes, in one round trip. Each answer goes back to its actor
   as a message whose handler runs now; the effects of those handlers join the batch, and steps
   1 and 2 repeat until no answer is pending.
3. `send`: every send of the batch, and a copy of each deferred delivery.
4. `ack`: the batch's deliveries (none when a handler of the batch exits: its input was not
   handled and must come back; a held delivery is acked later) and the deliveries handlers
   acked explicitly. A runtime whose broker confirms publishes asynchronously acks once the
   sends are confirmed.
5. `local`: cancelled and new timers, task executions, subscriptions, an exit.

A runtime supplies only primitives (`EffectWorld`): how to write to the store, publish, ack,
schedule. Crash points are "stop after step k": after each step that did something (wrote,
stored a result, sent, acked) the plan asks the world's `crash_after(step)`, and stops when the
node did not survive it (the simulator draws its `CrashPoints` there; the process runtime
never crashes there). The plan may also stop in step 1
when the store is unreachable; `run()` again resumes it where it stopped (the simulator waits
for the store this way, without blocking its one thread). Pure: no I/O, time or randomness.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

from dtq.actor import DeliveryRef, Effects, Execution, Timer
from dtq.envelope import Envelope, Message
from dtq.errors import StaleEpoch, StoreError
from dtq.recovery import StoreLost
from dtq.store import ResultItem, ResultWrite, StoreDataLost, Write

STEPS = ("persist", "results", "send", "ack", "local")
"""The steps of the plan, in order; `crash_after` may be asked after each of the first four."""
CRASH_AFTER = tuple(f"after_{step}" for step in STEPS[:4])
"""The names of the plan's crash points."""

D = TypeVar("D")
"""A runtime's delivery handle (a broker delivery, a simulator's delivery tag)."""


class EffectWorld(Protocol[D]):
    """The primitives a runtime gives the plan, for one node."""

    def write(self, writes: Sequence[Write], epoch: int) -> object:
        """Apply one batch of fenced writes (`Store.apply`), raising `StaleEpoch` or
        `StoreError`; the answer is the store's epoch when it accepted them (if it says)."""
        ...

    def put_results(self, items: Sequence[ResultItem]) -> list[ResultWrite]: ...

    def fire(self, message: Message) -> Effects | None:
        """Run the actor's handler of a local message; None if it failed (the world ends the
        node as its runtime does)."""
        ...

    def record(self, kind: str, data: Mapping[str, Any]) -> None:
        """Append an event of this node to the history."""
        ...

    def fenced(self, exc: StaleEpoch) -> None:
        """A fenced write was refused: a newer leader exists; end the node."""
        ...

    def store_failed(self, exc: StoreError, step: str) -> None:
        """The store failed in `step`: end the node, or (in `persist` only) call `run()` again
        later to resume."""
        ...

    def alive(self) -> bool:
        """The node is still the one this plan applies effects for."""
        ...

    def crash_after(self, step: str) -> bool:
        """A crash point: True when the node crashed here (the plan stops)."""
        ...

    def publish(self, sends: Sequence[Envelope], defers: Sequence[tuple[D, int]]) -> None:
        """Send these envelopes; put each deferred delivery back in its queue after its delay
        (ms)."""
        ...

    def resolve(self, ref: DeliveryRef) -> D | None:
        """The held delivery `ref` names (None: already gone)."""
        ...

    def ack(self, deliveries: Sequence[D]) -> None:
        """Acknowledge these deliveries (once the sends before them are confirmed)."""
        ...

    def schedule(self, timer: Timer) -> None: ...

    def cancel(self, timer_id: int) -> None: ...

    def execute(self, execution: Execution) -> None: ...

    def subscribe(self, address: str) -> None: ...

    def unsubscribe(self, address: str) -> None: ...

    def exit(self, reason: str) -> None:
        """Crash-only exit asked by the actor: end the node (its unacked work returns)."""
        ...


class Plan(Generic[D]):
    """The effects of one batch of handler runs, applied step by step through a world."""

    __slots__ = ("_groups", "_pending", "done", "world")

    def __init__(self, world: EffectWorld[D], batch: Sequence[tuple[Effects, D | None]]) -> None:
        self.world = world
        self.done: list[tuple[Effects, D | None]] = list(batch)
        """Every handler run of the batch, with its delivery (None: a timer, hook or answer)."""
        self._pending = [fx for fx, _ in self.done]
        """Runs whose writes and results are not applied yet."""
        self._groups: list[tuple[int, list[Write]]] | None = None
        """Write batches of the pending runs not applied yet (None: not yet split)."""

    def run(self) -> bool:
        """Apply the plan from where it stopped; True when every step ran."""
        w = self.world
        while self._pending:
            wrote = any(fx.writes for fx in self._pending)
            if not self._persist() or (wrote and w.crash_after("persist")):
                return False
            stored = any(fx.results for fx in self._pending)
            answered = self._results()
            if answered is None or (stored and w.crash_after("results")):
                return False
            self._pending = answered
            self.done += [(fx, None) for fx in answered]
        exiting = any(fx.exit is not None for fx, _ in self.done)
        defers = [] if exiting else [(d, fx.defer_ms) for fx, d in self.done
                                     if d is not None and fx.defer_ms is not None]
        sends = [env for fx, _ in self.done for env in fx.sends]
        w.publish(sends, defers)
        if (sends or defers) and w.crash_after("send"):
            return False
        acks = [] if exiting else [d for fx, d in self.done if d is not None and not fx.hold]
        acks += [held for fx, _ in self.done for ref in fx.acks
                 if (held := w.resolve(ref)) is not None]
        w.ack(acks)
        if acks and w.crash_after("ack"):
            return False
        return all(self._local(fx) for fx, _ in self.done)  # stops at a node's end

    def _persist(self) -> bool:
        w = self.world
        if self._groups is None:
            writes = [(fx.epoch, wr) for fx in self._pending for wr in fx.writes]
            self._groups = [(epoch, [wr for _, wr in group])
                            for epoch, group in itertools.groupby(writes, key=lambda x: x[0])]
        while self._groups:
            epoch, batch = self._groups[0]
            try:
                accepted = w.write(batch, epoch)
            except StoreDataLost as exc:
                if not self._reseeded(exc):
                    return False
                continue
            except StaleEpoch as exc:
                w.record("stale_write_refused", {"epoch": exc.attempted, "current": exc.current})
                w.fenced(exc)
                return False
            except StoreError as exc:
                w.store_failed(exc, "persist")
                return False
            del self._groups[0]
            data: dict[str, Any] = {"epoch": epoch, "writes": len(batch)}
            if isinstance(accepted, int) and not isinstance(accepted, bool):
                data["current"] = accepted  # the epoch the store was at when it accepted them
            w.record("persist", data)
        self._groups = None
        return True

    def _reseeded(self, exc: StoreDataLost) -> bool:
        """The store lost its data (`dtq.recovery`): the actor's `StoreLost` handler may re-seed
        it. Its writes, at a new epoch, stand for every write of the batch not applied yet and
        are applied in their place; the batch then goes on as persisted. If it did not re-seed,
        the node is fenced out as for any refused write."""
        w = self.world
        unapplied = tuple(wr for _, group in self._groups or () for wr in group)
        fx = w.fire(StoreLost(epoch=exc.attempted, unapplied=unapplied))
        if not w.alive():
            return False
        if fx is None or not fx.writes or fx.epoch == exc.attempted:
            w.record("stale_write_refused", {"epoch": exc.attempted, "current": exc.current})
            w.fenced(exc)
            return False
        self.done.append((fx, None))
        self._groups = [(fx.epoch, list(fx.writes))]
        return True

    def _results(self) -> list[Effects] | None:
        """Write the pending runs' results; run the handlers of the answers. The answers'
        effects, or None when the node did not survive."""
        w = self.world
        pending = [p for fx in self._pending for p in fx.results]
        if not pending:
            return []
        try:
            answers = w.put_results([p.item for p in pending])
        except StoreError as exc:
            w.store_failed(exc, "results")
            return None
        answered: list[Effects] = []
        for p, answer in zip(pending, answers, strict=True):
            fx = w.fire(p.then(answer))
            if not w.alive():
                return None
            if fx is not None:
                answered.append(fx)
        return answered

    def _local(self, fx: Effects) -> bool:
        w = self.world
        for timer_id in fx.cancelled_timers:
            w.cancel(timer_id)
        for timer in fx.timers:
            w.schedule(timer)
        for ex in fx.executions:
            w.execute(ex)
            if not w.alive():
                return False
        for address in fx.subscribe:
            w.subscribe(address)
        for address in fx.unsubscribe:
            w.unsubscribe(address)
        if fx.exit is not None:
            w.exit(fx.exit)
            return False
        return True
