"""The inline SVG of a space-time diagram: lanes, time axis, shading, arrows and dots.

Pure string building from a `Diagram` and a `TimeScale`. Every element the page's script
moves when zooming carries its x in `x`, `x1`/`x2`, `cx` or `width`, at zoom 1; everything
else is styled by the page's CSS through the stable classes and `data-*` attributes below.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from html import escape
from typing import Any

from dtq.history import Event
from dtq.report.layout import (
    BOTTOM,
    LANE_H,
    PAD_X,
    TOP,
    TimeScale,
    height,
    lane_y,
    ticks,
    visible_ticks,
)
from dtq.report.model import Delivery, Diagram, Shade

EVENT_COLOURS = {
    "submit": "#64748b", "accepted": "#0ea5e9", "dispatched": "#2563eb", "started": "#0d9488",
    "effect": "#84cc16", "succeeded": "#16a34a", "failed": "#dc2626", "rejected": "#b91c1c",
    "cancelled": "#9ca3af", "duplicate_refused": "#f97316", "already_done": "#fdba74",
    "causality_violation": "#db2777", "stale_write_refused": "#ea580c",
    "stale_dispatch_refused": "#c2410c", "late_result_ignored": "#f59e0b",
    "late_result_refused": "#d97706", "leader": "#7c3aed", "abdicated": "#a78bfa",
    "crash": "#111827", "restart": "#6b7280", "pause": "#0891b2", "resume": "#22d3ee",
    "worker_started": "#a8a29e", "coordinator_started": "#a8a29e",
    "connection_closed": "#78716c", "retry_scheduled": "#eab308", "attempt_failed": "#ef4444",
    "dead_lettered": "#7f1d1d", "unexpected_completion": "#be123c",
}
MESSAGE_COLOURS = {
    "Submit": "#64748b", "Dispatch": "#2563eb", "Started": "#0d9488", "Completed": "#16a34a",
    "Finished": "#15803d", "Cancel": "#dc2626", "Heartbeat": "#c4b5fd",
}
FALLBACK = ("#0f766e", "#9333ea", "#ca8a04", "#4d7c0f", "#be185d", "#1d4ed8", "#b45309",
            "#475569")
ALARMS = frozenset({"failed", "rejected", "causality_violation", "stale_write_refused",
                    "stale_dispatch_refused", "duplicate_refused", "dead_lettered",
                    "unexpected_completion", "crash"})
"""Event kinds drawn larger, with a dark ring: what a reader hunting a bug looks for."""

SHADE_FILLS = {"down": "url(#hatch-down)", "frozen": "url(#hatch-frozen)",
               "partition": "url(#hatch-partition)"}
STUB_PX = 40
"""Length of an undelivered message's stub (and of an untraced send's lead-in)."""


def colour(kind: str, table: Mapping[str, str]) -> str:
    if kind in table:
        return table[kind]
    return FALLBACK[zlib.crc32(kind.encode()) % len(FALLBACK)]


def f1(x: float) -> str:
    return f"{x:.1f}"


def attrs_of(**values: object) -> str:
    """` key="value"` pairs, escaped; `data_x` becomes `data-x`; None is left out."""
    return "".join(f' {k.rstrip("_").replace("_", "-")}="{escape(str(v))}"'
                   for k, v in values.items() if v is not None)


class SvgWriter:
    """Renders one diagram at zoom 1."""

    def __init__(self, diagram: Diagram, scale: TimeScale, messages: Sequence[Delivery]) -> None:
        self.d = diagram
        self.scale = scale
        self.messages = messages
        self.row = {a: i for i, a in enumerate(diagram.lanes)}
        self.height = height(len(diagram.lanes))
        self.markers = {k: f"arrow-{i}" for i, k in enumerate(sorted({m.kind for m in messages}))}

    def ms(self, t: int) -> int:
        return t - self.scale.origin_ms

    def svg(self) -> str:
        w = f1(self.scale.width)
        head = (f'<svg id="spacetime"{attrs_of(width=w, height=self.height, data_width=w)}'
                ' role="img" aria-label="space-time diagram">')
        parts = [head, self.defs(), *self.lanes(), '<g id="ticks">', *self.ticks(), "</g>",
                 '<g id="faults">', *self.shades(), "</g>", '<g id="notes">', *self.notes(),
                 "</g>", '<g id="messages">', *self.arrows(), "</g>", '<g id="events">',
                 *self.dots(), "</g>", '<g id="fault-labels">', *self.shade_labels(), "</g>",
                 "</svg>"]
        return "\n".join(parts)

    # --- furniture ---------------------------------------------------------------------------

    def defs(self) -> str:
        markers = "".join(
            f'<marker id="{mid}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            f'markerHeight="7" markerUnits="userSpaceOnUse" orient="auto-start-reverse">'
            f'<path d="M0,1 L10,5 L0,9 z" fill="{colour(kind, MESSAGE_COLOURS)}"/></marker>'
            for kind, mid in self.markers.items())
        hatches = "".join(
            f'<pattern id="hatch-{name}" width="8" height="8" patternUnits="userSpaceOnUse" '
            f'patternTransform="rotate({angle})"><rect width="8" height="8" fill="{bg}"/>'
            f'<line x1="0" y1="0" x2="0" y2="8" stroke="{fg}" stroke-width="3"/></pattern>'
            for name, angle, bg, fg in (("down", 45, "#e5e7eb", "#9ca3af"),
                                        ("frozen", -45, "#e0f2fe", "#7dd3fc"),
                                        ("partition", 90, "#fef3c7", "#fcd34d")))
        return f"<defs>{markers}{hatches}</defs>"

    def lanes(self) -> Iterator[str]:
        right = f1(self.scale.width - PAD_X / 2)
        for i, actor in enumerate(self.d.lanes):
            y = lane_y(i)
            stripe = "odd" if i % 2 else "even"
            yield (f'<g class="lane {stripe}"{attrs_of(data_actor=actor)}>'
                   f'<rect class="lane-bg" x="0" y="{f1(y - LANE_H / 2)}" '
                   f'width="{f1(self.scale.width)}" height="{LANE_H}"/>'
                   f'<line class="lane-line" x1="{PAD_X / 2}" x2="{right}" y1="{f1(y)}" '
                   f'y2="{f1(y)}"/><title>{escape(actor)}</title></g>')

    def ticks(self) -> Iterator[str]:
        origin = self.scale.origin_ms
        cands = ticks(origin, self.d.end_ms)
        xs = [(self.scale.x_at(origin + t), p) for t, p in cands]
        shown = visible_ticks(xs)
        bottom = self.height - BOTTOM
        for i, ((t, p), (x, _)) in enumerate(zip(cands, xs, strict=True)):
            on = " on" if i in shown else ""
            yield (f'<g class="tick{on}" data-p="{p}" data-t="{t}">'
                   f'<line x1="{f1(x)}" x2="{f1(x)}" y1="{TOP - 10}" y2="{bottom}"/>'
                   f'<text x="{f1(x)}" y="{TOP - 14}">{t}</text></g>')

    # --- shading -----------------------------------------------------------------------------

    def span(self, s: Shade) -> tuple[float, float]:
        sc = self.scale
        x0 = sc.x_of(s.start_seq) if s.start_seq is not None and sc.has(s.start_seq) \
            else sc.x_at(s.start_ms)
        if s.open_ended:
            return x0, sc.width - PAD_X / 2
        x1 = sc.x_of(s.end_seq) if s.end_seq is not None and sc.has(s.end_seq) \
            else sc.x_at(s.end_ms)
        return (x0, x1) if x1 - x0 >= 3 else (x0 - 1.5, x0 + 1.5)

    def rows_of(self, s: Shade) -> list[tuple[float, float]]:
        """(top, height) bands: one per covered lane, or the whole plot for every lane."""
        if not s.actors:
            return [(TOP, len(self.d.lanes) * LANE_H)]
        return [(lane_y(self.row[a]) - LANE_H / 2 + 3, LANE_H - 6) for a in s.actors]

    def shades(self) -> Iterator[str]:
        for s in sorted(self.d.shades, key=lambda s: s.kind != "fault"):
            x0, x1 = self.span(s)
            what = s.action if s.kind == "fault" else s.kind
            title = (f"{s.label}: from {self.ms(s.start_ms)} to {self.ms(s.end_ms)} ms"
                     + (" (until the end of the run)" if s.open_ended else ""))
            fill = SHADE_FILLS.get(s.kind)
            for top, h in self.rows_of(s):
                cls = "scripted" if s.kind == "fault" else s.kind
                yield (f'<rect class="fault {cls}"'
                       f'{attrs_of(data_fault=what, data_actor=",".join(s.actors) or None)}'
                       f' x="{f1(x0)}" y="{f1(top)}" width="{f1(x1 - x0)}" height="{f1(h)}"'
                       f'{attrs_of(fill=fill)}><title>{escape(title)}</title></rect>')

    def shade_labels(self) -> Iterator[str]:
        for s in self.d.shades:
            if s.kind == "fault":
                x0, _ = self.span(s)
                yield (f'<line class="fault-edge" x1="{f1(x0)}" x2="{f1(x0)}" y1="4" '
                       f'y2="{self.height - BOTTOM}"/>'
                       f'<text class="fault-label" x="{f1(x0 + 4)}" y="14">'
                       f"{escape(s.label)}</text>")

    def notes(self) -> Iterator[str]:
        for e in self.d.notes:
            x = f1(self.scale.x_at(e.time_ms))
            yield (f'<line class="note"{attrs_of(data_kind=e.kind)} x1="{x}" x2="{x}" '
                   f'y1="{TOP - 6}" y2="{self.height - BOTTOM}">'
                   f"<title>{escape(self.event_title(e))}</title></line>")

    # --- messages and events -----------------------------------------------------------------

    def arrows(self) -> Iterator[str]:
        for m in self.messages:
            yield self.arrow(m)

    def arrow(self, m: Delivery) -> str:
        cls = " ".join(arrow_classes(m))
        x1, y1, x2, y2 = self.ends(m)
        tail = "" if m.recv else lost_mark(x2, y2)
        marker = f' marker-end="url(#{self.markers[m.kind]})"' if m.recv else ""
        return (f'<g{attrs_of(class_=cls, data_msg=m.msg, data_kind=m.kind)}'
                f'{attrs_of(data_send=m.send.seq if m.send else None)}'
                f'{attrs_of(data_recv=m.recv.seq if m.recv else None)}>'
                f'<line x1="{f1(x1)}" y1="{f1(y1)}" x2="{f1(x2)}" y2="{f1(y2)}" '
                f'stroke="{colour(m.kind, MESSAGE_COLOURS)}"{marker}/>{tail}'
                f"<title>{escape(self.message_title(m))}</title></g>")

    def ends(self, m: Delivery) -> tuple[float, float, float, float]:
        sc = self.scale
        if m.send is not None and m.recv is not None:
            return (sc.x_of(m.send.seq), lane_y(self.row[m.send.actor]),
                    sc.x_of(m.recv.seq), lane_y(self.row[m.recv.actor]))
        if m.send is not None:
            x, y = sc.x_of(m.send.seq), lane_y(self.row[m.send.actor])
            return x, y, x + STUB_PX, (y + lane_y(self._target_row(m))) / 2
        assert m.recv is not None
        x, y = sc.x_of(m.recv.seq), lane_y(self.row[m.recv.actor])
        from_row = self.row.get(m.sender, self.row[m.recv.actor])
        return x - STUB_PX, (y + lane_y(from_row)) / 2, x, y

    def _target_row(self, m: Delivery) -> int:
        """The lane an undelivered message was heading for (a queue names no lane)."""
        assert m.send is not None
        here = self.row[m.send.actor]
        group = {"work": "worker", "coordinator": "coordinator"}.get(m.to, m.to)
        lanes = [i for a, i in self.row.items() if a == m.to or a.startswith(group)]
        return lanes[0] if lanes and lanes[0] != here else here + (1 if here == 0 else -1)

    def message_title(self, m: Delivery) -> str:
        to = m.recv.actor if m.recv else "(nobody)"
        via = f" (sent to {m.to})" if m.to != to else ""
        lines = [f"{m.kind} {m.msg}: {m.sender} → {to}{via}"]
        sent = self.ms(m.send.time_ms) if m.send else None
        got = self.ms(m.recv.time_ms) if m.recv else None
        if sent is not None and got is not None:
            lines.append(f"sent at {sent} ms, received at {got} ms ({got - sent} ms later)")
        elif sent is not None:
            lines.append(f"sent at {sent} ms, never received (dropped, or still in flight)")
        else:
            lines.append(f"received at {got} ms; its send was not traced")
        if m.copies > 1:
            why = "the network duplicated it" if m.duplicated else "redelivered"
            lines.append(f"delivery {m.copy} of {m.copies} ({why})")
        if m.dropped:
            lines.append(f"dropped {m.dropped} time(s) in transit and sent again")
        return "\n".join(lines)

    def dots(self) -> Iterator[str]:
        for e in self.d.dots:
            alarm = e.kind in ALARMS
            r = 6 if alarm else 4.5
            cls = "event alarm" if alarm else "event"
            yield (f'<circle{attrs_of(class_=cls, data_kind=e.kind, data_seq=e.seq)}'
                   f'{attrs_of(data_actor=e.actor)} cx="{f1(self.scale.x_of(e.seq))}" '
                   f'cy="{f1(lane_y(self.row[e.actor]))}" r="{r}" '
                   f'fill="{colour(e.kind, EVENT_COLOURS)}">'
                   f"<title>{escape(self.event_title(e))}</title></circle>")

    def event_title(self, e: Event) -> str:
        lines = [f"{e.actor} · {e.kind} · {self.ms(e.time_ms)} ms (event #{e.seq})"]
        if len(e.clock):
            lines.append("clock " + clock_text(e.clock.entries))
        lines.extend(f"{k} = {json.dumps(v, default=str)}" for k, v in sorted(e.data.items()))
        return "\n".join(lines)


def arrow_classes(m: Delivery) -> list[str]:
    """`msg`, plus `undelivered` (no receive), `orphan` (no traced send), `again` (a second
    or later delivery of one send) and `dropped` (lost in transit once, then resent)."""
    flags = [(m.recv is None, "undelivered"), (m.send is None, "orphan"),
             (m.copy > 1, "again"), (m.dropped > 0, "dropped")]
    return ["msg", *(name for on, name in flags if on)]


def lost_mark(x: float, y: float) -> str:
    """A cross where an undelivered message's stub ends (two lines, so zooming moves it)."""
    return "".join(f'<line class="lost-x" x1="{f1(x - 4)}" y1="{f1(y + a)}" x2="{f1(x + 4)}" '
                   f'y2="{f1(y - a)}"/>' for a in (-4, 4))


def clock_text(entries: Iterable[tuple[str, int]]) -> str:
    return "{" + ", ".join(f"{a}:{c}" for a, c in entries) + "}"


def labels_svg(lanes: Sequence[str], axis_title: str, width: int) -> str:
    """The lane names, in an SVG of their own that stays put while the diagram scrolls."""
    h = height(len(lanes))
    rows = [f'<text class="axis-title" x="{width - 8}" y="{TOP - 14}">{escape(axis_title)}'
            "</text>"]
    for i, actor in enumerate(lanes):
        y = lane_y(i)
        rows.append(f'<text class="lane-label"{attrs_of(data_actor=actor)} x="{width - 8}" '
                    f'y="{f1(y + 4)}">{escape(actor)}</text>')
    return (f'<svg id="lane-labels" width="{width}" height="{h}" aria-hidden="true">'
            + "".join(rows) + "</svg>")


def event_json(e: Event, origin_ms: int) -> list[Any]:
    """The compact form the page's script reads: actor, kind, ms, clock, data."""
    return [e.actor, e.kind, e.time_ms - origin_ms, dict(e.clock.entries), dict(e.data)]
