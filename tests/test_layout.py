"""The import rules the layout keeps, read from the source (every import, function-level ones
included):

* the top of `dtq/` holds the pure core and nothing else (actors, messages, clocks, tasks,
  election, detection, the store and transport protocols, the history and its checker, the
  effect plan); every other job lives in a subpackage named for it;
* the core imports only itself, the standard library without its I/O, time, randomness,
  threads or processes, and attrs, cattrs and structlog: never a transport, a client library,
  the runtime, the API or the benchmarks;
* the packages (`dtq` for the core, `dtq.<sub>`, `transports`) import each other without a
  cycle, but for the one way up the core has (`ALLOWED_UP`);
* no production module imports the benchmarks (`dtq.bench`, `dtq.bench.sim`, `dtq.bench.real`),
  but the command line that runs them;
* only `transports.*` imports pika or redis-py.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = {"actor", "envelope", "clock", "task", "tasktypes", "coordinator", "worker", "dag",
        "causal", "election", "detector", "store", "transport", "history", "checker", "errors",
        "recovery", "effectplan", "taskrun", "poison", "stagemarks"}
IMPURE_STDLIB = {"os", "time", "random", "secrets", "uuid", "threading", "multiprocessing",
                 "subprocess", "socket", "ssl", "signal", "asyncio", "selectors", "select",
                 "pathlib", "shutil", "tempfile", "io", "datetime", "urllib", "http", "sqlite3",
                 "concurrent", "queue"}
"""What the core may not import though it is standard library: it touches the world (files,
sockets, processes, clocks, entropy, threads). (Task modules are imported by name, with
importlib, when a node or a simulation is set up: that is not a handler's business.)"""
ALLOWED_UP = {("dtq", "dtq.client")}
"""`dtq.connect`/`dtq.Client` (imported by `dtq/__init__.py` on first use) and `TaskActor.submit`
reach the application API in `dtq.client`, at call time: the one way up from the core."""
THIRD_PARTY_IN_CORE = {"attrs", "cattrs", "structlog"}
CALL_TIME_EXCEPTIONS = {"tasktypes": {"dtq.client.app", "dtq.client.app.TaskHandle",
                                      "dtq.client.app.default_app"}}
"""`TaskActor.submit` (`WordCount.submit(text=...)`) reaches the default app when it is called,
and names its handle type for type checkers: the one way up from the core, at call time."""
BENCH = ("dtq.bench", "dtq.bench.sim", "dtq.bench.real")
CLIENT_LIBRARIES = ("pika", "redis")


def _imports(path: Path) -> set[str]:
    """The modules `path` imports (`from dtq import x` counts as dtq.x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_core_imports_only_itself_and_the_standard_library() -> None:
    bad = {}
    for name in sorted(CORE):
        path = ROOT / "dtq" / f"{name}.py"
        assert path.exists(), f"the core module dtq/{name}.py is gone: update CORE"
        wrong = sorted(
            m for m in _imports(path)
            if not ((m.split(".")[0] in sys.stdlib_module_names
                     and m.split(".")[0] not in IMPURE_STDLIB)
                    or m.split(".")[0] in THIRD_PARTY_IN_CORE or m == "dtq"
                    or (m.startswith("dtq.") and m.split(".")[1] in CORE)
                    or m.startswith("__future__")
                    or m in CALL_TIME_EXCEPTIONS.get(name, ())))
        if wrong:
            bad[name] = wrong
    assert not bad, f"core modules import outside the core: {bad}"


def test_no_production_module_imports_the_benchmarks() -> None:
    bad = {}
    for path in sorted((ROOT / "dtq").rglob("*.py")) + sorted((ROOT / "transports").rglob("*.py")):
        module = _module(path)
        if _under(module, BENCH) or module == "dtq.cli.main":
            continue
        wrong = sorted(m for m in _imports(path) if _under(m, BENCH))
        if wrong:
            bad[module] = wrong
    assert not bad, f"production modules import the benchmarks: {bad}"


def test_only_the_transports_import_the_client_libraries() -> None:
    bad = {}
    for path in sorted((ROOT / "dtq").rglob("*.py")):
        module = _module(path)
        if _under(module, BENCH) or module in ("dtq.testing.testbed",):
            continue  # the benchmarks and the testbed drive the services themselves
        wrong = sorted(m for m in _imports(path) if _under(m, CLIENT_LIBRARIES))
        if wrong:
            bad[module] = wrong
    assert not bad, f"modules outside transports/ import pika or redis: {bad}"


def test_the_top_of_dtq_holds_only_the_core() -> None:
    top = {p.stem for p in (ROOT / "dtq").glob("*.py")} - {"__init__"}
    assert top == CORE, (f"modules at the top of dtq/ that are not core: {sorted(top - CORE)}; "
                         f"core modules missing: {sorted(CORE - top)}")


def _package(module: str) -> str | None:
    """The package a module belongs to: `dtq` (the core), `dtq.<sub>`, or `transports`."""
    parts = module.split(".")
    if parts[0] == "transports":
        return "transports"
    if parts[0] != "dtq":
        return None
    if len(parts) > 1 and (ROOT / "dtq" / parts[1]).is_dir():
        return f"dtq.{parts[1]}"
    return "dtq"


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "dtq").rglob("*.py")) + sorted((ROOT / "transports").rglob("*.py")):
        src = _package(_module(path))
        assert src is not None
        for m in _imports(path):
            dst = _package(m)
            if dst is not None and dst != src and (src, dst) not in ALLOWED_UP:
                graph.setdefault(src, set()).add(dst)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph`, if it has any (depth-first, colouring nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt] if nxt in path else [*path, nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_packages_import_each_other_without_a_cycle() -> None:
    graph = _package_graph()
    assert graph["transports"] <= {"dtq"}, "a transport imports above the core"
    cycle = _cycle(graph)
    assert cycle is None, f"an import cycle between packages: {' -> '.join(cycle)}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None
