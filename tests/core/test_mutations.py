"""The mutation suite: each guarantee, broken on purpose, is caught by the simulator and checker.

The rule: a mutation breaks one guarantee in one production function, applied with pytest's
monkeypatch inside its test only. Each test first runs its seeds on the system as it is and
asserts every one passes, then applies the mutation and asserts that a violation (or a failed
expectation of the scenario) appears within the number of seeds its name states: so each test
fails if the guarantee's check goes blind, and fails if the unmutated system would be flagged
too. Scenarios are small and chosen to reach the broken guarantee fast (crash points, slow and
reordering networks, failovers, early dispatches); the whole file runs in well under a minute on
one core. The Redis test runs against a real Redis (skipped locally when it is down, a failure
under CI=1).
"""

from __future__ import annotations

import json
import re
import tomllib
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

import transports.redis as redis_transport
from dtq import dag, taskrun
from dtq.actor import ActorCell, Context, DeliveryRef, Effects
from dtq.clock import VectorClock
from dtq.coordinator import Coordinator
from dtq.effectplan import Plan
from dtq.envelope import COORDINATOR_QUEUE, Cancel, Envelope
from dtq.scenario.model import Scenario, parse
from dtq.scenario.sim import run_memory
from dtq.store import LEADER_LEASE, Write
from dtq.task import TaskSpec, TaskState
from dtq.worker import Worker
from transports.memory_store import SimStore
from transports.redis import RedisStore

from ..simkit import make_sim, run_until_done

SEEDS = 3
"""The bound every test states: the mutation is caught within this many seeds (measured: each
mutation here was caught on at least 6 of seeds 1-10, most on 9 or 10), and the unmutated system
passes them all."""

Verdict = tuple[bool, list[str]]
"""(ok, the invariants violated)"""


def _scenario(text: str) -> Scenario:
    return parse(tomllib.loads(text), Path("<mutation suite>"), text)


def _run(scenario: Scenario) -> Callable[[int], Verdict]:
    def run(seed: int) -> Verdict:
        s = run_memory(scenario, seed).summary
        return bool(s["ok"]), [v["invariant"] for v in s["violations"]]

    return run


def _caught(
    monkeypatch: pytest.MonkeyPatch, mutate: Callable[[pytest.MonkeyPatch], None],
    run: Callable[[int], Verdict], seeds: int, *, expect: str | None = None,
) -> list[str]:
    """Seeds 1..`seeds` all pass as the system is; with the mutation, one of them fails (with
    the invariant `expect`, if given). Returns the mutated run's violations."""
    for seed in range(1, seeds + 1):
        ok, violations = run(seed)
        assert ok, f"the unmutated system fails seed {seed}: {violations}"
    with monkeypatch.context() as m:
        mutate(m)
        for seed in range(1, seeds + 1):
            ok, violations = run(seed)
            if not ok:
                if expect is not None:
                    assert expect in violations, violations
                return violations
    pytest.fail(f"the mutation was not caught within {seeds} seeds")


# --- store fencing ------------------------------------------------------------------------

_ZOMBIE = """
name = "mutation-zombie-leader"
[cluster]
coordinators = 2
workers = 2
worker_prefetch = 2
[workload]
count = 12
type = "sleep"
payload = { ms = 50 }
interval_ms = 25
[[fault]]
at = 150
action = "partition"
target = "leader"
from = ["store"]
duration = 3000
[expect]
deadline_ms = 30000
succeeded = 12
"""
ZOMBIE = _scenario(_ZOMBIE)

ZOMBIE_CHAIN = _scenario(
    _ZOMBIE.replace('"mutation-zombie-leader"', '"mutation-zombie-chain"')
    .replace("count = 12\n", "")
    .replace("interval_ms = 25", 'interval_ms = 5\ndag = "chain"\ndag_size = 12'))
"""The zombie's completions dispatch the next link of a chain it accepted before the partition
(a submission it cannot look up in the store waits instead)."""


