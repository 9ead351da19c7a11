"""The HTML around the diagram: header and summary, toolbar, legend, side panel, notes.

Every piece is a function from plain data to an escaped HTML string; nothing here refers to
anything outside the page (no links, no fonts, no scripts from the network).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from html import escape
from typing import Any

from dtq.report.model import Delivery, Diagram
from dtq.report.svg import (
    EVENT_COLOURS,
    MESSAGE_COLOURS,
    arrow_classes,
    attrs_of,
    colour,
)
from dtq.scenario.model import Scenario

HINT = ("<p>Click a dot or an arrow to see its vector clock and data; what happened before "
        "it turns blue, what happened after it orange, and what is concurrent with it fades."
        "</p><p>Drag to pan, Ctrl + wheel (or the slider, or + and &minus;) to zoom, 0 to fit.</p>")


def header(scenario: Scenario, summary: Mapping[str, Any]) -> str:
    ok = bool(summary.get("ok"))
    verdict = f'<span class="verdict {"ok" if ok else "failed"}">{"OK" if ok else "FAILED"}</span>'
    title = (f'<div class="title"><h1>{escape(scenario.name)}</h1>{verdict}'
             f'<span class="desc">{escape(scenario.description)}</span></div>')
    return (f'<header id="summary">{title}<div class="facts">{"".join(facts(summary))}</div>'
            f"{violations(summary.get('violations') or [])}</header>")


def fact(name: str, value: object, bad: bool = False) -> str:
    cls = ' class="bad"' if bad else ""
    return f"<span{cls}><b>{escape(name)}</b>{escape(str(value))}</span>"


def facts(s: Mapping[str, Any]) -> Iterator[str]:
    yield fact("transport", s.get("transport", "?"))
    yield fact("seed", s.get("seed", "?"))
    tasks = s.get("tasks") or {}
    for key in ("submitted", "succeeded", "failed", "cancelled"):
        if key in tasks:
            yield fact(key, tasks[key])
    for key in ("lost", "duplicated", "unexpected"):
        if key in tasks:
            yield fact(key, tasks[key], bad=bool(tasks[key]))
    leaders = ", ".join(f"{x.get('actor')} (epoch {x.get('epoch')})"
                        for x in s.get("leaders") or [])
    yield fact("leaders", leaders or "none")
    for key in ("failover_ms", "reassign_ms"):
        if s.get(key):
            yield fact(key, ", ".join(str(v) for v in s[key]))
    if "virtual_ms" in s:
        yield fact("virtual", f"{s['virtual_ms']} ms")
    if "wall_ms" in s:
        yield fact("wall", f"{s['wall_ms']} ms")
    yield f'<span class="mono"><b>digest</b>{escape(str(s.get("history_digest", "")))}</span>'


def violations(items: Sequence[Mapping[str, Any]]) -> str:
    if not items:
        return ""
    rows = "".join(f"<li>{escape(str(v.get('invariant', '?')))}: "
                   f"{escape(str(v.get('detail', '')))}</li>" for v in items)
    return f'<ul class="violations" id="violations">{rows}</ul>'


def toolbar(notes: Iterable[str]) -> str:
    cap = "".join(f'<span class="cap">{escape(n)}</span>' for n in notes)
    return ('<div id="toolbar"><span>zoom</span>'
            '<button id="zoom-out" title="zoom out (-)">&minus;</button>'
            '<input id="zoom" type="range" min="-10" max="4" step="0.05" value="0" '
            'aria-label="zoom">'
            '<button id="zoom-in" title="zoom in (+)">+</button>'
            '<span id="zoom-label">100%</span>'
            '<button id="zoom-fit" title="fit the whole run (0)">fit</button>'
            '<button id="zoom-one" title="100%">1:1</button>'
            '<span class="hint">drag to pan · Ctrl + wheel to zoom · click a dot or arrow</span>'
            f"{cap}</div>")


def chip(selector: str, swatch: str, name: str, count: int | None = None) -> str:
    small = f" <small>{count}</small>" if count is not None else ""
    return (f'<span class="chip"{attrs_of(data_toggle=selector)}>{swatch}'
            f"{escape(name)}{small}</span>")


def legend(d: Diagram, drawn: Sequence[Delivery]) -> str:
    kinds = Counter(e.kind for e in d.dots)
    parts = ['<span class="group">events</span>']
    for kind, n in sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])):
        sw = f'<i class="sw" style="background:{colour(kind, EVENT_COLOURS)}"></i>'
        parts.append(chip(f'.event[data-kind="{kind}"]', sw, kind, n))
    msgs = Counter(m.kind for m in drawn)
    if msgs:
        parts.append('<span class="group">messages</span>')
    for kind, n in sorted(msgs.items(), key=lambda kv: (-kv[1], kv[0])):
        sw = f'<i class="sw line" style="background:{colour(kind, MESSAGE_COLOURS)}"></i>'
        parts.append(chip(f'.msg[data-kind="{kind}"]', sw, kind, n))
    parts.extend(message_chips(drawn))
    parts.extend(shade_chips(d))
    return f'<div id="legend">{"".join(parts)}</div>'


MESSAGE_STYLES = (
    ("undelivered", "never received", "border-top:3px dashed #dc2626"),
    ("again", "delivered again", "border-top:3px dashed #475569"),
    ("dropped", "dropped, sent again", "border-top:3px dotted #475569"),
)


def message_chips(drawn: Sequence[Delivery]) -> Iterator[str]:
    """Chips for the arrows that tell of trouble: lost, duplicated or retransmitted."""
    for cls, name, style in MESSAGE_STYLES:
        n = sum(1 for m in drawn if cls in arrow_classes(m))
        if n:
            yield chip(f".msg.{cls}", f'<i class="sw line" style="{style};height:0"></i>',
                       name, n)


SHADE_SWATCHES = {
    "down": ("down (crash → restart)", "repeating-linear-gradient(45deg,#9ca3af 0 3px,"
             "#e5e7eb 3px 6px)"),
    "frozen": ("frozen (pause → resume)", "repeating-linear-gradient(-45deg,#7dd3fc 0 3px,"
               "#e0f2fe 3px 6px)"),
    "partition": ("partitioned", "repeating-linear-gradient(90deg,#fcd34d 0 3px,"
                  "#fef3c7 3px 6px)"),
    "scripted": ("scripted fault", "rgba(220,38,38,.12)"),
}


def shade_chips(d: Diagram) -> Iterator[str]:
    present = Counter("scripted" if s.kind == "fault" else s.kind for s in d.shades)
    if present:
        yield '<span class="group">shading</span>'
    for cls, (name, background) in SHADE_SWATCHES.items():
        if present[cls]:
            sw = f'<i class="sw box" style="background:{background}"></i>'
            yield chip(f"rect.fault.{cls}", sw, name, present[cls])


def how_to_read(time_name: str) -> str:
    return f"""<section class="text" id="how-to-read"><h2>How to read this</h2><ul>
