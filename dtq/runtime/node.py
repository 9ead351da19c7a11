"""Drives one actor in one OS process against RabbitMQ and a store.

The actor's handlers run on this process's main thread, one batch of deliveries at a time. The
effects of a batch are applied by the one plan of `dtq.effectplan`, as in the simulator: persist
(the fenced writes of the batch, one store call per epoch), results, send (published with
asynchronous confirms), ack (only when every send of the batch is confirmed); this module gives
it only primitives (`_ProcessEffects`). Task code runs through `dtq.taskrun` in a thread pool,
off the handler loop, so timers and heartbeats keep running during a long task. Timers are a
heap on the main thread.

Crash-only: a refused fenced write, an unreachable store or an actor's `ctx.exit` ends the
process with a non-zero status; its unacked deliveries go back to their queues and the
supervisor starts it again. SIGTERM and SIGINT stop consuming, let running tasks finish (up to
a grace period), and exit cleanly.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import heapq
import itertools
import os
import queue
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import attrs
import structlog

from dtq import stagemarks
from dtq.actor import Actor, ActorCell, DeliveryRef, Effects, Execution, Timer
from dtq.clock import VectorClock
from dtq.effectplan import CRASH_AFTER, Plan
from dtq.envelope import (
    COORDINATOR_QUEUE,
    WORK_QUEUE,
    Codec,
    Completed,
    Dispatch,
    Envelope,
    Message,
)
from dtq.errors import DecodeError, StaleEpoch, StoreError, StoreUnavailable
from dtq.poison import DeadLetter, decode_delivery
from dtq.runtime.tasks import run_task
from dtq.store import ResultItem, ResultWrite, Store, Write
from dtq.taskrun import CRASH_POINTS, CrashHook, no_crash
from dtq.transport import (
    BUNDLE_HEADER,
    FAILURES_HEADER,
    Delivery,
    Outgoing,
    Transport,
    queue_name,
)

T = TypeVar("T")

EXIT_OK, EXIT_FENCED, EXIT_STORE, EXIT_ACTOR = 0, 3, 4, 5
Recorder = Callable[[str, str, VectorClock, Mapping[str, Any]], None]


@attrs.define(kw_only=True)
class RuntimeOptions:
    prefetch: Mapping[str, int] = attrs.field(factory=dict)
    """Prefetch per address (default: the concurrency on the work queue, 2048 on the leader's
    queue, above the 1024 submissions its causal buffer may hold back, 256 elsewhere). A work
    queue prefetch above the concurrency keeps the next dispatches at hand (they wait in the
    worker, not started, reported in its heartbeats so that the leader hands them on if it
    goes silent); but one the broker hands a frozen worker after that waits until the broker
    drops its connection (about three heartbeat timeouts: `transports.rabbitmq.HEARTBEAT_S`)."""
    concurrency: int = 1
    batch_max: int = 256
    poison_limit: int = 3
    grace_s: float = 10.0
    io_root: str | None = None
    """The io task's root (None: `dtq.runtime.sandbox.resolve_io_root()`, never the working
    directory)."""
    trace: bool = False
    store_wait_s: float = 10.0
    crash: CrashHook = no_crash
    """Called at every crash point (after each step of the effect plan, `after_persist`...,
    and at `dtq.taskrun.CRASH_POINTS`); production's goes on. `dtq.runtime.process` installs
    one that kills the process at a point named in `DTQ_CRASH_AT`, for tests. Here a batch's
    sends go to the transport with its acks, in the ack step: a kill `after_send` comes before
    they leave."""


def kill_at(spec: str) -> CrashHook:
    """The crash hook of a process started with `DTQ_CRASH_AT=spec` (for tests; "" in
    production: `no_crash`): SIGKILL this process at the named crash points, `point[,point...]`
    (see `RuntimeOptions.crash`). With `@flag-file` after them, only the first process of a run
    that gets there dies (it creates the file just before), so a restarted node goes on."""
    points, _, flag = spec.partition("@")
    names = {p.strip() for p in points.split(",") if p.strip()}
    if not names:
        return no_crash
    unknown = names - {*CRASH_AFTER, *CRASH_POINTS}
    if unknown:
        raise ValueError(f"DTQ_CRASH_AT names no crash point: {', '.join(sorted(unknown))}")

    def hook(point: str) -> None:
        if point not in names:
            return
        if flag:
            try:
                os.close(os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)

    return hook


class ProcessRuntime:
    """One actor, one process: the handler loop, effect application, timers, task threads."""

    def __init__(
        self, actor: Actor, *, transport: Transport, store: Store,
        record: Recorder | None = None, options: RuntimeOptions | None = None,
    ) -> None:
        self.actor = actor
        self.name = actor.name
        self.transport = transport
        self.store = store
        self.options = options or RuntimeOptions()
        self.codec = Codec()
        self.inbox: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self.urgent: collections.deque[_Item] = collections.deque()
        """The actor's own mailbox (heartbeats, notices) and finished tasks: handled before the
        backlog of a busy shared queue, so a flood of work never delays a heartbeat."""
        self._mailbox = queue_name(transport.namespace, actor.name)
        transport.on_delivery = self._on_delivery
        if hasattr(transport, "on_refused"):
            transport.on_refused = self._on_refused
        self.log = structlog.get_logger("dtq.runtime").bind(actor=self.name)
        self.record: Recorder = record or (lambda *_: None)
        boot = f"{random.getrandbits(32):08x}"
        ids = itertools.count(1)
        self.cell = ActorCell(
            actor, store=store, rng=random.Random(), record=self.record,
            new_id=lambda: f"{self.name}.{boot}.{next(ids)}", log=self.log,
            # A restarted process's own entry starts above anything its last life reached.
            clock=VectorClock.of({self.name: time.time_ns() // 1000}), trace=self.options.trace,
            wall_ms=lambda: time.time_ns() // 1_000_000)
        self._timers: list[tuple[float, int, int, Message]] = []
        self._cancelled: set[int] = set()
        self._deliveries: dict[int, Delivery] = {}
        self._tokens = itertools.count(1)
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.options.concurrency),
                                        thread_name_prefix=f"task-{self.name}")
        self._running = 0
        self._draining = False
        self._signals: list[int] = []
        """Stop signals received, for the loop to act on (a handler only appends: it runs in
        the main thread, which may hold a lock the handler's work would take again)."""
        self._unsettled = 0
        """Batches published whose acks wait for the broker's confirms (a draining process
        waits for them too: stopping before would hand their deliveries out again)."""
        self._settle_lock = threading.Lock()
        self._exit: int | None = None
        self.subscriptions: list[str] = []

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; return the process exit status. The stop-signal handlers it
        installs are put back as they were when it returns."""
        previous = self._install_signals()
        try:
            return self._serve()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _serve(self) -> int:
        self.transport.start()
        self._subscribe(self.name)
        self._apply([(self._guard(lambda: self.cell.start(self._now())), None)])
        drain_deadline = None
        while self._exit is None:
            self._take_signals()
            if self._exit is not None:
                break
            if self._draining:
                drain_deadline = drain_deadline or time.monotonic() + self.options.grace_s
                if (self._running == 0 and not self._unsettled) \
                        or time.monotonic() > drain_deadline:
                    break
            self._handle_batch(self._take(self._timeout()))
            self._fire_due()
        return self._shutdown()

    def _now(self) -> int:
        return int(time.monotonic() * 1000)

    def _timeout(self) -> float:
        if not self._timers:
            return 0.5
        return max(0.0, min(0.5, self._timers[0][0] - time.monotonic()))

    def _on_delivery(self, d: Delivery) -> None:
        self._enqueue(d, urgent=d.queue == self._mailbox)

    def _on_refused(self, out: Outgoing, reason: str) -> None:
        """The transport could not publish a message (it went to the dead queue): record it, and
        fail the attempt of each dispatch in it, so that its task ends saying why rather than
        waiting for a dispatch that never comes. Any thread."""
        self.record(self.name, "dead_lettered", VectorClock(), {"reason": reason})
        parts = out.body.split(b"\n") if BUNDLE_HEADER in (out.headers or {}) else [out.body]
        for raw in parts:
            with contextlib.suppress(DecodeError):
                body = self.codec.decode(raw).body
                if isinstance(body, Dispatch):
                    self._enqueue(_Local(message=Completed(
                        task_id=body.spec.id, attempt=body.attempt, worker=self.name, ok=False,
                        error=f"its dispatch was refused: {reason}", token=body.token)),
                        urgent=True)

    def _enqueue(self, payload: Any, *, urgent: bool) -> None:
        item = _Item(payload)
        if urgent:
            self.urgent.append(item)
        self.inbox.put(item)

    def _take(self, timeout: float) -> list[Any]:
        if self.urgent:
            return self._take_urgent()
        return [item.claim() for item in self._take_inbox(timeout) if not item.taken]

    def _take_urgent(self) -> list[Any]:
        batch: list[Any] = []
        while self.urgent and len(batch) < self.options.batch_max:
            item = self.urgent.popleft()
            if not item.taken:
                batch.append(item.claim())
        return batch

    def _take_inbox(self, timeout: float) -> list[_Item]:
        try:
            batch = [self.inbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(batch) < self.options.batch_max:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _handle(self, item: Any) -> tuple[Effects | None, Delivery | None]:
        if isinstance(item, Delivery):
            return self._handle_delivery(item), item
        if isinstance(item, _Local):
            if item.execution:
                self._running -= 1
            return self._guard(lambda: self.cell.fire(item.message, self._now())), None
        return None, None

    def _handle_delivery(self, d: Delivery) -> Effects | None:
        env = decode_delivery(self.codec, d.body, redelivered=d.redelivered,
                              deliveries=d.deliveries)
        if isinstance(env, DeadLetter):
            self.log.error("dead-lettering an undecodable message", queue=d.queue,
                           error=env.reason, size=env.size)
            self.record(self.name, "dead_lettered", self.cell.clock, env.record)
            self.transport.reject(d, requeue=False)
            return None
        token = next(self._tokens)
        self._deliveries[token] = d
        try:
            fx = self.cell.deliver(env, DeliveryRef(token), self._now())
        except StoreError as exc:
            self.log.error("store failed; exiting", error=str(exc))
            self._exit = EXIT_STORE
            return None
        except Exception as exc:
            self._deliveries.pop(token, None)
            self._poison(d, exc)
            return None
        if not fx.hold:
            del self._deliveries[token]
        return fx

    def _guard(self, fn: Callable[[], Effects]) -> Effects | None:
        try:
            return fn()
        except StoreError as exc:
            self.log.error("store failed; exiting", error=str(exc))
            self._exit = EXIT_STORE
        except Exception:
            self.log.exception("actor hook or timer failed; exiting")
            self._exit = EXIT_ACTOR
        return None

    def _poison(self, d: Delivery, exc: Exception) -> None:
        """A handler raised: retry the message a few times, then dead-letter it."""
        failures = int(d.headers.get(FAILURES_HEADER, 0)) + 1
        self.log.error("handler failed", queue=d.queue, failures=failures, error=repr(exc),
                       exc_info=exc)
        if failures >= self.options.poison_limit:
            self.record(self.name, "dead_lettered", self.cell.clock, {
                "reason": f"its handler failed {failures} times: {exc!r}"[:200],
                "size": len(d.body)})
            self.transport.reject(d, requeue=False)
            return
        copy = Outgoing(queue=d.queue, body=d.body, priority=d.priority,
                        headers={**d.headers, FAILURES_HEADER: failures})
        self._publish_then([copy], [d])

    def _publish_then(self, outgoing: list[Outgoing], acks: list[Delivery]) -> None:
        """Publish, and ack `acks` once the broker confirmed every message; counted as
        unsettled until then."""
        with self._settle_lock:
            self._unsettled += 1

        def settled() -> None:
            self._ack_all(acks)
            with self._settle_lock:
                self._unsettled -= 1
            if self._draining:
                self._enqueue(None, urgent=False)  # wake the loop: it may stop now

        self.transport.publish(outgoing, then=settled)

    # --- applying effects -------------------------------------------------------------------

    def _apply(self, results: list[tuple[Effects | None, Delivery | None]]) -> None:
        """Apply a batch's effects by the one plan (`dtq.effectplan`)."""
        done = [(fx, d) for fx, d in results if fx is not None]
        if done and self._exit is None and Plan(_ProcessEffects(self), done).run():
            self.cell.applied()

    def _store_waiting(self, write: Callable[[], T]) -> T:
        """Make a store write (the fenced apply, result writes: idempotent both); while the
        store is unavailable (unreachable, failing over, short of the replicas a write must
        reach), wait and try again, handling nothing else, for up to `store_wait_s`. A leader
        that waited past its lease finds its writes refused (StaleEpoch) once the store
        answers again. The store's answer."""
        deadline = time.monotonic() + self.options.store_wait_s
        delay = 0.05
        while True:
            try:
                return write()
            except StoreUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                self.log.warning("store unreachable; waiting to persist", retry_in_s=delay)
                time.sleep(delay)  # backing off from an unreachable store, not synchronising
                delay = min(delay * 2, 1.0)

    def _outgoing(self, env: Any) -> Outgoing:
        prio = env.body.spec.priority if hasattr(env.body, "spec") else 0
        return Outgoing(queue=queue_name(self.transport.namespace, env.target),
                        body=self.codec.encode(env), priority=prio, message_id=env.id)

    def _ack_all(self, deliveries: list[Delivery]) -> None:
        """Ack a batch once its publishes are confirmed. Each delivery on its own: a cumulative
        ack could cover one still waiting in the inbox behind the mailbox lane."""
        for d in deliveries:
            self.transport.ack(d)

    def _subscribe(self, address: str) -> None:
        if address not in self.subscriptions:
            self.subscriptions.append(address)
        default = {WORK_QUEUE: self.options.concurrency, COORDINATOR_QUEUE: 2048}.get(address, 256)
        self.transport.consume(address, self.options.prefetch.get(address, default))

    def _execute(self, ex: Execution) -> None:
        self._running += 1

        def run() -> _Local:
            done = run_task(ex, store=self.store, record=self._record_threadsafe,
                            io_root=self._io_root(), crash=self.options.crash)
            return _Local(message=done, execution=True)

        if ex.task_actor.inline:  # microseconds of work, on this thread: no hand-offs
            self.urgent.append(_Item(run()))
        else:
            self._pool.submit(lambda: self._enqueue(run(), urgent=True))

    def _io_root(self) -> str:
        if self.options.io_root is None:
            from dtq.runtime.sandbox import resolve_io_root  # the worker's first task makes it

            self.options.io_root = resolve_io_root()
        return self.options.io_root

    def _record_threadsafe(self, kind: str, data: Mapping[str, Any]) -> None:
        self.record(self.name, kind, VectorClock(), data)

    def _handle_batch(self, batch: list[Any]) -> None:
        """Handle a batch and apply its effects. A timer that falls due meanwhile (the leader's
        lease renewal, a heartbeat) fires between two items rather than after a batch that may
        take longer than the lease lets a leader act: the effects of the items handled so far
        are applied first, as its handler may call the store itself (a renewal, a re-seed at a
        new epoch) and must find everything handled before it already there."""
        done = []
        for item in batch:
            done.append(self._handle(item))
            if self._timers and self._timers[0][0] <= time.monotonic():
                self._apply(done)
                done = []
                self._fire_due()
        self._apply(done)

    def _fire_due(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now and self._exit is None:
            _, _, tid, message = heapq.heappop(self._timers)
            if tid in self._cancelled:
                self._cancelled.discard(tid)
                continue
            fire = functools.partial(self.cell.fire, message, self._now())
            self._apply([(self._guard(fire), None)])

    # --- stopping ---------------------------------------------------------------------------

    def _install_signals(self) -> dict[int, Any]:
        """Handle SIGTERM and SIGINT (main thread only); the handlers they replaced."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)
        # Wake the loop: a signal handler that runs inside SimpleQueue.get(timeout) can leave
        # it waiting forever (CPython 3.11); SimpleQueue.put is safe in a signal handler.
        self.inbox.put(_Item(None))

    def _take_signals(self) -> None:
        """Act on stop signals: the first stops consuming and lets running tasks finish, a
        second exits at once."""
        while self._signals:
            signum = self._signals.pop(0)
            if self._draining:
                self._exit = EXIT_OK
                return
            self.log.info("stopping: finishing running tasks",
                          signal=signal.Signals(signum).name, running=self._running)
            self._draining = True
            for address in self.subscriptions:
                self.transport.cancel(address)

    def _shutdown(self) -> int:
        code = self._exit if self._exit is not None else EXIT_OK
        if code == EXIT_OK:
            self._apply([(self._guard(lambda: self.cell.stop(self._now())), None)])
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.transport.close()
        self.log.info("stopped", status=code)
        return code


class _Item:
    """An inbox entry; an urgent one sits in both lanes and is handled once."""

    __slots__ = ("payload", "taken")

    def __init__(self, payload: Any) -> None:
        self.payload = payload
        self.taken = False

    def claim(self) -> Any:
        self.taken = True
        return self.payload


@attrs.frozen(kw_only=True)
class _Local:
    """A local event for the main thread: a finished task's `Executed` message."""

    message: Message
    execution: bool = False


class _ProcessEffects:
    """The process runtime's primitives for the effect plan (`dtq.effectplan`), for one batch.
    Sends and acks go to the transport together: the acks once the sends are confirmed."""

    __slots__ = ("outgoing", "rt")

    def __init__(self, rt: ProcessRuntime) -> None:
        self.rt = rt
        self.outgoing: list[Outgoing] = []

    def write(self, writes: Sequence[Write], epoch: int) -> object:
        stagemarks.mark("write")
        try:
            rt = self.rt
            return rt._store_waiting(lambda: rt.store.apply(writes, epoch=epoch))
        finally:
            stagemarks.mark("written")

    def put_results(self, items: Sequence[ResultItem]) -> list[ResultWrite]:
        stagemarks.mark("result")
        try:
            rt = self.rt
            return rt._store_waiting(lambda: rt.store.put_results(items))
        finally:
            stagemarks.mark("result_done")

    def fire(self, message: Message) -> Effects | None:
        rt = self.rt
        return rt._guard(functools.partial(rt.cell.fire, message, rt._now()))

    def record(self, kind: str, data: Mapping[str, Any]) -> None:
        self.rt.record(self.rt.name, kind, self.rt.cell.clock, data)

    def fenced(self, exc: StaleEpoch) -> None:
        self.rt.log.error("fenced out: a newer leader exists; exiting", error=str(exc))
        self.rt._exit = EXIT_FENCED

    def store_failed(self, exc: StoreError, step: str) -> None:
        self.rt.log.error("store failed; exiting", error=str(exc), step=step)
        self.rt._exit = EXIT_STORE

    def alive(self) -> bool:
        return self.rt._exit is None

    def crash_after(self, step: str) -> bool:
        self.rt.options.crash(f"after_{step}")
        return False

    def publish(self, sends: Sequence[Envelope], defers: Sequence[tuple[Delivery, int]]) -> None:
        rt = self.rt
        self.outgoing = [rt._outgoing(env) for env in sends]
        self.outgoing += [Outgoing(queue=d.queue, body=d.body, priority=d.priority,
                                   headers=d.headers) for d, _ in defers]

    def resolve(self, ref: DeliveryRef) -> Delivery | None:
        return self.rt._deliveries.pop(ref.token, None)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        rt, acks = self.rt, list(deliveries)
        if self.outgoing or acks:  # (an empty round would only wake the I/O thread for nothing)
            rt._publish_then(self.outgoing, acks)

    def schedule(self, timer: Timer) -> None:
        due = time.monotonic() + timer.delay_ms / 1000
        heapq.heappush(self.rt._timers, (due, timer.id, timer.id, timer.message))

    def cancel(self, timer_id: int) -> None:
        self.rt._cancelled.add(timer_id)

    def execute(self, execution: Execution) -> None:
        self.rt._execute(execution)

    def subscribe(self, address: str) -> None:
        self.rt._subscribe(address)

    def unsubscribe(self, address: str) -> None:
        self.rt.transport.cancel(address)

    def exit(self, reason: str) -> None:
        self.rt.log.warning("actor asked to exit", reason=reason)
        self.rt._exit = EXIT_ACTOR
