"""Scenario files: every key checked; a broken file's error names the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtq.cli.main import main
from dtq.errors import ScenarioError
from dtq.scenario.model import load

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "broken.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(("text", "key", "line"), [
    ("[cluster]\nworkers = 3\nwokers = 2\n", "cluster.wokers", 3),
    ("[cluster]\nworkers = 'three'\n", "cluster.workers", 2),
    ("[cluster]\nworkers = 0\n", "cluster.workers", 2),
    ("[network]\ndrop = 1.5\n", "network.drop", 2),
    ("[[fault]]\nat = 10\naction = 'explode'\n", "fault[0].action", 3),
    ("[[fault]]\naction = 'kill'\n", "fault[0].at", None),
    ("[[fault]]\nat = 10\naction = 'kill'\nwhen = 'soon'\n", "fault[0].when", 4),
    ("[workload]\ncount = -1\n", "workload.count", 2),
    ("[workload]\ndag = 'spiral'\n", "workload.dag", 2),
    ("colour = 'red'\n", "colour", 1),
    ("[output]\ntranscript = 'yes'\n", "output.transcript", 2),
])
def test_errors_name_file_line_and_key(
    tmp_path: Path, text: str, key: str, line: int | None,
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as err:
        load(path)
    msg = str(err.value)
    assert str(path) in msg and key in msg
    if line is not None:
        assert f"{path}:{line}:" in msg


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[cluster\n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load(tmp_path / "nope.toml")


def test_cli_reports_a_broken_file_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, "[cluster]\nwokers = 2\n")
    assert main(["scenario", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "cluster.wokers" in err and str(path) in err


def test_memory_backend_refuses_faults_it_cannot_play(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, "[[fault]]\nat = 10\naction = 'slicer'\ntarget = 'worker-1'\n"
                           "from = ['store']\n")
    assert main(["scenario", "run", str(path)]) == 2
    assert "'slicer' cannot be played on the memory backend" in capsys.readouterr().err


@pytest.mark.parametrize(("workload", "said"), [
    ("type = 'slep'", "workload: type: unknown task type 'slep'"),
    ("type = 'sleep'\npayload = { ms = 'ten' }", "workload: payload.ms: "),
    ("type = 'echo'\npriority = 99", "workload: priority: "),
])
def test_a_workload_the_leader_would_reject_is_refused_before_it_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], workload: str, said: str,
) -> None:
    path = write(tmp_path, f"[workload]\ncount = 3\n{workload}\n")
    assert main(["scenario", "run", str(path)]) == 2
    assert said in capsys.readouterr().err


def test_every_shipped_scenario_loads() -> None:
    files = sorted((ROOT / "scenarios").glob("*.toml"))
    assert files
    for f in files:
        assert load(f).name


def test_a_busy_fault_waits_until_its_target_runs_a_task(tmp_path: Path) -> None:
    """`when = "busy"`: the kill fires at the first moment from `at` on when the worker runs a
    task, however late that is (here the tasks are submitted only at 500 ms)."""
    from dtq.scenario.sim import run_memory

    path = write(tmp_path, "name = 'busy'\n[cluster]\nworkers = 2\n"
                 "[workload]\ncount = 4\nstart_ms = 500\ntype = 'sleep'\npayload = { ms = 200 }\n"
                 "[[fault]]\nat = 10\naction = 'kill'\ntarget = 'worker-1'\nwhen = 'busy'\n"
                 "duration = 300\n")
    result = run_memory(load(path))
    assert result.summary["ok"], result.summary["violations"]
    crash = next(e for e in result.events if e.kind == "crash" and e.actor == "worker-1")
    first = min(e.time_ms for e in result.events
                if e.kind == "started" and e.actor == "worker-1")
    assert crash.time_ms >= first >= 500
    restart = next(e for e in result.events if e.kind == "restart" and e.actor == "worker-1")
    assert restart.time_ms - crash.time_ms == 300


def test_a_wrong_flag_is_refused_with_the_subcommands_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["scenario", "run", str(ROOT / "scenarios" / "round-robin.toml"), "--bogus"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: dtq scenario run") and "unrecognized arguments: --bogus" in err


def test_the_report_says_where_it_was_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "rr.html"
    assert main(["scenario", "run", str(ROOT / "scenarios" / "round-robin.toml"),
                 "--report", str(out)]) == 0
    assert f"report written to {out.resolve()}" in capsys.readouterr().err and out.exists()