<li><b>Lanes</b>: one horizontal line per actor (clients, coordinators, workers). Time
({escape(time_name)}) runs left to right. Instants at which many things happen are widened so
their events sit side by side in the order they happened; between them, time is to scale, and
the axis labels give the real times.</li>
<li><b>Arrows</b>: a message, from the moment it was sent to the moment it was received. A
message sent to a queue (<code>coordinator</code>, <code>work</code>) ends at the actor that
took it. A message delivered twice (a duplicate, or a redelivery after a crash) has two
arrows, the later one dash-dotted; a dashed stub ending in a red cross was never received.</li>
<li><b>Dots</b>: events, coloured by kind (legend above; click a legend entry to hide or show
it). Hover for the event's vector clock and data; click for the side panel.</li>
<li><b>Shading</b>: grey hatching while an actor is down (crash to restart), blue while frozen
(pause to resume), yellow while partitioned; a dashed red band with a label marks each fault
of the scenario's timeline.</li>
<li><b>Happened before</b>: event A happened before event B when a path leads from A to B
moving right along lanes and along arrows; then A's vector clock is below B's. Events with no
such path either way are <i>concurrent</i>, whatever their x position suggests. Clicking an
event colours its causal past blue and its causal future orange.</li></ul></section>"""


def fault_table(scenario: Scenario) -> str:
    if not scenario.faults:
        return ""
    rows = "".join(
        f"<tr><td>{f.at_ms} ms</td><td>{escape(f.action)}</td><td>{escape(f.target or '')}"
        f"</td><td>{'' if f.duration_ms is None else f'{f.duration_ms} ms'}</td></tr>"
        for f in scenario.faults)
    return ('<h2>Fault timeline</h2><table class="faults"><tr><th>at</th><th>action</th>'
            f"<th>target</th><th>duration</th></tr>{rows}</table>")


def summary_json(summary: Mapping[str, Any]) -> str:
    text = json.dumps(summary, indent=2, default=str)
    return (f'<details id="summary-json"><summary>Summary (JSON)</summary>'
            f"<pre>{escape(text)}</pre></details>")


def script_json(value: object) -> str:
    """JSON safe inside a <script> element."""
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
