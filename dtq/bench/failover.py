"""Failover and reassignment times on real processes, read from the recorded history.

* failover: SIGKILL the leader (found through the lease) while a trickle of tasks flows; the
  time from the kill (wall clock, `time.time()`) to the new leader's first `dispatched` event
  (the history's wall-clock `time_ms`).
* reassignment after a worker SIGKILL: the time until the task it held is `started` by another
  worker (RabbitMQ hands the unacked dispatch on as soon as the connection drops).
* reassignment after a worker SIGSTOP: the time until the leader's detector gives up on the
  worker and records `reassigned` for its task (bounded by the detector timeout). The worker
  is frozen once the leader's record shows the task running on it.

Trials run one after another in a single cluster; the victim comes back before the next one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dtq.bench.cluster import Cluster, HistoryTail, Trickle, dtq_cluster
from dtq.bench.common import await_value, summary
from dtq.client.submitter import Submitter
from dtq.history import Event
from dtq.task import TERMINAL, TaskSpec
from dtq.task import TaskState as S

TRIAL_TIMEOUT_S = 30.0


def _now_ms() -> float:
    return time.time() * 1000


def _is(kind: str, *, actor: str | None = None, not_actor: str | None = None,
        task: str | None = None, since_ms: float = 0) -> Callable[[Event], bool]:
    return lambda e: (e.kind == kind and e.time_ms >= since_ms
                      and (actor is None or e.actor == actor)
                      and (not_actor is None or e.actor != not_actor)
                      and (task is None or e.data.get("task") == task))


# --- failover -------------------------------------------------------------------------------


def failover(trials: int = 20, lease_ttl_ms: int = 2000) -> dict[str, Any]:
    """Kill the leader `trials` times; the killed coordinator comes back as a standby."""
    with dtq_cluster("failover", coordinators=2, workers=1, history=True,
                     lease_ttl_ms=lease_ttl_ms, concurrency=8) as c:
        assert c.history is not None
        tail = HistoryTail(c.history)
        for name in c.coordinators():
            tail.wait(_is("coordinator_started", actor=name), 60, f"{name} to start", c.sup.poll)
        sub = c.submitter()
        try:
            with Trickle(sub):
                samples = [_failover_trial(c, tail) for _ in range(trials)]
        finally:
            sub.close()
    takeover = [s[0] for s in samples]
    dispatch = [s[1] for s in samples]
    return {"trials": trials, "lease_ttl_ms": lease_ttl_ms, "samples_ms": dispatch,
            "takeover": summary(takeover), **summary(dispatch)}


def _failover_trial(c: Cluster, tail: HistoryTail) -> tuple[float, float]:
    """(kill -> new leader elected, kill -> its first dispatch), in ms."""
    old = await_value(c.leader, TRIAL_TIMEOUT_S, "a leader", c.sup.poll)
    tail.wait(_is("dispatched", actor=old), TRIAL_TIMEOUT_S, f"{old} to dispatch", c.sup.poll,
              start=max(0, len(tail.events) - 1000))
    start = len(tail.events)
    killed_ms = _now_ms()
    c.sup.kill(old)
    took = tail.wait(_is("leader", not_actor=old, since_ms=killed_ms), TRIAL_TIMEOUT_S,
                     "a new leader", c.sup.poll, start=start)
    first = tail.wait(_is("dispatched", actor=took.actor, since_ms=killed_ms),
                      TRIAL_TIMEOUT_S, f"{took.actor} to dispatch", c.sup.poll, start=start)
    c.sup.start_node(old)
    tail.wait(_is("coordinator_started", actor=old, since_ms=killed_ms), TRIAL_TIMEOUT_S,
              f"{old} to come back", c.sup.poll, start=start)
    return took.time_ms - killed_ms, first.time_ms - killed_ms


# --- reassignment ---------------------------------------------------------------------------


def reassign(
    trials: int = 20, detector_timeout_ms: int = 1000, heartbeat_ms: int = 200,
    sleep_ms: int = 1500,
) -> dict[str, Any]:
    """Worker SIGKILL and worker SIGSTOP trials in one cluster of 3 single-slot workers."""
    with dtq_cluster("reassign", workers=3, history=True, concurrency=1,
                     detector_timeout_ms=detector_timeout_ms, heartbeat_ms=heartbeat_ms) as c:
        assert c.history is not None
        tail = HistoryTail(c.history)
        for name in c.workers():
            tail.wait(_is("worker_started", actor=name), 60, f"{name} to start", c.sup.poll)
        sub = c.submitter()
        try:
            killed = [_held_task(c, tail, sub, f"kill-{i}", sleep_ms, _kill_trial)
                      for i in range(trials)]
            paused = [_held_task(c, tail, sub, f"pause-{i}", sleep_ms, _pause_trial)
                      for i in range(trials)]
        finally:
            sub.close()
    return {"trials": trials, "detector_timeout_ms": detector_timeout_ms,
            "heartbeat_ms": heartbeat_ms,
            "kill": {"samples_ms": killed, **summary(killed)},
            "pause": {"samples_ms": paused, **summary(paused)}}


Trial = Callable[[Cluster, HistoryTail, str, str], float]


def _held_task(
    c: Cluster, tail: HistoryTail, sub: Submitter, task: str, sleep_ms: int, trial: Trial,
) -> float:
    """Submit a sleeping task, run `trial` on the worker that started it, wait for the task to
    end (so the next trial finds free workers); the trial's sample in ms."""
    start = len(tail.events)
    sub.submit([TaskSpec(id=task, type="sleep", payload={"ms": sleep_ms})])
    ev = tail.wait(_is("started", task=task), TRIAL_TIMEOUT_S, f"{task} to start", c.sup.poll,
                   start=start)
    sample = trial(c, tail, task, ev.actor)
    _await_done(c, task)
    return sample


