"""The Coordinator actor: leader or standby.

Every coordinator competes for the leader lease in the store. The leader consumes the
coordinator queue, persists task records (fenced by its epoch), dispatches ready tasks to the
shared work queue and records completions. A standby retries the lease. A leader that cannot
renew in time stops acting and exits (crash-only); its supervisor restarts it as a standby.

Handlers are idempotent: a redelivered submission or completion re-sends the dispatches it
would have caused, because a crash may have come between persisting and sending.
"""

from __future__ import annotations

from collections import defaultdict

import attrs

from dtq import dag
from dtq.actor import Actor, Context, receive
from dtq.envelope import (
    COORDINATOR_QUEUE,
    WORK_QUEUE,
    Cancel,
    Completed,
    Dispatch,
    Finished,
    Message,
    Started,
    Submit,
)
from dtq.store import LEADER_LEASE, AddDependents, PutTask
from dtq.task import TaskRecord, TaskSpec, TaskState, fingerprint

S = TaskState
ACTIVE = (S.SUBMITTED, S.PENDING, S.READY, S.DISPATCHED, S.RUNNING)


@attrs.frozen(kw_only=True)
class ElectionTick(Message):
    """Timer: renew the lease (leader) or try to take it (standby)."""


@attrs.frozen(kw_only=True)
class Retry(Message):
    """Timer: dispatch the next attempt of a task after its backoff."""

    task_id: str
    attempt: int


@attrs.define(kw_only=True)
class CoordinatorConfig:
    lease_ttl_ms: int = 3000
    standby_poll_ms: int = 500
    backoff_base_ms: int = 100
    backoff_max_ms: int = 10_000
    queue: str = COORDINATOR_QUEUE
    work_queue: str = WORK_QUEUE


