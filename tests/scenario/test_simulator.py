"""The simulator and the basic flow under faults: crashes, pauses, partitions, crash points."""

from __future__ import annotations

import itertools
import time

import pytest

from dtq.errors import StaleEpoch
from dtq.store import Write
from transports.memory import CrashPoints, SimStore

from ..simkit import events, make_sim, run_until_done, spec


def test_basic_flow_records_every_step() -> None:
    sim = make_sim()
    sim.submit(spec(1))
    result = run_until_done(sim, 1)
    assert result.ok and result.counts.succeeded == 1
    kinds = [e.kind for e in sim.history.events if e.data.get("task") == "task-00001"]
    assert kinds == ["submit", "accepted", "dispatched", "started", "effect", "succeeded"]
    assert sim.store.get_result("task-00001").value == {"message": "Message 1"}


def test_events_carry_happens_before_clocks() -> None:
    sim = make_sim()
    sim.submit(spec(1))
    run_until_done(sim, 1)
    chain = [events(sim, k, task="task-00001")[0] for k in
             ("submit", "accepted", "dispatched", "started", "effect", "succeeded")]
    for earlier, later in itertools.pairwise(chain):
        assert earlier.clock.before(later.clock), (earlier.kind, later.kind)


def test_a_crashed_worker_tasks_finish_elsewhere() -> None:
    sim = make_sim(workers=2)
    sim.submit(spec(1, type="sleep", payload={"ms": 500}))
    sim.run(until_ms=100)
    [started] = events(sim, "started")
    sim.crash(started.actor)
    result = run_until_done(sim, 1)
    assert result.ok
    other = [e.actor for e in events(sim, "started")]
    assert other[0] == started.actor and other[1] != started.actor


def test_a_paused_worker_loses_its_task_and_its_late_result_is_refused() -> None:
    sim = make_sim(workers=2, broker_heartbeat_ms=200)
    sim.submit(spec(1, type="sleep", payload={"ms": 100}))
    sim.run(until_ms=10)
    [started] = events(sim, "started")
    sim.pause(started.actor)
    sim.run(until_ms=1000)
    sim.resume(started.actor)
    result = run_until_done(sim, 1)
    assert result.ok and result.counts.duplicated == 0
    assert len(events(sim, "effect")) == 1
    assert len(events(sim, "started")) == 2
    assert events(sim, "connection_closed")


def test_partition_from_the_broker_delays_but_loses_nothing() -> None:
    sim = make_sim(workers=2, broker_heartbeat_ms=100)
    sim.partition(["worker-1"], ["broker"])
    for n in range(1, 7):
        sim.submit(spec(n))
    sim.run(until_ms=500)
    sim.heal()
    result = run_until_done(sim, 6)
    assert result.ok and result.counts.succeeded == 6


def test_partition_between_groups_blocks_messages_until_healed() -> None:
    sim = make_sim(workers=1)
    sim.partition(["workers"], ["coordinators"])
    sim.submit(spec(1))
    sim.run(until_ms=2000)
    assert not events(sim, "succeeded")
    sim.heal()
    assert run_until_done(sim, 1).ok


def test_cut_from_the_store_a_worker_crashes_and_comes_back() -> None:
    sim = make_sim(workers=1)
    sim.partition(["worker-1"], ["store"])
    sim.submit(spec(1))
    sim.run(until_ms=300)
    assert any(e.kind == "crash" and "store" in e.data["reason"] for e in sim.history.events)
    sim.heal()
    assert run_until_done(sim, 1).ok


class RefusingStore(SimStore):
    def apply(self, writes: list[Write], *, epoch: int, lease: str = "coordinator") -> None:
        raise StaleEpoch(epoch, epoch + 1)


def test_refused_writes_mean_no_sends_and_no_ack() -> None:
    sim = make_sim(workers=1, store=RefusingStore())
    sim.submit(spec(1))
    sim.run(until_ms=5000)
    assert not events(sim, "started")  # the dispatch was never published
    assert events(sim, "stale_write_refused")
    assert sim.queues["coordinator"].ready or sim.nodes["coordinator-1"].unacked is not None


@pytest.mark.parametrize("seed", range(40))
def test_crashes_between_effect_steps_lose_nothing(seed: int) -> None:
    sim = make_sim(seed, workers=2, coordinators=2,
                   crash_points=CrashPoints(after_persist=0.05, after_send=0.05))
    for n in range(1, 11):
        sim.submit(spec(n))
    result = run_until_done(sim, 10, deadline_ms=120_000)
    assert result.ok, f"{result.violations}\nreproduce: seed {seed} of {__name__}"
    assert result.counts.duplicated == 0


