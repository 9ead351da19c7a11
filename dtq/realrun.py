"""Running scenarios on real processes over RabbitMQ and Redis.

Every run gets its own namespace (queues and keys), so runs never collide and leave nothing
behind. The runner starts the nodes under a `Supervisor`, waits for a leader and for the
workers, plays submissions and faults on the wall clock, waits until every task has finished
(or the deadline), lets the run settle, stops the nodes, reads the history every process
recorded in Redis, and checks it with the same checker as the simulator.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import random
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from dtq.errors import ScenarioError
from dtq.process import NodeConfig, Supervisor, broker_url, store_url
from dtq.runner import (
    RunResult,
    check_supported,
    coordinator_names,
    summarize,
    worker_names,
)
from dtq.scenario import FaultSpec, Scenario
from dtq.store import LEADER_LEASE
from dtq.submitter import Submitter
from dtq.task import TERMINAL
from dtq.workload import plan
from transports.rabbitmq import close_connections, delete_namespace
from transports.redis import RedisHistory, RedisStore

NEEDS_PROXY = {"partition", "heal", "latency", "bandwidth", "slicer", "reset_peer", "drop",
               "duplicate", "reorder"}
POLL_S = 0.02


def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str,
    tick: Callable[[], object] = lambda: None,
) -> None:
    """Poll `condition` until it holds; raise `ScenarioError` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        tick()
        if time.monotonic() > deadline:
            raise ScenarioError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(POLL_S)


def _reached(monotonic_s: float) -> Callable[[], bool]:
    return lambda: time.monotonic() >= monotonic_s


