"""The heartbeat failure detector: pure bookkeeping over heartbeat arrival times.

Times are the observer's own clock (the leader's `ctx.now_ms`), so clock skew between machines
does not matter. A worker silent for longer than `timeout_ms` is suspected; a heartbeat from a
suspected worker clears the suspicion (it rejoins). A new leader grants every known worker a
fresh grace period, so a failover never looks like the death of every worker.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs


@attrs.define(kw_only=True)
class FailureDetector:
    timeout_ms: int = 5000
    last_seen: dict[str, int] = attrs.field(factory=dict)
    suspected: dict[str, int] = attrs.field(factory=dict)
    """Suspected workers and when they were suspected."""

    def heard(self, worker: str, now_ms: int) -> bool:
        """Note a heartbeat; True if the worker was suspected (it has come back)."""
        self.last_seen[worker] = now_ms
        return self.suspected.pop(worker, None) is not None

    def grace(self, workers: Iterable[str], now_ms: int) -> None:
        """Give every named worker a fresh timeout, as if it had just been heard."""
        for worker in workers:
            self.last_seen[worker] = max(self.last_seen.get(worker, now_ms), now_ms)

    def check(self, now_ms: int) -> list[str]:
        """Workers newly suspected at `now_ms`, in name order."""
        newly = sorted(w for w, seen in self.last_seen.items()
                       if w not in self.suspected and now_ms - seen > self.timeout_ms)
        for worker in newly:
            self.suspected[worker] = now_ms
        return newly

    def alive(self, worker: str) -> bool:
        return worker in self.last_seen and worker not in self.suspected
