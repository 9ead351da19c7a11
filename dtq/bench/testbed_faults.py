"""Faults on the testbed: a steady load on a dtq cluster while its broker node and Redis fail.

`dtq bench testbed-faults` runs on the local testbed (`dtq.testing.testbed`: a 3-node RabbitMQ
cluster, a Redis primary + replica + 3 Sentinels), started for the run or reused (`--dir`):

* a cluster of two coordinators and two workers with the node defaults, on the comma list of
  the three brokers, quorum queues, and the Sentinel store URL with `?wait_replicas=1` (a write
  counts once the replica has it); every node records its history;
* a client submitting `rate` sleep tasks (5-20 ms) a second, in batches every 0.25 s, without
  waiting for the broker's confirms (the pace holds through a broker failover), and counting
  the successes it is told of (notices) as they come;
* three faults, one after another: (a) kill -9 of the RabbitMQ node the leader is connected
  to, then its restart; (b) `SENTINEL FAILOVER`; (c) kill -9 of the Redis primary, its restart
  and its demotion to a replica. Each fault is repaired as soon as it was made (with one
  replica and `wait_replicas=1`, the store takes no write until the old primary follows the new
  one), then the next waits until successes have come at half the offered rate or more for
  `steady_s` seconds.

Per fault: when the first success was heard after it, when the first task submitted after it
succeeded, until when successes stayed below half the offered rate (1-s windows), the longest
silence between two successes, the leaders and epochs that took over, and the supervisor's
restarts of each node. At the end the load stops, every submitted task is waited for (bounded),
and each submission is accounted from the store: acknowledged successes, lost (told succeeded,
no succeeded record nor result), stuck (a record not terminal), vanished (confirmed by the
broker, no record at all), and the checker's verdict over the history, duplicated effects and
one leader per epoch included.

The history goes to the observer's Redis (`--history-url`, default `$DTQ_STORE_URL`, not the
testbed's: a fault must not take the evidence with it), as in `dtq.scenario.real`.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import random
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from dtq.bench.common import BenchError
from dtq.checker import check
from dtq.client.submitter import Submitter
from dtq.envelope import Finished
from dtq.runtime.process import NodeConfig, store_url
from dtq.scenario.links import ProxiedSupervisor
from dtq.store import LEADER_LEASE
from dtq.task import TaskSpec, TaskState
from dtq.testing.testbed import Layout, Testbed, free_base_port
from transports.rabbitmq import connection_name, delete_namespace
from transports.redis import RedisHistory, RedisStore

T = TypeVar("T")
TICK_S = 0.25
WINDOW_S = 1.0
"""Successes are counted in windows of this length (sliding by TICK_S)."""
FAULTS = ("rabbit-leader-node", "sentinel-failover", "redis-primary-kill")
NODES = ("coordinator-1", "coordinator-2", "worker-1", "worker-2")
_CHUNK = 1000


@attrs.define
class _Ledger:
    """Submissions, confirms and the notices heard, from three threads."""

    submitted: dict[str, float] = attrs.field(factory=dict)
    confirmed: set[str] = attrs.field(factory=set)
    unconfirmed: set[str] = attrs.field(factory=set)
    heard: dict[str, tuple[float, str]] = attrs.field(factory=dict)
    notices: Counter[str] = attrs.field(factory=Counter)
    ok_times: list[float] = attrs.field(factory=list)
    """When each success was heard (monotonic), in order."""
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def hear(self, f: Finished) -> None:
        now = time.monotonic()
        with self.lock:
            self.notices[f.task_id] += 1
            if f.task_id not in self.heard:
                self.heard[f.task_id] = (now, f.state)
                if f.state == "succeeded":
                    self.ok_times.append(now)

    def sent(self, specs: Sequence[TaskSpec], at: float) -> None:
        with self.lock:
            self.submitted.update((s.id, at) for s in specs)

    def confirm(self, specs: Sequence[TaskSpec], exc: BaseException | None) -> None:
        with self.lock:
            (self.unconfirmed if exc is not None else self.confirmed).update(
                s.id for s in specs)

    def open(self) -> int:
        with self.lock:
            return len(self.submitted.keys() - self.heard.keys())

    def successes(self, start: float, end: float) -> int:
        with self.lock:
            return bisect.bisect_left(self.ok_times, end) - bisect.bisect_left(self.ok_times,
                                                                               start)


@attrs.define
class _Fault:
    name: str
    at: float
    """monotonic"""
    at_wall_ms: int
    detail: dict[str, Any] = attrs.field(factory=dict)
    repaired_s: float | None = None
    settled: float | None = None
    """When the next phase may start (monotonic): the rate held, or the wait ran out."""
    error: str | None = None
    restarts_before: dict[str, int] = attrs.field(factory=dict)
    restarts_after: dict[str, int] = attrs.field(factory=dict)


class _Run:
    def __init__(
        self, bed: Testbed, *, rate: int, warmup_s: float, steady_s: float,
        recover_timeout_s: float, drain_s: float, history_url: str,
    ) -> None:
        self.bed = bed
        self.rate = rate
        self.warmup_s, self.steady_s = warmup_s, steady_s
        self.recover_timeout_s, self.drain_s = recover_timeout_s, drain_s
        self.ns = f"bench-tbfault-{uuid.uuid4().hex[:8]}"
        self.broker = ",".join(bed.layout.broker_urls)
        self.store_url = bed.layout.durable_store_url
        self.history = RedisHistory.from_url(history_url, prefix=self.ns, buffer_size=64)
        self.history_url = history_url
        self.store = RedisStore.from_url(self.store_url, prefix=self.ns)
        common: dict[str, Any] = {"broker_url": self.broker, "store_url": self.store_url,
                                  "namespace": self.ns, "history": True, "quorum": True,
                                  "log_level": "warning"}
        self.sup = ProxiedSupervisor(
            [NodeConfig(role=n.split("-")[0], name=n, **common) for n in NODES],
            history_url=history_url)
        self.client = f"bench-client-{uuid.uuid4().hex[:6]}"
        self.ledger = _Ledger()
        self.faults: list[_Fault] = []
        self.stop_load = threading.Event()
        self.history_lock = threading.Lock()
        self.rng = random.Random(1)
        self.start = time.monotonic()
        self.load_end: float | None = None
        self.samples: dict[str, Any] = {}
        """A few stuck tasks' records (without their specs), read at the end."""

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(self._clean_up)
            self.sup.start()
            cleanup.callback(self.sup.stop_all)
            self._wait(lambda: self.store.lease(LEADER_LEASE) is not None, 120, "a leader")
            submitter = Submitter(self.broker, namespace=self.ns, name=self.client,
                                  on_finished=self.ledger.hear, store_url=self.store_url,
                                  quorum=True, record=self._record)
            cleanup.callback(submitter.close)
            loader = threading.Thread(target=self._load, args=(submitter,), daemon=True,
                                      name="tbfault-load")
            self.start = time.monotonic()
            loader.start()
            self._wait(lambda: time.monotonic() - self.start >= self.warmup_s
                       and self._steady(), self.warmup_s + self.recover_timeout_s,
                       "a steady rate before the first fault")
            baseline = self.ledger.successes(time.monotonic() - self.steady_s,
                                             time.monotonic()) / self.steady_s
            for name, make in (("rabbit-leader-node", self._kill_leader_rabbit),
                               ("sentinel-failover", self._sentinel_failover),
                               ("redis-primary-kill", self._kill_redis_primary)):
                fault = self._fault(name, make)
                if fault.error is not None:
                    break  # the testbed may be left broken: no further fault on it
            self.stop_load.set()
            loader.join(30)
            self.load_end = time.monotonic()
            self._drain(submitter)
            self._flush_history()
            return self._account(baseline)

    def _record(self, actor: str, kind: str, clock: Any, data: Any) -> None:
        with self.history_lock:
            self.history.record(actor, kind, clock, data)

    def _flush_history(self) -> None:
        with self.history_lock:
            self.history.flush()

    def _load(self, submitter: Submitter) -> None:
        """`rate` sleep tasks a second, every TICK_S, not waiting for confirms (counted as
        they come): the pace is the load's own."""
        seq, next_at = 0, time.monotonic()
        per_tick = max(1, round(self.rate * TICK_S))
        while not self.stop_load.is_set():
            specs = [TaskSpec(id=f"t{seq:06d}-{i:03d}", type="sleep",
                              payload={"ms": self.rng.randint(5, 20)}) for i in range(per_tick)]
            self.ledger.sent(specs, time.monotonic())
            submitter.submit_nowait(specs, functools.partial(self.ledger.confirm, specs))
            if seq % 8 == 7:
                self._flush_history()
            seq += 1
            next_at += TICK_S
            time.sleep(max(0.0, next_at - time.monotonic()))  # the load's pacing

    def _wait(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll `done` (the supervisor polled between) until it holds; BenchError after."""
        deadline = time.monotonic() + timeout_s
        while not done():
            self.sup.poll()
            if time.monotonic() > deadline:
                raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(0.1)

    def _blocking(self, fn: Callable[[], T]) -> T:
        """Run a testbed action (seconds to a minute) on a thread while this one keeps the
        supervisor polling (nodes are started from this thread only: see `_exit_with_parent`)."""
        out: list[T] = []
        errors: list[BaseException] = []

        def target() -> None:
            try:
                out.append(fn())
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=target, name="tbfault-action", daemon=True)
        t.start()
        while t.is_alive():
            self.sup.poll()
            t.join(0.1)
        if errors:
            raise errors[0]
        return out[0]

    def _steady(self) -> bool:
        """Successes heard at half the offered rate or more in every window of the last
        `steady_s` seconds."""
        now = time.monotonic()
        windows = max(1, int(self.steady_s / WINDOW_S))
        return all(self.ledger.successes(now - (k + 1) * WINDOW_S, now - k * WINDOW_S)
                   >= self.rate * WINDOW_S / 2 for k in range(windows))

    def _restarts(self) -> dict[str, int]:
        return {n: p.restarts for n, p in self.sup.nodes.items()}

    def _fault(self, name: str, make: Callable[[_Fault], None]) -> _Fault:
        fault = _Fault(name=name, at=time.monotonic(), at_wall_ms=int(time.time() * 1000),
                       restarts_before=self._restarts())
        self.faults.append(fault)
        try:
            make(fault)
            fault.repaired_s = time.monotonic() - fault.at
            self._wait(self._steady, self.recover_timeout_s,
                       f"successes at half the rate again after {name}")
        except Exception as exc:  # a fault that could not be made or repaired, or no recovery
            fault.error = f"{type(exc).__name__}: {exc}"
        fault.settled = time.monotonic()
        fault.restarts_after = self._restarts()
        return fault

    # --- the faults -------------------------------------------------------------------------

    def _leader(self) -> tuple[str, int]:
        lease = self.store.lease(LEADER_LEASE)
        if lease is None:
            raise BenchError("no leader holds the lease")
        return lease.holder, lease.epoch

    def _broker_node(self, actor: str) -> int:
        """The index of the RabbitMQ node `actor`'s connection is on."""
        i = self.bed.broker_node_of(connection_name(self.ns, actor))
        if i is None:
            raise BenchError(f"no connection named {connection_name(self.ns, actor)} on the "
                             "broker")
        return i

    def _kill_leader_rabbit(self, fault: _Fault) -> None:
        leader, epoch = self._leader()
        i = self._blocking(lambda: self._broker_node(leader))
        victim = f"rabbit-{i + 1}"
        fault.detail.update(leader=leader, epoch=epoch, node=victim)
        fault.at, fault.at_wall_ms = time.monotonic(), int(time.time() * 1000)
        self._blocking(lambda: self.bed.kill(victim))
        self._blocking(lambda: self.bed.restart(victim))

    def _sentinel_failover(self, fault: _Fault) -> None:
        fault.detail["leader"], fault.detail["epoch"] = self._leader()
        old, new = self._blocking(self.bed.failover)
        fault.detail.update(old_primary=old, new_primary=new)
        self._blocking(lambda: self.bed.wait_demoted(old))
        self._blocking(lambda: self.bed.wait_redis())

    def _kill_redis_primary(self, fault: _Fault) -> None:
        fault.detail["leader"], fault.detail["epoch"] = self._leader()
        old, new = self._blocking(self.bed.kill_redis_primary)
        fault.detail.update(old_primary=old, new_primary=new)
        self._blocking(lambda: self.bed.restart(self.bed.redis_name(old)))
        self._blocking(lambda: self.bed.wait_demoted(old))
        self._blocking(lambda: self.bed.wait_redis())

    # --- the end ----------------------------------------------------------------------------

    def _drain(self, submitter: Submitter) -> None:
        """Wait (bounded) until every submitted task's end was heard and the store holds no
        task that is not terminal (a client hears a success from a stored result; the leader
        records the task's end after that). The ends of tasks whose notice was missed are
        read from the store every few seconds."""
        deadline = time.monotonic() + self.drain_s
        next_read = time.monotonic()
        while time.monotonic() < deadline:
            self.sup.poll()
            if time.monotonic() >= next_read:
                next_read = time.monotonic() + 2
                with contextlib.suppress(Exception):  # the store may still be moving
                    submitter.reread()
                    if not self.ledger.open() and self._unfinished() == 0:
                        return
            time.sleep(0.2)

    def _unfinished(self) -> int:
        counts = self.store.count_by_state()
        return sum(n for state, n in counts.items() if not TaskState(state).terminal)

    def _records(self, ids: list[str]) -> tuple[dict[str, str], set[str]]:
        """Each task's state in the store (absent: no record), and those with a result."""
        states: dict[str, str] = {}
        results: set[str] = set()
        self.samples = {}
        for k in range(0, len(ids), _CHUNK):
            chunk = ids[k:k + _CHUNK]
            raws = self.store.client.hmget(self.store._k("task"), chunk)
            for task_id, raw in zip(chunk, raws, strict=True):
                if raw is not None:
                    rec = json.loads(raw)
                    states[task_id] = rec["state"]
                    if rec["state"] not in ("succeeded", "failed", "cancelled") \
                            and len(self.samples) < 5:
                        self.samples[task_id] = {k: v for k, v in rec.items() if k != "spec"}
            results.update(t for t, r in self.store.get_results(chunk).items() if r.ok)
        return states, results

    def _account(self, baseline: float) -> dict[str, Any]:
        led = self.ledger
        ids = sorted(led.submitted)
        states, results = self._records(ids)
        told_ok = [t for t, (_, s) in led.heard.items() if s == "succeeded"]
        lost = sorted(t for t in told_ok if states.get(t) != "succeeded" and t not in results)
        terminal = {"succeeded", "failed", "cancelled"}
        stuck = sorted(t for t in ids if t in states and states[t] not in terminal)
        vanished = sorted(t for t in led.confirmed if t not in states)
        events = self.history.read_events()
        verdict = check(events, complete=True)
        leaders = [(int(e.data["epoch"]), e.actor, e.time_ms) for e in events
                   if e.kind == "leader"]
        final_states = Counter(states.get(t, "no record") for t in ids)
        faults = [self._fault_report(f, i, leaders) for i, f in enumerate(self.faults)]
        return {
            "rate": self.rate, "namespace": self.ns, "baseline_per_s": round(baseline, 1),
            "submitted": len(ids), "confirmed": len(led.confirmed),
            "unconfirmed": len(led.unconfirmed - led.confirmed),
            "succeeded_acknowledged": len(told_ok),
            "other_notices": dict(Counter(s for _, s in led.heard.values()
                                          if s != "succeeded")),
            "never_notified": len(led.submitted.keys() - led.heard.keys()),
            "store_states": dict(final_states),
            "lost": len(lost), "lost_ids": lost[:20], "stuck": len(stuck),
            "stuck_ids": stuck[:20], "stuck_records": self.samples,
            "vanished": len(vanished), "vanished_ids": vanished[:20],
            "duplicated_notices": sum(1 for n in led.notices.values() if n > 1),
            "duplicated_effects": verdict.counts.duplicated,
            "checker_ok": verdict.ok, "checker_counts": verdict.counts.to_json(),
            "violations": [v.to_json() for v in verdict.violations[:20]],
            "violation_count": len(verdict.violations),
            "leaders": [{"epoch": e, "leader": a} for e, a, _ in leaders],
            "faults": faults, "restarts": self._restarts(),
            "per_second": self._per_second(),
        }

    def _fault_report(
        self, f: _Fault, i: int, leaders: list[tuple[int, str, int]],
    ) -> dict[str, Any]:
        led = self.ledger
        end = f.settled if f.settled is not None else time.monotonic()
        next_wall = (self.faults[i + 1].at_wall_ms if i + 1 < len(self.faults)
                     else int(time.time() * 1000) + 1)
        with led.lock:
            after = [t for t in led.ok_times if t > f.at]
            new_ok = min((heard for task, (heard, state) in led.heard.items()
                          if state == "succeeded" and led.submitted.get(task, 0) > f.at),
                         default=None)
        window, below_until, t = WINDOW_S, None, f.at
        while t + window <= end:
            if led.successes(t, t + window) < self.rate * window / 2:
                below_until = t + window
            t += TICK_S
        inside = [x for x in after if x <= end]
        gaps = [b - a for a, b in zip([f.at, *inside], inside, strict=False)]
        return {
            "fault": f.name, **f.detail,
            "first_success_s": _s(after[0] - f.at if after else None),
            "first_new_success_s": _s(new_ok - f.at if new_ok is not None else None),
            "below_half_rate_until_s": _s(below_until - f.at if below_until else 0.0),
            "longest_silence_s": _s(max(gaps, default=None)),
            "repaired_s": _s(f.repaired_s),
            "settled_s": _s(end - f.at),
            "leaders_after": [{"epoch": e, "leader": a} for e, a, ms in leaders
                              if f.at_wall_ms <= ms < next_wall],
            "restarts": {n: f.restarts_after.get(n, 0) - f.restarts_before.get(n, 0)
                         for n in f.restarts_before
                         if f.restarts_after.get(n, 0) != f.restarts_before.get(n, 0)},
            "error": f.error,
        }

    def _per_second(self) -> list[int]:
        end = self.load_end or time.monotonic()
        return [self.ledger.successes(self.start + s, self.start + s + 1)
                for s in range(int(end - self.start) + 1)]

    def _clean_up(self) -> None:
        with contextlib.suppress(Exception):
            self.store.delete_all()
        with contextlib.suppress(Exception):
            self.store.close()
        with contextlib.suppress(Exception):
            self.history.client.delete(self.history.key)
            self.history.client.close()
        with contextlib.suppress(Exception):
            delete_namespace(self.broker, self.ns, [*NODES, self.client])


def _s(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 2)


@contextlib.contextmanager
def _testbed(directory: Path | None) -> Iterator[tuple[Testbed, bool]]:
    """The testbed recorded in `directory` (left running), or one started for the run (in
    `directory`, else a temporary one) and stopped after it. (testbed, reused)."""
    if directory is not None:
        found = Testbed.load(directory)
        if found is not None:
            yield found, True
            return
    with contextlib.ExitStack() as stack:
        where = directory or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="dtq-tbfault-")))
        bed = Testbed(Layout(where, base_port=free_base_port()))
        bed.up()
        try:
            yield bed, False
        finally:
            bed.down()


