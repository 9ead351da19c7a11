"""What the leader does when the store lost its data (a Redis restarted without persistence).

The rule: an accepted task is either kept or reported lost, never silently stuck.

* A leader that detects the loss (its lease renewal finds the incarnation marker missing or
  changed, or a fenced write is refused because the epoch and lease keys are gone: the runtime
  then hands it `StoreLost`) and whose lease would still be held re-seeds the store from its
  view (`Election.may_reseed`): a new incarnation marker, the lease at an epoch above anything
  it saw, every task record it holds (the unfinished ones and the finished ones an unfinished
  task depends on: a finished task it forgot is not kept, and the report says
  `finished_kept: "held only"`) and dependency edge rewritten,
  idempotency keys claimed again, and a `NoteDataLoss` report, all in the one fenced batch the
  re-seed makes (the batch whose write was refused is covered by it: the view already holds its
  changes; a finished task's record in that batch that already left the view is rewritten
  from the batch). Ready tasks are
  dispatched; dispatched and running ones are left to their dispatches (the broker kept them),
  and a sweep after the task's timeout hands out a new attempt of any that made no progress,
  so nothing waits for a dispatch that is gone. What cannot be kept is reported: results of
  tasks that had succeeded (their records stay succeeded; `GET /tasks/{id}/result` answers
  410), and waiting tasks that needed such a result, which fail naming the dependency.
* A leader whose lease, had the store kept it, would have run out steps down instead (its
  view may be stale), as does one that finds the namespace already started again, and one
  still loading its view after a takeover (it holds only part of what the store held: a
  re-seed from it would report as kept a namespace missing the records not read yet).
* When no leader re-seeded within the grace period (`dtq.election`), a standby takes over an
  empty namespace under a new marker and reports everything the old one held as lost.

Every detection is recorded as a `store_data_lost` history event and logged as an error; the
reports kept in the store are what `GET /cluster` and `/readyz` show.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from dtq.actor import Context
from dtq.envelope import Message
from dtq.errors import StoreUnavailable
from dtq.store import AddDependents, NoteDataLoss, PutTask, Write
from dtq.task import TaskRecord, TaskState, fingerprint

if TYPE_CHECKING:
    from dtq.coordinator import Coordinator

S = TaskState
IN_FLIGHT = (S.DISPATCHED, S.RUNNING)


@attrs.frozen(kw_only=True)
class StoreLost(Message):
    """Local: a fenced write at `epoch` was refused because the store's epoch and lease keys
    are gone. An actor whose handler re-seeds the store (its writes, at a new epoch, stand for
    everything it wrote before) lets the runtime carry on with the refused batch as persisted;
    otherwise the actor is fenced out as for any refused write. `unapplied`: the batch's
    writes the store did not take (the re-seed keeps the finished records among them that the
    actor no longer holds: they left its memory when the handler that ended them did)."""

    epoch: int
    unapplied: tuple[Write, ...] = ()


@attrs.frozen(kw_only=True)
class RecoverySweep(Message):
    """Timer: after a takeover or a re-seed, a task in flight (its dispatch may be gone: the
    leader before may have crashed between persisting a new attempt and sending it) that made
    no progress by its timeout gets a new attempt."""

    task_id: str
    attempt: int
    reason: str


def new_marker(ctx: Context) -> str:
    """A fresh incarnation marker (from the actor's seeded randomness)."""
    return f"{ctx.name}-{ctx.rng.getrandbits(64):016x}"


def loading(coord: Coordinator) -> bool:
    """The leader is still loading its view after a takeover (it holds only part of it)."""
    return coord._load is not None


def detected(
    coord: Coordinator, ctx: Context, where: str, unapplied: tuple[Write, ...] = (),
) -> None:
    """The election found the marker gone (`where` = "lease") or a write was refused for
    missing keys (`where` = "write"): re-seed if leading, else report."""
    election = coord.election
    lost = election.lost
    if not election.leading:
        _report(ctx, {"lost": lost, "detected_by": where, "role": "standby",
                      "note": "waiting for the leader to re-seed the store"})
        return
    if loading(coord):  # taking over: the records not loaded yet are gone
        coord._abdicate(ctx, "the store lost its data while this leader was still loading its "
                        "view: it cannot re-seed what it never read")
        return
    marker = new_marker(ctx)
    epoch = election.recover(ctx.store, ctx.now_ms, marker)
    if epoch is None:
        coord._abdicate(ctx, "the store lost its data and could not be re-seeded (lease too old "
                        "or the namespace already started again)")
        return
    _reseed(coord, ctx, epoch, {"lost": lost, "incarnation": marker, "detected_by": where},
            unapplied)


def took_over_empty(coord: Coordinator, ctx: Context, lost: str, **told: str) -> None:
    """A standby took the lease after a loss nobody re-seeded: what was held is lost."""
    report: dict[str, Any] = {
        "lost": lost, "incarnation": coord.election.watch.known, "epoch": ctx.epoch,
        "recovered": False, "tasks_kept": 0, "tasks_lost": "unknown",
        "note": "no leader held a view of the lost data: every task accepted before the loss "
                "is lost, unless a client submits it again", **told}
    coord.losses_reported.add(lost)
    ctx.write(NoteDataLoss(report=report))
    _report(ctx, report)


def told_by_worker(coord: Coordinator, ctx: Context, lost: str, worker: str) -> None:
    """A heartbeat names a lost marker: unless the store holds a report of it, this leader
    leads a namespace started again by a coordinator that never knew the lost one (every
    coordinator restarted with the data gone, so none could tell), and reports the loss."""
    if lost == coord.election.watch.known or lost in coord.losses_reported:
        return
    try:
        reported = any(r.get("lost") == lost for r in ctx.store.data_losses())
    except StoreUnavailable:
        return  # the worker names it again in its next heartbeat
    if reported:
        coord.losses_reported.add(lost)
        return
    took_over_empty(coord, ctx, lost, told_by=worker)


def _report(ctx: Context, report: dict[str, Any]) -> None:
    ctx.record("store_data_lost", **report)
    ctx.log.error("the store lost its data (restarted without persistence?)", **report)


def _reseed(
    coord: Coordinator, ctx: Context, epoch: int, report: dict[str, Any],
    unapplied: tuple[Write, ...] = (),
) -> None:
    ctx.set_epoch(epoch)
    ctx.record("leader", epoch=epoch, reseeded=True)
    tasks = coord.tasks
    for task_id in sorted(tasks):
        rec = tasks[task_id] = attrs.evolve(tasks[task_id], epoch=epoch)
        ctx.write(PutTask(record=rec))
    # ended by the refused batch and forgotten since: its write is the only copy left
    ended = {w.record.id: w.record for w in unapplied if isinstance(w, PutTask)
             and w.record.state.terminal and w.record.id not in tasks}
    for task_id in sorted(ended):
        ctx.write(PutTask(record=attrs.evolve(ended[task_id], epoch=epoch)))
    for dep in sorted(coord.dependents):
        if coord.dependents[dep]:
            ctx.write(AddDependents(task_id=dep, dependents=tuple(sorted(coord.dependents[dep]))))
    for rec in tasks.values():
        key = rec.spec.idempotency_key
        if key is not None:
            ctx.store.claim_key(key, rec.id, fingerprint(rec.spec))
    succeeded = {t for t, r in tasks.items() if r.state is S.SUCCEEDED}
    failed = _fail_orphans(coord, ctx, succeeded)
    full = {**report, "epoch": epoch, "recovered": True,
            "tasks_kept": len(tasks) + len(ended),
            "finished_kept": "held only",
            "results_lost": len(succeeded), "failed_for_lost_results": failed,
            "in_flight": sum(r.state in IN_FLIGHT for r in tasks.values())}
    coord.losses_reported.add(str(report["lost"]))
    ctx.write(NoteDataLoss(report=full))
    _report(ctx, full)
    for rec in sorted(tasks.values(), key=lambda r: r.id):
        if rec.state is S.READY:
            coord._dispatch(rec, ctx)
    sweep_later(coord, ctx, "no progress since the store lost its data")


def sweep_later(coord: Coordinator, ctx: Context, reason: str) -> None:
    """Look again at every task in flight after its timeout (and the failure detector's)."""
    for rec in sorted(coord.tasks.values(), key=lambda r: r.id):
        if rec.state in IN_FLIGHT:
            ctx.schedule(rec.spec.timeout_ms + coord.config.detector_timeout_ms,
                         RecoverySweep(task_id=rec.id, attempt=rec.attempt, reason=reason))


def _fail_orphans(coord: Coordinator, ctx: Context, succeeded: set[str]) -> int:
    """Tasks not yet started that need a result the loss took: they can never run."""
    failed = 0
    for rec in sorted(coord.tasks.values(), key=lambda r: r.id):
        if rec.state.terminal or rec.state is S.RUNNING:
            continue
        dep = next((d for d in rec.spec.deps if d in succeeded), None)
        if dep is not None and not coord.tasks[rec.id].state.terminal:
            coord._fail(coord.tasks[rec.id], f"the result of dependency {dep} was lost with "
                        "the store's data", ctx)
            failed += 1
    return failed


def sweep(coord: Coordinator, msg: RecoverySweep, ctx: Context) -> None:
    rec: TaskRecord | None = coord.tasks.get(msg.task_id)
    if rec is None or rec.state not in IN_FLIGHT or rec.attempt != msg.attempt \
            or not coord._acting(ctx):
        return
    coord._reassign(rec, rec.worker or "unknown", ctx, msg.reason)


def write_refused(coord: Coordinator, ctx: Context, unapplied: tuple[Write, ...] = ()) -> None:
    """`StoreLost`: re-seed when the store shows the loss; otherwise do nothing (the runtime
    then fences this actor out, as for any refused write)."""
    election = coord.election
    if not election.leading:
        return
    lost = election.check(ctx.store)
    if lost is None and election.watch.missing:
        lost = election.lost  # seen missing already (by a renewal that could not re-seed)
    if lost is not None:
        detected(coord, ctx, "write", unapplied)
