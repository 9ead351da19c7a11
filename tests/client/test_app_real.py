"""The Python application API (`dtq.connect`) on RabbitMQ and Redis, against real processes.

What is shown: a user's task class submitted at the call site runs on a `Supervisor` cluster and
its handle's result comes back (the end heard as a notice on the store); a DAG built in Python
hands its dependents their dependencies' results; a failed task's `result()` raises its reason; a
wait past its timeout names the task; a task cancelled before it started ends cancelled; and
refused submissions publish nothing on the broker (shown on a namespace no cluster consumes, where
a valid submission does stay queued); and the README's quick start, run as written in a new
folder (`dtq cluster --tasks wordcount`, then its `python -c` line), prints what it says.
Skipped locally when RabbitMQ or Redis is down; failures under CI=1.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dtq
from dtq.client.app import App
from dtq.envelope import COORDINATOR_QUEUE
from dtq.runtime.process import NodeConfig, Supervisor
from dtq.scenario.real import wait_for
from tests.client.test_app import README, _readme_block
from tests.fixtures.usertasks import Flaky, Reverse, SumDeps
from tests.runtime.test_cluster_process import Cluster
from transports.rabbitmq import delete_namespace
from transports.redis import RedisStore

TASKS = "tests.fixtures.usertasks"
pytestmark = pytest.mark.rabbitmq


@pytest.fixture(scope="module")
def app(rabbitmq_url: str, redis_url: str) -> Iterator[App]:
    """A leader and two workers that run the user's task module, and an app on them."""
    ns = f"test-app-{uuid.uuid4().hex[:8]}"
    common: dict[str, Any] = {"broker_url": rabbitmq_url, "store_url": redis_url, "namespace": ns,
              "log_level": "error", "task_modules": (TASKS,)}
    sup = Supervisor([NodeConfig(role="coordinator", name="coordinator-1", **common),
                      *(NodeConfig(role="worker", name=f"worker-{i}", concurrency=2, **common)
                        for i in (1, 2))])
    store = RedisStore.from_url(redis_url, prefix=ns)
    sup.start()
    try:
        wait_for(lambda: store.lease("coordinator") is not None, 30, "a leader", sup.poll)
        with dtq.connect(rabbitmq_url, redis_url, namespace=ns, tasks=[TASKS]) as app:
            yield app
    finally:
        sup.stop_all()
        store.delete_all()
        store.close()
        delete_namespace(rabbitmq_url, ns, ["coordinator-1", "worker-1", "worker-2"])


def test_a_users_task_class_runs_on_the_cluster_and_its_result_comes_back(app: App) -> None:
    handle = Reverse.submit(text="stressed")
    assert handle.result(timeout=60) == "desserts"
    assert handle.state == "succeeded"
    record = app.store.get_task(handle.id)
    assert record is not None and record.spec.type == "reverse"


def test_the_end_is_heard_as_a_notice(app: App) -> None:
    handle = app.submit("echo", {"n": 1})
    assert handle.result(timeout=60) == {"n": 1}
    # The notice comes from the worker's result write; wait on it alone.
    wait_for(lambda: app._known_end(handle.id) is not None, 30, "the notice")
    assert app._known_end(handle.id) == ("succeeded", None)


def test_a_dag_built_in_python_gets_its_dependencies_results(app: App) -> None:
    with app.dag() as dag:
        two = dag.add("echo", 2)
        three = dag.add("echo", 3)
        total = dag.add(SumDeps, deps=[two, three])
        more = total.then(SumDeps)
    assert total.handle.result(timeout=60) == 5
    assert more.handle.result(timeout=60) == 5


def test_a_failed_task_raises_its_reason(app: App) -> None:
    handle = Flaky.submit(fail_until=100, max_attempts=1)
    with pytest.raises(dtq.TaskFailed, match="fails on purpose") as failed:
        handle.result(timeout=60)
    assert failed.value.task_id == handle.id and failed.value.state == "failed"


def test_a_wait_past_its_timeout_names_the_task_and_cancel_ends_a_waiting_one(app: App) -> None:
    slow = app.submit("sleep", ms=3000)
    after = slow.then(Reverse, text="never")
    with pytest.raises(dtq.WaitTimeout, match=after.id):
        after.wait(timeout=0.2)
    assert after.cancel() in ("submitted", "pending", "cancelled")
    assert after.wait(timeout=60) == "cancelled"
    with pytest.raises(dtq.TaskFailed, match="cancelled"):
        after.result(timeout=1)
    assert slow.result(timeout=60) == {"slept_ms": 3000}


def test_refusals_publish_nothing_on_the_broker(rabbitmq_url: str, redis_url: str) -> None:
    ns = f"test-app-idle-{uuid.uuid4().hex[:8]}"  # no cluster consumes here
    store = RedisStore.from_url(redis_url, prefix=ns)
    try:
        with dtq.connect(rabbitmq_url, redis_url, namespace=ns, tasks=[TASKS],
                         default=False) as app:

            def queued() -> int:
                return app.backend.queue_depths()[COORDINATOR_QUEUE]

            refusals: list[Callable[[], object]] = [lambda: app.submit("no-such-type", {}),
                        lambda: app.submit("sleep", ms="long"),
                        lambda: app.submit(Reverse, text="a", priority=10),
                        lambda: app.submit(Reverse, text="a", deps=["t-unknown"])]
            for refused in refusals:
                with pytest.raises(dtq.ValidationError):
                    refused()
            assert queued() == 0
            app.submit(Reverse, text="kept")  # a valid one is published: the count sees it
            wait_for(lambda: queued() == 1, 10, "the valid submission in the queue")
    finally:
        store.delete_all()
        store.close()
        delete_namespace(rabbitmq_url, ns, [])


def test_the_readme_quick_start_runs_as_written_in_a_new_folder(
    tmp_path: Path, rabbitmq_url: str, redis_url: str,
) -> None:
    (tmp_path / "wordcount.py").write_text(_readme_block("# wordcount.py"))
    quick_start = re.search(r"^(python -c '.*')\n# (.*)$", README, re.MULTILINE)
    assert quick_start is not None, "the README's quick start submits with python -c"
    command, printed = quick_start.groups()
    assert "dtq cluster --tasks wordcount &" in README
    code = command.removeprefix("python -c '").removesuffix("'")
    cluster = Cluster(tmp_path, f"test-app-qs-{uuid.uuid4().hex[:8]}", rabbitmq_url, redis_url)
    store = RedisStore.from_url(redis_url, prefix=cluster.ns)
    cluster.start("--tasks", "wordcount")
    try:
        wait_for(lambda: store.lease("coordinator") is not None, 30, "a leader")
        # The README's line, on this test's namespace (the README's cluster uses the default).
        code = code.replace("dtq.connect()", f"dtq.connect({rabbitmq_url!r}, {redis_url!r}, "
                            f"namespace={cluster.ns!r})")
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == printed
    finally:
        if cluster.proc is not None and cluster.proc.poll() is None:
            cluster.proc.send_signal(signal.SIGTERM)
            cluster.wait()
        store.delete_all()
        store.close()
        delete_namespace(rabbitmq_url, cluster.ns, ["coordinator-1", "worker-1"])
