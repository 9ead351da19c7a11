"""Poison: decoding what a node is delivered, and the malformed and forged messages of the
scenario fault `inject`.

The rule: bytes off a queue become an envelope through `decode_delivery`, on both backends; bytes
that do not decode are dead-lettered, with a `dead_lettered` record naming why, and change
nothing else. `forge` makes the bytes of each kind of injected message (`INJECT_KINDS`), the
same bytes on both backends: the simulator carries them as `WireBytes` and decodes them on
delivery through `decode_delivery`, the real runner publishes them to the namespace's queue.
Pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from dtq.clock import VectorClock
from dtq.envelope import (
    COORDINATOR_QUEUE,
    WORK_QUEUE,
    Cancel,
    Codec,
    Completed,
    Dispatch,
    Envelope,
    Heartbeat,
    Message,
    Submit,
)
from dtq.errors import DecodeError
from dtq.history import Event
from dtq.task import MAX_PAYLOAD_BYTES, TaskSpec

MAILBOX = "mailbox"
"""`queue = "mailbox"`: the mailbox of the fault's target node (or of each, for a group)."""
INTRUDER = "intruder"
"""The sender named in forged envelopes."""
FORGED_EPOCH = 10**15
"""The epoch of a forged dispatch: far above any leader's (a namespace's first epoch is the
store's clock in ms, about 1.8 x 10^12 in 2027)."""

INJECT_KINDS: Mapping[str, str] = {
    "undecodable": "bytes that are not JSON",
    "wrong_shape": "JSON that is not an envelope (an array)",
    "unknown_kind": "an envelope of a kind no actor knows",
    "missing_body": "a Submit envelope without its task",
    "submit_wrong_types": "a Submit whose task fields have the wrong JSON types",
    "submit_priority": "a well-formed Submit with priority 999",
    "submit_self_dependency": "a Submit of a task that depends on itself",
    "submit_unknown_dependency": "a Submit of a task that depends on one nobody submitted",
    "submit_huge_payload": f"a Submit whose payload is over the {MAX_PAYLOAD_BYTES}-byte cap",
    "dispatch_epoch": f"a forged Dispatch of a task nobody submitted, from epoch {FORGED_EPOCH}",
    "completed_unknown": "a Completed for a task nobody submitted",
    "completed_forged": "a Completed (success) for the workload's task `task`, from no worker",
    "failed_forged": "a Completed (a failure that is not to be retried) for the workload's task "
                     "`task`, from no worker",
    "heartbeat_unknown": "a Heartbeat from a worker that does not exist",
    "cancel_unknown": "a Cancel of a task nobody submitted",
}
"""What `inject` can send (`message = "..."`), and what each one is."""
QUEUES = (COORDINATOR_QUEUE, WORK_QUEUE, MAILBOX)
NAMES_A_TASK = frozenset({"completed_forged", "failed_forged"})
"""Kinds about a real task, named by the fault's `task`."""
DEFAULT_QUEUE = {"dispatch_epoch": WORK_QUEUE}
"""Where a kind goes without `queue`: a forged dispatch to the work queue, the rest to the
leader's queue."""


@attrs.frozen(kw_only=True)
class WireBytes(Message):
    """Bytes on a simulated queue, decoded when delivered (the simulator's queues carry
    envelopes; an injected message travels as one of these, from the `inject` fault)."""

    data: bytes


@attrs.frozen(kw_only=True)
class DeadLetter:
    """Why a delivery cannot be handled; `record` is the `dead_lettered` event's data."""

    reason: str
    size: int

    @property
    def record(self) -> dict[str, Any]:
        return {"reason": self.reason, "size": self.size}


@attrs.frozen(kw_only=True)
class Forged:
    """One injected message: its bytes, and the task it submits (None if it submits none)."""

    kind: str
    body: bytes
    submits: str | None = None
    about: str | None = None
    """The real task it lies about (a kind in `NAMES_A_TASK`)."""


