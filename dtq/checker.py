"""Invariants over a recorded history: pure functions, the same for both backends.

Counts follow Jepsen's queue checker:

* submitted: distinct tasks a client submitted;
* lost: submitted tasks that never reached succeeded, failed or cancelled;
* duplicated: tasks whose effect (stored result, or a `once` side effect) was applied twice;
* unexpected: outcomes or effects for tasks nobody submitted;
* recovered: tasks that finished although an earlier attempt was lost to a fault.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from dtq.history import Event

TERMINAL = {"succeeded": "succeeded", "failed": "failed", "rejected": "failed",
            "cancelled": "cancelled"}


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
    violations += _duplicates(events, counts)
    violations += _unexpected(events, submitted, counts)
    counts.recovered = _recovered(events, outcomes)
    leaders, leader_violations = _leaders(events)
    violations += leader_violations
    stale, stale_violations = _stale_writes(events)
    violations += stale_violations
    order = _dependency_order(events) + _causal_delivery(events)
    violations += order
    causality = _causality(events, order)
    if causality["detected"] < causality["provoked"]:
        violations.append(Violation(
            invariant="causality_detected",
            detail=f"{causality['provoked'] - causality['detected']} provoked causality "
                   f"problem(s) went undetected"))
    return CheckResult(counts=counts, violations=tuple(violations), leaders=leaders,
                       stale_writes=stale, causality=causality)


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


def _duplicates(events: Iterable[Event], counts: Counts) -> list[Violation]:
    effects = Counter(e.data["task"] for e in events if e.kind == "effect")
    side = Counter(e.data["key"] for e in events if e.kind == "side_effect")
    side_task = {e.data["key"]: e.data.get("task") for e in events if e.kind == "side_effect"}
    out = [Violation(invariant="no_duplicate_effect", task=t,
                     detail=f"the result of task {t} was applied {n} times")
           for t, n in sorted(effects.items()) if n > 1]
    out += [Violation(invariant="no_duplicate_effect", task=side_task[k],
                      detail=f"side effect {k!r} ran {n} times")
            for k, n in sorted(side.items()) if n > 1]
    counts.duplicated = len({v.task for v in out})
    return out


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
    """Writes from a superseded epoch: refused ones are counted; an accepted one is a write
    that persisted at epoch e after (by happens-before) a leader of a later epoch took over."""
    attempted = sum(1 for e in events if e.kind == "stale_write_refused")
    takeovers = [(int(e.data["epoch"]), e) for e in events if e.kind == "leader"]
    violations = []
    for e in events:
        if e.kind != "persist":
            continue
        epoch = int(e.data["epoch"])
        if int(e.data.get("current", epoch)) > epoch:  # the store itself was at a newer epoch
            violations.append(Violation(
                invariant="no_stale_write",
                detail=f"{e.actor}'s writes at epoch {epoch} were accepted while the store was "
                       f"at epoch {e.data['current']}"))
            continue
        newer = next((t for ep, t in takeovers if ep > epoch and t.clock.before(e.clock)), None)
        if newer is not None:
            violations.append(Violation(
                invariant="no_stale_write",
                detail=f"{e.actor} persisted writes at epoch {epoch} after {newer.actor} "
                       f"took over epoch {newer.data['epoch']}"))
    return (attempted, len(violations)), violations


def _accepted_deps(events: Iterable[Event]) -> dict[str, tuple[str, ...]]:
    return {e.data["task"]: tuple(e.data.get("deps") or ()) for e in events
            if e.kind == "accepted"}


def _dependency_order(events: Sequence[Event]) -> list[Violation]:
    """Every run of a task started after each dependency's effect happened before it."""
    deps = _accepted_deps(events)
    effects: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        if e.kind == "effect":
            effects[e.data["task"]].append(e)
    out = []
    for e in events:
        if e.kind != "started":
            continue
        for dep in deps.get(e.data["task"], ()):
            if not any(done.clock.before(e.clock) for done in effects.get(dep, ())):
                out.append(Violation(
                    invariant="dependency_order", task=e.data["task"],
                    detail=f"{e.actor} started {e.data['task']} (attempt {e.data['attempt']}) "
                           f"without dependency {dep}'s result happening before it"))
    return out


def _causal_delivery(events: Sequence[Event]) -> list[Violation]:
    """A task was accepted only after each of its dependencies was (happens-before)."""
    accepted = {e.data["task"]: e for e in events if e.kind == "accepted"}
    out = []
    for task, e in accepted.items():
        for dep in e.data.get("deps") or ():
            before = accepted.get(dep)
            if before is None or not before.clock.before(e.clock):
                out.append(Violation(
                    invariant="causal_delivery", task=task,
                    detail=f"{task} was accepted without {dep}'s acceptance happening before"))
    return out


def _causality(events: Sequence[Event], order: list[Violation]) -> dict[str, int]:
    """Provoked: early dispatches and stale dependency reads the simulator injected, and
    submissions that overtook a dependency. Detected: those a worker or the leader caught (an
    early dispatch is caught when a worker holds it back, or finds it a copy of a running or
    finished task). Violations: runs that began before a dependency's result (must be 0)."""
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
