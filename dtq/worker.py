"""The Worker actor: competes for dispatches on the shared work queue and runs them.

A dispatch is held (not acked) while its task runs off the handler loop; the result is stored
with a first-writer-wins write keyed by task id, then reported to the leader, then the dispatch
is acked. A redelivered or duplicated dispatch whose result already exists is not run again:
its stored outcome is reported instead, after the worker merged the clock that result was
stored with (so the leader's next dispatch is not causally early).

A dispatch's epoch is checked against the store's leader lease, not against the highest number
a message claimed: the store is read only when a dispatch carries another epoch than the one
last confirmed. One below the store's is stale; one above it is forged (never adopted). Both
are acked and refused back to the leader, which hands the task out again under its epoch.

A task whose spec breaks the submission rules (`dtq.task.check_spec`, its type's `validate`)
fails for good without running; so does one whose code raised `TaskError(retry=False)`. A failed
attempt is logged (info, with its traceback) and its traceback goes to the leader with the report,
which keeps it with the task's record. Each task's life (received, started, succeeded or failed,
reported) is logged at debug level.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import attrs

from dtq.actor import Actor, Context, DeliveryRef, receive
from dtq.causal import check_deps
from dtq.clock import VectorClock
from dtq.election import IncarnationWatch
from dtq.envelope import (
    COORDINATOR_QUEUE,
    WORK_QUEUE,
    Completed,
    Dispatch,
    Heartbeat,
    Message,
    Refused,
)
from dtq.errors import StoreUnavailable, ValidationError
from dtq.store import LEADER_LEASE, ResultWrite, WorkerInfo
from dtq.task import TaskResult, TaskSpec, check_spec, check_task_type
from dtq.tasktypes import Executed, TaskActor, TaskInput
from dtq.transport import QUORUM_DELIVERY_LIMIT

MAX_RESULT_BYTES = 1024 * 1024
LOGGED_TRACEBACK_CHARS = 3000
"""A failure's log line keeps the end of its traceback, so the line stays one atomic write
(`PIPE_BUF`, 4 KiB) on a shared stderr pipe; the record keeps the whole bounded traceback."""


@attrs.frozen(kw_only=True)
class ExecutionTimeout(Message):
    ref: str


@attrs.frozen(kw_only=True)
class RecheckDeps(Message):
    """Timer: look again at the dependencies of a dispatch that could not run yet."""

    ref: str


@attrs.define(kw_only=True)
class _Waiting:
    """A dispatch held until its dependencies' results are visible before its clock."""

    spec: TaskSpec
    attempt: int
    epoch: int = 0
    reply_to: str | None = None
    token: str = ""
    deliveries: list[DeliveryRef] = attrs.field(factory=list)
    clock: VectorClock = VectorClock()
    msgs: list[str] = attrs.field(factory=list)
    tries: int = 0
    timer: int | None = None
    confirmed: dict[str, object] = attrs.field(factory=dict)
    """Dependencies already seen visible and at or before the dispatch: not read again."""

    def add(self, ctx: Context) -> None:
        """Hold this delivery too; its clock joins what the dispatch has seen, and the
        dispatch counts as from the newest epoch among its copies."""
        self.deliveries.append(ctx.hold())
        if ctx.envelope is not None:
            self.clock = self.clock.merge(ctx.envelope.clock)
            self.msgs.append(ctx.envelope.id)
            self.epoch = max(self.epoch, ctx.envelope.epoch)


@attrs.frozen(kw_only=True)
class ResultStored(Message):
    """The store's answer to a result write (local: never sent)."""

    result: TaskResult
    write: ResultWrite
    reply_to: str | None = None
    token: str = ""


@attrs.frozen(kw_only=True)
class HeartbeatTick(Message):
    """Timer: tell the leader this worker is alive, and which tasks it runs."""

    periodic: bool = True


@attrs.define(kw_only=True)
class _Running:
    deliveries: list[DeliveryRef]
    """Every delivery of this dispatch the worker holds (a redelivery after a dropped
    connection arrives while the first copy runs; both are acked when it ends)."""
    spec: TaskSpec
    attempt: int
    timer: int
    reply_to: str | None = None
    token: str = ""
    """The dispatch's task token, which every report of this run carries."""