def decode_delivery(
    codec: Codec, raw: bytes, *, redelivered: bool, deliveries: int = 0,
) -> Envelope | DeadLetter:
    """The envelope in a delivery's bytes, or why it goes to the dead queue."""
    try:
        return codec.decode(raw, redelivered=redelivered, deliveries=deliveries)
    except DecodeError as exc:
        return DeadLetter(reason=str(exc)[:200], size=len(raw))


def injected_task_id(kind: str, n: int) -> str:
    return f"injected-{kind.replace('_', '-')}-{n}"


def forge(
    kind: str, n: int, *, target: str, codec: Codec | None = None, task: str | None = None,
) -> Forged:
    """The `n`th injected message of `kind` (see `INJECT_KINDS`), bound for `target` (an actor
    address: the leader's queue, the work queue or a node's mailbox); `task` is the real task
    a kind in `NAMES_A_TASK` is about."""
    raw = _RAW.get(kind)
    if raw is not None:
        return Forged(kind=kind, body=raw)
    if kind in NAMES_A_TASK:
        ok = kind == "completed_forged"
        claim = Completed(task_id=str(task), attempt=1, worker=INTRUDER, ok=ok,
                          permanent=not ok, error=None if ok else "forged")
        env = Envelope(id=f"{INTRUDER}.{kind}.{n}", sender=INTRUDER, target=target, body=claim)
        return Forged(kind=kind, body=(codec or Codec()).encode(env), about=task)
    task = injected_task_id(kind, n)
    if kind == "submit_wrong_types":  # no TaskSpec holds these: the JSON is written by hand
        return Forged(kind=kind, body=_wrong_types(task, n, target), submits=task)
    body, epoch, submits = _forged_body(kind, task)
    env = Envelope(id=f"{INTRUDER}.{kind}.{n}", sender=INTRUDER, target=target, body=body,
                   clock=VectorClock(), epoch=epoch, attempt=getattr(body, "attempt", 0))
    return Forged(kind=kind, body=(codec or Codec()).encode(env),
                  submits=task if submits else None)


_RAW = {
    "undecodable": b"\xff\xfe{not json at all",
    "wrong_shape": b'["Submit", {"spec": null}]',
    "unknown_kind": (b'{"id":"intruder.x","sender":"intruder","target":"coordinator",'
                     b'"kind":"NoSuchMessage","clock":{},"epoch":0,"attempt":0,"body":{}}'),
    "missing_body": (b'{"id":"intruder.y","sender":"intruder","target":"coordinator",'
                     b'"kind":"Submit","clock":{},"epoch":0,"attempt":0}'),
}


def _wrong_types(task: str, n: int, target: str) -> bytes:
    """A Submit envelope whose task has a good id and every other field of a wrong type."""
    spec = {"id": task, "type": 5, "payload": None, "deps": "abc", "idempotency_key": 7,
            "max_attempts": "3", "timeout_ms": -1, "priority": [], "metadata": {},
            "created_ms": 0}
    return json.dumps({"id": f"{INTRUDER}.submit_wrong_types.{n}", "sender": INTRUDER,
                       "target": target, "kind": "Submit", "clock": {}, "epoch": 0,
                       "attempt": 0, "body": {"spec": spec}}).encode()


def _forged_body(kind: str, task: str) -> tuple[Message, int, bool]:
    """(the message, its envelope's epoch, whether it submits `task`)."""
    echo = {"message": task}
    if kind == "submit_priority":
        return Submit(spec=TaskSpec(id=task, type="echo", payload=echo, priority=999)), 0, True
    if kind == "submit_self_dependency":
        return Submit(spec=TaskSpec(id=task, type="echo", payload=echo, deps=(task,))), 0, True
    if kind == "submit_unknown_dependency":
        spec = TaskSpec(id=task, type="echo", payload=echo, deps=(f"{task}-never-submitted",))
        return Submit(spec=spec), 0, True
    if kind == "submit_huge_payload":
        huge = {"message": task, "blob": "x" * (MAX_PAYLOAD_BYTES + 1)}
        return Submit(spec=TaskSpec(id=task, type="echo", payload=huge)), 0, True
    if kind == "dispatch_epoch":
        spec = TaskSpec(id=task, type="echo", payload=echo)
        return Dispatch(spec=spec, attempt=1), FORGED_EPOCH, False
    if kind == "completed_unknown":
        return Completed(task_id=task, attempt=1, worker=INTRUDER, ok=True), 0, False
    if kind == "heartbeat_unknown":
        return Heartbeat(worker=f"ghost-{task}", seq=1, running=(f"{task}#1",)), 0, False
    if kind == "cancel_unknown":
        return Cancel(task_id=task), 0, False
    raise ValueError(f"unknown kind of injected message {kind!r}")


