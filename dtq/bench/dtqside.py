"""dtq's own measurements: single-task latency, throughput at 1, 2 and 4 workers (through
`dtq.bench.real.bench_e2e`), and the leader's resident memory holding 100,000 tasks."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

from dtq.bench.cluster import Cluster, dtq_cluster
from dtq.bench.common import await_value, queue_counts, rss_kib
from dtq.bench.real import bench_e2e
from dtq.client.submitter import Submitter
from dtq.envelope import WORK_QUEUE, Finished
from dtq.task import TaskSpec
from dtq.transport import queue_name


class DtqClient:
    """Submit-and-wait for dtq: a Submitter whose end notices set one Event per task."""

    def __init__(self, cluster: Cluster) -> None:
        self._events: dict[str, threading.Event] = {}
        self._ids = itertools.count(1)
        self.failed = 0
        self.submitter: Submitter = cluster.submitter(on_finished=self._finished)

    def _finished(self, msg: Finished) -> None:
        if msg.state != "succeeded":
            self.failed += 1
        event = self._events.get(msg.task_id)
        if event is not None:
            event.set()

    def submit(self) -> str:
        task_id = f"lat-{next(self._ids)}"
        self._events[task_id] = threading.Event()
        self.submitter.submit([TaskSpec(id=task_id, type="echo")])
        return task_id

    def wait(self, handle: str, timeout_s: float) -> None:
        done = self._events[handle].wait(timeout_s)
        del self._events[handle]
        if not done:
            raise TimeoutError(f"dtq task {handle} did not finish within {timeout_s:.0f} s")


@contextlib.contextmanager
def client(workers: int = 2, **node: Any) -> Iterator[DtqClient]:
    """A dtq cluster (1 coordinator, `workers` workers, the node defaults but for `node`) and a
    submit-and-wait client."""
    with dtq_cluster("latency", workers=workers, **node) as c:
        dc = DtqClient(c)
        try:
            yield dc
        finally:
            dc.submitter.close()


def dtq_throughput(tasks: int = 5000, workers: int = 2, **node: Any) -> dict[str, Any]:
    """`bench_e2e` with the node defaults but for `node` (concurrency, prefetch,
    dispatch_bundle)."""
    return bench_e2e(tasks, workers=workers, **node)


def scaling(
    tasks: int = 5000, workers: tuple[int, ...] = (1, 2, 4), **node: Any,
) -> dict[str, dict[str, Any]]:
    """dtq throughput and CPU for each worker count, one fresh cluster each."""
    return {str(w): scaling_run(tasks, w, **node) for w in workers}


CPU_ROLES = ("leader", "workers", "RabbitMQ", "Redis", "client")
"""The processes `dtq bench scaling` reports CPU for ("workers": every worker together)."""


def scaling_run(tasks: int = 5000, workers: int = 2, **node: Any) -> dict[str, Any]:
    """One `bench_e2e` with CPU metered over its run window (node defaults but the worker
    count and `node`), and where the single leader's ceiling lies (see `ceiling`)."""
    r = bench_e2e(tasks, workers=workers, cpu=True, **node)
    return {**r, **ceiling(r["cpu"], r["tasks"])}


def ceiling(cpu: dict[str, Any], tasks: int) -> dict[str, Any]:
    """From a `CpuMeter` reading per task (ms per task = s per 1,000 tasks): CPU s per 1,000
    tasks by role, the leader's share of one core over the window, and the throughput one
    leader could reach with a core to itself (1 / its CPU per task). A role whose process went
    away during the run (a restart) is None."""
    procs: dict[str, float] = cpu["by_process_ms"]
    workers = [v for name, v in procs.items() if name.startswith("worker-")]
    per_1k: dict[str, float | None] = {role: procs.get(role) for role in CPU_ROLES}
    per_1k["workers"] = sum(workers) if workers else None
    per_1k["machine"] = cpu["machine_ms"]
    leader = per_1k["leader"]
    window = cpu["window_s"]
    return {"cpu_s_per_1k": per_1k,
            "leader_core": leader * tasks / 1000 / window if leader and window > 0 else None,
            "leader_bound_tasks_per_s": 1000 / leader if leader else None}


def memory(tasks: int = 100_000, batch: int = 1000, timeout_s: float = 600) -> dict[str, Any]:
    """The leader's RSS before and after accepting `tasks` no-ops with no worker running: they
    all stay in its view (dispatched, not done). "Accepted" is seen from outside: every task's
    dispatch sits in the work queue (one broker message each: no dispatch bundles here)."""
    with dtq_cluster("memory", workers=0, dispatch_bundle=1) as c:
        pid = c.sup.pid("coordinator-1")
        assert pid is not None
        time.sleep(1)  # let the new leader settle before the baseline
        before = rss_kib(pid)
        started = time.perf_counter()
        _submit_all(c, tasks, batch)
        submitted = time.perf_counter() - started
        work = queue_name(c.namespace, WORK_QUEUE)
        await_value(lambda: True if queue_counts(c.broker, work)[0] >= tasks else None,
                    timeout_s, f"{tasks:,} dispatches in the work queue", c.sup.poll)
        accepted = time.perf_counter() - started
        after, peak = rss_kib(pid), rss_kib(pid, "VmHWM")
    return {"tasks": tasks, "rss_before_kib": before, "rss_after_kib": after,
            "rss_peak_kib": peak, "bytes_per_task": (after - before) * 1024 / tasks,
            "submit_s": submitted, "accept_s": accepted, "accepted_per_s": tasks / accepted}


def _submit_all(c: Cluster, tasks: int, batch: int) -> None:
    sub = c.submitter()
    try:
        for i in range(0, tasks, batch):
            sub.submit([TaskSpec(id=f"m{n}", type="echo") for n in range(i, min(tasks, i + batch))],
                       timeout_s=120)
    finally:
        sub.close()
