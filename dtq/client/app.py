"""Tasks from Python without the API server: an application object, task handles, DAGs.

    import dtq
    from wordcount import WordCount

    app = dtq.connect()                       # $DTQ_BROKER_URL, $DTQ_STORE_URL, namespace "dtq"
    handle = WordCount.submit(text="a b a")   # or app.submit(WordCount, text="a b a")
    handle.result(timeout=10)                 # {'a': 2, 'b': 1}

`dtq.simulate()` is the same `App` over a simulated cluster in this process (the pytest fixture
`dtq_sim` of `dtq.testing.pytest_plugin` hands one to a test), so code written against one runs
unchanged on the other.

The rule: a submission is checked by the REST API's own code before anything is published
(`dtq.client.submissions.Submissions`: the spec rules of `dtq.task` the leader applies too, unknown
dependencies, idempotency keys), and by the task type's `validate` wherever the type is known
here (its class was submitted, or `tasks=` named it; when `tasks=` is given an unknown type name
is refused too). A refusal raises `ValidationError` (or `ConflictError`) naming the field, and
nothing is published; a DAG is checked whole and published in one confirmed batch.

A handle learns of its task's end from the notice the cluster publishes on the store
(`dtq.client.submitter`, `FinishedListener`), and reads the store besides, since notices are best
effort; on the simulator, waiting runs the simulation (virtual time) until the task has ended.
A wait past its timeout raises `WaitTimeout` naming the task; `result()` of a task that failed
or was cancelled raises `TaskFailed` with its reason.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar

from dtq.client.backend import ApiBackend, RabbitBackend, SimBackend
from dtq.client.errors import ApiError
from dtq.client.http import TaskFailed, WaitTimeout
from dtq.client.submissions import RecentSubmissions, Submissions
from dtq.errors import ConflictError, DtqError, ValidationError
from dtq.store import Store
from dtq.task import TaskState
from dtq.tasktypes import TaskActor, load_task_types
from dtq.worker import Worker

if TYPE_CHECKING:
    from dtq.checker import CheckResult
    from transports.memory import Simulation

__all__ = [
    "OPTIONS", "App", "Dag", "DagTask", "ResultGone", "SimApp", "TaskFailed", "TaskHandle",
    "WaitTimeout", "connect", "default_app", "simulate",
]

JSON = Any
TaskRef = type[TaskActor] | str
"""A task type: its `TaskActor` class, or its type name."""
T = TypeVar("T")

OPTIONS = frozenset({"deps", "priority", "max_attempts", "timeout_ms", "idempotency_key",
                     "metadata", "task_id"})
"""Keywords of `submit` that set the task's options; every other keyword is a payload field."""

_UNCHECKED = TaskActor()
"""Stands for a type of the cluster's that this app does not know: any payload goes."""

SIM_WAIT_S = 3600.0
"""How long (virtual seconds) a wait on the simulator runs when given no timeout."""
RECORD_CATCH_UP_MS = 5000
"""How long (virtual) a wait on the simulator lets the leader record a success already stored."""


class ResultGone(DtqError):
    """The task succeeded, but its stored result has expired (the workers' result TTL)."""


# --- building a submission ------------------------------------------------------------------


def type_name(task: TaskRef) -> str:
    if isinstance(task, str):
        return task
    if not (isinstance(task, type) and issubclass(task, TaskActor)) or not task.type_name:
        raise ValidationError("type", f"{task!r} is not a TaskActor subclass with a type_name")
    return task.type_name


def _payload(payload: JSON, fields: Mapping[str, JSON]) -> JSON:
    """`payload` with the keyword fields, as JSON carries it (tuples become lists, as they do
    on the broker, so the simulator sees what real workers see)."""
    if fields and payload is not None and not isinstance(payload, Mapping):
        raise ValidationError("payload", "keyword fields need an object payload (or none)")
    if fields:
        payload = {**(payload or {}), **fields}
    return _as_json(payload, "payload")


def _as_json(value: JSON, field: str) -> JSON:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValidationError(field, f"must be JSON: {exc}") from None


