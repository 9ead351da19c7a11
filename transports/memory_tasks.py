"""Task execution inside the simulator: the simulated world of `dtq.taskrun`, and its crashes.

The rule: the simulator supplies only a task's world (virtual sleep, faked files and HTTP); what
a task's context does beyond that (`once`, the answer, the error text, the crash points) is
`dtq.taskrun`'s, exactly as on real processes. Task code runs synchronously (compute does its
real CPU work), but time it spends sleeping, waiting on I/O or charged as CPU is virtual: the
`Executed` message comes back that much later. A crash point the simulator draws stops the
task's code where it is (`TaskCrash`), leaving the store as it was at that point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from dtq import taskrun
from dtq.actor import Execution
from dtq.store import Store
from dtq.tasktypes import Executed, TaskError

if TYPE_CHECKING:
    from transports.memory import Simulation


@attrs.define(kw_only=True)
class SimIO:
    """The simulated outside world of I/O tasks: a file system and canned HTTP responses."""

    files: dict[str, bytes] = attrs.field(factory=dict)
    http: dict[str, tuple[int, bytes]] = attrs.field(factory=dict)
    latency_ms: int = 5


class SimWorld:
    """A task's world in the simulator (`dtq.taskrun.TaskWorld`): time passes virtually."""

    def __init__(self, sim: Simulation) -> None:
        self._sim = sim
        self._elapsed_ms = 0

    @property
    def now_ms(self) -> int:
        return self._sim.now_ms + self._elapsed_ms

    def elapsed_ms(self) -> int:
        return self._elapsed_ms

    def sleep(self, ms: int) -> None:
        self._elapsed_ms += max(0, int(ms))

    def charge(self, ms: int) -> None:
        self._elapsed_ms += max(0, int(ms))

    def read_file(self, path: str) -> bytes:
        self._elapsed_ms += self._sim.io.latency_ms
        try:
            return self._sim.io.files[path]
        except KeyError:
            raise TaskError(f"no such file: {path}") from None

    def write_file(self, path: str, data: bytes) -> None:
        self._elapsed_ms += self._sim.io.latency_ms
        self._sim.io.files[path] = bytes(data)

    def http_get(self, url: str) -> tuple[int, bytes]:
        self._elapsed_ms += self._sim.io.latency_ms
        return self._sim.io.http.get(url, (404, b"not found"))


class TaskCrash(BaseException):
    """The node crashes at this point of a task's run (not an `Exception`: task code that
    catches every error still cannot swallow it)."""

    def __init__(self, point: str, elapsed_ms: int) -> None:
        super().__init__(point)
        self.point = point
        self.elapsed_ms = elapsed_ms
        """Virtual time the task had taken when it reached the point."""


def run_task(
    sim: Simulation, node: str, ex: Execution, *, store: Store, crash: Callable[[str], bool],
) -> tuple[Executed, int]:
    """Run a task's code now; its `Executed` message and the virtual time it took. Raises
    `TaskCrash` where `crash(point)` says the node crashes."""
    world = SimWorld(sim)

    def hook(point: str) -> None:
        if crash(point):
            raise TaskCrash(point, world.elapsed_ms())

    def record(kind: str, data: Mapping[str, Any]) -> None:
        sim.history.record(node, kind, sim.nodes[node].clock, data)

    done = taskrun.run_task(ex, world=world, store=store, record=record, crash=hook)
    return done, world.elapsed_ms()
