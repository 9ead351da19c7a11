"""A dtq cluster for one benchmark: its own namespace, nodes under a Supervisor, a leader
waited for, and everything it made (queues, keys, history) removed when it ends.

`HistoryTail` reads the run's Redis history incrementally, so a benchmark can wait for the
event that ends a measurement without re-reading thousands of events on every poll.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from dtq.bench.common import await_value
from dtq.client.submitter import Submitter
from dtq.envelope import Finished
from dtq.history import Event
from dtq.runtime.process import NodeConfig, Supervisor, broker_url, store_url
from dtq.store import LEADER_LEASE
from dtq.task import TaskSpec
from transports.rabbitmq import delete_namespace
from transports.redis import RedisHistory, RedisStore
from transports.registry import open_store, require


@attrs.define(eq=False)
class Cluster:
    namespace: str
    broker: str
    sup: Supervisor
    store: RedisStore
    history: RedisHistory | None
    addresses: list[str]
    """Every queue address made in the namespace (nodes and submitters), for the clean-up."""

    def coordinators(self) -> list[str]:
        return [n for n, p in self.sup.nodes.items() if p.cfg.role == "coordinator"]

    def workers(self) -> list[str]:
        return [n for n, p in self.sup.nodes.items() if p.cfg.role == "worker"]

    def leader(self) -> str | None:
        lease = self.store.lease(LEADER_LEASE)
        return lease.holder if lease is not None else None

    def submitter(self, on_finished: Callable[[Finished], None] | None = None) -> Submitter:
        name = f"bench-client-{uuid.uuid4().hex[:6]}"
        self.addresses.append(name)
        return Submitter(self.broker, namespace=self.namespace, name=name,
                         on_finished=on_finished, store_url=store_url())


def _configs(
    ns: str, coordinators: int, workers: int, node: dict[str, Any],
) -> list[NodeConfig]:
    common: dict[str, Any] = {"broker_url": broker_url(), "store_url": store_url(),
                              "namespace": ns, "log_level": "warning", **node}
    worker_only = {"concurrency", "heartbeat_ms", "prefetch"}
    coord = {k: v for k, v in common.items() if k not in worker_only}
    configs = [NodeConfig(role="coordinator", name=f"coordinator-{i}", **coord)
               for i in range(1, coordinators + 1)]
    return configs + [NodeConfig(role="worker", name=f"worker-{i}", **common)
                      for i in range(1, workers + 1)]


@contextlib.contextmanager
def dtq_cluster(
    kind: str, *, coordinators: int = 1, workers: int = 2, history: bool = False,
    **node: Any,
) -> Iterator[Cluster]:
    """Start a cluster in a fresh namespace, yield it once a leader holds the lease, and remove
    every queue and key it made on the way out. `node` goes to every NodeConfig."""
    ns = f"bench-{kind}-{uuid.uuid4().hex[:8]}"
    configs = _configs(ns, coordinators, workers, {"history": history, **node})
    store = require(open_store(store_url(), prefix=ns), RedisStore, "a benchmark cluster")
    hist = RedisHistory.from_url(store_url(), prefix=ns) if history else None
    c = Cluster(namespace=ns, broker=broker_url(), sup=Supervisor(configs), store=store,
                history=hist, addresses=[cfg.name for cfg in configs])
    c.sup.start()
    try:
        await_value(c.leader, 60, "a leader", c.sup.poll)
        yield c
    finally:
        c.sup.stop_all()
        store.delete_all()
        store.close()
        if hist is not None:
            hist.client.close()
        delete_namespace(c.broker, ns, c.addresses)


class HistoryTail:
    """The events of a run's history, read incrementally (only what was appended since)."""

    def __init__(self, history: RedisHistory) -> None:
        self.history = history
        self.events: list[Event] = []
        self._read = 0

    def poll(self) -> None:
        rows = self.history.client.lrange(self.history.key, self._read, -1)
        self._read += len(rows)
        for row in rows:
            d = json.loads(row)
            self.events.append(Event.from_json({**d, "seq": len(self.events)}))

    def find(self, match: Callable[[Event], bool], start: int = 0) -> Event | None:
        self.poll()
        return next((e for e in self.events[start:] if match(e)), None)

    def wait(
        self, match: Callable[[Event], bool], timeout_s: float, what: str,
        tick: Callable[[], object] = lambda: None, start: int = 0,
    ) -> Event:
        """The first event from index `start` on that matches; BenchError after `timeout_s`."""
        return await_value(lambda: self.find(match, start), timeout_s, what, tick)


class Trickle:
    """A background thread submitting one no-op task every `every_s` seconds, so a new leader
    always has something to dispatch."""

    def __init__(self, submitter: Submitter, every_s: float = 0.05) -> None:
        self.submitter = submitter
        self.every_s = every_s
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trickle", daemon=True)

    def __enter__(self) -> Trickle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sent += 1
            with contextlib.suppress(Exception):  # a lost confirm only costs one trickle task
                self.submitter.submit([TaskSpec(id=f"trickle-{self.sent}", type="echo")],
                                      timeout_s=5)
