"""The task schema, its life cycle and its limits.

`TaskSpec` is what a client submits; `TaskRecord` is the coordinator's durable view of one task;
`TaskResult` is the first-writer-wins outcome of an attempt. State changes go through
`TaskRecord.moved_to`, which rejects transitions the life cycle does not allow.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

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


def _json_size(value: JSON) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


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
        """Validate untrusted input; a `ValidationError` names the field that is wrong."""
        if not isinstance(data, Mapping):
            raise ValidationError("body", "must be a JSON object")
        known = {"id", "type", "payload", "deps", "idempotency_key", "max_attempts",
                 "timeout_ms", "priority", "metadata"}
        for field in data:
            if field not in known:
                raise ValidationError(str(field), "unknown field")
        key: Any = data.get("idempotency_key")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 256):
            raise ValidationError("idempotency_key", "must be a string of 1 to 256 characters")
        tid: Any = data.get("id") or (id_for_key(key) if key else task_id)
        spec = cls(
            id=_check_id("id", tid),
            type=_check_type(data.get("type")),
            payload=data.get("payload"),
            deps=_check_deps(data.get("deps", ())),
            idempotency_key=key,
            max_attempts=_check_int("max_attempts", data.get("max_attempts", 3), 1,
                                    MAX_ATTEMPTS_LIMIT),
            timeout_ms=_check_int("timeout_ms", data.get("timeout_ms", 60_000), 1,
                                  MAX_TIMEOUT_MS),
            priority=_check_int("priority", data.get("priority", 0), 0, MAX_PRIORITY),
            metadata=_check_metadata(data.get("metadata", {})),
            created_ms=now_ms,
        )
        if spec.id in spec.deps:
            raise ValidationError("deps", f"task {spec.id} cannot depend on itself")
        if _json_size(spec.payload) > max_payload_bytes:
            raise ValidationError("payload", f"larger than the cap of {max_payload_bytes} bytes")
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
    if _json_size(dict(value)) > 16 * 1024:
        raise ValidationError("metadata", "larger than 16 KiB")
    return dict(value)


@attrs.frozen(kw_only=True)
class TaskRecord:
    """The coordinator's durable view of a task."""

    spec: TaskSpec
    state: TaskState = TaskState.SUBMITTED
    attempt: int = 0
    updated_ms: int = 0
    reason: str | None = None
    epoch: int = 0
    worker: str | None = None
    """The worker that reported starting the current attempt."""

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
            worker=worker if worker is not None else self.worker)

    def to_json(self) -> dict[str, JSON]:
        return {"spec": self.spec.to_json(), "state": self.state.value, "attempt": self.attempt,
                "updated_ms": self.updated_ms, "reason": self.reason, "epoch": self.epoch,
                "worker": self.worker}

    @classmethod
    def from_json(cls, d: Mapping[str, JSON]) -> TaskRecord:
        return cls(spec=TaskSpec.from_json(d["spec"]), state=TaskState(d["state"]),
                   attempt=d["attempt"], updated_ms=d["updated_ms"], reason=d["reason"],
                   epoch=d.get("epoch", 0), worker=d.get("worker"))


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
    clock: Mapping[str, int] = attrs.field(factory=dict)
    """The writer's vector clock when the result was stored (for causality checks)."""

    def to_json(self) -> dict[str, JSON]:
        return {**attrs.asdict(self), "clock": dict(self.clock)}

    @classmethod
    def from_json(cls, d: Mapping[str, JSON]) -> TaskResult:
        return cls(**{**d, "clock": dict(d.get("clock") or {})})
