"""Where things go on a space-time diagram: the time scale and the lane geometry.

Time runs left to right, but not linearly. A simulated run does many things in one virtual
millisecond (a coordinator accepts and dispatches a dozen tasks at t=1), so every instant at
which events happen gets a *slot* wide enough to put its events side by side, in the order
they happened (a receive always lands to the right of its send). Between slots, time is drawn
to scale: a quiet second is a fixed number of pixels. The axis ticks follow this scale.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence

from dtq.history import TRACE_KINDS, Event

PAD_X = 24
"""Blank pixels at either end of the time axis."""
TOP = 52
"""Height of the band above the first lane: fault labels, then tick labels."""
LANE_H = 64
BOTTOM = 12
DOT_W = 12
"""Room for one event dot inside a slot."""
TRACE_W = 5
"""Room for one send or receive (drawn as an arrow end, not a dot)."""
MIN_GAP = 8
"""Pixels between two consecutive slots, however close in time."""
TIME_SHARE = 0.8
"""Pixels given to elapsed time, as a share of the pixels the slots take (within bounds)."""
TIME_PX_MIN, TIME_PX_MAX = 600, 8000


def width_of(event: Event) -> int:
    return TRACE_W if event.kind in TRACE_KINDS else DOT_W


class TimeScale:
    """Maps event sequence numbers and times (ms) to x pixels at zoom 1."""

    def __init__(self, events: Sequence[Event], lanes: Sequence[str], origin_ms: int,
                 end_ms: int) -> None:
        self.origin_ms = origin_ms
        actors = set(lanes)
        on_lanes = [e for e in events if e.actor in actors]
        self._offset, widths = _slot_offsets(on_lanes)
        self._time = {e.seq: e.time_ms for e in on_lanes}
        self._kind = {e.seq: e.kind for e in on_lanes}
        times = sorted({origin_ms, end_ms, *widths})
        span = max(1, times[-1] - times[0])
        time_px = min(TIME_PX_MAX, max(TIME_PX_MIN, TIME_SHARE * sum(widths.values())))
        self.px_per_ms = time_px / span
        self._times = times
        self._index = {t: i for i, t in enumerate(times)}
        self._starts = _slot_starts(times, widths, self.px_per_ms)
        self._widths = [widths.get(t, 0) for t in times]
        self.width = self.x_at(times[-1]) + PAD_X

    def x_of(self, seq: int) -> float:
        """The centre of an event's place in its slot."""
        t = self._time[seq]
        i = self._index.get(t)
        start = self._starts[i] if i is not None else self.x_at(t)
        half = (TRACE_W if self._kind[seq] in TRACE_KINDS else DOT_W) / 2
        return start + self._offset[seq] + half

    def x_at(self, t: int | float) -> float:
        """The left edge of the slot at `t`, or a point between two slots, to scale."""
        times, starts = self._times, self._starts
        i = bisect.bisect_right(times, t) - 1
        if i < 0:
            return starts[0] - (times[0] - t) * self.px_per_ms
        end = starts[i] + self._widths[i]
        if times[i] == t:
            return starts[i]
        if i + 1 == len(times):
            return end + (t - times[i]) * self.px_per_ms
        share = (t - times[i]) / (times[i + 1] - times[i])
        return end + share * (starts[i + 1] - end)

    def has(self, seq: int) -> bool:
        return seq in self._offset


def _slot_offsets(events: Iterable[Event]) -> tuple[dict[int, int], dict[int, int]]:
    """Each event's offset in its slot, and each slot's width.

    Events of one lane sit side by side in the order they happened; a receive in the same slot
    as its send goes to the send's right, so arrows never point back in time."""
    cursor: dict[tuple[str, int], int] = {}
    sent: dict[str, tuple[int, int]] = {}
    offset: dict[int, int] = {}
    widths: dict[int, int] = {}
    for e in events:
        key = (e.actor, e.time_ms)
        start = cursor.get(key, 0)
        if e.kind == "recv" and e.data.get("msg") in sent:
            t, x = sent[e.data["msg"]]
            start = max(start, x + TRACE_W) if t == e.time_ms else start
        elif e.kind == "send":
            sent[str(e.data.get("msg"))] = (e.time_ms, start)
        offset[e.seq] = start
        cursor[key] = start + width_of(e)
        widths[e.time_ms] = max(widths.get(e.time_ms, 0), cursor[key])
    return offset, widths


def _slot_starts(times: Sequence[int], widths: dict[int, int], px_per_ms: float) -> list[float]:
    starts = [float(PAD_X)]
    for prev, t in itertools.pairwise(times):
        gap = MIN_GAP + (t - prev) * px_per_ms
        starts.append(starts[-1] + widths.get(prev, 0) + gap)
    return starts


def lane_y(index: int) -> float:
    """The y of a lane's centre line."""
    return TOP + index * LANE_H + LANE_H / 2


def height(lanes: int) -> int:
    return TOP + lanes * LANE_H + BOTTOM


# --- ticks -------------------------------------------------------------------------------------

NICE = (1, 2, 5)
TICK_GAP_PX = 72
"""Minimum pixels between two labelled ticks."""


def nice_steps(span_ms: int, most: int = 1500) -> list[int]:
    """Tick steps from the finest that gives at most `most` ticks up to one above the span."""
    steps: list[int] = []
    scale = 1
    while not steps or steps[-1] <= span_ms:
        steps.extend(n * scale for n in NICE)
        scale *= 10
    return [s for s in steps if span_ms / s <= most]


def ticks(origin_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """(time since origin, priority) for every candidate tick; coarser steps rank higher."""
    span = max(1, end_ms - origin_ms)
    steps = nice_steps(span)
    out = []
    for t in range(0, span + 1, steps[0]):
        rank = max(i for i, s in enumerate(steps) if t % s == 0)
        out.append((t, rank if t else len(steps)))
    return out


def visible_ticks(xs: Sequence[tuple[float, int]], gap: float = TICK_GAP_PX) -> set[int]:
    """Indices of the ticks to label at this zoom: coarsest first, none closer than `gap`.

    (The page's script does the same at every zoom; this is the static first view.)"""
    order = sorted(range(len(xs)), key=lambda i: (-xs[i][1], xs[i][0]))
    chosen: list[float] = []
    shown = set()
    for i in order:
        x = xs[i][0]
        j = bisect.bisect_left(chosen, x)
        if (j == 0 or x - chosen[j - 1] >= gap) and (j == len(chosen) or chosen[j] - x >= gap):
            chosen.insert(j, x)
            shown.add(i)
    return shown