def test_memory_store_fencing_caught_within_3_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """SimStore.apply without its epoch check: the zombie leader's writes are accepted."""
    fenced = SimStore.apply

    def unfenced(self: SimStore, writes: Sequence[Write], *, epoch: int,
                 lease: str = LEADER_LEASE) -> object:
        return fenced(self, writes, epoch=self.epoch(lease), lease=lease)

    _caught(monkeypatch, lambda m: m.setattr(SimStore, "apply", unfenced), _run(ZOMBIE), SEEDS,
            expect="no_stale_write")


class RedisFenced(SimStore):
    """The simulator's store with its task records on Redis: every fenced write goes through
    the Redis store's apply script, which alone decides whether it is accepted. Leases live in
    virtual time, as the simulator needs; each time one changes and before each fenced write,
    its holder and epoch are copied to Redis's lease and epoch keys for the script to read."""

    def __init__(self, redis: RedisStore) -> None:
        super().__init__()
        self.redis = redis

    def _mirror(self, lease: str) -> None:
        client, p = self.redis.client, self.redis.prefix
        epoch, held = self.epochs.get(lease), self.lease(lease)
        if epoch is None:
            client.delete(f"{p}:epoch:{lease}")
        else:
            client.set(f"{p}:epoch:{lease}", epoch)
        if held is None:
            client.delete(f"{p}:lease:{lease}")
        else:
            client.set(f"{p}:lease:{lease}", json.dumps({"holder": held.holder,
                                                        "epoch": held.epoch}))

    def apply(self, writes: Sequence[Write], *, epoch: int, lease: str = LEADER_LEASE) -> Any:
        self._mirror(lease)
        return self.redis.apply(writes, epoch=epoch, lease=lease)

    def get_task(self, task_id: str) -> Any:
        return self.redis.get_task(task_id)

    def scan_tasks(self, **kw: Any) -> Any:
        return self.redis.scan_tasks(**kw)

    def scan_unfinished(self, **kw: Any) -> Any:
        return self.redis.scan_unfinished(**kw)

    def dependents(self, task_id: str) -> tuple[str, ...]:
        return self.redis.dependents(task_id)


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[Callable[[], RedisStore]]:
    """Makes Redis stores under a prefix of this test's own, deleted afterwards."""
    prefix = f"dtq-mutation-{uuid.uuid4().hex[:12]}"
    made: list[RedisStore] = []

    def make() -> RedisStore:
        made.append(RedisStore.from_url(redis_url, prefix=prefix))
        return made[-1]

    yield make
    for store in made:
        store.delete_all()
        store.close()


def _without_epoch_check(script: str) -> str:
    """The apply script with its refusal branch never taken."""
    mutated, n = re.subn(r"if [^\n]* then(\n\s*redis\.call\('INCR', KEYS\[2\]\)\n"
                         r"\s*return \{0, current\})", r"if false then\1", script)
    assert n == 1, "the apply script's refusal branch was not found"
    return mutated


def test_redis_store_fencing_caught_within_3_seeds(
    monkeypatch: pytest.MonkeyPatch, redis_store: Callable[[], RedisStore],
) -> None:
    """The Redis apply script without its epoch check, on a real Redis: the zombie leader's
    writes are accepted, and the persist event's `current` (what Redis said) shows it."""

    def run(seed: int) -> Verdict:
        store = redis_store()
        store.delete_all()
        s = run_memory(ZOMBIE, seed, store=RedisFenced(store)).summary
        return bool(s["ok"]), [v["invariant"] for v in s["violations"]]

    mutated = _without_epoch_check(redis_transport.APPLY_LUA)
    _caught(monkeypatch, lambda m: m.setattr(redis_transport, "APPLY_LUA", mutated), run, SEEDS,
            expect="no_stale_write")


# --- ack after persist ----------------------------------------------------------------------


