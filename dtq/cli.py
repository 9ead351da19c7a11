"""The `dtq` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from dtq.errors import DtqError

EPILOG_SCENARIO = """examples:
  dtq scenario run scenarios/round-robin.toml
  dtq scenario run scenarios/round-robin.toml --seed 7 --json
  dtq scenario explore scenarios/*.toml --runs 200
"""


def _add_scenario(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("scenario", help="run chaos scenario files",
                       description="Run scenario files (TOML) and check their invariants.",
                       epilog=EPILOG_SCENARIO, formatter_class=argparse.RawDescriptionHelpFormatter)
    ssub = p.add_subparsers(dest="scenario_cmd", required=True, metavar="COMMAND")
    run = ssub.add_parser("run", help="run one scenario once",
                          description="Run one scenario and print what happened, then a summary."
                          " Exit status 0 exactly when every invariant and expectation held.",
                          epilog=EPILOG_SCENARIO,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("file", help="scenario file (TOML)")
    run.add_argument("--transport", choices=["memory", "rabbitmq"], default="memory",
                     help="memory: the deterministic simulator (default); rabbitmq: real "
                     "processes over RabbitMQ and Redis")
    run.add_argument("--seed", type=int, default=None,
                     help="simulator seed (default: the file's `seed`)")
    run.add_argument("--json", action="store_true", help="print one JSON object only")
    run.add_argument("--report", metavar="OUT.html", help="write an HTML space-time report")
    run.set_defaults(func=_scenario_run)
    ex = ssub.add_parser("explore", help="run scenarios over many seeds (memory backend)",
                         description="Run each scenario over a range of seeds on the simulator;"
                         " print every failing seed with the command that reproduces it.")
    ex.add_argument("files", nargs="+", help="scenario files")
    ex.add_argument("--runs", type=int, default=100, help="seeds per file (default 100)")
    ex.add_argument("--seed-start", type=int, default=1, help="first seed (default 1)")
    ex.add_argument("--json", action="store_true", help="one JSON object per run, then a total")
    ex.set_defaults(func=_scenario_explore)


def _scenario_run(args: argparse.Namespace) -> int:
    from dtq import report
    from dtq.runner import run_memory
    from dtq.scenario import load

    scenario = load(args.file)
    if args.transport != "memory":
        from dtq.realrun import run_real

        result = run_real(scenario, seed=args.seed, live=not args.json)
    else:
        result = run_memory(scenario, args.seed)
    if args.report:
        from dtq.spacetime import write_report

        write_report(args.report, scenario, result)
    if args.json:
        print(json.dumps(result.summary))
    else:
        if scenario.transcript:
            for line in report.transcript(result.events):
                print(line)
        for line in report.summary_lines(result.summary):
            print(line)
        if not result.ok and args.transport == "memory":
            print(f"reproduce: dtq scenario run {args.file} --seed {result.summary['seed']}")
    return 0 if result.ok else 1


def _scenario_explore(args: argparse.Namespace) -> int:
    from dtq.explore import explore

    return explore(args.files, runs=args.runs, seed_start=args.seed_start, as_json=args.json)


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="benchmarks that print numbers",
                       description="Benchmarks. They print measurements; they assert nothing.")
    bsub = p.add_subparsers(dest="bench_cmd", required=True, metavar="WHAT")
    sim = bsub.add_parser("sim", help="simulator messages/s, virtual-to-wall ratio, seeds/s")
    sim.add_argument("--tasks", type=int, default=20_000, help="tasks to push through")
    sim.add_argument("--explore", default="scenarios/round-robin-faulty.toml",
                     help="scenario for the explore rate")
    sim.add_argument("--runs", type=int, default=200, help="seeds for the explore rate")
    sim.set_defaults(func=lambda a: __import__("dtq.benchsim", fromlist=["main"]).main(
        a.tasks, a.explore, a.runs))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dtq", description="dtq: a distributed task queue built as an actor framework.",
        epilog="Run `dtq COMMAND --help` for the options of a command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_scenario(sub)
    _add_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from dtq.logs import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "log_level", None))
    try:
        code: int = args.func(args)
        return code
    except DtqError as exc:
        print(f"dtq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
