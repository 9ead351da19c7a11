"""Seeded schedules: every choice the simulator makes comes from the seed, within what RabbitMQ
guarantees (one publisher's messages to one queue, one queue's deliveries to one consumer and one
node's timers keep their order; a requeued message keeps its place), and the same seed replays
the same history. `explore` counts the distinct histories it ran."""

from __future__ import annotations

import io
import json
from functools import partial
from pathlib import Path

import attrs
import pytest

from dtq.actor import Actor, Context, receive
from dtq.envelope import Message
from dtq.scenario.explore import explore
from dtq.scenario.model import Scenario, load
from dtq.scenario.sim import run_memory
from transports.memory import Simulation

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.toml"))
MANY_ACTORS = [p for p in SCENARIOS
               if (lambda s: s.cluster.coordinators + s.cluster.workers)(load(p)) > 1]
SEEDS = range(1, 101)
HORIZON_MS = 3000
"""Runs are cut here: a history's prefix up to this time is distinct only when the whole history
is, so distinct prefixes count distinct histories from below, and 100 seeds of a file take a few
seconds. (The 1000-task chain pays for its 1000 submissions at any horizon, ~45 s for 100 seeds:
marked slow, which CI runs.)"""


def _cut(scenario: Scenario, until_ms: int) -> Scenario:
    expect = attrs.evolve(scenario.expect, deadline_ms=min(scenario.expect.deadline_ms, until_ms))
    return attrs.evolve(scenario, expect=expect)


def test_every_scenario_has_more_than_one_actor() -> None:
    assert MANY_ACTORS == SCENARIOS  # so the next test covers the whole library


def _tasks(scenario: Scenario) -> int:
    w = scenario.workload
    return w.count + len(w.tasks) + (w.dag_size if w.dag else 0)


@pytest.mark.parametrize("path", [
    pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if _tasks(load(p)) > 100 else [])
    for p in MANY_ACTORS])
def test_a_hundred_seeds_give_at_least_ninety_histories(path: Path) -> None:
    scenario = _cut(load(path), HORIZON_MS)
    digests = {run_memory(scenario, seed).summary["history_digest"] for seed in SEEDS}
    assert len(digests) >= 90, f"{path.name}: {len(digests)} distinct histories in 100 seeds"


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_the_same_seed_gives_the_same_history(path: Path) -> None:
    scenario = load(path)
    a, b = run_memory(scenario, 7), run_memory(scenario, 7)
    assert a.summary["history_digest"] == b.summary["history_digest"]
    assert [(e.time_ms, e.actor, e.kind) for e in a.events] == \
        [(e.time_ms, e.actor, e.kind) for e in b.events]


# --- what the seed may not change ------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Item(Message):
    n: int
    by: str


@attrs.frozen(kw_only=True)
class Tick(Message):
    n: int


class Publisher(Actor):
    """Publishes items 1..count to `target` as it starts, in one handler."""

    def __init__(self, name: str, target: str, count: int) -> None:
        super().__init__(name)
        self.target, self.count = target, count

    def on_start(self, ctx: Context) -> None:
        for n in range(1, self.count + 1):
            ctx.send(self.target, Item(n=n, by=self.name))


class Sink(Actor):
    """Records (itself, publisher, item) as it gets items; consumes `queue` too when given;
    holds them (never acks) if told to."""

    def __init__(self, name: str, got: list[tuple[str, str, int]], queue: str | None = None,
                 hold: bool = False) -> None:
        super().__init__(name)
        self.got, self.queue, self.holds = got, queue, hold

    def on_start(self, ctx: Context) -> None:
        if self.queue:
            ctx.subscribe(self.queue)

    @receive(Item)
    def on_item(self, msg: Item, ctx: Context) -> None:
        self.got.append((self.name, msg.by, msg.n))
        if self.holds:
            ctx.hold()


class Ticker(Actor):
    """Sets five timers due at the same time, in order, and records the order they fire in."""

    def __init__(self, name: str, fired: list[int]) -> None:
        super().__init__(name)
        self.fired = fired

    def on_start(self, ctx: Context) -> None:
        for n in range(1, 6):
            ctx.schedule(10, Tick(n=n))

    @receive(Tick)
    def on_tick(self, msg: Tick, ctx: Context) -> None:
        self.fired.append(msg.n)


def test_one_publishers_messages_to_one_queue_keep_their_order_others_interleave() -> None:
    interleavings = set()
    for seed in range(1, 31):
        sim = Simulation(seed)
        got: list[tuple[str, str, int]] = []
        sim.spawn("sink", partial(Sink, "sink", got))
        sim.spawn("pub-a", lambda: Publisher("pub-a", "sink", 5))
        sim.spawn("pub-b", lambda: Publisher("pub-b", "sink", 5))
        sim.run(until_ms=100)
        assert len(got) == 10
        for pub in ("pub-a", "pub-b"):
            assert [n for _, by, n in got if by == pub] == [1, 2, 3, 4, 5], (seed, got)
        interleavings.add(tuple(by for _, by, _ in got))
    assert len(interleavings) >= 10  # the seed decides how the two publishers interleave


