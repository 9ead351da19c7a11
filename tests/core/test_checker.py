"""The checker's invariants on hand-built histories: each fires on a bad one, stays quiet on a
good one. The histories are built event by event with real vector clocks: an event names the
events it heard of (`after`), as a message carries its sender's clock."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from dtq.checker import CheckResult, check
from dtq.clock import VectorClock
from dtq.history import Event


class H:
    """A history under construction."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.clocks: dict[str, VectorClock] = defaultdict(VectorClock)

    def __call__(self, actor: str, kind: str, *, after: tuple[Event, ...] = (),
                 **data: Any) -> Event:
        clock = self.clocks[actor]
        for e in after:
            clock = clock.merge(e.clock)
        clock = self.clocks[actor] = clock.tick(actor)
        event = Event(len(self.events), len(self.events), actor, kind, clock, data)
        self.events.append(event)
        return event

    def check(self, *, complete: bool = True) -> CheckResult:
        return check(self.events, complete=complete)

    def invariants(self, *, complete: bool = True) -> list[str]:
        return [v.invariant for v in self.check(complete=complete).violations]


L1, L2, W1, W2 = "coordinator-1", "coordinator-2", "worker-1", "worker-2"


def _task(h: H, task: str, deps: tuple[str, ...] = (), *, leader: str = L1) -> Event:
    sub = h("client", "submit", task=task)
    return h(leader, "accepted", after=(sub,), task=task, deps=list(deps))


def _runs(h: H, task: str, *, worker: str = W1, leader: str = L1, attempt: int = 1,
          after: tuple[Event, ...] = ()) -> Event:
    """Dispatch, start, result and success of one attempt; returns the leader's success."""
    d = h(leader, "dispatched", after=after, task=task, attempt=attempt)
    h(worker, "started", after=(d,), task=task, attempt=attempt, epoch=1)
    eff = h(worker, "effect", task=task, attempt=attempt)
    return h(leader, "succeeded", after=(eff,), task=task, attempt=attempt)


# --- once-effects ---------------------------------------------------------------------------


def _once_run(h: H, task: str, key: str, *, worker: str = W1, attempt: int = 1,
              in_doubt: bool = False, effect: bool = True, done: bool = True) -> None:
    h(worker, "once_begin", key=key, task=task, attempt=attempt, in_doubt=in_doubt)
    if effect:
        h(worker, "side_effect", key=key, task=task, attempt=attempt, in_doubt=in_doubt)
    if done:
        h(worker, "once_done", key=key, task=task, attempt=attempt)


def test_a_succeeded_task_whose_once_effect_never_ran_is_a_lost_effect() -> None:
    h = H()
    _task(h, "t")
    _once_run(h, "t", "k", effect=False, done=True)  # marked done, fn never ran
    _runs(h, "t")
    result = h.check()
    assert [v.invariant for v in result.violations] == ["once_lost"]
    assert result.once.lost == 1 and result.once.keys == 1


def test_a_task_that_skipped_a_key_nobody_ran_lost_it_too() -> None:
    h = H()
    _task(h, "t")
    h(W1, "once_skipped", key="k", task="t", attempt=2)
    _runs(h, "t", attempt=2)
    assert h.invariants() == ["once_lost"]


def test_a_once_effect_that_ran_once_is_quiet() -> None:
    h = H()
    _task(h, "t")
    _once_run(h, "t", "k")
    h(W2, "once_skipped", key="k", task="t", attempt=2)  # a redelivery finds it done
    _runs(h, "t")
    result = h.check()
    assert result.ok, result.violations
    assert result.once.to_json() == {"keys": 1, "lost": 0, "doubled": 0, "in_doubt_redos": 0}


def test_a_failed_task_without_its_effect_is_no_lost_effect() -> None:
    h = H()
    _task(h, "t")
    _once_run(h, "t", "k", effect=False, done=False)
    h(L1, "failed", task="t", reason="timed out")
    assert h.check().ok


def test_a_once_effect_run_again_after_it_was_marked_done_is_doubled() -> None:
    h = H()
    _task(h, "t")
    _once_run(h, "t", "k", attempt=1)
    _once_run(h, "t", "k", worker=W2, attempt=2, in_doubt=True)  # in doubt, but after done
    _runs(h, "t", attempt=2)
    result = h.check()
    assert [v.invariant for v in result.violations] == ["once_doubled"]
    assert result.once.doubled == 1 and result.counts.duplicated == 1


def test_two_runs_of_a_once_effect_neither_in_doubt_are_doubled() -> None:
    h = H()
    _task(h, "t")
    _once_run(h, "t", "k", attempt=1, done=False)
    _once_run(h, "t", "k", worker=W2, attempt=2, done=False)
    _runs(h, "t", attempt=2)
    assert h.invariants() == ["once_doubled"]