def test_ack_before_persist_caught_within_3_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan acks a batch's deliveries before persisting its writes: the zombie leader acks
    submissions whose records the store then refuses, and they are lost."""
    plan_run = Plan.run

    def ack_first(self: Plan[Any]) -> bool:
        w = self.world
        early = [d for fx, d in self.done if d is not None and fx.exit is None and not fx.hold]
        w.ack(early)
        for i, (fx, d) in enumerate(self.done):
            if d is not None and d in early:
                self.done[i] = (fx, None)
        return plan_run(self)

    _caught(monkeypatch, lambda m: m.setattr(Plan, "run", ack_first), _run(ZOMBIE), SEEDS,
            expect="no_lost_task")


def test_send_before_persist_caught_within_3_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan sends a batch's messages before persisting its writes: the zombie leader's
    dispatches reach workers although the store refuses the records that decided them."""
    plan_run = Plan.run

    def send_first(self: Plan[Any]) -> bool:
        w = self.world
        sends = [env for fx, _ in self.done for env in fx.sends]
        if sends:
            w.publish(sends, [])
            for fx, _ in self.done:
                fx.sends.clear()
            if w.crash_after("send"):
                return False
        return plan_run(self)

    _caught(monkeypatch, lambda m: m.setattr(Plan, "run", send_first), _run(ZOMBIE_CHAIN),
            SEEDS, expect="persist_before_send")


# --- once -----------------------------------------------------------------------------------

ONCE = _scenario("""
name = "mutation-once"
[cluster]
coordinators = 1
workers = 3
[workload]
count = 30
type = "io"
payload = { op = "write", path = "out/{n}.txt", data = "task {n}" }
interval_ms = 5
[crash_points]
once_before_fn = 0.15
before_result = 0.15
[expect]
deadline_ms = 60000
succeeded = 30
""")


def test_once_running_fn_on_every_attempt_caught_within_3_seeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`ctx.once` runs `fn` whatever the marker says: a task rerun after its once-effect was
    recorded done (a crash before its result was written) makes the effect again."""

    def every_time(self: taskrun.RunContext, key: str, fn: Callable[[], object]) -> bool:
        task, attempt = self._input.task_id, self._input.attempt
        ids = {"key": key, "task": task, "attempt": attempt}
        self._store.once_begin(key, f"{task}#{attempt}")
        self._record("once_begin", {**ids, "in_doubt": False})
        fn()
        self._record("side_effect", {**ids, "in_doubt": False})
        self._store.once_done(key, f"{task}#{attempt}")
        self._record("once_done", ids)
        return True

    _caught(monkeypatch, lambda m: m.setattr(taskrun.RunContext, "once", every_time),
            _run(ONCE), SEEDS, expect="once_doubled")


def test_once_marking_done_before_fn_caught_within_3_seeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`ctx.once` records the key done before `fn` runs: a crash in between leaves a task that
    succeeds on its redelivery (which skips the key) while its effect never ran."""

    def done_first(self: taskrun.RunContext, key: str, fn: Callable[[], object]) -> bool:
        task, attempt = self._input.task_id, self._input.attempt
        ids = {"key": key, "task": task, "attempt": attempt}
        if self._store.once_begin(key, f"{task}#{attempt}") == "done":
            self._record("once_skipped", ids)
            return False
        self._record("once_begin", {**ids, "in_doubt": False})
        self._store.once_done(key, f"{task}#{attempt}")
        self._record("once_done", ids)
        self._crash("once_before_fn")
        fn()
        self._record("side_effect", {**ids, "in_doubt": False})
        return True

    _caught(monkeypatch, lambda m: m.setattr(taskrun.RunContext, "once", done_first),
            _run(ONCE), SEEDS, expect="once_lost")


# --- the worker's epoch check -----------------------------------------------------------

STALE_DISPATCHES = _scenario("""
name = "mutation-stale-dispatches"
[cluster]
coordinators = 2
workers = 2
[network]
reorder = 0.5
reorder_ms = 4000
[workload]
count = 40
type = "sleep"
payload = { ms = 50 }
interval_ms = 25
[[fault]]
at = 300
action = "kill"
target = "leader"
duration = 20000
[expect]
deadline_ms = 60000
succeeded = 40
""")


