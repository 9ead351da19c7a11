"""What a space-time diagram shows, derived from a run's events (no drawing here).

A `Diagram` holds the lanes (one per actor), the dots (every event on a lane but the message
trace), the deliveries (a traced send matched with each of its receives by message id) and the
shaded intervals (crash to restart, pause to resume, partition to heal, scripted faults).
Events of the simulator (`sim`) and of the real-backend runner (`runner`) get no lane: they
become shading, or notes on the messages they concern (`drop`, `duplicate`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import attrs

from dtq.history import TRACE_KINDS, Event

SYSTEM_ACTORS = frozenset({"sim", "runner"})
"""Actors whose events describe the environment, not a node: no lane of their own."""

MESSAGE_NOTES = frozenset({"drop", "duplicate"})
"""Simulator events about one message (`data.msg`): shown on that message's arrows."""


@attrs.frozen(kw_only=True)
class Delivery:
    """One arrow: a send and one of its receives. `recv` is None when nothing received it
    (dropped for good or still in flight); `send` is None when the send was not traced."""

    msg: str
    kind: str
    to: str
    send: Event | None
    recv: Event | None
    dropped: int = 0
    duplicated: int = 0
    copy: int = 1
    copies: int = 1

    @property
    def sender(self) -> str:
        if self.send is not None:
            return self.send.actor
        return str(self.recv.data.get("from", "?")) if self.recv is not None else "?"


@attrs.frozen(kw_only=True)
class Shade:
    """A shaded interval over some lanes. `kind` is `down`, `frozen`, `partition` or `fault`
    (a scripted fault: `action` says which). Empty `actors` means every lane. `start_seq` and
    `end_seq` name the events that bound it, so the drawing can align with their dots."""

    kind: str
    action: str
    actors: tuple[str, ...]
    start_ms: int
    end_ms: int
    label: str
    start_seq: int | None = None
    end_seq: int | None = None
    open_ended: bool = False


@attrs.frozen(kw_only=True)
class Diagram:
    lanes: tuple[str, ...]
    dots: tuple[Event, ...]
    deliveries: tuple[Delivery, ...]
    shades: tuple[Shade, ...]
    notes: tuple[Event, ...]
    """Environment events that are neither shading nor message notes (for example the
    runner's `connections_closed`): drawn as marks on the time axis."""
    end_ms: int


def build(events: Sequence[Event], end_ms: int) -> Diagram:
    """The diagram of a run whose events end no earlier than `end_ms`."""
    lanes = order_lanes(e.actor for e in events if e.actor not in SYSTEM_ACTORS)
    end_ms = max([end_ms, *(e.time_ms for e in events)])
    dots = tuple(e for e in events if e.actor not in SYSTEM_ACTORS and e.kind not in TRACE_KINDS)
    shading = (*lane_shades(events, end_ms), *partition_shades(events, lanes, end_ms),
               *fault_shades(events, lanes))
    notes = tuple(e for e in events if e.actor in SYSTEM_ACTORS
                  and e.kind not in MESSAGE_NOTES | {"fault", "partition", "heal"})
    return Diagram(lanes=lanes, dots=dots, deliveries=tuple(deliveries(events)),
                   shades=shading, notes=notes, end_ms=end_ms)


# --- lanes -------------------------------------------------------------------------------------


