"""The REST API's OpenAPI description: request and response schemas, documented statuses.

The rule: the routes parse bodies themselves (`dtq.api.body`, `TaskSpec.parse`), so these
schemas are documentation, written to match what the parsers accept; every status a route can
answer is listed here, which the fuzz tests check response by response.
"""

from __future__ import annotations

from typing import Any

from dtq.task import MAX_ATTEMPTS_LIMIT, MAX_PRIORITY, MAX_TIMEOUT_MS

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
TYPE_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"

DESCRIPTION = """\
Submit tasks and DAGs of tasks to a dtq cluster, follow them, read their results, cancel them.

**Errors** are JSON: `{"error": {"status", "code", "message", "field"}}`.
`400` the request is malformed (invalid JSON, bad query parameter or header) or refers to what
does not exist or cannot be (unknown dependencies, dependency cycles);
`404` no such task; `409` conflict (idempotency key or task id reused with another body, cancel
of a task that started, result of a task that has not finished); `410` result expired;
`413` body or payload over the cap; `415` POST without a JSON Content-Type;
`422` JSON that breaks the schema (`field` names the field); `503` store or broker unreachable.
"""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_TASK_IN: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "pattern": TYPE_PATTERN,
                 "description": "task type: echo, compute, sleep, io or one of yours"},
        "payload": {"description": "any JSON value the task type understands (at most 1 MiB)"},
        "deps": {"type": "array", "uniqueItems": True,
                 "items": {"type": "string", "pattern": ID_PATTERN},
                 "description": "ids of tasks that must succeed first (in a DAG: also names "
                                "of tasks of the same request)"},
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": MAX_ATTEMPTS_LIMIT,
                         "default": 3},
        "timeout_ms": {"type": "integer", "minimum": 1, "maximum": MAX_TIMEOUT_MS,
                       "default": 60_000},
        "priority": {"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY, "default": 0},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"},
                     "description": "string labels (at most 16 KiB)"},
        "id": {"type": "string", "pattern": ID_PATTERN,
               "description": "your own task id (default: generated, or derived from the "
                              "idempotency key)"},
        "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 256,
                            "description": "same as the Idempotency-Key header"},
    },
    "examples": [{"type": "echo", "payload": {"message": "hello"}}],
}

_DAG_IN: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["tasks"],
    "properties": {"tasks": {
        "type": "object", "minProperties": 1, "maxProperties": 1000,
        "propertyNames": {"pattern": ID_PATTERN},
        "additionalProperties": _ref("TaskIn"),
        "description": "local name -> task; deps name local tasks or existing task ids",
    }},
    "examples": [{"tasks": {"fetch": {"type": "echo", "payload": 1},
                            "use": {"type": "echo", "payload": 2, "deps": ["fetch"]}}}],
}

_LINKS: dict[str, Any] = {"type": "object", "properties": {
    "self": {"type": "string"}, "result": {"type": "string"}}}
_STATE: dict[str, Any] = {"type": "string", "enum": [
    "submitted", "pending", "ready", "dispatched", "running", "succeeded", "failed",
    "cancelled"]}
_NULLABLE_INT: dict[str, Any] = {"type": ["integer", "null"]}
_NULLABLE_STR: dict[str, Any] = {"type": ["string", "null"]}

_SUMMARY_PROPS: dict[str, Any] = {
    "id": {"type": "string"}, "type": _NULLABLE_STR, "state": _STATE,
    "attempt": {"type": "integer"}, "reason": _NULLABLE_STR, "created_ms": _NULLABLE_INT,
    "updated_ms": _NULLABLE_INT, "links": _LINKS,
}