def test_a_redo_in_doubt_is_counted_not_a_violation() -> None:
    h = H()
    _task(h, "t")
    _once_run(h, "t", "k", attempt=1, done=False)  # crashed after fn, before marking it done
    h(W1, "crash", reason="injected")
    _once_run(h, "t", "k", worker=W2, attempt=2, in_doubt=True)
    _runs(h, "t", attempt=2)
    result = h.check()
    assert result.ok, result.violations
    assert result.once.in_doubt_redos == 1 and result.once.doubled == 0


def test_a_run_that_began_before_the_key_was_done_is_no_doubling() -> None:
    h = H()
    _task(h, "t")
    h(W2, "once_begin", key="k", task="t", attempt=2, in_doubt=True)
    _once_run(h, "t", "k", attempt=1)
    h(W2, "side_effect", key="k", task="t", attempt=2, in_doubt=True)
    _runs(h, "t", attempt=2)
    result = h.check()
    assert result.ok, result.violations
    assert result.once.in_doubt_redos == 1


# --- the leader dispatches only after every dependency succeeded ----------------------------


def test_a_leader_dispatching_before_a_dependency_succeeded_is_caught_even_if_held_back() -> None:
    h = H()
    _task(h, "a")
    _task(h, "b")
    _task(h, "c", ("a", "b"))
    ok_a = _runs(h, "a")
    early = h(L1, "dispatched", after=(ok_a,), task="c", attempt=1)  # b has not succeeded
    h(W2, "causality_violation", after=(early,), task="c", attempt=1, dep="b",
      reason="dependency result not visible", msgs=[], tries=1)  # the worker holds it back
    ok_b = _runs(h, "b")
    _runs(h, "c", attempt=2, after=(ok_b,))
    assert h.invariants() == ["dispatch_order"]


def test_a_leader_dispatching_after_every_dependency_succeeded_is_quiet() -> None:
    h = H()
    _task(h, "a")
    _task(h, "b")
    _task(h, "c", ("a", "b"))
    ok_a = _runs(h, "a")
    ok_b = _runs(h, "b", worker=W2)
    _runs(h, "c", after=(ok_a, ok_b))
    assert h.check().ok, h.check().violations


def test_a_new_leader_learns_of_earlier_successes_from_the_store() -> None:
    h = H()
    h(L1, "leader", epoch=1)
    _task(h, "a")
    _task(h, "c", ("a",))
    _runs(h, "a")
    h(L1, "crash", reason="killed")
    h(L2, "leader", epoch=2)  # no message from coordinator-1: it read the records
    _runs(h, "c", leader=L2)
    assert h.check().ok, h.check().violations


def test_a_new_leader_dispatching_before_any_success_is_caught() -> None:
    h = H()
    h(L1, "leader", epoch=1)
    _task(h, "a")
    _task(h, "c", ("a",))
    h(L2, "leader", epoch=2)
    h(L2, "dispatched", task="c", attempt=1)
    _runs(h, "a", leader=L2)
    assert "dispatch_order" in h.invariants(complete=False)


def test_a_worker_starting_before_a_dependency_result_is_caught() -> None:
    h = H()
    _task(h, "a")
    _task(h, "c", ("a",))
    ok_a = _runs(h, "a")
    d = h(L1, "dispatched", after=(ok_a,), task="c", attempt=1)
    h(W2, "started", task="c", attempt=1, epoch=1)  # did not receive d's clock
    eff = h(W2, "effect", after=(d,), task="c", attempt=1)
    h(L1, "succeeded", after=(eff,), task="c", attempt=1)
    assert h.invariants() == ["dependency_order"]


# --- causal delivery of submissions -------------------------------------------------------


def test_a_dependent_of_a_rejected_task_is_no_causal_delivery_violation() -> None:
    h = H()
    sub = h("client", "submit", task="bad")
    rej = h(L1, "rejected", after=(sub,), task="bad", reason="invalid: priority 999")
    sub2 = h("client", "submit", task="child")
    h(L1, "accepted", after=(sub2, rej), task="child", deps=["bad"])
    h(L1, "failed", task="child", reason="dependency bad failed")
    assert h.check().ok, h.check().violations


def test_a_task_accepted_before_its_dependency_was_decided_is_caught() -> None:
    h = H()
    sub = h("client", "submit", task="child")
    h(L1, "accepted", after=(sub,), task="child", deps=["dep"])
    h(L1, "failed", task="child", reason="dependency dep failed")
    _task(h, "dep")
    h(L1, "failed", task="dep", reason="x")
    assert h.invariants() == ["causal_delivery"]


