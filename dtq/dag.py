"""Dependency graphs: readiness, cycles, unknown dependencies, failure propagation.

Pure functions over task ids. A task the leader accepts depends only on tasks it already
knows, so accepted tasks never form a cycle. Cycles can appear inside one DAG request
(`check_dag` finds them there and names the cycle) and among submissions the leader holds back
until their dependencies arrive (`cycle_through` finds the one a new submission closes). A
dependency that ended without success ends its dependents (`ended_dependency` names it).
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


def ended_dependency(
    deps: Iterable[str], state_of: Callable[[str], TaskState | None],
) -> tuple[str, TaskState] | None:
    """The first dependency that failed or was cancelled, with its state (None if none did)."""
    for dep in deps:
        state = state_of(dep)
        if state in (TaskState.FAILED, TaskState.CANCELLED):
            assert state is not None
            return dep, state
    return None


def cycle_through(
    start: str, deps_of: Callable[[str], Sequence[str] | None],
) -> list[str] | None:
    """A cycle through `start` as a path [start, ..., start], or None. `deps_of(node)` is the
    node's dependencies, or None for a node outside the graph. Iterative (no recursion limit)."""
    parent: dict[str, str] = {}
    stack = [start]
    seen = {start}
    while stack:
        node = stack.pop()
        for dep in deps_of(node) or ():
            if dep == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start] if node != start else [start, start]
            if dep not in seen and deps_of(dep) is not None:
                seen.add(dep)
                parent[dep] = node
                stack.append(dep)
    return None


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
