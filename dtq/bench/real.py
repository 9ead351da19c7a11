"""End-to-end benchmark on real processes: no-op tasks through RabbitMQ and Redis.

Measures throughput (submitted -> result available, for the whole batch) and per-task latency
(submit -> the notice published by the worker's result write) with every guarantee on: durable
queues, persistent messages, publisher confirms, fenced writes, first-writer-wins results.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from dtq.bench.cpu import CpuMeter, service_pids
from dtq.client.submitter import Submitter
from dtq.envelope import Finished
from dtq.runtime.process import NodeConfig, Supervisor, broker_url, store_url
from dtq.scenario.real import wait_for
from dtq.task import TaskSpec
from transports.rabbitmq import delete_namespace
from transports.redis import RedisStore
from transports.registry import open_store, require

WORKER_FLAGS = ("concurrency", "prefetch")
LEADER_FLAGS = ("dispatch_bundle",)


def flags(node: Mapping[str, Any]) -> str:
    """The command-line flags a run sets beyond the node defaults, as `dtq cluster` takes them
    ("" with the defaults): a tuned row's label says what was tuned."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in node.items())


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


class _Tracker:
    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.failed = 0
        self.lock = threading.Lock()

    def on_finished(self, msg: Finished) -> None:
        with self.lock:
            self.done.setdefault(msg.task_id, time.perf_counter())
            if msg.state != "succeeded":
                self.failed += 1


def bench_e2e(
    tasks: int = 5000, workers: int = 2, batch: int = 250, timeout_s: float = 300,
    cpu: bool = False, **node: Any,
) -> dict[str, Any]:
    """One coordinator and `workers` workers with the node defaults (`dtq cluster`'s), but for
    `node`: worker flags (`concurrency`, `prefetch`) and the leader's `dispatch_bundle`. `cpu`:
    also the CPU each process spent from the first submission to the last result seen, per task
    (`CpuMeter`: ms per task, which is s per 1,000 tasks), under "cpu" with the window's length."""
    unknown = set(node) - set(WORKER_FLAGS) - set(LEADER_FLAGS)
    if unknown:
        raise ValueError(f"not a benchmark node flag: {', '.join(sorted(unknown))}")
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    b, s = broker_url(), store_url()
    common: dict[str, Any] = {"broker_url": b, "store_url": s, "namespace": ns,
                              "log_level": "warning"}
    leader = {k: v for k, v in node.items() if k in LEADER_FLAGS}
    worker = {k: v for k, v in node.items() if k in WORKER_FLAGS}
    configs = [NodeConfig(role="coordinator", name="coordinator-1", **leader, **common)]
    configs += [NodeConfig(role="worker", name=f"worker-{i}", **worker, **common)
                for i in range(1, workers + 1)]
    sup = Supervisor(configs)
    store = require(open_store(s, prefix=ns), RedisStore, "a benchmark cluster")
    tracker = _Tracker()
    sup.start()
    sub: Submitter | None = None
    meter: CpuMeter | None = None
    usage: dict[str, Any] | None = None
    try:
        wait_for(lambda: store.lease("coordinator") is not None, 60, "a leader", sup.poll)
        sub = Submitter(b, namespace=ns, name=f"bench-{uuid.uuid4().hex[:6]}",
                        on_finished=tracker.on_finished, store_url=s)
        sub.submit([TaskSpec(id="warm-up", type="echo")])
        wait_for(lambda: "warm-up" in tracker.done, 60, "the warm-up task", sup.poll)
        if cpu:
            meter = CpuMeter({**_node_pids(sup), "client": os.getpid(), **service_pids()})
            meter.start()
        started = time.perf_counter()
        for i in range(0, tasks, batch):
            specs = [TaskSpec(id=f"t{n}", type="echo") for n in range(i, min(tasks, i + batch))]
            now = time.perf_counter()
            for spec in specs:
                tracker.sent[spec.id] = now
            sub.submit(specs)
        wait_for(lambda: len(tracker.done) >= tasks + 1, timeout_s, "every task", sup.poll)
        if meter is not None:
            usage = {**meter.stop(tasks), "window_s": time.perf_counter() - started}
        last = max(tracker.done.values())
    finally:
        if sub is not None:
            sub.close()
        sup.stop_all()
        store.delete_all()
        store.close()
        delete_namespace(b, ns, [c.name for c in configs] + ([sub.name] if sub else []))
    lat = [(tracker.done[t] - tracker.sent[t]) * 1000 for t in tracker.sent]
    elapsed = last - started
    w = configs[-1]
    return {"tasks": tasks, "workers": workers, "flags": flags(node),
            "concurrency": w.concurrency, "prefetch": w.work_prefetch,
            "dispatch_bundle": configs[0].dispatch_bundle,
            "elapsed_s": elapsed, "tasks_per_s": tasks / elapsed, "failed": tracker.failed,
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
            **({"cpu": usage} if usage is not None else {})}


def _node_pids(sup: Supervisor) -> dict[str, int]:
    """The nodes' pids by name, the coordinator named "leader" (a benchmark cluster has one)."""
    pids = {}
    for name, node in sup.nodes.items():
        if (pid := sup.pid(name)) is not None:
            pids["leader" if node.cfg.role == "coordinator" else name] = pid
    return pids


def main(tasks: int, workers: int, concurrency: int | None = None) -> int:
    node: dict[str, Any] = {} if concurrency is None else {"concurrency": concurrency}
    r = bench_e2e(tasks, workers, **node)
    print(f"dtq end to end: {r['tasks']:,} no-op tasks, {r['workers']} worker processes "
          f"(concurrency {r['concurrency']}, prefetch {r['prefetch']}, dispatch bundle "
          f"{r['dispatch_bundle']}): {r['tasks_per_s']:,.0f} tasks/s "
          f"({r['elapsed_s']:.2f} s); latency p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms;"
          f" {r['failed']} failed")
    return 0 if r["failed"] == 0 else 1