# --- worker epochs --------------------------------------------------------------------------


def _start(h: H, worker: str, task: str, epoch: int) -> None:
    h(worker, "started", task=task, attempt=1, epoch=epoch)


def test_a_worker_starting_an_older_epochs_dispatch_is_caught() -> None:
    h = H()
    h(W1, "worker_started")
    _start(h, W1, "a", 2)
    _start(h, W1, "b", 1)
    assert [v.invariant for v in check(h.events, complete=False).violations] == ["worker_epoch"]


def test_a_worker_starting_below_the_store_epoch_it_read_is_caught() -> None:
    h = H()
    h(W1, "worker_started")
    _start(h, W1, "a", 1)
    h(W1, "forged_dispatch_refused", task="x", attempt=1, epoch=10**9, store_epoch=2)
    _start(h, W1, "b", 1)
    assert [v.invariant for v in check(h.events, complete=False).violations] == ["worker_epoch"]


def test_a_restarted_worker_starts_afresh_and_other_workers_are_separate() -> None:
    h = H()
    h(W1, "worker_started")
    _start(h, W1, "a", 2)
    _start(h, W2, "b", 1)
    h(W1, "crash", reason="killed")
    h(W1, "worker_started")
    _start(h, W1, "c", 1)
    _start(h, W1, "d", 3)
    _start(h, W1, "e", 3)
    assert check(h.events, complete=False).ok


# --- stale writes ---------------------------------------------------------------------------


def test_a_write_the_store_accepted_at_a_newer_epoch_is_counted_and_flagged() -> None:
    h = H()
    h(L1, "leader", epoch=1)
    h(L2, "leader", epoch=2)
    h(L1, "persist", epoch=1, writes=3, current=2)
    h(L2, "persist", epoch=2, writes=1, current=2)
    h(L1, "stale_write_refused", epoch=1, current=2)
    result = h.check()
    assert [v.invariant for v in result.violations] == ["no_stale_write"]
    assert result.stale_writes == (1, 1)


def test_persists_at_the_stores_own_epoch_are_quiet() -> None:
    h = H()
    h(L1, "leader", epoch=1)
    h(L1, "persist", epoch=1, writes=3, current=1)
    h(L2, "leader", epoch=2)
    h(L1, "stale_write_refused", epoch=1, current=2)
    h(L2, "persist", epoch=2, writes=1, current=2)
    result = h.check()
    assert result.ok and result.stale_writes == (1, 0)


def test_without_current_a_persist_after_a_newer_takeover_is_flagged() -> None:
    h = H()
    h(L1, "leader", epoch=1)
    took = h(L2, "leader", epoch=2)
    h(L1, "persist", after=(took,), epoch=1, writes=1)
    assert h.invariants() == ["no_stale_write"]


# --- every submission ends in a record, and a rejection names its reason --------------------


def test_a_rejection_without_a_reason_is_a_violation() -> None:
    h = H()
    sub = h("client", "submit", task="t")
    h(L1, "rejected", after=(sub,), task="t")
    assert h.invariants() == ["rejection_reason"]
    h.events[-1] = h.events[-1]._replace(data={"task": "t", "reason": "unknown dependency x"})
    assert h.check().ok


def test_a_submission_that_never_ends_is_lost() -> None:
    h = H()
    _task(h, "t")
    assert h.invariants() == ["no_lost_task"]
    assert h.check(complete=False).ok


# --- an actor's clock never goes back -------------------------------------------------------


def _at(h: H, actor: str, kind: str, clock: VectorClock, **data: Any) -> Event:
    """An event stamped with a given clock (as a runtime stamps a persist: no tick)."""
    event = Event(len(h.events), len(h.events), actor, kind, clock, data)
    h.events.append(event)
    return event


def test_an_event_that_happened_before_an_earlier_one_of_its_actor_is_caught() -> None:
    h = H()
    first = h(L1, "coordinator_started")
    h(L1, "leader", epoch=1)
    _at(h, L1, "persist", first.clock, epoch=1, writes=1, current=1)
    assert h.invariants() == ["clock_order"]


def test_equal_clocks_and_a_new_incarnation_are_in_order() -> None:
    h = H()
    h(L1, "coordinator_started")
    last = h(L1, "leader", epoch=1)
    _at(h, L1, "persist", last.clock, epoch=1, writes=1, current=1)  # the same clock: in order
    _at(h, L1, "crash", last.clock, reason="killed")
    _at(h, L1, "coordinator_started", VectorClock().tick(L1))  # a new process, a new clock
    h(W1, "once_begin", key="k", task="t", attempt=1, in_doubt=False)
    _at(h, W1, "side_effect", VectorClock(), key="k", task="t", attempt=1, in_doubt=False)
    result = check(h.events, complete=False)
    assert result.ok, result.violations