def _kill_trial(c: Cluster, tail: HistoryTail, task: str, worker: str) -> float:
    start = len(tail.events)
    killed_ms = _now_ms()
    c.sup.kill(worker)
    moved = tail.wait(lambda e: e.kind in ("started", "already_done") and e.actor != worker
                      and e.data.get("task") == task and e.time_ms >= killed_ms,
                      TRIAL_TIMEOUT_S, f"{task} to start elsewhere", c.sup.poll, start=start)
    c.sup.start_node(worker)
    tail.wait(_is("worker_started", actor=worker, since_ms=killed_ms), TRIAL_TIMEOUT_S,
              f"{worker} to come back", c.sup.poll, start=start)
    return moved.time_ms - killed_ms


def _pause_trial(c: Cluster, tail: HistoryTail, task: str, worker: str) -> float:
    # Freeze the worker only once the leader knows it runs the task (starts reach the leader
    # with the next heartbeat); a worker frozen before that is the broker's to notice.
    _await_running_on(c, task, worker)
    start = len(tail.events)
    paused_ms = _now_ms()
    c.sup.pause(worker)
    try:
        moved = tail.wait(_is("reassigned", task=task, since_ms=paused_ms), TRIAL_TIMEOUT_S,
                          f"{task} to be reassigned", c.sup.poll, start=start)
    finally:
        c.sup.resume(worker)
    tail.wait(lambda e: e.kind == "worker_rejoined" and e.data.get("worker") == worker
              and e.time_ms >= paused_ms, TRIAL_TIMEOUT_S, f"{worker} to rejoin", c.sup.poll,
              start=start)
    return moved.time_ms - paused_ms


def _await_running_on(c: Cluster, task: str, worker: str) -> None:
    def running() -> bool | None:
        rec = c.store.get_task(task)
        return True if rec is not None and rec.state is S.RUNNING and rec.worker == worker \
            else None

    await_value(running, TRIAL_TIMEOUT_S, f"the leader to see {task} running on {worker}",
                c.sup.poll)


def _await_done(c: Cluster, task: str) -> None:
    def done() -> bool | None:
        rec = c.store.get_task(task)
        return True if rec is not None and rec.state in TERMINAL else None

    await_value(done, TRIAL_TIMEOUT_S, f"{task} to finish", c.sup.poll)
