"""The effect-application plan (`dtq.effectplan`), step by step, through a recording world."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import pytest

from dtq.actor import DeliveryRef, Effects, Execution, PendingResult, Timer
from dtq.effectplan import CRASH_AFTER, Plan
from dtq.envelope import Envelope, Message
from dtq.errors import StaleEpoch, StoreError, StoreUnavailable
from dtq.store import PutTask, ResultItem, ResultWrite, Write
from dtq.task import TaskRecord, TaskResult, TaskSpec


@attrs.frozen
class Answer(Message):
    task: str


class World:
    """Every primitive appends to `calls`; knobs make steps fail or crash."""

    def __init__(self, *, crash_at: str | None = None, accepted: object = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.crash_at = crash_at
        self.accepted = accepted
        self.write_errors: list[Exception] = []
        self.answer_effects: Effects | None = None
        self.dead = False

    def write(self, writes: Sequence[Write], epoch: int) -> object:
        if self.write_errors:
            raise self.write_errors.pop(0)
        self.calls.append(("write", epoch, len(writes)))
        return self.accepted

    def put_results(self, items: Sequence[ResultItem]) -> list[ResultWrite]:
        self.calls.append(("put_results", [i.result.task_id for i in items]))
        return [ResultWrite(stored=i.result, created=True) for i in items]

    def fire(self, message: Message) -> Effects | None:
        self.calls.append(("fire", message))
        fx, self.answer_effects = self.answer_effects, None
        return fx or Effects()

    def record(self, kind: str, data: Mapping[str, Any]) -> None:
        self.calls.append(("record", kind, dict(data)))

    def fenced(self, exc: StaleEpoch) -> None:
        self.calls.append(("fenced",))
        self.dead = True

    def store_failed(self, exc: StoreError, step: str) -> None:
        self.calls.append(("store_failed", step))

    def alive(self) -> bool:
        return not self.dead

    def crash_after(self, step: str) -> bool:
        self.calls.append(("crash_point", f"after_{step}"))
        if self.crash_at == f"after_{step}":
            self.dead = True
        return self.dead

    def publish(self, sends: Sequence[Envelope], defers: Sequence[tuple[str, int]]) -> None:
        self.calls.append(("publish", [e.id for e in sends], list(defers)))

    def resolve(self, ref: DeliveryRef) -> str:
        return f"held-{ref.token}"

    def ack(self, deliveries: Sequence[str]) -> None:
        self.calls.append(("ack", list(deliveries)))

    def schedule(self, timer: Timer) -> None:
        self.calls.append(("schedule", timer.id))

    def cancel(self, timer_id: int) -> None:
        self.calls.append(("cancel", timer_id))

    def execute(self, execution: Execution) -> None:
        self.calls.append(("execute", execution.ref))

    def subscribe(self, address: str) -> None:
        self.calls.append(("subscribe", address))

    def unsubscribe(self, address: str) -> None:
        self.calls.append(("unsubscribe", address))

    def exit(self, reason: str) -> None:
        self.calls.append(("exit", reason))
        self.dead = True

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls if c[0] not in ("crash_point", "record")]


def _put(task: str) -> PutTask:
    return PutTask(record=TaskRecord(spec=TaskSpec(id=task, type="echo")))


def _env(n: int) -> Envelope:
    return Envelope(id=f"m{n}", sender="a", target="b", body=Answer(task=f"t{n}"))


def _result(task: str) -> PendingResult:
    item = ResultItem(result=TaskResult(task_id=task, attempt=1, worker="w", ok=True))
    return PendingResult(item=item, then=lambda w: Answer(task=task))


def _full_batch() -> list[tuple[Effects, str | None]]:
    fx = Effects(epoch=3)
    fx.writes += [_put("t1"), _put("t2")]
    fx.results.append(_result("t1"))
    fx.sends.append(_env(1))
    fx.acks.append(DeliveryRef(7))
    fx.timers.append(Timer(id=1, delay_ms=5, message=Answer(task="x")))
    fx.cancelled_timers.append(9)
    fx.subscribe.append("q")
    other = Effects(epoch=4)
    other.writes.append(_put("t3"))
    other.sends.append(_env(2))
    return [(fx, "d1"), (other, "d2")]


def _answer_effects() -> Effects:
    fx = Effects(epoch=4)
    fx.writes.append(_put("t4"))
    fx.sends.append(_env(3))
    return fx


def test_the_plan_runs_persist_results_send_ack_local_in_order() -> None:
    world = World()
    world.answer_effects = _answer_effects()
    assert Plan(world, _full_batch()).run()
    assert world.kinds() == ["write", "write", "put_results", "fire", "write", "publish", "ack",
                             "cancel", "schedule", "subscribe"]
    writes = [c for c in world.calls if c[0] == "write"]
    assert writes == [("write", 3, 2), ("write", 4, 1), ("write", 4, 1)]  # one call per epoch run
    publish = next(c for c in world.calls if c[0] == "publish")
    assert publish[1] == ["m1", "m2", "m3"]  # the answer's send leaves with the batch's
    assert ("ack", ["d1", "d2", "held-7"]) in world.calls
    points = [c[1] for c in world.calls if c[0] == "crash_point"]
    assert points == ["after_persist", "after_results", "after_persist", "after_send",
                      "after_ack"]  # the answer's run stored no result: no point after that


def test_crash_points_come_only_after_steps_that_did_something() -> None:
    world = World()
    fx = Effects()
    fx.timers.append(Timer(id=1, delay_ms=5, message=Answer(task="x")))
    assert Plan(world, [(fx, None)]).run()
    assert [c for c in world.calls if c[0] == "crash_point"] == []
    world = World()
    held = Effects()
    held.hold = True
    held.sends.append(_env(1))
    assert Plan(world, [(held, "d1")]).run()
    assert [c[1] for c in world.calls if c[0] == "crash_point"] == ["after_send"]


@pytest.mark.parametrize("point", CRASH_AFTER)
def test_a_crash_after_a_step_stops_the_plan_there(point: str) -> None:
    world = World(crash_at=point)
    assert not Plan(world, _full_batch()).run()
    done = {"after_persist": ["write", "write"],
            "after_results": ["write", "write", "put_results", "fire"],
            "after_send": ["write", "write", "put_results", "fire", "publish"],
            "after_ack": ["write", "write", "put_results", "fire", "publish", "ack"]}[point]
    assert world.kinds() == done


def test_a_refused_write_stops_before_anything_leaves() -> None:
    world = World()
    world.write_errors.append(StaleEpoch(3, 5))
    assert not Plan(world, _full_batch()).run()
    assert world.kinds() == ["fenced"]
    assert ("record", "stale_write_refused", {"epoch": 3, "current": 5}) in world.calls


def test_a_plan_stopped_by_the_store_resumes_where_it_stopped() -> None:
    world = World()
    plan = Plan(world, _full_batch())
    world.write_errors.append(StoreUnavailable("cut"))
    assert not plan.run()
    assert world.kinds() == ["store_failed"]
    world.calls.clear()
    assert plan.run()
    assert world.kinds()[:4] == ["write", "write", "put_results", "fire"]


def test_a_write_batch_applied_before_the_store_failed_is_not_applied_again() -> None:
    world = World()
    plan = Plan(world, _full_batch())
    real_write = world.write
    calls = {"n": 0}

    def second_fails(writes: Sequence[Write], epoch: int) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise StoreUnavailable("cut")
        return real_write(writes, epoch)

    world.write = second_fails  # type: ignore[method-assign]
    assert not plan.run()
    assert plan.run()
    assert [c for c in world.calls if c[0] == "write"] == [("write", 3, 2), ("write", 4, 1)]


def test_an_exit_acks_none_of_the_batchs_deliveries_and_sends_no_defers() -> None:
    world = World()
    fx = Effects()
    fx.exit = "lost the lease"
    fx.acks.append(DeliveryRef(4))
    deferred = Effects()
    deferred.defer_ms = 10
    assert not Plan(world, [(fx, "d1"), (deferred, "d2")]).run()
    assert ("publish", [], []) in world.calls
    assert ("ack", ["held-4"]) in world.calls
    assert world.calls[-1] == ("exit", "lost the lease")


def test_a_deferred_delivery_is_sent_again_and_acked() -> None:
    world = World()
    fx = Effects()
    fx.defer_ms = 10
    held = Effects()
    held.hold = True
    assert Plan(world, [(fx, "d1"), (held, "d2")]).run()
    assert ("publish", [], [("d1", 10)]) in world.calls
    assert ("ack", ["d1"]) in world.calls


@pytest.mark.parametrize(("accepted", "current"), [(5, {"current": 5}), (None, {}),
                                                   (True, {})])
def test_persist_records_the_epoch_the_store_accepted_at(
    accepted: object, current: dict[str, int],
) -> None:
    world = World(accepted=accepted)
    fx = Effects(epoch=5)
    fx.writes.append(_put("t1"))
    assert Plan(world, [(fx, None)]).run()
    assert ("record", "persist", {"epoch": 5, "writes": 1, **current}) in world.calls


def test_an_execution_that_ends_the_node_stops_the_local_step() -> None:
    world = World()
    fx = Effects()
    fx.executions += [Execution(ref="a", task_actor=None, input=None),  # type: ignore[arg-type]
                      Execution(ref="b", task_actor=None, input=None)]  # type: ignore[arg-type]
    fx.subscribe.append("q")
    real_execute = world.execute

    def dies(execution: Execution) -> None:
        real_execute(execution)
        world.dead = True

    world.execute = dies  # type: ignore[method-assign]
    assert not Plan(world, [(fx, None)]).run()
    assert world.kinds()[-1] == "execute" and ("execute", "b") not in world.calls
