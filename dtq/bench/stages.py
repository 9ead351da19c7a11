"""Where one round trip's time goes: the stages of a sequential submit-and-wait, measured.

`dtq bench stages` runs the latency benchmark's loop (one task in flight at a time) on a dtq
cluster whose processes mark, on the system-wide monotonic clock, the moments a round trip
passes: the client publishes its Submit; the leader receives it, writes the task (fenced) and
publishes the Dispatch; a worker receives it, runs the task and writes the result, whose script
publishes the notice the client hears. Each process appends its marks to a file of its own.

The marks come from the `dtq.stagemarks` hook the runtime and the RabbitMQ transport call at
those points; its sink is set in every process of the run only when the benchmark asks for it
through the environment (`STAGES_ENV`, read when a node starts): in a normal run a mark does
nothing. A mark costs a few microseconds; the round trip measured here is that much
slower than in `dtq bench latency`.

Beside it, the same loop on bare pika (`bare_round_trip`): a persistent message through two
durable queues and back, with publisher confirms, between two processes. That is the floor
the broker and its client library set for two hops.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import statistics
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from dtq.bench.cpu import CpuMeter, service_pids
from dtq.bench.real import percentile
from dtq.envelope import Finished
from dtq.runtime.markfile import STAGES_ENV, install

_KIND = re.compile(rb'"kind":"(\w+)"')


@attrs.frozen
class Mark:
    t: float
    """time.monotonic() (CLOCK_MONOTONIC: one clock for every process of the machine)."""
    role: str
    stage: str
    kinds: frozenset[str] = frozenset()


def load(folder: Path, roles: dict[int, str]) -> list[Mark]:
    """Every mark of a run, in time order; a process not in `roles` is named by its pid."""
    marks = []
    for path in folder.glob("*.marks"):
        role = roles.get(int(path.stem), f"pid-{path.stem}")
        for line in path.read_text().splitlines():
            t, stage, kinds = line.split(" ", 2)
            marks.append(Mark(float(t), role, stage, frozenset(filter(None, kinds.split(",")))))
    return sorted(marks, key=lambda m: m.t)


# --- analysis ---------------------------------------------------------------------------------

SEGMENTS = (
    ("client", "client: submit called -> Submit published"),
    ("hop_to_leader", "broker: client -> leader"),
    ("leader", "leader: Submit received -> Dispatch published"),
    ("hop_to_worker", "broker: leader -> worker"),
    ("worker", "worker: Dispatch received -> result write begins"),
    ("result_notice", "worker's result write (its script publishes the notice) -> client hears"),
    ("client_wake", "client: notice heard -> waiting caller wakes"),
)
DETAILS = (
    ("leader_write", "of the leader's stage: its fenced writes"),
    ("worker_result_script", "of the result write: the script's round trip, as the worker sees it"),
)


def round_trips(marks: Sequence[Mark]) -> list[dict[str, float | bool]]:
    """One dict per complete round trip: each segment in ms, the total, and whether the leader
    received another task's completion report while this task was at its stage."""
    starts = [i for i, m in enumerate(marks) if m.role == "client" and m.stage == "submit"]
    bounds = [*starts, len(marks)]
    trips = []
    for k, a in enumerate(starts):
        # The worker's own end of its result write may come after the client has already
        # heard the notice and submitted the next task: it is looked for in the next window.
        b, c = bounds[k + 1], bounds[min(k + 2, len(starts))]
        end = marks[b].t if b < len(marks) else float("inf")
        trip = _one_trip(marks[a:c], end)
        if trip is not None:
            trips.append(trip)
    return trips


