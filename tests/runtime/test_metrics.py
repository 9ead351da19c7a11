"""A node's Prometheus metrics: derived from the events it records, served over HTTP by a real
node started with a metrics port."""

from __future__ import annotations

import socket
import uuid

import httpx
import pytest
from prometheus_client import generate_latest

from dtq.runtime.metrics import NodeMetrics
from dtq.runtime.process import NodeConfig, Supervisor
from dtq.scenario.real import wait_for
from transports.rabbitmq import delete_namespace
from transports.redis import RedisStore


def _value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_follow_the_events_a_node_records() -> None:
    m = NodeMetrics("coordinator-1", "coordinator")
    m.observe("leader", {"epoch": 7})
    m.observe("takeover_done", {"records": 120, "ms": 35})
    m.observe("dispatched", {"task": "a"})
    m.observe("dispatched", {"task": "b"})
    text = generate_latest(m.registry).decode()
    assert _value(text, "dtq_leader_epoch") == 7
    assert _value(text, "dtq_takeover_seconds") == 0.035
    assert _value(text, "dtq_takeover_records") == 120
    assert 'dtq_events_total{kind="dispatched"} 2.0' in text
    assert 'dtq_node_info{node="coordinator-1",role="coordinator"} 1.0' in text
    m.observe("abdicated", {"reason": "lease lost"})
    assert _value(generate_latest(m.registry).decode(), "dtq_leader_epoch") == 0


def test_task_latency_and_run_time_are_timed_on_the_node_clock() -> None:
    now = [100.0]
    m = NodeMetrics("node", "coordinator", clock=lambda: now[0])
    m.observe("accepted", {"task": "a"})
    m.observe("accepted", {"task": "b"})
    now[0] = 100.3
    m.observe("succeeded", {"task": "a"})
    now[0] = 102.0
    m.observe("failed", {"task": "b", "reason": "boom"})
    m.observe("succeeded", {"task": "never-accepted-here"})  # a previous leader's: not timed
    m.observe("started", {"task": "c", "attempt": 1})
    now[0] = 102.05
    m.observe("effect", {"task": "c", "attempt": 1})
    text = generate_latest(m.registry).decode()
    assert 'dtq_task_latency_seconds_count{state="succeeded"} 1.0' in text
    assert 'dtq_task_latency_seconds_bucket{le="0.5",state="succeeded"} 1.0' in text
    assert 'dtq_task_latency_seconds_bucket{le="0.25",state="succeeded"} 0.0' in text
    assert 'dtq_task_latency_seconds_sum{state="failed"} 2.0' in text
    assert 'dtq_task_run_seconds_bucket{le="0.05",outcome="succeeded"} 1.0' in text
    assert not m._accepted and not m._started  # nothing kept once a task ended


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.rabbitmq
def test_a_coordinator_serves_its_takeover_and_epoch(rabbitmq_url: str, redis_url: str) -> None:
    ns, port = f"test-metrics-{uuid.uuid4().hex[:8]}", _free_port()
    cfg = NodeConfig(role="coordinator", name="coordinator-1", broker_url=rabbitmq_url,
                     store_url=redis_url, namespace=ns, log_level="error", metrics_port=port)
    sup = Supervisor([cfg])
    store = RedisStore.from_url(redis_url, prefix=ns)
    sup.start()
    try:
        def scraped() -> str | None:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return None
            return text if 'dtq_events_total{kind="takeover_done"}' in text else None

        seen: dict[str, str] = {}

        def shows_takeover() -> bool:
            text = scraped()
            if text is not None:
                seen["text"] = text
            return text is not None

        wait_for(shows_takeover, 30, "the coordinator's metrics to show its takeover", sup.poll)
        text = seen["text"]
        lease = store.lease("coordinator")
        assert lease is not None and _value(text, "dtq_leader_epoch") == lease.epoch
        assert (_value(text, "dtq_takeover_seconds") or 0) >= 0
        assert 'kind="takeover_done"' in text
    finally:
        sup.stop_all()
        store.delete_all()
        store.close()
        delete_namespace(rabbitmq_url, ns, ["coordinator-1"])
