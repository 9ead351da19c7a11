"""Dependency graphs: readiness, cycles, unknown dependencies, failure propagation.

Pure functions over task ids. A task can only depend on tasks that exist when it is submitted,
or on tasks submitted with it in one DAG request, so cycles can only appear inside one request;
`check_dag` finds them there, and names the cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from dtq.errors import ValidationError
from dtq.task import TaskState


def readiness(deps: Iterable[str], state_of: Callable[[str], TaskState | None]) -> TaskState:
    """READY when every dependency succeeded, FAILED when one failed or was cancelled,
    PENDING otherwise."""
    pending = False
    for dep in deps:
        state = state_of(dep)
        if state in (TaskState.FAILED, TaskState.CANCELLED):
            return TaskState.FAILED
        if state is not TaskState.SUCCEEDED:
            pending = True
    return TaskState.PENDING if pending else TaskState.READY


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle in `graph` (node -> its dependencies) as a path [a, b, ..., a], or None."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    for root in graph:
        if colour[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path = [root]
        colour[root] = grey
        while stack:
            node, i = stack[-1]
            deps = [d for d in graph.get(node, ()) if d in graph]
            if i < len(deps):
                stack[-1] = (node, i + 1)
                nxt = deps[i]
                if colour[nxt] == grey:
                    return [*path[path.index(nxt):], nxt]
                if colour[nxt] == white:
                    colour[nxt] = grey
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                colour[node] = black
                stack.pop()
                path.pop()
    return None


def check_dag(graph: Mapping[str, Sequence[str]], known: Collection[str] = ()) -> list[str]:
    """Validate a DAG request; return its nodes in an order where dependencies come first.

    Raises `ValidationError` naming an unknown dependency or a cycle.
    """
    for node, deps in graph.items():
        for dep in deps:
            if dep not in graph and dep not in known:
                raise ValidationError(f"tasks.{node}.deps", f"unknown dependency {dep!r}")
    cycle = find_cycle(graph)
    if cycle:
        raise ValidationError("tasks", "dependency cycle: " + " -> ".join(cycle))
    return topological_order(graph)


def topological_order(graph: Mapping[str, Sequence[str]]) -> list[str]:
    order: list[str] = []
    done: set[str] = set()
    for root in graph:
        stack = [(root, iter(graph[root]))]
        if root in done:
            continue
        while stack:
            node, deps = stack[-1]
            for dep in deps:
                if dep in graph and dep not in done:
                    stack.append((dep, iter(graph[dep])))
                    break
            else:
                stack.pop()
                if node not in done:
                    done.add(node)
                    order.append(node)
    return order
