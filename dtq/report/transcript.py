"""Presenting a run: the prototype-style transcript and the terminal summary.

(The HTML space-time diagram lives in `dtq.report.spacetime`.)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from dtq.history import Event


def transcript(events: Iterable[Event]) -> Iterator[str]:
    """The original prototype's lines: what the coordinator sent, what each worker received."""
    for e in events:
        if e.kind == "dispatched":
            yield f"[coordinator] Sent: '{e.data.get('label', e.data['task'])}'"
        elif e.kind == "started":
            yield f"{e.actor}: Received: {e.data.get('label', e.data['task'])}"


def summary_lines(summary: dict[str, Any]) -> Iterator[str]:
    t = summary["tasks"]
    verdict = "OK" if summary["ok"] else "FAILED"
    yield (f"scenario {summary['scenario']} on {summary['transport']} (seed {summary['seed']}): "
           f"{verdict}")
    yield ("  tasks      " + "  ".join(f"{k} {v}" for k, v in t.items()))
    if summary["leaders"]:
        yield "  leaders    " + ", ".join(
            f"{x['actor']} (epoch {x['epoch']})" for x in summary["leaders"])
    for key in ("failover_ms", "reassign_ms"):
        if summary.get(key):
            yield f"  {key:<10} {summary[key]}"
    yield f"  time       {summary['virtual_ms']} ms virtual, {summary['wall_ms']} ms wall"
    yield f"  history    {summary['history_digest']}"
    for v in summary["violations"]:
        yield f"  VIOLATION  {v['invariant']}: {v['detail']}"
