"""The simulator's primitives for the effect plan: one node's `dtq.effectplan.EffectWorld`.

The rule: the order in which effects apply is `dtq.effectplan`'s alone, as on real processes;
this module says only how each primitive happens in the simulator (the simulated store, broker
queues, virtual timers, synchronous task runs) and where the simulator crashes a node: after a
step of the plan, or at a crash point of a task's run (`dtq.taskrun`), as `CrashPoints` draws.
A node cut from the store waits for it without blocking the simulator's one thread: the plan
stops in its persist step and runs again later, for up to `Simulation.store_wait_ms`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from dtq.actor import ActorCell, DeliveryRef, Effects, Execution, Timer
from dtq.effectplan import Plan
from dtq.envelope import Envelope, Message
from dtq.errors import StaleEpoch, StoreError, StoreUnavailable
from dtq.store import ResultItem, ResultWrite, Write
from transports.memory_tasks import TaskCrash, run_task

if TYPE_CHECKING:
    from transports.memory import Simulation, _Node


class SimEffects:
    """One node's effect primitives in the simulator; delivery handles are delivery tags."""

    __slots__ = ("inc", "node", "plan", "sim")

    def __init__(self, sim: Simulation, node: _Node) -> None:
        self.sim = sim
        self.node = node
        self.inc = node.incarnation
        self.plan: Plan[int] | None = None

    def handle(self, run: Callable[[ActorCell], Effects]) -> Effects | None:
        """Run a handler; None when it failed on the store (the node crashed, crash-only)."""
        node = self.node
        cell = node.cell
        assert cell is not None
        try:
            effects = run(cell)
        except StoreError as exc:
            node.clock = cell.clock
            self.sim._fail(node, f"store error: {exc}")
            return None
        node.clock = cell.clock
        return effects

    def apply(self, batch: Sequence[tuple[Effects, int | None]]) -> None:
        """Apply the effects of a batch of handler runs (each with its delivery tag)."""
        self.plan = Plan(self, batch)
        self.run_plan()

    def run_plan(self) -> None:
        """Run the plan from where it stopped; once it has run to its end, the node's
        writes are all in the store."""
        assert self.plan is not None
        cell = self.node.cell
        if self.plan.run() and cell is not None and self.alive():
            cell.applied()

    # the plan's primitives ----------------------------------------------------------------
    def write(self, writes: Sequence[Write], epoch: int) -> object:
        if self.sim._store_cut(self.node.name):
            raise StoreUnavailable("store unreachable (partitioned)")
        apply: Callable[..., object] = self.sim.store.apply
        accepted = apply(writes, epoch=epoch)
        self.node.blocked_since = None
        return accepted

    def put_results(self, items: Sequence[ResultItem]) -> list[ResultWrite]:
        cell = self.node.cell
        assert cell is not None
        return cell.store.put_results(items)

    def fire(self, message: Message) -> Effects | None:
        return self.handle(lambda cell: cell.fire(message, self.sim.now_ms))

    def record(self, kind: str, data: Mapping[str, Any]) -> None:
        self.sim.history.record(self.node.name, kind, self.node.clock, data)

    def fenced(self, exc: StaleEpoch) -> None:
        self.node.blocked_since = None
        self.sim._fail(self.node, str(exc))

    def store_failed(self, exc: StoreError, step: str) -> None:
        """In the persist step the node waits (it handles nothing else) and tries again, for
        up to `store_wait_ms`, then crashes; elsewhere it crashes at once, as a process does."""
        sim, node = self.sim, self.node
        if step != "persist":
            sim._fail(node, f"store error: {exc}")
            return
        if node.blocked_since is None:
            node.blocked_since = sim.now_ms
            self.record("store_wait", {"error": str(exc)})
        if sim.now_ms - node.blocked_since >= sim.store_wait_ms:
            node.blocked_since = None
            sim._fail(node, f"store error: {exc}")
            return
        sim.after(sim.store_retry_ms, sim._retry_apply, node, self.inc, self)

    def alive(self) -> bool:
        return self.node.incarnation == self.inc and self.node.alive

    def crash_after(self, step: str) -> bool:
        return self.sim._crash_point(self.node, f"after_{step}")

    def publish(self, sends: Sequence[Envelope], defers: Sequence[tuple[int, int]]) -> None:
        sim = self.sim
        for env in sends:
            sim._publish(env)
        for tag, delay_ms in defers:
            if tag in sim._inflight:  # a copy: a new message, which the broker counts anew
                copy = attrs.evolve(sim._inflight[tag], deliveries=0)
                sim.after(delay_ms, sim._enqueue, copy, True)

    def resolve(self, ref: DeliveryRef) -> int:
        return ref.token

    def ack(self, deliveries: Sequence[int]) -> None:
        for tag in deliveries:
            self.sim._ack(self.node, tag)

    def schedule(self, timer: Timer) -> None:
        self.sim.after(timer.delay_ms, self.sim._fire, self.node, self.inc, timer.id,
                       timer.message)

    def cancel(self, timer_id: int) -> None:
        self.node.cancelled_timers.add(timer_id)

    def execute(self, execution: Execution) -> None:
        sim, node = self.sim, self.node
        assert node.cell is not None
        try:
            done, elapsed_ms = run_task(sim, node.name, execution, store=node.cell.store,
                                        crash=sim._crash_drawn)
        except TaskCrash as crash:
            # The task's code stopped there; the node dies when the task got there in time.
            sim.after(crash.elapsed_ms, self._crash, f"injected crash {crash.point}")
            return
        sim.after(elapsed_ms, sim._fire, node, self.inc, 0, done)

    def _crash(self, reason: str) -> None:
        if self.alive():
            self.sim.crash(self.node.name, reason, restart=self.node.auto_restart)

    def subscribe(self, address: str) -> None:
        self.sim._subscribe(self.node, address)

    def unsubscribe(self, address: str) -> None:
        self.sim._unsubscribe(self.node, address)

    def exit(self, reason: str) -> None:
        self.sim._fail(self.node, reason)
