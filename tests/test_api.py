"""The REST API over a simulated cluster, in process: submissions, idempotency, DAGs, results,
cancellation, listing, the cluster view and every kind of refusal."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dtq.api.server import create_app
from dtq.api.views import WORKER_SILENT_MS
from dtq.client.backend import SimBackend
from dtq.errors import ConnectionLost, StoreUnavailable
from dtq.store import WorkerInfo
from dtq.task import MAX_PAYLOAD_BYTES, id_for_key
from dtq.tasktypes import load_task_types

from .test_api_kit import TOKEN, Api, api_on, make_api

JSON_CT = {"content-type": "application/json"}


@pytest.fixture
def api() -> Api:
    return make_api()


@pytest.fixture
def paused() -> Api:
    """The cluster runs only when a test advances it."""
    return make_api(autorun=False)


def error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"status", "code", "message", "field"} and err["status"] == status
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return dict(err)


def post(api: Api, path: str, body: Any, **headers: str) -> httpx.Response:
    return api.http.post(path, content=json.dumps(body), headers={**JSON_CT, **headers})


# --- submitting and reading --------------------------------------------------------------------


def test_a_submitted_task_runs_and_its_result_can_be_read(api: Api) -> None:
    r = post(api, "/tasks", {"type": "echo", "payload": {"message": "hi"}})
    assert r.status_code == 202
    body = r.json()
    tid = body["id"]
    assert body["state"] == "succeeded"
    assert body["links"] == {"self": f"/tasks/{tid}", "result": f"/tasks/{tid}/result"}
    record = api.http.get(f"/tasks/{tid}").json()
    assert record["state"] == "succeeded" and record["attempt"] == 1
    assert record["spec"]["payload"] == {"message": "hi"} and record["reason"] is None
    result = api.http.get(f"/tasks/{tid}/result").json()
    assert result["value"] == {"message": "hi"} and result["state"] == "succeeded"
    assert result["worker"].startswith("worker-") and result["attempt"] == 1


def test_every_field_of_a_submission_is_kept(api: Api) -> None:
    body = {"type": "echo", "payload": [1, "two"], "max_attempts": 5, "timeout_ms": 1000,
            "priority": 7, "metadata": {"team": "a"}, "id": "my-task.1"}
    assert post(api, "/tasks", body).json()["id"] == "my-task.1"
    spec = api.http.get("/tasks/my-task.1").json()["spec"]
    assert {k: spec[k] for k in body} == body


def test_a_task_may_depend_on_a_task_submitted_a_moment_before(paused: Api) -> None:
    first = paused.client.submit("echo", 1)
    assert paused.client.get(first)["state"] == "submitted"  # published, not yet recorded
    second = paused.client.submit("echo", 2, deps=[first])
    paused.backend.run_until_finished([first, second], 5000)
    assert paused.client.get(second)["state"] == "succeeded"


# --- idempotency -------------------------------------------------------------------------------


def test_the_same_key_gives_the_same_task_and_one_execution(api: Api) -> None:
    body = {"type": "echo", "payload": {"n": 1}}
    first = post(api, "/tasks", body, **{"Idempotency-Key": "order-42"})
    again = post(api, "/tasks", body, **{"Idempotency-Key": "order-42"})
    assert first.status_code == again.status_code == 202
    tid = first.json()["id"]
    assert again.json()["id"] == tid == id_for_key("order-42")
    assert len(api.events("submit", task=tid)) == 1
    assert len(api.events("effect", task=tid)) == 1


def test_a_replay_before_the_leader_ran_is_not_published_twice(paused: Api) -> None:
    ids = {paused.client.submit("echo", 1, idempotency_key="k") for _ in range(3)}
    assert len(ids) == 1
    paused.backend.run_until_finished(ids, 5000)
    [tid] = ids
    assert len(paused.events("submit", task=tid)) == 1
    assert len(paused.events("effect", task=tid)) == 1


def test_the_same_key_with_another_body_is_a_conflict(api: Api) -> None:
    post(api, "/tasks", {"type": "echo", "payload": 1}, **{"Idempotency-Key": "k1"})
    r = post(api, "/tasks", {"type": "echo", "payload": 2}, **{"Idempotency-Key": "k1"})
    err = error(r, 409, "idempotency_conflict")
    assert "k1" in err["message"] and err["field"] == "idempotency_key"
    assert len(api.events("submit")) == 1


def test_a_key_in_the_body_works_like_the_header_and_must_agree_with_it(api: Api) -> None:
    tid = post(api, "/tasks", {"type": "echo", "idempotency_key": "k2"}).json()["id"]
    assert tid == id_for_key("k2")
    r = post(api, "/tasks", {"type": "echo", "idempotency_key": "k2"},
             **{"Idempotency-Key": "other"})
    assert error(r, 422)["field"] == "idempotency_key"


def test_concurrent_requests_with_one_key_and_two_bodies_accept_exactly_one(api: Api) -> None:
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def send(payload: int) -> None:
        barrier.wait()
        statuses.append(post(api, "/tasks", {"type": "echo", "payload": payload},
                             **{"Idempotency-Key": "race"}).status_code)

    threads = [threading.Thread(target=send, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(statuses) == [202, 409]
    assert len(api.events("effect", task=id_for_key("race"))) == 1


def test_an_explicit_id_reused_with_another_body_is_a_conflict(api: Api) -> None:
    assert post(api, "/tasks", {"type": "echo", "id": "x1", "payload": 1}).status_code == 202
    assert post(api, "/tasks", {"type": "echo", "id": "x1", "payload": 1}).status_code == 202
    error(post(api, "/tasks", {"type": "echo", "id": "x1", "payload": 2}), 409, "id_conflict")


# --- dependencies and DAGs ---------------------------------------------------------------------


def test_unknown_dependencies_are_refused_by_name_and_nothing_is_published(api: Api) -> None:
    known = api.client.submit("echo", 1)
    r = post(api, "/tasks", {"type": "echo", "deps": [known, "ghost-1", "ghost-2"]})
    err = error(r, 400, "unknown_dependency")
    assert "ghost-1" in err["message"] and "ghost-2" in err["message"]
    assert known not in err["message"] and err["field"] == "deps"
    assert len(api.events("submit")) == 1


def test_a_dag_runs_in_dependency_order(api: Api) -> None:
    base = api.client.submit("echo", "base")
    dag = {"tasks": {
        "report": {"type": "echo", "payload": "r", "deps": ["left", "right"]},
        "left": {"type": "echo", "payload": "l", "deps": [base]},
        "right": {"type": "echo", "payload": "r2"},
    }}
    r = post(api, "/dags", dag)
    assert r.status_code == 202
    ids = r.json()["tasks"]
    assert set(ids) == {"report", "left", "right"}
    assert api.client.get(ids["report"])["spec"]["deps"] == [ids["left"], ids["right"]]
    submitted = [e.data["task"] for e in api.events("submit")][1:]
    assert submitted.index(ids["report"]) > max(submitted.index(ids["left"]),
                                                  submitted.index(ids["right"]))
    for tid in ids.values():
        assert api.client.get(tid)["state"] == "succeeded"
    started = {e.data["task"]: e.seq for e in api.events("started")}
    effects = {e.data["task"]: e.seq for e in api.events("effect")}
    assert started[ids["report"]] > max(effects[ids["left"]], effects[ids["right"]])


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


def test_a_dag_with_unknown_dependencies_names_all_of_them(api: Api) -> None:
    tasks = {"a": {"type": "echo", "deps": ["nope-1"]}, "b": {"type": "echo", "deps": ["a"]},
             "c": {"type": "echo", "deps": ["nope-2"]}}
    err = error(post(api, "/dags", {"tasks": tasks}), 400, "unknown_dependency")
    assert "nope-1" in err["message"] and "nope-2" in err["message"]
    assert err["field"] == "tasks.a.deps"
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


def test_a_dag_replayed_with_its_key_runs_once(api: Api) -> None:
    dag = {"tasks": {"a": {"type": "echo", "payload": 1},
                     "b": {"type": "echo", "payload": 2, "deps": ["a"]}}}
    first = post(api, "/dags", dag, **{"Idempotency-Key": "nightly"}).json()["tasks"]
    again = post(api, "/dags", dag, **{"Idempotency-Key": "nightly"}).json()["tasks"]
    assert first == again
    for tid in first.values():
        assert len(api.events("effect", task=tid)) == 1
    dag["tasks"]["b"]["payload"] = 3
    error(post(api, "/dags", dag, **{"Idempotency-Key": "nightly"}), 409,
          "idempotency_conflict")


# --- results -----------------------------------------------------------------------------------


def test_the_result_of_an_unfinished_task_is_409_and_of_an_unknown_one_404(paused: Api) -> None:
    tid = paused.client.submit("sleep", {"ms": 10_000})
    assert error(paused.http.get(f"/tasks/{tid}/result"), 409, "not_finished")
    paused.backend.advance(100)
    assert "running" in error(paused.http.get(f"/tasks/{tid}/result"), 409)["message"]
    error(paused.http.get("/tasks/nope/result"), 404, "not_found")
    error(paused.http.get("/tasks/nope"), 404, "not_found")


def test_a_failed_task_answers_its_reason(api: Api) -> None:
    tid = api.client.submit("flaky", {"fail_until": 99}, max_attempts=2)
    body = api.http.get(f"/tasks/{tid}/result").json()
    assert body["state"] == "failed"
    assert "failed after 2 attempts" in body["reason"] and "on purpose" in body["reason"]


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


def test_a_waiting_task_can_be_cancelled_and_a_running_one_cannot(paused: Api) -> None:
    a = paused.client.submit("sleep", {"ms": 60_000})
    b = paused.client.submit("echo", 1, deps=[a])
    assert paused.backend.run_until(
        lambda: paused.state(a) == "running" and paused.state(b) == "pending", 5000)
    r = paused.http.delete(f"/tasks/{b}")
    assert r.status_code == 202 and r.json()["id"] == b
    assert paused.backend.run_until_finished([b], 5000)
    assert paused.client.get(b)["state"] == "cancelled"
    assert paused.http.get(f"/tasks/{b}/result").json()["state"] == "cancelled"
    err = error(paused.http.delete(f"/tasks/{a}"), 409, "not_cancellable")
    assert "running" in err["message"]


def test_cancelling_a_finished_or_unknown_task_is_refused(api: Api) -> None:
    tid = api.client.submit("echo", 1)
    error(api.http.delete(f"/tasks/{tid}"), 409, "not_cancellable")
    error(api.http.delete("/tasks/ghost"), 404, "not_found")
    error(api.http.delete("/tasks/%20bad%20id"), 404, "not_found")


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


def test_the_cluster_view_shows_the_leader_and_queues(api: Api) -> None:
    view = api.http.get("/cluster").json()
    assert view["leader"]["name"] == "coordinator-1" and view["leader"]["epoch"] == 1
    assert view["epoch"] == 1
    assert view["queues"] == {"coordinator": 0, "work": 0}
    assert isinstance(view["workers"], list)
    assert api.http.get("/healthz").json() == {"status": "ok"}
    assert api.http.get("/readyz").json() == {"status": "ready"}


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
    yield api_on(backend, create_app(backend, tokens=[TOKEN]))


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
    api = api_on(backend, create_app(backend, tokens=[TOKEN]))
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


def test_declared_types_are_checked_when_the_api_knows_them() -> None:
    api = make_api(task_types=load_task_types(()))
    err = error(post(api, "/tasks", {"type": "resize"}), 422)
    assert err["field"] == "type" and "resize" in err["message"] and "echo" in err["message"]
    err = error(post(api, "/tasks", {"type": "compute", "payload": {"size": -1}}), 422)
    assert err["field"] == "payload.size"
    assert post(api, "/tasks", {"type": "compute", "payload": {"size": 3}}).status_code == 202


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