def test_leader_crash_a_standby_takes_over() -> None:
    sim = make_sim(workers=2, coordinators=2)
    for n in range(1, 5):
        sim.submit(spec(n, type="sleep", payload={"ms": 200}))
    sim.run(until_ms=50)
    sim.crash("coordinator-1")
    for n in range(5, 9):
        sim.submit(spec(n))
    result = run_until_done(sim, 8)
    assert result.ok and result.counts.succeeded == 8
    assert [a for _, a in result.leaders] == ["coordinator-1", "coordinator-2"]


def test_sleep_advances_virtual_time_not_wall_time() -> None:
    sim = make_sim(workers=1)
    sim.submit(spec(1, type="sleep", payload={"ms": 3_600_000}, timeout_ms=7_200_000))
    started = time.perf_counter()
    result = run_until_done(sim, 1, deadline_ms=10_000_000)
    assert result.ok
    assert sim.now_ms >= 3_600_000
    assert time.perf_counter() - started < 30  # an hour of virtual time, not of wall time


def test_timeouts_fail_the_attempt_and_retries_run_out() -> None:
    sim = make_sim(workers=1)
    sim.submit(spec(1, type="sleep", payload={"ms": 1000}, timeout_ms=100, max_attempts=2))
    result = run_until_done(sim, 1)
    assert result.counts.failed == 1
    [failed] = events(sim, "failed")
    assert "timed out after 100 ms" in failed.data["reason"]
    assert len(events(sim, "attempt_failed")) == 2


def test_retries_with_backoff_then_success() -> None:
    sim = make_sim(workers=2, modules=("tests.fixtures.usertasks",))
    sim.submit(spec(1, type="flaky", payload={"fail_until": 3}, max_attempts=3))
    result = run_until_done(sim, 1)
    assert result.ok and result.counts.succeeded == 1 and result.counts.recovered == 1
    delays = [e.data["delay_ms"] for e in events(sim, "retry_scheduled")]
    assert len(delays) == 2 and 50 <= delays[0] <= 100 and 100 <= delays[1] <= 200


def test_user_task_types_and_unknown_types() -> None:
    sim = make_sim(workers=1, modules=("tests.fixtures.usertasks",))
    sim.submit(spec(1, type="reverse", payload={"text": "abc"}))
    sim.submit(spec(2, type="nope", payload={}, max_attempts=1))
    result = run_until_done(sim, 2)
    assert sim.store.get_result("task-00001").value == "cba"
    assert result.counts.failed == 1
    assert "unknown task type 'nope'" in events(sim, "failed")[0].data["reason"]


def test_io_tasks_use_the_simulated_world_and_write_once() -> None:
    sim = make_sim(workers=1)
    sim.io.files["/in.txt"] = b"hello"
    sim.io.http["http://example.invalid/x"] = (200, b"body")
    sim.submit(spec(1, type="io", payload={"op": "read", "path": "/in.txt"}))
    sim.submit(spec(2, type="io", payload={"op": "write", "path": "/out.txt", "data": "hi"}))
    sim.submit(spec(3, type="io", payload={"op": "http_get", "url": "http://example.invalid/x"}))
    assert run_until_done(sim, 3).ok
    assert sim.store.get_result("task-00001").value["bytes"] == 5
    assert sim.io.files["/out.txt"] == b"hi"
    assert sim.store.get_result("task-00003").value["status"] == 200
    assert len(events(sim, "side_effect")) == 1


def test_compute_does_real_work() -> None:
    sim = make_sim(workers=1)
    sim.submit(spec(1, type="compute", payload={"size": 1000}))
    assert run_until_done(sim, 1).ok
    import hashlib

    d = b"task-00001"
    for _ in range(1000):
        d = hashlib.sha256(d).digest()
    assert sim.store.get_result("task-00001").value == {"size": 1000, "digest": d.hex()}


def test_priority_orders_the_work_queue() -> None:
    sim = make_sim(workers=1)
    sim.partition(["workers"], ["broker"])
    for n, prio in ((1, 0), (2, 9), (3, 5)):
        sim.submit(spec(n, priority=prio))
    sim.run(until_ms=100)
    sim.heal()
    run_until_done(sim, 3)
    order = [e.data["task"] for e in events(sim, "started")]
    assert order == ["task-00002", "task-00003", "task-00001"]
