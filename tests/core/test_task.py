"""The task schema: validation that names the field, and the life-cycle state machine."""

import pytest

from dtq.errors import IllegalTransition, ValidationError
from dtq.task import TaskRecord, TaskSpec, TaskState, fingerprint, id_for_key


def parse(**fields: object) -> TaskSpec:
    return TaskSpec.parse({"type": "echo", **fields}, task_id="t1", now_ms=5)


def test_defaults_and_created_time() -> None:
    spec = parse(payload={"x": 1})
    assert spec.id == "t1" and spec.created_ms == 5
    assert spec.max_attempts == 3 and spec.priority == 0 and spec.deps == ()


@pytest.mark.parametrize(("fields", "field"), [
    ({"type": "Bad Type"}, "type"),
    ({"type": None}, "type"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"max_attempts": "3"}, "max_attempts"),
    ({"timeout_ms": -1}, "timeout_ms"),
    ({"priority": 10}, "priority"),
    ({"priority": True}, "priority"),
    ({"deps": "a"}, "deps"),
    ({"deps": ["ok", "bad id!"]}, "deps[1]"),
    ({"deps": ["a", "a"]}, "deps"),
    ({"metadata": {"k": 1}}, "metadata.k"),
    ({"idempotency_key": ""}, "idempotency_key"),
    ({"id": "x" * 200}, "id"),
    ({"colour": "red"}, "colour"),
])
def test_validation_names_the_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse(**fields)
    assert err.value.field == field
    assert field in str(err.value)


def test_payload_cap() -> None:
    with pytest.raises(ValidationError) as err:
        TaskSpec.parse({"type": "echo", "payload": "x" * 2000}, task_id="t", now_ms=0,
                       max_payload_bytes=1000)
    assert err.value.field == "payload"


def test_self_dependency_rejected() -> None:
    with pytest.raises(ValidationError, match="itself"):
        parse(id="a", deps=["a"])


def test_idempotency_key_fixes_the_id() -> None:
    a = parse(idempotency_key="order-42")
    b = TaskSpec.parse({"type": "echo", "idempotency_key": "order-42"}, task_id="other",
                       now_ms=9)
    assert a.id == b.id == id_for_key("order-42")
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(parse(idempotency_key="order-42", payload=1))


def test_legal_life() -> None:
    rec = TaskRecord(spec=parse())
    for state in (TaskState.READY, TaskState.DISPATCHED, TaskState.RUNNING,
                  TaskState.SUCCEEDED):
        rec = rec.moved_to(state, now_ms=1)
    assert rec.state.terminal


@pytest.mark.parametrize(("path", "bad"), [
    ((), TaskState.RUNNING),
    ((TaskState.READY,), TaskState.SUCCEEDED),
    ((TaskState.PENDING,), TaskState.DISPATCHED),
    ((TaskState.READY, TaskState.DISPATCHED, TaskState.SUCCEEDED), TaskState.READY),
    ((TaskState.CANCELLED,), TaskState.READY),
    ((TaskState.READY, TaskState.DISPATCHED), TaskState.CANCELLED),
])
def test_illegal_transitions_rejected(path: tuple[TaskState, ...], bad: TaskState) -> None:
    rec = TaskRecord(spec=parse())
    for state in path:
        rec = rec.moved_to(state, now_ms=1)
    with pytest.raises(IllegalTransition) as err:
        rec.moved_to(bad, now_ms=2)
    assert err.value.requested == bad.value


def test_record_round_trips_through_json() -> None:
    rec = TaskRecord(spec=parse(deps=["a"], metadata={"k": "v"})).moved_to(
        TaskState.PENDING, now_ms=3)
    assert TaskRecord.from_json(rec.to_json()) == rec
