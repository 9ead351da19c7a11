"""`GET /metrics`: the cluster as the REST API sees it, in Prometheus text format.

Each app has its own `CollectorRegistry` holding one `ClusterCollector`, which reads the backend
on every scrape (nothing is kept between scrapes, so any number of API processes answer alike):

* `dtq_tasks{state}`: task records by state, every state named (the store's per-state counts,
  `dtq.store.CountsTasks`; the family is left out on a store that cannot count);
* `dtq_queue_depth{queue}`: broker messages ready per queue (`ApiBackend.queue_depths`);
* `dtq_leader_epoch`: the leader lease's epoch; `dtq_leader{name}`: 1 for the lease's holder
  (no sample while nobody holds it);
* `dtq_workers{state}`: workers `alive` and `silent`, as `GET /cluster` tells them apart;
  `dtq_worker_heartbeat_age_seconds{worker}`: each one's last heartbeat's age.

Suspected workers are not shown: the leader's failure detector keeps its suspicions in memory,
not in the store. Task latency is not either: a record keeps its creation and last-change times,
and a histogram of every finished one would mean reading them all on each scrape.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dtq.api.views import WORKER_SILENT_MS, worker_json
from dtq.client.backend import ApiBackend
from dtq.store import LEADER_LEASE, CountsTasks

__all__ = ["CONTENT_TYPE", "ClusterCollector", "registry_for", "scrape"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ClusterCollector(Collector):
    """Reads the backend's store and broker on each `collect` (a scrape)."""

    def __init__(self, backend: ApiBackend) -> None:
        self.backend = backend

    def collect(self) -> Iterator[GaugeMetricFamily]:
        store = self.backend.store
        if isinstance(store, CountsTasks):
            tasks = GaugeMetricFamily("dtq_tasks", "Task records by state", labels=["state"])
            for state, n in store.count_by_state().items():
                tasks.add_metric([state], n)
            yield tasks
        queues = GaugeMetricFamily("dtq_queue_depth", "Broker messages ready, by queue",
                                   labels=["queue"])
        for queue, depth in sorted(self.backend.queue_depths().items()):
            queues.add_metric([queue], depth)
        yield queues
        yield GaugeMetricFamily("dtq_leader_epoch", "The epoch of the leader lease",
                                value=store.epoch(LEADER_LEASE))
        leader = GaugeMetricFamily("dtq_leader", "1 for the coordinator holding the leader "
                                   "lease (none while nobody does)", labels=["name"])
        lease = store.lease(LEADER_LEASE)
        if lease is not None:
            leader.add_metric([lease.holder], 1)
        yield leader
        yield from self._workers()

    def _workers(self) -> Iterator[GaugeMetricFamily]:
        now = self.backend.now_ms()
        shown = [worker_json(w, now) for w in self.backend.store.workers()]
        by_state = GaugeMetricFamily(
            "dtq_workers", f"Workers by state: silent once the last heartbeat is over "
            f"{WORKER_SILENT_MS} ms old", labels=["state"])
        for state in ("alive", "silent"):
            by_state.add_metric([state], sum(w["state"] == state for w in shown))
        yield by_state
        ages = GaugeMetricFamily("dtq_worker_heartbeat_age_seconds",
                                 "Age of each worker's last heartbeat", labels=["worker"])
        for w in shown:
            ages.add_metric([w["name"]], w["heartbeat_age_ms"] / 1000)
        yield ages


def registry_for(backend: ApiBackend) -> CollectorRegistry:
    """A registry of its own (not the process-wide default) with the cluster's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(backend))
    return registry


def scrape(registry: CollectorRegistry) -> bytes:
    """The exposition text of one scrape (store and broker errors propagate: 503)."""
    return generate_latest(registry)
