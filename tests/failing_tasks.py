"""Task types that fail, for the failure tests (a module, so real workers load it by name:
`--tasks tests.failing_tasks`). Rule: each fails the same way every time."""

from __future__ import annotations

from dtq.tasktypes import TaskActor, TaskContext, TaskError, TaskInput


def explode_here(payload: object) -> None:
    """The function a failure's traceback must name."""
    raise ValueError(f"the payload was {payload}")


class Explode(TaskActor):
    """Raises ValueError from `explode_here`."""

    type_name = "explode"

    def run(self, task: TaskInput, ctx: TaskContext) -> object:
        explode_here(task.payload if task.payload is not None else 7)
        return None


class GiveUp(TaskActor):
    """Raises `TaskError(retry=False)`: fails for good at its first attempt."""

    type_name = "give_up"

    def run(self, task: TaskInput, ctx: TaskContext) -> object:
        raise TaskError("the input can never work", retry=False)