def _one_trip(w: Sequence[Mark], end: float) -> dict[str, float | bool] | None:
    """The round trip that starts with `w[0]` (a submit); every mark of it but the worker's
    end of the result write comes before `end` (the next submit). `w` ends with the next
    round trip."""

    def first(after: float, pred: Callable[[Mark], bool], until: float = end) -> Mark | None:
        for m in w:
            if m.t >= until:
                return None
            if m.t >= after and pred(m):
                return m
        return None

    t0 = w[0].t
    c_pub = first(t0, lambda m: m.role == "client" and m.stage == "publish"
                  and "Submit" in m.kinds)
    l_rcv = c_pub and first(c_pub.t, lambda m: m.role == "leader" and m.stage == "receive"
                            and "Submit" in m.kinds)
    l_pub = l_rcv and first(l_rcv.t, lambda m: m.role == "leader" and m.stage == "publish"
                            and "Dispatch" in m.kinds)
    w_rcv = l_pub and first(l_pub.t, lambda m: m.role.startswith("worker")
                            and m.stage == "receive" and "Dispatch" in m.kinds)
    w_res = w_rcv and first(w_rcv.t, lambda m: m.role == w_rcv.role and m.stage == "result")
    w_done = w_res and first(w_res.t, lambda m: m.role == w_res.role
                             and m.stage == "result_done", float("inf"))
    notice = w_res and first(w_res.t, lambda m: m.role == "client" and m.stage == "notice")
    woken = notice and first(notice.t, lambda m: m.role == "client" and m.stage == "woken")
    if not (c_pub and l_rcv and l_pub and w_rcv and w_res and w_done and notice and woken):
        return None
    points = [t0, c_pub.t, l_rcv.t, l_pub.t, w_rcv.t, w_res.t, notice.t, woken.t]
    trip: dict[str, float | bool] = {
        name: (b - a) * 1000
        for (name, _), (a, b) in zip(SEGMENTS, itertools.pairwise(points), strict=True)}
    trip["total"] = (woken.t - t0) * 1000
    trip["leader_write"] = _within(w, "leader", "write", "written", l_rcv.t, l_pub.t)
    trip["worker_result_script"] = (w_done.t - w_res.t) * 1000
    trip["leader_busy_with_completion"] = any(
        m.role == "leader" and m.stage == "receive" and "Completed" in m.kinds
        for m in w if c_pub.t <= m.t <= l_pub.t and m.t < end)
    return trip


def _within(w: Sequence[Mark], role: str, start: str, end: str, lo: float, hi: float) -> float:
    """Milliseconds `role` spent between `start` and `end` marks inside [lo, hi]."""
    total, began = 0.0, None
    for m in w:
        if m.role != role or not lo <= m.t <= hi:
            continue
        if m.stage == start:
            began = m.t
        elif m.stage == end and began is not None:
            total += m.t - began
            began = None
    return total * 1000


def summarise(trips: Sequence[dict[str, float | bool]]) -> dict[str, Any]:
    if not trips:
        return {"round_trips": 0}
    out: dict[str, Any] = {"round_trips": len(trips), "segments": {}}
    for name, _ in (*SEGMENTS, ("total", ""), *DETAILS):
        values = sorted(float(t[name]) for t in trips)
        out["segments"][name] = {"p50_ms": statistics.median(values),
                                 "p90_ms": percentile(values, 90),
                                 "mean_ms": statistics.fmean(values)}
    busy = [t for t in trips if t["leader_busy_with_completion"]]
    free = [t for t in trips if not t["leader_busy_with_completion"]]
    out["leader_busy_with_completion"] = len(busy) / len(trips)
    for label, group in (("leader_p50_when_busy_ms", busy), ("leader_p50_when_free_ms", free)):
        out[label] = statistics.median(float(t["leader"]) for t in group) if group else None
    return out


# --- the run ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def measure(n: int = 300, workers: int = 2, warmup: int = 20) -> dict[str, Any]:
    """`n` marked round trips on a fresh cluster; the per-stage summary, and the CPU each
    process spent per round trip."""
    from dtq.bench.cluster import dtq_cluster
    from dtq.bench.dtqside import DtqClient

    class MarkedClient(DtqClient):
        def _finished(self, msg: Finished) -> None:
            marker("notice")
            super()._finished(msg)

    with tempfile.TemporaryDirectory(prefix="dtq-stages-") as tmp:
        marker = install(tmp)
        try:
            with _environment(STAGES_ENV, tmp), dtq_cluster("stages", workers=workers) as c:
                roles = {os.getpid(): "client"}
                for name, node in c.sup.nodes.items():
                    if (pid := c.sup.pid(name)) is not None:
                        roles[pid] = "leader" if node.cfg.role == "coordinator" else name
                meter = CpuMeter({**{r: pid for pid, r in roles.items()}, **service_pids()})
                client = MarkedClient(c)
                try:
                    for i in range(warmup + n):
                        if i == warmup:
                            marker("measuring")
                            meter.start()
                        marker("submit")
                        client.wait(client.submit(), 30)
                        marker("woken")
                    cpu = meter.stop(n)
                finally:
                    client.submitter.close()
        finally:
            marker.close()
        marks = load(Path(tmp), roles)
    begin = next(m.t for m in marks if m.stage == "measuring")
    return {**summarise(round_trips([m for m in marks if m.t > begin])), "cpu": cpu}


