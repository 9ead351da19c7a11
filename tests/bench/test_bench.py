"""Smoke tests of `dtq bench` against the peers: the report rendered from fake numbers, the
profile summary from fake stacks, and the subcommands in `dtq bench --help`. Nothing here
measures or asserts a timing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from dtq.bench import configure, report
from dtq.bench.profile import collapse, summarise

SUBCOMMANDS = ("throughput", "latency", "stages", "failover", "reassign", "scaling", "memory",
               "profile", "all", "report", "api", "testbed-faults")


def _dist(p50: float) -> dict[str, float]:
    return {"p50_ms": p50, "p99_ms": p50 * 2, "mean_ms": p50 * 1.1, "max_ms": p50 * 3}


FAKE: dict[str, Any] = {
    "machine": {"date": "2000-01-01 00:00 UTC", "cores": 2, "cpu": "a CPU", "os": "Linux",
                "python": "3.11.7", "rabbitmq": "3.10.8", "redis": "7.0.15",
                "load_average": [0.5, 0.4, 0.3], "packages": {"celery": "5.7.0"}},
    "throughput": {"tasks": 5000, "workers": 2, "systems": {
        "dtq": {"tasks": 5000, "tasks_per_s": 1234.5, "elapsed_s": 4.05, **_dist(300)},
        "celery": {"tasks": 5000, "tasks_per_s": 700.0, "elapsed_s": 7.1, "submit_s": 6.0},
        "dramatiq": {"error": "dramatiq is not installed"}}},
    "latency": {"n": 200, "block": 20, "systems": {"dtq": {"n": 200, **_dist(5)},
                                      "celery": {"n": 200, **_dist(2.3)}}},
    "failover": {"trials": 20, "lease_ttl_ms": 2000, "samples_ms": [1500.0, 1900.0],
                 "takeover": _dist(1490), **_dist(1500)},
    "reassign": {"trials": 20, "detector_timeout_ms": 1000, "heartbeat_ms": 200,
                 "kill": {"samples_ms": [8.0, 9.0], **_dist(8)},
                 "pause": {"samples_ms": [1040.0, 1060.0], **_dist(1040)}},
    "sim": {"throughput": {"tasks": 20000, "messages": 60000, "messages_per_s": 15000.0,
                           "virtual_to_wall": 1.5},
            "explore": {"scenario": "round-robin-faulty", "runs": 200, "seeds_per_s": 150.0,
                        "virtual_to_wall": 180.0}},
    "scaling": {"1": {"tasks": 5000, "tasks_per_s": 800.0, **_dist(400)},
                "2": {"tasks": 5000, "tasks_per_s": 1200.0, **_dist(300)},
                "4": {"error": "ScenarioError: timed out"}, "load_average_before": [1.0, 1, 1]},
    "memory": {"tasks": 100000, "rss_before_kib": 40000, "rss_after_kib": 140000,
               "rss_peak_kib": 150000, "bytes_per_task": 1024.0, "accepted_per_s": 3000.0},
    "profile": {"files": {"coordinator-1": "bench/results/profile-coordinator-1.txt"}},
}


def test_markdown_has_a_table_per_section() -> None:
    md = report.markdown(FAKE)
    for heading in ("Throughput", "Single-task latency", "Failover", "Reassignment",
                    "Simulator", "dtq scaling", "Coordinator memory", "Profiles"):
        assert f"### {heading}" in md
    assert "| dtq | 1,234 | 4.05 |" in md
    assert "not measured: dramatiq is not installed" in md
    assert "3.10.8" in md and "7.0.15" in md and "2 cores" in md
    assert "≤ 2,000" in md  # the SIGSTOP target: detector timeout + 1 s
    assert "| 4 |" not in md  # a failed scaling run has no row


def test_missing_and_failed_sections_are_left_out_or_named() -> None:
    md = report.markdown({"machine": {}, "failover": {"error": "BenchError: no leader"}})
    assert "Not measured: BenchError: no leader" in md
    assert "### Throughput" not in md


def test_write_and_load_round_trip(tmp_path: Path) -> None:
    paths = report.write(FAKE, tmp_path, png=False)
    assert {p.name for p in paths} == {"latest.json", "latest.md"}
    assert report.load(tmp_path) == json.loads(json.dumps(FAKE))


def test_chart_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = report.chart(FAKE, tmp_path / "throughput.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report.chart({"machine": {}}, tmp_path / "empty.png")  # every panel "not measured"


def test_profile_summary_from_collapsed_stacks() -> None:
    lines = ["<module> (<string>:1);run (dtq/runtime/node.py:10);apply (dtq/runtime/node.py:20) 30",
             "<module> (<string>:1);run (dtq/runtime/node.py:10) 10",
             "_find_and_load (<frozen importlib._bootstrap>:1);x (y.py:1) 99"]
    own, total, samples = collapse(lines)
    assert samples == 40  # the import stack is left out
    assert own["apply (dtq/runtime/node.py)"] == 30 and total["run (dtq/runtime/node.py)"] == 40
    text = summarise("worker-1", lines)
    assert "75.0%  apply (dtq/runtime/node.py)" in text


def _bench_help(capsys: pytest.CaptureFixture[str]) -> str:
    from dtq.cli.main import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--help"])
    text = capsys.readouterr().out
    if "throughput" in text:
        return text
    parser = argparse.ArgumentParser(prog="dtq bench")  # not wired into dtq.cli.main yet
    configure(parser.add_subparsers(dest="bench_cmd", metavar="WHAT"))
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    return capsys.readouterr().out


def test_bench_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    text = _bench_help(capsys)
    for name in SUBCOMMANDS:
        assert name in text


def test_worker_prefetch_option_reaches_the_runtime(capsys: pytest.CaptureFixture[str]) -> None:
    from dtq.cli.main import _node_config, build_parser
    from dtq.envelope import WORK_QUEUE
    from dtq.runtime.process import DEFAULT_CONCURRENCY as CONCURRENCY
    from dtq.runtime.process import DEFAULT_PREFETCH_PER_SLOT as PREFETCH_PER_SLOT
    from dtq.runtime.process import _prefetch

    parser = build_parser()
    args = parser.parse_args(["worker", "--concurrency", "2", "--prefetch", "3"])
    cfg = _node_config(args, "worker", "w")
    assert (cfg.concurrency, cfg.prefetch) == (2, 3)  # type: ignore[attr-defined]
    assert _prefetch(cfg) == {WORK_QUEUE: 3}  # type: ignore[arg-type]
    default = _node_config(parser.parse_args(["worker"]), "worker", "w")
    assert _prefetch(default) == {WORK_QUEUE: PREFETCH_PER_SLOT * CONCURRENCY}  # type: ignore[arg-type]
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--prefetch", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_cluster_passes_worker_options_on() -> None:
    from dtq.cli.main import _node_config, build_parser

    args = build_parser().parse_args(["cluster", "--prefetch", "5", "--result-ttl-ms", "900"])
    cfg = _node_config(args, "worker", "worker-1")
    assert (cfg.prefetch, cfg.result_ttl_ms) == (5, 900)  # type: ignore[attr-defined]


@pytest.mark.parametrize("argv", [["worker"], ["coordinator"], ["cluster"]])
def test_the_commands_defaults_are_the_node_defaults(argv: list[str]) -> None:
    """`dtq worker|coordinator|cluster` without flags configure a node exactly as NodeConfig's
    defaults do (the supervisor's and the benchmark's), and their help states the values."""
    from dtq.cli.main import _node_config, build_parser
    from dtq.runtime import process as p

    parser = build_parser()
    role = "coordinator" if argv == ["coordinator"] else "worker"
    cfg: p.NodeConfig = _node_config(parser.parse_args(argv), role, "n")  # type: ignore[assignment]
    plain = p.NodeConfig(role=role, name="n", broker_url=cfg.broker_url,
                         store_url=cfg.store_url)
    assert cfg == plain
    assert (cfg.concurrency, cfg.work_prefetch, cfg.dispatch_bundle, cfg.lease_ttl_ms) == (
        p.DEFAULT_CONCURRENCY, p.DEFAULT_PREFETCH_PER_SLOT * p.DEFAULT_CONCURRENCY,
        p.DEFAULT_DISPATCH_BUNDLE, p.DEFAULT_LEASE_TTL_MS)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices[argv[0]].format_help().split())
    if role == "worker":
        assert f"(default {p.DEFAULT_CONCURRENCY};" in text
    if argv != ["worker"]:
        assert f"(default {p.DEFAULT_DISPATCH_BUNDLE};" in text


def test_the_benchmarks_dtq_row_runs_the_defaults_and_tuned_rows_say_how() -> None:
    from dtq.bench.real import flags
    from dtq.bench.suite import Sizes, dtq_node

    assert dtq_node(Sizes()) == {} and flags(dtq_node(Sizes())) == ""
    assert flags({**dtq_node(Sizes(threads=4)), "dispatch_bundle": 1}) == (
        "--concurrency 4 --dispatch-bundle 1")
    assert report.label("dtq", {"flags": ""}) == "dtq"
    assert report.label(report.UNBUNDLED, {"flags": "--dispatch-bundle 1"}) == (
        "dtq --dispatch-bundle 1")
    assert report.label(report.UNBUNDLED, {}) == "dtq --dispatch-bundle 1"  # older results
    tuned = {**FAKE, "throughput": {**FAKE["throughput"], "systems": {
        "dtq": {**FAKE["throughput"]["systems"]["dtq"], "flags": "--concurrency 4"}}}}
    assert "| dtq --concurrency 4 | 1,234 |" in report.markdown(tuned)


class _Turns:
    """A submit-and-wait client that notes, in a shared list, whose round trip ran when."""

    def __init__(self, name: str, order: list[str]) -> None:
        self.name, self.order = name, order

    def submit(self) -> str:
        self.order.append(self.name)
        return self.name

    def wait(self, handle: str, timeout_s: float) -> None:
        assert handle == self.name and timeout_s > 0


def test_latency_takes_the_systems_in_turns_until_each_made_n() -> None:
    from dtq.bench.peers import interleaved_latency

    order: list[str] = []
    clients = {"a": _Turns("a", order), "b": _Turns("b", order)}
    result = interleaved_latency(clients, 5, block=2, warmup=1)
    assert order == ["a", "b", "a", "a", "b", "b", "a", "a", "b", "b", "a", "b"]
    assert {name: r["n"] for name, r in result.items()} == {"a": 5, "b": 5}
    assert all(0 <= r["p50_ms"] <= r["max_ms"] for r in result.values())


def test_the_latency_table_says_the_systems_took_turns() -> None:
    text = report.markdown(FAKE)
    assert "200 sequential submit-and-wait, the systems taking turns of 20" in text


def _scaling_run(workers: int, tasks_per_s: float, leader_ms: float) -> dict[str, Any]:
    """A fake `dtq bench scaling` run: a CpuMeter reading per task, and what it gives."""
    from dtq.bench.dtqside import ceiling

    by_process = {"leader": leader_ms, "client": 0.05, "RabbitMQ": 0.4, "Redis": 0.2,
                  **{f"worker-{i}": 0.3 for i in range(1, workers + 1)}}
    cpu = {"round_trips": 1000, "machine_ms": 2.0, "by_process_ms": by_process,
           "window_s": 1000 / tasks_per_s}
    return {"tasks": 1000, "workers": workers, "tasks_per_s": tasks_per_s,
            "elapsed_s": 1000 / tasks_per_s, **_dist(100), "cpu": cpu, **ceiling(cpu, 1000)}


def test_scaling_report_puts_throughput_beside_cpu_and_the_leaders_share() -> None:
    runs = {"1": _scaling_run(1, 500.0, 1.0), "2": _scaling_run(2, 800.0, 1.0),
            "4": _scaling_run(4, 950.0, 1.0)}
    assert runs["4"]["cpu_s_per_1k"]["workers"] == pytest.approx(1.2)  # every worker together
    assert runs["4"]["leader_core"] == pytest.approx(0.95)  # 1 ms a task at 950 tasks/s
    assert runs["4"]["leader_bound_tasks_per_s"] == pytest.approx(1000)
    md = report.markdown({"machine": {}, "scaling": runs})
    head = ("| workers | tasks/s | leader CPU s/1k tasks | leader % of a core | workers (all) CPU "
            "s/1k tasks | RabbitMQ CPU s/1k tasks | Redis CPU s/1k tasks | client CPU s/1k "
            "tasks | 1 / leader CPU per task (tasks/s) |")
    assert head in md
    assert "| 1 | 500 | 1.00 | 50% | 0.30 | 0.40 | 0.20 | 0.05 | 1,000 |" in md
    assert "| 4 | 950 | 1.00 | 95% | 1.20 | 0.40 | 0.20 | 0.05 | 1,000 |" in md
    line = report.scaling_cpu_line(runs["2"])
    assert "leader 1.00, workers (all) 0.60, RabbitMQ 0.40, Redis 0.20, client 0.05" in line
    assert "leader 80% of a core" in line
    assert json.loads(json.dumps(runs)) == runs  # what `--json` prints carries the same numbers


def test_scaling_runs_without_cpu_figures_still_render() -> None:
    md = report.markdown(FAKE)  # older results: no CPU figures
    assert "| 1 | 800 | n/a | n/a | n/a | n/a | n/a | n/a | n/a | 400.0 | 800.0 |" in md


AB_OUTPUT = """\
Complete requests:      50
Failed requests:        7
   (Connect: 0, Receive: 0, Length: 5, Exceptions: 2)
Non-2xx responses:      3
Requests per second:    269.28 [#/sec] (mean)
Percentage of the requests served within a certain time (ms)
  50%      3
  99%     56
 100%     56 (longest request)
"""


def test_bench_api_reads_ab_and_prints_its_table() -> None:
    from dtq.bench.api import parse_ab, table

    load = parse_ab(AB_OUTPUT)
    # a length differing from the first answer's is no failure; exceptions and non-2xx are
    assert (load.requests, load.ok, load.per_s, load.p50_ms, load.p99_ms) == (
        50, 45, 269.28, 3, 56)
    row = {"concurrency": 50, "noop_per_s": 1000.0, "dtq_per_s": 850.0, "ratio": 0.85,
           "dtq_p50_ms": 40.0, "dtq_p99_ms": 90.0, "noop_cpu_ms": 0.8, "dtq_cpu_ms": 0.9,
           "non_2xx": 0}
    text = table({"rows": [row], "in_store": 1200, "answered_202": 1200})
    assert "| 50 | 1,000 | 850 | 0.85 | 40.0 | 90.0 | 0.80, 0.90 | 0 |" in text
    assert "1,200 of 1,200 tasks answered 202" in text
