"""The Python application API on the simulator (`dtq.simulate`, `dtq.client.app`) and its
pytest plugin.

What is shown: a task class submitted at the call site and by the app, its handle's state,
result, wait and cancel; `then` chains and DAG builders deliver dependency results; refusals
(unknown type when the types are known, a payload the type's `validate` refuses, a priority out
of range, an unknown dependency, a cycle) raise before anything is published; failures and
timeouts raise errors naming the task; a worker crash does not change the result. The plugin
is shown through its entry point (pytester) and in a new user's folder (`python -m pytest`), on
the README's own quick-start code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import dtq
from dtq import TaskActor, TaskContext, TaskInput, ValidationError
from dtq.client.app import SimApp, default_app
from transports.registry import ENTRY_POINTS

pytest_plugins = ["pytester"]
README = (Path(__file__).parents[2] / "README.md").read_text()


class WordCount(TaskActor):
    type_name = "test-wordcount"

    def validate(self, payload: Any) -> None:
        if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
            raise ValidationError("payload.text", "must be a string")

    def run(self, task: TaskInput, ctx: TaskContext) -> Any:
        return dict(Counter(task.payload["text"].split()))


class Total(TaskActor):
    """The number of words counted by its dependencies."""

    type_name = "test-total"

    def run(self, task: TaskInput, ctx: TaskContext) -> Any:
        return sum(sum(counts.values()) for counts in task.deps.values())


class Fails(TaskActor):
    type_name = "test-fails"

    def run(self, task: TaskInput, ctx: TaskContext) -> Any:
        raise RuntimeError(f"cannot do {task.payload['what']}")


class Pair(TaskActor):
    type_name = "test-pair"

    def run(self, task: TaskInput, ctx: TaskContext) -> Any:
        return (task.payload["a"], task.payload["b"])


@pytest.fixture
def app() -> Any:
    with dtq.simulate(seed=3) as app:
        yield app


def _published(app: SimApp) -> list[str]:
    """Tasks the simulated client published (the history's submit events)."""
    return [e.data["task"] for e in app.sim.history.events if e.kind == "submit"]


def test_a_task_class_submits_at_the_call_site_and_its_handle_gives_the_result(
    app: SimApp,
) -> None:
    handle = WordCount.submit(text="a b a")
    assert handle.state == "submitted"
    assert handle.result(timeout=10) == {"a": 2, "b": 1}
    assert handle.state == "succeeded"
    assert handle.wait() == "succeeded"
    again = app.submit(WordCount, {"text": "c"}, priority=5)
    assert again.result() == {"c": 1}
    assert app.store.get_task(again.id).spec.priority == 5  # type: ignore[union-attr]


def test_payloads_and_results_arrive_as_json_carries_them_as_on_real_workers(
    app: SimApp,
) -> None:
    handle = app.submit("echo", {"pair": (1, 2)})
    assert handle.result() == {"pair": [1, 2]}
    assert app.store.get_task(handle.id).spec.payload == {"pair": [1, 2]}  # type: ignore[union-attr]
    assert app.submit(Pair, a=1, b=2).result() == [1, 2]


def test_then_and_a_dag_run_dependents_on_their_dependencies_results(app: SimApp) -> None:
    first = WordCount.submit(text="a b c")
    assert first.then(Total).result() == 3

    with app.dag() as dag:
        left = dag.add(WordCount, text="x y")
        right = dag.add(WordCount, text="z", name="right")
        total = dag.add(Total, deps=[left, right])
        chained = right.then(Total)
    assert total.handle.result() == 3
    assert chained.handle.result() == 1
    assert set(dag.handles or {}) == {"test-wordcount-1", "right", "test-total-3",
                                      "test-total-4"}
    record = app.store.get_task(total.handle.id)
    assert record is not None and set(record.spec.deps) == {left.handle.id, right.handle.id}


@pytest.mark.parametrize(("call", "field", "words"), [
    (lambda app: app.submit("no-such-type", {}), "type", "unknown task type 'no-such-type'"),
    (lambda app: WordCount.submit(txt="a"), "payload.text", "must be a string"),
    (lambda app: WordCount.submit(text="a", priority=10), "priority", "from 0 to 9"),
    (lambda app: WordCount.submit(text="a", deps=["t-unknown"]), "deps", "t-unknown"),
    (lambda app: app.submit("echo", {"x": 1}, max_attempts=0), "max_attempts", "from 1"),
    (lambda app: app.submit("echo", {"x": {1, 2}}), "payload", "must be JSON"),
])
def test_a_refused_submission_raises_naming_the_field_and_publishes_nothing(
    app: SimApp, call: Any, field: str, words: str,
) -> None:
    with pytest.raises(ValidationError) as refused:
        call(app)
    assert refused.value.field == field and words in refused.value.message
    assert _published(app) == []
    WordCount.submit(text="a")  # what the check looks at: a valid submission is published
    assert len(_published(app)) == 1


def test_a_dag_with_one_bad_task_or_a_cycle_publishes_none_of_its_tasks(app: SimApp) -> None:
    dag = app.dag()
    dag.add(WordCount, text="fine")
    dag.add(WordCount, text=3, name="bad")
    with pytest.raises(ValidationError, match=r"payload\.text"):
        dag.submit()
    cycle = app.dag()
    cycle.add(WordCount, text="a", name="a", deps=["b"])
    cycle.add(WordCount, text="b", name="b", deps=["a"])
    with pytest.raises(ValidationError, match="cycle"):
        cycle.submit()
    assert _published(app) == []


def test_an_idempotency_key_gives_the_same_task_and_refuses_another_body(app: SimApp) -> None:
    one = WordCount.submit(text="a", idempotency_key="order-1")
    assert WordCount.submit(text="a", idempotency_key="order-1") == one
    with pytest.raises(dtq.ConflictError, match="order-1"):
        WordCount.submit(text="b", idempotency_key="order-1")
    assert one.result() == {"a": 1}
    assert _published(app) == [one.id]


def test_a_failed_task_raises_its_reason_and_a_wait_past_its_timeout_names_the_task(
    app: SimApp,
) -> None:
    failed = app.submit(Fails, what="the impossible", max_attempts=2)
    with pytest.raises(dtq.TaskFailed, match="cannot do the impossible") as err:
        failed.result()
    assert err.value.task_id == failed.id and err.value.state == "failed"
    slow = app.submit("sleep", ms=60_000)
    with pytest.raises(dtq.WaitTimeout, match=slow.id):
        slow.wait(timeout=5)
    assert slow.state in ("dispatched", "running")


def test_cancel_before_start_and_refused_after_the_end(app: SimApp) -> None:
    blocker = app.submit("sleep", ms=10_000)
    waiting = blocker.then("echo", {"never": True})
    assert waiting.cancel() in ("submitted", "pending")
    assert waiting.wait() == "cancelled"
    with pytest.raises(dtq.TaskFailed, match="cancelled"):
        waiting.result()
    assert blocker.result() == {"slept_ms": 10_000}
    assert blocker.state == "succeeded"
    with pytest.raises(dtq.ConflictError, match="is succeeded: only submitted, pending or ready"):
        blocker.cancel()


def test_a_worker_crash_mid_task_does_not_change_the_results() -> None:
    with dtq.simulate(seed=5, workers=2) as app:
        handles = [app.submit("sleep", ms=200, task_id=f"s{i}") for i in range(6)]
        app.advance(50)
        running = {rec.worker for h in handles if (rec := app.store.get_task(h.id)) is not None
                   and rec.state.value == "running"}
        assert running, "some task runs when the worker is killed"
        app.kill(sorted(w for w in running if w)[0], restart=True)
        assert [h.result() for h in handles] == [{"slept_ms": 200}] * 6
        verdict = app.check()
        assert verdict.ok, verdict.violations
        assert any(e.kind == "crash" for e in app.sim.history.events)


@pytest.mark.dtq_sim(seed=4, workers=3)
def test_the_fixture_takes_the_marker_and_offers_faults(dtq_sim: SimApp) -> None:
    assert (dtq_sim.seed, dtq_sim.workers) == (4, ["worker-1", "worker-2", "worker-3"])
    assert default_app() is dtq_sim
    dtq_sim.pause("worker-2")
    dtq_sim.partition(["worker-1"], ["broker", "store"])
    handles = [WordCount.submit(text=f"w{i} x") for i in range(6)]
    assert [h.result() for h in handles] == [{f"w{i}": 1, "x": 1} for i in range(6)]
    started = {e.actor for e in dtq_sim.sim.history.events if e.kind == "started"}
    assert started == {"worker-3"}  # worker-2 is frozen, worker-1 cut off
    dtq_sim.heal()
    dtq_sim.resume("worker-2")
    assert WordCount.submit(text="after").result() == {"after": 1}
    assert dtq_sim.check().ok


def test_the_same_seed_gives_the_same_history() -> None:
    def run(seed: int) -> list[tuple[int, str, str]]:
        with dtq.simulate(seed=seed, default=False) as app:
            for i in range(5):
                app.submit(WordCount, text=f"w{i}", task_id=f"w{i}")
            app.check()
            return [(e.time_ms, e.actor, e.kind) for e in app.sim.history.events]

    assert run(11) == run(11)


def test_without_an_app_submitting_at_the_call_site_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dtq.client.app, "_default", None)  # whatever other tests left open
    app = dtq.simulate(default=False)
    with app.as_default():
        assert default_app() is app
    with pytest.raises(dtq.DtqError, match=r"dtq.connect"):
        WordCount.submit(text="a")