# --- output -----------------------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    """The stage table, then what each round trip costs in CPU, dtq beside its references."""
    st = result["stages"]
    seg = st["segments"]
    total = seg["total"]["p50_ms"]
    lines = ["| stage | p50 ms | p90 ms | share of p50 total |", "|---|---|---|---|"]
    for name, label in SEGMENTS:
        s = seg[name]
        lines.append(f"| {label} | {s['p50_ms']:.3f} | {s['p90_ms']:.3f} | "
                     f"{s['p50_ms'] / total:.0%} |")
    for name, label in DETAILS:
        s = seg[name]
        lines.append(f"| ({label}) | {s['p50_ms']:.3f} | {s['p90_ms']:.3f} | |")
    lines.append(f"| **round trip** (submit -> woken, {st['round_trips']} trips) | "
                 f"**{total:.3f}** | {seg['total']['p90_ms']:.3f} | |")
    busy, free = st["leader_p50_when_busy_ms"], st["leader_p50_when_free_ms"]
    lines += ["", f"In {st['leader_busy_with_completion']:.0%} of round trips the leader "
              f"received the previous task's completion report while this task's Submit was on "
              f"its way or in hand (the leader's stage p50 then {_ms(busy)} ms, otherwise "
              f"{_ms(free)} ms).", "", *cpu_table(result)]
    return "\n".join(lines)


def cpu_table(result: dict[str, Any]) -> list[str]:
    """CPU per round trip: the machine, the services, the rest (the Python processes)."""
    from dtq.bench.report import LABELS

    rows = [("dtq", total_p50(result["stages"]), result["stages"].get("cpu"))]
    if result.get("bare"):
        rows.append(("bare pika, two hops", result["bare"]["p50_ms"], result["bare"]["cpu"]))
    for name, r in result.get("peers", {}).items():
        if "error" not in r:
            rows.append((LABELS.get(name, name), r["p50_ms"], r["cpu"]))
    lines = ["| round trip | latency p50 ms | CPU ms per round trip, machine | RabbitMQ | Redis "
             "| the rest (Python processes) |", "|---|---|---|---|---|---|"]
    for label, p50, cpu in rows:
        if not cpu:
            continue
        procs = cpu["by_process_ms"]
        services = [procs.get(s) for s in ("RabbitMQ", "Redis")]
        rest = cpu["machine_ms"] - sum(v for v in services if v is not None)
        lines.append(f"| {label} | {p50:.3f} | {cpu['machine_ms']:.2f} | "
                     + " | ".join(_ms(v, 2) for v in services) + f" | {rest:.2f} |")
    own = rows[0][2]["by_process_ms"] if rows[0][2] else {}
    python = ", ".join(f"{name} {ms:.2f}" for name, ms in own.items()
                       if name not in ("RabbitMQ", "Redis"))
    if python:
        lines += ["", f"dtq's Python processes, CPU ms per round trip: {python}."]
    return lines


def total_p50(stages: dict[str, Any]) -> float:
    return float(stages["segments"]["total"]["p50_ms"])


def _ms(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(n: int = 300, workers: int = 2, *, bare: bool = True,
         peers: Sequence[str] = ("celery", "dramatiq")) -> dict[str, Any]:
    """Marked dtq round trips; bare pika's and the peers' beside them. Prints the tables."""
    from dtq.bench.reference import bare_round_trip, peer_round_trips

    result: dict[str, Any] = {"stages": measure(n, workers)}
    if bare:
        result["bare"] = bare_round_trip(n)
    if peers:
        result["peers"] = peer_round_trips(n, workers, peers)
    print(table(result), flush=True)
    return result
