"""What the REST API stands on: the `ApiBackend` protocol and its two implementations.

* `RabbitBackend` — production: publishes with `dtq.client.submitter.Submitter` (publisher
  confirms) to the leader's RabbitMQ queue and reads the state from Redis (`RedisStore`).
* `SimBackend` — a whole simulated cluster in this process (`transports.memory.Simulation`), for
  tests and demos. Every use of the simulation holds one lock, so API threads may share it; after
  each submit or cancel it runs the simulation until the tasks concerned have finished, or a
  virtual-time budget is spent (`autorun`, `budget_ms`), and `advance(ms)` runs it on demand.

The rule: the API reads only through `store` and changes the cluster only through `submit` and
`cancel`, so it behaves the same on both. A backend that can also publish without holding a
thread (`AsyncSubmit`: `RabbitBackend`) lets the API's event loop await the broker's confirm.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, cast, runtime_checkable

import structlog

from dtq.coordinator import Coordinator, CoordinatorConfig
from dtq.envelope import COORDINATOR_QUEUE, WORK_QUEUE, Cancel
from dtq.errors import ConfigurationError, ConnectionLost, DtqError
from dtq.store import Store
from dtq.task import TaskSpec
from dtq.tasktypes import load_task_types
from dtq.worker import MAX_RESULT_BYTES, Worker

__all__ = ["ApiBackend", "AsyncSubmit", "RabbitBackend", "SimBackend"]


@runtime_checkable
class ApiBackend(Protocol):
    """The cluster as the API sees it."""

    @property
    def store(self) -> Store: ...

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        """Publish `Submit`s in this order; return once they are durably queued."""
        ...

    def cancel(self, task_id: str) -> None:
        """Publish a `Cancel`; the leader cancels the task if it has not started."""
        ...

    def queue_depths(self) -> dict[str, int]:
        """Messages waiting per queue (coordinator inbox, shared work queue, ...)."""
        ...

    def ready(self) -> bool:
        """Whether the store and the broker can be reached now."""
        ...

    def now_ms(self) -> int:
        """The cluster's clock, in milliseconds (virtual time on the simulator)."""
        ...


@runtime_checkable
class AsyncSubmit(Protocol):
    """A backend whose submissions can be awaited on an event loop."""

    async def submit_async(self, specs: Sequence[TaskSpec]) -> None:
        """`submit`, awaited: returns once the broker has confirmed every spec."""
        ...


# --- production ---------------------------------------------------------------------------------


@runtime_checkable
class Watchable(Protocol):
    """What the API asks of a transport beyond `dtq.transport.Transport`: whether it is
    connected, and how many messages wait in its queues."""

    ready: threading.Event

    def queue_depths(self, addresses: Sequence[str]) -> dict[str, int]: ...


class RabbitBackend:
    """Submissions over RabbitMQ, state from Redis, under one namespace."""

    def __init__(
        self, broker_url: str | None = None, store_url: str | None = None,
        namespace: str = "dtq", *, name: str | None = None, confirm_timeout_s: float = 10.0,
        start_timeout_s: float = 10.0, quorum: bool | None = None,
    ) -> None:
        from dtq.client.submitter import Submitter
        from dtq.runtime.process import broker_url as default_broker
        from dtq.runtime.process import store_url as default_store
        from transports.registry import open_store

        self.namespace = namespace
        self.confirm_timeout_s = confirm_timeout_s
        self._store = open_store(default_store(store_url), prefix=namespace)
        try:
            self.submitter = Submitter(default_broker(broker_url), namespace=namespace,
                                       name=name or f"api-{os.getpid()}",
                                       start_timeout_s=start_timeout_s, quorum=quorum)
        except BaseException:
            self._store.close()
            raise
        transport = self.submitter.transport
        if not isinstance(transport, Watchable):
            self.close()
            raise ConfigurationError(f"the API needs a transport with `ready` and "
                                     f"`queue_depths`, not a {type(transport).__name__}")
        self._broker = transport
        self._settler: _Settler | None = None

    @property
    def store(self) -> Store:
        return self._store

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        self.submitter.submit(specs, timeout_s=self.confirm_timeout_s)

    async def submit_async(self, specs: Sequence[TaskSpec]) -> None:
        """`submit` without a thread: the confirm (grouped with those of concurrent
        submissions) completes a future on the running loop."""
        loop = asyncio.get_running_loop()
        settler = self._settler
        if settler is None or settler.loop is not loop:
            settler = self._settler = _Settler(loop)
        confirmed: asyncio.Future[None] = loop.create_future()
        self.submitter.submit_nowait(specs, functools.partial(settler.settle, confirmed))
        try:
            await asyncio.wait_for(asyncio.shield(confirmed), self.confirm_timeout_s)
        except TimeoutError:
            raise ConnectionLost(f"RabbitMQ did not confirm {len(specs)} message(s) within "
                                 f"{self.confirm_timeout_s:.0f} s") from None

    def cancel(self, task_id: str) -> None:
        self.submitter.cancel(task_id, timeout_s=self.confirm_timeout_s)

    def queue_depths(self) -> dict[str, int]:
        return self._broker.queue_depths([COORDINATOR_QUEUE, WORK_QUEUE, "dead"])

    def ready(self) -> bool:
        try:
            self._store.epoch()
        except DtqError:
            return False
        return self._broker.ready.is_set()

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def close(self) -> None:
        self.submitter.close()
        self._store.close()


