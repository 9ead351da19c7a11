"""The REST API over a simulated cluster, in process: what needs the simulator (time stopped or
driven by the test, crashes, a store or broker made to fail, a fresh cluster to list) and the
refusals decided at the edge, before the cluster is consulted. What holds on both backends is in
test_api_behaviour.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from dtq.api.server import create_app
from dtq.api.views import WORKER_SILENT_MS
from dtq.client.backend import SimBackend
from dtq.errors import ConnectionLost, StoreUnavailable
from dtq.store import WorkerInfo
from dtq.task import MAX_PAYLOAD_BYTES

from .test_api_kit import JSON_CT, TOKEN, Api, api_over, error, make_api, post


@pytest.fixture
def api() -> Api:
    return make_api()


@pytest.fixture
def paused() -> Api:
    """The cluster runs only when a test advances it."""
    return make_api(autorun=False)


# --- submitting and reading --------------------------------------------------------------------


def test_a_task_may_depend_on_a_task_submitted_a_moment_before(paused: Api) -> None:
    first = paused.client.submit("echo", 1)
    assert paused.client.get(first)["state"] == "submitted"  # published, not yet recorded
    second = paused.client.submit("echo", 2, deps=[first])
    paused.backend.run_until_finished([first, second], 5000)
    assert paused.client.get(second)["state"] == "succeeded"


# --- idempotency -------------------------------------------------------------------------------


def test_a_replay_before_the_leader_ran_is_not_published_twice(paused: Api) -> None:
    ids = {paused.client.submit("echo", 1, idempotency_key="k") for _ in range(3)}
    assert len(ids) == 1
    paused.backend.run_until_finished(ids, 5000)
    [tid] = ids
    assert len(paused.events("submit", task=tid)) == 1
    assert len(paused.events("effect", task=tid)) == 1


# --- dependencies and DAGs ---------------------------------------------------------------------


@pytest.mark.parametrize(("tasks", "named"), [
    ({"a": {"type": "echo", "deps": ["b"]}, "b": {"type": "echo", "deps": ["a"]}},
     ["a -> b -> a", "b -> a -> b"]),
    ({"a": {"type": "echo", "deps": ["a"]}}, ["a -> a"]),
    ({"a": {"type": "echo", "deps": ["c"]}, "b": {"type": "echo", "deps": ["a"]},
      "c": {"type": "echo", "deps": ["b"]}, "d": {"type": "echo"}},
     ["a -> c -> b -> a", "b -> a -> c -> b", "c -> b -> a -> c"]),
])
def test_a_cycle_is_refused_naming_it(api: Api, tasks: dict[str, Any], named: list[str]) -> None:
    err = error(post(api, "/dags", {"tasks": tasks}), 400, "dependency_cycle")
    assert any(cycle in err["message"] for cycle in named), err
    assert not api.events("submit")


@pytest.mark.parametrize(("body", "field"), [
    ({"tasks": {}}, "tasks"),
    ({"tasks": []}, "tasks"),
    ({}, "tasks"),
    ({"tasks": {"a": {"type": "echo"}}, "extra": 1}, "extra"),
    ({"tasks": {"a b": {"type": "echo"}}}, "tasks.a b"),
    ({"tasks": {"a": {"type": "echo", "id": "same"}, "b": {"type": "echo", "id": "same"}}},
     "tasks.b.id"),
    ({"tasks": {"a": {"type": "echo"}, "b": {"type": "echo", "max_attempts": 0}}},
     "tasks.b.max_attempts"),
    ({"tasks": {"a": 3}}, "tasks.a"),
])
def test_a_malformed_dag_is_refused_naming_the_field(
    api: Api, body: dict[str, Any], field: str,
) -> None:
    assert error(post(api, "/dags", body), 422, "invalid_field")["field"] == field
    assert not api.events("submit")


# --- results -----------------------------------------------------------------------------------


def test_the_result_of_an_unfinished_task_is_409_and_of_an_unknown_one_404(paused: Api) -> None:
    tid = paused.client.submit("sleep", {"ms": 10_000})
    assert error(paused.http.get(f"/tasks/{tid}/result"), 409, "not_finished")
    paused.backend.advance(100)
    assert "running" in error(paused.http.get(f"/tasks/{tid}/result"), 409)["message"]
    error(paused.http.get("/tasks/nope/result"), 404, "not_found")
    error(paused.http.get("/tasks/nope"), 404, "not_found")


def test_a_result_over_the_cap_fails_the_task_with_a_clear_reason() -> None:
    api = make_api(max_result_bytes=100)
    tid = api.client.submit("echo", "x" * 200, max_attempts=1)
    body = api.http.get(f"/tasks/{tid}/result").json()
    assert body["state"] == "failed" and "over the cap of 100 bytes" in body["reason"]


def test_an_expired_result_is_gone() -> None:
    api = make_api(result_ttl_ms=1000)
    tid = api.client.submit("echo", 1)
    assert api.http.get(f"/tasks/{tid}/result").status_code == 200
    api.backend.advance(2000)
    assert "result-ttl-ms" in error(api.http.get(f"/tasks/{tid}/result"), 410,
                                    "result_expired")["message"]


# --- cancelling --------------------------------------------------------------------------------


def test_a_just_submitted_task_can_be_cancelled(paused: Api) -> None:
    a = paused.client.submit("sleep", {"ms": 60_000})
    b = paused.client.submit("echo", 1, deps=[a])
    assert paused.http.delete(f"/tasks/{b}").json()["state"] == "submitted"
    assert paused.backend.run_until_finished([b], 5000)
    assert paused.client.get(b)["state"] == "cancelled"


# --- listing -----------------------------------------------------------------------------------


def test_tasks_are_listed_page_by_page(api: Api) -> None:
    ids = sorted(api.client.submit("echo", n) for n in range(5))
    failed = api.client.submit("flaky", {"fail_until": 9}, max_attempts=1)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "type": "echo"}
        if cursor:
            params["cursor"] = cursor
        page = api.http.get("/tasks", params=params).json()
        assert len(page["tasks"]) <= 2
        seen += [t["id"] for t in page["tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    only_failed = api.http.get("/tasks", params={"state": "failed"}).json()["tasks"]
    assert [t["id"] for t in only_failed] == [failed]
    both = api.http.get("/tasks?state=failed&state=succeeded&limit=1000").json()["tasks"]
    assert len(both) == 6


@pytest.mark.parametrize(("query", "field"), [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=abc", "limit"),
    ("state=bogus", "state"), ("cursor=%20x", "cursor"), ("type=Bad%20Type", "type"),
])
def test_bad_list_parameters_are_400(api: Api, query: str, field: str) -> None:
    assert error(api.http.get(f"/tasks?{query}"), 400, "invalid_query")["field"] == field


# --- the cluster -------------------------------------------------------------------------------


def test_a_worker_gone_silent_is_shown_silent_and_readiness_needs_a_leader(api: Api) -> None:
    with api.backend.lock:
        store = api.backend.sim.store
        now = api.backend.sim.now_ms
        store.put_worker(WorkerInfo(name="ghost", last_heartbeat_ms=now - WORKER_SILENT_MS - 1))
    workers = {w["name"]: w for w in api.http.get("/cluster").json()["workers"]}
    assert workers["ghost"]["state"] == "silent"
    assert workers["ghost"]["heartbeat_age_ms"] > WORKER_SILENT_MS
    assert [w["state"] for n, w in workers.items() if n != "ghost"] == ["alive"] * (
        len(workers) - 1) and len(workers) > 1
    with api.backend.lock:
        store.leases.clear()  # no coordinator holds the lease (until its next try)
    error(api.http.get("/readyz"), 503, "not_ready")
    assert "no leader" in api.http.get("/readyz").json()["error"]["message"]


def test_queue_depths_count_waiting_submissions(paused: Api) -> None:
    with paused.backend.lock:
        paused.backend.sim.crash("coordinator-1")  # nobody consumes the leader's queue now
    for n in range(3):
        paused.client.submit("echo", n)
    paused.backend.advance(10)
    assert paused.http.get("/cluster").json()["queues"]["coordinator"] == 3


class _DownStore:
    def __getattr__(self, name: str) -> Any:
        def down(*args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailable("store unreachable (test)")
        return down


class _DownBackend:
    """A backend whose store and broker are both unreachable."""

    def __init__(self) -> None:
        self.store = _DownStore()

    def submit(self, specs: Any) -> None:
        raise ConnectionLost("broker unreachable (test)")

    def cancel(self, task_id: str) -> None:
        raise ConnectionLost("broker unreachable (test)")

    def queue_depths(self) -> dict[str, int]:
        raise ConnectionLost("broker unreachable (test)")

    def ready(self) -> bool:
        raise StoreUnavailable("store unreachable (test)")

    def now_ms(self) -> int:
        return 0


@pytest.fixture
def down() -> Iterator[Api]:
    backend = _DownBackend()
    yield api_over(backend, create_app(backend, tokens=[TOKEN]))


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/tasks/t1"), ("GET", "/tasks/t1/result"), ("GET", "/tasks"),
    ("DELETE", "/tasks/t1"), ("GET", "/cluster"), ("POST", "/tasks"), ("POST", "/dags"),
])
def test_an_unreachable_store_or_broker_is_503(down: Api, method: str, path: str) -> None:
    body = {"type": "echo"} if path == "/tasks" else {"tasks": {"a": {"type": "echo"}}}
    kwargs: dict[str, Any] = {"content": json.dumps(body), "headers": JSON_CT}
    r = down.http.request(method, path, **(kwargs if method == "POST" else {}))
    error(r, 503, "unavailable")
    assert r.headers["retry-after"] == "1"


def test_readiness_fails_when_the_backend_is_down(down: Api) -> None:
    error(down.http.get("/readyz"), 503, "not_ready")
    assert down.http.get("/healthz").status_code == 200


class _ReadsFailAfterPublish:
    """A simulated cluster (kept still) whose store stops answering reads once a message was
    published to it: the publish is confirmed, the state read after it fails."""

    def __init__(self) -> None:
        self.inner = SimBackend(autorun=False)
        self.broken = False
        self.published: list[str] = []

    @property
    def store(self) -> Any:
        return self if self.broken else self.inner.store

    def get_task(self, task_id: str) -> Any:
        raise StoreUnavailable("store unreachable (test)")

    def submit(self, specs: Any) -> None:
        self.inner.submit(specs)
        self.published += [s.id for s in specs]
        self.broken = True

    def cancel(self, task_id: str) -> None:
        self.inner.cancel(task_id)
        self.published.append(f"cancel {task_id}")
        self.broken = True

    def queue_depths(self) -> dict[str, int]:
        return self.inner.queue_depths()

    def ready(self) -> bool:
        return True

    def now_ms(self) -> int:
        return self.inner.now_ms()


def test_a_queued_task_is_never_answered_a_retryable_error() -> None:
    """The publish was confirmed and only the read after it failed: the answer is 202 with the
    id (a 503 with Retry-After would have the client submit the task a second time)."""
    backend = _ReadsFailAfterPublish()
    api = api_over(backend, create_app(backend, tokens=[TOKEN]))
    r = post(api, "/tasks", {"type": "echo", "payload": 1})
    assert r.status_code == 202, r.text
    tid = r.json()["id"]
    assert r.json()["state"] == "submitted" and backend.published == [tid]
    backend.broken = False
    r = api.http.delete(f"/tasks/{tid}")
    assert r.status_code == 202, r.text
    assert r.json() == {"id": tid, "state": "submitted", "links": r.json()["links"]}
    assert backend.published == [tid, f"cancel {tid}"]


# --- refusals at the edge ----------------------------------------------------------------------


def test_a_body_over_the_cap_is_413_by_length_or_by_size() -> None:
    api = make_api(max_body_bytes=1000)
    big = json.dumps({"type": "echo", "payload": "x" * 2000})
    assert error(api.http.post("/tasks", content=big, headers=JSON_CT), 413,
                 "too_large")["field"] == "body"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the size is counted as it arrives
        yield big[:600].encode()
        yield big[600:].encode()

    r = api.http.post("/tasks", content=chunks(), headers=JSON_CT)
    assert "content-length" not in r.request.headers
    error(r, 413, "too_large")
    assert not api.events("submit")


def test_a_payload_over_its_cap_is_413() -> None:
    api = make_api(max_body_bytes=4 * MAX_PAYLOAD_BYTES)
    body = {"type": "echo", "payload": "x" * (MAX_PAYLOAD_BYTES + 1)}
    assert error(post(api, "/tasks", body), 413, "too_large")["field"] == "payload"


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1",
    "multipart/form-data; boundary=x",
])
def test_a_post_that_is_not_json_is_415(api: Api, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = api.http.post("/tasks", content=b'{"type": "echo"}', headers=headers)
    assert error(r, 415, "unsupported_media_type")["field"] == "Content-Type"


@pytest.mark.parametrize("content_type", [
    "application/json", "application/json; charset=utf-8", "Application/JSON",
    "application/vnd.dtq+json",
])
def test_json_media_types_are_accepted(api: Api, content_type: str) -> None:
    r = api.http.post("/tasks", content=b'{"type": "echo"}',
                      headers={"content-type": content_type})
    assert r.status_code == 202


@pytest.mark.parametrize("raw", [
    b"", b"   ", b"{", b"{'type': 'echo'}", b'{"type": "echo", "payload": NaN}',
    b'{"type": "echo", "payload": 1e400}', b'{"type": "echo", "payload": "\\ud800"}',
    b'\xff\xfe{', b'{"type": "echo", "payload": ' + b"1" * 5000 + b"}",
])
def test_bodies_that_are_not_json_are_400(api: Api, raw: bytes) -> None:
    assert error(api.http.post("/tasks", content=raw, headers=JSON_CT), 400,
                 "invalid_json")["field"] == "body"


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(("body", "field"), [
    ([], "body"), ("echo", "body"), (None, "body"), ({}, "type"),
    ({"type": "Echo"}, "type"), ({"type": "echo", "colour": "red"}, "colour"),
    ({"type": "echo", "max_attempts": "3"}, "max_attempts"),
    ({"type": "echo", "max_attempts": True}, "max_attempts"),
    ({"type": "echo", "timeout_ms": 0}, "timeout_ms"),
    ({"type": "echo", "priority": 10}, "priority"),
    ({"type": "echo", "deps": "a"}, "deps"), ({"type": "echo", "deps": [1]}, "deps[0]"),
    ({"type": "echo", "deps": ["a", "a"]}, "deps"),
    ({"type": "echo", "metadata": {"a": 1}}, "metadata.a"),
    ({"type": "echo", "id": ""}, "id"), ({"type": "echo", "id": 7}, "id"),
    ({"type": "echo", "id": "has space"}, "id"),
    ({"type": "echo", "id": "me", "deps": ["me"]}, "deps"),
    ({"type": "echo", "payload": _deep(120)}, "body"),
])
def test_json_that_breaks_the_schema_is_422_naming_the_field(
    api: Api, body: Any, field: str,
) -> None:
    assert error(post(api, "/tasks", body), 422, "invalid_field")["field"] == field
    assert not api.events("submit")


@pytest.mark.parametrize("key", ["", "x" * 257, "tab\tkey", "ключ"])
def test_a_bad_idempotency_key_header_is_400(api: Api, key: str) -> None:
    r = api.http.post("/tasks", content=b'{"type": "echo"}',
                      headers={b"content-type": b"application/json",
                               b"Idempotency-Key": key.encode()})
    assert error(r, 400, "invalid_header")["field"] == "Idempotency-Key"


def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    error(api.http.get("/nowhere"), 404, "not_found")
    r = api.http.put("/tasks")
    error(r, 405, "method_not_allowed")
    assert r.headers["allow"]


def test_the_description_and_docs_are_served(api: Api) -> None:
    doc = api.http.get("/openapi.json").json()
    assert set(doc["paths"]) == {"/tasks", "/dags", "/tasks/{task_id}",
                                 "/tasks/{task_id}/result", "/cluster", "/metrics", "/healthz",
                                 "/readyz"}
    assert doc["paths"]["/tasks"]["post"]["requestBody"]["content"]["application/json"]
    assert "TaskIn" in doc["components"]["schemas"]
    docs = api.http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_the_sim_backend_is_an_api_backend() -> None:
    from dtq.client.backend import ApiBackend

    assert isinstance(SimBackend(), ApiBackend)