def test_worker_accepting_a_stale_epoch_dispatch_caught_within_3_seeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Workers take every dispatch's epoch as current, never reading the store's leader epoch
    (so they never learn a newer one, and their check at start never fires either): the killed
    leader's dispatches, slowed by the network past the failover, run after the new leader's."""
    _caught(monkeypatch,
            lambda m: m.setattr(Worker, "_epoch_current", lambda self, msg, epoch, ctx: True),
            _run(STALE_DISPATCHES), SEEDS, expect="worker_epoch")


# --- dependency readiness, at the leader and at the worker --------------------------------

DIAMONDS = _scenario("""
name = "mutation-diamonds"
[cluster]
coordinators = 1
workers = 3
[network]
delay_ms = 2
jitter_ms = 10
[workload]
dag = "diamond"
type = "sleep"
payload = { ms = 20 }
[expect]
deadline_ms = 30000
succeeded = 4
""")


def test_leader_readiness_on_any_one_dependency_caught_within_3_seeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The leader finds a task ready when any one dependency succeeded. Workers still hold
    the early dispatch back (their own check is intact): only the leader-side dispatch order
    shows the bug."""
    readiness = dag.readiness

    def any_one(deps: Any, state_of: Callable[[str], TaskState | None]) -> TaskState:
        deps = list(deps)
        if any(state_of(d) is TaskState.SUCCEEDED for d in deps):
            return TaskState.READY
        return readiness(deps, state_of)

    _caught(monkeypatch, lambda m: m.setattr(dag, "readiness", any_one), _run(DIAMONDS), SEEDS,
            expect="dispatch_order")


CHAIN_EARLY = _scenario("""
name = "mutation-early-dispatches"
[cluster]
coordinators = 1
workers = 2
worker_prefetch = 2
[network]
delay_ms = 2
jitter_ms = 5
early_dispatch = 0.5
[workload]
dag = "chain"
dag_size = 20
type = "echo"
[expect]
deadline_ms = 60000
succeeded = 20
""")


def test_worker_skipping_the_causality_check_caught_within_3_seeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Workers run a dispatch without checking its dependencies' results are visible at or
    before its clock: a dispatch the simulator sends early runs before its dependency."""
    from dtq import causal, worker

    check_deps = causal.check_deps

    def unchecked(*args: Any, **kw: Any) -> tuple[dict[str, Any], None]:
        values, _ = check_deps(*args, **kw)
        return values, None

    _caught(monkeypatch, lambda m: m.setattr(worker, "check_deps", unchecked),
            _run(CHAIN_EARLY), SEEDS, expect="dependency_order")


# --- vector clocks ------------------------------------------------------------------------


def test_delivery_without_merging_the_clock_caught_within_3_seeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Actors tick on delivery but do not merge the envelope's clock: the leader's clock never
    takes in a worker's completion, so its dispatch of a dependent is not after the dependency's
    result; workers hold every dependent back, and the DAG never finishes."""

    def unmerged(self: ActorCell, env: Envelope, ref: DeliveryRef | None,
                 now_ms: int) -> Effects:
        self.clock = self.clock.tick(self.name)
        ctx = Context(self, now_ms, env, ref)
        self._dispatch(env.body, ctx)
        return ctx.effects

    _caught(monkeypatch, lambda m: m.setattr(ActorCell, "deliver", unmerged), _run(DIAMONDS),
            SEEDS, expect="no_lost_task")


def test_happened_before_that_is_not_strict_caught_within_3_seeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """VectorClock.before answers True for equal clocks. Only the checker asks it; a persist
    shares the clock of the handler event before it, so the actor's clock seems to go back."""
    _caught(monkeypatch,
            lambda m: m.setattr(VectorClock, "before", lambda self, other: self <= other),
            _run(ZOMBIE), SEEDS, expect="clock_order")


# --- hold-back of early submissions, cancel propagation -----------------------------------

REORDERED = attrs.evolve(DIAMONDS, name="mutation-reordered-submissions",
                        network={**DIAMONDS.network, "reorder": 0.6})