# --- playing `inject`, and what a run did with it ----------------------------------------------

Recorder = Callable[[str, str, VectorClock, Mapping[str, Any]], None]
PLANNED_CRASHES = ("killed by scenario", "injected crash")
"""Reasons of crashes a scenario asked for (the rest count against `crashes_max`)."""


def injections(
    params: Mapping[str, Any], targets: Sequence[str], *, start: int,
) -> list[tuple[str, Forged]]:
    """(address, message) for each message of one `inject` fault: `count` to the queue, or to
    each target's mailbox; numbered from `start` + 1 so that a run's task ids never repeat."""
    kind = params["message"]
    queue = params.get("queue", DEFAULT_QUEUE.get(kind, COORDINATOR_QUEUE))
    addresses = list(targets) if queue == MAILBOX else [queue]
    count = int(params.get("count", 1))
    codec = Codec()
    return [(address, forge(kind, start + i + 1, target=address, codec=codec,
                            task=params.get("task")))
            for i, address in enumerate(a for a in addresses for _ in range(count))]


def record_injection(record: Recorder, address: str, forged: Forged) -> None:
    """The history's `inject` event; a forged submission is also a `submit` (so the checker
    counts it lost unless it ends)."""
    data: dict[str, Any] = {"message": forged.kind, "queue": address}
    if forged.submits is not None:
        data["task"] = forged.submits
    if forged.about is not None:
        data["about"] = forged.about
    record(INTRUDER, "inject", VectorClock(), data)
    if forged.submits is not None:
        record(INTRUDER, "submit", VectorClock(), {"task": forged.submits,
                                                   "label": forged.submits})


def poison_summary(events: Sequence[Event]) -> dict[str, Any]:
    """The summary's `injected` entry (none without injections): messages sent by kind, dead
    letters, and how each injected submission ended."""
    sent = [e for e in events if e.kind == "inject"]
    if not sent:
        return {}
    ends = _ends(events, {e.data["task"] for e in sent if "task" in e.data})
    return {"injected": {
        "sent": len(sent), "kinds": dict(sorted(Counter(e.data["message"] for e in sent).items())),
        "dead_lettered": sum(1 for e in events if e.kind == "dead_lettered"),
        "crashes": len(unplanned_crashes(events)),
        "submissions": {task: _end_text(end) for task, end in sorted(ends.items())},
    }}


def poison_violations(
    events: Sequence[Event], *, dead_lettered_min: int | None, crashes_max: int | None,
) -> list[dict[str, Any]]:
    """An injected submission must end refused, saying why (one that never ends is the
    checker's lost task); and the `[expect]` bounds on dead letters and on crashes."""
    out = []
    injected = {e.data["task"]: e.data["message"] for e in events
                if e.kind == "inject" and "task" in e.data}
    for task, end in sorted(_ends(events, set(injected)).items()):
        if end is not None and (end.kind == "succeeded" or not end.data.get("reason")):
            out.append({"invariant": "poison_refused", "task": task, "detail": (
                f"injected submission {task} ({injected[task]}: "
                f"{INJECT_KINDS[injected[task]]}) ended {end.kind}"
                f"{'' if end.kind == 'succeeded' else ' without a reason'}: the leader must "
                f"refuse what the API refuses, and say why")})
    out += _forged_successes(events)
    dead = sum(1 for e in events if e.kind == "dead_lettered")
    if dead_lettered_min is not None and dead < dead_lettered_min:
        out.append({"invariant": "expectation", "detail": (
            f"[expect] dead_lettered_min = {dead_lettered_min}, but {dead} message(s) were "
            f"dead-lettered with a record")})
    crashes = unplanned_crashes(events)
    if crashes_max is not None and len(crashes) > crashes_max:
        shown = "; ".join(crashes[:5]) + (" …" if len(crashes) > 5 else "")
        out.append({"invariant": "expectation", "detail": (
            f"[expect] crashes_max = {crashes_max}, but nodes crashed or stepped down "
            f"{len(crashes)} time(s) on their own: {shown}")})
    return out


