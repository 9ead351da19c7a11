"""How the REST API shows things: task records, results, listings and the cluster, as JSON.

The rule: these functions read (through the backend's store) and render; they never change
anything. Not-found and not-finished answers are raised as `ApiError`s.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from dtq.api_errors import NotFound, bad_request, conflict, not_found
from dtq.api_submit import RecentSubmissions
from dtq.apibackend import ApiBackend
from dtq.store import LEADER_LEASE, WorkerInfo
from dtq.task import TaskRecord, TaskResult, TaskState

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
            "worker": getattr(rec, "worker", None), "spec": rec.spec.to_json()}


def submitted_json(task_id: str) -> dict[str, Any]:
    """A task this process published that the leader has not recorded yet."""
    return {"id": task_id, "type": None, "state": TaskState.SUBMITTED.value, "attempt": 0,
            "reason": None, "created_ms": None, "updated_ms": None, "links": links(task_id),
            "max_attempts": None, "epoch": None, "worker": None, "spec": None}


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


def worker_json(info: WorkerInfo) -> dict[str, Any]:
    return {"name": info.name, "last_heartbeat_ms": info.last_heartbeat_ms,
            "state": info.state, "running": list(info.running)}


def cluster_json(backend: ApiBackend) -> dict[str, Any]:
    store = backend.store
    lease = store.lease(LEADER_LEASE)
    leader = None if lease is None else {"name": lease.holder, "epoch": lease.epoch,
                                         "lease_expires_ms": lease.expires_ms}
    return {"leader": leader, "epoch": store.epoch(LEADER_LEASE),
            "workers": [worker_json(w) for w in store.workers()],
            "queues": backend.queue_depths(), "now_ms": backend.now_ms()}
