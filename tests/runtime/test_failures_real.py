"""Failures one can read on real processes: a task that raises leaves its traceback in its
record in Redis (the same code as on the simulator, `dtq.taskrun`), the worker logs it, and
`TaskError(retry=False)` is not retried. Skipped when RabbitMQ or Redis is down locally."""

from __future__ import annotations

import json
import uuid

import pytest

from dtq.client.submitter import Submitter
from dtq.runtime.process import NodeConfig, Supervisor
from dtq.scenario.real import wait_for
from dtq.task import TERMINAL, TaskSpec
from transports.rabbitmq import delete_namespace
from transports.redis import RedisStore

pytestmark = pytest.mark.rabbitmq


def test_a_raising_task_s_traceback_is_stored_and_logged_on_real_processes(
    rabbitmq_url: str, redis_url: str, capfd: pytest.CaptureFixture[str],
) -> None:
    ns = f"test-{uuid.uuid4().hex[:8]}"
    common = {"broker_url": rabbitmq_url, "store_url": redis_url, "namespace": ns,
              "log_level": "info"}
    sup = Supervisor([NodeConfig(role="coordinator", name="coordinator-1", **common),
                      NodeConfig(role="worker", name="worker-1", **common,
                                 task_modules=("tests.failing_tasks",))])
    store = RedisStore.from_url(redis_url, prefix=ns)
    submitter = Submitter(rabbitmq_url, namespace=ns)
    sup.start()
    try:
        submitter.submit([TaskSpec(id="boom", type="explode", payload=7, max_attempts=2),
                          TaskSpec(id="final", type="give_up", max_attempts=4)])
        wait_for(lambda: len(store.scan_tasks(states=TERMINAL)) == 2, 60, "both tasks to end",
                 sup.poll)
        boom, final = store.get_task("boom"), store.get_task("final")
    finally:
        submitter.close()
        sup.stop_all()
        store.delete_all()
        store.close()
        delete_namespace(rabbitmq_url, ns, ["coordinator-1", "worker-1"])
    assert boom is not None and final is not None
    assert (boom.state.value, boom.attempt) == ("failed", 2)
    assert boom.traceback is not None
    assert "explode_here" in boom.traceback and "ValueError: the payload was 7" in boom.traceback
    assert (final.state.value, final.attempt) == ("failed", 1)
    assert final.reason == "TaskError: the input can never work (retry=False: not retried)"
    logged = [json.loads(line) for line in capfd.readouterr().err.splitlines()
              if '"task failed"' in line]
    assert sorted((d["task"], d["attempt"]) for d in logged) == \
        [("boom", 1), ("boom", 2), ("final", 1)]
    assert all(d["type"] in ("explode", "give_up") and d["traceback"] for d in logged)
    assert all("explode_here" in d["traceback"] for d in logged if d["task"] == "boom")
