"""Turning a scenario's workload into concrete submissions (the same for both backends).

Task ids are deterministic (`task-00001`, or the names a file gives), so two runs of a scenario
submit the same tasks. Strings in payloads are formatted with `n`, the task's 1-based number:
`{message = "Message {n}"}`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import attrs

from dtq.dag import check_dag
from dtq.errors import ValidationError
from dtq.scenario.model import Scenario, TaskTemplate
from dtq.task import TaskSpec, check_spec, check_task_type
from dtq.tasktypes import load_task_types


@attrs.frozen(kw_only=True)
class Planned:
    at_ms: int
    spec: TaskSpec


def _format(value: Any, n: int) -> Any:
    if isinstance(value, str):
        return value.replace("{n}", str(n))
    if isinstance(value, Mapping):
        return {k: _format(v, n) for k, v in value.items()}
    if isinstance(value, list):
        return [_format(v, n) for v in value]
    return value


def _spec(t: TaskTemplate, task_id: str, n: int, deps: tuple[str, ...]) -> TaskSpec:
    return TaskSpec(
        id=task_id, type=t.type, payload=_format(t.payload, n), deps=deps,
        idempotency_key=_format(t.idempotency_key, n), max_attempts=t.max_attempts,
        timeout_ms=t.timeout_ms, priority=t.priority,
    )


def dag_shape(kind: str, size: int, seed: int) -> dict[str, tuple[str, ...]]:
    """A generated DAG: node -> its dependencies."""
    if kind == "diamond":
        return {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
    names = [f"n{i:04d}" for i in range(max(size, 1))]
    if kind == "chain":
        return {name: ((names[i - 1],) if i else ()) for i, name in enumerate(names)}
    if kind == "fan":
        root, leaves, sink = names[0], names[1:-1], names[-1]
        graph: dict[str, tuple[str, ...]] = {root: ()}
        graph.update({leaf: (root,) for leaf in leaves})
        graph[sink] = tuple(leaves) or (root,)
        return graph
    rng = random.Random(seed)
    graph = {}
    for i, name in enumerate(names):
        k = rng.randint(0, min(3, i))
        graph[name] = tuple(sorted(rng.sample(names[:i], k))) if i else ()
    return graph


def plan(scenario: Scenario, seed: int) -> list[Planned]:
    """Every submission of the scenario's workload, in order, with its time."""
    w = scenario.workload
    out: list[Planned] = []
    t = w.start_ms
    for i in range(w.count):
        n = i + 1
        out.append(Planned(at_ms=t, spec=_spec(w.template, f"task-{n:05d}", n, ())))
        t += w.interval_ms
    graph = {task.id or f"t{i + 1}": task.deps for i, task in enumerate(w.tasks)}
    templates = {task.id or f"t{i + 1}": task for i, task in enumerate(w.tasks)}
    if w.dag:
        shape = dag_shape(w.dag, w.dag_size, w.dag_seed if w.dag_seed is not None else seed)
        graph.update(shape)
        templates.update(dict.fromkeys(shape, w.template))
    for n, node in enumerate(check_dag(graph), start=len(out) + 1):
        out.append(Planned(at_ms=t, spec=_spec(templates[node], node, n, tuple(graph[node]))))
        t += w.interval_ms
    return out


def workload_problem(scenario: Scenario) -> str | None:
    """What is wrong with the tasks the workload submits, by the rules the leader applies to
    every submission (a type the workers know, a payload that type's `validate` accepts, the
    size and field limits), or None: a misspelt type or a bad payload is an error in the file,
    found before anything runs, not a run in which every task fails. One task per distinct
    (type, payload) is checked."""
    types = load_task_types(scenario.cluster.task_modules)
    seen: set[str] = set()
    for planned in plan(scenario, scenario.seed):
        spec = planned.spec
        key = f"{spec.type}\0{spec.payload!r}"
        if key in seen:
            continue
        seen.add(key)
        try:
            check_spec(spec)
            check_task_type(spec, types)
        except ValidationError as exc:
            where = "workload" if spec.id.startswith("task-") else f"workload task {spec.id}"
            return f"{where}: {exc} (the leader would reject task {spec.id})"
    return None