def test_everything_the_readme_names_is_importable_from_dtq() -> None:
    names = set(re.findall(r"\bdtq\.([A-Za-z_]+)\b", README)) - {"py", "md", "toml", "yaml"}
    names.discard(ENTRY_POINTS.removeprefix("dtq."))  # an entry-point group, not a name
    for imported in re.findall(r"^from dtq import (.+)$", README, re.MULTILINE):
        names |= {n.strip() for n in imported.split(",")}
    assert {"Client", "TaskActor", "connect"} <= names
    for name in sorted(names):
        namespace: dict[str, Any] = {}
        exec(f"from dtq import {name}", namespace)  # as a user would write it
        assert namespace[name] is not None
    assert dtq.__all__ == sorted(dtq.__all__)
    assert {"App", "Client", "connect", "simulate", "TaskHandle"} <= set(dtq.__all__)


# --- the pytest plugin -------------------------------------------------------------------------

def _readme_block(marker: str) -> str:
    """The README's Python block that contains `marker` (the quick start's own code)."""
    blocks = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"one README python block holds {marker!r}"
    return str(found[0])


USER_TASKS = _readme_block("# wordcount.py")
USER_TEST = _readme_block("def test_wordcount(dtq_sim)")


def test_the_fixture_comes_from_the_plugin_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(wordcount=USER_TASKS, test_user=USER_TEST)
    pytester.syspathinsert()
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    # The fixture comes from the entry point named dtq: without it, no fixture.
    without = pytester.runpytest_subprocess("-p", "no:dtq", "-p", "no:randomly")
    without.assert_outcomes(errors=2)
    without.stdout.fnmatch_lines(["*fixture 'dtq_sim' not found*"])


def test_a_new_users_folder_runs_its_task_test_with_python_m_pytest(tmp_path: Path) -> None:
    """An empty folder, the README's task module and its test using the fixture: `python -m
    pytest` passes there."""
    (tmp_path / "wordcount.py").write_text(USER_TASKS)
    (tmp_path / "test_wordcount.py").write_text(USER_TEST)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