COMPONENTS: dict[str, Any] = {
    "TaskIn": _TASK_IN,
    "DagIn": _DAG_IN,
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["status", "code", "message", "field"], "properties": {
            "status": {"type": "integer"}, "code": {"type": "string"},
            "message": {"type": "string"}, "field": _NULLABLE_STR}}}},
    "Accepted": {"type": "object", "required": ["id", "state", "links"], "properties": {
        "id": {"type": "string"}, "state": _STATE, "links": _LINKS}},
    "DagAccepted": {"type": "object", "required": ["tasks"], "properties": {"tasks": {
        "type": "object", "additionalProperties": {"type": "string"},
        "description": "local name -> task id"}}},
    "TaskSummary": {"type": "object", "properties": _SUMMARY_PROPS},
    "Task": {"type": "object", "properties": {
        **_SUMMARY_PROPS, "max_attempts": _NULLABLE_INT, "epoch": _NULLABLE_INT,
        "worker": {**_NULLABLE_STR, "description": "the worker running the current attempt"},
        "traceback": {**_NULLABLE_STR, "description": "the last failed attempt's traceback "
                                                       "(its end, at most 8 KB)"},
        "spec": {"type": ["object", "null"], "description": "the task as submitted (null "
                                                           "until the leader records it)"}}},
    "TaskPage": {"type": "object", "properties": {
        "tasks": {"type": "array", "items": _ref("TaskSummary")},
        "next_cursor": {**_NULLABLE_STR, "description": "pass as cursor for the next page"}}},
    "Result": {"type": "object", "required": ["id", "state"], "properties": {
        "id": {"type": "string"}, "state": _STATE,
        "value": {"description": "the task's return value (succeeded)"},
        "reason": {"type": "string", "description": "why it failed or was cancelled"},
        "attempt": {"type": "integer"}, "worker": {"type": "string"},
        "finished_ms": {"type": "integer"}}},
    "Cluster": {"type": "object", "properties": {
        "leader": {"type": ["object", "null"], "properties": {
            "name": {"type": "string"}, "epoch": {"type": "integer"},
            "lease_expires_ms": {"type": "integer"}}},
        "epoch": {"type": "integer"},
        "workers": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "last_heartbeat_ms": {"type": "integer"},
            "state": {"type": "string"}, "running": {"type": "array",
                                                     "items": {"type": "string"}}}}},
        "queues": {"type": "object", "additionalProperties": {"type": "integer"}},
        "now_ms": {"type": "integer"},
        "store": {"type": "object", "properties": {
            "incarnation": {"type": ["string", "null"]},
            "data_lost": {"type": ["string", "null"],
                          "description": "why the store's data counts as lost and not yet "
                                         "recovered (null: whole)"},
            "data_losses": {"type": "array", "items": {"type": "object"},
                            "description": "reports of data losses: what was kept and lost"}}}}},
    "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
}

_ERROR_TEXT = {
    400: "Malformed request, unknown dependency or dependency cycle",
    404: "No such task",
    409: "Conflict with an earlier request or the task's state",
    410: "The task succeeded but its result has expired",
    413: "Body or payload over the cap",
    415: "Content-Type is not JSON",
    422: "JSON that breaks the schema; `field` names the field",
    503: "Store or broker unreachable",
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def responses(ok: int, ok_schema: str, ok_text: str, *errors: int) -> dict[int | str, Any]:
    """The `responses` of a route: its success and every error status it can answer."""
    out: dict[int | str, Any] = {ok: {"description": ok_text, "content": _json(_ref(ok_schema))}}
    for status in errors:
        out[status] = {"description": _ERROR_TEXT[status], "content": _json(_ref("Error"))}
    return out


def text_responses(media_type: str, ok_text: str, *errors: int) -> dict[int | str, Any]:
    """The `responses` of a route answering 200 with text of `media_type`, not JSON."""
    return {**responses(200, "Status", ok_text, *errors),
            200: {"description": ok_text, "content": {media_type: {"schema": {"type": "string"}}}}}


def request_body(schema: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": _json(_ref(schema))}}


def documented_statuses(openapi: dict[str, Any], path: str, method: str) -> set[int]:
    """The statuses the description lists for one operation (used by the tests)."""
    found = openapi["paths"][path][method.lower()]["responses"]
    return {int(status) for status in found}
