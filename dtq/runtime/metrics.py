"""A node's Prometheus metrics, derived from the events its actor records.

Every event a coordinator or worker records (`ctx.record`: the same events the history keeps,
whether or not a history is kept) passes through `NodeMetrics.observe`, so the metrics need no
bookkeeping of their own in the actors:

* `dtq_events_total{kind}`: events by kind (`accepted`, `dispatched`, `succeeded`, `failed`,
  `started`, `effect`, `reassigned`, `stale_write_refused`, `dead_lettered`, ...);
* `dtq_leader_epoch`: the epoch this coordinator leads at (0 while it does not lead);
* `dtq_takeover_seconds` and `dtq_takeover_records`: the time its last takeover took to load
  its view from the store, and the records it loaded (a histogram of takeover times too);
* `dtq_task_latency_seconds` (a leader): from accepting a task to recording its end
  (`succeeded`, `failed`, `cancelled`), for the tasks this leader accepted;
* `dtq_task_run_seconds` (a worker): from starting an attempt to its result (`effect`) or its
  failure (`attempt_failed`);
* suspicions are `dtq_events_total{kind="worker_suspected"}`, reassignments
  `{kind="reassigned"}`.

The two task histograms time on the node's own monotonic clock; a task is tracked from its
first event here to its end and forgotten then, so the table holds only what is in flight.

`dtq coordinator|worker|cluster --metrics-port N` serves them over HTTP (`/metrics`, on
127.0.0.1; in a cluster node i listens on N + i - 1, coordinators first).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class NodeMetrics:
    """One node's metrics, in a registry of their own."""

    def __init__(
        self, node: str, role: str, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        self._accepted: dict[str, float] = {}
        self._started: dict[tuple[str, int], float] = {}
        self.events = Counter("dtq_events", "Events this node recorded, by kind", ["kind"],
                              registry=self.registry)
        info = Gauge("dtq_node_info", "This node: its name and role", ["node", "role"],
                     registry=self.registry)
        info.labels(node=node, role=role).set(1)
        self.epoch = Gauge("dtq_leader_epoch", "The epoch this coordinator leads at (0: it "
                           "does not lead)", registry=self.registry)
        self.takeover = Gauge("dtq_takeover_seconds", "How long this coordinator's last "
                              "takeover took to load its view", registry=self.registry)
        self.takeover_records = Gauge("dtq_takeover_records", "Records its last takeover "
                                      "loaded", registry=self.registry)
        self.takeovers = Histogram("dtq_takeover_duration_seconds", "Takeover times",
                                   buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
                                   registry=self.registry)
        latency_buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
        self.latency = Histogram("dtq_task_latency_seconds", "Accepted -> ended, by how the "
                                 "task ended (leader)", ["state"], buckets=latency_buckets,
                                 registry=self.registry)
        self.run_time = Histogram("dtq_task_run_seconds", "Attempt started -> result or failure "
                                  "(worker)", ["outcome"], buckets=latency_buckets,
                                  registry=self.registry)

    def observe(self, kind: str, data: Mapping[str, Any]) -> None:
        self.events.labels(kind=kind).inc()
        self._time_tasks(kind, data)
        if kind == "leader":
            self.epoch.set(int(data.get("epoch", 0)))
        elif kind == "abdicated":
            self.epoch.set(0)
        elif kind == "takeover_done":
            seconds = float(data.get("ms", 0)) / 1000
            self.takeover.set(seconds)
            self.takeovers.observe(seconds)
            self.takeover_records.set(int(data.get("records", 0)))

    def _time_tasks(self, kind: str, data: Mapping[str, Any]) -> None:
        task = data.get("task")
        if not isinstance(task, str):
            return
        now = self._clock()
        if kind == "accepted":
            self._accepted.setdefault(task, now)
        elif kind in ("succeeded", "failed", "cancelled", "rejected"):
            since = self._accepted.pop(task, None)
            if since is not None:
                self.latency.labels(state=kind).observe(now - since)
        elif kind == "started":
            self._started[(task, int(data.get("attempt", 0)))] = now
        elif kind in ("effect", "attempt_failed"):
            since = self._started.pop((task, int(data.get("attempt", 0))), None)
            if since is not None:
                outcome = "succeeded" if kind == "effect" else "failed"
                self.run_time.labels(outcome=outcome).observe(now - since)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve `/metrics` on `addr:port` from a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)
