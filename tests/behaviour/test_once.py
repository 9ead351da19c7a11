"""`ctx.once` under crashes inside its window, on the simulator and on real processes.

The guarantee: a task never ends succeeded while one of its once-effects did not run, and a
once-effect recorded done never runs again. The simulator crashes nodes at the task crash points
(`dtq.taskrun.CRASH_POINTS`); a real worker process kills itself at one (`DTQ_CRASH_AT`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dtq.client.submitter import Submitter
from dtq.history import Event
from dtq.runtime.process import NodeConfig, Supervisor
from dtq.scenario.model import load
from dtq.scenario.real import wait_for
from dtq.scenario.sim import run_memory
from dtq.store import OnceState
from dtq.task import TaskSpec, TaskState
from dtq.taskrun import CRASH_POINTS
from tests.simkit import events, make_sim, run_until_done, spec
from transports.memory import CrashPoints, SimStore, Simulation
from transports.redis import RedisHistory, RedisStore

ROOT = Path(__file__).resolve().parents[2]
TASKS = 10
"""io writes, each with 10 attempts: a worker that crashes and restarts loses its task's attempt
(the leader hands it on), and crashes at 30% per point can take several in a row."""


def _submit_writes(sim: Simulation) -> None:
    for n in range(1, TASKS + 1):
        sim.submit(spec(n, type="io", payload={"op": "write", "path": f"/out/{n}.txt",
                                               "data": f"data {n}"}, max_attempts=10))


def _problems(sim: Simulation) -> list[str]:
    """Succeeded tasks whose write is missing; once-effects run after they were done."""
    out = []
    for e in events(sim, "succeeded"):
        n = int(e.data["task"].rsplit("-", 1)[1])
        if sim.io.files.get(f"/out/{n}.txt") != f"data {n}".encode():
            out.append(f"{e.data['task']} succeeded without its write")
    done: set[str] = set()
    for e in sim.history.events:
        if e.kind == "once_done":
            done.add(e.data["key"])
        elif e.kind == "side_effect" and e.data["key"] in done:
            out.append(f"{e.data['key']} ran after it was done")
    return out


def _run(seed: int, point: str, store: SimStore | None = None) -> Simulation:
    sim = make_sim(seed, workers=2, store=store, crash_points=CrashPoints(**{point: 0.3}))
    _submit_writes(sim)
    run_until_done(sim, TASKS, deadline_ms=120_000)
    return sim


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crashes_inside_the_once_window_lose_no_effect_and_redo_none_done(point: str) -> None:
    crashes = 0
    for seed in range(10):
        sim = _run(seed, point)
        result = run_until_done(sim, TASKS)
        assert result.ok, f"{result.violations}\nreproduce: seed {seed}, point {point}"
        assert result.counts.succeeded == TASKS
        assert _problems(sim) == [], f"seed {seed}"
        assert result.once.lost == result.once.doubled == 0
        crashes += len(events(sim, "crash", reason=f"injected crash {point}"))
    assert crashes >= 5  # the window was hit, not just passed through


def test_a_crash_between_fn_and_the_done_marker_redoes_the_effect_in_doubt() -> None:
    sim = _run(3, "once_after_fn")
    redone = [e for e in events(sim, "side_effect") if e.data["in_doubt"]]
    assert redone, "no in-doubt redo in this seed"
    for e in redone:
        begun = events(sim, "once_begin", key=e.data["key"])
        assert [b.data["in_doubt"] for b in begun][:2] == [False, True]
    assert run_until_done(sim, TASKS).once.in_doubt_redos == len(redone)


class MarkerIsDone(SimStore):
    """The bug this fixes: a begun marker counts as done, so a redelivery skips the effect."""

    def once_begin(self, key: str, owner: str) -> OnceState:
        return "done" if key in self.once_marks else super().once_begin(key, owner)


class DoneIsForgotten(SimStore):
    """A store that loses done markers: an effect recorded done runs again."""

    def once_begin(self, key: str, owner: str) -> OnceState:
        self.once_marks.pop(key, None)
        return super().once_begin(key, owner)


@pytest.mark.parametrize(("store", "point", "found"), [
    (MarkerIsDone, "once_before_fn", "succeeded without its write"),
    (DoneIsForgotten, "before_result", "ran after it was done"),
])
def test_the_checks_catch_a_once_that_loses_or_redoes_effects(
    store: type[SimStore], point: str, found: str,
) -> None:
    caught = []
    for seed in range(10):
        sim = _run(seed, point, store())
        result = run_until_done(sim, TASKS)
        caught += [p for p in _problems(sim) if found in p]
        if caught:
            assert not result.ok  # the checker sees it too
            break
    assert caught


@pytest.mark.parametrize(("store", "invariant"), [(MarkerIsDone, "once_lost"),
                                                  (DoneIsForgotten, "once_doubled")])
def test_the_once_window_scenario_catches_a_broken_once(
    store: type[SimStore], invariant: str,
) -> None:
    scenario = load(ROOT / "scenarios" / "once-window.toml")
    assert run_memory(scenario, 1).summary["ok"]
    for seed in range(1, 6):
        summary = run_memory(scenario, seed, store=store()).summary
        if any(v["invariant"] == invariant for v in summary["violations"]):
            return
    pytest.fail(f"no seed of 1-5 caught {invariant}")


# -- real processes --------------------------------------------------------------------------

def _key_events(history: list[Event], key: str, kind: str) -> list[Event]:
    return [e for e in history if e.kind == kind and e.data.get("key") == key]


@pytest.mark.rabbitmq
@pytest.mark.parametrize(("point", "begun", "ran", "skipped"), [
    ("once_before_fn", [False, True], [True], 0),
    ("once_after_fn", [False, True], [False, True], 0),
    ("before_result", [False], [False], 1),
    ("after_results", [False], [False], 0),
])
def test_a_worker_killed_inside_the_once_window_still_writes(
    point: str, begun: list[bool], ran: list[bool], skipped: int, real_namespace: str,
    rabbitmq_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker SIGKILLs itself at `point` the first time (DTQ_CRASH_AT, with a flag file);
    the broker hands the dispatch back (and the leader, seeing the worker restarted, may hand
    the task on as a new attempt). Killed inside the once window, the restarted worker finds the
    marker begun and never done and writes (again, in doubt); killed after the done marker but
    before the result write, it runs the task again and skips the write; killed after the result
    write, it finds the result stored and runs nothing. The task succeeds with its file."""
    flag = tmp_path / "crashed"
    monkeypatch.setenv("DTQ_CRASH_AT", f"{point}@{flag}")
    common = {"broker_url": rabbitmq_url, "store_url": redis_url, "namespace": real_namespace,
              "history": True, "log_level": "warning", "io_root": str(tmp_path / "io")}
    # One task at a time: the broker's redelivery and the leader's new attempt then run one
    # after the other, so the later finds the earlier's markers and the sequences below are
    # exact. At the default concurrency both may run at once, each beginning in doubt.
    sup = Supervisor([NodeConfig(role="coordinator", name="coordinator-1", **common),
                      NodeConfig(role="worker", name="worker-1", concurrency=1, **common)])
    store = RedisStore.from_url(redis_url, prefix=real_namespace)
    submitter = Submitter(rabbitmq_url, namespace=real_namespace)
    sup.start()
    try:
        wait_for(lambda: store.lease("coordinator") is not None, 30, "a leader", sup.poll)
        submitter.submit([TaskSpec(id="w1", type="io",
                                   payload={"op": "write", "path": "out.txt", "data": "hello"})])

        def ended() -> bool:
            rec = store.get_task("w1")
            return rec is not None and rec.state in (TaskState.SUCCEEDED, TaskState.FAILED)

        wait_for(ended, 60, "the task's end", sup.poll)
        rec = store.get_task("w1")
        assert rec is not None and rec.state is TaskState.SUCCEEDED, rec
        assert flag.exists()  # the worker did die at the point
        assert (tmp_path / "io" / "out.txt").read_bytes() == b"hello"
        history = RedisHistory.from_url(redis_url, prefix=real_namespace).read_events()
        key = "w1:write:out.txt"
        assert [e.data["in_doubt"] for e in _key_events(history, key, "once_begin")] == begun
        assert [e.data["in_doubt"] for e in _key_events(history, key, "side_effect")] == ran
        [done] = _key_events(history, key, "once_done")
        skips = _key_events(history, key, "once_skipped")  # a second attempt may run too
        assert len(skips) >= skipped and all(e.seq > done.seq for e in skips)
        assert all(e.seq < done.seq for e in _key_events(history, key, "side_effect"))
    finally:
        submitter.close()
        sup.stop_all()
        store.close()
