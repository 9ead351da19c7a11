"""Handler runs applied as one batch: a node handles what waited for it (its inbox, on real
processes) and applies the writes of the whole batch after the last handler, so a handler must
find what an earlier one of its batch wrote without the store (`Context.read_task`)."""

from __future__ import annotations

from dtq.task import TaskSpec

from ..simkit import events, make_sim, run_until_done


def test_a_dependency_that_succeeded_earlier_in_the_batch_releases_its_dependent() -> None:
    """The leader handles the dependency's success and then the dependent's submission in one
    batch. The success's handler forgets the finished record (nothing unfinished depends on
    it yet), and its write waits for the batch's end: read from the store, the dependency
    would still look dispatched, and the dependent would wait for a success that came."""
    sim = make_sim(1, workers=1)
    sim.submit(TaskSpec(id="base", type="echo", payload=1))
    sim.run(until_ms=10_000, stop=lambda: bool(events(sim, "effect", task="base")))
    sim.pause("coordinator-1")  # what comes now waits in its backlog, as in a process's inbox
    sim.run(until_ms=sim.now_ms + 200)
    sim.submit(TaskSpec(id="left", type="echo", payload=2, deps=("base",)))
    sim.run(until_ms=sim.now_ms + 200)
    assert not events(sim, "succeeded", task="base"), "the leader handled nothing while paused"
    sim.resume("coordinator-1")
    result = run_until_done(sim, 2, deadline_ms=sim.now_ms + 30_000)
    assert result.ok, result.violations
    [done] = events(sim, "succeeded", task="base")
    [accepted] = events(sim, "accepted", task="left")
    assert done.seq < accepted.seq, "both were handled in one batch, the success first"
    assert events(sim, "succeeded", task="left")
