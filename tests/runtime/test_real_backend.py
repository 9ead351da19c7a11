"""The production backend: real processes over RabbitMQ and Redis.

Skipped when RabbitMQ or Redis is down locally; failing under CI.
"""

from __future__ import annotations

import json
import queue
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from dtq.cli.main import main
from dtq.client.submitter import Submitter
from dtq.envelope import Codec, Dispatch, Envelope, Finished, Submit
from dtq.history import Event
from dtq.runtime.process import NodeConfig, Supervisor
from dtq.scenario.real import wait_for
from dtq.task import TERMINAL, TaskSpec
from transports.rabbitmq import delete_namespace, queue_name
from transports.redis import RedisHistory, RedisStore

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.rabbitmq


def test_round_robin_on_real_processes(
    rabbitmq_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["scenario", "run", str(ROOT / "scenarios/round-robin.toml"),
                 "--transport", "rabbitmq", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary["violations"]
    assert summary["ok"] is True and summary["transport"] == "rabbitmq"
    assert summary["tasks"]["succeeded"] == 10 and summary["tasks"]["lost"] == 0


def test_round_robin_prints_the_same_lines(
    rabbitmq_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["scenario", "run", str(ROOT / "scenarios/round-robin.toml"),
                 "--transport", "rabbitmq"]) == 0
    lines = capsys.readouterr().out.splitlines()
    sent = sorted(ln for ln in lines if ln.startswith("[coordinator] Sent: 'Message "))
    received = [ln for ln in lines if ": Received: Message " in ln]
    assert sent == sorted(f"[coordinator] Sent: 'Message {n}'" for n in range(1, 11))
    assert len(received) == 10
    assert {ln.split(":")[0] for ln in received} == {"worker-1", "worker-2", "worker-3"}


@pytest.fixture
def cluster(rabbitmq_url: str, redis_url: str) -> Iterator[tuple[str, Supervisor, RedisStore]]:
    ns = f"test-{uuid.uuid4().hex[:8]}"
    common = {"broker_url": rabbitmq_url, "store_url": redis_url, "namespace": ns,
              "history": True, "log_level": "warning"}
    sup = Supervisor([NodeConfig(role="coordinator", name="coordinator-1", **common),
                      NodeConfig(role="worker", name="worker-1", **common)])
    store = RedisStore.from_url(redis_url, prefix=ns)
    sup.start()
    try:
        yield ns, sup, store
    finally:
        sup.stop_all()
        store.delete_all()
        store.close()
        delete_namespace(rabbitmq_url, ns, ["coordinator-1", "worker-1", "client"])


def _finished(store: RedisStore) -> int:
    return len(store.scan_tasks(states=TERMINAL))


def test_a_malformed_message_is_dead_lettered_and_the_worker_keeps_serving(
    cluster: tuple[str, Supervisor, RedisStore], rabbitmq_url: str, redis_url: str,
) -> None:
    ns, sup, store = cluster
    wait_for(lambda: store.lease("coordinator") is not None, 30, "a leader", sup.poll)
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    ch = conn.channel()
    ch.queue_declare(queue_name(ns, "dead"), durable=True)
    submitter = Submitter(rabbitmq_url, namespace=ns)
    try:
        submitter.submit([TaskSpec(id="before", type="echo", payload=1)])
        wait_for(lambda: _finished(store) == 1, 30, "the first task", sup.poll)
        ch.basic_publish("", queue_name(ns, "work"), b"{this is not json",
                         properties=pika.BasicProperties(delivery_mode=2))
        ch.basic_publish("", queue_name(ns, "work"), json.dumps({"kind": "Nope"}).encode())
        submitter.submit([TaskSpec(id="after", type="echo", payload=2)])
        wait_for(lambda: _finished(store) == 2, 30, "the task after the poison", sup.poll)
        dead = []
        wait_for(lambda: dead.append(ch.basic_get(queue_name(ns, "dead"), auto_ack=True)[2])
                 or sum(d is not None for d in dead) >= 2, 30, "two dead letters")
        assert b"{this is not json" in [d for d in dead if d is not None]
        assert store.get_result("after").value == 2
        assert sup.alive("worker-1")
        events = RedisHistory.from_url(redis_url, prefix=ns).read_events()
        assert len([e for e in events if e.kind == "dead_lettered"]) == 2
    finally:
        submitter.close()
        conn.close()


def test_a_waiting_submitter_hears_each_end_once(
    cluster: tuple[str, Supervisor, RedisStore], rabbitmq_url: str, redis_url: str,
) -> None:
    """A success is heard from the worker's result write, a failure from the leader's."""
    ns, sup, store = cluster
    wait_for(lambda: store.lease("coordinator") is not None, 30, "a leader", sup.poll)
    heard: queue.Queue[Finished] = queue.Queue()
    submitter = Submitter(rabbitmq_url, namespace=ns, name="client", on_finished=heard.put,
                          store_url=redis_url)
    try:
        submitter.submit([TaskSpec(id="ok", type="echo", payload=1),
                          TaskSpec(id="bad", type="no-such-type", max_attempts=1)])
        ends = {}
        while len(ends) < 2:
            f = heard.get(timeout=30)
            assert f.task_id not in ends, f"{f.task_id} heard twice"
            ends[f.task_id] = (f.state, f.reason)
        assert ends["ok"] == ("succeeded", None)
        assert ends["bad"][0] == "failed" and "unknown task type" in str(ends["bad"][1])
        assert store.get_result("ok").value == 1  # available when heard
    finally:
        submitter.close()


def test_waiting_needs_the_store(rabbitmq_url: str) -> None:
    with pytest.raises(ValueError, match="store_url"):
        Submitter(rabbitmq_url, namespace="x", on_finished=lambda f: None)


def _publish_raw(rabbitmq_url: str, queue: str, envelope: Envelope) -> None:
    """Publish an envelope as anyone with the broker's credentials could, past every check
    a dtq client makes."""
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq_url))
    try:
        conn.channel().basic_publish("", queue, Codec().encode(envelope),
                                     properties=pika.BasicProperties(delivery_mode=2))
    finally:
        conn.close()


