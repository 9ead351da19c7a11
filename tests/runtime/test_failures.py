"""Failures one can read: a failed attempt's traceback comes from the real exception, is bounded,
is kept with the task's record (and shown by `GET /tasks/{id}`), and is logged by the worker;
`TaskError(retry=False)` fails a task for good at its first attempt; scenario summaries name
failure reasons. (The real-backend run of the same is in `test_real_backend.py`.)"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

import dtq
from dtq.api.views import record_json
from dtq.scenario.model import parse
from dtq.scenario.sim import run_memory
from dtq.scenario.summary import MAX_FAILURES_LISTED, failure_reasons, summary_table
from dtq.task import TaskRecord, TaskSpec, TaskState
from dtq.taskrun import TRACEBACK_MAX_CHARS, format_traceback
from dtq.tasktypes import TaskActor, TaskContext, TaskError, TaskInput
from tests.failing_tasks import Explode, GiveUp, explode_here


class Again(TaskActor):
    type_name = "again"

    def run(self, task: TaskInput, ctx: TaskContext) -> object:
        raise TaskError("try again later")


@pytest.fixture
def log_level() -> Iterator[Callable[[int], None]]:
    """Set structlog's level for the test (other tests configure it too); restored after."""
    saved = structlog.get_config()

    def set_level(level: int) -> None:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))

    yield set_level
    structlog.configure(**saved)


def _record(app: dtq.SimApp, task_id: str) -> TaskRecord:
    rec = app.store.get_task(task_id)
    assert rec is not None
    return rec


def test_a_raising_task_keeps_its_traceback_with_its_record_on_the_simulator(
    log_level: Callable[[int], None],
) -> None:
    log_level(logging.INFO)
    with structlog.testing.capture_logs() as logs, dtq.simulate(seed=2, default=False) as app:
        handle = app.submit(Explode, max_attempts=2)
        assert handle.wait() == "failed"
        rec = _record(app, handle.id)
    assert rec.attempt == 2
    assert rec.traceback is not None
    assert "explode_here" in rec.traceback and "ValueError: the payload was 7" in rec.traceback
    assert rec.traceback.startswith("Traceback (most recent call last)")
    assert rec.reason == "failed after 2 attempts: ValueError: the payload was 7"
    # kept in the stored JSON, and shown by the API's task view (and so by `dtq status`)
    assert TaskRecord.from_json(rec.to_json()).traceback == rec.traceback
    assert record_json(rec)["traceback"] == rec.traceback
    failed = [e for e in logs if e["event"] == "task failed"]
    assert [(e["task"], e["attempt"], e["type"], e["log_level"]) for e in failed] == \
        [(handle.id, 1, "explode", "info"), (handle.id, 2, "explode", "info")]
    assert all("explode_here" in e["traceback"] for e in failed)
    assert not [e for e in logs if e["log_level"] == "debug"]  # the lifecycle is debug only


def test_the_worker_logs_each_task_s_lifecycle_at_debug_level(
    log_level: Callable[[int], None],
) -> None:
    log_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs, dtq.simulate(seed=4, default=False) as app:
        ok = app.submit("echo", 1)
        bad = app.submit(Explode, max_attempts=1)
        assert ok.wait() == "succeeded" and bad.wait() == "failed"
    def life(task_id: str) -> list[str]:
        return [e["event"] for e in logs if e.get("task") == task_id
                and e["event"].startswith("task ")]
    assert life(ok.id) == ["task received", "task started", "task succeeded", "task reported"]
    assert life(bad.id) == ["task received", "task started", "task failed", "task reported"]


def test_a_record_without_a_traceback_stays_as_old_readers_know_it() -> None:
    rec = TaskRecord(spec=TaskSpec(id="t-1", type="echo", payload=1), state=TaskState.FAILED)
    assert "traceback" not in rec.to_json()
    assert TaskRecord.from_json(rec.to_json()).traceback is None


def test_task_error_without_retry_fails_for_good_at_the_first_attempt() -> None:
    with dtq.simulate(seed=3, default=False) as app:
        final = app.submit(GiveUp, max_attempts=5)
        retried = app.submit(Again, max_attempts=3)
        assert final.wait() == "failed" and retried.wait() == "failed"
        rec, other = _record(app, final.id), _record(app, retried.id)
        events = app.sim.history.events
    assert rec.attempt == 1
    assert rec.reason == "TaskError: the input can never work (retry=False: not retried)"
    assert rec.traceback is not None and "GiveUp" not in rec.reason
    assert [e.data["attempt"] for e in events
            if e.kind == "dispatched" and e.data["task"] == final.id] == [1]
    assert other.attempt == 3  # a TaskError that allows retries is retried like any error
    assert other.reason == "failed after 3 attempts: TaskError: try again later"


def _recurse(n: int) -> None:
    if n == 0:
        raise RuntimeError("x" * 20_000)
    _recurse(n - 1)


def test_a_traceback_is_bounded_and_keeps_its_end() -> None:
    try:
        _recurse(300)
    except RuntimeError as exc:
        text = format_traceback(exc)
    assert len(text) <= TRACEBACK_MAX_CHARS
    assert text.rstrip().endswith("x" * 100)
    assert text.startswith("[traceback cut to its last ")
    try:
        _recurse(300)
    except RuntimeError as exc:
        exc.args = ("short",)
        frames = format_traceback(exc)
    assert frames.count("in _recurse") <= 50 and frames.endswith("RuntimeError: short\n")


def test_the_task_raises_in_the_named_function() -> None:
    with pytest.raises(ValueError, match="7"):
        explode_here(7)


def test_scenario_summaries_list_failure_reasons_bounded() -> None:
    scenario = parse(tomllib.loads("""
name = "failing"
[cluster]
workers = 2
[workload]
count = 30
type = "io"
payload = { op = "read", path = "missing-{n}.txt" }
max_attempts = 1
"""), Path("failing.toml"))
    result = run_memory(scenario, seed=1)
    failures = result.summary["failures"]
    assert result.summary["tasks"]["failed"] == 30
    assert len(failures) == MAX_FAILURES_LISTED < 30
    assert all("no such file: missing-" in f["reason"] for f in failures)
    assert failure_reasons(result.events) == failures
    table = "\n".join(summary_table(scenario, result.summary))
    assert "failures  30 tasks failed" in table
    assert f"{failures[0]['task']}: {failures[0]['reason']}" in table