def _body(task: TaskRef, payload: JSON, fields: Mapping[str, Any],
          dep: Callable[[Any], str]) -> dict[str, Any]:
    """The JSON body the REST API would receive for this call."""
    options = {k: v for k, v in fields.items() if k in OPTIONS and v is not None}
    body: dict[str, Any] = {
        "type": type_name(task),
        "payload": _payload(payload, {k: v for k, v in fields.items() if k not in OPTIONS}),
    }
    if "task_id" in options:
        body["id"] = options.pop("task_id")
    body["deps"] = [dep(d) for d in _listed(options.pop("deps", ()))]
    return {**body, **options}


def _listed(deps: Any) -> list[Any]:
    if isinstance(deps, str | TaskHandle | DagTask):
        return [deps]
    if not isinstance(deps, Iterable):
        raise ValidationError("deps", "must be a list of task handles or ids")
    return list(deps)


def _handle_id(d: Any) -> str:
    if isinstance(d, TaskHandle):
        return d.id
    if isinstance(d, str):
        return d
    raise ValidationError("deps", f"a dependency is a task handle or a task id, not {d!r}")


def _refusal(exc: ApiError) -> DtqError:
    """The Python error for the API's refusal of a submission (the same words, no HTTP)."""
    if exc.status == 409:
        return ConflictError(exc.message)
    if exc.status in (400, 413, 422):
        return ValidationError(exc.field or "body", exc.message)
    return exc


# --- waiting for ends -----------------------------------------------------------------------


End = tuple[str, str | None]
"""(final state, reason)"""


def stored_end(store: Store, task_id: str) -> End | None:
    """A task's end as the store shows it: a final record, or a stored successful result (a
    worker stores the result before the leader records the success)."""
    rec = store.get_task(task_id)
    if rec is not None and rec.state.terminal:
        return rec.state.value, rec.reason
    res = store.get_result(task_id)
    if res is not None and res.ok:
        return TaskState.SUCCEEDED.value, None
    return None


class _Notices:
    """Ends heard from the cluster's notices, and waits on them with the store as a backstop."""

    def __init__(self, store: Store, capacity: int = 100_000) -> None:
        self.store = store
        self.capacity = capacity
        self.ends: OrderedDict[str, End] = OrderedDict()
        self.changed = threading.Condition()

    def heard(self, task_id: str, state: str, reason: str | None) -> None:
        with self.changed:
            self.ends[task_id] = (state, reason)
            while len(self.ends) > self.capacity:
                self.ends.popitem(last=False)
            self.changed.notify_all()

    def known(self, task_id: str) -> End | None:
        with self.changed:
            return self.ends.get(task_id)

    def wait(self, task_id: str, timeout_s: float | None) -> End | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        poll_s = 0.05
        while True:
            end = self.known(task_id) or stored_end(self.store, task_id)
            if end is not None:
                return end
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            with self.changed:
                if task_id not in self.ends:
                    # A notice wakes us at once; the store is read again now and then, since a
                    # notice published while the listener was reconnecting is lost.
                    self.changed.wait(poll_s if left is None else min(poll_s, left))
            poll_s = min(poll_s * 2, 1.0)


# --- handles ----------------------------------------------------------------------------------


