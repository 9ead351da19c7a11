"""`dtq bench stages`: the round-trip analysis on a made-up sequence of marks, the method
wrapping that makes the marks, and one small real run (RabbitMQ and Redis). Nothing here asserts
a timing: the checks are on what was measured and how it adds up."""

from __future__ import annotations

from pathlib import Path

import pytest

from dtq import stagemarks
from dtq.bench import stages
from dtq.bench.stages import Mark, load, round_trips, summarise, table
from dtq.runtime.markfile import Marker, install
from dtq.runtime.node import ProcessRuntime


def _trip(t0: float, *, completion_first: bool) -> list[Mark]:
    ms = 0.001
    marks = [Mark(t0, "client", "submit"),
             Mark(t0 + 0.1 * ms, "client", "publish", frozenset({"Submit"}))]
    if completion_first:  # the previous task's report reaches the leader first
        marks.append(Mark(t0 + 0.2 * ms, "leader", "receive", frozenset({"Completed"})))
    marks += [Mark(t0 + 0.4 * ms, "leader", "receive", frozenset({"Submit"})),
              Mark(t0 + 0.5 * ms, "leader", "write"),
              Mark(t0 + 0.7 * ms, "leader", "written"),
              Mark(t0 + 0.8 * ms, "leader", "publish", frozenset({"Dispatch"})),
              Mark(t0 + 0.9 * ms, "worker-2", "receive", frozenset({"Heartbeat"})),
              Mark(t0 + 1.1 * ms, "worker-1", "receive", frozenset({"Dispatch"})),
              Mark(t0 + 1.4 * ms, "worker-1", "result"),
              Mark(t0 + 1.6 * ms, "client", "notice"),
              Mark(t0 + 1.65 * ms, "worker-1", "result_done"),
              Mark(t0 + 1.7 * ms, "client", "woken")]
    return marks


def test_round_trips_split_into_stages_that_add_up() -> None:
    marks = _trip(10.0, completion_first=True) + _trip(20.0, completion_first=False)
    trips = round_trips(marks)
    assert len(trips) == 2
    first = trips[0]
    assert first["client"] == pytest.approx(0.1)
    assert first["hop_to_leader"] == pytest.approx(0.3)
    assert first["leader"] == pytest.approx(0.4)
    assert first["leader_write"] == pytest.approx(0.2)
    assert first["hop_to_worker"] == pytest.approx(0.3)  # the heartbeat is not the dispatch
    assert first["worker"] == pytest.approx(0.3)
    assert first["result_notice"] == pytest.approx(0.2)
    assert first["worker_result_script"] == pytest.approx(0.25)
    assert first["client_wake"] == pytest.approx(0.1)
    parts = sum(float(first[name]) for name, _ in stages.SEGMENTS)
    assert parts == pytest.approx(float(first["total"])) == pytest.approx(1.7)
    assert [t["leader_busy_with_completion"] for t in trips] == [True, False]
    summary = summarise(trips)
    assert summary["round_trips"] == 2 and summary["leader_busy_with_completion"] == 0.5
    cpu = {"round_trips": 2, "machine_ms": 3.0,
           "by_process_ms": {"client": 0.4, "leader": 0.8, "RabbitMQ": 1.0, "Redis": 0.2}}
    text = table({"stages": {**summary, "cpu": cpu},
                  "bare": {"p50_ms": 0.5, "p90_ms": 0.6, "cpu": {
                      "machine_ms": 0.8, "by_process_ms": {"RabbitMQ": 0.4}}},
                  "peers": {"celery": {"p50_ms": 1.3, "cpu": {
                      "machine_ms": 1.5, "by_process_ms": {"RabbitMQ": 0.3, "Redis": 0.1}}},
                            "dramatiq": {"error": "dramatiq is not installed"}}})
    assert "| **round trip** (submit -> woken, 2 trips) | **1.700** |" in text
    assert "In 50% of round trips" in text
    assert "| dtq | 1.700 | 3.00 | 1.00 | 0.20 | 1.80 |" in text
    assert "| bare pika, two hops | 0.500 | 0.80 | 0.40 | - | 0.40 |" in text
    assert "| Celery | 1.300 | 1.50 | 0.30 | 0.10 | 1.10 |" in text
    assert "Dramatiq" not in text  # not measured: no row
    assert "client 0.40, leader 0.80." in text


