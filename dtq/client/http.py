"""The Python client of the REST API (on httpx), shared with the `dtq` command line.

    from dtq.client.http import Client

    with Client("http://127.0.0.1:8000", token="...") as client:   # or $DTQ_API_TOKEN
        task_id = client.submit("echo", {"message": "hi"}, idempotency_key="order-42")
        client.wait(task_id, timeout_s=30)["state"]      # 'succeeded'
        client.result(task_id)                           # {'message': 'hi'}

Errors are rooted in `dtq.errors.DtqError`. An error answer raises an `ApiError` subclass
carrying the status, code, message and field of its body (`InvalidRequest` for 400, 413, 415,
422; `Unauthorized` for 401 (no token, or a wrong one); `NotFound` for 404 and 410; `Conflict`
for 409; `Unavailable` for 503). `ApiUnreachable`
means no answer at all, `WaitTimeout` that `wait` passed its deadline, `TaskFailed` that
`result` was asked of a task that failed or was cancelled.

`InProcessTransport(app)` serves requests with an ASGI app in this process (tests, embedding).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

import anyio
import httpx

from dtq.client.errors import (
    ApiError,
    Conflict,
    InvalidRequest,
    NotFound,
    ServerError,
    Unauthorized,
    Unavailable,
)
from dtq.errors import DtqError, TransportError

__all__ = [
    "DEFAULT_URL", "ApiError", "ApiUnreachable", "Client", "Conflict", "InProcessTransport",
    "InvalidRequest", "NotFound", "ServerError", "TaskFailed", "Unauthorized", "Unavailable",
    "WaitTimeout",
]

DEFAULT_URL = "http://127.0.0.1:8000"
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
JSON = Any


class ApiUnreachable(TransportError):
    """No answer from the API (connection refused, timed out, broken)."""


class WaitTimeout(DtqError, TimeoutError):
    """`Client.wait` reached its deadline before the task finished."""

    def __init__(self, task_id: str, state: str, timeout_s: float) -> None:
        super().__init__(f"task {task_id} is still {state} after {timeout_s:g} s")
        self.task_id = task_id
        self.state = state


class TaskFailed(DtqError):
    """The task has no value: it failed or was cancelled; `reason` says why."""

    def __init__(self, task_id: str, state: str, reason: str | None) -> None:
        super().__init__(f"task {task_id} {state}: {reason or 'no reason given'}")
        self.task_id = task_id
        self.state = state
        self.reason = reason


class InProcessTransport(httpx.BaseTransport):
    """Sends each request to an ASGI app in this process, without sockets (sync code only).

    Unexpected exceptions of the app are raised, not turned into 500s, so tests see them."""

    def __init__(self, app: Any, *, raise_app_exceptions: bool = True) -> None:
        self._asgi = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        return anyio.run(self._handle, request)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        response = await self._asgi.handle_async_request(request)
        content = await response.aread()
        return httpx.Response(response.status_code, headers=response.headers, content=content)


class Client:
    """A dtq REST API client. Thread-safe as httpx.Client is; close it (or use `with`).

    `token`: the API's bearer token (default: $DTQ_API_TOKEN; none if unset)."""

    def __init__(
        self, base_url: str = DEFAULT_URL, *, timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None, poll_s: float = 0.05,
        max_poll_s: float = 1.0, token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.poll_s = poll_s
        self.max_poll_s = max_poll_s
        token = token if token is not None else os.environ.get("DTQ_API_TOKEN") or None
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s,
                                  transport=transport, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- submitting -------------------------------------------------------------------------

    def submit(
        self, type: str, payload: JSON = None, *, deps: Iterable[str] = (),
        idempotency_key: str | None = None, **fields: JSON,
    ) -> str:
        """Submit one task; its id. `fields`: max_attempts, timeout_ms, priority, metadata, id."""
        body = {"type": type, "payload": payload, "deps": list(deps), **fields}
        return str(self.post_task(body, idempotency_key=idempotency_key)["id"])

    def post_task(
        self, body: Mapping[str, JSON], *, idempotency_key: str | None = None,
    ) -> dict[str, JSON]:
        """POST /tasks with a body of your own; the answer (`id`, `state`, `links`)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        return self._object("POST", "/tasks", json=body, headers=headers)

    def submit_dag(
        self, tasks: Mapping[str, Mapping[str, JSON]], *, idempotency_key: str | None = None,
    ) -> dict[str, str]:
        """Submit a DAG (local name -> task, deps naming local tasks or task ids), all or
        nothing; local name -> task id."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        answer = self._object("POST", "/dags", json={"tasks": dict(tasks)}, headers=headers)
        return {str(k): str(v) for k, v in answer["tasks"].items()}

    def cancel(self, task_id: str) -> dict[str, JSON]:
        """Ask to cancel a task that has not started; `Conflict` if it has."""
        return self._object("DELETE", f"/tasks/{task_id}")

    # --- reading ----------------------------------------------------------------------------

    def get(self, task_id: str) -> dict[str, JSON]:
        """The task's record: state, attempt, reason, timestamps, spec."""
        return self._object("GET", f"/tasks/{task_id}")

    def wait(self, task_id: str, timeout_s: float = 60.0) -> dict[str, JSON]:
        """Poll until the task is succeeded, failed or cancelled; its final record."""
        deadline = time.monotonic() + timeout_s
        delay = self.poll_s
        while True:
            record = self.get(task_id)
            if record["state"] in FINAL_STATES:
                return record
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(task_id, str(record["state"]), timeout_s)
            time.sleep(min(delay, remaining))  # the polling period, bounded by the deadline
            delay = min(delay * 2, self.max_poll_s)

    def result_body(self, task_id: str) -> dict[str, JSON]:
        """GET /tasks/{id}/result as it is: value or reason; `Conflict` if not finished."""
        return self._object("GET", f"/tasks/{task_id}/result")

    def result(self, task_id: str) -> JSON:
        """The value of a succeeded task; `TaskFailed` if it failed or was cancelled."""
        body = self.result_body(task_id)
        if body["state"] != "succeeded":
            raise TaskFailed(task_id, str(body["state"]), body.get("reason"))
        return body.get("value")

    def tasks(
        self, *, state: Iterable[str] = (), type: str | None = None, page_size: int = 100,
    ) -> Iterator[dict[str, JSON]]:
        """Every task matching the filters (summaries, in id order), page after page."""
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"state": list(state), "limit": page_size}
            params.update({k: v for k, v in (("type", type), ("cursor", cursor)) if v})
            page = self._object("GET", "/tasks", params=params)
            yield from page["tasks"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def cluster(self) -> dict[str, JSON]:
        """Leader, epoch, workers and queue depths."""
        return self._object("GET", "/cluster")

    def metrics(self) -> str:
        """GET /metrics: the Prometheus text (parse it with
        `prometheus_client.parser.text_string_to_metric_families`)."""
        response = self._send("GET", "/metrics")
        if response.is_error:
            raise ApiError.from_response(response.status_code, _json_or_none(response))
        return response.text

    def ready(self) -> bool:
        """Whether the API answers and can reach the store and the broker."""
        try:
            self._object("GET", "/readyz")
        except (ApiError, ApiUnreachable):
            return False
        return True

    # --- HTTP -------------------------------------------------------------------------------

    def _object(self, method: str, path: str, **kwargs: Any) -> dict[str, JSON]:
        body = self._request(method, path, **kwargs)
        if not isinstance(body, dict):
            raise ServerError(502, "invalid_response", f"{method} {path} answered "
                              "something other than a JSON object")
        return body

    def _request(self, method: str, path: str, **kwargs: Any) -> JSON:
        response = self._send(method, path, **kwargs)
        body = _json_or_none(response)
        if response.is_error:
            raise ApiError.from_response(response.status_code, body)
        return body

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiUnreachable(
                f"cannot reach the dtq API at {self.base_url} ({type(exc).__name__}: {exc}); "
                "is `dtq api` running? (set --api or DTQ_API_URL)") from exc


def _json_or_none(response: httpx.Response) -> JSON:
    try:
        return response.json()
    except ValueError:
        return None
