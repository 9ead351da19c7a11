"""The REST API on the production backend only: what the simulator cannot show (wall-clock
timestamps, the dead-letter queue). The behaviour shared with the simulator is in
test_api_behaviour.py, on the same real cluster (`api_cluster`: a coordinator and a worker as
processes, RabbitMQ, Redis, the API served by uvicorn over HTTP).

Skipped when RabbitMQ or Redis is down locally; failing under CI.
"""

from __future__ import annotations

import time

import pytest

from .test_api_kit import LiveApi

pytestmark = pytest.mark.rabbitmq


def test_records_keep_wall_time_and_the_view_shows_the_dead_letter_queue(
    api_cluster: LiveApi,
) -> None:
    c = api_cluster.client
    tid = c.submit("echo", {"message": "hello"}, idempotency_key="real-wall-time")
    assert api_cluster.wait(tid) == "succeeded"
    record = c.get(tid)  # one clock: wall time in ms, on every field of a record
    assert record["created_ms"] <= record["updated_ms"] <= time.time() * 1000 + 1000
    assert record["updated_ms"] > (time.time() - 600) * 1000
    assert set(c.cluster()["queues"]) == {"coordinator", "work", "dead"}
