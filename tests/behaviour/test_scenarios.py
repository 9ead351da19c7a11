"""Every file in scenarios/ holds, on the simulator and on real processes.

On the simulator each file runs with its own seed. On RabbitMQ (marker `rabbitmq`) each runs on
real processes behind per-node fault proxies; a file that needs a knob only the simulator has
(`[network] drop`, `duplicate`, `reorder`, `stale_read`...), or a fault only the simulator or
the testbed plays (`kill_broker_node`...), must be refused, with a message naming it. A
failure shows the violations and the command that reproduces the run. Some files also show that
the fault they stage really happened (a second leader, a task run twice...), so that a file
cannot pass by accident.

Expectations that cannot hold (a failover bound of 1 ms) must fail, readably.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dtq.cli.main import main
from dtq.errors import ScenarioError
from dtq.scenario.faults import FAULTS
from dtq.scenario.model import Scenario, load
from dtq.scenario.real import run_real
from dtq.scenario.sim import RunResult, run_memory

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "scenarios").glob("*.toml"))
REAL_NETWORK_KEYS = ("delay_ms", "jitter_ms", "reorder_ms", "retransmit_ms", "broker_heartbeat_ms")
"""Played on RabbitMQ (delay as latency) or describing the simulator's model of it."""


def _ran_twice(result: RunResult) -> bool:
    workers: dict[str, set[str]] = {}
    for e in result.events:
        if e.kind == "started":
            workers.setdefault(e.data["task"], set()).add(e.actor)
    return any(len(w) > 1 for w in workers.values())


SHOWS: dict[str, tuple[str, Callable[[RunResult], bool]]] = {
    "worker-crash": ("a killed worker's task was handed on",
                     lambda r: bool(r.summary["reassign_ms"])),
    "leader-crash": ("a standby took over", lambda r: len(r.summary["leaders"]) >= 2),
    "zombie-leader": ("a standby took over", lambda r: len(r.summary["leaders"]) >= 2),
    "store-restart": ("a leader was elected again", lambda r: len(r.summary["leaders"]) >= 2),
    "duplicate-delivery": ("some task ran on two workers", _ran_twice),
    "store-data-loss": ("the leader re-seeded the emptied store",
                        lambda r: any(e.kind == "store_data_lost" and e.data.get("recovered")
                                      for e in r.events)),
}


def _reproduce(path: Path, result: RunResult) -> str:
    s = result.summary
    return (f"{s['violations']}\nreproduce: dtq scenario run {path.relative_to(ROOT)} "
            f"--seed {s['seed']} --transport {s['transport']}")


def _holds(path: Path, result: RunResult) -> None:
    assert result.ok, _reproduce(path, result)
    shown = SHOWS.get(path.stem)
    if shown is not None:
        assert shown[1](result), f"{path.stem} passed but {shown[0]} did not happen\n" \
                                 + _reproduce(path, result)


def _simulator_only(scenario: Scenario) -> str | None:
    """The first thing in the file the proxied rabbitmq backend cannot play, if any."""
    knobs = [k for k, v in scenario.network.items() if v and k not in REAL_NETWORK_KEYS]
    knobs += [k for k, v in scenario.crash_points.items() if v]
    knobs += [f.action for f in scenario.faults if FAULTS[f.action].refusal("rabbitmq", f)]
    return knobs[0] if knobs else None


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_scenario_holds_on_the_simulator(path: Path) -> None:
    _holds(path, run_memory(load(path)))


@pytest.mark.rabbitmq
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_scenario_holds_on_rabbitmq(path: Path, rabbitmq_url: str) -> None:
    scenario = load(path)
    knob = _simulator_only(scenario)
    if knob is not None:
        with pytest.raises(ScenarioError, match=rf"{knob}.*cannot be played on the rabbitmq"):
            run_real(scenario, live=False)
        return
    _holds(path, run_real(scenario, live=False))


def test_the_library_covers_the_faults_it_promises() -> None:
    actions = {f.action for p in FILES for f in load(p).faults}
    assert len(FILES) >= 10
    assert {"kill", "pause", "partition", "latency", "bandwidth", "slicer", "reset_peer",
            "drop_connection"} <= actions
    for p in FILES:
        assert p.read_text().startswith("#"), f"{p.name} does not open with what it shows"


# --- expectations that cannot hold ------------------------------------------------------------


def _impossible(tmp_path: Path, name: str, old: str, new: str) -> Path:
    text = (ROOT / "scenarios" / name).read_text()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new))
    return path


def test_an_impossible_failover_bound_fails_readably(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = _impossible(tmp_path, "leader-crash.toml", "failover_ms_max = 3000",
                       "failover_ms_max = 1")
    assert main(["scenario", "run", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "failover bound        FAILED" in out
    assert "[expect] failover_ms_max allows 1 ms" in out
    assert "lease" in out  # says why a failover takes that long
    assert f"reproduce: dtq scenario run {path} --seed 1" in out


@pytest.mark.rabbitmq
def test_an_impossible_reassign_bound_fails_readably_on_rabbitmq(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rabbitmq_url: str,
) -> None:
    path = _impossible(tmp_path, "worker-crash.toml", "reassign_ms_max = 2000",
                       "reassign_ms_max = 1")
    assert main(["scenario", "run", str(path), "--transport", "rabbitmq"]) == 1
    out = capsys.readouterr().out
    assert "reassign bound        FAILED" in out
    assert "[expect] reassign_ms_max allows 1 ms" in out
    assert f"run again: dtq scenario run {path} --seed 1 --transport rabbitmq" in out
