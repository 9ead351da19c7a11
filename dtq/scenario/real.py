"""Running scenarios on real processes over RabbitMQ and Redis, faults through proxies.

Every run gets its own namespace (queues, keys and proxy names), so runs never collide and
leave nothing behind. Every node reaches RabbitMQ and Redis through its own two fault proxies
(`dtq.scenario.links`); the runner, the submitter and the history talk to the services directly:
they observe, they are not under test. The runner starts the nodes under a supervisor, waits
for a leader and the workers, plays submissions and faults on the wall clock (a step past the
deadline is never played, as on the simulator), waits until every task has finished and the
timeline is done (or the deadline), lets the run settle, heals every fault, stops the nodes,
reads the history every process recorded in Redis, and checks it with the same checker as the
simulator. Live progress goes to stderr.

On the local cluster testbed (`testbed`: three RabbitMQ nodes, a Redis primary and replica
behind Sentinels) there are no proxies: the nodes use every broker address and the Sentinel URL
(every write waiting for the replica), the namespace's queues are quorum queues, the history
goes to a Redis outside the testbed (`history_url`), and the faults are the services' own (a
broker node killed and restarted, a Sentinel failover, the primary killed), played one after
the other on a thread of their own while the timeline goes on (a promotion or a node's boot
takes seconds). Submissions do not wait for the broker's confirm (a broker node may be failing
over); a run is over only once every one is confirmed.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TextIO

from dtq.client.submitter import Submitter
from dtq.clock import VectorClock
from dtq.envelope import WORK_QUEUE
from dtq.errors import ScenarioError, StoreError
from dtq.poison import injections, record_injection
from dtq.runtime.process import NodeConfig, broker_url, store_url
from dtq.scenario.faults import FAULTS, FaultTarget, Undo, play
from dtq.scenario.links import (
    ProxiedSupervisor,
    ProxyNet,
    Toxic,
    address_of,
    check_simulator_knobs,
    toxic_for,
    with_address,
)
from dtq.scenario.model import FaultSpec, Scenario, finished_records
from dtq.scenario.sim import (
    RunResult,
    all_accepted,
    check_supported,
    coordinator_names,
    worker_names,
)
from dtq.scenario.summary import running_tasks, summarize
from dtq.scenario.workload import Planned, plan
from dtq.store import LEADER_LEASE, PutTask, Store
from dtq.task import TERMINAL
from dtq.testing.testbed import Testbed
from dtq.transport import queue_name
from transports.memory import BROKER, STORE
from transports.rabbitmq import consumer_count, delete_namespace, publish_raw
from transports.redis import RedisHistory, RedisStore, lose_namespace_data
from transports.registry import open_store, require

DEFAULT_HISTORY_URL = "redis://127.0.0.1:6379/0"
"""On the testbed: where the history goes unless told (a Redis outside the testbed, so that the
record of a run outlives the faults it plays on the testbed's Redis)."""
POLL_S = 0.02
COUNT_EVERY_S = 0.1
"""How often the runner counts finished tasks in the store."""


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


class Progress:
    """Live progress on a stream: the phase (starting, electing, running, settling, checking),
    tasks done of the total, and each fault as it fires. On a terminal the status line is
    redrawn in place; elsewhere a line is printed per phase, and at most one a second."""

    def __init__(self, stream: TextIO | None, name: str) -> None:
        self.stream = stream
        self.tty = bool(stream is not None and stream.isatty())
        self.name = name
        self.phase_name = ""
        self.counts = (0, 0)
        self.started = time.monotonic()
        self._drawn_at = 0.0

    def phase(self, name: str) -> None:
        self.phase_name = name
        self._status(force=True)

    def tasks(self, done: int, total: int) -> None:
        changed = (done, total) != self.counts
        self.counts = (done, total)
        if changed or self.tty:
            self._status(force=False)

    def fault(self, at_ms: int, action: str, targets: list[str]) -> None:
        self.line(f"  fault at {at_ms} ms: {action} {', '.join(targets) or 'every node'}")

    def line(self, text: str) -> None:
        if self.stream is None:
            return
        if self.tty:
            self.stream.write(f"\r\x1b[K{text}\n")
            self._status(force=True)
        else:
            self.stream.write(f"{text}\n")

    def close(self) -> None:
        if self.stream is not None and self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _status(self, *, force: bool) -> None:
        now = time.monotonic()
        if self.stream is None or not (force or now - self._drawn_at >= (
                0.25 if self.tty else 1.0)):
            return
        self._drawn_at = now
        done, total = self.counts
        tasks = f": {done}/{total} tasks done" if total else ""
        text = f"[{self.name}] {self.phase_name}{tasks} ({now - self.started:.1f} s)"
        self.stream.write(f"\r\x1b[K{text}" if self.tty else f"{text}\n")
        self.stream.flush()


class RealRun:
    """One run of a scenario on real processes (see the module docstring)."""

    def __init__(
        self, scenario: Scenario, seed: int, *, progress: Progress,
        testbed: Testbed | None = None, history_url: str | None = None,
    ) -> None:
        self.scenario = scenario
        self.seed = seed
        self.progress = progress
        self.rng = random.Random(seed)
        self.namespace = f"dtq-run-{scenario.name}-{uuid.uuid4().hex[:8]}"
        self.testbed = testbed
        if testbed is None:
            self.broker, self.store_url = broker_url(), store_url()
            self.history_url = self.store_url
        else:
            self.broker = ",".join(testbed.layout.broker_urls)
            self.store_url = testbed.layout.durable_store_url
            self.history_url = history_url or DEFAULT_HISTORY_URL
        self.quorum = scenario.cluster.quorum or testbed is not None
        self.store = require(open_store(self.store_url, prefix=self.namespace,
                                        client_name=f"dtq-observer:{self.namespace}"),
                             RedisStore, "a scenario run on rabbitmq")
        self.history = RedisHistory.from_url(self.history_url, prefix=self.namespace)
        self._killed_brokers: list[str] = []
        self._killed_redis: str | None = None
        self._services = {service: ThreadPoolExecutor(max_workers=1,
                                                      thread_name_prefix=f"{service}-fault")
                          for service in (BROKER, STORE)}
        self._service_ops: list[Future[None]] = []
        self._confirm_lock = threading.Lock()
        self._unconfirmed = 0
        self.names = coordinator_names(scenario) + worker_names(scenario)
        self.net: ProxyNet | None = None
        self.supervisor: ProxiedSupervisor | None = None
        self.submitter: Submitter | None = None
        self.timeline: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._exited: set[int] = set()
        self._count: tuple[float, int] = (0.0, 0)
        self.total = 0
        self._injected = 0
        self._toxic_keys = itertools.count()
        self.t0 = time.monotonic()
        self.elapsed_ms = 0

    def run(self) -> RunResult:
        started = time.perf_counter()
        try:
            proxies = contextlib.nullcontext() if self.testbed is not None else ProxyNet(
                self.namespace, {BROKER: address_of(self.broker, 5672),
                                 STORE: address_of(self.store_url, 6379)}, seed=self.seed)
            with proxies as self.net:
                try:
                    self._play()
                finally:
                    self._stop()
            self.progress.phase("checking")
            events = self.history.read_events()
            wall_ms = int((time.perf_counter() - started) * 1000)
            summary = summarize(self.scenario, self.backend, self.seed, events,
                                virtual_ms=self.elapsed_ms, wall_ms=wall_ms)
        finally:
            self._clean_up()
            self.progress.close()
        return RunResult(summary=summary, events=events)

    # --- the run ----------------------------------------------------------------------------

    def _play(self) -> None:
        fill_finished(self.store, self.scenario.store.finished_records)
        self._start_nodes()
        self._schedule(plan(self.scenario, self.seed))
        self.t0 = time.monotonic()
        self.progress.phase("running")
        ex = self.scenario.expect
        self._play_until(self._quiet, ex.deadline_ms, "every task to finish")
        self.elapsed_ms = self._now_ms()
        finished = self._finished(fresh=True)
        self.progress.tasks(finished, self.total)
        if finished >= self.total:  # else the checker reports what is missing as lost
            self.progress.phase("settling")
            self._play_until(lambda: False, min(ex.deadline_ms, self.elapsed_ms + ex.settle_ms),
                             "the settle period")
        self.history.flush()

    def _start_nodes(self) -> None:
        self.progress.phase("starting")
        self.supervisor = ProxiedSupervisor(self._configs(), history_url=self.history_url)
        self.supervisor.start()
        self._network_delay()
        self.progress.phase("electing")
        wait_for(lambda: self.store.lease(LEADER_LEASE) is not None, 60, "a leader", self._watch)
        wait_for(self._workers_started, 60, "the workers", self._watch)
        self.submitter = Submitter(self.broker, namespace=self.namespace,
                                   record=self.history.record, quorum=self.quorum)

    def _play_until(self, done: Callable[[], bool], until_ms: int, what: str) -> None:
        """Play the timeline until `done()` holds or the run reaches `until_ms`. A fault that
        cannot be applied raises; reaching `until_ms` does not."""
        wait_for(lambda: done() or self._now_ms() >= until_ms, until_ms / 1000 + 60, what,
                 self._step)

    def _configs(self) -> list[NodeConfig]:
        c = self.scenario.cluster
        common: dict[str, Any] = {"namespace": self.namespace, "history": True,
                                  "lease_ttl_ms": c.lease_ttl_ms, "task_modules": c.task_modules,
                                  "detector_timeout_ms": c.detector_timeout_ms,
                                  "heartbeat_ms": c.heartbeat_ms, "quorum": self.quorum,
                                  # the history tells what nodes did; their logs would drown
                                  # the progress line (DTQ_LOG_LEVEL=warning shows them)
                                  "log_level": os.environ.get("DTQ_LOG_LEVEL") or "error"}
        workers = set(worker_names(self.scenario))
        configs = []
        for name in self.names:
            broker, store = self.broker, self.store_url
            if self.net is not None:
                links = self.net.add_node(name)
                broker = with_address(self.broker, links[BROKER])
                store = with_address(self.store_url, links[STORE])
            configs.append(NodeConfig(
                role="worker" if name in workers else "coordinator", name=name,
                broker_url=broker, store_url=store,
                concurrency=c.worker_prefetch if name in workers else 1, **common))
        return configs

    def _network_delay(self) -> None:
        """`[network] delay_ms` and `jitter_ms`: every message a node publishes is delayed
        (through the proxies: refused on the testbed)."""
        if self.net is None:
            return
        delay, jitter = (self.scenario.network.get(k, 0) for k in ("delay_ms", "jitter_ms"))
        if (delay or jitter) and self.net is not None:
            toxic = Toxic(type="latency", attributes={"latency": delay, "jitter": jitter})
            self.net.add("network", toxic, self.names, [BROKER], streams=("upstream",))

    def _schedule(self, planned: list[Planned]) -> None:
        self.total = len(planned)
        by_time: dict[int, list[Any]] = {}
        for p in planned:
            by_time.setdefault(p.at_ms, []).append(p.spec)
        for at_ms, specs in by_time.items():
            self._at(at_ms, functools.partial(self._submit, specs))
        faults: FaultTarget = self
        for f in self.scenario.faults:
            self._at(f.at_ms, functools.partial(play, faults, f))

    def _at(self, at_ms: int, action: Callable[[], None]) -> None:
        heapq.heappush(self.timeline, (at_ms, next(self._order), action))

    def _now_ms(self) -> int:
        return int((time.monotonic() - self.t0) * 1000)

    def _step(self) -> None:
        """Play the timeline steps that are due (never one past the deadline), watch the
        nodes, report progress."""
        due = min(self._now_ms(), self.scenario.expect.deadline_ms)
        while self.timeline and self.timeline[0][0] <= due:
            heapq.heappop(self.timeline)[2]()
        self._watch()
        self.progress.tasks(self._finished(), self.total)

    def _quiet(self) -> bool:
        return (not self.timeline and self._unconfirmed == 0 and self._services_idle()
                and self._finished() >= self.total)

    def _watch(self) -> None:
        """Record nodes that exited on their own (crash-only: they are restarted)."""
        assert self.supervisor is not None
        for name, node in self.supervisor.nodes.items():
            p = node.process
            if node.wanted and p is not None and p.pid not in self._exited and not p.is_alive():
                self._exited.add(p.pid or 0)
                self._record(name, "crash", reason=f"exited with status {p.exitcode}")
        for name in self.supervisor.poll():
            self._record(name, "restart")

    def _record(self, actor: str, kind: str, **data: Any) -> None:
        self.history.record(actor, kind, VectorClock(), data)

    def _submit(self, specs: list[Any]) -> None:
        """Publish, without waiting for the broker's confirm (a broker node may be failing
        over); the run is not over until every submission is confirmed."""
        assert self.submitter is not None
        with self._confirm_lock:
            self._unconfirmed += len(specs)

        def done(_exc: BaseException | None, n: int = len(specs)) -> None:
            with self._confirm_lock:  # (a refused publish is a task the checker finds lost)
                self._unconfirmed -= n

        self.submitter.submit_nowait(specs, done)

    def _workers_started(self) -> bool:
        """Every worker has started and consumes the work queue (so the first tasks are shared
        round robin among all of them, as in the simulator)."""
        workers = worker_names(self.scenario)
        seen = {e.actor for e in self.history.read_events() if e.kind == "worker_started"}
        return seen >= set(workers) and \
            consumer_count(self.broker, self.namespace, WORK_QUEUE) >= len(workers)

    def _finished(self, *, fresh: bool = False) -> int:
        at, count = self._count
        if not fresh and time.monotonic() - at < COUNT_EVERY_S:
            return count
        count, after = 0, None
        try:
            while batch := self.store.scan_tasks(states=TERMINAL, after=after, limit=1000):
                count += len(batch)
                after = batch[-1].id
        except StoreError:  # the store is failing over: the last count stands
            return self._count[1]
        count -= self.scenario.store.finished_records  # the history the run started with
        self._count = (time.monotonic(), count)
        return count

    # --- faults: the real runner as a FaultTarget --------------------------------------------

    def targets(self, fault: FaultSpec) -> list[str]:
        workers = worker_names(self.scenario)
        coords = coordinator_names(self.scenario)
        roles: dict[str, Callable[[], list[str]]] = {
            "leader": lambda: [leader] if (leader := self._leader()) else [],
            "standby": lambda: [c for c in coords if c != self._leader()][:1],
            "any-worker": lambda: [self.rng.choice(workers)],
            "all-workers": lambda: workers, "workers": lambda: workers,
            "any-coordinator": lambda: [self.rng.choice(coords)],
            "coordinators": lambda: coords,
        }
        target = fault.target
        if target is None:
            return []
        if target in roles:
            return roles[target]()
        if target in self.names:
            return [target]
        raise ScenarioError(f"unknown fault target {target!r}")

    @property
    def backend(self) -> str:
        """The backend name the fault table and the summary know this run by."""
        return "rabbitmq" if self.testbed is None else "testbed"

    def _leader(self) -> str | None:
        lease = self.store.lease(LEADER_LEASE)
        return lease.holder if lease else None

    def busy(self, targets: list[str]) -> bool:
        """Every target has started a task whose end it has not recorded (by the history the
        nodes write as they go: fresher than the workers' store entries, which a finished task
        leaves only at the next heartbeat)."""
        busy = {actor for actor, tasks in running_tasks(self.history.read_events()).items()
                if tasks}
        return bool(targets) and set(targets) <= busy

    def accepted(self) -> bool:
        return all_accepted(self.history.read_events(), self.scenario)

    def too_late(self) -> bool:
        return self._now_ms() >= self.scenario.expect.deadline_ms

    def later(self, fault: FaultSpec) -> None:
        # Not yet: look again at the next step (the workers' store entries list what they run
        # from the moment they report a start).
        self._at(self._now_ms() + 1, functools.partial(play, self, fault))

    def record_fault(self, fault: FaultSpec, data: Mapping[str, Any]) -> None:
        self.progress.fault(fault.at_ms, fault.action, list(data["targets"]))
        self._record("runner", "fault", **data)

    def after(self, delay_ms: int, undo: Callable[[], None]) -> None:
        self._at(self._now_ms() + delay_ms, undo)  # from when the fault fired

    def _nodes(self, targets: list[str], f: FaultSpec) -> list[str]:
        """The fault's targets; a fault that names no target applies to every node."""
        return targets if f.target is not None else self.names

    def lose_store_data(self, f: FaultSpec, targets: list[str]) -> Undo:
        """A restart of Redis without persistence, for this run's namespace only (the shared
        server keeps running): every key of the namespace is dropped at once, but the history
        (the observer's record, not under test), and the nodes' store connections are killed
        (CLIENT KILL by their name), so each reconnects to the emptied store."""
        self._record("scenario", "store_data_wiped")
        dropped = lose_namespace_data(self.store.client, self.namespace, keep=("history",))
        self.progress.line(f"  {dropped} keys of {self.namespace} dropped")
        return None

    def _each(self, kind: str, fn: Callable[[str], None], targets: list[str]) -> None:
        for t in targets:
            if kind:
                self._record(t, kind, **({"reason": "killed by scenario"}
                                         if kind == "crash" else {}))
            fn(t)

    def kill(self, f: FaultSpec, targets: list[str]) -> Undo:
        assert self.supervisor is not None
        self._each("crash", self.supervisor.kill, targets)
        return functools.partial(self._restart_nodes, targets)

    crash = kill

    def restart(self, f: FaultSpec, targets: list[str]) -> Undo:
        self._restart_nodes(targets)
        return None

    def _restart_nodes(self, targets: list[str]) -> None:
        assert self.supervisor is not None
        self._each("restart", self.supervisor.restart, targets)

    def pause(self, f: FaultSpec, targets: list[str]) -> Undo:
        assert self.supervisor is not None
        self._each("pause", self.supervisor.pause, targets)
        return functools.partial(self._resume_nodes, targets)

    def resume(self, f: FaultSpec, targets: list[str]) -> Undo:
        self._resume_nodes(targets)
        return None

    def _resume_nodes(self, targets: list[str]) -> None:
        assert self.supervisor is not None
        self._each("resume", self.supervisor.resume, targets)

    def drop_connection(self, f: FaultSpec, targets: list[str]) -> Undo:
        assert self.net is not None
        self.net.cut(self._nodes(targets, f))
        return None

    def partition(self, f: FaultSpec, targets: list[str]) -> Undo:
        """partition, latency, bandwidth, slicer, reset_peer: toxics on the nodes' proxies."""
        assert self.net is not None
        key = f"{f.action}-{next(self._toxic_keys)}"
        self.net.add(key, toxic_for(f), self._nodes(targets, f), f.params.get("from", [BROKER]))
        return functools.partial(self.net.remove, key)

    latency = bandwidth = slicer = reset_peer = partition

    def duplicate(self, f: FaultSpec, targets: list[str]) -> Undo:
        """duplicate, drop, reorder: knobs of the simulated network, refused before a run
        starts (`FAULTS`)."""
        raise ScenarioError(f"{f.action!r} cannot be played on the rabbitmq backend: "
                            f"{FAULTS[f.action].refusal('rabbitmq', f)}")

    drop = reorder = duplicate

    def heal(self, f: FaultSpec, targets: list[str]) -> Undo:
        """Remove every partition, and every reset window (the simulator plays those as
        partitions too)."""
        assert self.net is not None
        self.net.remove_all("partition-")
        self.net.remove_all("reset_peer-")
        return None

    def inject(self, f: FaultSpec, targets: list[str]) -> Undo:
        """Malformed and forged messages, published as bytes straight to the namespace's
        queue (or the targets' mailboxes), confirmed and routed (mandatory: a queue that does
        not exist fails the run instead of swallowing them)."""
        batch = injections(f.params, targets, start=self._injected)
        self._injected += len(batch)
        self.total += sum(1 for _, forged in batch if forged.submits is not None)
        for address, forged in batch:
            record_injection(self.history.record, address, forged)
        publish_raw(self.broker, [(queue_name(self.namespace, address), forged.body)
                                  for address, forged in batch])
        return None

    # --- stopping ---------------------------------------------------------------------------


    # --- the testbed's service faults --------------------------------------------------------

    def _bed(self) -> Testbed:
        if self.testbed is None:  # refused before the run (`FAULTS`): never here
            raise ScenarioError("this fault needs the testbed")
        return self.testbed

    def _in_background(self, service: str, op: Callable[[], None]) -> None:
        """Play an operation on a service (BROKER or STORE) on its own thread, after the
        operations on it before this one."""
        self._service_ops.append(self._services[service].submit(op))

    def _services_idle(self) -> bool:
        """Every service operation is done (one that failed fails the run)."""
        for op in self._service_ops:
            if not op.done():
                return False
            op.result()
        return True

    def kill_broker_node(self, f: FaultSpec, targets: list[str]) -> Undo:
        """kill -9 RabbitMQ node `node` (1-3; default 1, the first address, which every
        process tries first); its undo starts it again."""
        bed, name = self._bed(), f"rabbit-{f.params.get('node', 1)}"

        def kill() -> None:
            bed.kill(name)
            self._killed_brokers.append(name)
            self.progress.line(f"  {name} killed")

        self._in_background(BROKER, kill)
        return functools.partial(self._in_background, BROKER, self._restart_brokers)

    def restart_broker_node(self, f: FaultSpec, targets: list[str]) -> Undo:
        self._in_background(BROKER, self._restart_brokers)
        return None

    def _restart_brokers(self) -> None:
        while self._killed_brokers:
            name = self._killed_brokers.pop()
            self._bed().restart(name)  # back in the cluster when it returns
            self.progress.line(f"  {name} restarted")

    def redis_failover(self, f: FaultSpec, targets: list[str]) -> Undo:
        """SENTINEL FAILOVER, until the Sentinels name the promoted replica."""
        def failover() -> None:
            old, new = self._bed().failover()
            self.progress.line(f"  Redis primary moved from port {old} to {new}")

        self._in_background(STORE, failover)
        return None

    def kill_redis_primary(self, f: FaultSpec, targets: list[str]) -> Undo:
        """kill -9 the Redis primary, until the Sentinels promote the replica; its undo starts
        the old primary again (it rejoins as the new one's replica)."""
        def kill() -> None:
            bed = self._bed()
            old, new = bed.kill_redis_primary()
            self._killed_redis = bed.redis_name(old)
            self.progress.line(f"  Redis primary on port {old} killed; {new} promoted")

        self._in_background(STORE, kill)
        return functools.partial(self._in_background, STORE, self._restart_redis)

    def _restart_redis(self) -> None:
        name, self._killed_redis = self._killed_redis, None
        if name is not None:
            self._bed().restart(name)
            self.progress.line(f"  {name} restarted")

    def _restart_services(self) -> None:
        """Wait for the service operations under way, then restart what is still down."""
        for executor in self._services.values():
            executor.shutdown(wait=True)
        if self.testbed is not None:
            self._restart_brokers()
            self._restart_redis()
    def _stop(self) -> None:
        """Heal every fault (so nodes shut down cleanly), stop the nodes, close the submitter;
        each step runs even if an earlier one failed."""
        with contextlib.ExitStack() as stack:
            if self.submitter is not None:
                stack.callback(self.submitter.close)
            if self.supervisor is not None:
                stack.callback(self.supervisor.stop_all)
            if self.net is not None:
                stack.callback(self.net.remove_all)
            stack.callback(self._restart_services)  # first: leave the testbed as it was

    def _clean_up(self) -> None:
        try:
            self.store.delete_all()
            delete_namespace(self.broker, self.namespace, [*self.names, "client"])
        finally:
            self.store.close()
            self.history.close()


def fill_finished(store: Store, n: int, batch: int = 5000) -> None:
    """Write the `[store] finished_records` straight into a namespace nobody leads yet (fenced
    writes at epoch 0, in batches). `read_us_per_record` is the simulator's: a real store's reads
    cost what they cost."""
    records = [PutTask(record=r) for r in finished_records(n)]
    for start in range(0, len(records), batch):
        store.apply(records[start:start + batch], epoch=0)


def run_real(
    scenario: Scenario, seed: int | None = None, *, live: bool = True,
    testbed: Testbed | None = None, history_url: str | None = None,
) -> RunResult:
    """Run `scenario` on real processes (on the local cluster `testbed`, if given); with
    `live`, show progress on stderr."""
    backend = "rabbitmq" if testbed is None else "testbed"
    check_supported(scenario, backend)
    check_simulator_knobs(scenario, backend)
    progress = Progress(sys.stderr if live else None, scenario.name)
    return RealRun(scenario, scenario.seed if seed is None else seed, progress=progress,
                   testbed=testbed, history_url=history_url).run()
