"""Task types: the `TaskActor` base and the built-in compute, io, sleep and echo types.

A task type is a `TaskActor` subclass with a `type_name` and a `run(task, ctx)` method. It reaches
time, files and the network only through its `TaskContext`, which the simulator fakes (sleep
and I/O advance virtual time) and the process runtime implements for real, in a thread off the
worker's handler loop. Users add types by subclassing in their own module and naming it:
`dtq worker --tasks mypkg.tasks`; `Type.submit(...)` submits one with the default app
(`dtq.client.app`).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import attrs

from dtq.envelope import Message
from dtq.errors import UnknownTaskType, ValidationError

if TYPE_CHECKING:
    from dtq.client.app import TaskHandle

JSON = Any


@attrs.frozen(kw_only=True)
class TaskInput:
    """What a task's code sees of its task."""

    task_id: str
    type: str
    payload: JSON
    attempt: int
    timeout_ms: int
    deps: Mapping[str, JSON] = attrs.field(factory=dict)
    """Results of the task's dependencies, by task id."""


@attrs.frozen(kw_only=True)
class Executed(Message):
    """Comes back to the worker when a task's code has finished (or failed)."""

    ref: str
    ok: bool
    value: JSON = None
    error: str | None = None
    elapsed_ms: int = 0
    traceback: str | None = None
    """The failure's formatted traceback (bounded: `dtq.taskrun.TRACEBACK_MAX_CHARS`)."""
    permanent: bool = False
    """The task's code said not to retry (`TaskError(retry=False)`): it fails for good."""


class TaskContext(Protocol):
    """A task's door to the world. The simulator's advances virtual time instead of waiting."""

    @property
    def now_ms(self) -> int: ...

    def sleep(self, ms: int) -> None: ...

    def read_file(self, path: str) -> bytes: ...

    def write_file(self, path: str, data: bytes) -> None: ...

    def http_get(self, url: str) -> tuple[int, bytes]: ...

    def once(self, key: str, fn: Callable[[], object]) -> bool:
        """Run `fn` for `key` until one run of it is recorded done, across all attempts and
        workers; True if it ran now, False if it was skipped.

        A key's marker in the store goes from absent to "begun by task#attempt" to "done":

        * done: `fn` is skipped. Once a run is recorded done, `fn` never runs again for the key.
        * absent, or begun but never done (in doubt: the run that began it crashed, or was
          presumed dead and its task handed on, before it recorded done): the marker is set
          begun by this run, `fn` runs, then the marker is set done.

        So a task never reports success while one of its once-effects did not run (`once`
        returns only after the done marker is written, and raises if `fn` or the store does).
        What may happen: `fn` runs more than once for a key only when an earlier run of it
        began and was never recorded done: that run raised (the marker stays begun, the attempt
        fails, the next attempt runs `fn` again), or its worker died (or was presumed dead)
        between the start of `fn` and the done marker; in the worst case `fn` ran to its end
        and the crash fell between its end and the done marker. Make `fn` safe to redo (as the
        `io` write is: an atomic rename of the same bytes), or make it record its own effect in
        a store it can check. A store that loses its data loses its markers too."""
        ...

    def charge(self, ms: int) -> None:
        """Account for CPU time that virtual time should see (a no-op on real processes)."""
        ...


class TaskError(Exception):
    """Raised by task code for an expected failure; the message becomes the task's reason.

    `TaskError(msg, retry=False)` fails the task for good at once: the leader does not retry
    it, whatever its `max_attempts`."""

    def __init__(self, *args: object, retry: bool = True) -> None:
        super().__init__(*args)
        self.retry = retry


class TaskActor:
    """Base class of task types. Subclass it, set `type_name`, implement `run`.

    `run` returns a JSON-serialisable value (the task's result) or raises; an exception
    fails the attempt (its traceback is logged and kept with the task's record), and the
    coordinator retries up to the task's `max_attempts`, unless it is `TaskError(retry=False)`.
    """

    type_name: ClassVar[str] = ""
    inline: ClassVar[bool] = False
    """Run on the worker's handler loop instead of a task thread. Only for tasks that finish
    in microseconds and never block (a long one would hold up heartbeats and other work): it
    saves two thread hand-offs per task."""

    def validate(self, payload: JSON) -> None:
        """Reject a payload this type cannot run (raise `ValidationError`)."""

    def run(self, task: TaskInput, ctx: TaskContext) -> JSON:
        raise NotImplementedError

    @classmethod
    def submit(cls, payload: JSON = None, /, **fields: Any) -> TaskHandle:
        """Submit a task of this type with the default app (`dtq.connect`, `dtq.simulate`, the
        `dtq_sim` fixture): `WordCount.submit(text="a b")`. See `dtq.client.app.App.submit`."""
        from dtq.client.app import default_app

        return default_app().submit(cls, payload, **fields)