class Coordinator(Actor):
    def __init__(self, name: str, config: CoordinatorConfig | None = None) -> None:
        super().__init__(name)
        self.config = config or CoordinatorConfig()
        self._reset()

    def _reset(self) -> None:
        self.leading = False
        self.valid_until_ms = 0
        self.tasks: dict[str, TaskRecord] = {}
        self.dependents: dict[str, set[str]] = defaultdict(set)
        self.reply_to: dict[str, str] = {}
        """Clients waiting for a task's end (volatile: a new leader does not know them)."""

    # --- election ---------------------------------------------------------------------------

    def on_start(self, ctx: Context) -> None:
        self._reset()
        ctx.record("coordinator_started")
        self._elect(ctx)

    @receive(ElectionTick)
    def on_election_tick(self, msg: ElectionTick, ctx: Context) -> None:
        self._elect(ctx)

    def _elect(self, ctx: Context) -> None:
        ttl = self.config.lease_ttl_ms
        if self.leading:
            sent_ms = ctx.now_ms
            if not ctx.store.renew_lease(LEADER_LEASE, self.name, ctx.epoch, ttl):
                self._abdicate(ctx, "lease lost")
                return
            self.valid_until_ms = sent_ms + ttl * 8 // 10
            ctx.schedule(ttl // 3, ElectionTick())
            return
        epoch = ctx.store.acquire_lease(LEADER_LEASE, self.name, ttl)
        if epoch is None:
            ctx.schedule(self.config.standby_poll_ms, ElectionTick())
            return
        self._take_over(epoch, ctx)

    def _take_over(self, epoch: int, ctx: Context) -> None:
        self.leading = True
        self.valid_until_ms = ctx.now_ms + self.config.lease_ttl_ms * 8 // 10
        ctx.set_epoch(epoch)
        ctx.record("leader", epoch=epoch)
        ctx.log.info("became leader", epoch=epoch)
        self._rebuild(ctx)
        ctx.subscribe(self.config.queue)
        ctx.schedule(self.config.lease_ttl_ms // 3, ElectionTick())

    def _rebuild(self, ctx: Context) -> None:
        """Load every record from the store and carry unfinished work on."""
        after = None
        while batch := ctx.store.scan_tasks(after=after, limit=1000):
            for rec in batch:
                self.tasks[rec.id] = rec
                for dep in rec.spec.deps:
                    self.dependents[dep].add(rec.id)
            after = batch[-1].id
        for rec in list(self.tasks.values()):
            if rec.state is S.READY:
                self._dispatch(rec, ctx)

    def _abdicate(self, ctx: Context, reason: str) -> None:
        ctx.record("abdicated", epoch=ctx.epoch, reason=reason)
        ctx.log.warning("stepping down", reason=reason)
        self.leading = False
        ctx.exit(reason)

    def _acting(self, ctx: Context) -> bool:
        """A leader whose lease may have run out stops acting before it can be wrong."""
        if not self.leading:
            return False
        if ctx.now_ms >= self.valid_until_ms:
            self._abdicate(ctx, "lease not renewed in time")
            return False
        return True

    # --- submissions ------------------------------------------------------------------------

    @receive(Submit)
    def on_submit(self, msg: Submit, ctx: Context) -> None:
        if not self._acting(ctx):
            return
        spec = msg.spec
        known = self._get(spec.id, ctx)
        if known is not None:
            self._redrive(known, ctx)
            return
        if msg.reply_to:
            self.reply_to[spec.id] = msg.reply_to
        if spec.idempotency_key and not self._claim(spec, ctx):
            return
        self._accept(spec, ctx)

    def _claim(self, spec: TaskSpec, ctx: Context) -> bool:
        assert spec.idempotency_key is not None
        fp = fingerprint(spec)
        holder, held_fp = ctx.store.claim_key(spec.idempotency_key, spec.id, fp)
        if held_fp != fp or holder != spec.id:
            self._ended("rejected", spec.id, ctx, reason="idempotency key conflict")
            return False
        return True

    def _accept(self, spec: TaskSpec, ctx: Context) -> None:
        missing = [d for d in spec.deps if self._get(d, ctx) is None]
        rec = TaskRecord(spec=spec, updated_ms=ctx.now_ms, epoch=ctx.epoch)
        if missing:
            rec = rec.moved_to(S.FAILED, now_ms=ctx.now_ms,
                               reason=f"rejected: unknown dependency {missing[0]}")
            self._put(rec, ctx)
            self._ended("rejected", spec.id, ctx, reason=rec.reason)
            return
        state = dag.readiness(spec.deps, self._state_of)
        reason = "dependency_failed" if state is S.FAILED else None
        rec = rec.moved_to(state, now_ms=ctx.now_ms, reason=reason)
        if state is not S.READY:  # a ready task's record is written once, as dispatched
            self._put(rec, ctx)
        for dep in spec.deps:
            self.dependents[dep].add(spec.id)
            ctx.write(AddDependents(task_id=dep, dependents=(spec.id,)))
        ctx.record("accepted", task=spec.id, deps=list(spec.deps))
        if state is S.FAILED:
            self._ended("failed", spec.id, ctx, reason=reason)
        elif state is S.READY:
            self._dispatch(rec, ctx)

    def _redrive(self, rec: TaskRecord, ctx: Context) -> None:
        """Re-send what handling this task may have sent before a crash."""
        if rec.state is S.READY:
            self._dispatch(rec, ctx)
        elif rec.state in (S.DISPATCHED, S.RUNNING):
            ctx.send(self.config.work_queue, Dispatch(spec=rec.spec, attempt=rec.attempt),
                     attempt=rec.attempt)

    def _dispatch(self, rec: TaskRecord, ctx: Context) -> None:
        attempt = rec.attempt + 1
        rec = rec.moved_to(S.DISPATCHED, now_ms=ctx.now_ms, attempt=attempt, epoch=ctx.epoch)
        self._put(rec, ctx)
        ctx.record("dispatched", task=rec.id, attempt=attempt, label=rec.spec.label)
        ctx.send(self.config.work_queue, Dispatch(spec=rec.spec, attempt=attempt),
                 attempt=attempt)

    # --- progress ---------------------------------------------------------------------------

    @receive(Started)
    def on_started(self, msg: Started, ctx: Context) -> None:
        if not self._acting(ctx):
            return
        rec = self._get(msg.task_id, ctx)
        if rec is not None and rec.state is S.DISPATCHED and rec.attempt == msg.attempt:
            self._put(rec.moved_to(S.RUNNING, now_ms=ctx.now_ms), ctx)

    @receive(Completed)
    def on_completed(self, msg: Completed, ctx: Context) -> None:
        if not self._acting(ctx):
            return
        rec = self._get(msg.task_id, ctx)
        if rec is None:
            ctx.record("unexpected_completion", task=msg.task_id, attempt=msg.attempt)
            return
        if rec.state is S.SUCCEEDED:
            self._release(rec, ctx, redrive=True)
        elif rec.state.terminal:
            return
        elif msg.ok:
            rec = rec.moved_to(S.SUCCEEDED, now_ms=ctx.now_ms, epoch=ctx.epoch)
            self._put(rec, ctx)
            self._ended("succeeded", rec.id, ctx, attempt=msg.attempt, worker=msg.worker)
            self._release(rec, ctx, redrive=False)
        elif msg.attempt == rec.attempt and rec.state in (S.DISPATCHED, S.RUNNING):
            self._attempt_failed(rec, msg.error or "failed", ctx)

    def _attempt_failed(self, rec: TaskRecord, error: str, ctx: Context) -> None:
        if rec.attempt >= rec.spec.max_attempts:
            self._fail(rec, f"failed after {rec.attempt} attempts: {error}", ctx)
            return
        rec = rec.moved_to(S.READY, now_ms=ctx.now_ms, reason=error)
        self._put(rec, ctx)
        delay = self._backoff_ms(rec.attempt, ctx)
        ctx.record("retry_scheduled", task=rec.id, attempt=rec.attempt + 1, delay_ms=delay)
        ctx.schedule(delay, Retry(task_id=rec.id, attempt=rec.attempt + 1))

    def _backoff_ms(self, attempt: int, ctx: Context) -> int:
        """Exponential backoff with jitter: half fixed, half random."""
        cap = min(self.config.backoff_max_ms, self.config.backoff_base_ms << min(attempt - 1, 30))
        return cap // 2 + int(ctx.rng.random() * (cap - cap // 2))

    @receive(Retry)
    def on_retry(self, msg: Retry, ctx: Context) -> None:
        if not self._acting(ctx):
            return
        rec = self.tasks.get(msg.task_id)
        if rec is not None and rec.state is S.READY and rec.attempt + 1 == msg.attempt:
            self._dispatch(rec, ctx)

    @receive(Cancel)
    def on_cancel(self, msg: Cancel, ctx: Context) -> None:
        if not self._acting(ctx):
            return
        rec = self._get(msg.task_id, ctx)
        if rec is None or rec.state not in (S.SUBMITTED, S.PENDING, S.READY):
            ctx.record("cancel_refused", task=msg.task_id)
            return
        rec = rec.moved_to(S.CANCELLED, now_ms=ctx.now_ms, reason="cancelled")
        self._put(rec, ctx)
        self._ended("cancelled", rec.id, ctx)
        self._propagate_failure(rec, ctx)

    def _fail(self, rec: TaskRecord, reason: str, ctx: Context) -> None:
        rec = rec.moved_to(S.FAILED, now_ms=ctx.now_ms, reason=reason)
        self._put(rec, ctx)
        self._ended("failed", rec.id, ctx, reason=reason)
        self._propagate_failure(rec, ctx)

    def _propagate_failure(self, rec: TaskRecord, ctx: Context) -> None:
        for dep_id in sorted(self.dependents.get(rec.id, ())):
            dependent = self.tasks.get(dep_id)
            if dependent is not None and dependent.state in (S.SUBMITTED, S.PENDING, S.READY):
                self._fail(dependent, "dependency_failed", ctx)

    def _release(self, rec: TaskRecord, ctx: Context, *, redrive: bool) -> None:
        for dep_id in sorted(self.dependents.get(rec.id, ())):
            dependent = self.tasks.get(dep_id)
            if dependent is None:
                continue
            if dependent.state is S.PENDING:
                if dag.readiness(dependent.spec.deps, self._state_of) is S.READY:
                    self._dispatch(dependent.moved_to(S.READY, now_ms=ctx.now_ms), ctx)
            elif redrive:
                self._redrive(dependent, ctx)

    def _ended(self, kind: str, task_id: str, ctx: Context, **data: object) -> None:
        """Record a task's end and tell the client waiting for it, if any."""
        ctx.record(kind, task=task_id, **data)
        reply_to = self.reply_to.pop(task_id, None)
        if reply_to is not None:
            state = "failed" if kind == "rejected" else kind
            reason = data.get("reason")
            ctx.send(reply_to, Finished(task_id=task_id, state=state,
                                        reason=str(reason) if reason is not None else None))

    # --- records ----------------------------------------------------------------------------

    def _get(self, task_id: str, ctx: Context) -> TaskRecord | None:
        rec = self.tasks.get(task_id)
        if rec is None:
            rec = ctx.store.get_task(task_id)
            if rec is not None:
                self.tasks[task_id] = rec
        return rec

    def _state_of(self, task_id: str) -> TaskState | None:
        rec = self.tasks.get(task_id)
        return rec.state if rec is not None else None

    def _put(self, rec: TaskRecord, ctx: Context) -> None:
        if rec.epoch != ctx.epoch:
            rec = attrs.evolve(rec, epoch=ctx.epoch)
        self.tasks[rec.id] = rec
        ctx.write(PutTask(record=rec))
