"""Simulator benchmark: delivered messages per wall-clock second, virtual-to-wall time ratio,
and explore seeds per second. A benchmark, not a test: it prints numbers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dtq.scenario.model import ClusterSpec, ExpectSpec, Scenario, TaskTemplate, WorkloadSpec, load
from dtq.scenario.sim import build_simulation, run_memory
from dtq.task import TaskSpec


def bench_throughput(tasks: int = 20_000, workers: int = 3, seed: int = 1) -> dict[str, Any]:
    scenario = Scenario(
        name="bench", path=Path("bench"),
        cluster=ClusterSpec(workers=workers, worker_prefetch=10),
        network={"delay_ms": 1, "jitter_ms": 2},
        workload=WorkloadSpec(count=tasks, template=TaskTemplate(type="echo")),
        expect=ExpectSpec(deadline_ms=10_000_000))
    sim = build_simulation(scenario, seed)
    for n in range(1, tasks + 1):
        sim.at(n // 10, sim.submit, TaskSpec(id=f"t{n}", type="echo", payload=n))
    started = time.perf_counter()
    events = sim.run(stop=lambda: len(sim.store.results) >= tasks)
    wall = time.perf_counter() - started
    return {"tasks": tasks, "messages": sim.delivered, "events": events, "wall_s": wall,
            "messages_per_s": sim.delivered / wall, "virtual_ms": sim.now_ms,
            "virtual_to_wall": sim.now_ms / 1000 / wall}


def bench_explore(path: str, runs: int = 200) -> dict[str, Any]:
    scenario = load(path)
    started = time.perf_counter()
    virtual_ms = 0
    for seed in range(1, runs + 1):
        virtual_ms += run_memory(scenario, seed).summary["virtual_ms"]
    wall = time.perf_counter() - started
    return {"scenario": scenario.name, "runs": runs, "wall_s": wall, "seeds_per_s": runs / wall,
            "virtual_to_wall": virtual_ms / 1000 / wall}


def main(tasks: int, explore_file: str, runs: int) -> int:
    t = bench_throughput(tasks)
    print(f"simulator: {t['messages']:,} messages delivered ({t['tasks']:,} tasks) in "
          f"{t['wall_s']:.2f} s wall = {t['messages_per_s']:,.0f} messages/s")
    print(f"simulator: {t['virtual_ms']:,} ms virtual in {t['wall_s']:.2f} s wall = "
          f"{t['virtual_to_wall']:.1f}x virtual-to-wall (saturated: time is all handler work)")
    e = bench_explore(explore_file, runs)
    print(f"explore:   {e['runs']} seeds of {e['scenario']} in {e['wall_s']:.2f} s = "
          f"{e['seeds_per_s']:.0f} seeds/s, {e['virtual_to_wall']:.0f}x virtual-to-wall")
    return 0
