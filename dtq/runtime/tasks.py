"""Task execution on real processes: the real world (time, files, HTTP) of `dtq.taskrun`.

Runs in a worker's task thread, never on the handler loop. Files and HTTP go through
`dtq.runtime.sandbox`: regular files inside the node's I/O root only, HTTP to public addresses only.
"""

from __future__ import annotations

import functools
import time

from dtq import taskrun
from dtq.actor import Execution
from dtq.runtime.sandbox import IoRoot, current_http_policy, http_get
from dtq.store import Store
from dtq.taskrun import CrashHook, TaskRecorder, no_crash
from dtq.tasktypes import Executed


class RealTaskContext:
    """The world of a task on a real process (`dtq.taskrun.TaskWorld`): real time, files under
    the I/O root, HTTP. What a task's context does beyond that is `dtq.taskrun`'s."""

    def __init__(self, ex: Execution, *, io_root: str) -> None:
        self._io_root = io_root
        self._started = time.monotonic()
        self._deadline = self._started + ex.input.timeout_ms / 1000

    @property
    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def sleep(self, ms: int) -> None:
        time.sleep(max(0, ms) / 1000)  # the task's own work, in its own thread

    def charge(self, ms: int) -> None:
        """Real CPU time is already spent; nothing to account for."""

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)

    @functools.cached_property
    def _files(self) -> IoRoot:
        return IoRoot(self._io_root)

    def read_file(self, path: str) -> bytes:
        return self._files.read(path)

    def write_file(self, path: str, data: bytes) -> None:
        self._files.write(path, data)

    def http_get(self, url: str) -> tuple[int, bytes]:
        return http_get(url, deadline=self._deadline, policy=current_http_policy())


def run_task(
    ex: Execution, *, store: Store, record: TaskRecorder, io_root: str,
    crash: CrashHook = no_crash,
) -> Executed:
    """Run a task in this thread, in the real world (`dtq.taskrun.run_task`)."""
    world = RealTaskContext(ex, io_root=io_root)
    return taskrun.run_task(ex, world=world, store=store, record=record, crash=crash)
