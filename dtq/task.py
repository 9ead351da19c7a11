"""The task schema, its life cycle and its limits.

`TaskSpec` is what a client submits; `TaskRecord` is the coordinator's durable view of one task;
`TaskResult` is the first-writer-wins outcome of an attempt. State changes go through
`TaskRecord.moved_to`, which rejects transitions the life cycle does not allow.

The limits of a submission are one set of rules (`check_spec`, `check_task_type`), applied by
the API before it publishes and by the leader to every submission it receives.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import attrs

from dtq.errors import IllegalTransition, ValidationError

JSON = Any
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_ATTEMPTS_LIMIT = 100
MAX_TIMEOUT_MS = 24 * 3600 * 1000
MAX_PRIORITY = 9
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_TYPE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


class TaskState(enum.StrEnum):
    SUBMITTED = "submitted"
    PENDING = "pending"
    READY = "ready"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})

_S = TaskState
TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = {
    _S.SUBMITTED: frozenset({_S.PENDING, _S.READY, _S.FAILED, _S.CANCELLED}),
    _S.PENDING: frozenset({_S.READY, _S.FAILED, _S.CANCELLED}),
    _S.READY: frozenset({_S.DISPATCHED, _S.FAILED, _S.CANCELLED}),
    # A completion may overtake the worker's "started" report, and a retry puts a task back.
    _S.DISPATCHED: frozenset({_S.RUNNING, _S.READY, _S.DISPATCHED, _S.SUCCEEDED, _S.FAILED}),
    _S.RUNNING: frozenset({_S.READY, _S.DISPATCHED, _S.SUCCEEDED, _S.FAILED}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
}


def check_transition(task_id: str, current: TaskState, new: TaskState) -> None:
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(task_id, current.value, new.value)


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""Built once: `json.dumps` with these options builds an encoder per call (3 times slower)."""


def _json_size(value: JSON) -> int:
    return len(_COMPACT.encode(value).encode())


def fingerprint(spec: TaskSpec) -> str:
    """A digest of what a submission asks for, to tell a retry from a conflicting reuse of a key."""
    body = {
        "type": spec.type,
        "payload": spec.payload,
        "deps": list(spec.deps),
        "max_attempts": spec.max_attempts,
        "timeout_ms": spec.timeout_ms,
        "priority": spec.priority,
        "metadata": dict(spec.metadata),
    }
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def id_for_key(idempotency_key: str) -> str:
    """The task id an idempotency key always maps to."""
    return "t-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]


def _str_tuple(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(items)


@attrs.frozen(kw_only=True)
class TaskSpec:
    """A submission: what to run, with which limits. Build it with `TaskSpec.parse` for input."""

    id: str
    type: str
    payload: JSON = None
    deps: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    idempotency_key: str | None = None
    max_attempts: int = 3
    timeout_ms: int = 60_000
    priority: int = 0
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    created_ms: int = 0

    @classmethod
    def parse(
        cls, data: Mapping[str, Any], *, task_id: str, now_ms: int,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    ) -> TaskSpec:
        """Validate untrusted input; a `ValidationError` names the field that is wrong. The
        rules are `check_spec`'s, the ones the leader applies to every submission too."""
        if not isinstance(data, Mapping):
            raise ValidationError("body", "must be a JSON object")
        known = {"id", "type", "payload", "deps", "idempotency_key", "max_attempts",
                 "timeout_ms", "priority", "metadata"}
        for field in data:
            if field not in known:
                raise ValidationError(str(field), "unknown field")
        key: Any = data.get("idempotency_key")
        _check_key(key)
        deps: Any = data.get("deps", ())
        if not isinstance(deps, list | tuple):
            raise ValidationError("deps", "must be a list of task ids")
        metadata: Any = data.get("metadata", {})
        spec = cls(
            id=data.get("id") or (id_for_key(key) if key else task_id),
            type=data.get("type", ""),
            payload=data.get("payload"),
            deps=deps,
            idempotency_key=key,
            max_attempts=data.get("max_attempts", 3),
            timeout_ms=data.get("timeout_ms", 60_000),
            priority=data.get("priority", 0),
            metadata=dict(metadata) if isinstance(metadata, Mapping) else metadata,
            created_ms=now_ms,
        )
        check_spec(spec, max_payload_bytes=max_payload_bytes)
        return spec

    @property
    def label(self) -> str:
        """A short human label: metadata 'label', a payload 'message', or the id."""
        label = self.metadata.get("label")
        if label:
            return label
        if isinstance(self.payload, Mapping) and isinstance(self.payload.get("message"), str):
            return str(self.payload["message"])
        return self.id

    def to_json(self) -> dict[str, JSON]:
        return {
            "id": self.id, "type": self.type, "payload": self.payload, "deps": list(self.deps),
            "idempotency_key": self.idempotency_key, "max_attempts": self.max_attempts,
            "timeout_ms": self.timeout_ms, "priority": self.priority,
            "metadata": dict(self.metadata), "created_ms": self.created_ms,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, JSON]) -> TaskSpec:
        return cls(**{**d, "deps": tuple(d.get("deps", ())), "metadata": dict(d["metadata"])})


