"""Invariants over a recorded history: pure functions, the same for both backends.

The rule: every invariant is a pure function of the recorded events (their kinds, data, vector
clocks and history order); nothing here reads a store, a clock or the network. "Happened before"
is decided by vector clocks, strictly (an event does not happen before itself); "history order"
is the order events were recorded (the simulator's execution order; on the real backend, the
order of the appends to the shared history list).

Counts follow Jepsen's queue checker:

* submitted: distinct tasks a client submitted;
* lost: submitted tasks that never reached succeeded, failed or cancelled;
* duplicated: tasks whose effect was applied twice (a stored result, or a doubled once-effect);
* unexpected: outcomes or effects for tasks nobody submitted;
* recovered: tasks that finished although an earlier attempt was lost to a fault.

The invariants (a violation names one of these):

* `single_outcome`: a task ends once (succeeded, failed, rejected or cancelled), never two ways.
* `no_lost_task` (complete runs): every submission ends in a record: succeeded, failed,
  rejected or cancelled.
* `rejection_reason`: every `rejected` event names its reason (a non-empty `reason`).
* `no_duplicate_effect`: a task's result is applied (an `effect` event) at most once, unless
  the store lost its data (`store_data_wiped`) after the earlier effect's run started.
* Once-effects, per key (events `once_begin`, `side_effect`, `once_done`, `once_skipped`, each
  with `key`, `task`, `attempt`; `once_begin` and `side_effect` also `in_doubt`: the run found
  the key begun by an earlier run that never marked it done):

  * `once_lost`: a task ended succeeded while a key it began (`once_begin` or `once_skipped`
    by that task) has no `side_effect` anywhere in the history;
  * `once_doubled`: a key's `side_effect` comes from a run that began (its `once_begin` by the
    same actor, task and attempt, else the `side_effect` itself) after a `once_done` of that key
    in history order; or a key has two `side_effect`s neither of which was in doubt.

  A `side_effect` run in doubt after an earlier `side_effect` of its key is an in-doubt redo:
  counted (`once.in_doubt_redos`), not a violation; the README says what holds for effects
  outside the store.
* `no_unexpected_task`: no outcome or effect for a task nobody submitted.
* `one_leader_per_epoch`, `epochs_grow`: each epoch is led by one actor, and each new leader's
  epoch is above the previous one's.
* `no_stale_write`: the store accepted no write from an epoch other than its own. A `persist`
  event carries `current`, the epoch the store was at when it accepted the batch; accepted stale
  writes are counted from it (`stale_writes.accepted`), on both backends. A `persist` without
  `current` (an older history) counts when it happened after (by happens-before) a takeover of a
  newer epoch. Refused ones (`stale_write_refused`) are counted as attempted.
* `dependency_order` (worker side): every `started` of a task happens after a stored result of
  each of its dependencies: the clock the result was stored with (`effect`'s `result_clock`;
  anything after it is after the write, as a node sends nothing before its writes are applied),
  or the `effect` event itself in histories without it.
* `dispatch_order` (leader side): every `dispatched` of a task, recorded by a leader, happens
  after a `succeeded` of each of its dependencies recorded by a leader, or comes (in history
  order) after a `succeeded` recorded by a leader of an older epoch than the dispatching one (a
  new leader learns of earlier successes from the store, which carries no clock). This holds
  whatever the workers do, so a worker holding an early dispatch back does not hide a leader
  that sent it.
* `causal_delivery`: a task is accepted only after each dependency was decided by a leader
  (its `accepted`, or its `rejected`: a dependent of a rejected task is accepted and then ends
  without running, and that is no violation).
* `worker_epoch`: within one incarnation of a worker (from its `worker_started` to the next),
  no `started` carries an `epoch` below the highest epoch the worker has seen before it: that of
  a dispatch it started, or the store's leader epoch it read to refuse a dispatch (the
  `store_epoch` of `stale_dispatch_refused` and `forged_dispatch_refused`). A dispatch accepted
  under an older epoch and started after a newer one was seen counts: it must be refused then.
* `persist_before_send`: nothing leaves a leader's batch whose writes were not persisted. A
  `dispatched` belongs to the batch resolved by its actor's next `persist` (persisted), or
  `stale_write_refused` or `crash` recorded with the actor's clock (not persisted; a process
  runner's record of a crash carries no clock, and the batch stays undecided); no event of
  another actor may happen after (by happens-before) a `dispatched` of a batch that was not
  persisted, unless it heard of the actor's next incarnation (its entry for the actor reaches
  that of the actor's next `worker_started` or `coordinator_started`: a restarted simulated
  node keeps its clock).
* `clock_order`: an actor's clock never goes back: within one incarnation (an incarnation ends
  at its `crash` or `restart`, and starts at its `worker_started` or `coordinator_started`), no
  event an actor records happens before (strictly) an event it recorded earlier. Events that
  share a clock (a `persist` and the handler event before it) are in order; events recorded
  beside the actor's own sequence (a task run's once events, the simulator's injections, and
  what a runner records in the actor's name without a clock: a pause, a resume) are left out.
* `causality_detected`: every causality problem the simulator provoked (early dispatches, stale
  dependency reads, submissions that overtook a dependency) was detected by an actor.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from dtq.clock import VectorClock
from dtq.history import Event

TERMINAL = {"succeeded": "succeeded", "failed": "failed", "rejected": "failed",
            "cancelled": "cancelled"}
INCARNATION_ENDS = frozenset({"crash", "restart"})
INCARNATION_STARTS = frozenset({"worker_started", "coordinator_started"})
OFF_SEQUENCE_KINDS = frozenset({"once_begin", "once_skipped", "side_effect", "once_done",
                                "inject_early_dispatch", "inject_stale_read"})
"""Events recorded beside an actor's own sequence of events: by a task's thread on real
processes, or by the simulator in the actor's name with a message's clock."""
WORKER_EPOCHS_SEEN = {"started": "epoch", "stale_dispatch_refused": "store_epoch",
                      "forged_dispatch_refused": "store_epoch"}
"""Worker events, and the field naming an epoch the worker has seen: of a dispatch it started,
or the store's leader epoch it read to refuse a dispatch."""


