"""Helpers of the REST API tests (no tests here): an in-process API over a simulated cluster,
a real HTTP server in a thread, waiting on a condition with a deadline, and the API served on
either backend (the `api_on` fixture; `api_cluster` is its real cluster, one per module)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from dtq.api.server import create_app
from dtq.client.backend import ApiBackend, RabbitBackend, SimBackend
from dtq.client.http import Client, InProcessTransport
from dtq.history import Event
from dtq.runtime.process import NodeConfig, Supervisor
from dtq.tasktypes import TaskActor, load_task_types
from transports.rabbitmq import delete_namespace
from transports.redis import RedisHistory, RedisStore

USER_TASKS = "tests.fixtures.usertasks"
JSON_CT = {"content-type": "application/json"}
TOKEN = "kit-token-0123456789abcdef"
"""The bearer token of the test APIs (every request of `Api.http` and `Api.client` bears it)."""


@attrs.define
class Api:
    """An API app over a simulated cluster, with an httpx client and a dtq client on it."""

    backend: Any
    """A SimBackend, or a stand-in wrapping one."""
    app: FastAPI
    http: httpx.Client
    client: Client

    def events(self, kind: str, **data: Any) -> list[Event]:
        with self.backend.lock:
            return [e for e in self.backend.sim.history.events if e.kind == kind
                    and all(e.data.get(k) == v for k, v in data.items())]

    def state(self, task_id: str) -> str | None:
        rec = self.backend.store.get_task(task_id)
        return rec.state.value if rec is not None else None


def make_api(
    *, max_body_bytes: int = 1024 * 1024, task_types: Mapping[str, TaskActor] | None = None,
    **backend_options: Any,
) -> Api:
    backend_options.setdefault("task_modules", (USER_TASKS,))
    backend = SimBackend(**backend_options)
    app = create_app(backend, max_body_bytes=max_body_bytes, task_types=task_types,
                     tokens=[TOKEN])
    return api_over(backend, app)


def api_over(backend: ApiBackend, app: FastAPI, token: str | None = TOKEN) -> Api:
    transport = InProcessTransport(app)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx.Client(base_url="http://api.test", transport=transport, headers=auth)
    client = Client("http://api.test", transport=transport, poll_s=0.001, max_poll_s=0.01,
                    token=token or "")
    return Api(backend=backend, app=app, http=http, client=client)


def error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The error object of a refusal, after checking its status and shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"status", "code", "message", "field"} and err["status"] == status
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return dict(err)


def post(api: Api | LiveApi, path: str, body: Any, **headers: str) -> httpx.Response:
    return api.http.post(path, content=json.dumps(body), headers={**JSON_CT, **headers})


def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)  # polling period of a deadline-bound wait


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn on a free local port in a thread; yield its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), 10, "uvicorn to start")
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


# --- the API served on either backend ----------------------------------------------------------

NODES = ("coordinator-1", "worker-1")
"""The real cluster behind the API: one coordinator and one worker (running two tasks at once)."""
SUBMITTER = "api-test"
"""The name the real API publishes under."""


@attrs.define
class LiveApi:
    """The API served over HTTP on one backend (`name`), with a dtq client and an httpx client
    (both bearing the token) on it, and the cluster's history."""

    name: str
    client: Client
    http: httpx.Client
    read_events: Callable[[], list[Event]]
    long_ms: int
    """A sleep still running when a test looks again: on the simulator, past the virtual time a
    submission runs it (`SimBackend.budget_ms`); on real processes, a few seconds."""
    check: Callable[[], object] = lambda: None
    """Called before each wait (the real cluster restarts a node that crashed)."""

    def events(self, kind: str, **data: Any) -> list[Event]:
        return [e for e in self.read_events() if e.kind == kind
                and all(e.data.get(k) == v for k, v in data.items())]

    def state(self, task_id: str) -> str:
        return str(self.client.get(task_id)["state"])

    def wait(self, task_id: str, timeout_s: float = 30) -> str:
        """The task's final state, once it has one."""
        self.check()
        return str(self.client.wait(task_id, timeout_s=timeout_s)["state"])

    def has_leader(self) -> bool:
        self.check()
        return self.client.cluster()["leader"] is not None


def _declared_types() -> dict[str, TaskActor]:
    return load_task_types((USER_TASKS,))


@contextmanager
def _served(name: str, backend: ApiBackend, read_events: Callable[[], list[Event]],
            long_ms: int, check: Callable[[], object] = lambda: None) -> Iterator[LiveApi]:
    """`backend` behind the API (declaring the built-in and the user task types) over HTTP."""
    app = create_app(backend, task_types=_declared_types(), tokens=[TOKEN])
    with serving(app) as url, Client(url, poll_s=0.01, max_poll_s=0.2, token=TOKEN) as client, \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        yield LiveApi(name=name, client=client, http=http, read_events=read_events,
                      long_ms=long_ms, check=check)


def _supervise(sup: Supervisor, stop: threading.Event) -> None:
    while not stop.wait(0.1):
        sup.poll()


@pytest.fixture(scope="module")
def api_cluster(rabbitmq_url: str, redis_url: str) -> Iterator[LiveApi]:
    """The API over a real cluster (processes, RabbitMQ, Redis) under a namespace of its own,
    ready (a leader, a worker's heartbeat); its queues and Redis keys are deleted after."""
    ns = f"test-{uuid.uuid4().hex[:8]}"
    sup = Supervisor([NodeConfig(role=name.split("-")[0], name=name, broker_url=rabbitmq_url,
                                 store_url=redis_url, namespace=ns, history=True,
                                 log_level="warning", task_modules=(USER_TASKS,),
                                 concurrency=2) for name in NODES])
    store = RedisStore.from_url(redis_url, prefix=ns)
    history = RedisHistory.from_url(redis_url, prefix=ns)
    backend: RabbitBackend | None = None
    stop = threading.Event()
    # Supervise as `dtq cluster` does, all along: a node that exits (a leader that could not
    # renew its lease on a loaded machine steps down and exits, crash-only) comes back while a
    # test waits for a task, not only when the test next looks.
    supervising = threading.Thread(target=_supervise, args=(sup, stop), daemon=True)
    try:
        sup.start()
        supervising.start()
        backend = RabbitBackend(rabbitmq_url, redis_url, ns, name=SUBMITTER)
        with _served("rabbitmq", backend, history.read_events, long_ms=3000) as api:
            wait_until(api.has_leader, 30, "a leader")
            wait_until(api.client.ready, 30, "the cluster to be ready (a leader and a worker)")
            yield api
    finally:
        stop.set()
        if supervising.is_alive():
            supervising.join(5)
        if backend is not None:
            backend.close()
        sup.stop_all()
        history.close()
        store.delete_all()
        store.close()
        delete_namespace(rabbitmq_url, ns, [*NODES, SUBMITTER])


@pytest.fixture
def api_on(backend: str, request: pytest.FixtureRequest) -> Iterator[LiveApi]:
    """The API served on `backend`: a simulated cluster of its own per test (each submission
    runs it until its tasks end), or the module's real cluster (tests use ids and keys of
    their own)."""
    if backend == "rabbitmq":
        yield request.getfixturevalue("api_cluster")
        return
    sim = SimBackend(task_modules=(USER_TASKS,))

    def read_events() -> list[Event]:
        with sim.lock:
            return list(sim.sim.history.events)

    with _served(backend, sim, read_events, long_ms=10 * sim.budget_ms) as api:
        yield api
