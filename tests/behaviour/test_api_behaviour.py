"""The REST API's behaviour on both backends, written once: submitting and reading, idempotency,
DAGs, refusals that consult the cluster, cancellation, failures, readiness and the cluster view.

`api_on` serves the API over HTTP on a simulated cluster (each submission runs it until its tasks
end) and on real processes over RabbitMQ and Redis (one cluster per module, so every test uses
ids and keys of its own). Refusals decided at the edge, before the cluster is consulted, and what
only the simulator can do (stopped time, crashes) are in test_api.py.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from dtq.client.http import Conflict, InvalidRequest, TaskFailed
from dtq.task import id_for_key

from ..api.test_api_kit import TOKEN, LiveApi, error, post, wait_until

# --- submitting and reading --------------------------------------------------------------------


def test_a_submitted_task_runs_and_its_result_can_be_read(api_on: LiveApi) -> None:
    r = post(api_on, "/tasks", {"type": "echo", "payload": {"message": "hi"}})
    assert r.status_code == 202
    tid = r.json()["id"]
    assert r.json()["links"] == {"self": f"/tasks/{tid}", "result": f"/tasks/{tid}/result"}
    assert api_on.wait(tid) == "succeeded"
    record = api_on.http.get(f"/tasks/{tid}").json()
    assert record["state"] == "succeeded" and record["attempt"] == 1
    assert record["spec"]["payload"] == {"message": "hi"} and record["reason"] is None
    result = api_on.http.get(f"/tasks/{tid}/result").json()
    assert result["value"] == {"message": "hi"} and result["state"] == "succeeded"
    assert result["worker"].startswith("worker-") and result["attempt"] == 1
    assert api_on.client.result(tid) == {"message": "hi"}


def test_every_field_of_a_submission_is_kept(api_on: LiveApi) -> None:
    body = {"type": "echo", "payload": [1, "two"], "max_attempts": 5, "timeout_ms": 1000,
            "priority": 7, "metadata": {"team": "a"}, "id": "my-task.1"}
    assert post(api_on, "/tasks", body).json()["id"] == "my-task.1"
    assert api_on.wait("my-task.1") == "succeeded"
    spec = api_on.http.get("/tasks/my-task.1").json()["spec"]
    assert {k: spec[k] for k in body} == body


# --- idempotency -------------------------------------------------------------------------------


def test_the_same_key_gives_the_same_task_and_one_execution(api_on: LiveApi) -> None:
    body = {"type": "echo", "payload": {"n": 1}}
    first = post(api_on, "/tasks", body, **{"Idempotency-Key": "order-42"})
    again = post(api_on, "/tasks", body, **{"Idempotency-Key": "order-42"})
    assert first.status_code == again.status_code == 202
    tid = first.json()["id"]
    assert again.json()["id"] == tid == id_for_key("order-42")
    assert api_on.wait(tid) == "succeeded"
    assert api_on.client.submit("echo", {"n": 1}, idempotency_key="order-42") == tid
    assert len(api_on.events("accepted", task=tid)) == 1
    assert len(api_on.events("effect", task=tid)) == 1


def test_the_same_key_with_another_body_is_a_conflict(api_on: LiveApi) -> None:
    post(api_on, "/tasks", {"type": "echo", "payload": 1}, **{"Idempotency-Key": "k1"})
    r = post(api_on, "/tasks", {"type": "echo", "payload": 2}, **{"Idempotency-Key": "k1"})
    err = error(r, 409, "idempotency_conflict")
    assert "k1" in err["message"] and err["field"] == "idempotency_key"
    with pytest.raises(Conflict):
        api_on.client.submit("echo", 3, idempotency_key="k1")
    assert api_on.wait(id_for_key("k1")) == "succeeded" and api_on.client.result(
        id_for_key("k1")) == 1
    assert len(api_on.events("accepted", task=id_for_key("k1"))) == 1


def test_a_key_in_the_body_works_like_the_header_and_must_agree_with_it(api_on: LiveApi) -> None:
    tid = post(api_on, "/tasks", {"type": "echo", "idempotency_key": "k2"}).json()["id"]
    assert tid == id_for_key("k2")
    r = post(api_on, "/tasks", {"type": "echo", "idempotency_key": "k2"},
             **{"Idempotency-Key": "other"})
    assert error(r, 422)["field"] == "idempotency_key"


def test_concurrent_requests_with_one_key_and_two_bodies_accept_exactly_one(
    api_on: LiveApi,
) -> None:
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def send(payload: int) -> None:
        barrier.wait()
        statuses.append(post(api_on, "/tasks", {"type": "echo", "payload": payload},
                             **{"Idempotency-Key": "race"}).status_code)

    threads = [threading.Thread(target=send, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(statuses) == [202, 409]
    assert api_on.wait(id_for_key("race")) == "succeeded"
    assert len(api_on.events("effect", task=id_for_key("race"))) == 1


def test_an_explicit_id_reused_with_another_body_is_a_conflict(api_on: LiveApi) -> None:
    body = {"type": "echo", "id": "x1", "payload": 1}
    assert post(api_on, "/tasks", body).status_code == 202
    assert post(api_on, "/tasks", body).status_code == 202
    error(post(api_on, "/tasks", {**body, "payload": 2}), 409, "id_conflict")


# --- dependencies and DAGs ---------------------------------------------------------------------


def test_unknown_dependencies_are_refused_by_name_and_nothing_is_published(
    api_on: LiveApi,
) -> None:
    known = api_on.client.submit("echo", 1)
    r = post(api_on, "/tasks", {"type": "echo", "deps": [known, "ghost-1", "ghost-2"]})
    err = error(r, 400, "unknown_dependency")
    assert "ghost-1" in err["message"] and "ghost-2" in err["message"]
    assert known not in err["message"] and err["field"] == "deps"
    with pytest.raises(InvalidRequest) as unknown:
        api_on.client.submit("echo", deps=["no-such-task"])
    assert unknown.value.status == 400 and "no-such-task" in unknown.value.message
    assert api_on.wait(known) == "succeeded"
    assert not [e for e in api_on.events("accepted") if "ghost-1" in e.data["deps"]
                or "no-such-task" in e.data["deps"]]


def test_a_dag_with_unknown_dependencies_names_all_of_them(api_on: LiveApi) -> None:
    tasks = {"a": {"type": "echo", "deps": ["nope-1"]}, "b": {"type": "echo", "deps": ["a"]},
             "c": {"type": "echo", "deps": ["nope-2"]}}
    err = error(post(api_on, "/dags", {"tasks": tasks}), 400, "unknown_dependency")
    assert "nope-1" in err["message"] and "nope-2" in err["message"]
    assert err["field"] == "tasks.a.deps"


def test_a_dag_runs_in_dependency_order(api_on: LiveApi) -> None:
    base = api_on.client.submit("echo", "base")
    dag = {"tasks": {
        "report": {"type": "sum-deps", "deps": ["left", "right"]},
        "left": {"type": "echo", "payload": 1, "deps": [base]},
        "right": {"type": "echo", "payload": 2},
    }}
    r = post(api_on, "/dags", dag)
    assert r.status_code == 202
    ids = r.json()["tasks"]
    assert set(ids) == {"report", "left", "right"}
    assert api_on.wait(ids["report"]) == "succeeded"
    assert api_on.client.get(ids["report"])["spec"]["deps"] == [ids["left"], ids["right"]]
    assert api_on.client.result(ids["report"]) == 3  # it ran with both results
    for tid in ids.values():
        assert api_on.client.get(tid)["state"] == "succeeded"
    accepted = [e.data["task"] for e in api_on.events("accepted") if e.data["task"] in
                ids.values()]
    assert accepted.index(ids["report"]) > max(accepted.index(ids["left"]),
                                                 accepted.index(ids["right"]))
    started = {e.data["task"]: e.seq for e in api_on.events("started")}
    effects = {e.data["task"]: e.seq for e in api_on.events("effect")}
    assert started[ids["left"]] > effects[base]
    assert started[ids["report"]] > max(effects[ids["left"]], effects[ids["right"]])


def test_a_dag_replayed_with_its_key_runs_once(api_on: LiveApi) -> None:
    dag = {"tasks": {"a": {"type": "echo", "payload": 1},
                     "b": {"type": "echo", "payload": 2, "deps": ["a"]}}}
    first = post(api_on, "/dags", dag, **{"Idempotency-Key": "nightly"}).json()["tasks"]
    again = post(api_on, "/dags", dag, **{"Idempotency-Key": "nightly"}).json()["tasks"]
    assert first == again
    assert api_on.wait(first["b"]) == "succeeded"
    for tid in first.values():
        assert len(api_on.events("effect", task=tid)) == 1
    dag["tasks"]["b"]["payload"] = 3
    error(post(api_on, "/dags", dag, **{"Idempotency-Key": "nightly"}), 409,
          "idempotency_conflict")


# --- types and payloads ------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "refusal"), [
    ({"type": "resize"},
     {"status": 422, "code": "invalid_field", "field": "type",
      "message": "unknown task type 'resize' (this API accepts compute, echo, flaky, io, "
                 "reverse, sleep, sum-deps; load more with `dtq api --tasks MODULE`)"}),
    ({"type": "sleep", "payload": {"ms": -1}},
     {"status": 422, "code": "invalid_field", "field": "payload.ms",
      "message": "must be from 0 to 86400000"}),
    ({"type": "compute", "payload": {"size": -1}},
     {"status": 422, "code": "invalid_field", "field": "payload.size", "message": None}),
])
def test_an_unknown_type_or_a_bad_payload_is_refused_alike(
    api_on: LiveApi, body: dict[str, Any], refusal: dict[str, Any],
) -> None:
    err = error(post(api_on, "/tasks", body), 422)
    assert err == {**refusal, "message": refusal["message"] or err["message"]}
    error(post(api_on, "/dags", {"tasks": {"a": body}}), 422, "invalid_field")


def test_declared_types_are_accepted(api_on: LiveApi) -> None:
    compute = api_on.client.submit("compute", {"size": 3})
    reverse = api_on.client.submit("reverse", {"text": "abc"})
    assert api_on.wait(reverse) == "succeeded" and api_on.client.result(reverse) == "cba"
    assert api_on.wait(compute) == "succeeded"


def test_a_failed_task_answers_its_reason(api_on: LiveApi) -> None:
    tid = api_on.client.submit("flaky", {"fail_until": 99}, max_attempts=2)
    assert api_on.wait(tid) == "failed"
    body = api_on.http.get(f"/tasks/{tid}/result").json()
    assert body["state"] == "failed"
    assert "failed after 2 attempts" in body["reason"] and "on purpose" in body["reason"]
    with pytest.raises(TaskFailed) as caught:
        api_on.client.result(tid)
    assert caught.value.reason == body["reason"]


# --- cancelling --------------------------------------------------------------------------------


def test_a_waiting_task_can_be_cancelled_and_a_running_one_cannot(api_on: LiveApi) -> None:
    a = api_on.client.submit("sleep", {"ms": api_on.long_ms}, timeout_ms=2 * api_on.long_ms)
    b = api_on.client.submit("echo", 1, deps=[a])
    r = api_on.http.delete(f"/tasks/{b}")
    assert r.status_code == 202 and r.json()["id"] == b
    assert api_on.wait(b) == "cancelled"
    assert api_on.http.get(f"/tasks/{b}/result").json()["state"] == "cancelled"
    wait_until(lambda: api_on.state(a) == "running", 30, f"{a} to start")
    err = error(api_on.http.delete(f"/tasks/{a}"), 409, "not_cancellable")
    assert "running" in err["message"]


def test_cancelling_a_finished_or_unknown_task_is_refused(api_on: LiveApi) -> None:
    tid = api_on.client.submit("echo", 1)
    assert api_on.wait(tid) == "succeeded"
    error(api_on.http.delete(f"/tasks/{tid}"), 409, "not_cancellable")
    error(api_on.http.delete("/tasks/ghost"), 404, "not_found")
    error(api_on.http.delete("/tasks/%20bad%20id"), 404, "not_found")


# --- the cluster -------------------------------------------------------------------------------


def test_the_probes_and_the_cluster_view_once_it_is_up(api_on: LiveApi) -> None:
    assert api_on.http.get("/healthz").json() == {"status": "ok"}
    wait_until(api_on.client.ready, 30, "the cluster to be ready")
    assert api_on.http.get("/readyz").json() == {"status": "ready"}
    view = api_on.client.cluster()
    assert view["leader"]["name"] == "coordinator-1"
    assert view["leader"]["epoch"] == view["epoch"] >= 1
    assert {"coordinator", "work"} <= set(view["queues"])
    assert {w["name"] for w in view["workers"]} >= {"worker-1"}
    assert {w["state"] for w in view["workers"]} == {"alive"}


def test_a_request_without_the_token_is_refused(api_on: LiveApi) -> None:
    with httpx.Client(base_url=api_on.client.base_url) as anonymous:
        r = anonymous.post("/tasks", json={"type": "echo", "payload": 1})
        assert r.status_code == 401 and r.json()["error"]["code"] == "missing_token"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        r = anonymous.get("/tasks", headers={"Authorization": f"Bearer {TOKEN[:-1]}x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
        assert anonymous.get("/healthz").status_code == 200
    assert "workers" in api_on.client.cluster()  # the client bears the token: answered