@attrs.frozen(kw_only=True)
class Violation:
    invariant: str
    detail: str
    task: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"invariant": self.invariant, "detail": self.detail}
        if self.task is not None:
            out["task"] = self.task
        return out


@attrs.define(kw_only=True)
class Counts:
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    recovered: int = 0

    def to_json(self) -> dict[str, int]:
        return attrs.asdict(self)


@attrs.define(kw_only=True)
class OnceCounts:
    """Once-effects, per key: keys used, keys whose effect was lost or doubled, and runs of an
    effect redone in doubt (allowed: the earlier run may or may not have done it)."""

    keys: int = 0
    lost: int = 0
    doubled: int = 0
    in_doubt_redos: int = 0

    def to_json(self) -> dict[str, int]:
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class CheckResult:
    counts: Counts
    violations: tuple[Violation, ...]
    leaders: tuple[tuple[int, str], ...]
    stale_writes: tuple[int, int] = (0, 0)
    """(attempted, accepted): writes from a superseded epoch, refused and let through."""
    causality: dict[str, int] = attrs.field(factory=dict)
    """What the run provoked (early dispatches, stale reads, reordered submissions), what was
    detected and held back, and how many dependency-order violations got through."""
    once: OnceCounts = attrs.field(factory=OnceCounts)

    @property
    def ok(self) -> bool:
        return not self.violations


def check(events: Sequence[Event], *, complete: bool = True) -> CheckResult:
    """Check every invariant. With `complete`, unfinished tasks count as lost."""
    violations: list[Violation] = []
    counts = Counts()
    submitted = {e.data["task"] for e in events if e.kind == "submit"}
    counts.submitted = len(submitted)
    outcomes = _outcomes(events, violations)
    for outcome in outcomes.values():
        setattr(counts, outcome, getattr(counts, outcome) + 1)
    violations += _lost(submitted, outcomes, counts, complete)
    violations += _rejection_reasons(events)
    duplicates = _duplicates(events)
    once, once_violations = _once(events)
    violations += duplicates + once_violations
    counts.duplicated = len({v.task for v in duplicates if v.task is not None}
                            | {v.task for v in once_violations
                               if v.invariant == "once_doubled" and v.task is not None})
    violations += _unexpected(events, submitted, counts)
    counts.recovered = _recovered(events, outcomes)
    leaders, leader_violations = _leaders(events)
    violations += leader_violations
    stale, stale_violations = _stale_writes(events)
    violations += stale_violations
    violations += _worker_epochs(events)
    violations += _clock_order(events)
    violations += _persist_before_send(events)
    order = _dependency_order(events) + _dispatch_order(events) + _causal_delivery(events)
    violations += order
    causality = _causality(events, order)
    if causality["detected"] < causality["provoked"]:
        violations.append(Violation(
            invariant="causality_detected",
            detail=f"{causality['provoked'] - causality['detected']} provoked causality "
                   f"problem(s) went undetected"))
    return CheckResult(counts=counts, violations=tuple(violations), leaders=leaders,
                       stale_writes=stale, causality=causality, once=once)


