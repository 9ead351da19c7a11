"""Shared fixtures. Real-service tests skip locally when the service is down, but fail under CI.

`require_service(name, check)` is that rule in one place; `redis_url` uses it for Redis.
`backend` runs a behavioural test once per backend ("memory", the simulator; "rabbitmq", real
processes over RabbitMQ and Redis, which it requires); `run` runs a scenario file on it, and
`api_on` serves the REST API on it (`tests.api.test_api_kit`). `real_namespace` is a fresh
namespace on the real services, deleted after the test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .api.test_api_kit import api_cluster, api_on  # noqa: F401 (the API suites' fixtures)
from .scenariokit import BACKENDS, Run, runner_for

STORE_URL = os.environ.get("DTQ_STORE_URL", "redis://127.0.0.1:6379/0")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_service(name: str, check: Callable[[], object]) -> None:
    """Run `check`; if it raises, skip the test locally, or fail it when CI is set."""
    try:
        check()
    except Exception as exc:
        message = f"{name} is unreachable: {type(exc).__name__}: {exc}"
        if in_ci():
            pytest.fail(f"{message} (CI is set, so this is a failure)", pytrace=False)
        pytest.skip(message)


def _ping_redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1,
                                  retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """DTQ_STORE_URL (default redis://127.0.0.1:6379/0), once Redis answers a PING."""
    require_service(f"Redis at {STORE_URL}", lambda: _ping_redis(STORE_URL))
    return STORE_URL


BROKER_URL = os.environ.get("DTQ_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def _ping_rabbitmq(url: str) -> None:
    import pika

    params = pika.URLParameters(url)
    params.socket_timeout = 2
    params.connection_attempts = 1
    pika.BlockingConnection(params).close()


@pytest.fixture(scope="session")
def rabbitmq_url(redis_url: str) -> str:
    """DTQ_BROKER_URL once RabbitMQ accepts a connection (and Redis answers: the real backend
    needs both)."""
    require_service(f"RabbitMQ at {BROKER_URL}", lambda: _ping_rabbitmq(BROKER_URL))
    return BROKER_URL


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend's name: "memory", or "rabbitmq" once RabbitMQ and Redis answer (skipped
    locally when they are down, failing under CI). Each suite builds what it needs from it."""
    name = str(request.param)
    if name == "rabbitmq":
        request.getfixturevalue("rabbitmq_url")
    return name


@pytest.fixture
def run(backend: str) -> Run:
    """Runs `scenarios/NAME` on the backend."""
    return runner_for(backend)


REAL_NODES = ["coordinator-1", "worker-1", "client", "api"]
"""The actors whose mailboxes `real_namespace` deletes: the tests using it start these."""


@pytest.fixture
def real_namespace(rabbitmq_url: str, redis_url: str) -> Iterator[str]:
    """A namespace of its own on RabbitMQ and Redis; its queues and keys are deleted after."""
    from transports.rabbitmq import delete_namespace
    from transports.redis import RedisStore

    ns = f"test-{uuid.uuid4().hex[:8]}"
    yield ns
    store = RedisStore.from_url(redis_url, prefix=ns)
    store.delete_all()
    store.close()
    delete_namespace(rabbitmq_url, ns, REAL_NODES)