class TaskHandle:
    """A submitted task: its `id`, `state`, `wait()`, `result()`, `cancel()`, `then()`."""

    def __init__(self, app: App, task_id: str) -> None:
        self.app = app
        self.id = task_id

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskHandle) and (other.app, other.id) == (self.app, self.id)

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def state(self) -> str:
        """The task's state now: submitted, pending, ready, dispatched, running, succeeded,
        failed or cancelled (does not wait, and does not run the simulator)."""
        end = self.app._known_end(self.id) or stored_end(self.app.store, self.id)
        return end[0] if end is not None else self.app._checked(
            lambda: self.app._submissions.state_of(self.id))

    def wait(self, timeout: float | None = None) -> str:
        """Wait until the task has ended (`timeout` seconds at most: virtual seconds on the
        simulator; None waits as long as it takes) and return its final state. Raises
        `WaitTimeout` naming the task and its state if it has not ended in time."""
        return self._end(timeout)[0]

    def result(self, timeout: float | None = None) -> JSON:
        """The task's value, once it has succeeded (waiting as `wait` does). Raises `TaskFailed`
        with the reason if it failed or was cancelled, `WaitTimeout` if it has not ended in
        time, `ResultGone` if its result expired."""
        state, reason = self._end(timeout)
        if state != TaskState.SUCCEEDED.value:
            raise TaskFailed(self.id, state, reason)
        res = self.app.store.get_result(self.id)
        if res is None:
            raise ResultGone(f"task {self.id} succeeded, but its result has expired")
        return self.app._value(res.value)

    def cancel(self) -> str:
        """Ask the leader to cancel the task if it has not started; its state then. Raises
        `ConflictError` if it has started or ended."""
        return self.app._checked(lambda: self.app._submissions.cancel(self.id)).state

    def then(self, task: TaskRef, payload: JSON = None, /, **fields: Any) -> TaskHandle:
        """Submit a task that runs after this one succeeded (it gets this one's result in
        `task.deps`); the options and fields are `App.submit`'s."""
        deps = [self, *_listed(fields.pop("deps", ()))]
        return self.app.submit(task, payload, deps=deps, **fields)

    def _end(self, timeout: float | None) -> End:
        end = self.app._wait(self.id, timeout)
        if end is None:
            waited = SIM_WAIT_S if timeout is None else timeout
            raise WaitTimeout(self.id, self.state, waited)
        return end


# --- DAGs -------------------------------------------------------------------------------------


class DagTask:
    """A task of a `Dag` not yet submitted; `handle` once the DAG is."""

    def __init__(self, dag: Dag, name: str) -> None:
        self.dag = dag
        self.name = name

    def __repr__(self) -> str:
        return f"<DagTask {self.name}>"

    def then(self, task: TaskRef, payload: JSON = None, /, **fields: Any) -> DagTask:
        """Add a task to the same DAG that runs after this one."""
        deps = [self, *_listed(fields.pop("deps", ()))]
        return self.dag.add(task, payload, deps=deps, **fields)

    @property
    def handle(self) -> TaskHandle:
        handles = self.dag.handles
        if handles is None:
            raise DtqError(f"the DAG of task {self.name} has not been submitted yet")
        return handles[self.name]


