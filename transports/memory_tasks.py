"""Task execution inside the simulator: virtual sleep, faked files and HTTP, `once` markers.

Task code runs synchronously (compute does its real CPU work), but time it spends sleeping,
waiting on I/O or charged as CPU is virtual: the `Executed` message comes back that much later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from dtq.actor import Execution
from dtq.clock import VectorClock
from dtq.tasktypes import Executed, TaskError

if TYPE_CHECKING:
    from transports.memory import Simulation


@attrs.define(kw_only=True)
class SimIO:
    """The simulated outside world of I/O tasks: a file system and canned HTTP responses."""

    files: dict[str, bytes] = attrs.field(factory=dict)
    http: dict[str, tuple[int, bytes]] = attrs.field(factory=dict)
    latency_ms: int = 5


class SimTaskContext:
    def __init__(self, sim: Simulation, node: str, ex: Execution) -> None:
        self._sim = sim
        self._node = node
        self._ex = ex
        self.elapsed_ms = 0

    @property
    def now_ms(self) -> int:
        return self._sim.now_ms + self.elapsed_ms

    def sleep(self, ms: int) -> None:
        self.elapsed_ms += max(0, int(ms))

    def charge(self, ms: int) -> None:
        self.elapsed_ms += max(0, int(ms))

    def read_file(self, path: str) -> bytes:
        self.elapsed_ms += self._sim.io.latency_ms
        try:
            return self._sim.io.files[path]
        except KeyError:
            raise TaskError(f"no such file: {path}") from None

    def write_file(self, path: str, data: bytes) -> None:
        self.elapsed_ms += self._sim.io.latency_ms
        self._sim.io.files[path] = bytes(data)

    def http_get(self, url: str) -> tuple[int, bytes]:
        self.elapsed_ms += self._sim.io.latency_ms
        return self._sim.io.http.get(url, (404, b"not found"))

    def once(self, key: str, fn: Callable[[], Any]) -> bool:
        owner = f"{self._ex.input.task_id}#{self._ex.input.attempt}"
        _, new = self._sim.store.once(key, owner)
        if new:
            fn()
            self._sim.history.record(self._node, "side_effect", VectorClock(),
                                     {"key": key, "task": self._ex.input.task_id})
        return new


def run_task(sim: Simulation, node: str, ex: Execution) -> tuple[Executed, int]:
    """Run a task's code now; return its `Executed` message and the virtual time it took."""
    ctx = SimTaskContext(sim, node, ex)
    try:
        value = ex.task_actor.run(ex.input, ctx)
        done = Executed(ref=ex.ref, ok=True, value=value, elapsed_ms=ctx.elapsed_ms)
    except Exception as exc:  # task code may raise anything; it fails the attempt
        done = Executed(ref=ex.ref, ok=False, error=f"{type(exc).__name__}: {exc}",
                        elapsed_ms=ctx.elapsed_ms)
    return done, ctx.elapsed_ms
