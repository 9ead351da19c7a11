"""The `dtq` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from dtq.errors import ConfigurationError, DtqError, ScenarioError
from dtq.runtime.process import (
    DEFAULT_CONCURRENCY,
    DEFAULT_DISPATCH_BUNDLE,
    DEFAULT_LEASE_TTL_MS,
    DEFAULT_PREFETCH_PER_SLOT,
    EXIT_CONFIG,
)
from transports.registry import backend_names

if TYPE_CHECKING:
    from dtq.testing.testbed import Testbed

EPILOG_SCENARIO = """examples:
  dtq scenario run scenarios/round-robin.toml
  dtq scenario run scenarios/round-robin.toml --seed 7 --json
  dtq scenario explore scenarios/*.toml --runs 200
"""


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _add_scenario(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("scenario", help="run chaos scenario files",
                       description="Run scenario files (TOML) and check their invariants.",
                       epilog=EPILOG_SCENARIO, formatter_class=argparse.RawDescriptionHelpFormatter)
    ssub = p.add_subparsers(dest="scenario_cmd", required=True, metavar="COMMAND")
    run = ssub.add_parser(
        "run", help="run one scenario once",
        description="""Run one scenario and check it: no task lost, no result applied twice,
one leader per epoch, no stale write, and the file's own [expect] bounds. Prints a table of
the checks. Exit status: 0 when every check held, 1 when one broke, 2 when the file is wrong
or a fault cannot be played on the chosen backend.""",
        epilog="""examples:
  dtq scenario run scenarios/worker-crash.toml              simulator, the file's seed
  dtq scenario run scenarios/worker-crash.toml --seed 7     another seed: another schedule
  dtq scenario run scenarios/leader-crash.toml --transport rabbitmq
        real processes; progress (phase, tasks done, faults) on stderr
  dtq scenario run scenarios/zombie-leader.toml --transport rabbitmq --json | jq .violations
  dtq scenario run scenarios/slow-network.toml --report run.html

On rabbitmq every node reaches RabbitMQ and Redis through its own two fault proxies on a
Toxiproxy-compatible server started in-process, or the one at $TOXIPROXY_URL when set
(docker compose's Toxiproxy, for instance). $DTQ_BROKER_URL and $DTQ_STORE_URL name the
services. With --testbed DIR (a testbed `dtq testbed up --dir DIR` started) the nodes run on
the local cluster testbed instead, with no proxies: every broker address, the Sentinel URL,
quorum queues, and the services' own faults (kill_broker_node, restart_broker_node,
redis_failover, kill_redis_primary). A simulator run is deterministic: the same seed gives the
same history digest. See scenarios/README.md for the file format and what each backend can
play (`dtq scenario faults`).""",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("file", help="scenario file (TOML)")
    run.add_argument("--transport", choices=backend_names(), default="memory",
                     help="memory: the deterministic simulator (default); rabbitmq: real "
                     "processes over RabbitMQ and Redis, faults through Toxiproxy")
    run.add_argument("--seed", type=int, default=None,
                     help="seed of the simulator's schedule, and of role choices such as "
                     "any-worker (default: the file's `seed`)")
    run.add_argument("--json", action="store_true",
                     help="print one JSON summary object only (no progress, no table)")
    run.add_argument("--report", metavar="OUT.html", help="write an HTML space-time report")
    run.add_argument("--testbed", metavar="DIR", type=Path, default=None,
                     help="with --transport rabbitmq: run on the local cluster testbed recorded "
                     "in DIR (`dtq testbed up --dir DIR`), its faults included")
    run.add_argument("--history-url", default=None, metavar="URL",
                     help="with --testbed: the Redis the run's history goes to, outside the "
                     "testbed (default redis://127.0.0.1:6379/0)")
    run.set_defaults(func=_scenario_run)
    ex = ssub.add_parser("explore", help="run scenarios over many seeds (memory backend)",
                         description="Run each scenario over a range of seeds on the simulator;"
                         " print every failing seed with the command that reproduces it, and"
                         " how many distinct histories (history digests) each file's seeds and all"
                         " of them gave.")
    ex.add_argument("files", nargs="+", help="scenario files")
    ex.add_argument("--runs", type=int, default=100, help="seeds per file (default 100)")
    ex.add_argument("--seed-start", type=int, default=1, help="first seed (default 1)")
    ex.add_argument("--json", action="store_true", help="one JSON object per run, then a total "
                    "(runs, distinct_histories, files, failed_seeds, ok)")
    ex.add_argument("--swarm", action="store_true",
                    help="swarm mode: every seed adds random crashes, pauses, partitions, "
                    "dropped connections, a lossy network and crash points (each kind on or off "
                    "per seed); only the invariants and liveness are checked")
    ex.add_argument("--jobs", type=int, default=None, metavar="N",
                    help="worker processes running seeds at once (default: one per core)")
    ex.set_defaults(func=_scenario_explore)
    faults = ssub.add_parser(
        "faults", help="list the kinds of fault a scenario can play",
        description="Every `action` a [[fault]] can have: what it does, what it needs, and "
        "which backend cannot play it and why (from the one fault table both backends use).")
    faults.set_defaults(func=_scenario_faults)


def _testbed(directory: Path | None) -> Testbed | None:
    if directory is None:
        return None
    from dtq.testing.testbed import Testbed

    bed = Testbed.load(directory)
    if bed is None or not bed.rabbit_ready():
        raise ScenarioError(f"no running testbed with RabbitMQ in {directory}: start one with "
                            f"`dtq testbed up --dir {directory}`")
    return bed


def _scenario_run(args: argparse.Namespace) -> int:
    from dtq.report import transcript as report
    from dtq.scenario.model import load
    from dtq.scenario.real import run_real
    from dtq.scenario.sim import run_memory
    from dtq.scenario.summary import summary_table

    scenario = load(args.file)
    if args.testbed is not None and args.transport != "rabbitmq":
        raise ScenarioError("--testbed runs real processes: it needs --transport rabbitmq")
    if args.transport == "rabbitmq":
        result = run_real(scenario, seed=args.seed, live=not args.json,
                          testbed=_testbed(args.testbed), history_url=args.history_url)
    else:
        result = run_memory(scenario, args.seed, trace=bool(args.report))
    if args.report:
        from dtq.report.spacetime import write_report

        write_report(args.report, scenario, result)
        print(f"space-time report written to {Path(args.report).resolve()}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.summary))
        return 0 if result.ok else 1
    if scenario.transcript:
        for line in report.transcript(result.events):
            print(line)
    print("\n".join(summary_table(scenario, result.summary)))
    if not result.ok:
        again = f"dtq scenario run {args.file} --seed {result.summary['seed']}"
        print(f"reproduce: {again}" if args.transport == "memory" else
              f"run again: {again} --transport rabbitmq (real processes: the timing differs "
              f"from run to run; the simulator replays a seed exactly)")
    return 0 if result.ok else 1


def _scenario_faults(args: argparse.Namespace) -> int:
    from dtq.scenario.faults import describe

    print("\n".join(describe()))
    return 0


def _scenario_explore(args: argparse.Namespace) -> int:
    from dtq.runtime.logs import configure_logging
    from dtq.scenario.explore import default_jobs, explore

    # Thousands of simulated nodes' warnings (a suspected worker, a lost lease) are what the
    # faults provoke, not news: kept out of the output unless DTQ_LOG_LEVEL asks for them.
    configure_logging(None, default="error")
    return explore(args.files, runs=args.runs, seed_start=args.seed_start, as_json=args.json,
                   swarm_mode=args.swarm, jobs=args.jobs or default_jobs())


def _add_testbed(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from dtq.testing import testbed

    p = sub.add_parser("testbed", help="a local RabbitMQ cluster and Redis with Sentinels",
                       description="Start, inspect or stop a 3-node RabbitMQ cluster and a "
                       "Redis primary + replica + 3 Sentinels on loopback ports, each with its "
                       "own data directory.",
                       epilog='example: eval "$(dtq testbed up)"; dtq cluster ...; '
                       "dtq testbed down")
    testbed.configure(p)


def _add_toxiproxy(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from dtq.chaos import cli as chaos_cli

    p = sub.add_parser("toxiproxy", help="run the Toxiproxy-compatible fault proxy",
                       description="A server speaking the Toxiproxy HTTP API (proxies and "
                       "toxics), driven by any Toxiproxy client.",
                       epilog="example: dtq toxiproxy --port 8474 & "
                       "curl -s localhost:8474/version",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    chaos_cli.configure(p)
    p.set_defaults(func=chaos_cli.run)


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="benchmarks that print numbers",
                       description="Benchmarks. They print measurements; they assert nothing.")
    bsub = p.add_subparsers(dest="bench_cmd", required=True, metavar="WHAT")
    sim = bsub.add_parser("sim", help="simulator messages/s, virtual-to-wall ratio, seeds/s")
    sim.add_argument("--tasks", type=int, default=20_000, help="tasks to push through")
    sim.add_argument("--explore", default="scenarios/round-robin-faulty.toml",
                     help="scenario for the explore rate")
    sim.add_argument("--runs", type=int, default=200, help="seeds for the explore rate")
    sim.set_defaults(func=lambda a: __import__("dtq.bench.sim", fromlist=["main"]).main(
        a.tasks, a.explore, a.runs))
    e2e = bsub.add_parser("e2e", help="no-op tasks end to end on RabbitMQ and Redis",
                          description="Throughput and latency of no-op tasks through real "
                          "processes, every guarantee on.")
    e2e.add_argument("--tasks", type=int, default=5000, help="tasks (default 5000)")
    e2e.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    e2e.add_argument("--concurrency", type=positive_int, default=None, metavar="N",
                     help=f"tasks per worker (default {DEFAULT_CONCURRENCY}, the node default)")
    e2e.set_defaults(func=lambda a: __import__("dtq.bench.real", fromlist=["main"]).main(
        a.tasks, a.workers, a.concurrency))
    from dtq.bench import configure

    configure(bsub)


def _service_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker-url", default=None,
                   help="RabbitMQ URL (default: $DTQ_BROKER_URL or amqp://guest:guest@127.0.0.1"
                   ":5672/%%2F)")
    p.add_argument("--store-url", default=None,
                   help="Redis URL (default: $DTQ_STORE_URL or redis://127.0.0.1:6379/0); "
                   "redis+sentinel://host:port,.../SERVICE/DB follows Sentinel failovers")
    p.add_argument("--namespace", default="dtq",
                   help="prefix of every queue and key (default: dtq)")
    p.add_argument("--log-level", default=None, help="debug, info (default), warning, error")
    p.add_argument("--metrics-port", type=positive_int, default=None, metavar="PORT",
                   help="serve Prometheus metrics at http://127.0.0.1:PORT/metrics (events by "
                   "kind, leader epoch, takeover time); in a cluster node i uses PORT + i - 1, "
                   "coordinators first")
    p.add_argument("--quorum", action="store_true", default=None,
                   help="declare quorum queues, for clustered RabbitMQ (default: classic; "
                   "$DTQ_QUORUM=1 sets it). Every node of a namespace must agree.")


def _worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prefetch", type=positive_int, default=None, metavar="N",
                   help="broker messages a worker holds at once, the dispatches beyond "
                   f"--concurrency waiting unstarted (default: {DEFAULT_PREFETCH_PER_SLOT} "
                   f"per concurrency slot, {DEFAULT_PREFETCH_PER_SLOT * DEFAULT_CONCURRENCY} at "
                   "the default concurrency). More speeds up short tasks. A worker "
                   "that freezes has them handed on as new attempts once the leader suspects "
                   "it, but one the broker gives it after that waits until the broker drops "
                   "it (about 15 s after it froze: three heartbeat timeouts)")
    p.add_argument("--result-ttl-ms", type=positive_int, default=None, metavar="MS",
                   help="keep results this long (default: forever)")
    p.add_argument("--io-root", default=None, metavar="DIR",
                   help="the only directory the io task reads and writes (default: "
                   "$DTQ_IO_ROOT, else $XDG_DATA_HOME/dtq/io or ~/.local/share/dtq/io; never "
                   "the working directory)")
    p.add_argument("--io-http-allow", action="append", default=[], metavar="ADDR[:PORT]",
                   help="let io http_get reach this non-public address (also NET/LEN, "
                   "[V6]:PORT; comma-separated or repeated; added to $DTQ_IO_HTTP_ALLOW). By "
                   "default only public addresses are fetched")


def _concurrency_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--concurrency", type=positive_int, default=None, metavar="N",
                   help=f"{what} (default {DEFAULT_CONCURRENCY}; inline task types such as "
                   "echo take no slot)")


def _coordinator_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dispatch-bundle", type=positive_int, default=None, metavar="N",
                   help="let up to N dispatches published together share one broker message "
                   f"(default {DEFAULT_DISPATCH_BUNDLE}; 1: one each). Only a burst of 32 or "
                   "more is bundled, cut into at least 16 messages. Fewer broker messages per "
                   "task make throughput much higher; a worker then holds up to N dispatches "
                   "per prefetch slot, waiting for a free slot (one that freezes has them "
                   "handed on once the leader suspects it). For long tasks, 1 spreads a burst "
                   "most evenly")


def _add_services(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    co = sub.add_parser("coordinator", help="run one coordinator (leader or standby)",
                        description="Run a coordinator process. It competes for the leader "
                        "lease in Redis; the leader consumes submissions and dispatches work.")
    co.add_argument("--name", default=None, help="actor name (default: coordinator-<pid>)")
    co.add_argument("--lease-ttl-ms", type=positive_int, default=None, metavar="MS",
                    help=f"leader lease (default {DEFAULT_LEASE_TTL_MS})")
    _coordinator_args(co)
    _service_args(co)
    co.set_defaults(func=_run_service, role="coordinator")
    wo = sub.add_parser("worker", help="run one worker",
                        description="Run a worker process: it consumes the shared work queue "
                        "and runs tasks in a thread pool.",
                        epilog="example: dtq worker --tasks mypkg.tasks --concurrency 4")
    wo.add_argument("--name", default=None, help="actor name (default: worker-<pid>)")
    wo.add_argument("--tasks", action="append", default=[], metavar="MODULE",
                    help="import task types (TaskActor subclasses) from MODULE; repeatable")
    _concurrency_arg(wo, "tasks run at once, each on a thread of the worker's pool")
    _worker_args(wo)
    _service_args(wo)
    wo.set_defaults(func=_run_service, role="worker")
    cl = sub.add_parser("cluster", help="run coordinators and workers under a supervisor",
                        description="Start coordinators and workers as separate processes and "
                        "restart any that crashes. Ctrl-C or SIGTERM stops them all cleanly: "
                        "each node gets one signal and finishes or hands back its running "
                        "tasks (grace period 10 s). Nodes exit on their own if the supervisor "
                        "dies. A node that exits with a configuration error stops the cluster "
                        f"(exit status {EXIT_CONFIG}).",
                        epilog="example: dtq cluster --coordinators 2 --workers 3 --tasks mytasks")
    cl.add_argument("--coordinators", type=int, default=2, help="how many (default 2)")
    cl.add_argument("--workers", type=int, default=3, help="how many (default 3)")
    cl.add_argument("--tasks", action="append", default=[], metavar="MODULE",
                    help="task modules for the workers; repeatable")
    _concurrency_arg(cl, "tasks each worker runs at once, each on a thread of its pool")
    _worker_args(cl)
    _coordinator_args(cl)
    _service_args(cl)
    cl.set_defaults(func=_run_cluster)


def _node_config(args: argparse.Namespace, role: str, name: str) -> object:
    from dtq.runtime.process import NodeConfig, broker_url, store_url

    return NodeConfig(
        role=role, name=name, broker_url=broker_url(args.broker_url),
        store_url=store_url(args.store_url), namespace=args.namespace,
        prefetch=getattr(args, "prefetch", None), task_modules=tuple(getattr(args, "tasks", ())),
        log_level=args.log_level, result_ttl_ms=getattr(args, "result_ttl_ms", None),
        quorum=args.quorum, io_http_allow=tuple(getattr(args, "io_http_allow", ())),
        **_given(args, "concurrency", "lease_ttl_ms", "dispatch_bundle", "io_root",
                 "metrics_port"))


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The options among `names` given on the command line (the others keep NodeConfig's
    defaults)."""
    return {n: v for n in names if (v := getattr(args, n, None)) is not None}


def _run_service(args: argparse.Namespace) -> int:
    import os

    from dtq.runtime.process import run_node

    name = args.name or f"{args.role}-{os.getpid()}"
    return run_node(_node_config(args, args.role, name))  # type: ignore[arg-type]


def _run_cluster(args: argparse.Namespace) -> int:
    from dtq.runtime.process import Supervisor, load_task_modules

    load_task_modules(args.tasks)  # a module that does not import stops us before any node
    configs = [_node_config(args, "coordinator", f"coordinator-{i}")
               for i in range(1, args.coordinators + 1)]
    configs += [_node_config(args, "worker", f"worker-{i}") for i in range(1, args.workers + 1)]
    if args.metrics_port is not None:  # one port each, in order
        configs = [attrs.evolve(cfg, metrics_port=args.metrics_port + i)  # type: ignore
                   for i, cfg in enumerate(configs)]
    sup = Supervisor(configs)  # type: ignore[arg-type]
    print(f"dtq cluster: {args.coordinators} coordinator(s), {args.workers} worker(s) running "
          f"(supervisor pid {os.getpid()}); Ctrl-C or SIGTERM stops them", file=sys.stderr)
    code = sup.run_until_stopped()
    if code == EXIT_CONFIG:
        print(f"dtq cluster: error: {sup.config_error}; stopped every node (see its message "
              "above)", file=sys.stderr)
    else:
        print("dtq cluster: stopped", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dtq", description="dtq: a distributed task queue built as an actor framework.",
        epilog="Run `dtq COMMAND --help` for the options of a command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_scenario(sub)
    _add_services(sub)
    _add_toxiproxy(sub)
    _add_bench(sub)
    _add_testbed(sub)
    from dtq.cli.client import add_parsers
    from dtq.cli.namespace import add_parser as add_namespace
    from dtq.cli.top import add_parser as add_top

    add_parsers(sub)
    add_top(sub)
    add_namespace(sub)
    return parser


def _innermost(parser: argparse.ArgumentParser, args: argparse.Namespace,
               ) -> argparse.ArgumentParser:
    """The parser of the subcommand `args` chose (`dtq scenario run`'s for `dtq scenario run`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and action.dest:
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if isinstance(chosen, argparse.ArgumentParser):
                return _innermost(chosen, args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from dtq.runtime.logs import configure_logging

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the subcommand that was given them, with its own usage line
        _innermost(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    configure_logging(getattr(args, "log_level", None))
    try:
        code: int = args.func(args)
        return code
    except ConfigurationError as exc:
        print(f"dtq: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except DtqError as exc:
        print(f"dtq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
