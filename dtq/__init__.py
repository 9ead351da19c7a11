"""dtq: a distributed task queue built as an actor framework.

Actors (coordinators, workers) talk only through a transport and keep durable state only in a
store; the same actor code runs on the deterministic simulator and on RabbitMQ + Redis.
"""

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

__all__ = [
    "Actor", "ActorCell", "ConflictError", "ConnectionLost", "Context", "Coordinator",
    "CoordinatorConfig", "DeliveryRef", "DtqError", "Effects", "Envelope", "IllegalTransition",
    "Message", "Order", "ScenarioError", "StaleEpoch", "Store", "StoreError", "StoreUnavailable",
    "TaskActor", "TaskContext", "TaskError", "TaskInput", "TaskRecord", "TaskResult", "TaskSpec",
    "TaskState", "TransportError", "ValidationError", "VectorClock", "Worker", "receive",
]
