"""Profiles of dtq's coordinator and worker processes during the 5,000-task run.

py-spy (a sampling profiler that attaches to a running process by pid, with no change to the
code) records every node of the run `dtq.bench.real.bench_e2e` starts; the collapsed stacks are
summarised into the functions that use the most CPU, on their own (self) and with what they
call (total). Idle threads are not sampled, so percentages are shares of busy samples.
"""

from __future__ import annotations

import collections
import multiprocessing
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dtq.bench.common import BenchError, await_value
from dtq.bench.real import bench_e2e

NODES = ("coordinator-1", "worker-1", "worker-2")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*)\)$")
_WRAPPERS = frozenset({
    "<module> (<string>)", "spawn_main (multiprocessing/spawn.py)",
    "_main (multiprocessing/spawn.py)", "BaseProcess._bootstrap (multiprocessing/process.py)",
    "BaseProcess.run (multiprocessing/process.py)", "_child (dtq/runtime/process.py)",
    "Thread._bootstrap (threading.py)", "Thread._bootstrap_inner (threading.py)",
    "Thread.run (threading.py)"})
"""Frames every stack passes through: they would top the "total" list and say nothing."""


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile_e2e(out_dir: Path, tasks: int = 5000, workers: int = 2,
                rate: int = 200) -> dict[str, Any]:
    """Run the end-to-end benchmark under py-spy; write `profile-<node>.txt` summaries."""
    exe = py_spy()
    if exe is None:
        raise BenchError("py-spy is not installed: pip install 'py-spy>=0.3.14'")
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    run = threading.Thread(target=lambda: result.update(bench_e2e(tasks, workers=workers)),
                           name="bench-e2e")
    run.start()
    spies = _attach(exe, out_dir, rate, NODES[:1 + workers])
    run.join()
    files = {}
    for node, (proc, raw) in spies.items():
        proc.wait(30)
        files[node] = str(_write_summary(node, raw, out_dir / f"profile-{node}.txt", result))
        raw.unlink(missing_ok=True)
    return {"run": result, "files": files}


def _attach(exe: str, out_dir: Path, rate: int,
            nodes: tuple[str, ...]) -> dict[str, tuple[subprocess.Popen[bytes], Path]]:
    """Start one `py-spy record` per node as soon as its process exists; each ends with it."""
    pids = await_value(lambda: _node_pids(nodes), 60, "the benchmark's node processes")
    spies = {}
    for node, pid in pids.items():
        raw = out_dir / f".profile-{node}.raw"
        cmd = [exe, "record", "--pid", str(pid), "--format", "raw", "--function",
               "--nonblocking", "--rate", str(rate), "--output", str(raw)]
        spies[node] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL), raw)
    return spies


def _node_pids(nodes: tuple[str, ...]) -> dict[str, int] | None:
    found = {p.name: p.pid for p in multiprocessing.active_children()
             if p.name in nodes and p.pid is not None}
    return found if len(found) == len(nodes) else None


def collapse(lines: list[str]) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Self and total sample counts per function from py-spy's raw (collapsed) stacks. Stacks
    in the import system (the node starting up) are left out, and so are the wrapper frames."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit() or "<frozen importlib" in stack:
            continue
        frames = [f for f in (_name(x) for x in stack.split(";")) if f not in _WRAPPERS]
        if frames:
            samples += int(count)
            own[frames[-1]] += int(count)
            total.update(dict.fromkeys(frames, int(count)))
    return own, total, samples


def _name(frame: str) -> str:
    """`func (path/to/file.py:12)` -> `func (pkg/file.py)`: site-packages and the checkout cut."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    path = m.group("file").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m.group('func')} ({path})"


def summarise(node: str, lines: list[str], top: int = 25) -> str:
    own, total, samples = collapse(lines)
    if samples == 0:
        return f"{node}: no busy samples\n"
    out = [f"{node}: {samples} busy samples (start-up imports left out)", "",
           "top functions by self time:"]
    out += [f"  {n / samples:6.1%}  {f}" for f, n in own.most_common(top)]
    out += ["", "top functions by total time (with callees):"]
    out += [f"  {n / samples:6.1%}  {f}" for f, n in total.most_common(top)]
    return "\n".join(out) + "\n"


def _write_summary(node: str, raw: Path, path: Path, run: dict[str, Any]) -> Path:
    lines = raw.read_text().splitlines() if raw.exists() else []
    head = (f"py-spy profile of {node} during `dtq bench profile` "
            f"({time.strftime('%Y-%m-%d')}): {run.get('tasks', '?')} no-op tasks, "
            f"{run.get('workers', '?')} workers, {run.get('tasks_per_s', 0):,.0f} tasks/s "
            "under the profiler\n\n")
    path.write_text(head + summarise(node, lines))
    return path
