"""Accepting work through the REST API: single tasks, DAGs, cancellations.

The rule: everything is checked before anything is published, and what is published goes out in
one confirmed batch, in dependency order. A submission is refused, changing nothing, when a field
is wrong (422), a dependency is unknown or the graph has a cycle (400), or it reuses an
idempotency key or task id with a different body (409). The idempotency check is the
coordinator's own (`Store.claim_key` with the request's `fingerprint`) done before publishing,
plus a look at the existing record, so a conflict is an answer and not a silent drop.

The store is read only where it can change the answer: a task whose id the client gave, or
derived from an idempotency key, is looked up first (it may be a replay); a task with
dependencies has them looked up. A task with neither (its id fresh from `new_task_id`) is
published without a single read. A task published is answered `submitted`, the state at
acceptance: the store is not read after the publish.

What the broker confirmed is answered 202, whatever follows: a state read that fails after a
cancel's publish answers the state read before it, never a retryable 503 (a client retrying it
would send it twice).

Ids this API process published but the leader has not recorded yet are remembered for a while
(`RecentSubmissions`), so a task can depend on one submitted a moment ago, and reads of it answer
`submitted` rather than 404.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import structlog

from dtq import dag
from dtq.client.backend import ApiBackend
from dtq.client.errors import (
    ApiError,
    bad_request,
    conflict,
    not_found,
    quoted,
    too_large,
    unprocessable,
)
from dtq.errors import ValidationError
from dtq.task import MAX_PAYLOAD_BYTES, TaskSpec, TaskState, check_task_type, fingerprint
from dtq.tasktypes import TaskActor

MAX_DAG_TASKS = 1000
CANCELLABLE = frozenset({TaskState.SUBMITTED, TaskState.PENDING, TaskState.READY})
_KEY_RE = re.compile(r"^[\x20-\x7e]{1,256}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_DAG_FIELDS = frozenset({"tasks"})
log = structlog.get_logger("dtq.api")


class RecentSubmissions:
    """Ids published by this process, with their fingerprints (bounded, thread-safe)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, task_id: str, fp: str) -> None:
        with self._lock:
            self._items[task_id] = fp
            self._items.move_to_end(task_id)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, task_id: str) -> str | None:
        with self._lock:
            return self._items.get(task_id)


def new_task_id() -> str:
    """A fresh id that sorts by creation time: milliseconds, then 48 random bits (from the
    process's generator, seeded from the OS and again in a forked child: no system call per
    id; the ids need to be unique, not secret)."""
    return f"t-{time.time_ns() // 1_000_000:012x}{random.getrandbits(48):012x}"


def check_key(key: str | None, field: str = "Idempotency-Key") -> str | None:
    """An idempotency key from a header: 1 to 256 printable ASCII characters."""
    if key is None:
        return None
    if not _KEY_RE.match(key):
        raise bad_request("invalid_header", "an idempotency key is 1 to 256 printable ASCII "
                          "characters", field)
    return key


def require_object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise unprocessable(f"must be a JSON object, not {_json_kind(value)}", field)
    return value


def _json_kind(value: Any) -> str:
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "an array", dict: "an object", type(None): "null"}
    return kinds.get(type(value), "another value")


@attrs.frozen(kw_only=True)
class Accepted:
    id: str
    state: str


