"""The sub-benchmarks as named steps, and `run_all`: every step in one run, its results kept
even when another step fails, then written by `dtq.bench.report`.

A step returns a JSON-ready dict and prints one or a few lines of numbers to stdout.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from dtq.bench import dtqside, failover, peers, report
from dtq.bench.real import flags
from dtq.bench.report import UNBUNDLED, label
from dtq.runtime.process import DEFAULT_CONCURRENCY, broker_url, store_url


@attrs.frozen(kw_only=True)
class Sizes:
    tasks: int = 5000
    workers: int = 2
    threads: int = DEFAULT_CONCURRENCY
    """Threads per worker process of every system (dtq: its concurrency, by default the node
    default)."""
    latency_n: int = 200
    trials: int = 20
    lease_ttl_ms: int = 2000
    detector_timeout_ms: int = 1000
    heartbeat_ms: int = 200
    scaling: tuple[int, ...] = (1, 2, 4)
    memory_tasks: int = 100_000
    sim_tasks: int = 20_000
    explore_file: str = "scenarios/round-robin-faulty.toml"
    explore_runs: int = 200
    systems: tuple[str, ...] = ("dtq", "celery", "dramatiq")


QUICK = Sizes(tasks=300, latency_n=20, trials=3, scaling=(1, 2), memory_tasks=3000,
              sim_tasks=2000, explore_runs=10)
"""Small enough for a smoke run of every step in about two minutes."""


def _peer(name: str, s: Sizes) -> Any:
    if name == "celery":
        return peers.celery(s.workers, s.threads)
    return peers.dramatiq(s.workers, s.threads)


def _each_system(s: Sizes, measure: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in s.systems:
        if name != "dtq" and not peers.available(name):
            out[name] = {"error": f"{name} is not installed (pip install -e '.[bench]')"}
            continue
        try:
            out[name] = measure(name)
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
    return out


def dtq_node(s: Sizes) -> dict[str, Any]:
    """What dtq's default row sets beyond the node defaults: nothing, unless `--threads` asks
    for another concurrency (its label then says so)."""
    return {} if s.threads == DEFAULT_CONCURRENCY else {"concurrency": s.threads}


def throughput(s: Sizes) -> dict[str, Any]:
    """Each system; for dtq, its defaults (`dtq cluster`'s) and then without the leader's
    dispatch bundles."""
    unbundled: dict[str, Any] = {}

    def measure(name: str) -> dict[str, Any]:
        if name == "dtq":
            r = dtqside.dtq_throughput(s.tasks, s.workers, **dtq_node(s))
            _print_throughput(name, r)
            try:
                unbundled[UNBUNDLED] = b = dtqside.dtq_throughput(
                    s.tasks, s.workers, **dtq_node(s), dispatch_bundle=1)
                _print_throughput(UNBUNDLED, b)
            except Exception as exc:
                unbundled[UNBUNDLED] = {"error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
            return r
        with _peer(name, s) as client:
            r = peers.throughput(client, s.tasks)
        _print_throughput(name, r)
        return r

    systems = _each_system(s, measure)
    return {"tasks": s.tasks, "workers": s.workers, "threads": s.threads,
            "systems": {**systems, **unbundled}}


def _print_throughput(name: str, r: dict[str, Any]) -> None:
    print(f"throughput {label(name, r):8}: {r['tasks_per_s']:8,.0f} tasks/s "
          f"({r['tasks']:,} tasks in {r['elapsed_s']:.2f} s)", flush=True)


LATENCY_BLOCK = 20
"""Round trips each system makes in its turn: the systems take turns until each made n."""


def latency(s: Sizes) -> dict[str, Any]:
    """Every system up at once, their sequential round trips taken in turns (see
    `peers.interleaved_latency`): one system's p50 against another's compares like with like."""
    with contextlib.ExitStack() as stack:
        clients: dict[str, Any] = {}

        def start(name: str) -> dict[str, Any]:
            context = dtqside.client(s.workers, **dtq_node(s)) if name == "dtq" \
                else _peer(name, s)
            clients[name] = stack.enter_context(context)
            return {}

        started = _each_system(s, start)
        try:
            measured = peers.interleaved_latency(clients, s.latency_n, block=LATENCY_BLOCK)
        except Exception as exc:
            traceback.print_exc()
            measured = {name: {"error": f"{type(exc).__name__}: {exc}"} for name in clients}
    if "dtq" in measured:
        measured["dtq"]["flags"] = flags(dtq_node(s))
    for name, r in measured.items():
        if "error" not in r:
            print(f"latency    {label(name, r):8}: p50 {r['p50_ms']:6.2f} ms, p99 "
                  f"{r['p99_ms']:6.2f} ms ({r['n']} sequential)", flush=True)
    systems = {name: measured.get(name, r) for name, r in started.items()}
    return {"n": s.latency_n, "block": LATENCY_BLOCK, "systems": systems}


def stages(s: Sizes) -> dict[str, Any]:
    from dtq.bench.stages import main

    return main(s.latency_n, s.workers, peers=tuple(n for n in s.systems if n != "dtq"))


def failover_step(s: Sizes) -> dict[str, Any]:
    r = failover.failover(s.trials, s.lease_ttl_ms)
    print(f"failover: leader SIGKILL -> first dispatch by the new leader over {r['trials']} "
          f"trials (lease {r['lease_ttl_ms']} ms): p50 {r['p50_ms']:.0f} ms, p99 "
          f"{r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms (target p99 <= 3000 ms)", flush=True)
    return r


def reassign_step(s: Sizes) -> dict[str, Any]:
    r = failover.reassign(s.trials, s.detector_timeout_ms, s.heartbeat_ms)
    k, p = r["kill"], r["pause"]
    print(f"reassign: worker SIGKILL -> started elsewhere over {r['trials']} trials: p50 "
          f"{k['p50_ms']:.1f} ms, p99 {k['p99_ms']:.1f} ms, max {k['max_ms']:.1f} ms", flush=True)
    print(f"reassign: worker SIGSTOP -> reassigned (detector timeout {r['detector_timeout_ms']} "
          f"ms): p50 {p['p50_ms']:.0f} ms, p99 {p['p99_ms']:.0f} ms, max {p['max_ms']:.0f} ms "
          f"(target <= {r['detector_timeout_ms'] + 1000} ms)", flush=True)
    return r


def sim(s: Sizes) -> dict[str, Any]:
    from dtq.bench.sim import bench_explore, bench_throughput

    t = bench_throughput(s.sim_tasks)
    e = bench_explore(s.explore_file, s.explore_runs)
    print(f"simulator: {t['messages_per_s']:,.0f} messages/s, {t['virtual_to_wall']:.1f}x "
          f"virtual-to-wall; explore {e['scenario']}: {e['seeds_per_s']:.1f} seeds/s", flush=True)
    return {"throughput": t, "explore": e}


def scaling(s: Sizes) -> dict[str, Any]:
    """Throughput and CPU per 1,000 tasks for each worker count; the leader's share of a core
    shows how near the single leader is to its ceiling."""
    out: dict[str, Any] = {}
    for w in s.scaling:
        try:
            out[str(w)] = r = dtqside.scaling_run(s.tasks, w, **dtq_node(s))
        except Exception as exc:
            out[str(w)] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        print(f"scaling: {w} worker(s): {r['tasks_per_s']:,.0f} tasks/s; "
              + report.scaling_cpu_line(r), flush=True)
    if any("tasks_per_s" in r for r in out.values()):
        print("\n".join(report.scaling_table(out)), flush=True)
    return out


def memory(s: Sizes) -> dict[str, Any]:
    r = dtqside.memory(s.memory_tasks)
    print(f"memory: leader RSS {r['rss_before_kib'] / 1024:.1f} MiB -> "
          f"{r['rss_after_kib'] / 1024:.1f} MiB with {r['tasks']:,} tasks "
          f"({r['bytes_per_task']:,.0f} bytes/task, peak {r['rss_peak_kib'] / 1024:.1f} MiB)",
          flush=True)
    return r


def profile(s: Sizes, out_dir: Path) -> dict[str, Any]:
    from dtq.bench.profile import profile_e2e

    r = profile_e2e(out_dir, s.tasks, s.workers)
    print(f"profile: {r['run'].get('tasks_per_s', 0):,.0f} tasks/s under py-spy; "
          + ", ".join(sorted(r["files"].values())), flush=True)
    return r


STEPS: dict[str, Callable[[Sizes], dict[str, Any]]] = {
    "sim": sim, "throughput": throughput, "latency": latency, "stages": stages,
    "failover": failover_step,
    "reassign": reassign_step, "scaling": scaling, "memory": memory}


def run_all(s: Sizes, out_dir: Path, only: Sequence[str] = (), png: bool = True) -> int:
    """Every step (or those in `only`), then the result files; 1 if a step failed."""
    results: dict[str, Any] = {"machine": report.machine(broker_url(), store_url()),
                               "sizes": attrs.asdict(s)}
    failed = False
    steps: dict[str, Callable[[Sizes], dict[str, Any]]] = {
        **STEPS, "profile": lambda sz: profile(sz, out_dir)}
    for name, step in steps.items():
        if only and name not in only:
            continue
        print(f"--- {name}", file=sys.stderr, flush=True)
        started, load = time.monotonic(), list(os.getloadavg())
        try:
            results[name] = {**step(s), "load_average_before": load}
        except Exception as exc:
            failed = True
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
        print(f"--- {name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    for path in report.write(results, out_dir, png=png):
        print(f"wrote {path}")
    return 1 if failed else 0
