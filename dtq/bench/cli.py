"""The `dtq bench` subcommands of the peer comparison: one per sub-benchmark, `all`, `report`.

`configure(bsub)` adds them to the subparsers of `dtq bench` (next to `sim` and `e2e`).
Handlers import the benchmark modules only when run, so `dtq --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from dtq.runtime.process import DEFAULT_CONCURRENCY

if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]

OUT = "bench/results"
SYSTEMS = ("dtq", "celery", "dramatiq")


def _systems(text: str) -> tuple[str, ...]:
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(SYSTEMS)}")
    return names


def _counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(n) for n in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of numbers") from None


def _sizes(args: argparse.Namespace) -> Any:
    from dtq.bench.suite import QUICK, Sizes

    base = QUICK if getattr(args, "quick", False) else Sizes()
    given = {f.name: getattr(args, f.name) for f in attrs.fields(Sizes)
             if getattr(args, f.name, None) is not None}
    return attrs.evolve(base, **given)


def _step(name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        from dtq.bench.suite import STEPS

        result = STEPS[name](_sizes(args))
        if args.json:
            print(json.dumps(result, default=str))
        return 0

    return run


def _all(args: argparse.Namespace) -> int:
    from dtq.bench.suite import run_all

    return run_all(_sizes(args), Path(args.out), only=args.only or (), png=not args.no_png)


def _profile(args: argparse.Namespace) -> int:
    from dtq.bench.suite import profile

    profile(_sizes(args), Path(args.out))
    return 0


def _soak(args: argparse.Namespace) -> int:
    from dtq.bench.soak import soak

    result = soak(args.minutes, args.rate, args.retention_s)
    if args.json:
        print(json.dumps(result, default=str))
    return 1 if result["lost"] or result["duplicated_notices"] else 0


def _testbed_faults(args: argparse.Namespace) -> int:
    from dtq.bench.testbed_faults import failed, testbed_faults

    result = testbed_faults(args.rate, args.dir, warmup_s=args.warmup_s, steady_s=args.steady_s,
                            recover_timeout_s=args.recover_timeout_s, drain_s=args.drain_s,
                            history_url=args.history_url)
    if args.json:
        print(json.dumps(result, default=str))
    return 1 if failed(result) else 0


def _api(args: argparse.Namespace) -> int:
    from dtq.bench.api import api_bench

    result = api_bench(args.requests, args.concurrency, args.rounds, args.api_workers,
                       args.tool)
    if args.json:
        print(json.dumps(result, default=str))
    return 0


def _report(args: argparse.Namespace) -> int:
    from dtq.bench import report

    for path in report.write(report.load(Path(args.out)), Path(args.out), png=not args.no_png):
        print(f"wrote {path}")
    return 0


def _add(bsub: Sub, name: str, help_text: str, *options: str, json_flag: bool = True
         ) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = bsub.add_parser(name, help=help_text, description=help_text +
                                                 ". A benchmark: it prints numbers.")
    for opt in options:
        _OPTIONS[opt](p)
    if json_flag:
        p.add_argument("--json", action="store_true", help="also print the result as JSON")
    return p


_OPTIONS: dict[str, Any] = {
    "tasks": lambda p: p.add_argument("--tasks", type=int, help="no-op tasks (default 5000)"),
    "workers": lambda p: p.add_argument("--workers", type=int,
                                        help="worker processes per system (default 2)"),
    "threads": lambda p: p.add_argument(
        "--threads", type=int, help=f"threads (dtq: concurrency) per worker (default "
        f"{DEFAULT_CONCURRENCY}, dtq's node default; another makes dtq's row "
        "'dtq --concurrency N')"),
    "systems": lambda p: p.add_argument("--systems", type=_systems,
                                        help="comma-separated (default dtq,celery,dramatiq)"),
    "latency_n": lambda p: p.add_argument("--latency-n", type=int,
                                          help="sequential round trips (default 200)"),
    "trials": lambda p: p.add_argument("--trials", type=int, help="trials (default 20)"),
    "lease_ttl_ms": lambda p: p.add_argument("--lease-ttl-ms", type=int,
                                             help="leader lease (default 2000)"),
    "detector_timeout_ms": lambda p: p.add_argument(
        "--detector-timeout-ms", type=int, help="failure detector timeout (default 1000)"),
    "heartbeat_ms": lambda p: p.add_argument("--heartbeat-ms", type=int,
                                             help="worker heartbeat period (default 200)"),
    "scaling": lambda p: p.add_argument("--scaling", type=_counts, metavar="N,N,...",
                                        help="worker counts (default 1,2,4)"),
    "memory_tasks": lambda p: p.add_argument("--memory-tasks", type=int,
                                             help="tasks the leader holds (default 100000)"),
    "out": lambda p: p.add_argument("--out", default=OUT, help=f"result folder (default {OUT})"),
    "quick": lambda p: p.add_argument("--quick", action="store_true",
                                      help="small sizes, for a smoke run of every step"),
}


def configure(bsub: Sub) -> None:
    """Add the peer-comparison subcommands to `dtq bench`'s subparsers."""
    pe = ("tasks", "workers", "threads", "systems")
    _add(bsub, "throughput", "no-op tasks end to end: dtq, Celery, Dramatiq on RabbitMQ and "
         "Redis", *pe).set_defaults(func=_step("throughput"))
    _add(bsub, "latency", "single-task latency over sequential submit-and-wait: every system "
         "up at once, taking turns of 20 round trips",
         "latency_n", "workers", "threads", "systems").set_defaults(func=_step("latency"))
    _add(bsub, "stages", "where dtq's single-task round trip spends its time: per-stage "
         "timings of sequential submit-and-wait and the CPU each process spends, beside bare "
         "pika's two hops and the peers' round trips", "latency_n", "workers",
         "systems").set_defaults(func=_step("stages"))
    _add(bsub, "failover", "leader SIGKILL -> first dispatch by the new leader",
         "trials", "lease_ttl_ms").set_defaults(func=_step("failover"))
    _add(bsub, "reassign", "worker SIGKILL and SIGSTOP -> its task handed on", "trials",
         "detector_timeout_ms", "heartbeat_ms").set_defaults(func=_step("reassign"))
    _add(bsub, "scaling", "dtq throughput with 1, 2 and 4 workers, beside the CPU each process "
         "spends per 1,000 tasks and the leader's share of one core", "tasks", "scaling",
         "threads").set_defaults(func=_step("scaling"))
    _add(bsub, "memory", "the leader's RSS holding 100,000 submitted tasks",
         "memory_tasks").set_defaults(func=_step("memory"))
    _add(bsub, "profile", "py-spy profiles of dtq's coordinator and workers during a run",
         "tasks", "workers", "out", json_flag=False).set_defaults(func=_profile)
    p = _add(bsub, "all", "every sub-benchmark in one run; writes results, table and chart",
             *pe, "latency_n", "trials", "scaling", "memory_tasks", "out", "quick",
             json_flag=False)
    p.add_argument("--only", action="append", metavar="STEP",
                   help="run only this step (repeatable): sim, throughput, latency, stages, "
                   "failover, reassign, scaling, memory, profile")
    p.add_argument("--no-png", action="store_true", help="skip the chart")
    p.set_defaults(func=_all)
    soak = _add(bsub, "soak", "a steady mixed load on two coordinators and three workers for "
                "a set time, with a worker killed every 45 s, the leader every 3 minutes and "
                "one worker frozen for 20 s: memory, queues, latency per minute, and every "
                "submission accounted (not part of CI; 15 minutes by default)")
    soak.add_argument("--minutes", type=float, default=15, help="duration (default 15)")
    soak.add_argument("--rate", type=int, default=160, help="tasks a second (default 160)")
    soak.add_argument("--retention-s", type=int, default=180,
                      help="the namespace's retention of finished tasks (default 180)")
    soak.set_defaults(func=_soak)
    tbf = _add(bsub, "testbed-faults", "a steady load of sleep tasks on two coordinators and two "
               "workers on the local testbed (3 RabbitMQ nodes, quorum queues; Redis behind "
               "Sentinels, writes waiting for the replica), through a kill -9 of the leader's "
               "RabbitMQ node, a Sentinel failover and a kill -9 of the Redis primary: how long "
               "successes take to come back after each, leaders and restarts, and every task "
               "accounted (exit 1 if any is lost, stuck or duplicated; not part of CI)")
    tbf.add_argument("--rate", type=int, default=120, help="tasks a second (default 120)")
    tbf.add_argument("--dir", type=Path, default=None,
                     help="reuse the testbed recorded in this directory (`dtq testbed up "
                     "--dir`), left running; if none is, start one there (default: one of its "
                     "own in a temporary directory), stopped at the end")
    tbf.add_argument("--warmup-s", type=float, default=20.0,
                     help="load before the first fault (default 20)")
    tbf.add_argument("--steady-s", type=float, default=5.0,
                     help="after a fault, successes at half the rate or more for this long "
                     "before the next (default 5)")
    tbf.add_argument("--recover-timeout-s", type=float, default=180.0,
                     help="how long a fault's recovery is waited for (default 180)")
    tbf.add_argument("--drain-s", type=float, default=120.0,
                     help="after the load stops, how long its tasks are waited for (default "
                     "120)")
    tbf.add_argument("--history-url", default=None,
                     help="the Redis the nodes record their history in, outside the testbed "
                     "(default $DTQ_STORE_URL, else redis://127.0.0.1:6379/0)")
    tbf.set_defaults(func=_testbed_faults)
    api = _add(bsub, "api", "POST /tasks on `dtq api` (a real cluster, a bearer token, every "
               "answer broker-confirmed) against a no-op FastAPI endpoint under the same uvicorn "
               "settings, side by side and alternating, at 50 and 200 concurrent clients; then "
               "checks every task answered 202 is in the store. Needs ab (apt-get install "
               "apache2-utils), else falls back to a Python load generator")
    api.add_argument("--requests", type=int, default=5000,
                     help="requests per measurement (default 5000)")
    api.add_argument("--concurrency", type=_counts, default=(50, 200), metavar="N,N,...",
                     help="concurrent clients (default 50,200)")
    api.add_argument("--rounds", type=int, default=2,
                     help="alternating measurements of each server per concurrency (default 2)")
    api.add_argument("--workers", dest="api_workers", type=int, default=1,
                     help="worker processes in the cluster (default 1)")
    api.add_argument("--tool", choices=("ab", "python"), default=None,
                     help="load generator (default: ab if on PATH, else python)")
    api.set_defaults(func=_api)
    r = _add(bsub, "report", "rewrite latest.md and the chart from latest.json", "out",
             json_flag=False)
    r.add_argument("--no-png", action="store_true", help="skip the chart")
    r.set_defaults(func=_report)
