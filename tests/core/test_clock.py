"""Vector clocks: partial-order laws and merge as least upper bound (property tests)."""

from hypothesis import given
from hypothesis import strategies as st

from dtq.clock import Order, VectorClock

actors = st.sampled_from(["a", "b", "c", "d"])
clocks = st.dictionaries(actors, st.integers(min_value=0, max_value=5)).map(VectorClock.of)


@given(clocks)
def test_reflexive(a: VectorClock) -> None:
    assert a <= a and a.equal(a) and a.compare(a) is Order.EQUAL


@given(clocks, clocks)
def test_antisymmetric(a: VectorClock, b: VectorClock) -> None:
    if a <= b and b <= a:
        assert a == b


@given(clocks, clocks, clocks)
def test_transitive(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    if a <= b and b <= c:
        assert a <= c


@given(clocks, clocks)
def test_exactly_one_relation(a: VectorClock, b: VectorClock) -> None:
    relations = [a.before(b), a.after(b), a.equal(b), a.concurrent(b)]
    assert relations.count(True) == 1
    assert a.before(b) == b.after(a)
    assert a.concurrent(b) == b.concurrent(a)


@given(clocks, clocks)
def test_merge_is_upper_bound(a: VectorClock, b: VectorClock) -> None:
    m = a.merge(b)
    assert a <= m and b <= m


@given(clocks, clocks, clocks)
def test_merge_is_least_upper_bound(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    if a <= c and b <= c:
        assert a.merge(b) <= c


@given(clocks, clocks)
def test_merge_commutative(a: VectorClock, b: VectorClock) -> None:
    assert a.merge(b) == b.merge(a)


@given(clocks, clocks, clocks)
def test_merge_associative(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(clocks)
def test_merge_idempotent(a: VectorClock) -> None:
    assert a.merge(a) == a


@given(clocks, actors)
def test_tick_moves_strictly_forward(a: VectorClock, actor: str) -> None:
    t = a.tick(actor)
    assert a.before(t) and t[actor] == a[actor] + 1


def test_concurrent_events() -> None:
    base = VectorClock().tick("a")
    left, right = base.tick("b"), base.tick("c")
    assert left.concurrent(right)
    assert base.before(left) and base.before(right)
    assert left.merge(right).after(left)


def test_zero_entries_do_not_matter() -> None:
    assert VectorClock.of({"a": 0, "b": 1}) == VectorClock.of({"b": 1})


def test_immutable() -> None:
    a = VectorClock().tick("a")
    a.tick("a")
    assert a["a"] == 1
