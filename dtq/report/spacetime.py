"""The HTML space-time report of a run: one self-contained file, readable in any browser.

`render_report` turns a scenario and its `RunResult` into a page with a space-time (Lamport)
diagram: a lane per actor, an arrow per message delivery, a dot per event (vector clock and
data on hover and click), shading for crashes, pauses, partitions and scripted faults, and the
run's summary above it. `write_report` saves it. The page has inline CSS, inline SVG and a
little inline script, and refers to nothing outside itself.

The pieces live beside it in `dtq.report`: `model` (what to show), `layout` (where), `svg` (the
drawing), `page` (the HTML around it) and `assets` (CSS and script).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

from dtq.history import Event
from dtq.report.assets import CSS, JS
from dtq.report.layout import TimeScale
from dtq.report.model import Delivery, Diagram, build
from dtq.report.page import (
    HINT,
    fault_table,
    header,
    how_to_read,
    legend,
    script_json,
    summary_json,
    toolbar,
)
from dtq.report.svg import SvgWriter, event_json, labels_svg
from dtq.scenario.model import Scenario
from dtq.scenario.sim import RunResult

__all__ = ["MAX_ARROWS", "MAX_DOTS", "render_report", "write_report"]

MAX_ARROWS = 6000
"""Message arrows drawn at most (the first ones of the run); the page says when it stopped."""
MAX_DOTS = 12000
LABEL_W = 150


def render_report(scenario: Scenario, result: RunResult) -> str:
    """The report as one HTML document."""
    summary = result.summary
    transport = str(summary.get("transport", "memory"))
    events = result.events
    origin = _origin(events, transport)
    end = origin + int(summary.get("virtual_ms") or 0) if transport == "memory" else origin
    full = build(events, end)
    diagram = _capped(full)
    scale = TimeScale(events, diagram.lanes, origin, diagram.end_ms)
    drawn = diagram.deliveries
    svg = SvgWriter(diagram, scale, drawn).svg()
    time_name = "virtual ms" if transport == "memory" else "wall ms since start"
    body = [
        header(scenario, summary),
        toolbar(_notes(full, diagram, events)),
        legend(diagram, drawn),
        '<div id="main"><div id="labels-col">', labels_svg(diagram.lanes, time_name, LABEL_W),
        f'</div><div id="scroller">{svg}</div>',
        f'<aside id="panel"><div id="panel-body">{HINT}</div></aside></div>',
        how_to_read(time_name),
        f'<section class="text">{fault_table(scenario)}{summary_json(summary)}</section>',
        _data(events, drawn, origin),
        f"<script>{JS}</script>",
    ]
    title = f"dtq · {scenario.name} · space-time report"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(path: str | Path, scenario: Scenario, result: RunResult) -> None:
    """Write the report of `result` to `path` (UTF-8)."""
    Path(path).write_text(render_report(scenario, result), encoding="utf-8")


def _origin(events: Sequence[Event], transport: str) -> int:
    """Time zero: the simulator starts at 0; a real run at its first event (wall clock)."""
    if transport == "memory" or not events:
        return 0
    return min(e.time_ms for e in events)


def _capped(d: Diagram) -> Diagram:
    if len(d.deliveries) <= MAX_ARROWS and len(d.dots) <= MAX_DOTS:
        return d
    return Diagram(lanes=d.lanes, dots=d.dots[:MAX_DOTS], deliveries=d.deliveries[:MAX_ARROWS],
                   shades=d.shades, notes=d.notes, end_ms=d.end_ms)


def _notes(full: Diagram, shown: Diagram, events: Sequence[Event]) -> list[str]:
    notes = []
    if len(shown.deliveries) < len(full.deliveries):
        notes.append(f"drew the first {len(shown.deliveries)} of {len(full.deliveries)} "
                     "message arrows")
    if len(shown.dots) < len(full.dots):
        notes.append(f"drew the first {len(shown.dots)} of {len(full.dots)} events")
    if not any(e.kind == "send" for e in events):
        notes.append("no message trace in this run, so no arrows (the memory backend traces "
                     "messages when asked for a report)")
    return notes


def _data(events: Sequence[Event], drawn: Sequence[Delivery], origin: int) -> str:
    """Clocks and data of every drawn event, send and receive, for the page's script."""
    wanted = {e.seq for e in events if e.kind not in ("send", "recv")}
    for m in drawn:
        wanted.update(e.seq for e in (m.send, m.recv) if e is not None)
    payload = {"events": {e.seq: event_json(e, origin) for e in events if e.seq in wanted},
               "hint": HINT}
    return f'<script type="application/json" id="dtq-data">{script_json(payload)}</script>'
