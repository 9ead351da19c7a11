"""Vector clocks: the happens-before relation, pure and immutable.

A clock maps actor names to counters. Entries that are zero are never stored, so two clocks
that differ only by explicit zeros are equal. Every operation returns a new clock.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping


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


_set = object.__setattr__
_new = object.__new__


class VectorClock:
    """An immutable vector clock.

    >>> a = VectorClock().tick("a")
    >>> b = a.tick("b")
    >>> a.before(b), b.after(a), a.concurrent(VectorClock().tick("c"))
    (True, True, True)
    """

    __slots__ = ("_d", "_entries", "_hash")
    _d: dict[str, int]
    _entries: tuple[tuple[str, int], ...] | None
    _hash: int | None

    def __init__(self, entries: Iterable[tuple[str, int]] = ()) -> None:
        _set(self, "_d", {a: c for a, c in entries if c})
        _set(self, "_entries", None)
        _set(self, "_hash", None)

    @classmethod
    def _of_dict(cls, d: dict[str, int]) -> VectorClock:
        clock = _new(cls)
        _set(clock, "_d", d)
        _set(clock, "_entries", None)
        _set(clock, "_hash", None)
        return clock

    @classmethod
    def of(cls, entries: Mapping[str, int] | None = None) -> VectorClock:
        """Build a clock from a mapping (zero entries are dropped)."""
        return cls(_normalise(entries or {}))

    @property
    def entries(self) -> tuple[tuple[str, int], ...]:
        """The non-zero entries, sorted by actor name."""
        if self._entries is None:
            _set(self, "_entries", tuple(sorted(self._d.items())))
        assert self._entries is not None
        return self._entries

    def as_dict(self) -> dict[str, int]:
        return dict(self._d)

    def __getitem__(self, actor: str) -> int:
        return self._d.get(actor, 0)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self._d)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VectorClock) and self._d == other._d

    def __hash__(self) -> int:
        if self._hash is None:
            _set(self, "_hash", hash(self.entries))
        assert self._hash is not None
        return self._hash

    def __repr__(self) -> str:
        inner = ", ".join(f"{a}:{c}" for a, c in self.entries)
        return f"VectorClock({{{inner}}})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("VectorClock is immutable")

    def tick(self, actor: str) -> VectorClock:
        """The clock after one more event of `actor`."""
        d = self._d.copy()
        d[actor] = d.get(actor, 0) + 1
        return VectorClock._of_dict(d)

    def merge(self, other: VectorClock) -> VectorClock:
        """The least upper bound: the entry-wise maximum."""
        if not other._d or other._d == self._d:
            return self
        if not self._d:
            return other
        d = self._d.copy()
        for actor, count in other._d.items():
            if count > d.get(actor, 0):
                d[actor] = count
        return VectorClock._of_dict(d)

    def without(self, actors: frozenset[str] | set[str]) -> VectorClock:
        """A copy with the given actors' entries removed (used to retire dead actors)."""
        return VectorClock._of_dict({a: c for a, c in self._d.items() if a not in actors})

    def __le__(self, other: VectorClock) -> bool:
        theirs = other._d
        return all(count <= theirs.get(actor, 0) for actor, count in self._d.items())

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
