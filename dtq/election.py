"""Leader election: a lease in the store plus a fencing epoch.

A coordinator takes the lease with `acquire_lease` (the store bumps the epoch atomically), renews
it every ttl/3 with a compare-and-extend, and stops acting at 0.8 x ttl after the last renew it
*sent* (measured on its own monotonic clock), so it gives up before the lease can run out under
it. Correctness does not depend on this timing: every write the leader makes is fenced by its
epoch, and the store refuses writes from an older epoch.
"""

from __future__ import annotations

import enum

import attrs

from dtq.errors import StoreUnavailable
from dtq.store import LEADER_LEASE, Store


class Step(enum.Enum):
    TOOK_OVER = "took over"
    RENEWED = "renewed"
    LOST = "lost"
    STANDBY = "standby"
    UNREACHABLE = "store unreachable"


@attrs.define(kw_only=True)
class Election:
    name: str
    lease_ttl_ms: int = 2000
    standby_poll_ms: int = 100
    leading: bool = False
    epoch: int = 0
    valid_until_ms: int = 0

    @property
    def renew_every_ms(self) -> int:
        return max(1, self.lease_ttl_ms // 3)

    @property
    def next_tick_ms(self) -> int:
        return self.renew_every_ms if self.leading else self.standby_poll_ms

    def _valid_from(self, sent_ms: int) -> None:
        self.valid_until_ms = sent_ms + self.lease_ttl_ms * 8 // 10

    def step(self, store: Store, now_ms: int) -> Step:
        """Renew (leader) or try to take (standby) the lease."""
        try:
            if self.leading:
                if not store.renew_lease(LEADER_LEASE, self.name, self.epoch, self.lease_ttl_ms):
                    self.leading = False
                    return Step.LOST
                self._valid_from(now_ms)
                return Step.RENEWED
            epoch = store.acquire_lease(LEADER_LEASE, self.name, self.lease_ttl_ms)
        except StoreUnavailable:
            # A leader cut from the store keeps its last validity window and stops acting when
            # it ends; its pending writes will be refused if a newer leader took over meanwhile.
            return Step.UNREACHABLE
        if epoch is None:
            return Step.STANDBY
        self.leading, self.epoch = True, epoch
        self._valid_from(now_ms)
        return Step.TOOK_OVER

    def acting(self, now_ms: int) -> bool:
        return self.leading and now_ms < self.valid_until_ms