def _events(redis_url: str, ns: str, kind: str) -> list[Event]:
    return [e for e in RedisHistory.from_url(redis_url, prefix=ns).read_events()
            if e.kind == kind]


def test_a_forged_high_epoch_dispatch_does_not_stop_a_worker(
    cluster: tuple[str, Supervisor, RedisStore], rabbitmq_url: str, redis_url: str,
) -> None:
    ns, sup, store = cluster
    wait_for(lambda: store.lease("coordinator") is not None, 30, "a leader", sup.poll)
    submitter = Submitter(rabbitmq_url, namespace=ns)
    try:
        submitter.submit([TaskSpec(id="before", type="echo", payload=1)])
        wait_for(lambda: _finished(store) == 1, 30, "the first task", sup.poll)
        forged = Envelope(id="forged-1", sender="forger", target="work", epoch=10**15,
                          body=Dispatch(spec=TaskSpec(id="forged", type="echo"), attempt=1))
        _publish_raw(rabbitmq_url, queue_name(ns, "work"), forged)
        wait_for(lambda: bool(_events(redis_url, ns, "forged_dispatch_refused")), 30,
                 "the worker to refuse the forged dispatch", sup.poll)
        submitter.submit([TaskSpec(id=f"after{i}", type="echo", payload=i) for i in range(3)])
        wait_for(lambda: _finished(store) == 4, 30, "the tasks after the forgery", sup.poll)
        [refused] = _events(redis_url, ns, "forged_dispatch_refused")
        assert refused.data["epoch"] == 10**15 and refused.data["store_epoch"] == store.epoch()
        assert {e.data["epoch"] for e in _events(redis_url, ns, "started")} == {store.epoch()}
        assert store.get_task("forged") is None and store.get_result("forged") is None
        assert sup.alive("worker-1")
    finally:
        submitter.close()


def test_a_submission_that_breaks_the_rules_is_rejected_by_the_leader(
    cluster: tuple[str, Supervisor, RedisStore], rabbitmq_url: str, redis_url: str,
) -> None:
    """A priority of 999, published straight to the leader's queue, used to be persisted and
    then crash every leader that dispatched it."""
    ns, sup, store = cluster
    wait_for(lambda: store.lease("coordinator") is not None, 30, "a leader", sup.poll)
    poison = Envelope(id="poison-1", sender="client", target="coordinator",
                      body=Submit(spec=TaskSpec(id="poison", type="echo", priority=999)))
    _publish_raw(rabbitmq_url, queue_name(ns, "coordinator"), poison)
    submitter = Submitter(rabbitmq_url, namespace=ns)
    try:
        submitter.submit([TaskSpec(id="after", type="echo", payload=1)])
        wait_for(lambda: _finished(store) == 2, 30, "the poison's record and the next task",
                 sup.poll)
        rec = store.get_task("poison")
        assert rec is not None and rec.state.value == "failed"
        assert rec.reason == "rejected: priority: must be an integer from 0 to 9"
        after = store.get_result("after")
        assert after is not None and after.value == 1
        [rejected] = _events(redis_url, ns, "rejected")
        assert rejected.data == {"task": "poison", "reason": rec.reason}
        assert len(_events(redis_url, ns, "leader")) == 1, "the leader never restarted"
    finally:
        submitter.close()
