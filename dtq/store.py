"""The Store protocol: the atomic, fenced operations the actors need, and nothing more.

Two kinds of operation:

* immediate, atomic ones that answer (claim an idempotency key, first-writer-wins result,
  leases, `once` markers begun then done, reads);
* fenced writes (`Write` values) that a handler records with `ctx.write`; the runtime applies a
  handler's writes in one batch with `Store.apply(writes, epoch=...)`, which applies the whole
  batch only when `epoch` is the store's current epoch and the lease is held at that epoch, and
  refuses it otherwise with `StaleEpoch` (`StoreDataLost` when the epoch or lease keys are gone).

Epochs never go back: a lease is taken at max(the store's counter, the candidate's floor) + 1,
the floor being the highest epoch the candidate has seen. A namespace carries an incarnation
marker, a random id the first leader writes once (set-if-absent); every process remembers the
marker it saw, and a missing or changed marker means the store lost its data (see
`dtq.election` and the coordinator's recovery).

`transports/memory.py` implements it in memory for the simulator, `transports/redis.py` on Redis.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from dtq.errors import StaleEpoch
from dtq.task import TaskRecord, TaskResult, TaskState

LEADER_LEASE = "coordinator"
DEFAULT_RETENTION_MS = 86_400_000
"""How long a finished task's record, result, index entries and dependency key are kept after
it ends (one day, like Celery's results), unless the namespace sets its own retention: a
namespace setting kept in the store (`settings` on Redis, `SimStore.retention_ms`), read by the
fenced write that ends a task; 0 keeps them forever. Expired state is removed by later fenced
writes (a bounded number each) or by `dtq namespace purge`."""


@attrs.frozen(kw_only=True)
class PutTask:
    """Create or replace a task record."""

    record: TaskRecord


@attrs.frozen(kw_only=True)
class AddDependents:
    """Remember that `dependents` wait on `task_id` (edges of the DAG, for rebuilding)."""

    task_id: str
    dependents: tuple[str, ...]


@attrs.frozen(kw_only=True)
class Notify:
    """Tell a waiting client that a task ended, once the batch it is in is applied (a refused
    batch notifies nobody). On Redis: a PUBLISH on `finished_channel(prefix, client)`."""

    client: str
    task_id: str
    state: str
    reason: str | None = None


@attrs.frozen(kw_only=True)
class NoteDataLoss:
    """Keep a report of a store data loss (what was lost, what was recovered) in the store, for
    `GET /cluster`; written with the batch that re-seeds the store."""

    report: Mapping[str, Any]


Write = PutTask | AddDependents | Notify | NoteDataLoss


class StoreDataLost(StaleEpoch):
    """A fenced write found the store's epoch or lease keys missing: the store lost its data
    (a restart without persistence). Nothing was written."""


def finished_channel(prefix: str, client: str) -> str:
    """The pub/sub channel on which a client hears that its tasks ended."""
    return f"{prefix}:finished:{client}"


def notice_json(task_id: str, state: str, reason: str | None = None) -> str:
    """A `Notify` as published: {"task_id", "state", "reason"}."""
    return json.dumps({"task_id": task_id, "state": state, "reason": reason},
                      separators=(",", ":"))


@attrs.frozen(kw_only=True)
class ResultItem:
    """One result for `Store.put_results`: `put_result`'s arguments."""

    result: TaskResult
    ttl_ms: int | None = None
    notify: str | None = None


@attrs.frozen(kw_only=True)
class ResultWrite:
    """The outcome of a first-writer-wins result write."""

    stored: TaskResult | None
    """The result that holds now (None when nothing is stored)."""
    created: bool
    """This call stored its result."""
    stale: bool = False
    """Refused because the task was re-dispatched as a newer attempt (a late result)."""


OnceState = Literal["new", "in_doubt", "done"]
"""What `Store.once_begin` found: no mark, a run's begun mark never recorded done, done."""


@attrs.frozen(kw_only=True)
class Lease:
    name: str
    holder: str
    epoch: int
    expires_ms: int


@attrs.frozen(kw_only=True)
class WorkerInfo:
    name: str
    last_heartbeat_ms: int
    state: str = "alive"
    running: tuple[str, ...] = ()
    epoch: int = 0
    """The highest leader epoch the worker has seen: a floor for the next lease after a data
    loss, when the store's own epoch counter is gone."""
    incarnation: str | None = None
    """The store incarnation marker the worker knows (kept while the store shows none)."""


@runtime_checkable
class Store(Protocol):
    # records ------------------------------------------------------------------------------
    def get_task(self, task_id: str) -> TaskRecord | None: ...

    def scan_tasks(
        self, *, states: Collection[TaskState] | None = None, task_type: str | None = None,
        after: str | None = None, limit: int = 1000,
    ) -> list[TaskRecord]:
        """Records ordered by id, starting after id `after` (cursor pagination)."""
        ...

    def scan_unfinished(self, *, after: str | None = None, limit: int = 1000) -> list[TaskRecord]:
        """Records not in a terminal state, ordered by id, starting after id `after`: an index
        that `apply` keeps with the records (a record entering a terminal state leaves it), so
        a new leader's load costs what is unfinished, not the whole history."""
        ...

    def dependents(self, task_id: str) -> tuple[str, ...]: ...

    def apply(self, writes: Sequence[Write], *, epoch: int, lease: str = LEADER_LEASE) -> int:
        """Apply all writes atomically and return the epoch the store was at, or apply none:
        `StaleEpoch` unless `epoch` equals the lease's current epoch and the lease is held at
        it; `StoreDataLost` when `epoch` > 0 and the epoch or lease key is missing. Epoch 0
        (never fenced) is accepted only while the store has no epoch for the lease."""
        ...

    # idempotency and exactly-once ---------------------------------------------------------
    def claim_key(self, key: str, task_id: str, fingerprint: str) -> tuple[str, str]:
        """Bind key to (task_id, fingerprint) unless bound; return the binding that holds."""
        ...

    def put_result(
        self, result: TaskResult, *, ttl_ms: int | None = None, notify: str | None = None,
    ) -> ResultWrite:
        """First writer wins, and late attempts lose: refused when a result is already stored,
        when the task's record names a newer attempt than `result.attempt`, or when the leader
        ended the task failed or cancelled (and told its client so). With `notify`, a
        stored result also tells that client the task succeeded (as `Notify` does)."""
        ...

    def put_results(self, items: Sequence[ResultItem]) -> list[ResultWrite]:
        """`put_result` for each item, in order, in one round trip."""
        ...

    def get_result(self, task_id: str) -> TaskResult | None: ...

    def get_results(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        """The stored results among `task_ids` (one round trip), by task id."""
        ...

    def once_begin(self, key: str, owner: str) -> OnceState:
        """Begin the once-effect `key` for `owner` (a run, "task#attempt"), atomically.

        "done" when the effect was recorded done: nothing changes. Otherwise the key is marked
        begun by `owner` and the answer says what was there: "new" (nothing) or "in_doubt"
        (begun by a run that never recorded it done, which may or may not have run it)."""
        ...

    def once_done(self, key: str, owner: str) -> None:
        """Record the once-effect `key` done by `owner` (whatever run began it). A done mark is
        final: it is never undone, and a second `once_done` leaves the first owner."""
        ...

    # leases and fencing -------------------------------------------------------------------
    def acquire_lease(
        self, name: str, holder: str, ttl_ms: int, *, floor: int = 0,
        incarnation: str | None = None, above_clock: bool = False,
    ) -> int | None:
        """Take a free or expired lease at epoch max(counter, `floor`) + 1; the new epoch, or
        None if held, or (with `incarnation`) if the store's marker is not `incarnation`. With
        `above_clock` (a namespace starting again after a loss nobody recovered), the epoch is
        also above the store's clock in ms: above every epoch that can have existed before."""
        ...

    def renew_lease(
        self, name: str, holder: str, epoch: int, ttl_ms: int, *,
        incarnation: str | None = None,
    ) -> bool:
        """Extend the lease if `holder` holds it at `epoch` (and, with `incarnation`, the
        store's marker is still `incarnation`)."""
        ...

    def recover_lease(
        self, name: str, holder: str, ttl_ms: int, *, floor: int, lost: str, incarnation: str,
    ) -> int | None:
        """After a data loss (`lost`, the marker `holder` knew, is gone): only while the store
        has no marker (nobody started the namespace again), atomically set it to `incarnation`
        and give `holder` the lease (whoever held it) at epoch max(counter, `floor`) + 1,
        which is returned; None otherwise."""
        ...

    def incarnation(self) -> str | None:
        """The namespace's incarnation marker (None: never written, or lost with the data)."""
        ...

    def claim_incarnation(self, candidate: str) -> str:
        """Write the marker `candidate` unless one exists (set-if-absent); the one that holds."""
        ...

    def data_losses(self) -> list[dict[str, Any]]:
        """The `NoteDataLoss` reports kept in the store, oldest first."""
        ...

    def release_lease(self, name: str, holder: str, epoch: int) -> None: ...

    def lease(self, name: str) -> Lease | None: ...

    def epoch(self, name: str = LEADER_LEASE) -> int: ...

    # workers ------------------------------------------------------------------------------
    def put_worker(self, info: WorkerInfo) -> None: ...

    def workers(self) -> list[WorkerInfo]: ...


@runtime_checkable
class CountsTasks(Protocol):
    """A store that can count its records by state without reading them (both stores here do:
    the REST API's `/metrics` asks it on every scrape)."""

    def count_by_state(self) -> dict[str, int]:
        """State name -> how many records are in it, every `TaskState` named (0 when none)."""
        ...