class RealRun:
    def __init__(self, scenario: Scenario, seed: int, *, live: bool) -> None:
        self.scenario = scenario
        self.seed = seed
        self.live = live
        self.rng = random.Random(seed)
        self.namespace = f"dtq-run-{scenario.name}-{uuid.uuid4().hex[:8]}"
        self.broker = broker_url()
        self.store_url = store_url()
        self.store = RedisStore.from_url(self.store_url, prefix=self.namespace)
        self.history = RedisHistory.from_url(self.store_url, prefix=self.namespace)
        self.names = coordinator_names(scenario) + worker_names(scenario)
        self.supervisor = Supervisor(self._configs())
        self.submitter: Submitter | None = None
        self._order = itertools.count()

    def _configs(self) -> list[NodeConfig]:
        c = self.scenario.cluster
        common: dict[str, Any] = {"broker_url": self.broker, "store_url": self.store_url,
                                  "namespace": self.namespace, "history": True,
                                  "lease_ttl_ms": c.lease_ttl_ms, "task_modules": c.task_modules,
                                  "log_level": "warning"}
        return ([NodeConfig(role="coordinator", name=n, **common)
                 for n in coordinator_names(self.scenario)]
                + [NodeConfig(role="worker", name=n, concurrency=c.worker_prefetch, **common)
                   for n in worker_names(self.scenario)])

    def run(self) -> RunResult:
        started = time.perf_counter()
        try:
            self._play()
        finally:
            self.supervisor.stop_all()
            if self.submitter is not None:
                self.submitter.close()
        events = self.history.read_events()
        wall_ms = int((time.perf_counter() - started) * 1000)
        summary = summarize(self.scenario, "rabbitmq", self.seed, events,
                            virtual_ms=self.elapsed_ms, wall_ms=wall_ms)
        self._clean_up()
        return RunResult(summary=summary, events=events)

    def _play(self) -> None:
        self.supervisor.start()
        workers = worker_names(self.scenario)
        wait_for(lambda: self.store.lease(LEADER_LEASE) is not None, 60, "a leader",
                 self.supervisor.poll)
        wait_for(lambda: self._started(workers), 60, "the workers", self.supervisor.poll)
        self.submitter = Submitter(self.broker, namespace=self.namespace,
                                   record=self.history.record)
        planned = plan(self.scenario, self.seed)
        self._timeline: list[tuple[int, int, Callable[[], None]]] = []
        by_time: dict[int, list[Any]] = {}
        for p in planned:
            by_time.setdefault(p.at_ms, []).append(p.spec)
        for at_ms, specs in by_time.items():
            self._at(at_ms, functools.partial(self._submit, specs))
        for f in self.scenario.faults:
            self._at(f.at_ms, functools.partial(self._fault, f))
        self.t0 = time.monotonic()
        self._play_timeline()
        deadline_s = self.scenario.expect.deadline_ms / 1000
        remaining = max(1.0, deadline_s - (time.monotonic() - self.t0))
        with contextlib.suppress(ScenarioError):  # the checker reports what is missing as lost
            wait_for(lambda: self._finished() >= len(planned), remaining,
                     "every task to finish", self._progress(len(planned)))
        self.elapsed_ms = int((time.monotonic() - self.t0) * 1000)
        wait_for(_reached(time.monotonic() + self.scenario.expect.settle_ms / 1000), 60,
                 "the settle period", self.supervisor.poll)
        self.history.flush()

    def _at(self, at_ms: int, action: Callable[[], None]) -> None:
        heapq.heappush(self._timeline, (at_ms, next(self._order), action))

    def _play_timeline(self) -> None:
        """Play submissions and faults in time order (a fault may schedule its own undo)."""
        while self._timeline:
            at_ms, _, action = heapq.heappop(self._timeline)
            wait_for(_reached(self.t0 + at_ms / 1000), at_ms / 1000 + 60,
                     "the next timeline step", self.supervisor.poll)
            action()

    def _submit(self, specs: list[Any]) -> None:
        assert self.submitter is not None
        self.submitter.submit(specs)

    def _started(self, workers: list[str]) -> bool:
        seen = {e.actor for e in self.history.read_events() if e.kind == "worker_started"}
        return all(w in seen for w in workers)

    def _finished(self) -> int:
        count, after = 0, None
        while batch := self.store.scan_tasks(states=TERMINAL, after=after, limit=1000):
            count += len(batch)
            after = batch[-1].id
        return count

    def _progress(self, total: int) -> Callable[[], None]:
        last = [0.0]

        def tick() -> None:
            self.supervisor.poll()
            if self.live and time.monotonic() - last[0] > 1.0:
                last[0] = time.monotonic()
                print(f"  … {self._finished()}/{total} tasks done", file=sys.stderr)

        return tick

    # --- faults -----------------------------------------------------------------------------

    def _targets(self, target: str | None) -> list[str]:
        workers = worker_names(self.scenario)
        coords = coordinator_names(self.scenario)
        lease = self.store.lease(LEADER_LEASE)
        leader = lease.holder if lease else None
        roles: dict[str, list[str]] = {
            "leader": [leader] if leader else [],
            "standby": [c for c in coords if c != leader][:1],
            "any-worker": [self.rng.choice(workers)],
            "all-workers": workers,
            "any-coordinator": [self.rng.choice(coords)],
        }
        if target is None:
            return []
        if target in roles:
            return roles[target]
        if target in self.names:
            return [target]
        raise ScenarioError(f"unknown fault target {target!r}")

    def _fault(self, f: FaultSpec) -> None:
        targets = self._targets(f.target)
        if self.live:
            print(f"  fault at {f.at_ms} ms: {f.action} {', '.join(targets)}", file=sys.stderr)
        from dtq.clock import VectorClock

        self.history.record("runner", "fault", VectorClock(),
                            {"action": f.action, "targets": targets,
                             "duration_ms": f.duration_ms})
        sup = self.supervisor
        if f.action in ("kill", "crash"):
            for t in targets:
                self.history.record(t, "crash", VectorClock(), {"reason": "killed by scenario"})
                sup.kill(t)
            undo = [functools.partial(sup.restart, t) for t in targets]
        elif f.action == "pause":
            for t in targets:
                self.history.record(t, "pause", VectorClock(), {})
                sup.pause(t)
            undo = [functools.partial(sup.resume, t) for t in targets]
        elif f.action == "resume":
            undo = []
            for t in targets:
                sup.resume(t)
        elif f.action == "drop_connection":
            undo = []
            closed = close_connections(self.namespace, targets or None)
            self.history.record("runner", "connections_closed", VectorClock(), {"count": closed})
        elif f.action == "restart":
            undo = []
            for t in targets:
                sup.restart(t)
        else:
            raise ScenarioError(f"fault action {f.action!r} is not supported here")
        if f.duration_ms:
            for fn in undo:
                self._at(f.at_ms + f.duration_ms, fn)

    def _clean_up(self) -> None:
        try:
            self.store.delete_all()
            delete_namespace(self.broker, self.namespace, [*self.names, "client"])
        finally:
            self.store.close()
            self.history.close()


def run_real(scenario: Scenario, seed: int | None = None, *, live: bool = True) -> RunResult:
    check_supported(scenario, NEEDS_PROXY, "rabbitmq")
    return RealRun(scenario, scenario.seed if seed is None else seed, live=live).run()