def testbed_faults(
    rate: int = 120, directory: Path | None = None, *, warmup_s: float = 20.0,
    steady_s: float = 5.0, recover_timeout_s: float = 180.0, drain_s: float = 120.0,
    history_url: str | None = None,
) -> dict[str, Any]:
    """Run the faults (see the module docstring); the accounting as a dict, printed."""
    with _testbed(directory) as (bed, reused):
        if not (bed.rabbit_ready() and bed.redis_ready()):
            raise BenchError(f"the testbed in {bed.dir} is not ready: `dtq testbed status`")
        result = _Run(bed, rate=rate, warmup_s=warmup_s, steady_s=steady_s,
                      recover_timeout_s=recover_timeout_s, drain_s=drain_s,
                      history_url=store_url(history_url)).run()
        result["testbed"] = {"dir": str(bed.dir), "base_port": bed.layout.base_port,
                             "reused": reused}
    _print(result)
    return result


def failed(result: dict[str, Any]) -> bool:
    """Anything lost, stuck, vanished or duplicated, or the checker found a violation."""
    return bool(result["lost"] or result["stuck"] or result["vanished"]
                or result["duplicated_effects"] or not result["checker_ok"])


def _print(r: dict[str, Any]) -> None:
    print(f"testbed faults: {r['rate']} sleep tasks/s offered, {r['baseline_per_s']}/s heard "
          f"succeeding before the first fault")
    print("  fault                 first ok s  first new ok s  < half rate until s  "
          "longest silence s  repaired s  leaders after (epoch:node)  restarts")
    for f in r["faults"]:
        leaders = " ".join(f"{x['epoch']}:{x['leader']}" for x in f["leaders_after"]) or "-"
        restarts = " ".join(f"{k}+{v}" for k, v in f["restarts"].items()) or "-"
        print(f"  {f['fault']:<20}  {_num(f['first_success_s']):>10}  "
              f"{_num(f['first_new_success_s']):>14}  {_num(f['below_half_rate_until_s']):>19}"
              f"  {_num(f['longest_silence_s']):>17}  {_num(f['repaired_s']):>10}  "
              f"{leaders:<26}  {restarts}")
        where = {k: f[k] for k in ("node", "leader", "epoch", "old_primary", "new_primary")
                 if k in f}
        print(f"    {where}" + (f"  ERROR: {f['error']}" if f["error"] else ""))
    print(f"  submitted {r['submitted']:,} (broker-confirmed {r['confirmed']:,}), "
          f"acknowledged succeeded {r['succeeded_acknowledged']:,}, other ends "
          f"{r['other_notices'] or 0}, never notified {r['never_notified']}")
    print(f"  lost {r['lost']}, stuck {r['stuck']}, vanished {r['vanished']}, duplicated "
          f"effects {r['duplicated_effects']}, duplicated notices {r['duplicated_notices']}")
    print(f"  store states: {r['store_states']}")
    print(f"  checker: {'ok' if r['checker_ok'] else 'FAILED'} {r['checker_counts']}; "
          f"leaders {' '.join(str(x['epoch']) + ':' + x['leader'] for x in r['leaders'])}")
    for v in r["violations"]:
        print(f"    {v['invariant']}: {v['detail']}")
    print(f"  node restarts: {r['restarts']}")


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
