"""Leader election: a lease in the store plus a fencing epoch that never goes back.

A coordinator takes the lease with `acquire_lease` (the store sets the epoch atomically to
max(its counter, the candidate's floor) + 1, the floor being the highest epoch this coordinator
has seen), renews it every ttl/3 with a compare-and-extend, and stops acting at 0.8 x ttl after
the last renew it *sent* (measured on its own monotonic clock), so it gives up before the lease
can run out under it. Correctness does not depend on this timing: every write the leader makes
is fenced by its epoch, and the store accepts a write only at its current epoch with the lease
held at it.

The store's data can be lost (a Redis restarted without persistence): the namespace's
incarnation marker tells. Every coordinator remembers the marker it saw (`IncarnationWatch`);
the first leader of a namespace writes it (set-if-absent), and leases are taken and renewed
only while the marker is the one the coordinator knows. A lease taken while the store shows no
marker is at an epoch above the store's clock in ms: a coordinator that restarted with the
data gone cannot tell a lost namespace from a new one, and epochs must not go back either way.
A loss nobody saw (every coordinator restarted) is told by the workers: their heartbeats name
the marker they knew until the store holds a report of its loss (`dtq.recovery`).

When the marker is missing or changed:

* a leader reports `Step.DATA_LOST`; one whose lease would still be held (`may_reseed`)
  re-seeds the store from its view (`recover`: a new marker, the lease at an epoch above
  anything it saw), which the store allows only while nobody has started the namespace again;
* a standby reports it too, and while the marker stays missing it does not take the lease for
  `recovery_grace_ms` (2 x ttl), leaving the leader that holds the view time to re-seed; after
  that it takes the lease at an epoch above the store's clock in ms (the leader that knew the
  last epoch may be gone, and every epoch before is below that) and writes a new marker
  itself (`took_over_lost` then holds: the namespace starts again empty, and what it held is
  reported lost).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs

from dtq.errors import StoreUnavailable
from dtq.store import LEADER_LEASE, Store


class Step(enum.Enum):
    TOOK_OVER = "took over"
    RENEWED = "renewed"
    LOST = "lost"
    STANDBY = "standby"
    UNREACHABLE = "store unreachable"
    DATA_LOST = "store data lost"


@attrs.define(kw_only=True)
class IncarnationWatch:
    """Remembers the incarnation marker a process saw; `see` says when the data was lost."""

    known: str | None = None
    """The last marker seen (kept while the store shows none, until a new one appears)."""
    missing: bool = False
    """The known marker was found missing and that was reported."""

    def see(self, marker: str | None) -> str | None:
        """Look at the store's marker now; the lost marker the first time its loss shows (the
        marker missing, or another one in its place), else None."""
        if marker == self.known:
            return None
        if self.known is None:  # first sight of the namespace's marker
            self.known = marker
            return None
        lost, reported = self.known, self.missing
        if marker is None:
            self.missing = True
        else:
            self.known, self.missing = marker, False
        return None if reported else lost

    def adopt(self, marker: str) -> None:
        """This process wrote `marker` itself."""
        self.known, self.missing = marker, False


@attrs.define(kw_only=True)
class Election:
    name: str
    lease_ttl_ms: int = 2000
    standby_poll_ms: int = 100
    leading: bool = False
    epoch: int = 0
    valid_until_ms: int = 0
    seen_epoch: int = 0
    """The floor: the highest epoch this coordinator has seen (held, read or heard of)."""
    watch: IncarnationWatch = attrs.field(factory=IncarnationWatch)
    lost: str | None = None
    """The marker the latest `Step.DATA_LOST` found gone."""
    missing_since_ms: int | None = None
    took_over_lost: str | None = None
    """Set when this coordinator took the lease after the marker `took_over_lost` was lost and
    nobody re-seeded the store: it leads an empty namespace."""

    @property
    def renew_every_ms(self) -> int:
        return max(1, self.lease_ttl_ms // 3)

    @property
    def recovery_grace_ms(self) -> int:
        return 2 * self.lease_ttl_ms

    @property
    def next_tick_ms(self) -> int:
        return self.renew_every_ms if self.leading else self.standby_poll_ms

    def _valid_from(self, sent_ms: int) -> None:
        self.valid_until_ms = sent_ms + self.lease_ttl_ms * 8 // 10

    def saw(self, epoch: int) -> None:
        """An epoch this coordinator heard of: lease epochs never go back below it."""
        self.seen_epoch = max(self.seen_epoch, epoch)

    def step(self, store: Store, now_ms: int, new_marker: Callable[[], str]) -> Step:
        """Renew (leader) or try to take (standby) the lease. `new_marker()` makes a fresh
        incarnation marker, asked for only when this coordinator must write one."""
        try:
            return self._renew(store, now_ms) if self.leading \
                else self._try_take(store, now_ms, new_marker)
        except StoreUnavailable:
            # A leader cut from the store keeps its last validity window and stops acting when
            # it ends; its pending writes will be refused if a newer leader took over meanwhile.
            return Step.UNREACHABLE

    def _renew(self, store: Store, now_ms: int) -> Step:
        if store.renew_lease(LEADER_LEASE, self.name, self.epoch, self.lease_ttl_ms,
                             incarnation=self.watch.known):
            self._valid_from(now_ms)
            return Step.RENEWED
        if self.check(store) is not None:
            return Step.DATA_LOST  # still leading: the coordinator re-seeds or steps down
        self.leading = False
        return Step.LOST

    def check(self, store: Store, marker: str | None = None) -> str | None:
        """Read the marker (unless given); the lost one (also kept in `lost`) when the data
        turns out gone."""
        lost = self.watch.see(marker if marker is not None else store.incarnation())
        if lost is not None:
            self.lost = lost
        return lost

    def _learn_from_workers(self, store: Store) -> None:
        """The store shows no marker: a fresh namespace, or one that lost its data. Workers'
        entries (written again by their next heartbeats) tell which, with the highest epoch
        they saw, and the marker they knew for a coordinator that never saw it itself."""
        workers = store.workers()
        for w in workers:
            self.saw(w.epoch)
        if self.watch.known is None:
            known = sorted({w.incarnation for w in workers if w.incarnation})
            if known:
                self.watch.known = known[0]

    def _try_take(self, store: Store, now_ms: int, new_marker: Callable[[], str]) -> Step:
        self.saw(store.epoch())
        marker = store.incarnation()
        if marker is None:
            self._learn_from_workers(store)
        if self.check(store, marker) is not None:
            self.missing_since_ms = now_ms if self.watch.missing else None
            return Step.DATA_LOST
        expect = self.watch.known
        if self.watch.missing:
            if self.missing_since_ms is None:
                self.missing_since_ms = now_ms
            if now_ms - self.missing_since_ms < self.recovery_grace_ms:
                return Step.STANDBY  # leave the leader that holds the view time to re-seed
            expect = None
        # With no marker in the store the namespace starts (again): nobody may know the last
        # epoch (the leader that held it may have died with the data, and a coordinator that
        # restarted since cannot tell a lost namespace from a new one), so the epoch is above
        # the store's clock in ms, which is above any epoch before.
        epoch = store.acquire_lease(LEADER_LEASE, self.name, self.lease_ttl_ms,
                                    floor=self.seen_epoch, incarnation=expect,
                                    above_clock=marker is None)
        if epoch is None:
            return Step.STANDBY
        if self.watch.known is None or self.watch.missing:
            if self.watch.missing:
                self.took_over_lost = self.watch.known
            self.watch.adopt(store.claim_incarnation(new_marker()))
            self.missing_since_ms = None
        self.leading, self.epoch = True, epoch
        self.saw(epoch)
        self._valid_from(now_ms)
        return Step.TOOK_OVER

    def may_reseed(self, now_ms: int) -> bool:
        """A leader may re-seed the lost store from its view while its lease, had the store
        kept it, would still be held (0.9 x ttl after the last renew it sent): no standby can
        have taken over before the loss, so its view is the latest. (After the loss, standbys
        that saw the marker wait `recovery_grace_ms`, and the store refuses the re-seed once
        anyone has started the namespace again.) Stops acting is earlier, at 0.8 x ttl: a
        store restart that held up the leader's renewals should not cost the view."""
        return self.leading and now_ms < self.valid_until_ms + self.lease_ttl_ms // 10

    def recover(self, store: Store, now_ms: int, marker: str) -> int | None:
        """Re-seed after a data loss: take the lease at an epoch above anything seen under the
        new incarnation `marker`; the epoch, or None when the store refuses (somebody started
        the namespace again) or cannot be reached."""
        if self.lost is None or not self.may_reseed(now_ms):
            return None
        try:
            epoch = store.recover_lease(LEADER_LEASE, self.name, self.lease_ttl_ms,
                                        floor=max(self.seen_epoch, self.epoch), lost=self.lost,
                                        incarnation=marker)
        except StoreUnavailable:
            return None
        if epoch is None:
            return None
        self.watch.adopt(marker)
        self.leading, self.epoch = True, epoch
        self.saw(epoch)
        self._valid_from(now_ms)
        return epoch

    def acting(self, now_ms: int) -> bool:
        return self.leading and now_ms < self.valid_until_ms