def _outcomes(events: Iterable[Event], violations: list[Violation]) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    for e in events:
        outcome = TERMINAL.get(e.kind)
        if outcome is None:
            continue
        task = e.data["task"]
        first = outcomes.setdefault(task, outcome)
        if first != outcome:
            violations.append(Violation(
                invariant="single_outcome", task=task,
                detail=f"task {task} ended {first} and then {outcome}"))
    return outcomes


def _lost(
    submitted: set[str], outcomes: dict[str, str], counts: Counts, complete: bool,
) -> list[Violation]:
    missing = sorted(t for t in submitted if t not in outcomes)
    counts.lost = len(missing) if complete else 0
    if not complete or not missing:
        return []
    shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
    return [Violation(invariant="no_lost_task", task=missing[0],
                      detail=f"{len(missing)} submitted task(s) never finished: {shown}")]


def _rejection_reasons(events: Iterable[Event]) -> list[Violation]:
    return [Violation(invariant="rejection_reason", task=e.data["task"],
                      detail=f"{e.actor} rejected {e.data['task']} without naming a reason")
            for e in events if e.kind == "rejected" and not e.data.get("reason")]


def _duplicates(events: Iterable[Event]) -> list[Violation]:
    """Results applied twice. The store losing its data (`store_data_wiped`) takes the results
    with it: an effect after a wipe that came after the earlier effect's run started (its write
    may be what was lost) is a new one."""
    effects: Counter[str] = Counter()
    started_at: dict[tuple[str, int], int] = {}
    wipes: list[int] = []
    counted_since: dict[str, int] = {}
    for i, e in enumerate(events):
        if e.kind == "store_data_wiped":
            wipes.append(i)
        elif e.kind == "started":
            started_at.setdefault((e.data["task"], int(e.data.get("attempt", 0))), i)
        elif e.kind == "effect":
            task = e.data["task"]
            since = counted_since.get(task)
            if since is not None and any(w > since for w in wipes):
                effects[task] = 0
            effects[task] += 1
            counted_since[task] = started_at.get((task, int(e.data.get("attempt", 0))), i)
    return [Violation(invariant="no_duplicate_effect", task=t,
                      detail=f"the result of task {t} was applied {n} times")
            for t, n in sorted(effects.items()) if n > 1]


