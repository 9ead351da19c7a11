"""The REST API on the production backend: a real coordinator and worker (processes), RabbitMQ,
Redis, the API served by uvicorn over HTTP, and the Python client.

Skipped when RabbitMQ or Redis is down locally; failing under CI.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import attrs
import httpx
import pytest

from dtq.api.server import create_app
from dtq.client.backend import RabbitBackend
from dtq.client.http import Client, Conflict, InvalidRequest, TaskFailed
from dtq.runtime.process import NodeConfig, Supervisor
from dtq.task import id_for_key
from transports.rabbitmq import delete_namespace
from transports.redis import RedisHistory, RedisStore

from .test_api_kit import TOKEN, serving, wait_until

pytestmark = pytest.mark.rabbitmq
NODES = ["coordinator-1", "worker-1"]


@attrs.define
class RealApi:
    client: Client
    supervisor: Supervisor
    history: RedisHistory

    def effects(self, task_id: str) -> int:
        return sum(1 for e in self.history.read_events()
                   if e.kind == "effect" and e.data.get("task") == task_id)

    def has_leader(self) -> bool:
        self.supervisor.poll()
        return self.client.cluster()["leader"] is not None

    def wait(self, task_id: str, timeout_s: float = 30) -> str:
        self.supervisor.poll()
        return str(self.client.wait(task_id, timeout_s=timeout_s)["state"])


@pytest.fixture
def real(rabbitmq_url: str, redis_url: str) -> Iterator[RealApi]:
    ns = f"test-{uuid.uuid4().hex[:8]}"
    common = {"broker_url": rabbitmq_url, "store_url": redis_url, "namespace": ns,
              "history": True, "log_level": "warning"}
    sup = Supervisor([NodeConfig(role=name.split("-")[0], name=name, **common)  # type: ignore
                      for name in NODES])
    store = RedisStore.from_url(redis_url, prefix=ns)
    history = RedisHistory.from_url(redis_url, prefix=ns)
    sup.start()
    backend = RabbitBackend(rabbitmq_url, redis_url, ns, name="api-test")
    try:
        with serving(create_app(backend, tokens=[TOKEN])) as url, \
                Client(url, poll_s=0.02, max_poll_s=0.2, token=TOKEN) as client:
            yield RealApi(client=client, supervisor=sup, history=history)
    finally:
        backend.close()
        sup.stop_all()
        history.close()
        store.delete_all()
        store.close()
        delete_namespace(rabbitmq_url, ns, NODES)


def test_the_main_flow_over_http_on_rabbitmq_and_redis(real: RealApi) -> None:
    c = real.client
    wait_until(real.has_leader, 30, "a leader")
    wait_until(c.ready, 30, "the cluster to be ready (a leader and a worker's heartbeat)")
    cluster = c.cluster()
    assert cluster["leader"]["name"] == "coordinator-1" and cluster["epoch"] >= 1
    assert set(cluster["queues"]) == {"coordinator", "work", "dead"}

    tid = c.submit("echo", {"message": "hello"}, idempotency_key="real-1")
    assert tid == id_for_key("real-1")
    assert real.wait(tid) == "succeeded"
    assert c.result(tid) == {"message": "hello"}
    assert c.submit("echo", {"message": "hello"}, idempotency_key="real-1") == tid
    with pytest.raises(Conflict):
        c.submit("echo", {"message": "other"}, idempotency_key="real-1")
    with pytest.raises(Conflict):
        c.cancel(tid)
    assert real.effects(tid) == 1
    record = c.get(tid)  # one clock: wall time in ms, on every field of a record
    assert record["created_ms"] <= record["updated_ms"] <= time.time() * 1000 + 1000
    assert record["updated_ms"] > (time.time() - 600) * 1000

    ids = c.submit_dag({"first": {"type": "echo", "payload": 1},
                        "then": {"type": "echo", "payload": 2, "deps": ["first", tid]}})
    assert real.wait(ids["then"]) == "succeeded" and c.result(ids["then"]) == 2
    with pytest.raises(InvalidRequest) as unknown:
        c.submit("echo", deps=["no-such-task"])
    assert unknown.value.status == 400 and "no-such-task" in unknown.value.message
    assert {t["id"] for t in c.tasks()} == {tid, *ids.values()}


def test_failure_reasons_and_cancellation_on_the_real_backend(real: RealApi) -> None:
    c = real.client
    wait_until(real.has_leader, 30, "a leader")
    slow = c.submit("sleep", {"ms": 1500})
    waiting = c.submit("echo", 1, deps=[slow])
    assert c.cancel(waiting)["id"] == waiting
    assert real.wait(waiting) == "cancelled"
    broken = c.submit("nope", max_attempts=1)
    assert real.wait(broken) == "failed"
    with pytest.raises(TaskFailed) as caught:
        c.result(broken)
    assert "unknown task type 'nope'" in (caught.value.reason or "")
    assert real.wait(slow) == "succeeded"


def test_a_request_without_the_token_is_refused_over_http(real: RealApi) -> None:
    url = real.client.base_url
    with httpx.Client(base_url=url) as anonymous:
        r = anonymous.post("/tasks", json={"type": "echo", "payload": 1})
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_token"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        r = anonymous.get("/tasks", headers={"Authorization": f"Bearer {TOKEN[:-1]}x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
        assert anonymous.get("/healthz").status_code == 200
    assert "workers" in real.client.cluster()  # the client bears the token: answered
