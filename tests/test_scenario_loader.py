"""Scenario files: every key checked; a broken file's error names the file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtq.cli import main
from dtq.errors import ScenarioError
from dtq.scenario import load

ROOT = Path(__file__).resolve().parent.parent


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


def test_every_shipped_scenario_loads() -> None:
    files = sorted((ROOT / "scenarios").glob("*.toml"))
    assert files
    for f in files:
        assert load(f).name