def _natural(name: str) -> tuple[object, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _role_rank(name: str) -> int:
    if name.startswith("coordinator"):
        return 1
    if name.startswith("worker"):
        return 2
    return 0  # clients first: the story starts with a submission


def order_lanes(actors: Iterable[str]) -> tuple[str, ...]:
    """Clients, then coordinators, then workers; `worker-2` before `worker-10`."""
    return tuple(sorted(set(actors), key=lambda a: (_role_rank(a), _natural(a))))


# --- messages ----------------------------------------------------------------------------------


def deliveries(events: Sequence[Event]) -> list[Delivery]:
    """Every traced send matched with its receives by message id, in the order of the run."""
    sends = {e.data["msg"]: e for e in events if e.kind == "send" and "msg" in e.data}
    recvs: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        if e.kind == "recv" and "msg" in e.data:
            recvs[e.data["msg"]].append(e)
    notes = _message_notes(events)
    out = []
    for msg in _message_order(events):
        out.extend(_arrows(msg, sends.get(msg), recvs.get(msg, []), notes[msg]))
    return out


def _message_order(events: Iterable[Event]) -> list[str]:
    seen: dict[str, None] = {}
    for e in events:
        if e.kind in TRACE_KINDS and "msg" in e.data:
            seen.setdefault(e.data["msg"], None)
    return list(seen)


def _message_notes(events: Iterable[Event]) -> defaultdict[str, dict[str, int]]:
    notes: defaultdict[str, dict[str, int]] = defaultdict(dict)
    for e in events:
        if e.actor in SYSTEM_ACTORS and e.kind in MESSAGE_NOTES and "msg" in e.data:
            counts = notes[e.data["msg"]]
            counts[e.kind] = counts.get(e.kind, 0) + 1
    return notes


def _arrows(
    msg: str, send: Event | None, recvs: list[Event], notes: Mapping[str, int],
) -> list[Delivery]:
    kind = str((send or recvs[0]).data.get("kind", "?"))
    to = str(send.data.get("to", "?")) if send is not None else recvs[0].actor

    def arrow(recv: Event | None, copy: int) -> Delivery:
        return Delivery(msg=msg, kind=kind, to=to, send=send, recv=recv,
                        dropped=notes.get("drop", 0), duplicated=notes.get("duplicate", 0),
                        copy=copy, copies=max(len(recvs), 1))

    if not recvs:
        return [arrow(None, 1)]
    return [arrow(r, i) for i, r in enumerate(recvs, 1)]


# --- shading -----------------------------------------------------------------------------------


def lane_shades(events: Sequence[Event], end_ms: int) -> list[Shade]:
    """`down` from each crash to the restart, `frozen` from each pause to the resume.

    Without a closing event (the real-backend runner records none), the interval ends where the
    scripted fault said it would, else at the actor's next event, else at the end of the run."""
    out = []
    for i, e in enumerate(events):
        if e.kind in ("crash", "pause") and e.actor not in SYSTEM_ACTORS:
            out.append(_lane_shade(events, i, end_ms))
    return out


def _lane_shade(events: Sequence[Event], i: int, end_ms: int) -> Shade:
    start = events[i]
    kind, closer = ("down", "restart") if start.kind == "crash" else ("frozen", "resume")
    later = [e for e in events[i + 1:] if e.actor == start.actor]
    close = next((e for e in later if e.kind == closer), None)
    fault = _scripted(events[:i + 1], start.actor)
    planned = fault.time_ms + int(fault.data["duration_ms"]) if fault is not None else None
    if close is None and planned is None and later:
        close = later[0]
    stop = close.time_ms if close is not None else planned if planned is not None else end_ms
    what = "down (crashed)" if kind == "down" else "frozen (paused)"
    return Shade(kind=kind, action=start.kind, actors=(start.actor,), start_ms=start.time_ms,
                 end_ms=max(stop, start.time_ms), label=f"{start.actor} {what}",
                 start_seq=start.seq, end_seq=close.seq if close is not None else None,
                 open_ended=close is None and planned is None)


def _scripted(before: Sequence[Event], actor: str) -> Event | None:
    """The latest scripted fault with a duration that targeted `actor`."""
    for e in reversed(before):
        if e.kind == "fault" and e.actor in SYSTEM_ACTORS and actor in e.data.get("targets", ()):
            return e if e.data.get("duration_ms") else None
    return None


def lanes_of(members: Iterable[str], lanes: Sequence[str]) -> list[str]:
    """The lanes a partition side names: actors, or the groups `workers` and `coordinators`."""
    out = []
    for m in members:
        if m in lanes:
            out.append(m)
        elif m in ("workers", "coordinators"):
            out.extend(a for a in lanes if a.startswith(m[:-1]))
    return out


def partition_shades(events: Sequence[Event], lanes: Sequence[str], end_ms: int) -> list[Shade]:
    """One shade per simulator partition, over the lanes on either side, until the heal."""
    out = []
    for i, e in enumerate(events):
        if e.actor not in SYSTEM_ACTORS or e.kind != "partition":
            continue
        heal = next((h for h in events[i + 1:] if h.kind == "heal"), None)
        a, b = list(e.data.get("a", ())), list(e.data.get("b", ()))
        covered = tuple(dict.fromkeys(lanes_of(a + b, lanes)))
        label = f"partition: {', '.join(a)} | {', '.join(b)}"
        out.append(Shade(kind="partition", action="partition", actors=covered,
                         start_ms=e.time_ms, end_ms=heal.time_ms if heal else end_ms,
                         label=label, open_ended=heal is None))
    return out


def fault_shades(events: Sequence[Event], lanes: Sequence[str]) -> list[Shade]:
    """Each scripted fault over its target lanes (every lane when it has none) for its
    duration; a fault without a duration is an instant."""
    out = []
    for e in events:
        if e.actor not in SYSTEM_ACTORS or e.kind != "fault":
            continue
        action = str(e.data.get("action", "fault"))
        targets = [str(t) for t in e.data.get("targets", ())]
        duration = int(e.data.get("duration_ms") or 0)
        label = " ".join([action, *targets]) + (f" for {duration} ms" if duration else "")
        out.append(Shade(kind="fault", action=action, actors=tuple(lanes_of(targets, lanes)),
                         start_ms=e.time_ms, end_ms=e.time_ms + duration, label=label))
    return out
