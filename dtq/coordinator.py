"""The Coordinator actor: leader or standby.

Every coordinator competes for the leader lease in the store. The leader consumes the
coordinator queue, persists task records (fenced by its epoch), dispatches ready tasks to the
shared work queue and records completions. A standby retries the lease. A leader that cannot
renew in time stops acting and exits (crash-only); its supervisor restarts it as a standby.

Handlers are idempotent: a redelivered submission or completion re-sends the dispatches it
would have caused, because a crash may have come between persisting and sending.

Every submission ends in a record. The leader checks each one with the API's rules
(`dtq.task.check_submission`; the task type's too when `task_types` is configured): an invalid
one, one whose dependency never comes, and every member of a dependency cycle closed among
held-back submissions are rejected: a failed record (its offending fields made harmless) whose
reason starts "rejected: ", a `rejected` event with that reason, and a notice to the waiting
client. A record loaded at takeover that breaks the rules is failed the same way, never run.

A dependent is dispatched only when every dependency succeeded, and its `dispatched` event
happens after theirs `succeeded` events: a success's record carries the leader's clock, which a
new leader merges when it loads it. A dependency that fails fails its waiting dependents with
"dependency <id> failed"; one that is cancelled cancels them with "dependency <id> cancelled"
(a worklist: chains of any length).

A takeover costs what is unfinished, not the history: the new leader loads the unfinished
records (`Store.scan_unfinished`) a page per handler run, renewing the lease between pages when
it is due, and neither consumes submissions nor dispatches until the view is complete
(`takeover_done` {records, ms} in the history). A finished task leaves the leader's memory once
nothing unfinished depends on it; a task the leader does not hold is read from the store (the
states of a dependency, a redelivered submission or completion of a forgotten task).
"""

from __future__ import annotations

import hmac
from collections import defaultdict
from collections.abc import Callable, Mapping

import attrs

from dtq import dag, recovery
from dtq.actor import Actor, Context, receive
from dtq.causal import Held, SubmitBuffer
from dtq.detector import FailureDetector
from dtq.election import Election, Step
from dtq.envelope import (
    COORDINATOR_QUEUE,
    WORK_QUEUE,
    Cancel,
    Completed,
    Dispatch,
    Heartbeat,
    Message,
    Refused,
    Submit,
)
from dtq.errors import StoreUnavailable, ValidationError
from dtq.store import AddDependents, Notify, PutTask
from dtq.task import (
    PayloadRules,
    TaskRecord,
    TaskSpec,
    TaskState,
    check_submission,
    fingerprint,
    sanitized,
)
from dtq.transport import QUORUM_DELIVERY_LIMIT

S = TaskState
WAITING = frozenset({S.SUBMITTED, S.PENDING, S.READY})
"""States of a task that has not been dispatched: a dependency's end ends it too."""


def _after(dep: str, end: TaskState) -> tuple[TaskState, str]:
    """What a waiting task becomes when its dependency `dep` ends `end` without success."""
    if end is S.CANCELLED:
        return S.CANCELLED, f"dependency {dep} cancelled"
    return S.FAILED, f"dependency {dep} failed"


@attrs.frozen(kw_only=True)
class ElectionTick(Message):
    """Timer: renew the lease (leader) or try to take it (standby)."""


@attrs.frozen(kw_only=True)
class DetectorTick(Message):
    """Timer: look for workers whose heartbeats stopped."""


@attrs.frozen(kw_only=True)
class CausalTimeout(Message):
    """Timer: a held-back submission's dependency never came."""

    task_id: str


@attrs.frozen(kw_only=True)
class Retry(Message):
    """Timer: dispatch the next attempt of a task after its backoff."""

    task_id: str
    attempt: int


@attrs.frozen(kw_only=True)
class LoadChunk(Message):
    """Timer: load the next page of unfinished records (a takeover in progress)."""


@attrs.define(kw_only=True)
class _Load:
    """A takeover's load in progress."""

    started_ms: int
    after: str | None = None
    records: int = 0
    seen: dict[str, int] = attrs.field(factory=dict)
    invalid: list[tuple[TaskRecord, ValidationError]] = attrs.field(factory=list)
    looked_up: set[str] = attrs.field(factory=set)
    """Dependencies read from the store during the load (each once)."""


@attrs.define(kw_only=True)
class CoordinatorConfig:
    lease_ttl_ms: int = 2000
    standby_poll_ms: int = 100
    detector_timeout_ms: int = 5000
    backoff_base_ms: int = 100
    backoff_max_ms: int = 10_000
    causal_buffer: int = 1024
    causal_timeout_ms: int = 30_000
    causal_defer_ms: int = 100
    load_chunk: int = 1000
    """Unfinished records a new leader loads per handler run (the lease is renewed between)."""
    queue: str = COORDINATOR_QUEUE
    work_queue: str = WORK_QUEUE
    task_types: Mapping[str, PayloadRules] | None = None
    """The task types the workers run, if the leader knows them: a submission of another type,
    or with a payload its type's `validate` refuses, is rejected on receipt. Without them,
    workers refuse such a task when it is dispatched (a failure that is not retried)."""


