"""Vector clocks: the happens-before relation, pure and immutable.

A clock maps actor names to counters. Entries that are zero are never stored, so two clocks
that differ only by explicit zeros are equal. Every operation returns a new clock.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping

import attrs


class Order(enum.Enum):
    """How two vector clocks relate."""

    BEFORE = "before"
    AFTER = "after"
    EQUAL = "equal"
    CONCURRENT = "concurrent"


def _normalise(entries: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    for actor, count in entries.items():
        if count < 0:
            raise ValueError(f"vector clock entry {actor!r} is negative: {count}")
    return tuple(sorted((a, c) for a, c in entries.items() if c))


@attrs.frozen(slots=True, repr=False)
class VectorClock:
    """An immutable vector clock.

    >>> a = VectorClock().tick("a")
    >>> b = a.tick("b")
    >>> a.before(b), b.after(a), a.concurrent(VectorClock().tick("c"))
    (True, True, True)
    """

    entries: tuple[tuple[str, int], ...] = attrs.field(default=(), converter=tuple)

    @classmethod
    def of(cls, entries: Mapping[str, int] | None = None) -> VectorClock:
        """Build a clock from a mapping (zero entries are dropped)."""
        return cls(_normalise(entries or {}))

    def as_dict(self) -> dict[str, int]:
        return dict(self.entries)

    def __getitem__(self, actor: str) -> int:
        for name, count in self.entries:
            if name == actor:
                return count
        return 0

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        inner = ", ".join(f"{a}:{c}" for a, c in self.entries)
        return f"VectorClock({{{inner}}})"

    def tick(self, actor: str) -> VectorClock:
        """The clock after one more event of `actor`."""
        d = dict(self.entries)
        d[actor] = d.get(actor, 0) + 1
        return VectorClock(tuple(sorted(d.items())))

    def merge(self, other: VectorClock) -> VectorClock:
        """The least upper bound: the entry-wise maximum."""
        if not other.entries:
            return self
        if not self.entries:
            return other
        d = dict(self.entries)
        for actor, count in other.entries:
            if count > d.get(actor, 0):
                d[actor] = count
        return VectorClock(tuple(sorted(d.items())))

    def without(self, actors: frozenset[str] | set[str]) -> VectorClock:
        """A copy with the given actors' entries removed (used to retire dead actors)."""
        return VectorClock(tuple((a, c) for a, c in self.entries if a not in actors))

    def __le__(self, other: VectorClock) -> bool:
        theirs = dict(other.entries)
        return all(count <= theirs.get(actor, 0) for actor, count in self.entries)

    def __lt__(self, other: VectorClock) -> bool:
        return self != other and self <= other

    def __ge__(self, other: VectorClock) -> bool:
        return other <= self

    def __gt__(self, other: VectorClock) -> bool:
        return other < self

    def compare(self, other: VectorClock) -> Order:
        le, ge = self <= other, other <= self
        if le and ge:
            return Order.EQUAL
        if le:
            return Order.BEFORE
        if ge:
            return Order.AFTER
        return Order.CONCURRENT

    def before(self, other: VectorClock) -> bool:
        """True when self happened before other (strictly)."""
        return self < other

    def after(self, other: VectorClock) -> bool:
        return other < self

    def concurrent(self, other: VectorClock) -> bool:
        return not (self <= other) and not (other <= self)

    def equal(self, other: VectorClock) -> bool:
        return self == other