@attrs.define(kw_only=True)
class Submissions:
    """Validation and publishing of submissions on one backend."""

    backend: ApiBackend
    task_types: Mapping[str, TaskActor] | None = None
    recent: RecentSubmissions = attrs.field(factory=RecentSubmissions)

    # --- one task ---------------------------------------------------------------------------

    def submit_task(self, body: Any, header_key: str | None) -> Accepted:
        spec, replayable = self.prepare_task(body, header_key)
        return self.accept(spec, replayable)

    def prepare_task(self, body: Any, header_key: str | None) -> tuple[TaskSpec, bool]:
        """Check one task's fields (no I/O); the spec, and whether it is `replayable`: its id
        was given by the client or derived from an idempotency key, so an earlier submission
        may hold it. Otherwise the id is this process's own, fresh: nothing can hold it yet."""
        data = require_object(body, "body")
        spec = self.parse(data, key=self._merge_key(data, header_key), prefix="")
        return spec, data.get("id") is not None or spec.idempotency_key is not None

    def needs_store(self, spec: TaskSpec, replayable: bool) -> bool:
        """Whether accepting `spec` reads the store (a replay check, a dependency lookup, a
        key to bind); a fresh task with no dependencies is only published."""
        return replayable or bool(spec.deps)

    def accept(self, spec: TaskSpec, replayable: bool = True) -> Accepted:
        """Accept a checked task: refuse unknown dependencies, answer a replay with the state
        of the task it repeats, else publish it and answer `submitted`: the state at acceptance
        (the store is not read again after the publish, so the answer does not say whether the
        leader has recorded or even run it yet)."""
        unknown = [d for d in spec.deps if not self.known(d)]
        if unknown:
            raise _unknown_deps(unknown, "deps")
        state = self._existing_state(spec) if replayable else None
        self._claim(spec)
        if state is None:
            self._publish([spec])
            state = TaskState.SUBMITTED.value
        return Accepted(id=spec.id, state=state)

    def published(self, specs: Sequence[TaskSpec]) -> None:
        """Remember tasks published (and confirmed) outside `accept`."""
        for spec in specs:
            self.recent.add(spec.id, fingerprint(spec))

    def _merge_key(self, data: Mapping[str, Any], header_key: str | None) -> Any:
        body_key = data.get("idempotency_key")
        if header_key is not None and body_key is not None and body_key != header_key:
            raise unprocessable("differs from the Idempotency-Key header", "idempotency_key")
        return header_key if header_key is not None else body_key

    def parse(self, data: Mapping[str, Any], *, key: Any, prefix: str) -> TaskSpec:
        """Validate one task's fields (422 naming the field, 413 for an oversized payload)."""
        explicit = data.get("id")
        if "id" in data and explicit is not None and (not isinstance(explicit, str)
                                                      or not explicit):
            raise unprocessable("must be a task id string (or left out)", prefix + "id")
        if _json_size(data.get("payload")) > MAX_PAYLOAD_BYTES:
            raise too_large(f"the payload is over the cap of {MAX_PAYLOAD_BYTES} bytes",
                            prefix + "payload")
        fields = {**data, "idempotency_key": key} if key is not None else data
        try:
            spec = TaskSpec.parse(fields, task_id=new_task_id(), now_ms=self.backend.now_ms())
        except ValidationError as exc:
            raise unprocessable(exc.message, prefix + exc.field) from None
        self._check_type(spec, prefix)
        return spec

    def _check_type(self, spec: TaskSpec, prefix: str) -> None:
        if self.task_types is None:
            return
        try:
            check_task_type(spec, self.task_types)
        except ValidationError as exc:
            if exc.field != "type":
                raise unprocessable(exc.message, prefix + exc.field) from None
            known = ", ".join(sorted(self.task_types))
            raise unprocessable(f"unknown task type {quoted(spec.type)} (this API accepts "
                                f"{known}; load more with `dtq api --tasks MODULE`)",
                                prefix + "type") from None

    # --- a DAG ------------------------------------------------------------------------------

    def submit_dag(self, body: Any, header_key: str | None) -> dict[str, str]:
        """Validate a whole DAG, then publish it in dependency order; local name -> task id."""
        tasks = self._dag_tasks(require_object(body, "body"))
        specs = {name: self._dag_task(name, value, header_key) for name, value in tasks.items()}
        order = self._check_graph(specs)
        ids = self._resolve_ids(specs)
        final = {name: attrs.evolve(spec, deps=tuple(ids.get(d, d) for d in spec.deps))
                 for name, spec in specs.items()}
        for name, spec in final.items():
            if spec.id in spec.deps:
                raise bad_request("dependency_cycle", f"task {name} depends on itself",
                                  f"tasks.{name}.deps")
        fresh = [final[name] for name in order if self._existing_state(final[name]) is None]
        for name in order:
            self._claim(final[name])
        self._publish(fresh)
        return ids

    def _dag_tasks(self, data: Mapping[str, Any]) -> dict[str, Any]:
        for field in data:
            if field not in _DAG_FIELDS:
                raise unprocessable("unknown field (a DAG body is {\"tasks\": {...}})", field)
        tasks = require_object(data.get("tasks"), "tasks")
        if not tasks:
            raise unprocessable("must name at least one task", "tasks")
        if len(tasks) > MAX_DAG_TASKS:
            raise unprocessable(f"at most {MAX_DAG_TASKS} tasks per DAG", "tasks")
        for name in tasks:
            if not _NAME_RE.match(name):
                raise unprocessable("a task name is 1-128 letters, digits, '.', '_', ':' or '-'",
                                    f"tasks.{name[:128]}")
        return tasks

    def _dag_task(self, name: str, value: Any, header_key: str | None) -> TaskSpec:
        prefix = f"tasks.{name}."
        data = require_object(value, f"tasks.{name}")
        derived = f"{header_key}/{name}" if header_key is not None else None
        if derived is not None and len(derived) > 256:
            raise bad_request("invalid_header", "the Idempotency-Key plus a task name must be at "
                              "most 256 characters", "Idempotency-Key")
        key = derived if data.get("idempotency_key") is None else data["idempotency_key"]
        return self.parse(data, key=key, prefix=prefix)

    def _check_graph(self, specs: Mapping[str, TaskSpec]) -> list[str]:
        graph = {name: list(spec.deps) for name, spec in specs.items()}
        external = {d for deps in graph.values() for d in deps if d not in graph}
        known = {d for d in external if self.known(d)}
        missing = [(name, d) for name, deps in graph.items() for d in deps
                   if d not in graph and d not in known]
        if missing:
            raise _unknown_deps([d for _, d in missing], f"tasks.{missing[0][0]}.deps")
        try:
            return dag.check_dag(graph, known)
        except ValidationError as exc:
            raise bad_request("dependency_cycle", exc.message, exc.field) from None

    def _resolve_ids(self, specs: Mapping[str, TaskSpec]) -> dict[str, str]:
        owner: dict[str, str] = {}
        for name, spec in specs.items():
            if spec.id in owner:
                raise unprocessable(f"task {name} has the same id as task {owner[spec.id]}",
                                    f"tasks.{name}.id")
            owner[spec.id] = name
        return {name: spec.id for name, spec in specs.items()}

    # --- shared checks ----------------------------------------------------------------------

    def known(self, task_id: str) -> bool:
        return (self.recent.get(task_id) is not None
                or self.backend.store.get_task(task_id) is not None)

    def _existing_state(self, spec: TaskSpec) -> str | None:
        """The state of an earlier identical submission of this id (a replay), None if there
        was none; 409 if the id is taken by a different request."""
        fp = fingerprint(spec)
        rec = self.backend.store.get_task(spec.id)
        held = fingerprint(rec.spec) if rec is not None else self.recent.get(spec.id)
        if held is None:
            return None
        if held != fp and spec.idempotency_key is not None:
            raise _key_conflict(spec.idempotency_key, spec.id)
        if held != fp:
            raise conflict("id_conflict", f"task {spec.id} already exists with a different "
                           "request body", "id")
        return rec.state.value if rec is not None else TaskState.SUBMITTED.value

    def _claim(self, spec: TaskSpec) -> None:
        """Bind the spec's idempotency key to (id, fingerprint) as the coordinator will."""
        key = spec.idempotency_key
        if key is None:
            return
        fp = fingerprint(spec)
        holder, held = self.backend.store.claim_key(key, spec.id, fp)
        if (holder, held) != (spec.id, fp):
            raise _key_conflict(key, holder)

    def _publish(self, specs: Sequence[TaskSpec]) -> None:
        if not specs:
            return
        self.backend.submit(specs)
        self.published(specs)

    def _state_after_publish(self, task_id: str, unread: str) -> str:
        """The state of a task whose message the broker confirmed. What was published is queued
        whatever the read after it does: a read that fails answers `unread` (the task is
        queued), never an error a client would retry (and so queue the task twice)."""
        try:
            return self.state_of(task_id)
        except Exception as exc:  # any failure of the read: the publish stands
            log.warning("published, but its state could not be read", task=task_id,
                        error=repr(exc))
            return unread

    def state_of(self, task_id: str) -> str:
        rec = self.backend.store.get_task(task_id)
        if rec is not None:
            return rec.state.value
        if self.recent.get(task_id) is not None:
            return TaskState.SUBMITTED.value
        raise not_found(task_id)

    # --- cancel -----------------------------------------------------------------------------

    def cancel(self, task_id: str) -> Accepted:
        """Ask the leader to cancel a task that has not started (202), else 409 or 404."""
        rec = self.backend.store.get_task(task_id)
        if rec is None and self.recent.get(task_id) is None:
            raise not_found(task_id)
        if rec is not None and rec.state not in CANCELLABLE:
            raise conflict("not_cancellable", f"task {task_id} is {rec.state.value}: only "
                           "submitted, pending or ready tasks can be cancelled", "id")
        self.backend.cancel(task_id)
        before = rec.state.value if rec is not None else TaskState.SUBMITTED.value
        return Accepted(id=task_id, state=self._state_after_publish(task_id, before))


def _key_conflict(key: str, task_id: str) -> ApiError:
    return conflict("idempotency_conflict", f"idempotency key {quoted(key)} was already used "
                    f"for task {task_id} with a different request body", "idempotency_key")


def _unknown_deps(unknown: Iterable[str], field: str) -> ApiError:
    names = ", ".join(quoted(d, 40) for d in dict.fromkeys(unknown))
    return bad_request("unknown_dependency", f"unknown dependencies: {names}", field)


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
