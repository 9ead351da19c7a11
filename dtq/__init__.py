"""dtq: a distributed task queue built as an actor framework.

Actors (coordinators, workers) talk only through a transport and keep durable state only in a
store; the same actor code runs on the deterministic simulator and on RabbitMQ + Redis.

Applications submit with `dtq.connect(...)` (or `dtq.simulate()` in tests) and `dtq.Client` talks
to the REST API; those are imported on first use, so a node importing dtq does not load them.
"""

from typing import TYPE_CHECKING, Any

from dtq.actor import Actor, ActorCell, Context, DeliveryRef, Effects, receive
from dtq.clock import Order, VectorClock
from dtq.coordinator import Coordinator, CoordinatorConfig
from dtq.envelope import Envelope, Message
from dtq.errors import (
    ConflictError,
    ConnectionLost,
    DtqError,
    IllegalTransition,
    ScenarioError,
    StaleEpoch,
    StoreError,
    StoreUnavailable,
    TransportError,
    ValidationError,
)
from dtq.store import Store
from dtq.task import TaskRecord, TaskResult, TaskSpec, TaskState
from dtq.tasktypes import TaskActor, TaskContext, TaskError, TaskInput
from dtq.worker import Worker

if TYPE_CHECKING:
    from dtq.client.app import App, Dag, SimApp, TaskHandle, connect, simulate
    from dtq.client.http import Client, TaskFailed, WaitTimeout

_LAZY = {
    "App": "dtq.client.app", "Client": "dtq.client.http", "Dag": "dtq.client.app",
    "SimApp": "dtq.client.app", "TaskFailed": "dtq.client.http", "TaskHandle": "dtq.client.app",
    "WaitTimeout": "dtq.client.http", "connect": "dtq.client.app", "simulate": "dtq.client.app",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dtq' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Actor", "ActorCell", "App", "Client", "ConflictError", "ConnectionLost", "Context",
    "Coordinator", "CoordinatorConfig", "Dag", "DeliveryRef", "DtqError", "Effects", "Envelope",
    "IllegalTransition", "Message", "Order", "ScenarioError", "SimApp", "StaleEpoch", "Store",
    "StoreError", "StoreUnavailable", "TaskActor", "TaskContext", "TaskError", "TaskFailed",
    "TaskHandle", "TaskInput", "TaskRecord", "TaskResult", "TaskSpec", "TaskState",
    "TransportError", "ValidationError", "VectorClock", "WaitTimeout", "Worker", "connect",
    "receive", "simulate",
]