def test_a_nodes_timers_due_together_fire_in_the_order_they_were_set() -> None:
    for seed in range(1, 31):
        sim = Simulation(seed)
        fired: list[int] = []
        sim.spawn("ticker", partial(Ticker, "ticker", fired))
        sim.spawn("other", partial(Ticker, "other", []))
        sim.run(until_ms=100)
        assert fired == [1, 2, 3, 4, 5], seed


def test_the_seed_picks_which_consumer_the_round_robin_starts_with() -> None:
    first = set()
    for seed in range(1, 31):
        sim = Simulation(seed)
        got: list[tuple[str, str, int]] = []
        for w in ("w1", "w2", "w3"):
            sim.spawn(w, partial(Sink, w, got, queue="jobs", hold=True), prefetch=1)
        sim.spawn("pub", lambda: Publisher("pub", "jobs", 3))
        sim.run(until_ms=100)
        assert sorted(w for w, _, _ in got) == ["w1", "w2", "w3"]  # one each: prefetch 1
        first.add(next(w for w, _, n in got if n == 1))
    assert first == {"w1", "w2", "w3"}


def test_a_requeued_message_goes_back_to_its_place_ahead_of_later_ones() -> None:
    for seed in range(1, 21):
        sim = Simulation(seed)
        got: list[tuple[str, str, int]] = []
        sim.spawn("holder", partial(Sink, "holder", got, queue="jobs", hold=True),
                  prefetch=1, auto_restart=False)
        sim.spawn("pub", lambda: Publisher("pub", "jobs", 3))
        sim.run(until_ms=10)
        assert got == [("holder", "pub", 1)]
        sim.crash("holder")  # item 1 goes back to the queue, where items 2 and 3 wait
        sim.run(until_ms=20)
        sim.spawn("taker", partial(Sink, "taker", got, queue="jobs"))
        sim.run(until_ms=100)
        assert [n for w, _, n in got if w == "taker"] == [1, 2, 3], seed


# --- explore counts distinct histories -------------------------------------------------------


def test_explore_reports_distinct_histories_per_file_and_in_total() -> None:
    rr = str(ROOT / "scenarios" / "round-robin.toml")
    out = io.StringIO()
    assert explore([rr, rr], runs=4, out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["round-robin: 4/4 seeds ok, 4 distinct histories"] * 2
    assert lines[2].startswith("8 runs in ") and lines[2].endswith(
        ", 0 failed, 4 distinct histories")  # the same 4 seeds twice: 4 histories, not 8
    out = io.StringIO()
    assert explore([rr, rr], runs=4, out=out, as_json=True) == 0
    *runs, total = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(runs) == 8 and total["runs"] == 8 and total["distinct_histories"] == 4
    assert total["files"] == [{"file": rr, "scenario": "round-robin", "runs": 4, "failed": 0,
                               "distinct_histories": 4}] * 2
    assert len({r["history_digest"] for r in runs}) == 4


def test_explore_in_worker_processes_prints_what_one_process_prints() -> None:
    """`--jobs`: the seeds run in parallel and their summaries come back in seed order, the
    same as from one process (but for each run's wall time), with and without swarm faults."""
    files = [str(ROOT / "scenarios" / name) for name in ("round-robin.toml", "worker-crash.toml")]

    def run(jobs: int, swarm_mode: bool) -> list[dict[str, object]]:
        out = io.StringIO()
        explore(files, runs=6, out=out, as_json=True, jobs=jobs, swarm_mode=swarm_mode)
        return [json.loads(line) for line in out.getvalue().splitlines()]

    for swarm_mode in (False, True):
        one, many = run(1, swarm_mode), run(3, swarm_mode)
        assert one == [{**r, "wall_ms": o.get("wall_ms")} if "wall_ms" in r else r
                       for r, o in zip(many, one, strict=True)]


def test_explore_shows_progress_on_stderr_and_keeps_its_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rr = str(ROOT / "scenarios" / "round-robin.toml")
    quiet, shown = io.StringIO(), io.StringIO()
    assert explore([rr], runs=3, out=quiet, progress=False) == 0
    assert capsys.readouterr().err == ""
    assert explore([rr], runs=3, out=shown, progress=True) == 0
    assert "round-robin" in capsys.readouterr().err  # the bar, named for the file
    strip = [line.split(" runs in ")[0] for line in quiet.getvalue().splitlines()]
    assert strip == [line.split(" runs in ")[0] for line in shown.getvalue().splitlines()]
