"""Recorded events of a run, and their digest.

Every event carries the vector clock at which it happened, so the checker decides "happened
before" from clocks, never from wall time. The digest covers everything but wall time: the same
seed and the same code give the same digest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from dtq.clock import VectorClock


class Event(NamedTuple):
    """One recorded event (a named tuple: cheap to make, as the simulator makes millions)."""

    seq: int
    time_ms: int
    actor: str
    kind: str
    clock: VectorClock
    data: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "time_ms": self.time_ms, "actor": self.actor, "kind": self.kind,
                "clock": dict(self.clock.entries), "data": dict(self.data)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Event:
        return cls(seq=d["seq"], time_ms=d["time_ms"], actor=d["actor"], kind=d["kind"],
                   clock=VectorClock.of(d.get("clock") or {}), data=d.get("data") or {})


class History:
    """An append-only list of events with a time source (virtual or monotonic milliseconds)."""

    def __init__(self, now_ms: Callable[[], int]) -> None:
        self._now_ms = now_ms
        self.events: list[Event] = []

    def record(self, actor: str, kind: str, clock: VectorClock, data: Mapping[str, Any]) -> None:
        self.events.append(Event(len(self.events), self._now_ms(), actor, kind, clock, data))

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def of_kind(self, *kinds: str) -> list[Event]:
        return [e for e in self.events if e.kind in kinds]

    def digest(self) -> str:
        return digest(self.events)


TRACE_KINDS = frozenset({"send", "recv"})
"""Message trace events: recorded only when tracing, so they stay out of the digest."""


def digest(events: Iterable[Event]) -> str:
    """A digest of the run's events (message trace events excluded)."""
    h = hashlib.sha256()
    for e in events:
        if e.kind in TRACE_KINDS:
            continue
        line = json.dumps([e.time_ms, e.actor, e.kind, e.clock.entries, e.data],
                          sort_keys=True, separators=(",", ":"), default=str)
        h.update(line.encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()
