"""Causality checks: may a dependent task run, given what its dispatch has seen?

A dispatch carries the leader's vector clock. The leader only dispatches a dependent after it
merged the clock of each dependency's completion, and a worker stores a result with its clock,
so for every dependency the stored result's clock must be at or before the dispatch's clock. A
result that is not visible (a lagging store read) or not at or before the dispatch (a dispatch
sent early, by a stale or confused leader) is a causality violation: the task must not run yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from dtq.clock import VectorClock
from dtq.store import Store


@attrs.frozen(kw_only=True)
class Problem:
    dep: str
    reason: str


def check_deps(
    deps: Sequence[str], dispatch_clock: VectorClock, store: Store,
    confirmed: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Problem | None]:
    """The dependencies' result values, or the first problem found.

    `confirmed` holds the values of dependencies already found visible and at or before the
    dispatch (a dispatch's clock only grows, so they stay so): only the others are read, and
    every one of them found good is added, so that each look makes progress even when most
    reads are stale."""
    confirmed = {} if confirmed is None else confirmed
    rest = [d for d in deps if d not in confirmed]
    found = store.get_results(rest) if rest else {}
    problem = None
    for dep in rest:
        stored = found.get(dep)
        if stored is None:
            problem = problem or Problem(dep=dep, reason="dependency result not visible")
        elif not VectorClock.of(stored.clock) <= dispatch_clock:
            problem = problem or Problem(dep=dep,
                                         reason="dependency result not before the dispatch")
        else:
            confirmed[dep] = stored.value
    if problem is not None:
        return {}, problem
    return {dep: confirmed[dep] for dep in deps}, None


@attrs.define(kw_only=True)
class Held:
    """A submission whose dependencies the leader has not seen yet (its delivery is held)."""

    spec: Any
    ref: Any
    since_ms: int
    reply_to: str | None = None


@attrs.define(kw_only=True)
class SubmitBuffer:
    """Causal delivery of submissions: one that names a dependency not yet submitted (it was
    reordered past it, or overtook it) waits here until the dependency arrives. Bounded: past
    `capacity` entries a submission goes back to the queue instead (overflow), and one that
    waited `timeout_ms` since it was first seen is rejected (time-out). Both are reported."""

    capacity: int = 1024
    timeout_ms: int = 30_000
    held: dict[str, Held] = attrs.field(factory=dict)
    waiting_on: dict[str, set[str]] = attrs.field(factory=dict)
    first_seen: dict[str, int] = attrs.field(factory=dict)

    def seen(self, task_id: str, now_ms: int) -> int:
        """When this submission was first seen (deferred copies keep their first time)."""
        return self.first_seen.setdefault(task_id, now_ms)

    def expired(self, task_id: str, now_ms: int) -> bool:
        return now_ms - self.seen(task_id, now_ms) >= self.timeout_ms

    @property
    def full(self) -> bool:
        return len(self.held) >= self.capacity

    def hold(self, entry: Held, missing: Sequence[str]) -> None:
        self.held[entry.spec.id] = entry
        for dep in missing:
            self.waiting_on.setdefault(dep, set()).add(entry.spec.id)

    def ready_after(self, task_id: str, known: Any) -> list[Held]:
        """Entries whose dependencies are all known now that `task_id` is, in id order."""
        out = []
        for waiting in sorted(self.waiting_on.pop(task_id, ())):
            entry = self.held.get(waiting)
            if entry is not None and all(known(d) for d in entry.spec.deps):
                out.append(self.take(waiting))
        return out

    def take(self, task_id: str) -> Held:
        entry = self.held.pop(task_id)
        self.first_seen.pop(task_id, None)
        return entry
