"""Errors of the REST API, shared by the server (which renders them) and the client (which raises
them from responses).

Every error response has one JSON body shape, `{"error": {"status", "code", "message",
"field"}}`, and the status says what kind of problem it is:

    400 bad request       the request is not well formed (invalid JSON, bad query parameter or
                          header), or it refers to what does not exist or cannot be (unknown
                          dependencies, dependency cycles)
    401 unauthorized      no bearer token (`missing_token`) or not a valid one
                          (`invalid_token`), when the API has tokens (see `dtq.api.auth`);
                          403 is not used: a valid token grants the whole API
    404 not found         no such task (or route)
    405 not allowed       the route exists, the method does not
    409 conflict          idempotency key reused with another body; task id taken; cancel of a
                          task that started; result of a task that has not finished
    410 gone              the task succeeded but its result has expired (result TTL)
    413 too large         the body (or a task payload) is over the cap
    415 unsupported       a POST whose Content-Type is not JSON
    422 unprocessable     well-formed JSON that breaks the schema (not an object, unknown or
                          missing field, wrong type, out of range); `field` names the field
    503 unavailable       the store or the broker cannot be reached

The rule: 400 is decided before or beside the schema (syntax, references, graph); 422 is the
schema itself. No input gives a 500; one would be a bug.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dtq.errors import ConflictError, DtqError


class ApiError(DtqError):
    """An HTTP error answer: status, a stable machine-readable code, a message, maybe a field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def to_json(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "code": self.code, "message": self.message,
                          "field": self.field}}

    @staticmethod
    def from_response(status: int, body: object) -> ApiError:
        """The error a client raises for an error response (any body, even a broken one)."""
        err = body.get("error") if isinstance(body, Mapping) else None
        if not isinstance(err, Mapping):
            err = {}
        code = str(err.get("code") or "http_error")
        message = str(err.get("message") or f"HTTP status {status}")
        field = err.get("field")
        cls = _CLASS_BY_STATUS.get(status) or (ServerError if status >= 500 else InvalidRequest)
        return cls(status, code, message, str(field) if field is not None else None)


class InvalidRequest(ApiError):
    """400, 413, 415, 422: the request was refused as it stands; sending it again will not help."""


class Unauthorized(ApiError):
    """401 (or 403): the request lacks a valid credential; set the API token."""


class NotFound(ApiError):
    """404 (no such task) or 410 (its result is gone)."""


class Conflict(ApiError, ConflictError):
    """409: the request conflicts with the task's current state or an earlier request."""


class Unavailable(ApiError):
    """503: the API cannot reach the store or the broker; try again later."""


class ServerError(ApiError):
    """Any other 5xx."""


_CLASS_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized, 403: Unauthorized, 404: NotFound, 405: InvalidRequest, 409: Conflict,
    410: NotFound, 503: Unavailable,
}


def bad_request(code: str, message: str, field: str | None = None) -> ApiError:
    return InvalidRequest(400, code, message, field)


def unprocessable(message: str, field: str | None = None) -> ApiError:
    return InvalidRequest(422, "invalid_field", message, field)


def too_large(message: str, field: str | None = None) -> ApiError:
    return InvalidRequest(413, "too_large", message, field)


def unauthorized(code: str, message: str) -> ApiError:
    return Unauthorized(401, code, message)


def not_found(task_id: str) -> ApiError:
    return NotFound(404, "not_found", f"no task {quoted(task_id)}", "id")


def conflict(code: str, message: str, field: str | None = None) -> ApiError:
    return Conflict(409, code, message, field)


def quoted(text: str, limit: int = 80) -> str:
    """A user-provided string, quoted and cut short, for an error message."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
