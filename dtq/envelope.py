"""Envelopes, the messages actors exchange, and the JSON wire codec.

The framework owns the envelope (id, sender, target, clock, epoch, attempt); actors own the
body, an `@attrs.frozen` keyword-only `Message`. On the wire an envelope is one JSON object whose
`kind` names the body's class.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import attrs
import cattrs

from dtq.clock import VectorClock
from dtq.errors import DecodeError
from dtq.task import TaskSpec


@attrs.frozen(kw_only=True)
class Message:
    """Base of every message body. Subclasses are `@attrs.frozen(kw_only=True)`."""


@attrs.frozen(kw_only=True)
class Envelope:
    id: str
    sender: str
    target: str
    body: Message
    clock: VectorClock = VectorClock()
    epoch: int = 0
    attempt: int = 0
    redelivered: bool = False
    deliveries: int = 0
    """How many times the broker delivered this message before and got it back (a quorum
    queue's `x-delivery-count`); 0 where the broker does not count (classic queues)."""

    @property
    def kind(self) -> str:
        return type(self.body).__name__


# --- the messages of the task flow ------------------------------------------------------------

COORDINATOR_QUEUE = "coordinator"
"""The leader's durable inbox: submissions, completions, heartbeats."""
WORK_QUEUE = "work"
"""The shared work queue: workers compete for dispatches (round robin)."""


@attrs.frozen(kw_only=True)
class Submit(Message):
    """A client asks the leader to accept a task; with `reply_to`, it is told when it ends."""

    spec: TaskSpec
    reply_to: str | None = None


@attrs.frozen(kw_only=True)
class Dispatch(Message):
    """The leader hands an attempt of a ready task to the shared work queue. `reply_to` is
    the client waiting for the task, if any (from the task's record, so every leader sends it):
    the result write that stores it tells it."""

    spec: TaskSpec
    attempt: int
    reply_to: str | None = None
    token: str = ""
    """The task's token (`TaskRecord.token`): the worker's report of the end carries it."""


@attrs.frozen(kw_only=True)
class Completed(Message):
    """A worker reports the stored outcome of a task (which may be another attempt's)."""

    task_id: str
    attempt: int
    worker: str
    ok: bool
    error: str | None = None
    notified: bool = False
    """This worker's result write told the waiting client (for the history: the leader never
    tells a success itself, whatever this says, since the write that stored the result, this
    worker's or an earlier one's, told it)."""
    permanent: bool = False
    """The task can never succeed (its spec breaks the submission rules, or its code raised
    `TaskError(retry=False)`): no retry."""
    traceback: str | None = None
    """A failed attempt's traceback (bounded), kept with the task's record."""
    token: str = ""
    """The token of the dispatch the worker received: a report without the task's token is
    refused as forged."""


@attrs.frozen(kw_only=True)
class Refused(Message):
    """A worker refused a dispatch from an epoch older than one it has seen; the leader hands
    the task out again under its own epoch."""

    task_id: str
    attempt: int
    worker: str
    epoch: int


@attrs.frozen(kw_only=True)
class Finished(Message):
    """What a waiting client hears when a task ended (best effort: poll to be sure). It comes
    through the store (`dtq.store.Notify`, Redis pub/sub): a success from the worker's result
    write, as the result is stored; every other end (failed, rejected, cancelled) from the
    leader's fenced write that records it."""

    task_id: str
    state: str
    reason: str | None = None


@attrs.frozen(kw_only=True)
class Cancel(Message):
    task_id: str


@attrs.frozen(kw_only=True)
class Heartbeat(Message):
    """A worker is alive. `running`, `finished` and `held` name attempts as "task#attempt": what
    it runs now, what it finished since its last heartbeat (their completions are on their way),
    and the dispatches it holds without having started them (waiting for a free slot). A worker
    sends one soon after it starts or sets aside a task, so heartbeats also report those."""

    worker: str
    seq: int
    running: tuple[str, ...] = ()
    finished: tuple[str, ...] = ()
    held: tuple[str, ...] = ()
    lost_incarnation: str | None = None
    """The incarnation marker of a namespace whose data this worker saw lost, sent until the
    store holds a report of that loss (a leader that took over not knowing of it writes one)."""


# --- codec -------------------------------------------------------------------------------------


def _all_message_types(root: type[Message] = Message) -> Iterable[type[Message]]:
    for sub in root.__subclasses__():
        yield sub
        yield from _all_message_types(sub)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter()
    conv.register_unstructure_hook(VectorClock, lambda c: dict(c.entries))
    conv.register_structure_hook(VectorClock, lambda d, _: VectorClock.of(d))
    conv.register_unstructure_hook(TaskSpec, lambda s: s.to_json())
    conv.register_structure_hook(TaskSpec, lambda d, _: TaskSpec.from_json(d))
    return conv


class Codec:
    """Encodes envelopes to JSON bytes and back. Knows every `Message` subclass defined so far,
    plus any passed in explicitly."""

    def __init__(self, extra: Iterable[type[Message]] = ()) -> None:
        self._conv = _make_converter()
        self._types: dict[str, type[Message]] = {}
        for t in (*_all_message_types(), *extra):
            self._types[t.__name__] = t

    def _lookup(self, kind: str) -> type[Message]:
        found = self._types.get(kind)
        if found is None:
            self._types.update((t.__name__, t) for t in _all_message_types())
            found = self._types.get(kind)
        if found is None:
            raise DecodeError(f"unknown message kind {kind!r}")
        return found

    def encode(self, env: Envelope) -> bytes:
        doc = {
            "id": env.id, "sender": env.sender, "target": env.target, "kind": env.kind,
            "clock": dict(env.clock.entries), "epoch": env.epoch, "attempt": env.attempt,
            "body": self._conv.unstructure(env.body),
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    def decode(self, raw: bytes, *, redelivered: bool = False, deliveries: int = 0) -> Envelope:
        try:
            doc: dict[str, Any] = json.loads(raw)
            body = self._conv.structure(doc["body"], self._lookup(doc["kind"]))
            return Envelope(
                id=str(doc["id"]), sender=str(doc["sender"]), target=str(doc["target"]),
                body=body, clock=VectorClock.of(doc.get("clock") or {}),
                epoch=int(doc.get("epoch", 0)), attempt=int(doc.get("attempt", 0)),
                redelivered=redelivered, deliveries=deliveries,
            )
        except DecodeError:
            raise
        except Exception as exc:  # anything malformed is one kind of failure: undecodable
            raise DecodeError(f"undecodable message: {exc!r}"[:500]) from exc
