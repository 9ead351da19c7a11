"""Helpers of the REST API tests (no tests here): an in-process API over a simulated cluster,
a real HTTP server in a thread, and waiting on a condition with a deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs
import httpx
import uvicorn
from fastapi import FastAPI

from dtq.api.server import create_app
from dtq.client.backend import ApiBackend, SimBackend
from dtq.client.http import Client, InProcessTransport
from dtq.history import Event
from dtq.tasktypes import TaskActor

USER_TASKS = "tests.fixtures.usertasks"
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
    return api_on(backend, app)


def api_on(backend: ApiBackend, app: FastAPI, token: str | None = TOKEN) -> Api:
    transport = InProcessTransport(app)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx.Client(base_url="http://api.test", transport=transport, headers=auth)
    client = Client("http://api.test", transport=transport, poll_s=0.001, max_poll_s=0.01,
                    token=token or "")
    return Api(backend=backend, app=app, http=http, client=client)


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
