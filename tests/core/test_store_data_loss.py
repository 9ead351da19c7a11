"""The store losing its data (a restart without persistence): the election's rules (epochs never
go back, standbys leave the leader with the view time to re-seed, a coordinator that never saw
the marker learns it from the workers) and what the API says. Whole runs are in
tests/scenario/test_store_data_loss_sim.py (the simulator) and
tests/runtime/test_store_data_loss_real.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dtq.election import Election, Step
from dtq.store import LEADER_LEASE, WorkerInfo
from tests.api.test_api_kit import make_api
from transports.memory_store import SimStore

# --- the election ------------------------------------------------------------------------------


@pytest.fixture
def store() -> Iterator[SimStore]:
    now = [0]
    s = SimStore(now_ms=lambda: now[0])
    s.clock = now  # type: ignore[attr-defined]
    yield s


def _at(store: SimStore, ms: int) -> int:
    store.clock[0] = ms  # type: ignore[attr-defined]
    return ms


def test_a_standby_waits_for_the_leader_with_the_view_then_follows_it(store: SimStore) -> None:
    leader, standby = Election(name="c1"), Election(name="c2")
    markers = iter(["m1", "m2", "m3"])
    assert leader.step(store, _at(store, 0), lambda: next(markers)) is Step.TOOK_OVER
    assert standby.step(store, 0, lambda: next(markers)) is Step.STANDBY
    assert store.incarnation() == "m1" and standby.seen_epoch == 1
    store.lose_data()
    assert standby.step(store, _at(store, 100), lambda: "x") is Step.DATA_LOST
    assert standby.lost == "m1"
    # the lease is free, but the standby leaves the leader time to re-seed
    assert standby.step(store, _at(store, 200), lambda: "x") is Step.STANDBY
    assert store.lease(LEADER_LEASE) is None
    assert leader.step(store, _at(store, 600), lambda: "x") is Step.DATA_LOST
    assert leader.recover(store, 600, "m2") == 2 and store.incarnation() == "m2"
    assert standby.step(store, _at(store, 700), lambda: "x") is Step.STANDBY
    assert standby.watch.known == "m2" and not standby.watch.missing


def test_with_nobody_to_reseed_a_standby_starts_the_namespace_again_above_the_floor(
    store: SimStore,
) -> None:
    leader, standby = Election(name="c1"), Election(name="c2")
    leader.step(store, _at(store, 0), lambda: "m1")
    store.release_lease(LEADER_LEASE, "c1", 1)
    assert standby.step(store, _at(store, 10), lambda: "x") is Step.TOOK_OVER  # epoch 2
    standby.leading = False
    store.lose_data()
    assert standby.step(store, _at(store, 20), lambda: "x") is Step.DATA_LOST
    grace = standby.recovery_grace_ms
    assert standby.step(store, _at(store, 20 + grace - 1), lambda: "x") is Step.STANDBY
    assert standby.step(store, _at(store, 20 + grace), lambda: "m9") is Step.TOOK_OVER
    assert standby.epoch == 20 + grace + 1  # above the store's clock: above any epoch before
    assert standby.took_over_lost == "m1"
    assert store.incarnation() == "m9"


def test_a_coordinator_that_never_saw_the_marker_learns_it_and_the_floor_from_workers(
    store: SimStore,
) -> None:
    """A restarted coordinator remembers nothing; the workers' entries carry the marker they
    knew and the highest epoch they saw, so it neither mistakes the loss for a new namespace
    nor takes an epoch the workers would see go back."""
    store.put_worker(WorkerInfo(name="w1", last_heartbeat_ms=0, epoch=5, incarnation="m1"))
    fresh = Election(name="c3")
    assert fresh.step(store, _at(store, 0), lambda: "x") is Step.DATA_LOST
    assert fresh.lost == "m1" and fresh.seen_epoch == 5
    assert fresh.step(store, _at(store, 3), lambda: "m2") is Step.STANDBY  # the grace
    store.put_worker(WorkerInfo(name="w2", last_heartbeat_ms=0, epoch=9000, incarnation="m1"))
    assert fresh.step(store, _at(store, fresh.recovery_grace_ms), lambda: "m2") \
        is Step.TOOK_OVER
    assert fresh.epoch == 9001  # the workers' floor, above the store's clock (4000) here


def test_a_fresh_namespace_is_not_a_loss(store: SimStore) -> None:
    first = Election(name="c1")
    assert first.step(store, 0, lambda: "m1") is Step.TOOK_OVER
    assert first.epoch == 1 and store.incarnation() == "m1" and first.lost is None


# --- the API -----------------------------------------------------------------------------------


def test_cluster_and_readyz_report_the_loss_until_the_leader_reseeds() -> None:
    api = make_api()
    api.backend.advance(500)
    assert api.http.get("/readyz").status_code == 200
    store = api.http.get("/cluster").json()["store"]
    assert store["incarnation"] and store["data_lost"] is None and store["data_losses"] == []
    with api.backend.lock:
        api.backend.sim.store.lose_data()
    lost = api.http.get("/cluster").json()["store"]
    assert lost["incarnation"] is None and "lost its data" in lost["data_lost"]
    ready = api.http.get("/readyz")
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "store_data_lost"
    api.backend.advance(2000)  # the leader's next renewal finds the marker gone and re-seeds
    after = api.http.get("/cluster").json()["store"]
    assert after["data_lost"] is None and after["incarnation"] != store["incarnation"]
    assert after["data_losses"][0]["recovered"] is True
    assert after["data_losses"][0]["lost"] == store["incarnation"]
    assert api.http.get("/readyz").status_code == 200


def test_a_namespace_started_again_unreported_is_ready_and_said_lost() -> None:
    """Every process that held the data restarted (none knew of the loss) and a new leader
    runs under a marker nobody reported: the cluster works, so it is ready, and only this API
    process, which saw the old marker, can say that the tasks accepted before are lost."""
    api = make_api()
    api.backend.advance(500)
    before = api.http.get("/cluster").json()["store"]["incarnation"]
    with api.backend.lock:
        store = api.backend.sim.store
        store.lose_data()
        store.claim_incarnation("started-again")
    ready = api.http.get("/readyz")
    assert ready.status_code == 503 and "replaced by started-again" in ready.json()["error"][
        "message"]
    with api.backend.lock:
        assert store.acquire_lease(LEADER_LEASE, "unaware", 60_000) is not None
        store.put_worker(WorkerInfo(name="worker-1", last_heartbeat_ms=api.backend.sim.now_ms))
    assert api.http.get("/readyz").status_code == 200
    said = api.http.get("/cluster").json()["store"]["data_lost"]
    assert before in said and "accepted before are lost" in said
