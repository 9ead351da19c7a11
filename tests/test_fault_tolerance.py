"""Fault tolerance on both backends: a hung worker's task finishes elsewhere and its late result
is refused; a zombie leader's stale writes are all refused; a killed leader is replaced."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dtq.realrun import run_real
from dtq.runner import RunResult, run_memory
from dtq.scenario import load

ROOT = Path(__file__).resolve().parent.parent
Run = Callable[[str], RunResult]


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def run(request: pytest.FixtureRequest) -> Run:
    if request.param == "rabbitmq":
        request.getfixturevalue("rabbitmq_url")
        return lambda name: run_real(load(ROOT / "scenarios" / name), live=False)
    return lambda name: run_memory(load(ROOT / "scenarios" / name))


def _ok(result: RunResult) -> dict[str, object]:
    s = result.summary
    assert s["ok"], f"{s['violations']}\nreproduce: dtq scenario run scenarios/" \
                    f"{s['scenario']}.toml --transport {s['transport']} --seed {s['seed']}"
    return s


def test_a_frozen_worker_task_finishes_elsewhere_and_its_late_result_is_refused(run: Run) -> None:
    result = run("worker-hang.toml")
    s = _ok(result)
    assert s["tasks"]["duplicated"] == 0 and s["tasks"]["succeeded"] == 4
    ev = result.events
    paused = next(e for e in ev if e.kind == "pause" and e.actor == "worker-1")
    held = {e.data["task"] for e in ev if e.kind == "started" and e.actor == "worker-1"
            and e.time_ms <= paused.time_ms}
    assert held, "worker-1 held no task when it was frozen"
    for task in held:
        assert any(e.kind == "reassigned" and e.data["task"] == task for e in ev)
        [effect] = [e for e in ev if e.kind == "effect" and e.data["task"] == task]
        assert effect.actor != "worker-1"
    refused = {e.data["task"] for e in ev if e.actor == "worker-1"
               and e.kind in ("late_result_refused", "duplicate_refused")}
    assert held <= refused, "the frozen worker's late result was not refused"
    assert s["reassign_ms"] and max(s["reassign_ms"]) <= 2000  # detector timeout + 1 s


def test_a_zombie_leaders_stale_writes_are_all_refused(run: Run) -> None:
    s = _ok(run("zombie-leader.toml"))
    assert s["stale_writes"]["attempted"] > 0
    assert s["stale_writes"]["accepted"] == 0
    assert [x["epoch"] for x in s["leaders"]][:2] == [1, 2]


def test_a_killed_leader_is_replaced_within_the_bound(run: Run) -> None:
    s = _ok(run("leader-crash.toml"))
    assert len(s["leaders"]) >= 2 and s["failover_ms"]
    assert max(s["failover_ms"]) <= 3000