class Coordinator(Actor):
    def __init__(self, name: str, config: CoordinatorConfig | None = None) -> None:
        super().__init__(name)
        self.config = config or CoordinatorConfig()
        self._reset()

    def _reset(self) -> None:
        cfg = self.config
        self.election = Election(name=self.name, lease_ttl_ms=cfg.lease_ttl_ms,
                                 standby_poll_ms=cfg.standby_poll_ms)
        self.detector = FailureDetector(timeout_ms=cfg.detector_timeout_ms)
        self.tasks: dict[str, TaskRecord] = {}
        self.dependents: dict[str, set[str]] = defaultdict(set)
        self.running_on: dict[str, set[str]] = defaultdict(set)
        """Worker -> the tasks it reported starting (for reassignment when it goes silent)."""
        self.started_at: dict[str, int] = {}
        """Task -> its worker's own clock entry when it reported starting it."""
        self.held_by: dict[str, tuple[int, frozenset[str]]] = {}
        """Worker -> (its clock entry, the attempts "task#attempt" it held unstarted) as of its
        latest heartbeat: handed on too if it goes silent (volatile, like `running_on`)."""
        self.reply_to: dict[str, str] = {}
        """Clients waiting for a submission that has no record yet; `_accept` moves the address
        into the record (`TaskRecord.reply_to`), which every later leader and worker reads."""
        self.buffer = SubmitBuffer(capacity=cfg.causal_buffer, timeout_ms=cfg.causal_timeout_ms)
        self._releasing = False
        self._release_queue: list[str] = []
        self._load: _Load | None = None
        """The takeover's load, until the view is complete."""
        self.losses_reported: set[str] = set()
        """Lost incarnation markers this leader reported or found reported (`dtq.recovery`)."""
        self._ended_ids: set[str] = set()
        """Tasks made terminal by the handler running: forgotten at its end if nothing
        unfinished depends on them (`_forget_finished`)."""

    @property
    def leading(self) -> bool:
        return self.election.leading

    # --- election ---------------------------------------------------------------------------

    def on_start(self, ctx: Context) -> None:
        self._reset()
        ctx.record("coordinator_started")
        self._elect(ctx)

    @receive(ElectionTick)
    def on_election_tick(self, msg: ElectionTick, ctx: Context) -> None:
        self._elect(ctx)

    def _elect(self, ctx: Context) -> None:
        if self._election_step(ctx):
            ctx.schedule(self.election.next_tick_ms, ElectionTick())

    def _election_step(self, ctx: Context) -> bool:
        """Renew or try to take the lease; False when this coordinator stopped leading."""
        step = self.election.step(ctx.store, ctx.now_ms, lambda: recovery.new_marker(ctx))
        if step is Step.LOST:
            self._abdicate(ctx, "lease lost")
            return False
        if step is Step.DATA_LOST:
            recovery.detected(self, ctx, "lease")  # re-seeds, reports, or steps down
            if ctx.effects.exit is not None:
                return False
        if step is Step.TOOK_OVER:
            self._take_over(ctx)
        elif step is Step.UNREACHABLE and self.leading:
            ctx.log.warning("cannot renew the lease: store unreachable")
        return True

    def _take_over(self, ctx: Context) -> None:
        epoch = self.election.epoch
        ctx.set_epoch(epoch)
        ctx.record("leader", epoch=epoch)
        ctx.log.info("became leader", epoch=epoch)
        self._load = _Load(started_ms=ctx.wall_ms)
        self._load_chunk(ctx)

    @receive(LoadChunk)
    def on_load_chunk(self, msg: LoadChunk, ctx: Context) -> None:
        """The next page of the takeover's load, after renewing the lease if that is due (a
        timer that fell due during the last page would run only after this one)."""
        election = self.election
        if self._load is None or not election.leading:
            return
        renewed_ms = election.valid_until_ms - election.lease_ttl_ms * 8 // 10
        if ctx.now_ms - renewed_ms >= election.renew_every_ms and not self._election_step(ctx):
            return
        if self._load is None or not election.leading:
            return
        if not election.acting(ctx.now_ms):
            self._abdicate(ctx, "lease not renewed in time")
            return
        self._load_chunk(ctx)

    def _scan_chunk(self, ctx: Context, after: str | None) -> list[TaskRecord]:
        return ctx.store.scan_unfinished(after=after, limit=self.config.load_chunk)

    def _load_chunk(self, ctx: Context) -> None:
        """Load one page of unfinished records; the next page in another handler run."""
        load = self._load
        assert load is not None
        batch = self._scan_chunk(ctx, load.after)
        if self.election.check(ctx.store) is not None:  # read after the page: it came intact
            recovery.detected(self, ctx, "load")  # a part of a view: steps down
            return
        for rec in batch:
            self._load_record(rec, load, ctx)
        load.records += len(batch)
        if len(batch) >= self.config.load_chunk:
            load.after = batch[-1].id
            ctx.schedule(0, LoadChunk())
            return
        self._loaded(load, ctx)

    def _load_record(self, rec: TaskRecord, load: _Load, ctx: Context) -> None:
        """Hold a loaded record (the dependencies' states are read when needed). An unfinished
        record that breaks the submission rules is failed once the view is complete, never
        dispatched (it would fail every leader that tried)."""
        problem = None if rec.state.terminal else self._problem(rec.spec, types=False)
        if problem is not None and problem.field == "id":
            ctx.record("invalid_record_skipped", task=repr(rec.id)[:200], reason=str(problem))
            return
        if problem is not None:
            load.invalid.append((rec, problem))
        self.tasks[rec.id] = rec
        for dep in rec.spec.deps:
            self.dependents[dep].add(rec.id)
            if rec.state in WAITING and dep not in self.tasks and dep not in load.looked_up:
                load.looked_up.add(dep)
                # A finished dependency is held while this waits: its state decides readiness
                # and its clock orders this task's dispatch after the success it remembers.
                found = ctx.store.get_task(dep)
                if found is not None and found.state.terminal:
                    self.tasks[dep] = found
                    self._learn_clock(found, load)
        if rec.state is S.RUNNING and rec.worker:
            self.running_on[rec.worker].add(rec.id)
            self.started_at[rec.id] = 0
        self._learn_clock(rec, load)

    @staticmethod
    def _learn_clock(rec: TaskRecord, load: _Load) -> None:
        for actor, n in rec.clock.items():
            if n > load.seen.get(actor, 0):
                load.seen[actor] = n

    def _loaded(self, load: _Load, ctx: Context) -> None:
        """The view is complete: carry unfinished work on, after the successes the records
        remember (their clocks), then start consuming submissions."""
        self._load = None
        ctx.merge_clock(load.seen)
        for rec, problem in load.invalid:
            self._fail(attrs.evolve(rec, spec=sanitized(rec.spec)), f"rejected: {problem}", ctx)
        for rec in list(self.tasks.values()):
            if rec.state is S.READY:
                self._dispatch(rec, ctx)
        if self.election.took_over_lost is not None:
            recovery.took_over_empty(self, ctx, self.election.took_over_lost)
            self.election.took_over_lost = None
        recovery.sweep_later(self, ctx, "no progress since this leader took over")
        self.detector.grace([w.name for w in ctx.store.workers()], ctx.now_ms)
        ctx.subscribe(self.config.queue)
        ctx.schedule(self._detector_every_ms, DetectorTick())
        ms = ctx.wall_ms - load.started_ms
        ctx.record("takeover_done", records=load.records, ms=ms)
        ctx.log.info("takeover done", records=load.records, ms=ms)

    @receive(recovery.StoreLost)
    def on_store_lost(self, msg: recovery.StoreLost, ctx: Context) -> None:
        """A write was refused because the store lost its data: re-seed it (`dtq.recovery`)."""
        recovery.write_refused(self, ctx, msg.unapplied)

    @receive(recovery.RecoverySweep)
    def on_recovery_sweep(self, msg: recovery.RecoverySweep, ctx: Context) -> None:
        recovery.sweep(self, msg, ctx)

    def _abdicate(self, ctx: Context, reason: str) -> None:
        ctx.record("abdicated", epoch=ctx.epoch, reason=reason)
        ctx.log.warning("stepping down", reason=reason)
        self.election.leading = False
        ctx.exit(reason)

    def _acting(self, ctx: Context) -> bool:
        """A leader whose lease may have run out stops acting before it can be wrong."""
        if not self.election.leading:
            return False
        if not self.election.acting(ctx.now_ms):
            self._abdicate(ctx, "lease not renewed in time")
            return False
        return self._load is None  # no dispatch before the view is complete

    # --- workers ------------------------------------------------------------------------------

    @property
    def _detector_every_ms(self) -> int:
        return max(10, self.config.detector_timeout_ms // 10)

    @receive(Heartbeat)
    def on_heartbeat(self, msg: Heartbeat, ctx: Context) -> None:
        if not self.leading:
            return
        if self.detector.heard(msg.worker, ctx.now_ms):
            ctx.record("worker_rejoined", worker=msg.worker)
        sent_at = ctx.envelope.clock[msg.worker] if ctx.envelope else 0
        if msg.lost_incarnation is not None and self._acting(ctx):
            recovery.told_by_worker(self, ctx, msg.lost_incarnation, msg.worker)
        self._note_running(msg, sent_at, ctx)
        self._reconcile(msg, sent_at, ctx)
        before = self.held_by.get(msg.worker, (-1, frozenset()))
        if sent_at >= before[0]:
            held = frozenset(msg.held)
            self.held_by[msg.worker] = (sent_at, held)
            if held and held != before[1]:
                ctx.record("heard_held", worker=msg.worker, held=sorted(held))

    def _note_running(self, msg: Heartbeat, sent_at: int, ctx: Context) -> None:
        """Tasks a heartbeat reports running become RUNNING on that worker."""
        for ref in msg.running:
            task_id, _, attempt = ref.rpartition("#")
            rec = self.tasks.get(task_id)
            if rec is None or rec.attempt != int(attempt) or not self._acting(ctx):
                continue
            if rec.state is S.DISPATCHED:
                self._put(rec.moved_to(S.RUNNING, now_ms=ctx.wall_ms, worker=msg.worker), ctx)
            if task_id not in self.started_at:
                self.running_on[msg.worker].add(task_id)
                self.started_at[task_id] = sent_at

    def _reconcile(self, msg: Heartbeat, sent_at: int, ctx: Context) -> None:
        """A worker that restarted has forgotten its tasks. A heartbeat sent after one that
        reported a task running (by the worker's own clock entry), which neither lists it as
        running nor as finished, means the task is gone from that worker: hand it out again."""
        gone = {ref.rpartition("#")[0] for ref in msg.finished}
        running = {ref.rpartition("#")[0] for ref in msg.running}
        for task_id in sorted(self.running_on.get(msg.worker, ())):
            if task_id in running or self.started_at.get(task_id, sent_at) >= sent_at:
                continue
            self.running_on[msg.worker].discard(task_id)
            self.started_at.pop(task_id, None)
            rec = self.tasks.get(task_id)
            if task_id in gone or rec is None or rec.state is not S.RUNNING \
                    or rec.worker != msg.worker or not self._acting(ctx):
                continue
            self._reassign(rec, msg.worker, ctx, "forgotten by its worker")

    @receive(DetectorTick)
    def on_detector_tick(self, msg: DetectorTick, ctx: Context) -> None:
        if not self._acting(ctx):
            return
        ctx.schedule(self._detector_every_ms, DetectorTick())
        for worker in self.detector.check(ctx.now_ms):
            ctx.record("worker_suspected", worker=worker)
            ctx.log.warning("worker suspected", worker=worker)
            for task_id in sorted(self.running_on.pop(worker, ())):
                rec = self.tasks.get(task_id)
                if rec is not None and rec.state in (S.DISPATCHED, S.RUNNING) \
                        and rec.worker == worker:
                    self._reassign(rec, worker, ctx, "worker suspected")
            self._hand_on_held(worker, ctx)

    def _hand_on_held(self, worker: str, ctx: Context) -> None:
        """The dispatches a suspected worker last said it held, unstarted, and that nobody has
        reported starting since: new attempts, rather than waiting for the broker to drop the
        silent worker's connection and hand the old ones out again."""
        _, held = self.held_by.pop(worker, (0, frozenset()))
        for ref in sorted(held):
            task_id, _, attempt = ref.rpartition("#")
            rec = self.tasks.get(task_id)
            if rec is not None and rec.state is S.DISPATCHED and rec.attempt == int(attempt):
                self._reassign(rec, worker, ctx, "held by a suspected worker")

    def _reassign(self, rec: TaskRecord, worker: str, ctx: Context, reason: str) -> None:
        """Hand a lost task to another worker as a new attempt (a late result loses). Not one
        whose result is stored: it ended, and its report is on its way (a worker sends it
        after the result write, and acks its dispatch only once it is sent), perhaps behind
        the heartbeat or the silence that made it look lost (after a takeover, say, the
        heartbeat that said it finished went to the leader before)."""
        if self._result_stored(rec, ctx):
            ctx.record("reassign_skipped", task=rec.id, attempt=rec.attempt, worker=worker,
                       reason=reason)
            return
        ctx.record("reassigned", task=rec.id, attempt=rec.attempt + 1, worker=worker,
                   reason=reason)
        if rec.attempt >= rec.spec.max_attempts:
            self._fail(rec, f"worker {worker} lost the task on its last attempt "
                       f"({rec.attempt})", ctx)
            return
        self._dispatch(rec, ctx)

    def _result_stored(self, rec: TaskRecord, ctx: Context) -> bool:
        return ctx.store.get_result(rec.id) is not None

    # --- submissions ------------------------------------------------------------------------

    @receive(Submit)
    def on_submit(self, msg: Submit, ctx: Context) -> None:
        if not self._acting(ctx):
            return
        spec = msg.spec
        problem = self._problem(spec)
        if problem is not None and problem.field == "id":  # nothing can be looked up by it
            self._reject(spec, f"rejected: {problem}", ctx, reply_to=msg.reply_to)
            return
        try:
            known = self._get(spec.id, ctx)
        except StoreUnavailable:  # a forgotten task's record may be there: look again later
            ctx.defer(self.config.causal_defer_ms)
            return
        if known is not None:
            self._redrive(known, ctx)
            return
        held = self.buffer.held.get(spec.id)
        if held is not None:  # another copy of a submission that waits for its dependencies
            self._hold_instead(held, msg, ctx)
            return
        if problem is not None:
            self._reject(spec, f"rejected: {problem}", ctx, reply_to=msg.reply_to)
            return
        deliveries = ctx.envelope.deliveries if ctx.envelope is not None else 0
        if deliveries >= QUORUM_DELIVERY_LIMIT:
            self._refuse_last_delivery(msg, deliveries, ctx)
            return
        missing = [d for d in spec.deps if self._get(d, ctx) is None]
        if missing:
            self._hold_back(msg, missing, ctx)
            return
        if msg.reply_to:
            self.reply_to[spec.id] = msg.reply_to
        if spec.idempotency_key and not self._claim(spec, ctx):
            return
        self._accept(spec, ctx)

    def _refuse_last_delivery(self, msg: Submit, deliveries: int, ctx: Context) -> None:
        """A submission with no record yet that the broker got back from leaders `deliveries`
        times (each went away holding it: in a crash loop, perhaps because of it). On a quorum
        queue this is its last delivery: handled and lost once more, it would go to the dead
        queue and the task would never be heard of. It fails instead, with the reason, where
        its client can read it; submitting it again (a new id) tries it afresh."""
        ctx.log.warning("a submission came back too often; failing it", task=msg.spec.id,
                        deliveries=deliveries)
        self._reject(msg.spec, f"failed: its submission came back {deliveries} times without "
                     "being handled (the leaders holding it went away); not run, so that it "
                     "cannot crash-loop them", ctx, reply_to=msg.reply_to)

    def _hold_back(self, msg: Submit, missing: list[str], ctx: Context) -> None:
        """Causal delivery: a submission that arrived before a dependency's waits for it,
        unless it closes a cycle among the submissions held back."""
        spec, buffer = msg.spec, self.buffer
        cycle = dag.cycle_through(spec.id, lambda t: spec.deps if t == spec.id
                                  else buffer.held[t].spec.deps if t in buffer.held else None)
        if cycle is not None:
            self._reject_cycle(msg, cycle, ctx)
        elif buffer.expired(spec.id, ctx.now_ms):
            buffer.first_seen.pop(spec.id, None)
            ctx.record("causal_timeout", task=spec.id, missing=missing)
            if msg.reply_to:
                self.reply_to[spec.id] = msg.reply_to
            self._accept(spec, ctx)  # rejected, naming the dependency that never came
        elif buffer.full:
            buffer.seen(spec.id, ctx.now_ms)
            ctx.record("causal_overflow", task=spec.id, missing=missing)
            ctx.defer(self.config.causal_defer_ms)
        else:
            since = buffer.seen(spec.id, ctx.now_ms)
            buffer.hold(Held(spec=spec, ref=ctx.hold(), since_ms=since, reply_to=msg.reply_to),
                        missing)
            ctx.record("causal_buffered", task=spec.id, missing=missing)
            ctx.schedule(since + buffer.timeout_ms - ctx.now_ms, CausalTimeout(task_id=spec.id))

    def _hold_instead(self, held: Held, msg: Submit, ctx: Context) -> None:
        """Hold this copy of a waiting submission in place of the one held before, which is
        acked. The held one may be dead: when the leader's connection closes, the broker takes
        its unacked deliveries back and delivers them again, and this may be that copy. Acking
        it and keeping the dead one would leave no copy to come back if this leader crashes.
        (Acking a delivery that is gone does nothing; one copy stays held either way.)"""
        ctx.ack(held.ref)
        held.ref = ctx.hold()
        held.reply_to = held.reply_to or msg.reply_to

    def _reject_cycle(self, msg: Submit, cycle: list[str], ctx: Context) -> None:
        """Every member of a cycle among held-back submissions is rejected, naming the cycle
        (all are taken out of the buffer first: none is released by another's rejection)."""
        reason = "rejected: dependency cycle " + " -> ".join(cycle)
        ctx.record("dependency_cycle", task=msg.spec.id, cycle=cycle)
        self.buffer.first_seen.pop(msg.spec.id, None)  # seen before, if it was deferred
        members = [(msg.spec, msg.reply_to)]
        for task_id in cycle[1:-1]:
            entry = self.buffer.take(task_id)
            ctx.ack(entry.ref)
            members.append((entry.spec, entry.reply_to))
        for spec, reply_to in members:
            self._reject(spec, reason, ctx, reply_to=reply_to)

    @receive(CausalTimeout)
    def on_causal_timeout(self, msg: CausalTimeout, ctx: Context) -> None:
        if msg.task_id not in self.buffer.held or not self._acting(ctx):
            return
        entry = self.buffer.take(msg.task_id)
        missing = [d for d in entry.spec.deps if self._get(d, ctx) is None]
        ctx.record("causal_timeout", task=entry.spec.id, missing=missing)
        ctx.ack(entry.ref)
        if entry.reply_to:
            self.reply_to[entry.spec.id] = entry.reply_to
        self._accept(entry.spec, ctx)

    def _release_buffered(self, task_id: str, ctx: Context) -> None:
        """Accept what waited for `task_id`, and what waited for those (a worklist, not
        recursion: a reversed chain of thousands releases in one go)."""
        if self._releasing:
            self._release_queue.append(task_id)
            return
        self._releasing = True
        self._release_queue = [task_id]
        try:
            while self._release_queue:
                done = self._release_queue.pop()
                for entry in self.buffer.ready_after(done, lambda d: self._get(d, ctx) is not None):
                    self._release_one(entry, ctx)
        finally:
            self._releasing = False

    def _release_one(self, entry: Held, ctx: Context) -> None:
        ctx.record("causal_released", task=entry.spec.id, waited_ms=ctx.now_ms - entry.since_ms)
        ctx.ack(entry.ref)
        if entry.reply_to:
            self.reply_to[entry.spec.id] = entry.reply_to
        if entry.spec.idempotency_key and not self._claim(entry.spec, ctx):
            return
        self._accept(entry.spec, ctx)

    def _claim(self, spec: TaskSpec, ctx: Context) -> bool:
        assert spec.idempotency_key is not None
        fp = fingerprint(spec)
        holder, held_fp = ctx.store.claim_key(spec.idempotency_key, spec.id, fp)
        if held_fp != fp or holder != spec.id:
            reason = f"rejected: idempotency key conflict (the key is held by task {holder})"
            # The id's own record, if the key holds it, belongs to the submission that won.
            self._reject(spec, reason, ctx, record=holder != spec.id)
            return False
        return True

    def _problem(self, spec: TaskSpec, *, types: bool = True) -> ValidationError | None:
        """How a submission breaks the API's rules, or None. Without `types`, the limits of its
        fields only (a record loaded at takeover: the task types deployed may have changed
        since it was accepted, and a worker that does not know its type says so)."""
        try:
            check_submission(spec, self.config.task_types if types else None)
        except ValidationError as exc:
            return exc
        return None

    def _reject(
        self, spec: TaskSpec, reason: str, ctx: Context, *, reply_to: str | None = None,
        record: bool = True,
    ) -> None:
        """End a submission that will never run: a failed record (its fields that break a
        rule made harmless), a `rejected` event and a notice. An invalid id gets no record:
        no record can be kept under it."""
        task_id = spec.id if isinstance(spec.id, str) else repr(spec.id)[:200]
        if reply_to:
            self.reply_to[task_id] = reply_to
        try:
            safe = sanitized(spec)
        except ValueError:
            record = False
        if record:
            self._put(TaskRecord(spec=safe, state=S.FAILED, updated_ms=ctx.wall_ms,
                                 reason=reason, epoch=ctx.epoch), ctx)
        self._ended("rejected", task_id, ctx, reason=reason)
        if record:
            self._release_buffered(spec.id, ctx)  # what waited for it now fails

    def _accept(self, spec: TaskSpec, ctx: Context) -> None:
        missing = [d for d in spec.deps if self._get(d, ctx) is None]
        if missing:
            self._reject(spec, f"rejected: unknown dependency {missing[0]} "
                         "(never submitted or expired)", ctx)
            return
        rec = TaskRecord(spec=spec, updated_ms=ctx.wall_ms, epoch=ctx.epoch,
                         reply_to=self.reply_to.pop(spec.id, None))
        ended = dag.ended_dependency(spec.deps, lambda d: self._state_of(d, ctx))
        if ended is None:
            state, reason = dag.readiness(spec.deps, lambda d: self._state_of(d, ctx)), None
        else:
            state, reason = _after(*ended)
        rec = rec.moved_to(state, now_ms=ctx.wall_ms, reason=reason)
        if state is not S.READY:  # a ready task's record is written once, as dispatched
            self._put(rec, ctx)
        for dep in spec.deps:
            self.dependents[dep].add(spec.id)
            ctx.write(AddDependents(task_id=dep, dependents=(spec.id,)))
        ctx.record("accepted", task=spec.id, deps=list(spec.deps))
        if ended is not None:
            self._ended(state.value, spec.id, ctx, reason=reason)
        elif state is S.READY:
            self._dispatch(rec, ctx)
        self._release_buffered(spec.id, ctx)

    def _redrive(self, rec: TaskRecord, ctx: Context) -> None:
        """Re-send what handling this task may have sent before a crash."""
        if rec.state is S.READY:
            self._dispatch(rec, ctx)
        elif rec.state in (S.DISPATCHED, S.RUNNING):
            self._send_dispatch(rec, rec.attempt, ctx)

    def _dispatch(self, rec: TaskRecord, ctx: Context) -> None:
        attempt = rec.attempt + 1
        if rec.worker is not None:
            self.running_on[rec.worker].discard(rec.id)
            self.started_at.pop(rec.id, None)
            rec = attrs.evolve(rec, worker=None)
        rec = rec.moved_to(S.DISPATCHED, now_ms=ctx.wall_ms, attempt=attempt, epoch=ctx.epoch)
        if rec.token is None:
            rec = attrs.evolve(rec, token=f"{ctx.rng.getrandbits(64):016x}")
        self._put(rec, ctx)
        ctx.record("dispatched", task=rec.id, attempt=attempt, label=rec.spec.label)
        self._send_dispatch(rec, attempt, ctx)

    def _send_dispatch(self, rec: TaskRecord, attempt: int, ctx: Context) -> None:
        dispatch = Dispatch(spec=rec.spec, attempt=attempt, reply_to=rec.reply_to,
                            token=rec.token or "")
        ctx.send(self.config.work_queue, dispatch, attempt=attempt)

    # --- progress ---------------------------------------------------------------------------

    @receive(Refused)
    def on_refused(self, msg: Refused, ctx: Context) -> None:
        """A worker refused an older epoch's dispatch: hand the task out again under ours.

        A refusal of an attempt before the record's, while the record is still dispatched by an
        earlier leader, may be a redelivered copy that leader persisted the new attempt for and
        crashed before sending: the record's attempt is sent again under our epoch (and the
        record rewritten under it, so further copies send nothing). If the earlier send did
        happen, this is one more copy of the same attempt: a worker running it keeps one, and
        the first result written wins, as for any redelivered dispatch."""
        if not self._acting(ctx):
            return
        rec = self._get(msg.task_id, ctx)
        if rec is None or rec.state not in (S.DISPATCHED, S.RUNNING):
            return
        if rec.attempt == msg.attempt:
            ctx.record("redispatched", task=rec.id, attempt=rec.attempt + 1,
                       refused_by=msg.worker)
            self._dispatch(rec, ctx)
        elif msg.attempt < rec.attempt and rec.state is S.DISPATCHED and rec.epoch < ctx.epoch:
            ctx.record("dispatch_resent", task=rec.id, attempt=rec.attempt,
                       refused_attempt=msg.attempt, refused_by=msg.worker)
            rec = attrs.evolve(rec, updated_ms=ctx.wall_ms)
            self._put(rec, ctx)
            self._send_dispatch(rec, rec.attempt, ctx)

    @receive(Completed)
    def on_completed(self, msg: Completed, ctx: Context) -> None:
        if not self._acting(ctx):
            return
        rec = self._get(msg.task_id, ctx)
        if rec is None:
            ctx.record("unexpected_completion", task=msg.task_id, attempt=msg.attempt)
            return
        if rec.token is not None and not hmac.compare_digest(msg.token, rec.token):
            ctx.record("forged_completion_refused", task=rec.id, attempt=msg.attempt,
                       worker=msg.worker, ok=msg.ok)
            ctx.log.warning("a report of a task's end without the task's token refused",
                            task=rec.id, attempt=msg.attempt, worker=msg.worker)
            return
        if rec.state is S.SUCCEEDED:
            self._release(rec, ctx, redrive=True)
        elif rec.state.terminal:
            return
        elif rec.state not in (S.DISPATCHED, S.RUNNING):
            # Only a task run without its dispatch (by a worker that skipped the causality
            # check) can report now; the checker flags that run. The record stays as it is.
            ctx.record("unexpected_completion", task=rec.id, attempt=msg.attempt,
                       state=rec.state.value)
        elif msg.ok:
            rec = rec.moved_to(S.SUCCEEDED, now_ms=ctx.wall_ms, epoch=ctx.epoch)
            self._ended("succeeded", rec.id, ctx, attempt=msg.attempt, worker=msg.worker)
            rec = attrs.evolve(rec, clock=ctx.clock.as_dict())  # after the event above
            self._put(rec, ctx)
            self._release(rec, ctx, redrive=False)
        elif msg.attempt == rec.attempt:
            rec = attrs.evolve(rec, traceback=msg.traceback)  # this failure's (or none)
            if msg.permanent:  # it can never succeed: no retry
                self._fail(rec, msg.error or "rejected", ctx)
            else:
                self._attempt_failed(rec, msg.error or "failed", ctx)

    def _attempt_failed(self, rec: TaskRecord, error: str, ctx: Context) -> None:
        if rec.attempt >= rec.spec.max_attempts:
            self._fail(rec, f"failed after {rec.attempt} attempts: {error}", ctx)
            return
        rec = rec.moved_to(S.READY, now_ms=ctx.wall_ms, reason=error)
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
        if rec is None or rec.state not in WAITING:
            ctx.record("cancel_refused", task=msg.task_id)
            return
        self._end(rec, S.CANCELLED, "cancelled", ctx)

    def _fail(self, rec: TaskRecord, reason: str, ctx: Context) -> None:
        self._end(rec, S.FAILED, reason, ctx)

    def _end(self, rec: TaskRecord, state: TaskState, reason: str, ctx: Context) -> None:
        """End `rec` failed or cancelled, then every waiting task downstream of it the same
        way, each naming the dependency it waited for (a worklist: chains of any length)."""
        work: list[tuple[str, TaskState, str]] = []
        while True:
            rec = rec.moved_to(state, now_ms=ctx.wall_ms, reason=reason)
            self._put(rec, ctx)
            self._ended(state.value, rec.id, ctx, reason=reason)
            after = _after(rec.id, state)
            work += [(d, *after) for d in sorted(self.dependents.get(rec.id, ()), reverse=True)]
            while work:
                dep_id, state, reason = work.pop()
                dependent = self.tasks.get(dep_id)
                if dependent is not None and dependent.state in WAITING:
                    rec = dependent
                    break
            else:
                return

    def _release(self, rec: TaskRecord, ctx: Context, *, redrive: bool) -> None:
        for dep_id in sorted(self.dependents.get(rec.id, ())):
            dependent = self.tasks.get(dep_id)
            if dependent is None:
                continue
            if dependent.state is S.PENDING:
                if dag.readiness(dependent.spec.deps,
                                 lambda d: self._state_of(d, ctx)) is S.READY:
                    self._dispatch(dependent.moved_to(S.READY, now_ms=ctx.wall_ms), ctx)
            elif redrive:
                self._redrive(dependent, ctx)

    def _ended(self, kind: str, task_id: str, ctx: Context, **data: object) -> None:
        """Record a task's end and tell the client waiting for it, if any (through the store,
        with the batch that records the end).

        Who tells: a success is told by the result write that stores it (first writer wins,
        so exactly one write tells, whichever worker or leader reported it); every other end
        by the leader, in the fenced batch that makes the record terminal (a record becomes
        terminal once, and a refused batch tells nobody). The leader never tells a success."""
        ctx.record(kind, task=task_id, **data)
        reply_to = self.reply_to.pop(task_id, None)
        rec = self.tasks.get(task_id) if kind != "rejected" else None  # a rejected copy's id
        if reply_to is None and rec is not None:  # may name another submission's record
            reply_to = rec.reply_to
        if reply_to is not None and kind != "succeeded":
            state = "failed" if kind == "rejected" else kind
            reason = data.get("reason")
            ctx.write(Notify(client=reply_to, task_id=task_id, state=state,
                             reason=str(reason) if reason is not None else None))

    # --- records ----------------------------------------------------------------------------

    def _get(self, task_id: str, ctx: Context) -> TaskRecord | None:
        """The leader holds every unfinished record (it loaded them when it took over and is
        the only writer since) and the finished ones something unfinished depends on; any
        other id is read from the store (a finished task forgotten, or unknown), through this
        leader's writes not applied yet (forgotten by an earlier handler of its batch)."""
        rec = self.tasks.get(task_id)
        return rec if rec is not None else ctx.read_task(task_id)

    def _state_of(self, task_id: str, ctx: Context) -> TaskState | None:
        rec = self._get(task_id, ctx)
        return rec.state if rec is not None else None

    def handler_for(self, message: Message) -> Callable[[Message, Context], None] | None:
        handler = super().handler_for(message)
        if handler is None:
            return None

        def run(msg: Message, ctx: Context) -> None:
            try:
                handler(msg, ctx)
            finally:
                self._forget_finished()

        return run

    def _forget_finished(self) -> None:
        """Tasks made terminal by this handler, and the finished dependencies of those, leave
        memory once no unfinished task depends on them (a worklist: chains of any length)."""
        work, self._ended_ids = sorted(self._ended_ids), set()
        while work:
            task_id = work.pop()
            rec = self.tasks.get(task_id)
            if rec is None or not rec.state.terminal or any(
                    d in self.tasks and not self.tasks[d].state.terminal
                    for d in self.dependents.get(task_id, ())):
                continue
            del self.tasks[task_id]
            self.dependents.pop(task_id, None)
            for dep in rec.spec.deps:
                waiting = self.dependents.get(dep)
                if waiting is not None:
                    waiting.discard(task_id)
                    if not waiting:
                        del self.dependents[dep]
                work.append(dep)

    def _put(self, rec: TaskRecord, ctx: Context) -> None:
        if rec.epoch != ctx.epoch:
            rec = attrs.evolve(rec, epoch=ctx.epoch)
        if rec.state.terminal and rec.worker is not None:
            self.running_on[rec.worker].discard(rec.id)
            self.started_at.pop(rec.id, None)
        self.tasks[rec.id] = rec
        if rec.state.terminal:
            self._ended_ids.add(rec.id)
        ctx.write(PutTask(record=rec))
