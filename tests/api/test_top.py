"""`GET /metrics` and `dtq top`, over a simulated cluster in this process."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dtq.cli.main import main
from dtq.cli.top import Top

from .test_api_kit import TOKEN, Api, make_api, serving


@pytest.fixture
def api() -> Api:
    return make_api(seed=3, workers=2)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(name, labels) -> value of every sample of a scrape."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_tasks_queues_leader_and_workers(api: Api) -> None:
    for n in range(4):
        api.client.submit("echo", n)
    api.client.submit("flaky", {"fail_until": 9}, max_attempts=1)
    answer = api.http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(answer.text)
    assert found[("dtq_tasks", (("state", "succeeded"),))] == 4
    assert found[("dtq_tasks", (("state", "failed"),))] == 1
    assert found[("dtq_tasks", (("state", "running"),))] == 0
    assert found[("dtq_queue_depth", (("queue", "work"),))] == 0
    assert found[("dtq_queue_depth", (("queue", "coordinator"),))] == 0
    cluster = api.client.cluster()
    assert found[("dtq_leader_epoch", ())] == cluster["epoch"] >= 1
    assert found[("dtq_leader", (("name", "coordinator-1"),))] == 1
    assert found[("dtq_workers", (("state", "alive"),))] == 2
    assert found[("dtq_workers", (("state", "silent"),))] == 0
    assert {labels for name, labels in found if name == "dtq_worker_heartbeat_age_seconds"} \
        == {(("worker", "worker-1"),), (("worker", "worker-2"),)}


def test_metrics_show_a_silent_worker_and_need_the_token(api: Api) -> None:
    api.client.submit("echo", 1)
    with api.backend.lock:
        api.backend.sim.crash("worker-2")
    api.backend.advance(10_000)
    found = samples(api.client.metrics())
    assert found[("dtq_workers", (("state", "silent"),))] == 1
    assert found[("dtq_workers", (("state", "alive"),))] == 1
    refused = api.http.get("/metrics", headers={"Authorization": ""})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "missing_token"
    assert "/metrics" in api.http.get("/openapi.json").json()["paths"]


def test_top_rate_counts_tasks_finished_between_frames(api: Api) -> None:
    top = Top(api.client)
    first = top.frame()
    assert first.rate is None and first.tasks["succeeded"] == 0
    for n in range(3):
        api.client.submit("echo", n)
    second = top.frame()
    assert second.tasks["succeeded"] == 3 and second.rate is not None and second.rate > 0


def test_dtq_top_once_prints_leader_workers_queues_and_counts(
    api: Api, capsys: pytest.CaptureFixture[str],
) -> None:
    for n in range(3):
        api.client.submit("echo", n)
    with serving(api.app) as url:
        assert main(["top", "--once", "--api", url, "--token", TOKEN]) == 0
        frame = capsys.readouterr().out
        assert main(["top", "--once", "--api", url]) == 2  # no token: 401
        assert "bearer token" in capsys.readouterr().err
    assert "leader: coordinator-1 (epoch 1)" in frame
    for row in (r"worker-1 │ alive │\s+[\d.]+ s", r"worker-2 │ alive │", r"work\s+│\s+0 │",
                r"coordinator │\s+0 │", r"succeeded\s+│\s+3 │", r"failed\s+│\s+0 │"):
        assert re.search(row, frame), (row, frame)