class _Settler:
    """Futures of one event loop to complete, handed over from the transport's I/O thread: the
    loop is woken once for all those confirmed together, not once per future."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._ready: list[tuple[asyncio.Future[None], BaseException | None]] = []

    def settle(self, future: asyncio.Future[None], exc: BaseException | None) -> None:
        with self._lock:
            self._ready.append((future, exc))
            if len(self._ready) > 1:  # a wake-up is on its way already
                return
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
        for future, exc in ready:
            if future.done():  # given up on (timed out, or the request went away)
                continue
            if exc is None:
                future.set_result(None)
            else:
                future.set_exception(exc)


# --- the simulator ------------------------------------------------------------------------------


class _LockedStore:
    """A store whose every call holds the simulation's lock (the simulator is single-threaded)."""

    def __init__(self, store: Store, lock: threading.RLock) -> None:
        self._store = store
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return locked


def _stderr_log() -> Any:
    """The configured logger, else warnings on stderr (stdout belongs to the program)."""
    if structlog.is_configured():
        return structlog.get_logger("dtq.sim")
    return structlog.wrap_logger(structlog.PrintLogger(sys.stderr),
                                 wrapper_class=structlog.make_filtering_bound_logger(30))


class SimBackend:
    """An in-process simulated cluster behind the API (tests, demos).

    `autorun` (default on): each submit or cancel runs the simulation until the tasks it names
    are finished, or `budget_ms` of virtual time has passed. Turn it off to keep tasks unstarted
    and drive time yourself with `advance`.
    """

    def __init__(
        self, *, seed: int = 0, workers: int = 2, coordinators: int = 1,
        task_modules: Iterable[str] = (), autorun: bool = True, budget_ms: int = 60_000,
        result_ttl_ms: int | None = None, max_result_bytes: int = MAX_RESULT_BYTES,
        log: Any = None,
    ) -> None:
        from transports.memory import Simulation

        self.lock = threading.RLock()
        self.autorun = autorun
        self.budget_ms = budget_ms
        self.sim = Simulation(seed, log=log or _stderr_log())
        self._store = cast(Store, _LockedStore(cast(Store, self.sim.store), self.lock))
        types = load_task_types(tuple(task_modules))
        config = CoordinatorConfig()
        for i in range(1, coordinators + 1):
            name = f"coordinator-{i}"
            self.sim.spawn(name, functools.partial(Coordinator, name, config),
                           groups=("coordinators",))
        for i in range(1, workers + 1):
            name = f"worker-{i}"
            self.sim.spawn(name, functools.partial(Worker, name, types,
                                                   result_ttl_ms=result_ttl_ms,
                                                   max_result_bytes=max_result_bytes),
                           groups=("workers",), prefetch=1)

    @property
    def store(self) -> Store:
        return self._store

    def submit(self, specs: Sequence[TaskSpec]) -> None:
        with self.lock:
            for spec in specs:
                self.sim.submit(spec)
            if self.autorun:
                self.run_until_finished([s.id for s in specs])

    def cancel(self, task_id: str) -> None:
        from transports.memory import CLIENT

        with self.lock:
            self.sim.send(CLIENT, COORDINATOR_QUEUE, Cancel(task_id=task_id))
            if self.autorun:
                self.run_until_finished([task_id])

    def run_until_finished(self, task_ids: Iterable[str], budget_ms: int | None = None) -> bool:
        """Run until every task named has finished, or the budget is spent; whether they did."""
        waiting = set(task_ids)

        def finished() -> bool:
            for task_id in list(waiting):
                rec = self.sim.store.get_task(task_id)
                if rec is not None and rec.state.terminal:
                    waiting.discard(task_id)
            return not waiting

        return self.run_until(finished, budget_ms)

    def run_until(self, condition: Callable[[], bool], budget_ms: int | None = None) -> bool:
        """Run the simulation until `condition()` holds or the budget of virtual time is spent."""
        with self.lock:
            if condition():
                return True
            budget = self.budget_ms if budget_ms is None else budget_ms
            self.sim.run(until_ms=self.sim.now_ms + budget, stop=condition)
            return condition()

    def advance(self, ms: int) -> None:
        """Let `ms` of virtual time pass."""
        with self.lock:
            self.sim.run(until_ms=self.sim.now_ms + ms)

    def queue_depths(self) -> dict[str, int]:
        with self.lock:
            return {name: len(q.ready) if (q := self.sim.queues.get(name)) else 0
                    for name in (COORDINATOR_QUEUE, WORK_QUEUE)}

    def ready(self) -> bool:
        return True

    def now_ms(self) -> int:
        with self.lock:
            return self.sim.now_ms