def _once(events: Sequence[Event]) -> tuple[OnceCounts, list[Violation]]:
    """Lost and doubled once-effects, per key (see the module docstring)."""
    begun: dict[str, set[str]] = defaultdict(set)
    """task -> the once keys it began"""
    runs: dict[tuple[str, str, str, Any], int] = {}
    """(actor, key, task, attempt) -> history position of the latest `once_begin`"""
    done: dict[str, int] = {}
    """key -> history position of its first `once_done`"""
    effects: dict[str, list[Event]] = defaultdict(list)
    doubled: dict[str, str] = {}
    redos = 0
    keys: set[str] = set()
    for i, e in enumerate(events):
        if e.kind not in ("once_begin", "once_skipped", "side_effect", "once_done"):
            continue
        key, task = e.data["key"], e.data.get("task")
        keys.add(key)
        if e.kind in ("once_begin", "once_skipped"):
            begun[str(task)].add(key)
            if e.kind == "once_begin":
                runs[(e.actor, key, str(task), e.data.get("attempt"))] = i
        elif e.kind == "once_done":
            done.setdefault(key, i)
        else:
            began = runs.get((e.actor, key, str(task), e.data.get("attempt")), i)
            earlier = effects[key]
            in_doubt = bool(e.data.get("in_doubt"))
            if key in done and done[key] < began:
                doubled.setdefault(key, f"once-effect {key!r} ran again (task {task}, attempt "
                                        f"{e.data.get('attempt')}, on {e.actor}) after it was "
                                        f"marked done")
            elif not in_doubt and any(not s.data.get("in_doubt") for s in earlier):
                doubled.setdefault(key, f"once-effect {key!r} ran twice, neither time in doubt "
                                        f"(tasks {earlier[0].data.get('task')} and {task})")
            elif earlier and in_doubt:
                redos += 1
            earlier.append(e)
    out = [Violation(invariant="once_doubled", detail=detail,
                     task=str(effects[key][-1].data.get("task")))
           for key, detail in sorted(doubled.items())]
    lost = _once_lost(events, begun, effects)
    counts = OnceCounts(keys=len(keys), lost=len(lost), doubled=len(doubled),
                        in_doubt_redos=redos)
    return counts, out + lost


def _once_lost(
    events: Iterable[Event], begun: dict[str, set[str]], effects: dict[str, list[Event]],
) -> list[Violation]:
    succeeded = {e.data["task"] for e in events if e.kind == "succeeded"}
    return [Violation(invariant="once_lost", task=task,
                      detail=f"task {task} succeeded but its once-effect {key!r} never ran")
            for task in sorted(succeeded) for key in sorted(begun.get(task, ()))
            if not effects.get(key)]


def _unexpected(events: Iterable[Event], submitted: set[str], counts: Counts) -> list[Violation]:
    strange = sorted({e.data["task"] for e in events
                      if (e.kind in TERMINAL or e.kind == "effect")
                      and e.data["task"] not in submitted})
    counts.unexpected = len(strange)
    return [Violation(invariant="no_unexpected_task", task=t,
                      detail=f"task {t} has an outcome but was never submitted") for t in strange]


def _recovered(events: Iterable[Event], outcomes: dict[str, str]) -> int:
    attempts: dict[str, int] = defaultdict(int)
    for e in events:
        if e.kind == "dispatched":
            attempts[e.data["task"]] = max(attempts[e.data["task"]], e.data["attempt"])
    return sum(1 for t, o in outcomes.items() if o == "succeeded" and attempts[t] > 1)


def _leaders(events: Iterable[Event]) -> tuple[tuple[tuple[int, str], ...], list[Violation]]:
    leaders: list[tuple[int, str]] = []
    violations: list[Violation] = []
    by_epoch: dict[int, str] = {}
    for e in events:
        if e.kind != "leader":
            continue
        epoch = int(e.data["epoch"])
        if epoch in by_epoch and by_epoch[epoch] != e.actor:
            violations.append(Violation(
                invariant="one_leader_per_epoch",
                detail=f"epoch {epoch} led by {by_epoch[epoch]} and {e.actor}"))
        if leaders and epoch <= leaders[-1][0]:
            violations.append(Violation(
                invariant="epochs_grow",
                detail=f"{e.actor} led epoch {epoch} after epoch {leaders[-1][0]}"))
        by_epoch.setdefault(epoch, e.actor)
        leaders.append((epoch, e.actor))
    return tuple(leaders), violations


def _stale_writes(events: Sequence[Event]) -> tuple[tuple[int, int], list[Violation]]:
    """Writes from a superseded epoch: refused ones are counted; an accepted one is a `persist`
    whose `current` (the store's own epoch when it accepted) differs from the writer's epoch,
    or, without `current`, one that happened after a newer epoch's takeover."""
    attempted = sum(1 for e in events if e.kind == "stale_write_refused")
    takeovers = [(int(e.data["epoch"]), e) for e in events if e.kind == "leader"]
    violations = []
    for e in events:
        if e.kind != "persist":
            continue
        epoch = int(e.data["epoch"])
        if e.data.get("current") is not None:
            current = int(e.data["current"])
            if current != epoch:
                violations.append(Violation(
                    invariant="no_stale_write",
                    detail=f"the store accepted {e.actor}'s writes at epoch {epoch} while it "
                           f"was at epoch {current}"))
            continue
        newer = next((t for ep, t in takeovers if ep > epoch and t.clock.before(e.clock)), None)
        if newer is not None:
            violations.append(Violation(
                invariant="no_stale_write",
                detail=f"{e.actor} persisted writes at epoch {epoch} after {newer.actor} "
                       f"took over epoch {newer.data['epoch']}"))
    return (attempted, len(violations)), violations