def _check_id(field: str, value: Any) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ValidationError(
            field, "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
    return value


def _check_type(value: Any) -> str:
    if not isinstance(value, str) or not _TYPE_RE.match(value):
        raise ValidationError(
            "type", "must be a lower-case name like 'compute' (letters, digits, '_', '.', '-')")
    return value


def _check_key(value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 256):
        raise ValidationError("idempotency_key", "must be a string of 1 to 256 characters")


def _check_deps(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValidationError("deps", "must be a list of task ids")
    deps = tuple(_check_id(f"deps[{i}]", d) for i, d in enumerate(value))
    if len(set(deps)) != len(deps):
        raise ValidationError("deps", "lists a task more than once")
    return deps


def _check_int(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValidationError(field, f"must be an integer from {lo} to {hi}")
    return value


def _check_metadata(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValidationError("metadata", "must be an object of string values")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValidationError(f"metadata.{k}", "keys and values must be strings")
    if value and _json_size(dict(value)) > 16 * 1024:
        raise ValidationError("metadata", "larger than 16 KiB")
    return dict(value)


def _check_not_self(spec: TaskSpec) -> None:
    if spec.id in spec.deps:
        raise ValidationError("deps", f"task {spec.id} cannot depend on itself")


def _check_payload(value: Any, max_payload_bytes: int) -> None:
    try:
        size = _json_size(value)
    except (TypeError, ValueError):
        raise ValidationError("payload", "must be JSON") from None
    if size > max_payload_bytes:
        raise ValidationError("payload", f"larger than the cap of {max_payload_bytes} bytes")


_MAX_MS = (1 << 63) - 1
_SPEC_RULES: tuple[tuple[str, Callable[[TaskSpec, int], object]], ...] = (
    ("id", lambda s, _: _check_id("id", s.id)),
    ("type", lambda s, _: _check_type(s.type)),
    ("deps", lambda s, _: _check_deps(s.deps)),
    ("deps", lambda s, _: _check_not_self(s)),
    ("idempotency_key", lambda s, _: _check_key(s.idempotency_key)),
    ("max_attempts", lambda s, _: _check_int("max_attempts", s.max_attempts, 1,
                                             MAX_ATTEMPTS_LIMIT)),
    ("timeout_ms", lambda s, _: _check_int("timeout_ms", s.timeout_ms, 1, MAX_TIMEOUT_MS)),
    ("priority", lambda s, _: _check_int("priority", s.priority, 0, MAX_PRIORITY)),
    ("metadata", lambda s, _: _check_metadata(s.metadata)),
    ("created_ms", lambda s, _: _check_int("created_ms", s.created_ms, 0, _MAX_MS)),
    ("payload", lambda s, cap: _check_payload(s.payload, cap)),
)
"""Every rule a submission must keep: (the attribute it is about, the check)."""


def spec_problems(
    spec: TaskSpec, *, max_payload_bytes: int = MAX_PAYLOAD_BYTES,
) -> list[tuple[str, ValidationError]]:
    """Every rule `spec` breaks, in order: (the attribute, the error naming the field)."""
    problems: list[tuple[str, ValidationError]] = []
    for attr, rule in _SPEC_RULES:
        if problems and problems[0][0] == "id":
            break  # nothing else can be trusted to be looked at by id
        try:
            rule(spec, max_payload_bytes)
        except ValidationError as exc:
            problems.append((attr, exc))
    return problems


def check_spec(spec: TaskSpec, *, max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> None:
    """The limits every submission keeps, wherever it comes from: the API checks them before
    publishing and the leader again on receipt (a client may publish to the broker itself).
    Raises the first `ValidationError`."""
    problems = spec_problems(spec, max_payload_bytes=max_payload_bytes)
    if problems:
        raise problems[0][1]


class PayloadRules(Protocol):
    """What a task type offers to validate a payload (`dtq.tasktypes.TaskActor`)."""

    def validate(self, payload: JSON) -> None: ...


def check_task_type(spec: TaskSpec, task_types: Mapping[str, PayloadRules]) -> None:
    """The type's own rules: it must be one of `task_types`, and its `validate` must accept the
    payload. A `validate` may raise anything: that refuses the payload too."""
    rules = task_types.get(spec.type)
    if rules is None:
        raise ValidationError("type", f"unknown task type {spec.type!r}")
    try:
        rules.validate(spec.payload)
    except ValidationError:
        raise
    except Exception as exc:
        raise ValidationError("payload", f"refused by task type {spec.type}: {exc}") from None


def check_submission(
    spec: TaskSpec, task_types: Mapping[str, PayloadRules] | None = None, *,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
) -> None:
    """`check_spec`, then `check_task_type` where the task types are known."""
    check_spec(spec, max_payload_bytes=max_payload_bytes)
    if task_types is not None:
        check_task_type(spec, task_types)


_SAFE: Mapping[str, Any] = {
    "type": "invalid", "deps": (), "idempotency_key": None, "max_attempts": 1,
    "timeout_ms": 60_000, "priority": 0, "metadata": {}, "created_ms": 0, "payload": None,
}


def sanitized(spec: TaskSpec) -> TaskSpec:
    """`spec` with every attribute that breaks a rule set to a harmless value, so that the
    record of a rejected submission is well-formed wherever it goes (the store's indexes, the
    API's views, a new leader's rebuild). Its id must be valid."""
    attrs_wrong = [attr for attr, _ in spec_problems(spec)]
    if "id" in attrs_wrong:
        raise ValueError("a spec with an invalid id cannot be made safe")
    changes = {attr: _SAFE[attr] for attr in attrs_wrong}
    return attrs.evolve(spec, **changes) if changes else spec


@attrs.frozen(kw_only=True)
class TaskRecord:
    """The coordinator's durable view of a task."""

    spec: TaskSpec
    state: TaskState = TaskState.SUBMITTED
    attempt: int = 0
    updated_ms: int = 0
    """Wall-clock ms of the last change (as `TaskSpec.created_ms`: one clock for both)."""
    reason: str | None = None
    epoch: int = 0
    worker: str | None = None
    """The worker that reported starting the current attempt."""
    clock: Mapping[str, int] = attrs.field(factory=dict)
    """The leader's vector clock when it recorded the task's success (empty otherwise): a new
    leader merges it, so what it does next happens after that success."""
    traceback: str | None = None
    """The traceback of the last failed attempt, when it failed by raising (None when it timed
    out or was refused). Bounded in size; written only when set, so readers that predate it
    never see the key."""
    reply_to: str | None = None
    """The client waiting for the task's end, kept with the record so that whichever leader or
    worker ends the task tells it (written only when set, like `traceback`)."""
    token: str | None = None
    """A random value the leader gives the task at its first dispatch and sends with every
    dispatch of it: a worker's report of its end must carry it, so a report forged by anyone
    who never received a dispatch of the task is refused (written only when set)."""

    @property
    def id(self) -> str:
        return self.spec.id

    def moved_to(
        self, state: TaskState, *, now_ms: int, attempt: int | None = None,
        reason: str | None = None, epoch: int | None = None, worker: str | None = None,
    ) -> TaskRecord:
        check_transition(self.id, self.state, state)
        return TaskRecord(
            spec=self.spec, state=state, updated_ms=now_ms,
            attempt=self.attempt if attempt is None else attempt,
            reason=reason if reason is not None else self.reason,
            epoch=self.epoch if epoch is None else epoch,
            worker=worker if worker is not None else self.worker, clock=self.clock,
            traceback=self.traceback, reply_to=self.reply_to, token=self.token)

    def to_json(self) -> dict[str, JSON]:
        out = {"spec": self.spec.to_json(), "state": self.state.value, "attempt": self.attempt,
               "updated_ms": self.updated_ms, "reason": self.reason, "epoch": self.epoch,
               "worker": self.worker}
        if self.clock:
            out["clock"] = dict(self.clock)
        if self.traceback is not None:
            out["traceback"] = self.traceback
        if self.reply_to is not None:
            out["reply_to"] = self.reply_to
        if self.token is not None:
            out["token"] = self.token
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, JSON]) -> TaskRecord:
        return cls(spec=TaskSpec.from_json(d["spec"]), state=TaskState(d["state"]),
                   attempt=d["attempt"], updated_ms=d["updated_ms"], reason=d["reason"],
                   epoch=d.get("epoch", 0), worker=d.get("worker"),
                   clock=dict(d.get("clock") or {}), traceback=d.get("traceback"),
                   reply_to=d.get("reply_to"), token=d.get("token"))


@attrs.frozen(kw_only=True)
class TaskResult:
    """The outcome of one attempt. The store keeps the first one written per task."""

    task_id: str
    attempt: int
    worker: str
    ok: bool
    value: JSON = None
    error: str | None = None
    finished_ms: int = 0
    """Wall-clock ms when the attempt ended."""
    clock: Mapping[str, int] = attrs.field(factory=dict)
    """The writer's vector clock when the result was stored (for causality checks)."""

    def to_json(self) -> dict[str, JSON]:
        return {**attrs.asdict(self), "clock": dict(self.clock)}

    @classmethod
    def from_json(cls, d: Mapping[str, JSON]) -> TaskResult:
        return cls(**{**d, "clock": dict(d.get("clock") or {})})
