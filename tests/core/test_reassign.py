"""A task whose result is stored is never handed out again.

A leader hands a task to another worker when it looks lost: its worker is suspected, forgot it,
held it unstarted when suspected, or made no progress by its timeout after a takeover. It may
only look lost: the worker wrote the result and its report is on its way, behind the heartbeat
or the silence that made the leader act (after a takeover, the heartbeat that said the task
finished went to the leader before). A new attempt then runs the task again for nothing, and a
task on its last attempt fails although it succeeded. The leader looks for a stored result
first (`Coordinator._result_stored`); these swarm runs (random crashes, pauses, partitions,
dropped connections) show no reassignment after a task's result was stored, and, without the
look, several.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dtq.coordinator import Coordinator
from dtq.scenario.model import load
from dtq.scenario.sim import run_memory
from dtq.scenario.swarm import swarm

ROOT = Path(__file__).resolve().parents[2]
FILES = ("worker-crash.toml", "worker-hang.toml", "duplicate-delivery.toml")
SEEDS = range(1, 11)


def _reassignments() -> tuple[int, list[str]]:
    """How many reassignments the runs made, and those made after the task's result was
    stored (as "file seed task")."""
    total, late = 0, []
    for name in FILES:
        base = load(ROOT / "scenarios" / name)
        for seed in SEEDS:
            scenario, _ = swarm(base, seed)
            stored: set[str] = set()
            for e in run_memory(scenario, seed).events:
                if e.kind == "effect":
                    stored.add(e.data["task"])
                elif e.kind == "reassigned":
                    total += 1
                    if e.data["task"] in stored:
                        late.append(f"{name} {seed} {e.data['task']}")
    return total, late


def test_no_task_is_reassigned_once_its_result_is_stored() -> None:
    total, late = _reassignments()
    assert total > 0, "the runs made no reassignment: they show nothing"
    assert late == []


def test_without_looking_for_the_result_tasks_are_reassigned_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Coordinator, "_result_stored", lambda self, rec, ctx: False)
    _, late = _reassignments()
    assert late, "the mutation went unseen"
