"""The import rules the layout keeps, read from the source (every import, function-level ones
included):

* the pure core (actors, messages, clocks, tasks, election, detection, the store and transport
  protocols, the history and its checker, the effect plan) imports only itself, the standard
  library and attrs, cattrs and structlog: never a transport, a client library, the runtime,
  the API or the benchmarks;
* no production module imports the benchmarks (`dtq.bench`, `dtq.benchsim`, `dtq.benchreal`),
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
        "recovery", "effectplan", "taskrun"}
THIRD_PARTY_IN_CORE = {"attrs", "cattrs", "structlog"}
CALL_TIME_EXCEPTIONS = {"tasktypes": {"dtq.app", "dtq.app.TaskHandle", "dtq.app.default_app"}}
"""`TaskActor.submit` (`WordCount.submit(text=...)`) reaches the default app when it is called,
and names its handle type for type checkers: the one way up from the core, at call time."""
BENCH = ("dtq.bench", "dtq.benchsim", "dtq.benchreal")
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
            if not (m.split(".")[0] in sys.stdlib_module_names
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
        if _under(module, BENCH) or module == "dtq.cli":
            continue
        wrong = sorted(m for m in _imports(path) if _under(m, BENCH))
        if wrong:
            bad[module] = wrong
    assert not bad, f"production modules import the benchmarks: {bad}"


def test_only_the_transports_import_the_client_libraries() -> None:
    bad = {}
    for path in sorted((ROOT / "dtq").rglob("*.py")):
        module = _module(path)
        if _under(module, BENCH) or module in ("dtq.testbed",):
            continue  # the benchmarks and the testbed drive the services themselves
        wrong = sorted(m for m in _imports(path) if _under(m, CLIENT_LIBRARIES))
        if wrong:
            bad[module] = wrong
    assert not bad, f"modules outside transports/ import pika or redis: {bad}"
