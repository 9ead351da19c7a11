"""Running one task's code: the `TaskContext` that every runtime hands to task code.

The rule: what a task's context does beyond reaching the world lives here once, for the
simulator and for real processes alike: `once` (marker begun, `fn`, marker done), the shape of
the `Executed` answer, the error text and the bounded traceback of a failed attempt (taken from
the exception itself, the same on both backends), and the named crash points between those
steps. A runtime supplies only its world (`TaskWorld`: time, sleep, files, HTTP), its store, a
recorder for history events and a crash hook. Pure: no I/O, time or randomness of its own (a
traceback's source lines come from Python's `linecache`, the program's own code).

A failed attempt's traceback keeps at most the innermost `TRACEBACK_MAX_FRAMES` frames and the
last `TRACEBACK_MAX_CHARS` characters (the end, where the exception was raised, is what matters).
`TaskError(retry=False)` makes the answer `permanent`: the leader fails the task for good.

Crash points (`CRASH_POINTS`), in the order a task reaches them:

* `once_before_begin`: inside `ctx.once`, before the marker is begun;
* `once_before_fn`: the marker is begun, `fn` has not run;
* `once_after_fn`: `fn` returned, the marker is not yet done;
* `before_result`: the task's code returned, its answer is not yet handed back (so its result
  is not written).

Production passes `no_crash`. The simulator's hook raises an exception that is not an
`Exception` (task code cannot swallow it) and crashes the node, leaving the store as it was at
that point. A process started with `DTQ_CRASH_AT` kills itself there (see `dtq.runtime.process`).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from dtq.actor import Execution
from dtq.store import Store
from dtq.tasktypes import Executed, TaskError, TaskInput

TRACEBACK_MAX_FRAMES = 50
TRACEBACK_MAX_CHARS = 8 * 1024
CRASH_POINTS = ("once_before_begin", "once_before_fn", "once_after_fn", "before_result")

TaskRecorder = Callable[[str, Mapping[str, Any]], None]
"""record(kind, data): one history event of the task's node."""
CrashHook = Callable[[str], None]
"""hook(point): called at each crash point; returns to go on, or never returns."""


def no_crash(point: str) -> None:
    """The production crash hook: go on."""


class TaskWorld(Protocol):
    """What a runtime gives task code: time, sleep, CPU accounting, files and HTTP."""

    @property
    def now_ms(self) -> int: ...

    def sleep(self, ms: int) -> None: ...

    def charge(self, ms: int) -> None: ...

    def read_file(self, path: str) -> bytes: ...

    def write_file(self, path: str, data: bytes) -> None: ...

    def http_get(self, url: str) -> tuple[int, bytes]: ...

    def elapsed_ms(self) -> int:
        """Time the task has taken so far (virtual in the simulator)."""
        ...


class RunContext:
    """The `TaskContext` of one task run: the world's doors, plus `once`."""

    __slots__ = ("_crash", "_input", "_record", "_store", "_world")

    def __init__(
        self, task: TaskInput, *, world: TaskWorld, store: Store, record: TaskRecorder,
        crash: CrashHook = no_crash,
    ) -> None:
        self._input = task
        self._world = world
        self._store = store
        self._record = record
        self._crash = crash

    @property
    def now_ms(self) -> int:
        return self._world.now_ms

    def sleep(self, ms: int) -> None:
        self._world.sleep(ms)

    def charge(self, ms: int) -> None:
        self._world.charge(ms)

    def read_file(self, path: str) -> bytes:
        return self._world.read_file(path)

    def write_file(self, path: str, data: bytes) -> None:
        self._world.write_file(path, data)

    def http_get(self, url: str) -> tuple[int, bytes]:
        return self._world.http_get(url)

    def once(self, key: str, fn: Callable[[], object]) -> bool:
        """See `dtq.tasktypes.TaskContext.once`: skip when done; else begin, run, mark done."""
        task, attempt = self._input.task_id, self._input.attempt
        ids = {"key": key, "task": task, "attempt": attempt}
        self._crash("once_before_begin")
        state = self._store.once_begin(key, f"{task}#{attempt}")
        if state == "done":
            self._record("once_skipped", ids)
            return False
        in_doubt = state == "in_doubt"
        self._record("once_begin", {**ids, "in_doubt": in_doubt})
        self._crash("once_before_fn")
        fn()
        self._record("side_effect", {**ids, "in_doubt": in_doubt})
        self._crash("once_after_fn")
        self._store.once_done(key, f"{task}#{attempt}")
        self._record("once_done", ids)
        return True


def run_task(
    ex: Execution, *, world: TaskWorld, store: Store, record: TaskRecorder,
    crash: CrashHook = no_crash,
) -> Executed:
    """Run a task's code to its end; the `Executed` answer for the worker's handler."""
    ctx = RunContext(ex.input, world=world, store=store, record=record, crash=crash)
    try:
        value = ex.task_actor.run(ex.input, ctx)
        done = Executed(ref=ex.ref, ok=True, value=value, elapsed_ms=world.elapsed_ms())
    except Exception as exc:  # task code may raise anything; it fails the attempt
        permanent = isinstance(exc, TaskError) and not exc.retry
        error = f"{type(exc).__name__}: {exc}" + (" (retry=False: not retried)" if permanent
                                                  else "")
        done = Executed(ref=ex.ref, ok=False, error=error, elapsed_ms=world.elapsed_ms(),
                        traceback=format_traceback(exc), permanent=permanent)
    crash("before_result")
    return done


def format_traceback(exc: BaseException) -> str:
    """`exc`'s traceback as Python prints it, bounded: the innermost `TRACEBACK_MAX_FRAMES`
    frames, then the last `TRACEBACK_MAX_CHARS` characters (cut at a line start)."""
    text = "".join(traceback.format_exception(exc, limit=-TRACEBACK_MAX_FRAMES))
    if len(text) <= TRACEBACK_MAX_CHARS:
        return text
    tail = text[-(TRACEBACK_MAX_CHARS - 64):]
    tail = tail[tail.find("\n") + 1:] if "\n" in tail[:-1] else tail
    return f"[traceback cut to its last {len(tail)} characters]\n{tail}"