def _field(payload: JSON, name: str, kind: type, default: Any = None) -> Any:
    if not isinstance(payload, Mapping):
        raise ValidationError("payload", "must be an object")
    value = payload.get(name, default)
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        raise ValidationError(f"payload.{name}", f"must be a {kind.__name__}")
    return value


class Echo(TaskActor):
    """Returns its payload: the prototype's "message" and the benchmarks' no-op."""

    type_name = "echo"
    inline = True

    def run(self, task: TaskInput, ctx: TaskContext) -> JSON:
        return task.payload


class Compute(TaskActor):
    """Real CPU work: `size` rounds of SHA-256 over a seed; returns the final digest."""

    type_name = "compute"
    max_size = 50_000_000

    def validate(self, payload: JSON) -> None:
        size = _field(payload, "size", int)
        if not 0 <= size <= self.max_size:
            raise ValidationError("payload.size", f"must be from 0 to {self.max_size}")

    def run(self, task: TaskInput, ctx: TaskContext) -> JSON:
        self.validate(task.payload)
        size = int(task.payload["size"])
        digest = str(task.payload.get("seed", task.task_id)).encode()
        for _ in range(size):
            digest = hashlib.sha256(digest).digest()
        ctx.charge(max(1, size // 1000))
        return {"size": size, "digest": digest.hex()}


class Sleep(TaskActor):
    """Sleeps `ms` milliseconds (virtual time in the simulator)."""

    type_name = "sleep"

    def validate(self, payload: JSON) -> None:
        ms = _field(payload, "ms", int)
        if not 0 <= ms <= 24 * 3600 * 1000:
            raise ValidationError("payload.ms", "must be from 0 to 86400000")

    def run(self, task: TaskInput, ctx: TaskContext) -> JSON:
        self.validate(task.payload)
        ctx.sleep(int(task.payload["ms"]))
        return {"slept_ms": int(task.payload["ms"])}


class Io(TaskActor):
    """File or HTTP work: `{"op": "read"|"write"|"http_get", "path"|"url": ..., "data": ...}`.

    Writes go through `ctx.once`: a write recorded done is never made again; one whose worker
    died before recording it is made again, which is safe (the same bytes, renamed into place
    atomically).
    """

    type_name = "io"

    def validate(self, payload: JSON) -> None:
        op = _field(payload, "op", str)
        if op not in ("read", "write", "http_get"):
            raise ValidationError("payload.op", "must be 'read', 'write' or 'http_get'")
        _field(payload, "url" if op == "http_get" else "path", str)
        if op == "write":
            _field(payload, "data", str)

    def run(self, task: TaskInput, ctx: TaskContext) -> JSON:
        self.validate(task.payload)
        p = task.payload
        if p["op"] == "read":
            data = ctx.read_file(p["path"])
            return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if p["op"] == "write":
            raw = p["data"].encode()
            ctx.once(f"{task.task_id}:write:{p['path']}", lambda: ctx.write_file(p["path"], raw))
            return {"bytes": len(raw)}
        status, body = ctx.http_get(p["url"])
        return {"status": status, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


BUILTIN_MODULE = "dtq.tasktypes"


def task_types_in(module: Any) -> dict[str, TaskActor]:
    """Instances of the `TaskActor` subclasses defined in `module`, by type name."""
    found: dict[str, TaskActor] = {}
    for value in vars(module).values():
        if (isinstance(value, type) and issubclass(value, TaskActor) and value is not TaskActor
                and value.__module__ == module.__name__ and value.type_name):
            found[value.type_name] = value()
    return found


def load_task_types(modules: Iterable[str] = ()) -> dict[str, TaskActor]:
    """The built-in types plus those of the named modules (later modules override)."""
    types: dict[str, TaskActor] = {}
    for name in (BUILTIN_MODULE, *modules):
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise UnknownTaskType(f"cannot import task module {name!r}: {exc}") from exc
        found = task_types_in(module)
        if name != BUILTIN_MODULE and not found:
            raise UnknownTaskType(f"module {name!r} defines no TaskActor subclass with a type_name")
        types.update(found)
    return types
