"""A worker that holds more dispatches than it has slots starts the one of the highest priority
first (the longest waiting among equals). On quorum queues, which have no priorities before
RabbitMQ 4.0, this is what orders the normal dispatches a worker already holds behind the high
ones it takes from the high band; on the simulator the worker's prefetch makes it hold them."""

from __future__ import annotations

from .. import simkit


def test_held_dispatches_start_by_priority() -> None:
    for seed in range(1, 6):
        sim = simkit.make_sim(seed, workers=1, prefetch=50, concurrency=1, delay_ms=1)
        for n in range(20):
            sim.submit(simkit.spec(n, "sleep", {"ms": 50}))
        sim.run(until_ms=60_000, stop=lambda s=sim: bool(simkit.events(s, "started")))
        high = [simkit.spec(100 + n, "sleep", {"ms": 50}, priority=9) for n in range(3)]
        for spec in high:
            sim.submit(spec)
        result = simkit.run_until_done(sim, 23)
        assert result.ok, result.violations
        started = [e.data["task"] for e in simkit.events(sim, "started")]
        assert len(started) == 23
        # The worker held the whole backlog when the high ones came; at most the one it had
        # started (and one more it started meanwhile) runs before them.
        positions = sorted(started.index(s.id) for s in high)
        assert positions[-1] <= 4, (seed, started)
