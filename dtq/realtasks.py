"""Task execution on real processes: a `TaskContext` with real time, files and HTTP.

Runs in a worker's task thread, never on the handler loop. Files and HTTP go through
`dtq.runtime_io`: regular files inside the node's I/O root only, HTTP to public addresses only.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

from dtq.actor import Execution
from dtq.runtime_io import IoRoot, current_http_policy, http_get
from dtq.store import Store
from dtq.tasktypes import Executed


class RealTaskContext:
    def __init__(
        self, ex: Execution, *, store: Store, record: Callable[[str, Mapping[str, Any]], None],
        io_root: str,
    ) -> None:
        self._ex = ex
        self._store = store
        self._record = record
        self._io_root = io_root
        self._deadline = time.monotonic() + ex.input.timeout_ms / 1000

    @property
    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def sleep(self, ms: int) -> None:
        time.sleep(max(0, ms) / 1000)  # the task's own work, in its own thread

    def charge(self, ms: int) -> None:
        """Real CPU time is already spent; nothing to account for."""

    @functools.cached_property
    def _files(self) -> IoRoot:
        return IoRoot(self._io_root)

    def read_file(self, path: str) -> bytes:
        return self._files.read(path)

    def write_file(self, path: str, data: bytes) -> None:
        self._files.write(path, data)

    def http_get(self, url: str) -> tuple[int, bytes]:
        return http_get(url, deadline=self._deadline, policy=current_http_policy())

    def once(self, key: str, fn: Callable[[], object]) -> bool:
        owner = f"{self._ex.input.task_id}#{self._ex.input.attempt}"
        _, new = self._store.once(key, owner)
        if new:
            fn()
            self._record("side_effect", {"key": key, "task": self._ex.input.task_id})
        return new


def run_task(
    ex: Execution, *, store: Store, record: Callable[[str, Mapping[str, Any]], None],
    actor: str, io_root: str,
) -> Executed:
    ctx = RealTaskContext(ex, store=store, record=record, io_root=io_root)
    started = time.monotonic()
    try:
        value = ex.task_actor.run(ex.input, ctx)
        ok, error = True, None
    except Exception as exc:  # task code may raise anything; it fails the attempt
        value, ok, error = None, False, f"{type(exc).__name__}: {exc}"
    elapsed = int((time.monotonic() - started) * 1000)
    return Executed(ref=ex.ref, ok=ok, value=value, error=error, elapsed_ms=elapsed)