def test_an_incomplete_round_trip_is_left_out() -> None:
    marks = _trip(10.0, completion_first=False)
    cut = [m for m in marks if m.stage != "notice"]
    assert round_trips(cut) == []
    assert summarise([]) == {"round_trips": 0}


def test_the_marker_writes_marks_that_load_reads(tmp_path: Path) -> None:
    marker = Marker(tmp_path)
    marker("begin", [b"Work"])
    marker("end")
    marker.close()
    marks = load(tmp_path, {})
    assert [(m.stage, m.kinds) for m in marks] == [("begin", frozenset({"Work"})),
                                                    ("end", frozenset())]
    assert marks[0].role.startswith("pid-") and marks[0].t <= marks[1].t


def test_the_runtime_marks_a_fenced_write_only_with_a_sink_set(tmp_path: Path) -> None:
    """The hook is called by the code production runs (the runtime's effect primitives); with
    no sink it records nothing."""
    from dtq.runtime.node import _ProcessEffects
    from dtq.store import PutTask
    from dtq.task import TaskRecord, TaskSpec
    from tests.runtime.test_runtime_timers import _SlowHandler, _StubTransport
    from transports.memory_store import SimStore

    store = SimStore()
    runtime = ProcessRuntime(_SlowHandler(), transport=_StubTransport(),  # type: ignore[arg-type]
                             store=store)
    epoch = store.acquire_lease("coordinator", "slow", 10_000)
    assert epoch is not None
    write = [PutTask(record=TaskRecord(spec=TaskSpec(id="t", type="echo"), epoch=epoch))]
    _ProcessEffects(runtime).write(write, epoch)
    assert not stagemarks.enabled() and not list(tmp_path.iterdir())
    marker = install(tmp_path)
    try:
        _ProcessEffects(runtime).write(write, epoch)
    finally:
        marker.close()
    assert [m.stage for m in load(tmp_path, {})] == ["write", "written"]
    assert not stagemarks.enabled()


def test_cpu_meter_counts_the_ticks_a_process_spends() -> None:
    import os

    from dtq.bench.cpu import CpuMeter, machine_busy_ticks, process_ticks

    meter = CpuMeter({"me": os.getpid(), "gone": 2**22 + 1})
    meter.start()
    start, machine = process_ticks(os.getpid()), machine_busy_ticks()
    assert start is not None
    # Spend CPU until the kernel has counted a tick for this process and for the machine.
    while process_ticks(os.getpid()) == start or machine_busy_ticks() == machine:
        sum(range(10_000))
    cpu = meter.stop(round_trips=4)
    assert cpu["round_trips"] == 4
    assert cpu["by_process_ms"]["me"] > 0  # type: ignore[index]
    assert "gone" not in cpu["by_process_ms"]  # type: ignore[operator]
    assert cpu["machine_ms"] > 0  # type: ignore[operator]


def test_a_real_run_measures_every_stage(rabbitmq_url: str) -> None:
    result = stages.main(n=30, workers=1, peers=())
    summary = result["stages"]
    assert summary["round_trips"] >= 27  # one whose marks a busy machine interleaved oddly
    for name, _ in stages.SEGMENTS:
        assert summary["segments"][name]["p50_ms"] > 0, name
    assert 0 < summary["segments"]["leader_write"]["p50_ms"] < summary["segments"]["leader"][
        "p50_ms"]
    assert set(summary["cpu"]["by_process_ms"]) >= {"client", "leader", "worker-1"}
    assert result["bare"]["n"] == 30 and result["bare"]["p50_ms"] > 0
    assert "peers" not in result