def _forged_successes(events: Sequence[Event]) -> list[dict[str, Any]]:
    """A task a forged completion lied about may be recorded succeeded only after (by
    happens-before) a worker stored its result."""
    about = {e.data["about"] for e in events if e.kind == "inject" and "about" in e.data}
    stored: dict[str, list[Event]] = {}
    out = []
    for e in events:
        task = e.data.get("task")
        if not isinstance(task, str) or task not in about:
            continue
        if e.kind == "effect":
            stored.setdefault(task, []).append(e)
        elif e.kind == "succeeded" and not any(_stored_clock(r).before(e.clock)
                                               for r in stored.get(task, ())):
            out.append({"invariant": "poison_refused", "task": task, "detail": (
                f"{e.actor} recorded task {task} succeeded on a forged completion: no result "
                f"of it was stored before (by happens-before)")})
    return out


def _stored_clock(effect: Event) -> VectorClock:
    """The clock a result was stored with (the event's own where it does not say)."""
    stored = effect.data.get("result_clock")
    return VectorClock.of(stored) if isinstance(stored, Mapping) else effect.clock


def unplanned_crashes(events: Sequence[Event]) -> list[str]:
    """"actor: reason" for each crash the scenario did not ask for, and each step-down."""
    return [f"{e.actor}: {e.kind} ({e.data.get('reason')})" for e in events
            if (e.kind == "crash" and not str(e.data.get("reason", "")).startswith(
                PLANNED_CRASHES)) or e.kind == "abdicated"]


def _end_text(end: Event | None) -> str:
    if end is None:
        return "never ended"
    reason = str(end.data.get("reason"))
    return reason if reason.startswith(end.kind) else f"{end.kind}: {reason}"


def _ends(events: Sequence[Event], tasks: set[str]) -> dict[str, Event | None]:
    ends: dict[str, Event | None] = dict.fromkeys(tasks)
    for e in events:
        if e.kind in _TERMINAL and e.data.get("task") in ends and ends[e.data["task"]] is None:
            ends[e.data["task"]] = e
    return ends


_TERMINAL = frozenset({"succeeded", "failed", "rejected", "cancelled"})


def expectation_texts(
    summary: Mapping[str, Any], dead_lettered_min: int | None, crashes_max: int | None,
) -> list[str]:
    """What the table's expectations row says of `dead_lettered_min` and `crashes_max`."""
    injected = summary.get("injected") or {}
    out = []
    if dead_lettered_min is not None:
        out.append(f"dead-lettered {injected.get('dead_lettered', 0)} (expected at least "
                   f"{dead_lettered_min})")
    if crashes_max is not None:
        out.append(f"crashes {injected.get('crashes', 0)} (at most {crashes_max})")
    return out


def summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """The `dtq scenario run` table's line about injections (none without them)."""
    injected = summary.get("injected")
    if not injected:
        return []
    ends = list(injected["submissions"].values())
    refused = sum(1 for end in ends if end.startswith(("rejected", "failed")))
    return [f"  injected {injected['sent']} messages, {injected['dead_lettered']} dead-lettered "
            f"with a record; {refused} of {len(ends)} forged submissions refused with a reason"]