def test_a_start_after_the_stored_results_clock_is_in_order() -> None:
    """A worker that lost the result race reports the winner's result, merging the clock the
    result was stored with, not the winner's later `effect` event: that is enough."""
    h = H()
    _task(h, "a")
    _task(h, "c", ("a",))
    d = h(L1, "dispatched", task="a", attempt=1)
    h(W1, "started", after=(d,), task="a", attempt=1, epoch=1)
    made = h(W1, "executed", task="a")  # the result is made and written with this clock
    h(W2, "started", after=(d,), task="a", attempt=1, epoch=1)  # a duplicate dispatch
    lost = h(W2, "duplicate_refused", after=(made,), task="a", attempt=1, winner=1)
    ok = h(L1, "succeeded", after=(lost,), task="a", attempt=1)
    dc = h(L1, "dispatched", after=(ok,), task="c", attempt=1)
    sc = h(W2, "started", after=(dc,), task="c", attempt=1, epoch=1)
    h(W1, "effect", task="a", attempt=1, result_clock=made.clock.as_dict())
    eff = h(W2, "effect", after=(sc,), task="c", attempt=1)
    h(L1, "succeeded", after=(eff,), task="c", attempt=1)
    assert h.check().ok, h.check().violations
    h.events[-3] = h.events[-3]._replace(data={"task": "a", "attempt": 1})  # no result clock
    assert h.invariants() == ["dependency_order"]


# --- nothing leaves a batch the store did not take ------------------------------------------


def _zombie(h: H, *, sent: bool) -> None:
    h(L1, "coordinator_started")
    took = h(L1, "leader", epoch=1)
    _at(h, L1, "persist", took.clock, epoch=1, writes=1, current=1)
    _task(h, "t")
    d = h(L1, "dispatched", task="t", attempt=1)
    if sent:  # the dispatch left before the batch's writes were refused
        h(W1, "started", after=(d,), task="t", attempt=1, epoch=1)
    _at(h, L1, "stale_write_refused", d.clock, epoch=1, current=2)
    _at(h, L1, "crash", d.clock, reason="stale epoch")
    back = h(L1, "coordinator_started")  # the simulator restarts it with its clock
    h(W2, "heartbeat_seen", after=(back,))


def test_a_dispatch_heard_of_from_a_refused_batch_is_caught() -> None:
    h = H()
    _zombie(h, sent=True)
    assert "persist_before_send" in h.invariants(complete=False)


def test_a_refused_batch_that_sent_nothing_is_quiet() -> None:
    h = H()
    _zombie(h, sent=False)
    result = check(h.events, complete=False)
    assert result.ok, result.violations


def test_what_a_runner_records_in_an_actors_name_without_a_clock_is_left_out() -> None:
    h = H()
    h(W1, "worker_started")
    h(W1, "started", task="t", attempt=1, epoch=1)
    _at(h, W1, "pause", VectorClock())  # a real run's observer: it knows no clock
    _at(h, W1, "resume", VectorClock())
    h(W1, "heartbeat_sent")
    assert check(h.events, complete=False).ok


# --- results applied twice ----------------------------------------------------------------------


def _applied_twice(h: H, *, wipe: str | None) -> None:
    """Attempt 1 stores its result; attempt 2 (a new dispatch) stores it again. `wipe`: where
    the store loses its data ("before the first start", "after the first start")."""
    _task(h, "t")
    if wipe == "before the first start":
        h("scenario", "store_data_wiped")
    d = h(L1, "dispatched", task="t", attempt=1)
    h(W1, "started", after=(d,), task="t", attempt=1, epoch=1)
    if wipe == "after the first start":
        h("scenario", "store_data_wiped")
    h(W1, "effect", task="t", attempt=1)
    d2 = h(L1, "dispatched", task="t", attempt=2)
    h(W2, "started", after=(d2,), task="t", attempt=2, epoch=1)
    eff = h(W2, "effect", task="t", attempt=2)
    h(L1, "succeeded", after=(eff,), task="t", attempt=2)


def test_a_result_applied_twice_is_a_duplicate_effect() -> None:
    h = H()
    _applied_twice(h, wipe=None)
    assert h.invariants() == ["no_duplicate_effect"]


def test_a_result_applied_again_after_the_store_lost_the_first_is_no_duplicate() -> None:
    h = H()
    _applied_twice(h, wipe="after the first start")  # the first write may be what was lost
    assert h.invariants() == []


def test_a_loss_before_the_first_run_does_not_excuse_a_second_result() -> None:
    h = H()
    _applied_twice(h, wipe="before the first start")
    assert h.invariants() == ["no_duplicate_effect"]
