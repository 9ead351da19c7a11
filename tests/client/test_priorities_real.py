"""Priorities end to end on RabbitMQ, on classic and on quorum queues, through every client: a
backlog submitted by the `Submitter`, then high-priority tasks through the REST API (the HTTP
client) and the CLI (`dtq submit --priority 9`), all queued before the only worker starts.
The high ones start before most of the backlog: on classic queues by the broker's priorities,
on quorum queues (no priorities before RabbitMQ 4.0) by the work queue's high band.

Skipped when RabbitMQ or Redis is down locally; failing under CI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from dtq.api.server import create_app
from dtq.client.backend import RabbitBackend
from dtq.client.http import Client
from dtq.client.submitter import Submitter
from dtq.runtime.process import NodeConfig, Supervisor
from dtq.task import TaskSpec
from transports.redis import RedisHistory

from ..api.test_api_kit import TOKEN, _supervise, serving, wait_until

pytestmark = pytest.mark.rabbitmq

BACKLOG = 40
SLEEP = {"ms": 20}


@pytest.fixture(params=[False, True], ids=["classic", "quorum"])
def quorum(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_high_priority_tasks_start_before_the_backlog(
    rabbitmq_url: str, redis_url: str, real_namespace: str, quorum: bool,
) -> None:
    namespace = real_namespace
    sup = Supervisor([NodeConfig(role=name.split("-")[0], name=name, broker_url=rabbitmq_url,
                                 store_url=redis_url, namespace=namespace, history=True,
                                 log_level="warning", quorum=quorum, concurrency=1)
                      for name in ("coordinator-1", "worker-1")])
    stop = threading.Event()
    supervising = threading.Thread(target=_supervise, args=(sup, stop), daemon=True)
    backend = RabbitBackend(rabbitmq_url, redis_url, namespace, name="api", quorum=quorum)
    submitter = Submitter(rabbitmq_url, namespace=namespace, name="client", quorum=quorum)
    history = RedisHistory.from_url(redis_url, prefix=namespace)
    try:
        sup.start_node("coordinator-1")
        supervising.start()
        with serving(create_app(backend, tokens=[TOKEN])) as url, \
                Client(url, token=TOKEN, poll_s=0.01, max_poll_s=0.2) as client:
            wait_until(lambda: client.cluster()["leader"] is not None, 60, "a leader")
            submitter.submit([TaskSpec(id=f"low-{i}", type="sleep", payload=SLEEP)
                              for i in range(BACKLOG)])
            high = [client.submit("sleep", SLEEP, priority=9) for _ in range(2)]
            high.append(_cli_submit(url, priority=9))
            submitter.submit([TaskSpec(id="high-submitter", type="sleep", payload=SLEEP,
                                       priority=7)])
            high.append("high-submitter")
            tasks = [*high, *(f"low-{i}" for i in range(BACKLOG))]
            # (dispatches travel in bundles, so the work queue holds fewer broker messages)
            wait_until(lambda: all(client.get(t)["state"] == "dispatched" for t in tasks), 60,
                       f"{len(tasks)} tasks dispatched with no worker to take them")
            sup.start_node("worker-1")
            for task in tasks:
                assert client.wait(task, timeout_s=120)["state"] == "succeeded", task
            # (the Submitter stamps a spec made by hand with its wall-clock creation time)
            assert client.get("low-0")["created_ms"] > 1_700_000_000_000
        started = [e.data["task"] for e in history.read_events() if e.kind == "started"]
        assert sorted(started) == sorted(tasks)
        last_high = max(started.index(t) for t in high)
        # FIFO would start all 40 of the backlog first; the bands and the broker's priorities
        # leave at most the few normal dispatches the worker already held.
        assert last_high < len(high) + BACKLOG // 4, started
    finally:
        stop.set()
        sup.stop_all()
        submitter.close()
        backend.close()
        history.close()


def _cli_submit(api_url: str, priority: int) -> str:
    """`dtq submit` as a user runs it; the id it prints."""
    out = subprocess.run(
        [sys.executable, "-m", "dtq.cli", "submit", "sleep", "--payload", json.dumps(SLEEP),
         "--priority", str(priority), "--api", api_url, "--token", TOKEN],
        capture_output=True, text=True, timeout=60, check=True)
    return str(json.loads(out.stdout)["id"])
