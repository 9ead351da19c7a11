"""A process node waits out a store that is unavailable for a moment (a failover, a primary
short of the replica its writes must reach) instead of exiting: the fenced apply and result
writes alike are tried again for up to `RuntimeOptions.store_wait_s`. A node that exited
instead would be restarted, and during a Redis failover restarted again and again, each time
later (the supervisor backs off), so completions would come back long after the store did.

No broker is needed: the stub transport of test_runtime_timers hands the runtime its delivery.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from dtq.actor import Actor, Context, receive
from dtq.envelope import Codec, Envelope, Message
from dtq.errors import StoreUnavailable
from dtq.runtime.node import EXIT_ACTOR, EXIT_STORE, ProcessRuntime, RuntimeOptions
from dtq.store import PutTask, ResultItem, ResultWrite
from dtq.task import TaskRecord, TaskResult, TaskSpec
from dtq.transport import Delivery
from transports.memory_store import SimStore

from .test_runtime_timers import _StubTransport


@attrs.frozen(kw_only=True)
class Finish(Message):
    task: str


@attrs.frozen(kw_only=True)
class Stored(Message):
    created: bool


class _Finisher(Actor):
    """Persists a record and stores a result for it; exits once the store answered."""

    def __init__(self) -> None:
        super().__init__("finisher")
        self.answer: bool | None = None

    @receive(Finish)
    def on_finish(self, msg: Finish, ctx: Context) -> None:
        ctx.write(PutTask(record=TaskRecord(spec=TaskSpec(id=msg.task, type="echo"))))
        ctx.store_result(TaskResult(task_id=msg.task, attempt=1, worker="w", ok=True),
                         then=lambda w: Stored(created=w.created))

    @receive(Stored)
    def on_stored(self, msg: Stored, ctx: Context) -> None:
        self.answer = msg.created
        ctx.exit("stored")


class _Failing(SimStore):
    """Every write is unavailable for its first `times` tries."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.left = {"apply": times, "put_results": times}

    def _unavailable(self, what: str) -> None:
        if self.left[what] > 0:
            self.left[what] -= 1
            raise StoreUnavailable(f"redis {what}: NOT REPLICATED (a test)")

    def apply(self, batch: Sequence[object], *, epoch: int = 0) -> object:  # type: ignore[override]
        self._unavailable("apply")
        return super().apply(batch, epoch=epoch)  # type: ignore[arg-type]

    def put_results(self, items: Sequence[ResultItem]) -> list[ResultWrite]:
        self._unavailable("put_results")
        return super().put_results(items)


def _run(store: SimStore, wait_s: float) -> tuple[int, _Finisher]:
    actor = _Finisher()
    runtime = ProcessRuntime(actor, transport=_StubTransport(),  # type: ignore[arg-type]
                             store=store, options=RuntimeOptions(store_wait_s=wait_s))
    body = Codec().encode(Envelope(id="m1", sender="test", target="box", body=Finish(task="t1")))
    runtime._on_delivery(Delivery(generation=1, tag=1, queue="test.box", body=body,
                                  redelivered=False))
    return runtime.run(), actor


def test_writes_wait_out_a_store_unavailable_for_a_moment() -> None:
    store = _Failing(times=3)
    status, actor = _run(store, wait_s=30)
    assert status == EXIT_ACTOR and actor.answer is True  # exited as asked, not for the store
    assert store.left == {"apply": 0, "put_results": 0}
    assert store.get_task("t1") is not None and store.get_result("t1") is not None


def test_past_the_wait_the_node_exits_for_the_store() -> None:
    status, actor = _run(_Failing(times=1000), wait_s=0.2)
    assert status == EXIT_STORE and actor.answer is None
