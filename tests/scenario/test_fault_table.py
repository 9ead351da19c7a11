"""The fault table: every kind of fault has a handler on both backends (or the table says why a
backend cannot play it), the handlers are exactly the table's kinds, and the command line lists
them."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from dtq.cli.main import main
from dtq.errors import ScenarioError
from dtq.scenario.faults import BACKENDS, FAULTS, FaultTarget
from dtq.scenario.model import FaultSpec, load
from dtq.scenario.real import RealRun
from dtq.scenario.sim import SimFaults, check_supported

AROUND = {"targets", "busy", "accepted", "too_late", "later", "record_fault", "after"}
"""What `FaultTarget` asks for besides the handlers."""
RUNNERS = {"memory": SimFaults, "rabbitmq": RealRun, "testbed": RealRun}
SERVICE_FAULTS = {"kill_broker_node", "restart_broker_node", "redis_failover",
                  "kill_redis_primary"}
"""The testbed's own faults: several RabbitMQ nodes, Redis behind Sentinels."""
PROXIED = {"partition", "drop_connection", "latency", "bandwidth", "slicer", "reset_peer",
           "lose_store_data", "inject"}
"""What the fault proxies (or one plain Redis and one broker) play, and the testbed cannot."""


def _protocol_methods() -> set[str]:
    return {name for name, _ in inspect.getmembers(FaultTarget, inspect.isfunction)
            if not name.startswith("_")}


def test_the_protocol_has_one_handler_per_kind_of_the_table() -> None:
    assert _protocol_methods() - AROUND == set(FAULTS)
    assert _protocol_methods() >= AROUND


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_runner_handles_every_kind_it_can_play(backend: str) -> None:
    runner = RUNNERS[backend]
    for name in (*FAULTS, *AROUND):
        assert callable(getattr(runner, name, None)), f"{runner.__name__} has no {name!r}"
    handlers = {n for n in _protocol_methods() - AROUND if callable(getattr(runner, n, None))}
    assert handlers == set(FAULTS)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_kind_a_backend_never_plays_says_why(backend: str) -> None:
    for kind in FAULTS.values():
        if kind.unsupported(backend):
            reason = kind.refusal(backend, kind.bare())
            assert reason and len(reason) > 20, kind.name


def test_the_real_runner_refuses_the_kinds_it_cannot_play() -> None:
    knobs = {"duplicate", "drop", "reorder"}
    never = {k.name for k in FAULTS.values() if k.unsupported("rabbitmq")}
    assert never == knobs | SERVICE_FAULTS
    for name in knobs:
        with pytest.raises(ScenarioError, match="cannot be played on the rabbitmq backend"):
            getattr(RealRun, name)(None, FAULTS[name].bare(), [])


def test_the_testbed_plays_its_own_faults_and_the_nodes_but_not_the_proxies() -> None:
    never = {k.name for k in FAULTS.values() if k.unsupported("testbed")}
    assert never == PROXIED | {"duplicate", "drop", "reorder"}
    assert not SERVICE_FAULTS & never
    assert {k.name for k in FAULTS.values() if k.unsupported("memory")} == set()
    assert "--testbed DIR" in str(FAULTS["redis_failover"].refusal("rabbitmq",
                                                                  FAULTS["redis_failover"].bare()))


def test_only_kill_broker_node_takes_a_node(tmp_path: Path) -> None:
    for action, node, ok in (("kill_broker_node", 2, True), ("kill_broker_node", 4, False),
                             ("redis_failover", 1, False)):
        p = tmp_path / "f.toml"
        p.write_text(f"[[fault]]\nat = 10\naction = '{action}'\nnode = {node}\n")
        if ok:
            check_supported(load(p), "testbed")
        else:
            with pytest.raises(ScenarioError, match="node"):
                check_supported(load(p), "testbed")


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_supported_refuses_what_the_table_refuses(tmp_path: Path, backend: str) -> None:
    for kind in FAULTS.values():
        if not kind.unsupported(backend):
            continue
        p = tmp_path / f"{kind.name}.toml"
        needs = "".join(f"{key} = {0.1 if key == 'probability' else 1}\n"
                        for key in kind.required)
        needs += "message = 'undecodable'\n" if kind.name == "inject" else ""
        p.write_text(f"[[fault]]\nat = 10\naction = '{kind.name}'\n{needs}")
        with pytest.raises(ScenarioError, match=f"cannot be played on the {backend} backend"):
            check_supported(load(p), backend)


def test_every_kind_of_the_table_loads_with_its_required_parameters(tmp_path: Path) -> None:
    for kind in FAULTS.values():
        lines = [f"at = 10\naction = '{kind.name}'"]
        lines += [f"{key} = 1" if key != "probability" else f"{key} = 0.5"
                  for key in kind.required]
        if kind.target == "required":
            lines.append("target = 'worker-1'")
        if kind.name == "inject":
            lines.append("message = 'undecodable'")
        p = tmp_path / f"{kind.name}.toml"
        p.write_text("[[fault]]\n" + "\n".join(lines) + "\n")
        fault = load(p).faults[0]
        assert isinstance(fault, FaultSpec) and fault.action == kind.name


def test_the_command_line_lists_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenario", "faults"]) == 0
    out = capsys.readouterr().out
    for kind in FAULTS.values():
        assert f"{kind.name} " in out and kind.doc in out
    assert "not on rabbitmq: duplicate is a knob of the simulator" in out