def _worker_epochs(events: Iterable[Event]) -> list[Violation]:
    """Per worker incarnation, the epochs of the dispatches it starts never go down."""
    highest: dict[str, int] = {}
    out = []
    for e in events:
        field = WORKER_EPOCHS_SEEN.get(e.kind)
        if e.kind == "worker_started":
            highest.pop(e.actor, None)
        elif field is not None and e.data.get(field) is not None:
            epoch = int(e.data[field])
            seen = highest.get(e.actor, epoch)
            if e.kind == "started" and epoch < seen:
                out.append(Violation(
                    invariant="worker_epoch", task=e.data.get("task"),
                    detail=f"{e.actor} started {e.data.get('task')} (attempt "
                           f"{e.data.get('attempt')}) from epoch {epoch} after it had seen "
                           f"epoch {seen}"))
            highest[e.actor] = max(seen, epoch)
    return out


def _clock_order(events: Iterable[Event]) -> list[Violation]:
    """Within an actor's incarnation, no event happens before one it recorded earlier."""
    last: dict[str, Event] = {}
    out = []
    for e in events:
        if e.actor == "sim" or e.kind in OFF_SEQUENCE_KINDS:
            continue
        if not e.clock and e.kind not in INCARNATION_ENDS:
            continue  # recorded in the actor's name by an observer (a runner's pause, resume)
        if e.kind in INCARNATION_ENDS or e.kind in INCARNATION_STARTS:
            last.pop(e.actor, None)
            if e.kind in INCARNATION_ENDS:
                continue
        before = last.get(e.actor)
        if before is not None and e.clock.before(before.clock):
            out.append(Violation(
                invariant="clock_order", task=e.data.get("task"),
                detail=f"{e.actor}'s {e.kind} (seq {e.seq}) happened before its earlier "
                       f"{before.kind} (seq {before.seq}): its clock went back"))
        last[e.actor] = e
    return out


def _persist_before_send(events: Sequence[Event]) -> list[Violation]:
    """No other actor hears of a dispatch whose batch was not persisted (see the docstring)."""
    pending: dict[str, list[Event]] = defaultdict(list)
    void: list[Event] = []
    persisting = {e.actor for e in events if e.kind == "persist"}
    """Actors that record their persists (histories from before persists were recorded have
    none: their dispatches are not judged)."""
    for e in events:
        if e.kind == "dispatched" and e.actor in persisting:
            pending[e.actor].append(e)
        elif e.kind == "persist":
            pending.pop(e.actor, None)
        elif e.kind == "stale_write_refused" or (e.kind == "crash" and e.clock):
            void += pending.pop(e.actor, [])  # (a runner's record of a crash has no clock)
    out = []
    for v in void:
        later = events[v.seq + 1:] if events[v.seq] is v else [e for e in events if e.seq > v.seq]
        reborn = next((e.clock[v.actor] for e in later
                       if e.actor == v.actor and e.kind in INCARNATION_STARTS), None)
        tick = v.clock[v.actor]
        heard = next((e for e in later if e.actor not in (v.actor, "sim")
                      and tick <= e.clock[v.actor] < (reborn or 1 << 62)
                      and v.clock.before(e.clock)), None)
        if heard is not None:
            out.append(Violation(
                invariant="persist_before_send", task=v.data.get("task"),
                detail=f"{heard.actor}'s {heard.kind} happened after {v.actor} dispatched "
                       f"{v.data.get('task')} (attempt {v.data.get('attempt')}) in a batch "
                       f"whose writes the store never took"))
    return out


def _accepted_deps(events: Iterable[Event]) -> dict[str, tuple[str, ...]]:
    return {e.data["task"]: tuple(e.data.get("deps") or ()) for e in events
            if e.kind == "accepted"}


