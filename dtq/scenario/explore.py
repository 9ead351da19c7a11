"""`dtq scenario explore`: run scenarios over many seeds on the simulator.

Every failing seed is printed with the command that reproduces it. Every file's line, and the
total, say how many distinct histories (history digests) the seeds produced: seeds that replay
one schedule explore nothing new, and the count shows it. With `jobs` above 1 the seeds run in
that many worker processes; the output is the same as with one, in the same order. On a
terminal, a progress bar per file (on stderr, `rich`) shows the seeds done and the time left.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from dtq.scenario.model import load
from dtq.scenario.sim import run_memory
from dtq.scenario.swarm import swarm


def default_jobs() -> int:
    """One worker process per core this process may run on."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


def _run_one(job: tuple[str, int, bool]) -> tuple[dict[str, Any], bool, list[str]]:
    """One seed of one file: its summary, whether it held, and the swarm's fault kinds."""
    path, seed, swarm_mode = job
    scenario = load(path)
    played, kinds = swarm(scenario, seed) if swarm_mode else (scenario, [])
    result = run_memory(played, seed)
    return result.summary, result.ok, list(kinds)


def _results(
    jobs: list[tuple[str, int, bool]], workers: int,
) -> Iterator[tuple[dict[str, Any], bool, list[str]]]:
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_run_one, jobs)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(_run_one, jobs, chunksize=4)


def _bar(show: bool, *, forced: bool) -> Progress:
    """Progress bars on stderr (`forced`: drawn even where stderr is not a terminal)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True, force_terminal=forced or None),
                    transient=True, disable=not show)


def explore(
    files: Sequence[str], *, runs: int, seed_start: int = 1, as_json: bool = False,
    out: TextIO | None = None, swarm_mode: bool = False, jobs: int = 1,
    progress: bool | None = None,
) -> int:
    """Run every file for `runs` seeds; exit status 0 when no seed failed. In swarm mode each
    seed adds its own random fault timeline (see `dtq.scenario.swarm`). `progress`: show
    progress bars (default: when stderr is a terminal and the output is not JSON)."""
    show = progress if progress is not None else (not as_json and sys.stderr.isatty())
    with _bar(show, forced=progress is True) as bar:  # lines printed meanwhile go above the bars
        return _explore(files, runs, seed_start, as_json, out or sys.stdout, swarm_mode, jobs,
                        bar)


def _explore(
    files: Sequence[str], runs: int, seed_start: int, as_json: bool, out: TextIO,
    swarm_mode: bool, jobs: int, bar: Progress,
) -> int:
    scenarios = [(f, load(f)) for f in files]
    failed: list[dict[str, object]] = []
    per_file: list[dict[str, object]] = []
    every: set[str] = set()
    started = time.perf_counter()
    total = 0
    for path, scenario in scenarios:
        bad = 0
        digests: set[str] = set()
        seeds = range(seed_start, seed_start + runs)
        outcomes = _results([(path, seed, swarm_mode) for seed in seeds], jobs)
        shown = bar.add_task(scenario.name, total=runs)
        for seed, (summary, ok, kinds) in zip(seeds, outcomes, strict=True):
            bar.advance(shown)
            total += 1
            digests.add(str(summary["history_digest"]))
            if as_json:
                print(json.dumps(summary), file=out)
            if not ok:
                bad += 1
                failed.append({"file": path, "seed": seed})
                if not as_json:
                    first = summary["violations"][0]
                    how = (f"dtq scenario explore {path} --swarm --runs 1 --seed-start {seed}"
                           if swarm_mode else f"dtq scenario run {path} --seed {seed}")
                    faults = f" (faults: {', '.join(kinds)})" if kinds else ""
                    print(f"FAIL {path} seed {seed}{faults}: {first['invariant']}: "
                          f"{first['detail']}\n  reproduce: {how}", file=out)
        bar.remove_task(shown)
        every |= digests
        per_file.append({"file": path, "scenario": scenario.name, "runs": runs, "failed": bad,
                         "distinct_histories": len(digests)})
        if not as_json:
            print(f"{scenario.name}: {runs - bad}/{runs} seeds ok, "
                  f"{len(digests)} distinct histories", file=out)
    wall = time.perf_counter() - started
    if as_json:
        print(json.dumps({"runs": total, "distinct_histories": len(every), "files": per_file,
                          "failed_seeds": failed, "ok": not failed}), file=out)
    else:
        print(f"{total} runs in {wall:.1f} s ({total / max(wall, 1e-9):.0f} seeds/s), "
              f"{len(failed)} failed, {len(every)} distinct histories", file=out)
    return 0 if not failed else 1
