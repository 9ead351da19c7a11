"""The error hierarchy: one root, `DtqError`, so callers can catch everything dtq raises.

Client libraries' errors are wrapped at the transport edge (`raise ConnectionLost(...) from exc`).
"""

from __future__ import annotations


class DtqError(Exception):
    """Root of every error dtq raises on purpose."""


class ValidationError(DtqError, ValueError):
    """Bad input; `field` names the offending field (dotted path for nested ones)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class IllegalTransition(DtqError):
    """A task state change that the state machine does not allow."""

    def __init__(self, task_id: str, current: str, requested: str) -> None:
        super().__init__(f"task {task_id}: illegal transition {current} -> {requested}")
        self.task_id = task_id
        self.current = current
        self.requested = requested


class ConflictError(DtqError):
    """The same idempotency key was used with a different request body."""


class StoreError(DtqError):
    """The state store failed."""


class StoreUnavailable(StoreError):
    """The store could not be reached (after bounded retries)."""


class StaleEpoch(StoreError):
    """A fenced write carried an epoch older than the store's current one; nothing was written."""

    def __init__(self, attempted: int, current: int) -> None:
        super().__init__(f"stale epoch {attempted}: the store is at epoch {current}")
        self.attempted = attempted
        self.current = current


class TransportError(DtqError):
    """The message transport failed."""


class ConnectionLost(TransportError):
    """The broker connection was lost and could not be re-established in time."""


class DecodeError(TransportError):
    """A message on the wire could not be decoded (it is dead-lettered, never retried)."""


class ConfigurationError(DtqError):
    """A node or a service cannot run as configured; starting it again would fail the same
    way (the supervisor does not restart a node that exits with it)."""


class ScenarioError(DtqError):
    """A scenario file is broken; the message names the file, and the key where known."""


class UnknownTaskType(DtqError):
    """No task type of that name is loaded."""
