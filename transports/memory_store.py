"""SimStore: the Store protocol in memory, with the same semantics as the Redis store.

Time comes from the simulator's virtual clock. `StoreView` is one node's door to the store: it
raises `StoreUnavailable` while that node is partitioned from the store, and can serve stale
reads when the simulator injects them. `lose_data` plays a restart without persistence: every
key is gone at once, the incarnation marker and the epoch counters with them.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Callable, Collection, Sequence
from typing import Any

import attrs

from dtq.errors import StaleEpoch, StoreUnavailable
from dtq.store import (
    DEFAULT_RETENTION_MS,
    LEADER_LEASE,
    AddDependents,
    Lease,
    NoteDataLoss,
    Notify,
    OnceState,
    PutTask,
    ResultItem,
    ResultWrite,
    StoreDataLost,
    WorkerInfo,
    Write,
)
from dtq.task import TaskRecord, TaskResult, TaskState


class SimStore:
    """An in-memory store. Every operation is atomic (the simulator is single-threaded)."""

    def __init__(self, now_ms: Callable[[], int] = lambda: 0) -> None:
        self.now_ms = now_ms
        self.tasks: dict[str, TaskRecord] = {}
        self._ids: list[str] = []
        self._unfinished: list[str] = []
        """Ids of the records not in a terminal state, sorted (the `scan_unfinished` index)."""
        self.edges: dict[str, tuple[str, ...]] = {}
        self.keys: dict[str, tuple[str, str]] = {}
        self.results: dict[str, tuple[TaskResult, int | None]] = {}
        self.once_marks: dict[str, tuple[str, str, int | None]] = {}
        """once key -> ("begun" or "done", the run that marked it, when the mark expires: the
        namespace's retention after it was last set; None: kept)"""
        self.leases: dict[str, Lease] = {}
        self.epochs: dict[str, int] = {}
        self.worker_info: dict[str, WorkerInfo] = {}
        self.marker: str | None = None
        self.loss_reports: list[dict[str, Any]] = []
        self.stale_writes_refused = 0
        self.notices: list[Notify] = []
        """Every notice sent to a waiting client (nothing listens in the simulator)."""
        self.retention_ms = DEFAULT_RETENTION_MS
        """The namespace's retention (`dtq.store.DEFAULT_RETENTION_MS`; 0: forever)."""
        self.expiry: dict[str, int] = {}
        """Finished task -> when its state expires, in the order tasks finished."""

    # records --------------------------------------------------------------------------------
    def get_task(self, task_id: str) -> TaskRecord | None:
        return self.tasks.get(task_id)

    def scan_tasks(
        self, *, states: Collection[TaskState] | None = None, task_type: str | None = None,
        after: str | None = None, limit: int = 1000,
    ) -> list[TaskRecord]:
        start = bisect.bisect_right(self._ids, after) if after is not None else 0
        out: list[TaskRecord] = []
        for tid in self._ids[start:]:
            rec = self.tasks[tid]
            if (states is None or rec.state in states) and (
                    task_type is None or rec.spec.type == task_type):
                out.append(rec)
                if len(out) >= limit:
                    break
        return out

    def scan_unfinished(self, *, after: str | None = None, limit: int = 1000) -> list[TaskRecord]:
        ids = self._unfinished
        start = bisect.bisect_right(ids, after) if after is not None else 0
        return [self.tasks[tid] for tid in ids[start:start + max(limit, 1)]]

    def dependents(self, task_id: str) -> tuple[str, ...]:
        return self.edges.get(task_id, ())

    def count_by_state(self) -> dict[str, int]:
        counts = collections.Counter(rec.state.value for rec in self.tasks.values())
        return {s.value: counts[s.value] for s in TaskState}

    def put_record(self, record: TaskRecord) -> None:
        """Store a record with its indexes (what a fenced `PutTask` does, unfenced: for filling
        a store before a run)."""
        tid = record.id
        if tid not in self.tasks:
            bisect.insort(self._ids, tid)
        old = self.tasks.get(tid)
        was_open = old is not None and not old.state.terminal
        self.tasks[tid] = record
        if record.state.terminal and self.retention_ms > 0:
            self.expiry.setdefault(tid, self.now_ms() + self.retention_ms)
        if was_open and record.state.terminal:
            self._unfinished.pop(bisect.bisect_left(self._unfinished, tid))
        elif not was_open and not record.state.terminal:
            bisect.insort(self._unfinished, tid)

    def expire(self, *, limit: int | None = 100, everything: bool = False) -> int:
        """Remove the finished tasks whose retention is over (`everything`: all finished
        tasks), at most `limit` of them: record, indexes, dependency edges, result. One that an
        unfinished task depends on is kept another retention. As a fenced write on Redis does
        before applying. How many were removed."""
        now, gone, needed = self.now_ms(), list[str](), list[str]()
        for tid, at in self.expiry.items():
            if (limit is not None and len(gone) >= limit) or (at > now and not everything):
                break
            unfinished = (self.tasks.get(d) for d in self.edges.get(tid, ()))
            if any(r is not None and not r.state.terminal for r in unfinished):
                needed.append(tid)  # an unfinished task depends on it: kept for now
            else:
                gone.append(tid)
        for tid in needed:
            del self.expiry[tid]
            if self.retention_ms > 0:
                self.expiry[tid] = now + self.retention_ms
        for tid in gone:
            del self.expiry[tid]
            record = self.tasks.pop(tid, None)
            key = record.spec.idempotency_key if record is not None else None
            if key is not None and self.keys.get(key, ("",))[0] == tid:
                del self.keys[key]  # the key may name a new task again
            i = bisect.bisect_left(self._ids, tid)
            if i < len(self._ids) and self._ids[i] == tid:
                self._ids.pop(i)
            self.edges.pop(tid, None)
            self.results.pop(tid, None)
        return len(gone)

    def lose_data(self) -> None:
        """A restart without persistence: every key of the namespace is gone."""
        self.__dict__.update(SimStore(self.now_ms).__dict__)

    def apply(self, writes: Sequence[Write], *, epoch: int, lease: str = LEADER_LEASE) -> int:
        current = self.epochs.get(lease)
        if epoch > 0 and current is None:
            self.stale_writes_refused += 1
            raise StoreDataLost(epoch, 0)
        held = self.lease(lease)
        if epoch != (current or 0) or (epoch > 0 and (held is None or held.epoch != epoch)):
            self.stale_writes_refused += 1
            raise StaleEpoch(epoch, current or 0)
        self.expire()
        for w in writes:
            if isinstance(w, PutTask):
                self.put_record(w.record)
            elif isinstance(w, AddDependents):
                old = self.edges.get(w.task_id, ())
                self.edges[w.task_id] = old + tuple(d for d in w.dependents if d not in old)
            elif isinstance(w, Notify):
                self.notices.append(w)
            elif isinstance(w, NoteDataLoss):
                self.loss_reports.append(dict(w.report))
        return epoch

    # idempotency and exactly-once -----------------------------------------------------------
    def claim_key(self, key: str, task_id: str, fingerprint: str) -> tuple[str, str]:
        return self.keys.setdefault(key, (task_id, fingerprint))

    def put_result(
        self, result: TaskResult, *, ttl_ms: int | None = None, notify: str | None = None,
    ) -> ResultWrite:
        held = self.get_result(result.task_id)
        if held is not None:
            return ResultWrite(stored=held, created=False)
        record = self.tasks.get(result.task_id)
        if record is not None and (record.attempt > result.attempt
                                   or record.state in (TaskState.FAILED, TaskState.CANCELLED)):
            return ResultWrite(stored=None, created=False, stale=True)
        ttl_ms = ttl_ms or self.retention_ms  # none of its own: the namespace's retention
        expires = self.now_ms() + ttl_ms if ttl_ms else None
        self.results[result.task_id] = (result, expires)
        if notify is not None:
            self.notices.append(Notify(client=notify, task_id=result.task_id, state="succeeded"))
        return ResultWrite(stored=result, created=True)

    def put_results(self, items: Sequence[ResultItem]) -> list[ResultWrite]:
        return [self.put_result(i.result, ttl_ms=i.ttl_ms, notify=i.notify) for i in items]

    def get_result(self, task_id: str) -> TaskResult | None:
        entry = self.results.get(task_id)
        if entry is None:
            return None
        result, expires = entry
        if expires is not None and self.now_ms() >= expires:
            del self.results[task_id]
            return None
        return result

    def get_results(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        found = {t: self.get_result(t) for t in task_ids}
        return {t: r for t, r in found.items() if r is not None}

    def once_begin(self, key: str, owner: str) -> OnceState:
        held = self._once_mark(key)
        if held is not None and held[0] == "done":
            return "done"
        self.once_marks[key] = ("begun", owner, self._once_expiry())
        return "new" if held is None else "in_doubt"

    def once_done(self, key: str, owner: str) -> None:
        held = self._once_mark(key)
        if held is None or held[0] != "done":
            self.once_marks[key] = ("done", owner, self._once_expiry())

    def _once_mark(self, key: str) -> tuple[str, str, int | None] | None:
        held = self.once_marks.get(key)
        if held is not None and held[2] is not None and self.now_ms() >= held[2]:
            del self.once_marks[key]
            return None
        return held

    def _once_expiry(self) -> int | None:
        return self.now_ms() + self.retention_ms if self.retention_ms > 0 else None

    # leases and fencing ---------------------------------------------------------------------
    def acquire_lease(
        self, name: str, holder: str, ttl_ms: int, *, floor: int = 0,
        incarnation: str | None = None, above_clock: bool = False,
    ) -> int | None:
        if incarnation is not None and self.marker != incarnation:
            return None
        if self.lease(name) is not None:
            return None
        return self._grant(name, holder, ttl_ms, max(floor, self.now_ms()) if above_clock
                           else floor)

    def _grant(self, name: str, holder: str, ttl_ms: int, floor: int) -> int:
        epoch = max(self.epochs.get(name, 0), floor) + 1
        self.epochs[name] = epoch
        self.leases[name] = Lease(name=name, holder=holder, epoch=epoch,
                                  expires_ms=self.now_ms() + ttl_ms)
        return epoch

    def renew_lease(
        self, name: str, holder: str, epoch: int, ttl_ms: int, *,
        incarnation: str | None = None,
    ) -> bool:
        now = self.now_ms()
        held = self.leases.get(name)
        if held is None or held.holder != holder or held.epoch != epoch or held.expires_ms <= now:
            return False
        if incarnation is not None and self.marker != incarnation:
            return False
        self.leases[name] = attrs.evolve(held, expires_ms=now + ttl_ms)
        return True

    def release_lease(self, name: str, holder: str, epoch: int) -> None:
        held = self.leases.get(name)
        if held is not None and held.holder == holder and held.epoch == epoch:
            del self.leases[name]

    def lease(self, name: str) -> Lease | None:
        held = self.leases.get(name)
        return held if held is not None and held.expires_ms > self.now_ms() else None

    def epoch(self, name: str = LEADER_LEASE) -> int:
        return self.epochs.get(name, 0)

    def recover_lease(
        self, name: str, holder: str, ttl_ms: int, *, floor: int, lost: str, incarnation: str,
    ) -> int | None:
        if self.marker is not None:
            return None
        self.marker = incarnation
        return self._grant(name, holder, ttl_ms, floor)

    def incarnation(self) -> str | None:
        return self.marker

    def claim_incarnation(self, candidate: str) -> str:
        if self.marker is None:
            self.marker = candidate
        return self.marker

    def data_losses(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.loss_reports]

    # workers --------------------------------------------------------------------------------
    def put_worker(self, info: WorkerInfo) -> None:
        self.worker_info[info.name] = info

    def workers(self) -> list[WorkerInfo]:
        return [self.worker_info[k] for k in sorted(self.worker_info)]

    def close(self) -> None:
        """Nothing to let go: the store is this process's memory."""


_READS = frozenset({"get_task", "scan_tasks", "scan_unfinished"})
"""The record reads `StoreView` charges for, by the records they return."""


class StoreView:
    """One node's view of the shared store: unavailable while that node is cut from it. Each
    record a read returns is reported to `charge` (the simulator turns it into busy time)."""

    def __init__(
        self, store: SimStore, reachable: Callable[[], bool],
        stale_read: Callable[[str], bool] = lambda task_id: False,
        charge: Callable[[int], None] = lambda records: None,
    ) -> None:
        self._store = store
        self._reachable = reachable
        self._stale_read = stale_read
        self._charge = charge

    def get_results(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        """Dependency reads, where the simulator may inject a stale read (a lagging replica
        missing a result that is there)."""
        if not self._reachable():
            raise StoreUnavailable("store unreachable (partitioned) during get_results")
        found = self._store.get_results(task_ids)
        self._charge(len(found))
        return {t: r for t, r in found.items() if not self._stale_read(t)}

    def __getattr__(self, name: str) -> object:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr
        if not self._reachable():
            raise StoreUnavailable(f"store unreachable (partitioned) during {name}")
        return self._charged(attr) if name in _READS else attr

    def _charged(self, read: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            out = read(*args, **kwargs)
            self._charge(len(out) if isinstance(out, list) else int(out is not None))
            return out

        return run