def test_accepting_a_submission_before_its_dependency_caught_within_3_seeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The leader takes a submission that overtook one of its dependencies at once instead of
    holding it back until the dependency arrives."""

    def at_once(self: Coordinator, msg: Any, missing: list[str], ctx: Context) -> None:
        self._accept(msg.spec, ctx)

    _caught(monkeypatch, lambda m: m.setattr(Coordinator, "_hold_back", at_once),
            _run(REORDERED), SEEDS,
            expect="expectation")


def _cancel_run(seed: int) -> Verdict:
    """a (slow) <- b <- c: b is cancelled while it waits for a, so c must end cancelled."""
    sim = make_sim(seed, workers=2)
    sim.submit(TaskSpec(id="a", type="sleep", payload={"ms": 500}))
    sim.submit(TaskSpec(id="b", type="echo", payload=1, deps=("a",)))
    sim.submit(TaskSpec(id="c", type="echo", payload=2, deps=("b",)))
    sim.at(100, sim.send, "client", COORDINATOR_QUEUE, Cancel(task_id="b"))
    result = run_until_done(sim, 3, deadline_ms=20_000)
    ends = {e.data["task"]: e.kind for e in sim.history.events
            if e.kind in ("succeeded", "failed", "cancelled", "rejected")}
    violations = [v.invariant for v in result.violations]
    if ends.get("c") != "cancelled":
        violations.append(f"expectation: c ended {ends.get('c')}, not cancelled")
    return not violations, violations


def test_cancel_not_propagated_to_dependents_caught_within_3_seeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelling a task ends it alone, not its dependents: they wait for it forever."""
    end = Coordinator._end

    def alone(self: Coordinator, rec: Any, state: TaskState, reason: str, ctx: Context) -> None:
        if state is not TaskState.CANCELLED:
            end(self, rec, state, reason, ctx)
            return
        rec = rec.moved_to(state, now_ms=ctx.now_ms, reason=reason)
        self._put(rec, ctx)
        self._ended(state.value, rec.id, ctx, reason=reason)

    _caught(monkeypatch, lambda m: m.setattr(Coordinator, "_end", alone), _cancel_run, SEEDS,
            expect="no_lost_task")


# --- first-writer-wins results ------------------------------------------------------------

DUPLICATES = _scenario("""
name = "mutation-duplicates"
[cluster]
coordinators = 1
workers = 3
[network]
duplicate = 0.5
reorder = 0.2
[workload]
count = 20
type = "sleep"
payload = { ms = 30 }
interval_ms = 10
[expect]
deadline_ms = 30000
succeeded = 20
""")


def test_results_overwritten_caught_within_3_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """put_result overwrites a stored result: a duplicated dispatch's second run applies the
    task's result again."""
    put = SimStore.put_result

    def overwrite(self: SimStore, result: Any, **kw: Any) -> Any:
        self.results.pop(result.task_id, None)
        return put(self, result, **kw)

    _caught(monkeypatch, lambda m: m.setattr(SimStore, "put_result", overwrite),
            _run(DUPLICATES), SEEDS, expect="no_duplicate_effect")



# --- batches ------------------------------------------------------------------------------

BATCHED_READS = _scenario("""
name = "mutation-batched-reads"
[cluster]
coordinators = 1
workers = 3
worker_prefetch = 2
[store]
read_us_per_record = 5000
[workload]
dag = "random"
dag_size = 40
type = "echo"
interval_ms = 2
[expect]
deadline_ms = 60000
succeeded = 40
""")
"""Store reads that keep the leader busy, so that what reaches it meanwhile is handled as one
batch (`Simulation._free`), as a process handles its inbox."""


def test_reading_a_record_past_the_batchs_unapplied_writes_caught_within_3_seeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`Context.read_task` reading the store only: a dependency whose success an earlier
    handler of the batch recorded (and forgot) still looks dispatched, and its dependent waits
    for a success that already came. Caught on 6 of seeds 1-10."""

    def store_only(self: Context, task_id: str) -> Any:
        return self.store.get_task(task_id)

    _caught(monkeypatch, lambda m: m.setattr(Context, "read_task", store_only),
            _run(BATCHED_READS), SEEDS, expect="no_lost_task")