def _dependency_order(events: Sequence[Event]) -> list[Violation]:
    """Every run of a task started after each dependency's stored result happened before it:
    the result's own clock (recorded with its `effect` as `result_clock`: a worker that lost the
    result race reports the winner's result after merging that clock), else the `effect`."""
    deps = _accepted_deps(events)
    stored: dict[str, list[VectorClock]] = defaultdict(list)
    for e in events:
        if e.kind == "effect":
            made = e.data.get("result_clock")
            stored[e.data["task"]].append(VectorClock.of(made) if made else e.clock)
    out = []
    for e in events:
        if e.kind != "started":
            continue
        for dep in deps.get(e.data["task"], ()):
            if not any(clock.before(e.clock) for clock in stored.get(dep, ())):
                out.append(Violation(
                    invariant="dependency_order", task=e.data["task"],
                    detail=f"{e.actor} started {e.data['task']} (attempt {e.data['attempt']}) "
                           f"without dependency {dep}'s result happening before it"))
    return out


def _dispatch_order(events: Sequence[Event]) -> list[Violation]:
    """Every leader dispatch of a task follows each dependency's success (see the docstring)."""
    deps = _accepted_deps(events)
    epoch_of: dict[str, int] = {}
    succeeded: dict[str, list[tuple[Event, int]]] = defaultdict(list)
    out = []
    for e in events:
        if e.kind == "leader":
            epoch_of[e.actor] = int(e.data["epoch"])
        elif e.kind == "succeeded":
            succeeded[e.data["task"]].append((e, epoch_of.get(e.actor, 0)))
        elif e.kind == "dispatched":
            epoch = epoch_of.get(e.actor, 0)
            for dep in deps.get(e.data["task"], ()):
                if not any(s.clock.before(e.clock) or s_epoch < epoch
                           for s, s_epoch in succeeded.get(dep, ())):
                    out.append(Violation(
                        invariant="dispatch_order", task=e.data["task"],
                        detail=f"{e.actor} dispatched {e.data['task']} (attempt "
                               f"{e.data.get('attempt')}) before dependency {dep} succeeded"))
    return out


def _causal_delivery(events: Sequence[Event]) -> list[Violation]:
    """A task was accepted only after each of its dependencies was decided (accepted or
    rejected by a leader), by happens-before."""
    decided: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        if e.kind in ("accepted", "rejected"):
            decided[e.data["task"]].append(e)
    out = []
    for e in events:
        if e.kind != "accepted":
            continue
        task = e.data["task"]
        for dep in e.data.get("deps") or ():
            if not any(d.clock.before(e.clock) for d in decided.get(dep, ())):
                out.append(Violation(
                    invariant="causal_delivery", task=task,
                    detail=f"{task} was accepted without {dep}'s acceptance or rejection "
                           f"happening before"))
    return out


def _causality(events: Sequence[Event], order: list[Violation]) -> dict[str, int]:
    """Provoked: early dispatches and stale dependency reads the simulator injected, and
    submissions that overtook a dependency. Detected: those a worker or the leader caught (an
    early dispatch is caught when a worker holds it back, or finds it a copy of a running or
    finished task). Violations: dispatches and runs that came before a dependency's success,
    and acceptances before a dependency's (must be 0)."""
    early = {e.data["msg"] for e in events if e.kind == "inject_early_dispatch"}
    caught: set[str] = set()
    for e in events:
        if e.kind in ("causality_violation", "started"):
            # A start lists every copy of the dispatch it waited on; the dependency-order check
            # proves the start itself was not early.
            caught.update(e.data.get("msgs") or ())
        elif e.kind in ("copy_held", "already_done", "stale_dispatch_refused"):
            caught.add(e.data.get("msg") or "")
    misses = {(e.actor, e.time_ms) for e in events if e.kind == "causality_violation"}
    stale = [(e.actor, e.time_ms) for e in events if e.kind == "inject_stale_read"]
    reordered = {e.data["task"] for e in events if e.kind in ("causal_buffered", "causal_overflow")}
    detected = len(early & caught) + sum(1 for s in stale if s in misses) + len(reordered)
    return {"provoked": len(early) + len(stale) + len(reordered), "detected": detected,
            "violations": len(order)}