class Dag:
    """Tasks submitted together: every one is checked, the graph too (unknown dependencies,
    cycles), before any is published; then all go out in one confirmed batch, in dependency
    order. `with app.dag() as d:` submits on leaving the block."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.tasks: dict[str, dict[str, Any]] = {}
        self.classes: list[TaskRef] = []
        self.handles: dict[str, TaskHandle] | None = None

    def add(self, task: TaskRef, payload: JSON = None, /, *, name: str | None = None,
            **fields: Any) -> DagTask:
        """Add a task (options and fields as `App.submit`'s; `deps` may name tasks of this DAG,
        handles, or ids). `name` is its name in the DAG (default: its type and its position)."""
        if self.handles is not None:
            raise DtqError("this DAG has been submitted; start another with app.dag()")
        name = name or f"{type_name(task)}-{len(self.tasks) + 1}"
        if name in self.tasks:
            raise ValidationError(f"tasks.{name}", "a DAG names each task once")
        self.tasks[name] = _body(task, payload, fields, self._dep)
        self.classes.append(task)
        return DagTask(self, name)

    def _dep(self, d: Any) -> str:
        if isinstance(d, DagTask):
            if d.dag is not self:
                raise ValidationError("deps", f"task {d.name} belongs to another DAG")
            return d.name
        return _handle_id(d)

    def submit(self) -> dict[str, TaskHandle]:
        """Check and publish every task; their handles by name (also `DagTask.handle`)."""
        if self.handles is not None:
            return self.handles
        types = self.app._types_for(*self.classes)
        ids = self.app._checked(
            lambda: self.app._submissions_with(types).submit_dag({"tasks": self.tasks}, None))
        self.handles = {name: TaskHandle(self.app, task_id) for name, task_id in ids.items()}
        return self.handles

    def __enter__(self) -> Dag:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.submit()


# --- the application ----------------------------------------------------------------------------


_default: App | None = None
_default_lock = threading.Lock()


def default_app() -> App:
    """The app `TaskActor.submit` uses: the last one `dtq.connect` or `dtq.simulate` made (or
    made default with `set_default`/`as_default`) and not closed."""
    app = _default
    if app is None:
        raise DtqError("no dtq app to submit with: call dtq.connect(...) first (in tests, use "
                       "the dtq_sim fixture or dtq.simulate())")
    return app


class App:
    """Submits tasks to one cluster (namespace) and waits for their ends. Thread-safe."""

    def __init__(
        self, backend: ApiBackend, *, task_types: Mapping[str, TaskActor] | None = None,
        wait: Callable[[str, float | None], End | None],
        known_end: Callable[[str], End | None] = lambda _: None,
        close: Callable[[], None] = lambda: None,
    ) -> None:
        self.backend = backend
        self.task_types = dict(task_types) if task_types is not None else None
        """The task types this app knows (None: any name goes, the cluster checks it)."""
        self._wait = wait
        self._known_end = known_end
        self._close = close
        self._recent = RecentSubmissions()
        self._submissions = Submissions(backend=backend, recent=self._recent)
        self._instances: dict[type[TaskActor], TaskActor] = {}

    @property
    def store(self) -> Store:
        return self.backend.store

    # --- submitting -----------------------------------------------------------------------

    def submit(self, task: TaskRef, payload: JSON = None, /, **fields: Any) -> TaskHandle:
        """Check and publish one task; its handle.

        `task` is a `TaskActor` subclass or a type name. The payload is `payload` and/or the
        keyword fields (`app.submit(WordCount, text="a b")` sends `{"text": "a b"}`). These
        keywords are options, not fields: `deps` (handles or task ids), `priority` (0-9),
        `max_attempts`, `timeout_ms`, `idempotency_key`, `metadata`, `task_id`; a payload with
        a field of those names goes in `payload`."""
        body = _body(task, payload, fields, _handle_id)
        types = self._types_for(task)
        accepted = self._checked(lambda: self._submissions_with(types).submit_task(body, None))
        return TaskHandle(self, accepted.id)

    def dag(self) -> Dag:
        """A DAG to build with `add` (and `DagTask.then`), then `submit`."""
        return Dag(self)

    def get(self, task_id: str) -> TaskHandle:
        """The handle of a task submitted earlier (by any client)."""
        return TaskHandle(self, task_id)

    def _submissions_with(self, types: Mapping[str, TaskActor] | None) -> Submissions:
        return Submissions(backend=self.backend, task_types=types, recent=self._recent)

    def _instance(self, cls: type[TaskActor]) -> TaskActor:
        inst = self._instances.get(cls)
        if inst is None:
            inst = self._instances[cls] = cls()
        return inst

    def _types_for(self, *tasks: TaskRef) -> dict[str, TaskActor] | None:
        """The task types to check these tasks against: those this app knows and those of the
        classes given; None if neither (only the spec rules apply). An unknown type name is
        refused when the app knows its types."""
        local = {type_name(t): self._instance(t) for t in tasks if not isinstance(t, str)}
        self._register(local)
        names = {t for t in tasks if isinstance(t, str)}
        if self.task_types is None:
            # The cluster's types are not known here: names go unchecked (the leader checks).
            return {**dict.fromkeys(names, _UNCHECKED), **local} if local else None
        types = {**self.task_types, **local}
        unknown = sorted(names - types.keys())
        if unknown:
            known = ", ".join(sorted(types))
            raise ValidationError("type", f"unknown task type {unknown[0]!r} (this app knows "
                                  f"{known}: submit the class, or name its module in tasks=)")
        return types

    def _register(self, types: Mapping[str, TaskActor]) -> None:
        """A hook for clusters that can run a class as soon as it is submitted (the simulator)."""

    def _value(self, stored: JSON) -> JSON:
        """A stored result as the caller gets it (the simulator's store keeps Python objects)."""
        return stored

    def _checked(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ApiError as exc:
            raise _refusal(exc) from None

    # --- default app, life cycle ----------------------------------------------------------

    def set_default(self) -> Self:
        """Make this the app `TaskActor.submit` uses."""
        global _default
        with _default_lock:
            _default = self
        return self

    @contextlib.contextmanager
    def as_default(self) -> Iterator[Self]:
        """This app is the default inside the block, the previous one after it."""
        global _default
        with _default_lock:
            before, _default = _default, self
        try:
            yield self
        finally:
            with _default_lock:
                _default = before

    def close(self) -> None:
        global _default
        with _default_lock:
            if _default is self:
                _default = None
        self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _task_types(tasks: Iterable[str | type[TaskActor]]) -> dict[str, TaskActor] | None:
    """The built-in types and those of `tasks` (module names, imported from the current
    directory too, or classes); None if `tasks` is empty."""
    from dtq.runtime.process import load_task_modules

    items = list(tasks)
    if not items:
        return None
    types: dict[str, TaskActor] = load_task_modules([t for t in items if isinstance(t, str)])
    types.update({type_name(t): t() for t in items if not isinstance(t, str)})
    return types


def connect(
    broker: str | None = None, store: str | None = None, *, namespace: str = "dtq",
    tasks: Iterable[str | type[TaskActor]] = (), name: str | None = None,
    confirm_timeout_s: float = 10.0, start_timeout_s: float = 10.0, default: bool = True,
) -> App:
    """An app on a running cluster: RabbitMQ at `broker` and Redis at `store` (default
    $DTQ_BROKER_URL and $DTQ_STORE_URL, else the local defaults), the `namespace` of
    `dtq cluster --namespace`. `tasks` (module names or classes) are the types the cluster
    runs: with them, a submission of another type is refused here. It becomes the default app
    (`TaskActor.submit`) unless `default=False`. Close it (or use `with`)."""
    from dtq.runtime.process import store_url
    from transports.redis import FinishedListener

    types = _task_types(tasks)
    client = name or f"app-{os.getpid()}-{os.urandom(4).hex()}"
    backend = RabbitBackend(broker, store, namespace, name=client,
                            confirm_timeout_s=confirm_timeout_s, start_timeout_s=start_timeout_s)
    notices = _Notices(backend.store)
    try:
        # Ends are published to this client's channel once its submissions name it (reply_to).
        backend.submitter.listener = FinishedListener(
            store_url(store), prefix=namespace, client=client, on_notice=notices.heard,
            timeout_s=start_timeout_s)
    except BaseException:
        backend.close()
        raise
    app = App(backend, task_types=types, wait=notices.wait, known_end=notices.known,
              close=backend.close)
    return app.set_default() if default else app


# --- the simulator ------------------------------------------------------------------------------


class SimApp(App):
    """An `App` over a simulated cluster in this process (`transports.memory.Simulation`):
    deterministic for a seed, in virtual time. Waiting on a handle runs the simulation until
    the task has ended. The workers run the built-in types, those of `tasks=`, and every task
    class submitted. Faults: `kill`, `restart`, `pause`, `resume`, `partition`, `heal`;
    `advance` lets virtual time pass; `check` runs the invariant checker on the history."""

    def __init__(
        self, *, seed: int = 0, workers: int = 2, coordinators: int = 1,
        tasks: Iterable[str | type[TaskActor]] = (), concurrency: int | None = None,
    ) -> None:
        backend = SimBackend(seed=seed, workers=0, coordinators=coordinators, autorun=False)
        self.sim_backend = backend
        self.seed = seed
        self.run_types: dict[str, TaskActor] = {**load_task_types(),
                                                 **(_task_types(tasks) or {})}
        self.workers = [f"worker-{i}" for i in range(1, workers + 1)]
        self.coordinators = [f"coordinator-{i}" for i in range(1, coordinators + 1)]
        with backend.lock:
            for worker in self.workers:
                # The factory reads run_types when a worker (re)starts: classes submitted later
                # reach restarted workers too.
                backend.sim.spawn(worker, functools.partial(self._worker, worker, concurrency),
                                  groups=("workers",), prefetch=1)
        super().__init__(backend, task_types=self.run_types, wait=self._run_until_end)

    def _worker(self, name: str, concurrency: int | None) -> Worker:
        return Worker(name, self.run_types, concurrency=concurrency)

    @property
    def sim(self) -> Simulation:
        return self.sim_backend.sim

    @property
    def now_ms(self) -> int:
        return self.sim_backend.now_ms()

    def _register(self, types: Mapping[str, TaskActor]) -> None:
        new = {k: v for k, v in types.items() if self.run_types.get(k) is not v}
        if not new:
            return
        with self.sim_backend.lock:
            self.run_types.update(new)
            if self.task_types is not None:
                self.task_types.update(new)
            for worker in self.workers:
                cell = self.sim.nodes[worker].cell
                if cell is not None and isinstance(cell.actor, Worker):
                    cell.actor.task_types.update(new)

    def _value(self, stored: JSON) -> JSON:
        return _as_json(stored, "result")  # as it comes from Redis: tuples are lists

    def _run_until_end(self, task_id: str, timeout_s: float | None) -> End | None:
        budget_ms = int(1000 * (SIM_WAIT_S if timeout_s is None else timeout_s))
        store = self.store
        if self.sim_backend.run_until(lambda: stored_end(store, task_id) is not None, budget_ms):
            # A success is stored before the leader records it: let the record catch up too,
            # as it does within milliseconds unless the leader is cut off.
            self.sim_backend.run_until_finished([task_id], RECORD_CATCH_UP_MS)
        return stored_end(store, task_id)

    # --- faults and time ------------------------------------------------------------------

    def _locked(self, fn: Callable[[], object]) -> None:
        with self.sim_backend.lock:
            fn()

    def kill(self, name: str, *, restart: bool = False) -> None:
        """Crash a node (its volatile state is lost, its unacked deliveries return to their
        queues); with `restart`, it comes back after the simulation's restart delay (1 s)."""
        self._locked(lambda: self.sim.crash(name, restart=restart))

    def restart(self, name: str) -> None:
        self._locked(lambda: self.sim.restart(name))

    def pause(self, name: str) -> None:
        """Freeze a node (SIGSTOP): it does nothing; the broker and the leader notice later."""
        self._locked(lambda: self.sim.pause(name))

    def resume(self, name: str) -> None:
        self._locked(lambda: self.sim.resume(name))

    def partition(self, side_a: Iterable[str], side_b: Iterable[str]) -> None:
        """Cut every member of side_a from every member of side_b: node names, the groups
        "workers" and "coordinators", "broker", "store"."""
        a, b = list(side_a), list(side_b)
        self._locked(lambda: self.sim.partition(a, b))

    def heal(self) -> None:
        self._locked(self.sim.heal)

    def advance(self, ms: int) -> None:
        """Let `ms` milliseconds of virtual time pass."""
        self.sim_backend.advance(ms)

    def check(self, *, settle_ms: int = 60_000) -> CheckResult:
        """The invariant checker's verdict (`.ok`, `.violations`, `.counts`) once every task
        submitted has a final record, or `settle_ms` of virtual time has passed; a task that
        has not ended by then counts as lost."""
        from dtq.checker import check

        with self.sim_backend.lock:
            submitted = [e.data["task"] for e in self.sim.history.events if e.kind == "submit"]
            self.sim_backend.run_until_finished(submitted, settle_ms)
            return check(self.sim.history.events)


def simulate(
    *, seed: int = 0, workers: int = 2, coordinators: int = 1,
    tasks: Iterable[str | type[TaskActor]] = (), concurrency: int | None = None,
    default: bool = True,
) -> SimApp:
    """An app over a simulated cluster in this process (see `SimApp`). It becomes the default
    app unless `default=False`."""
    app = SimApp(seed=seed, workers=workers, coordinators=coordinators, tasks=tasks,
                 concurrency=concurrency)
    return app.set_default() if default else app
