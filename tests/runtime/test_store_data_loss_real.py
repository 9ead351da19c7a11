"""A real Redis restarted without persistence under a running cluster (RabbitMQ + processes).

The test starts its own redis-server (a free port, its own --dir, --save "" --appendonly no),
runs two coordinators and two workers against it (their history goes to the shared Redis, the
observer's, which is not restarted), kills the leader once (so that the workers have seen epoch
2), submits tasks before, across and after a restart of that redis-server, and checks: never
two leaders on one epoch and epochs only grow; no permanent stall (every task submitted after
the restart finishes); every accepted task is kept (it finishes) or reported lost (a data-loss
report in the store says the namespace started again empty). The numbers measured are printed
(run with -s).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dtq.checker import check
from dtq.client.submitter import Submitter
from dtq.errors import ScenarioError
from dtq.runtime.process import NodeConfig
from dtq.scenario.links import ProxiedSupervisor
from dtq.scenario.real import wait_for
from dtq.task import TERMINAL, TaskSpec
from transports.rabbitmq import delete_namespace
from transports.redis import RedisHistory, RedisStore

pytestmark = [pytest.mark.rabbitmq,
              pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="needs redis-server to start its own")]

NAMES = ["coordinator-1", "coordinator-2", "worker-1", "worker-2"]
STORY = {"leader", "abdicated", "coordinator_started", "stale_write_refused", "store_data_lost",
         "worker_started"}
"""The events a failure message tells, in order (times from the restart's start, in ms)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A redis-server of this test's own, without persistence, that can be restarted."""

    def __init__(self, directory: Path) -> None:
        self.port = _free_port()
        self.dir = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.dir), "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:
            wait_for(lambda: self._pings(client), 10, "the test's redis-server to answer")
        finally:
            client.close()

    @staticmethod
    def _pings(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _specs(prefix: str, n: int) -> list[TaskSpec]:
    return [TaskSpec(id=f"{prefix}-{i:04d}", type="sleep", payload={"ms": 20}, timeout_ms=5000)
            for i in range(n)]


@pytest.mark.parametrize("leader_dies", [False, True], ids=["leader-reseeds", "leader-dies"])
def test_a_redis_restarted_without_persistence_loses_no_task_silently(
    own_redis: OwnRedis, rabbitmq_url: str, redis_url: str, leader_dies: bool,
) -> None:
    """With `leader_dies`, the leader is SIGKILLed as Redis goes down: nobody holds a view of
    the lost data, so a standby starts the namespace again and reports the loss unrecovered."""
    ns = f"test-loss-{uuid.uuid4().hex[:8]}"
    common: dict[str, Any] = {"broker_url": rabbitmq_url, "store_url": own_redis.url,
                              "namespace": ns, "history": True, "log_level": "error",
                              "lease_ttl_ms": 2000}
    configs = [NodeConfig(role="coordinator" if n.startswith("coord") else "worker", name=n,
                          concurrency=1 if n.startswith("coord") else 4, **common)
               for n in NAMES]
    sup = ProxiedSupervisor(configs, history_url=redis_url)
    history = RedisHistory.from_url(redis_url, prefix=ns)
    store = RedisStore.from_url(own_redis.url, prefix=ns, client_name=f"observer:{ns}")
    submitter: Submitter | None = None
    sup.start()
    try:
        wait_for(lambda: store.lease("coordinator") is not None, 60, "a leader", sup.poll)
        submitter = Submitter(rabbitmq_url, namespace=ns, record=history.record)
        before, across, after = _specs("before", 200), _specs("across", 200), _specs("after", 50)
        submitter.submit(before)
        # an earlier failover first: the workers remember epoch 2, which must never go back
        first = store.lease("coordinator")
        assert first is not None
        wait_for(lambda: _finished(store) >= 20, 60, "the first tasks", sup.poll)
        sup.kill(first.holder)
        wait_for(lambda: (held := store.lease("coordinator")) is not None
                 and held.holder != first.holder, 60, "a failover", sup.poll)
        sup.restart(first.holder)
        wait_for(lambda: _finished(store) >= 60, 60, "a third of the first tasks", sup.poll)
        submitter.submit(across)
        wait_for(lambda: (held := store.lease("coordinator")) is not None
                 and sup.alive(held.holder), 60, "a live leader", sup.poll)
        restarted = time.time()
        leader = store.lease("coordinator")
        if leader_dies and leader is not None:
            sup.kill(leader.holder)
        own_redis.stop()
        lost_at = time.time()  # what ended before this was in the store that went away
        own_redis.start()  # the same port and directory, no data
        back = time.time()
        if leader_dies and leader is not None:
            sup.restart(leader.holder)
        submitter.submit(after)
        try:
            wait_for(lambda: _settled(store, history, before + across + after), 120,
                     "every task to finish or be reported lost", sup.poll)
        except ScenarioError as exc:
            raise AssertionError(_unsettled_story(store, history, before + across + after,
                                                  int(restarted * 1000))) from exc
        history.flush()
        events = history.read_events()
        reports = store.data_losses()
        ids = [s.id for s in before + across + after]
        kept = [i for i in ids if (rec := store.get_task(i)) is not None and rec.state in TERMINAL]
        leaders = [(int(e.data["epoch"]), e.actor, e.time_ms) for e in events
                   if e.kind == "leader"]
        reseed = [e for e in events if e.kind == "store_data_lost" and "recovered" in e.data]
        print(f"\nredis down {1000 * (back - restarted):.0f} ms; leaders {leaders}; "
              f"reports {reports}; kept {len(kept)} of {len(ids)}; "
              f"detected -> re-seeded {[e.time_ms - int(restarted * 1000) for e in reseed]} ms "
              "after the restart began")
        story = "\n".join(f"{e.time_ms - int(restarted * 1000)} {e.actor} {e.kind} {e.data}"
                          for e in events if e.kind in STORY)
        # never two leaders on one epoch, and epochs only grow
        by_epoch: dict[int, set[str]] = {}
        for epoch, actor, _ in leaders:
            by_epoch.setdefault(epoch, set()).add(actor)
        assert all(len(actors) == 1 for actors in by_epoch.values()), story
        assert [e for e, _, _ in leaders] == sorted({e for e, _, _ in leaders}), story
        # the loss was seen and reported
        assert reports and reseed, "the data loss went unreported"
        # no permanent stall: every task submitted after the restart finished
        assert all(i in kept for i in (s.id for s in after))
        # every accepted task kept, or the loss reported as losing what the store held
        assert len(reports) == 1, story
        if reports[0]["recovered"]:
            # the leader re-seeds what it holds; a task that had ended before the loss and that
            # nothing unfinished depended on was no longer held, and the report says so
            # (ended before the server stopped, not before the test began to stop it: on a
            # loaded machine tasks go on ending for a while in between)
            before_loss = _ended(events, until_ms=int(lost_at * 1000))
            missing = set(ids) - set(kept)
            assert missing <= before_loss, f"{len(missing - before_loss)} tasks neither " \
                "finished nor reported"
            assert not missing or reports[0]["finished_kept"] == "held only", reports
        if leader_dies:
            assert not reports[0]["recovered"], story
        elif not _stopped_before_the_loss(events, leader, restarted):
            # the leader held its view through the loss: it must have re-seeded the store
            assert reports[0]["recovered"], story
        assert not [r for r in store.scan_tasks(limit=100_000) if not r.state.terminal]
        result = check(events)
        assert not {v.invariant for v in result.violations} & {
            "one_leader_per_epoch", "epochs_grow", "no_stale_write"}, result.violations
    finally:
        if submitter is not None:
            submitter.close()
        sup.stop_all()
        history.client.delete(history.key)
        history.close()
        store.close()
        delete_namespace(rabbitmq_url, ns, [*NAMES, "client"])


def _stopped_before_the_loss(events: list[Any], leader: Any, restarted: float) -> bool:
    """Whether the leader at the restart had stepped down (on a loaded machine a leader whose
    loop lags past its lease does) or crashed before it detected the loss: then nobody held a
    view, and the loss is rightly reported unrecovered."""
    detected = min((e.time_ms for e in events if e.kind == "store_data_lost"
                    and e.actor == getattr(leader, "holder", None)), default=None)
    return leader is None or any(
        e.actor == leader.holder and e.kind in ("abdicated", "crash", "coordinator_started")
        and e.time_ms >= int(restarted * 1000) - 2000
        and (detected is None or e.time_ms < detected) for e in events)


def _finished(store: RedisStore) -> int:
    try:
        return len(store.scan_tasks(states=TERMINAL, limit=100_000))
    except Exception:  # the store is restarting
        return 0


def _ended(events: list[Any], until_ms: int | None = None) -> set[str]:
    """Tasks whose end the leader recorded (before `until_ms`)."""
    return {str(e.data["task"]) for e in events if e.kind in ENDS
            and (until_ms is None or e.time_ms < until_ms)}


ENDS = ("succeeded", "failed", "cancelled", "rejected")


def _unsettled_story(store: RedisStore, history: RedisHistory, specs: list[TaskSpec],
                     restarted_ms: int, most: int = 10) -> str:
    """What a failure says: the tasks not settled, their records and their history events, the
    data-loss reports and the leadership story (times from the restart's start, in ms)."""
    history.flush()
    events = history.read_events()
    done = _ended(events)
    try:
        done |= {r.id for r in store.scan_tasks(states=TERMINAL, limit=100_000)}
        reports: Any = store.data_losses()
    except Exception as exc:  # the store is restarting
        reports = f"unreadable: {exc!r}"
    open_ids = [s.id for s in specs if s.id not in done]
    lines = [f"{len(open_ids)} tasks not settled; reports {reports}"]
    for task_id in open_ids[:most]:
        try:
            record: Any = store.get_task(task_id)
        except Exception as exc:
            record = f"unreadable: {exc!r}"
        lines.append(f"{task_id}: {record}")
        lines += [f"    {e.time_ms - restarted_ms} {e.actor} {e.kind} {dict(e.data)}"
                  for e in events if e.data.get("task") == task_id]
    lines += [f"{e.time_ms - restarted_ms} {e.actor} {e.kind} {dict(e.data)}"
              for e in events if e.kind in STORY]
    return "\n".join(lines)


def _settled(store: RedisStore, history: RedisHistory, specs: list[TaskSpec]) -> bool:
    """Every task finished (its record in the store, or its end in the history: the record of
    a task that ended before the loss may be gone with it), or the store reports a loss nobody
    could recover (then the tasks accepted before it are reported lost, and only the later ones
    must finish)."""
    try:
        done = {r.id for r in store.scan_tasks(states=TERMINAL, limit=100_000)}
        unrecovered = any(not r.get("recovered") for r in store.data_losses())
    except Exception:  # the store is restarting
        return False
    done |= _ended(history.read_events())
    wanted = [s.id for s in specs if not unrecovered or s.id.startswith("after")]
    return all(i in done for i in wanted)
