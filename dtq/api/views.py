"""How the REST API shows things: task records, results, listings and the cluster, as JSON.

The rule: these functions read (through the backend's store) and render; they never change
anything. Not-found and not-finished answers are raised as `ApiError`s.

Store data loss (`StoreWatch`): the API process remembers the store's incarnation marker. The
store's data counts as lost and unrecovered while the marker this process saw is missing, or
has changed and no data-loss report in the store names the new one (a re-seeding leader writes
its report with the re-seed, a standby that starts the namespace again empty writes one too).
`GET /cluster` shows the marker, that state and every report kept; `/readyz` answers 503
`store_data_lost` while the marker is missing, or changed with no report and no leader: ready
again once a leader re-seeded or restarted the namespace (the reports stay in `GET /cluster`,
saying what was kept and lost). A leader running under a new marker nobody reported (every
process that held the data restarted meanwhile, so none knew) makes the cluster ready, and
`GET /cluster` says, for as long as this process runs, that the tasks accepted before are lost.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Collection
from typing import Any

import structlog

from dtq.client.backend import ApiBackend
from dtq.client.errors import NotFound, bad_request, conflict, not_found
from dtq.client.submissions import RecentSubmissions
from dtq.store import LEADER_LEASE, WorkerInfo
from dtq.task import TaskRecord, TaskResult, TaskState

log = structlog.get_logger("dtq.api")
MAX_PAGE = 1000
DEFAULT_PAGE = 100
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_TYPE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


def links(task_id: str) -> dict[str, str]:
    return {"self": f"/tasks/{task_id}", "result": f"/tasks/{task_id}/result"}


def is_task_id(text: str) -> bool:
    return bool(_ID_RE.match(text))


def summary_json(rec: TaskRecord) -> dict[str, Any]:
    return {"id": rec.id, "type": rec.spec.type, "state": rec.state.value,
            "attempt": rec.attempt, "reason": rec.reason, "created_ms": rec.spec.created_ms,
            "updated_ms": rec.updated_ms, "links": links(rec.id)}


def record_json(rec: TaskRecord) -> dict[str, Any]:
    return {**summary_json(rec), "max_attempts": rec.spec.max_attempts, "epoch": rec.epoch,
            "worker": getattr(rec, "worker", None), "traceback": rec.traceback,
            "spec": rec.spec.to_json()}


def submitted_json(task_id: str) -> dict[str, Any]:
    """A task this process published that the leader has not recorded yet."""
    return {"id": task_id, "type": None, "state": TaskState.SUBMITTED.value, "attempt": 0,
            "reason": None, "created_ms": None, "updated_ms": None, "links": links(task_id),
            "max_attempts": None, "epoch": None, "worker": None, "traceback": None, "spec": None}


def get_task(backend: ApiBackend, recent: RecentSubmissions, task_id: str) -> dict[str, Any]:
    rec = backend.store.get_task(task_id) if is_task_id(task_id) else None
    if rec is not None:
        return record_json(rec)
    if recent.get(task_id) is not None:
        return submitted_json(task_id)
    raise not_found(task_id)


def get_result(backend: ApiBackend, recent: RecentSubmissions, task_id: str) -> dict[str, Any]:
    """The outcome of a finished task; 409 `not_finished` before, 410 if the result expired."""
    rec = backend.store.get_task(task_id) if is_task_id(task_id) else None
    if rec is None:
        if recent.get(task_id) is not None:
            raise _not_finished(task_id, TaskState.SUBMITTED)
        raise not_found(task_id)
    if not rec.state.terminal:
        raise _not_finished(task_id, rec.state)
    if rec.state is not TaskState.SUCCEEDED:
        return {"id": task_id, "state": rec.state.value, "reason": rec.reason}
    result = backend.store.get_result(task_id)
    if result is None:
        raise NotFound(410, "result_expired", f"task {task_id} succeeded, but its result is no "
                       "longer kept (workers keep results for --result-ttl-ms)", "id")
    return result_json(rec, result)


def result_json(rec: TaskRecord, result: TaskResult) -> dict[str, Any]:
    if not result.ok:
        return {"id": rec.id, "state": TaskState.FAILED.value, "reason": result.error}
    return {"id": rec.id, "state": rec.state.value, "value": result.value,
            "attempt": result.attempt, "worker": result.worker,
            "finished_ms": result.finished_ms}


def _not_finished(task_id: str, state: TaskState) -> Exception:
    return conflict("not_finished", f"task {task_id} is {state.value}: its result is not ready "
                    "(poll GET /tasks/{id} until its state is final)", "id")


def list_tasks(
    backend: ApiBackend, *, states: Collection[TaskState] | None, task_type: str | None,
    cursor: str | None, limit: int | None,
) -> dict[str, Any]:
    """One page of task summaries in id order, and the cursor of the next page (or null)."""
    if task_type is not None and not _TYPE_RE.match(task_type):
        raise bad_request("invalid_query", "type must be a task type name like 'echo'", "type")
    if cursor is not None and not is_task_id(cursor):
        raise bad_request("invalid_query", "cursor must be a task id (a next_cursor)", "cursor")
    page = DEFAULT_PAGE if limit is None else limit
    if not 1 <= page <= MAX_PAGE:
        raise bad_request("invalid_query", f"limit must be from 1 to {MAX_PAGE}", "limit")
    recs = backend.store.scan_tasks(states=states or None, task_type=task_type, after=cursor,
                                    limit=page + 1)
    more = len(recs) > page
    recs = recs[:page]
    return {"tasks": [summary_json(r) for r in recs],
            "next_cursor": recs[-1].id if more else None}


WORKER_SILENT_MS = 5000
"""A worker whose last heartbeat is older than this (the failure detector's default timeout) is
shown `silent`: its entry stays in the store after it dies, and only it ever wrote its state."""


def worker_json(info: WorkerInfo, now_ms: int) -> dict[str, Any]:
    age = max(0, now_ms - info.last_heartbeat_ms)
    return {"name": info.name, "last_heartbeat_ms": info.last_heartbeat_ms,
            "heartbeat_age_ms": age, "state": "alive" if age <= WORKER_SILENT_MS else "silent",
            "running": list(info.running)}


class StoreWatch:
    """What this API process saw of the store's incarnation (shared by request threads)."""

    def __init__(self) -> None:
        self.known: str | None = None
        """The last marker seen while the store was whole."""
        self.lost: str | None = None
        """The marker found gone, until a data-loss report names its successor."""
        self._lock = threading.Lock()

    def state(self, backend: ApiBackend) -> dict[str, Any]:
        """{"incarnation", "data_lost" (what this process knows of a loss not recovered, or
        None), "data_losses" (the reports kept in the store)}"""
        return self._assess(backend)[0]

    def blocks_readiness(self, backend: ApiBackend) -> str | None:
        """Why the store's loss keeps the cluster from being ready (None: it does not)."""
        state, blocking = self._assess(backend)
        return state["data_lost"] if blocking else None

    def _assess(self, backend: ApiBackend) -> tuple[dict[str, Any], bool]:
        store = backend.store
        marker = store.incarnation()
        reports = store.data_losses()
        with self._lock:
            if self.lost is None and self.known is not None and marker != self.known:
                self.lost = self.known
                log.error("the store lost its data (restarted without persistence?)",
                          lost=self.lost, incarnation=marker)
            if self.lost is not None and marker is not None \
                    and any(r.get("incarnation") == marker for r in reports):
                self.lost = None
            if self.lost is None and marker is not None:
                self.known = marker
            lost = self.lost
        state: dict[str, Any] = {"incarnation": marker, "data_lost": None,
                                 "data_losses": reports}
        if lost is None:
            return state, False
        if marker is None:
            state["data_lost"] = f"the store lost its data (incarnation {lost} is gone); " \
                                 "waiting for the leader to re-seed it"
            return state, True
        if store.lease(LEADER_LEASE) is None:
            state["data_lost"] = f"the store lost its data (incarnation {lost} replaced by " \
                                 f"{marker}); no leader has re-seeded it yet"
            return state, True
        # A leader runs under a marker nobody reported: every process that held the data
        # restarted meanwhile, and the namespace was started again as new.
        state["data_lost"] = f"the store lost its data (incarnation {lost} replaced by " \
                             f"{marker}) and was started again by a leader that did not know " \
                             "it: the tasks accepted before are lost"
        return state, False


def cluster_json(backend: ApiBackend, watch: StoreWatch | None = None) -> dict[str, Any]:
    store = backend.store
    lease = store.lease(LEADER_LEASE)
    leader = None if lease is None else {"name": lease.holder, "epoch": lease.epoch,
                                         "lease_expires_ms": lease.expires_ms}
    now = backend.now_ms()
    return {"leader": leader, "epoch": store.epoch(LEADER_LEASE),
            "workers": [worker_json(w, now) for w in store.workers()],
            "queues": backend.queue_depths(), "now_ms": now,
            "store": (watch or StoreWatch()).state(backend)}


def not_ready(backend: ApiBackend, watch: StoreWatch) -> str | None:
    """Why the cluster is not ready to run what is submitted (None: ready): the store or the
    broker cannot be reached, the store's data was lost and nobody has recovered it yet, no
    coordinator holds the leader lease, or no worker sent a heartbeat lately."""
    try:
        if not backend.ready():
            return "the store or the broker cannot be reached"
        lost = watch.blocks_readiness(backend)
        if lost is not None:
            return lost
        if backend.store.lease(LEADER_LEASE) is None:
            return "no leader: no coordinator holds the lease (none running, or a failover)"
        now = backend.now_ms()
        if not any(now - w.last_heartbeat_ms <= WORKER_SILENT_MS for w in backend.store.workers()):
            return f"no worker sent a heartbeat in the last {WORKER_SILENT_MS} ms"
        return None
    except Exception:  # a readiness probe answers; it does not fail
        return "the store or the broker cannot be reached"
