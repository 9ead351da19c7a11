"""The accounting of `dtq bench testbed-faults` without a testbed: how successes are counted in
windows, and what makes the run fail. Nothing here measures or asserts a timing."""

from __future__ import annotations

from typing import Any

from dtq.bench.testbed_faults import _Ledger, failed
from dtq.envelope import Finished
from dtq.task import TaskSpec


def _clean() -> dict[str, Any]:
    return {"lost": 0, "stuck": 0, "vanished": 0, "duplicated_effects": 0, "checker_ok": True}


def test_a_run_fails_on_anything_lost_stuck_vanished_duplicated_or_a_violation() -> None:
    assert not failed(_clean())
    for key, bad in (("lost", 1), ("stuck", 2), ("vanished", 1), ("duplicated_effects", 1),
                     ("checker_ok", False)):
        assert failed({**_clean(), key: bad}), key


def test_the_ledger_counts_each_success_once_in_its_window() -> None:
    led = _Ledger()
    specs = [TaskSpec(id=f"t{i}", type="sleep", payload={"ms": 5}) for i in range(3)]
    led.sent(specs, 0.0)
    led.confirm(specs[:2], None)
    led.confirm(specs[2:], RuntimeError("not confirmed"))
    assert led.confirmed == {"t0", "t1"} and led.unconfirmed == {"t2"}
    led.hear(Finished(task_id="t0", state="succeeded", reason=None))
    led.hear(Finished(task_id="t0", state="succeeded", reason=None))  # a duplicated notice
    led.hear(Finished(task_id="t1", state="failed", reason="boom"))
    assert led.notices["t0"] == 2 and len(led.ok_times) == 1
    assert led.open() == 1
    at = led.ok_times[0]
    assert led.successes(at, at + 1) == 1 and led.successes(at + 0.001, at + 1) == 0