class Worker(Actor):
    subscriptions = (WORK_QUEUE,)

    def __init__(
        self, name: str, task_types: Mapping[str, TaskActor], *,
        coordinator: str = COORDINATOR_QUEUE, max_result_bytes: int = MAX_RESULT_BYTES,
        result_ttl_ms: int | None = None, heartbeat_ms: int = 1000,
        check_causality: bool = True, causality_retries: int = 8,
        concurrency: int | None = None,
    ) -> None:
        super().__init__(name)
        self.task_types = dict(task_types)
        self.coordinator = coordinator
        self.max_result_bytes = max_result_bytes
        self.result_ttl_ms = result_ttl_ms
        self.epoch = 0
        """The epoch last confirmed against the store's leader lease."""
        self.running: dict[str, _Running] = {}
        self.heartbeat_ms = heartbeat_ms
        self.report_ms = min(50, heartbeat_ms)
        """A start is reported by a heartbeat at most this long after it."""
        self.beats = 0
        self.report_pending = False
        self.last_report_ms = -(1 << 62)
        self.finished: list[str] = []
        self.check_causality = check_causality
        """Off only to show what the check prevents: tasks may then run before their deps."""
        self.causality_retries = causality_retries
        self.waiting: dict[str, _Waiting] = {}
        self.concurrency = concurrency
        """Tasks run at once (None: no limit). A dispatch ready beyond it waits, not started,
        until one ends; tasks of an `inline` type take no slot."""
        self.queued: dict[str, tuple[_Waiting, dict[str, object]]] = {}

    def on_start(self, ctx: Context) -> None:
        self.epoch = 0
        self.running = {}
        self.waiting = {}
        self.queued = {}
        self.report_pending = False
        self.finished = []
        ctx.record("worker_started")
        is_enabled_for = getattr(ctx.log, "is_enabled_for", None)
        self.debug = is_enabled_for is None or is_enabled_for(logging.DEBUG)
        self._heartbeat(ctx)
        ctx.schedule(self.heartbeat_ms, HeartbeatTick())

    @receive(HeartbeatTick)
    def on_heartbeat_tick(self, msg: HeartbeatTick, ctx: Context) -> None:
        if msg.periodic:
            ctx.schedule(self.heartbeat_ms, HeartbeatTick())
        else:
            self.report_pending = False
            self.last_report_ms = ctx.now_ms
        self._heartbeat(ctx)

    def _report_soon(self, ctx: Context) -> None:
        """A start (or a dispatch set aside) is reported by a heartbeat at once, unless another
        was reported less than `report_ms` ago: then by one sent `report_ms` later, for the
        whole burst."""
        if self.report_pending:
            return
        if ctx.now_ms - self.last_report_ms >= self.report_ms:
            self.last_report_ms = ctx.now_ms
            self._heartbeat(ctx)
            return
        self.report_pending = True
        ctx.schedule(self.report_ms, HeartbeatTick(periodic=False))

    def _heartbeat(self, ctx: Context) -> None:
        """Heartbeats go to the leader's own mailbox, so a backlog of work in the coordinator
        queue never delays them; the worker's entry in the store is what `GET /cluster` shows."""
        self.beats += 1
        running = tuple(sorted(self.running))
        finished, self.finished = tuple(self.finished), []
        try:
            lease = ctx.store.lease(LEADER_LEASE)
            self._watch_store(ctx)
            ctx.store.put_worker(WorkerInfo(name=self.name, last_heartbeat_ms=ctx.wall_ms,
                                            state="alive",
                                            running=tuple(sorted(r.spec.id for r in
                                                                 self.running.values())),
                                            epoch=self.epoch,
                                            incarnation=self.store_watch.known
                                            if self.store_watch else None))
            unreported = self._unreported_loss(ctx)
        except StoreUnavailable:
            return  # the leader hears nothing from us while the store is unreachable
        if lease is not None:
            ctx.send(lease.holder, Heartbeat(worker=self.name, seq=self.beats, running=running,
                                             finished=finished, held=tuple(self.queued),
                                             lost_incarnation=unreported))

    store_watch: IncarnationWatch | None = None
    lost_unreported: str | None = None
    """The marker of a loss this worker saw and the store holds no report of yet."""

    def _unreported_loss(self, ctx: Context) -> str | None:
        """The lost marker to name in heartbeats: kept until a report of it is in the store
        (the leader that re-seeds writes one; one that took over knowing nothing writes one
        when a heartbeat names it)."""
        lost = self.lost_unreported
        if lost is not None and any(r.get("lost") == lost for r in ctx.store.data_losses()):
            self.lost_unreported = lost = None
        return lost

    def _watch_store(self, ctx: Context) -> None:
        """The store's incarnation marker gone or changed means the store lost its data: said
        once per loss (history and error log); the leader re-seeds it (`dtq.recovery`)."""
        if self.store_watch is None:
            self.store_watch = IncarnationWatch()
        lost = self.store_watch.see(ctx.store.incarnation())
        if lost is not None:
            self.lost_unreported = lost
            ctx.record("store_data_lost", lost=lost, role="worker",
                       incarnation=None if self.store_watch.missing else self.store_watch.known)
            ctx.log.error("the store lost its data (restarted without persistence?)", lost=lost)

    debug = False
    """Lifecycle lines at debug level are wanted (checked once per start: off costs nothing)."""

    @receive(Dispatch)
    def on_dispatch(self, msg: Dispatch, ctx: Context) -> None:
        spec, attempt = msg.spec, msg.attempt
        epoch = ctx.envelope.epoch if ctx.envelope else 0
        if self.debug:
            ctx.log.debug("task received", task=spec.id, attempt=attempt, type=spec.type)
        deliveries = ctx.envelope.deliveries if ctx.envelope is not None else 0
        if deliveries >= QUORUM_DELIVERY_LIMIT and f"{spec.id}#{attempt}" not in self.running:
            self._hand_back(spec.id, attempt, deliveries, ctx, msg.token)  # reads no store
            return
        if epoch != self.epoch and not self._epoch_current(msg, epoch, ctx):
            return
        invalid = self._invalid(spec)
        if invalid is not None:
            self._refuse_invalid(spec, attempt, invalid, ctx, msg.token)
            return
        ref = f"{spec.id}#{attempt}"
        self._learn_token(ref, msg.token)
        if ref in self.running:  # a redelivery of a dispatch this worker is running
            self.running[ref].deliveries.append(ctx.hold())
            ctx.record("copy_held", task=spec.id, attempt=attempt, msg=_msg_id(ctx))
            return
        if ref in self.queued:  # another copy of a dispatch waiting for a free slot
            self.queued[ref][0].add(ctx)
            return
        if ref in self.waiting:  # another copy of a dispatch waiting on its dependencies
            self.waiting[ref].add(ctx)
            self._try_start(ref, ctx)
            return
        # A first delivery of a first attempt cannot have a result yet (a copy that raced ahead
        # would lose the first-writer-wins write anyway); only a redelivery or retry looks.
        redelivered = ctx.envelope is not None and ctx.envelope.redelivered
        stored = ctx.store.get_result(spec.id) if redelivered or attempt > 1 else None
        if stored is not None:
            ctx.record("already_done", task=spec.id, attempt=attempt, msg=_msg_id(ctx))
            self._report(stored, ctx, token=msg.token)
            return
        if spec.type not in self.task_types:
            self._fail(spec.id, attempt, f"unknown task type {spec.type!r} on {self.name}", ctx,
                       token=msg.token)
            return
        self.waiting[ref] = _Waiting(spec=spec, attempt=attempt, epoch=epoch,
                                     reply_to=msg.reply_to, token=msg.token)
        self.waiting[ref].add(ctx)
        self._try_start(ref, ctx)

    def _hand_back(
        self, task_id: str, attempt: int, deliveries: int, ctx: Context, token: str,
    ) -> None:
        """A dispatch the broker got back from its workers `deliveries` times (they went away
        holding it: a task that kills its worker, a crash loop) is on its last delivery before
        the broker dead-letters it: this attempt fails, reported to the leader, which retries
        it within the task's attempts or fails it with the reason, rather than run it again.
        Nothing here reads the store: a worker that crashes on an unreachable store (each crash
        gives back what it held) comes here too, before its next read."""
        error = (f"its dispatch came back {deliveries} times without an answer (the workers "
                 "that took it went away)")
        ctx.record("dispatch_handed_back", task=task_id, attempt=attempt, deliveries=deliveries)
        ctx.log.warning("a dispatch given back too often is handed back to the leader",
                        task=task_id, attempt=attempt, deliveries=deliveries)
        self._fail(task_id, attempt, error, ctx, token=token)

    def _learn_token(self, ref: str, token: str) -> None:
        """A copy of a dispatch this worker holds brings the task's token the first copy lacked
        (that copy came from no leader: the simulator's early dispatches do)."""
        if not token:
            return
        held = self.running.get(ref) or self.waiting.get(ref) \
            or (self.queued[ref][0] if ref in self.queued else None)
        if held is not None and not held.token:
            held.token = token

    def _epoch_current(self, msg: Dispatch, epoch: int, ctx: Context) -> bool:
        """Is a dispatch's epoch (another than the one last confirmed) the store's? Below it:
        stale. Above it: forged, as no leader held it (or the store lost its data and a leader
        does not know yet): it is not adopted. Either way the dispatch is acked and refused back
        to the leader, which hands the task out again if its record still wants it."""
        spec, attempt = msg.spec, msg.attempt
        current = ctx.store.epoch(LEADER_LEASE)
        if epoch == current:
            self.epoch = current
            return True
        if epoch > current:
            self._refuse("forged_dispatch_refused", str(spec.id), attempt, epoch, current,
                         _msg_id(ctx), ctx)
            ctx.log.warning("dispatch from an epoch above the store's refused",
                            task=str(spec.id), dispatch_epoch=epoch, store_epoch=current)
        else:
            self.epoch = current
            self._refuse("stale_dispatch_refused", str(spec.id), attempt, epoch, current,
                         _msg_id(ctx), ctx)
        return False

    def _refuse(
        self, kind: str, task_id: str, attempt: int, epoch: int, store_epoch: int,
        msg: str | None, ctx: Context,
    ) -> None:
        """Record a refused dispatch and hand it back to the leader."""
        ctx.record(kind, task=task_id, attempt=attempt, epoch=epoch, store_epoch=store_epoch,
                   msg=msg)
        ctx.send(self.coordinator, Refused(task_id=task_id, attempt=attempt, worker=self.name,
                                           epoch=epoch))

    def _invalid(self, spec: TaskSpec) -> ValidationError | None:
        """How `spec` breaks the submission rules or its type's `validate` (a type this worker
        does not know is not a reason: another worker may know it), or None."""
        try:
            check_spec(spec)
            if spec.type in self.task_types:
                check_task_type(spec, self.task_types)
        except ValidationError as exc:
            return exc
        return None

    def _refuse_invalid(
        self, spec: TaskSpec, attempt: int, invalid: ValidationError, ctx: Context, token: str,
    ) -> None:
        """A task that can never run fails for good; one whose id is not even valid is not
        reported (no record can hold it): the dispatch is dropped, and recorded."""
        if invalid.field == "id":
            ctx.record("invalid_dispatch_dropped", task=repr(spec.id)[:200], attempt=attempt,
                       reason=str(invalid), msg=_msg_id(ctx))
            return
        self._fail(spec.id, attempt, f"rejected: {invalid}", ctx, permanent=True, token=token)

    def _try_start(self, ref: str, ctx: Context) -> None:
        """Run the task if every dependency's result is visible at or before the dispatch's
        clock; otherwise record a causality violation and look again later (never run early).
        Dependencies found good once are not read again."""
        w = self.waiting[ref]
        values, problem = check_deps(w.spec.deps, w.clock, ctx.store, w.confirmed) \
            if self.check_causality else (self._dep_values(w.spec, ctx), None)
        if problem is None:
            del self.waiting[ref]
            self._start(ref, w, values, ctx)
            return
        if w.timer is not None:  # a copy arrived while a re-check is pending: note and wait
            ctx.record("causality_violation", task=w.spec.id, attempt=w.attempt,
                       dep=problem.dep, reason=problem.reason, msgs=list(w.msgs),
                       tries=w.tries)
            return
        w.tries += 1
        ctx.record("causality_violation", task=w.spec.id, attempt=w.attempt, dep=problem.dep,
                   reason=problem.reason, msgs=list(w.msgs), tries=w.tries)
        if w.tries > self.causality_retries:
            self._give_up(ref, ctx)
            return
        w.timer = ctx.schedule(min(2000, 25 << w.tries), RecheckDeps(ref=ref))

    @receive(RecheckDeps)
    def on_recheck(self, msg: RecheckDeps, ctx: Context) -> None:
        w = self.waiting.get(msg.ref)
        if w is not None:
            w.timer = None
            self._try_start(msg.ref, ctx)

    def _give_up(self, ref: str, ctx: Context) -> None:
        """Hand the dispatch back: the leader decides (it re-dispatches if it still should)."""
        w = self.waiting.pop(ref)
        ctx.record("causality_gave_up", task=w.spec.id, attempt=w.attempt)
        ctx.send(self.coordinator, Refused(task_id=w.spec.id, attempt=w.attempt,
                                           worker=self.name, epoch=w.epoch))
        for delivery in w.deliveries:
            ctx.ack(delivery)

    def _dep_values(self, spec: TaskSpec, ctx: Context) -> dict[str, object]:
        values = {}
        for dep in spec.deps:
            stored = ctx.store.get_result(dep)
            values[dep] = stored.value if stored is not None else None
        return values

    def _busy(self) -> int:
        return sum(not self.task_types[r.spec.type].inline for r in self.running.values())

    def _start(self, ref: str, w: _Waiting, values: dict[str, object], ctx: Context) -> bool:
        """Start a dispatch (or queue it for a slot): False when it is refused instead, as the
        worker confirmed a newer epoch than any of its copies' while it waited."""
        if w.epoch < self.epoch:
            self._refuse("stale_dispatch_refused", w.spec.id, w.attempt, w.epoch, self.epoch,
                         w.msgs[-1] if w.msgs else None, ctx)
            for delivery in w.deliveries:
                ctx.ack(delivery)
            return False
        if self.concurrency is not None and not self.task_types[w.spec.type].inline \
                and self._busy() >= self.concurrency:
            self.queued[ref] = (w, values)
            self._report_soon(ctx)  # the leader hands it on if this worker goes silent
            return True
        spec, attempt = w.spec, w.attempt
        timer = ctx.schedule(spec.timeout_ms, ExecutionTimeout(ref=ref))
        self.running[ref] = _Running(deliveries=w.deliveries, spec=spec, attempt=attempt,
                                     timer=timer, reply_to=w.reply_to, token=w.token)
        ctx.record("started", task=spec.id, attempt=attempt, label=spec.label, msgs=w.msgs,
                   epoch=w.epoch)
        if self.debug:
            ctx.log.debug("task started", task=spec.id, attempt=attempt, type=spec.type)
        self._report_soon(ctx)
        task_input = TaskInput(task_id=spec.id, type=spec.type, payload=spec.payload,
                               attempt=attempt, timeout_ms=spec.timeout_ms, deps=values)
        ctx.execute(ref, self.task_types[spec.type], task_input)
        return True

    @receive(Executed)
    def on_executed(self, msg: Executed, ctx: Context) -> None:
        run = self.running.pop(msg.ref, None)
        if run is None:
            ctx.record("late_result_ignored", ref=msg.ref)
            return
        self.finished.append(msg.ref)
        ctx.cancel(run.timer)
        self._start_queued(ctx)
        task_id, attempt = run.spec.id, run.attempt
        size = _size(msg.value)
        if not msg.ok:
            ctx.log.info("task failed", task=task_id, attempt=attempt, type=run.spec.type,
                         error=msg.error, permanent=msg.permanent,
                         traceback=(msg.traceback or "")[-LOGGED_TRACEBACK_CHARS:])
            self._fail(task_id, attempt, msg.error or "task raised", ctx,
                       permanent=msg.permanent, traceback=msg.traceback, token=run.token)
        elif size < 0:
            self._fail(task_id, attempt, "result is not JSON-serialisable", ctx, token=run.token)
        elif size > self.max_result_bytes:
            self._fail(task_id, attempt, f"result of {size} bytes is over the cap of "
                       f"{self.max_result_bytes} bytes", ctx, token=run.token)
        else:
            if self.debug:
                ctx.log.debug("task succeeded", task=task_id, attempt=attempt,
                              type=run.spec.type, elapsed_ms=msg.elapsed_ms)
            self._store_result(run, msg.value, ctx)
        for delivery in run.deliveries:
            ctx.ack(delivery)

    def _store_result(self, run: _Running, value: object, ctx: Context) -> None:
        task_id, attempt = run.spec.id, run.attempt
        result = TaskResult(task_id=task_id, attempt=attempt, worker=self.name, ok=True,
                            value=value, finished_ms=ctx.wall_ms, clock=ctx.clock.as_dict())
        reply_to = run.reply_to
        ctx.store_result(result, ttl_ms=self.result_ttl_ms, notify=reply_to,
                         then=lambda w: ResultStored(result=result, write=w, reply_to=reply_to,
                                                     token=run.token))

    @receive(ResultStored)
    def on_result_stored(self, msg: ResultStored, ctx: Context) -> None:
        write, task_id, attempt = msg.write, msg.result.task_id, msg.result.attempt
        if write.created:
            ctx.record("effect", task=task_id, attempt=attempt,
                       result_clock=dict(msg.result.clock))
        elif write.stale or write.stored is None:
            # The task was handed to another worker as a newer attempt: this result is late.
            ctx.record("late_result_refused", task=task_id, attempt=attempt)
            return
        else:
            ctx.record("duplicate_refused", task=task_id, attempt=attempt,
                       winner=write.stored.attempt)
        assert write.stored is not None
        self._report(write.stored, ctx, token=msg.token,
                     notified=write.created and msg.reply_to is not None)

    @receive(ExecutionTimeout)
    def on_timeout(self, msg: ExecutionTimeout, ctx: Context) -> None:
        run = self.running.pop(msg.ref, None)
        if run is None:
            return
        self.finished.append(msg.ref)
        self._start_queued(ctx)
        timeout = run.spec.timeout_ms
        ctx.log.info("task timed out", task=run.spec.id, attempt=run.attempt,
                     type=run.spec.type, timeout_ms=timeout)
        self._fail(run.spec.id, run.attempt, f"timed out after {timeout} ms", ctx,
                   token=run.token)
        for delivery in run.deliveries:
            ctx.ack(delivery)

    def _start_queued(self, ctx: Context) -> None:
        """A slot is free: start the dispatch of the highest priority that waits for one, the
        one that waited longest among equals (and not refused)."""
        while self.queued:
            ref = max(self.queued, key=lambda r: self.queued[r][0].spec.priority)
            w, values = self.queued.pop(ref)
            if self._start(ref, w, values, ctx):
                return

    def _report(
        self, stored: TaskResult, ctx: Context, *, token: str, notified: bool = False,
    ) -> None:
        """Tell the leader the stored outcome, after what stored it (the stored result's
        clock: another attempt's, when this one lost the race). `notified`: the result write
        already told the waiting client (a hop sooner than the leader could)."""
        ctx.merge_clock(stored.clock)
        ctx.send(self.coordinator, Completed(task_id=stored.task_id, attempt=stored.attempt,
                                             worker=stored.worker, ok=stored.ok,
                                             error=stored.error, notified=notified,
                                             token=token))
        if self.debug:
            ctx.log.debug("task reported", task=stored.task_id, attempt=stored.attempt,
                          ok=stored.ok)

    def _fail(
        self, task_id: str, attempt: int, error: str, ctx: Context, *, permanent: bool = False,
        traceback: str | None = None, token: str = "",
    ) -> None:
        """Report a failed attempt (with its traceback, if it raised); a `permanent` failure is
        not retried by the leader."""
        ctx.record("attempt_failed", task=task_id, attempt=attempt, error=error)
        ctx.send(self.coordinator, Completed(task_id=task_id, attempt=attempt, worker=self.name,
                                             ok=False, error=error, permanent=permanent,
                                             traceback=traceback, token=token))
        if self.debug:
            ctx.log.debug("task reported", task=task_id, attempt=attempt, ok=False, error=error)


def _msg_id(ctx: Context) -> str | None:
    return ctx.envelope.id if ctx.envelope is not None else None


def _size(value: object) -> int:
    try:
        return len(json.dumps(value, separators=(",", ":")).encode())
    except (TypeError, ValueError):
        return -1
