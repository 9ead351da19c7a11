"""Redis Sentinel URLs and the local cluster testbed (`dtq testbed`).

URL parsing runs anywhere. The rest starts its own servers on a free block of loopback ports
(never the shared 6379/5672): Redis-only tests start a primary, a replica and three Sentinels;
they skip locally when redis-server is missing and fail under CI. What they pin: a store built
from a `redis+sentinel://` URL works, follows `SENTINEL FAILOVER` to the new primary within
half a second of the Sentinels naming it (not the seconds the old primary keeps accepting
writes), and a write refused by a read-only replica or a primary without its replicas is
"unavailable, try again", never a plain store error. The RabbitMQ cluster test (slow)
starts the whole testbed.

Run them alone: `.venv/bin/pytest -p no:randomly -n 0 tests/testing/test_testbed.py`.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from dtq.client.submitter import Submitter
from dtq.envelope import Finished
from dtq.errors import ConfigurationError, ScenarioError, StoreError, StoreUnavailable
from dtq.runtime.process import EXIT_CONFIG, NodeConfig, Supervisor
from dtq.scenario.links import address_of
from dtq.scenario.model import load
from dtq.scenario.real import run_real, wait_for
from dtq.store import PutTask, WorkerInfo
from dtq.task import TaskRecord, TaskResult, TaskSpec, TaskState
from dtq.testing.testbed import (
    Layout,
    Testbed,
    alive,
    free_base_port,
    have_rabbitmq,
    have_redis,
    running,
    until,
)
from tests.conftest import require_service
from tests.scenariokit import ROOT, held
from transports.rabbitmq import delete_namespace
from transports.redis import RedisStore, SentinelUrl, _client_from_url, client_name


def _worker(name: str) -> WorkerInfo:
    return WorkerInfo(name=name, last_heartbeat_ms=1, state="idle", running=())


# URLs -----------------------------------------------------------------------------------------
def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    u = SentinelUrl.parse("redis+sentinel://:s%40cret@h1:26380,h2,[::1]:26381/mymaster/3"
                          "?sentinel_password=x")
    assert u.sentinels == (("h1", 26380), ("h2", 26379), ("::1", 26381))
    assert (u.service, u.db, u.username, u.password, u.ssl) == ("mymaster", 3, None, "s@cret",
                                                                 False)
    assert dict(u.query) == {"sentinel_password": "x"}
    tls = SentinelUrl.parse("rediss+sentinel://app:pw@h1/svc")
    assert (tls.db, tls.username, tls.password, tls.ssl) == (0, "app", "pw", True)


@pytest.mark.parametrize("url", [
    "redis+sentinel://:pw@h1:26379/", "redis+sentinel://:pw@/svc/0",
    "redis+sentinel://:pw@h1:x/svc", "redis+sentinel://:pw@h1/svc/db",
    "redis+sentinel://:pw@h1/svc/0/extra", "redis+sentinel://:pw@h1/svc?bogus=1"])
def test_a_broken_sentinel_url_is_a_configuration_error_without_its_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SentinelUrl.parse(url)
    assert "pw" not in str(caught.value) and "redis+sentinel://" in str(caught.value)


@pytest.mark.parametrize(("scheme", "connection", "sentinel_connection"), [
    ("redis+sentinel", "_PrimaryConnection", "Connection"),
    ("rediss+sentinel", "_PrimarySSLConnection", "SSLConnection")])
def test_a_sentinel_url_builds_a_client_of_the_primary_with_its_settings(
    scheme: str, connection: str, sentinel_connection: str,
) -> None:
    """No server needed: clients connect lazily. The servers get the URL's credentials and
    database, the Sentinels theirs, both TLS for rediss+sentinel; the Sentinels' timeout is no
    longer than the client's."""
    client = _client_from_url(f"{scheme}://app:pw@h1:1,h2:2/svc/2?ssl_ca_certs=/ca.pem"
                              "&sentinel_password=sp", client_name="n", socket_timeout=0.25)
    pool: Any = client.connection_pool
    assert type(pool).__name__ == "_PrimaryPool" and pool.service_name == "svc"
    assert pool.connection_class.__name__ == connection
    kw = pool.connection_kwargs
    assert (kw["db"], kw["username"], kw["password"], kw["client_name"]) == (2, "app", "pw", "n")
    sentinels = [s.connection_pool for s in pool.sentinel_manager.sentinels]
    assert [(p.connection_kwargs["host"], p.connection_kwargs["port"]) for p in sentinels] == \
        [("h1", 1), ("h2", 2)]
    asked = sentinels[0]
    assert asked.connection_class.__name__ == sentinel_connection
    assert asked.connection_kwargs["password"] == "sp"
    assert asked.connection_kwargs["socket_timeout"] == 0.25
    if scheme.startswith("rediss"):
        assert kw["ssl_ca_certs"] == asked.connection_kwargs["ssl_ca_certs"] == "/ca.pem"


def test_fault_proxies_refuse_a_url_naming_several_servers() -> None:
    assert address_of("redis://127.0.0.1:6380/0", 6379) == "127.0.0.1:6380"
    with pytest.raises(ConfigurationError, match="several servers"):
        address_of("redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0", 6379)


# Redis with a replica and Sentinels -------------------------------------------------------------
def _require(what: str, present: bool) -> None:
    def check() -> None:
        if not present:
            raise FileNotFoundError(f"{what} is not installed")

    require_service(what, check)


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    _require("redis-server", have_redis())
    with running(Layout(tmp_path_factory.mktemp("testbed"), base_port=free_base_port(),
                        rabbit=False)) as bed:
        yield bed


@pytest.fixture
def store(sentinels: Testbed) -> Iterator[RedisStore]:
    s = RedisStore.from_url(sentinels.layout.store_url, prefix=f"tb-{uuid.uuid4().hex[:8]}")
    try:
        yield s
    finally:
        s.delete_all()
        s.close()


def _plain(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)


def test_a_store_from_a_sentinel_url_works(sentinels: Testbed, store: RedisStore) -> None:
    assert store.acquire_lease("coordinator", "c1", 5000) == 1
    lease = store.lease("coordinator")
    assert lease is not None and (lease.holder, lease.epoch) == ("c1", 1)
    assert store.claim_key("k", "t1", "f1") == ("t1", "f1")
    assert store.claim_key("k", "t2", "f2") == ("t1", "f1")
    store.put_worker(_worker("w1"))
    assert [w.name for w in store.workers()] == ["w1"]
    primary = sentinels.primary_port()
    assert primary is not None and _plain(primary).hexists(store._k("workers"), "w1")


def _replicated_write(bed: Testbed, store: RedisStore, worker: str) -> None:
    """Write through `store`, then wait until a replica holds it (failovers here test how
    clients follow, not what an unreplicated write costs)."""
    store.put_worker(_worker(worker))
    primary = bed.primary_port()
    assert primary is not None
    until("the replica to hold the write", lambda: _plain(primary).wait(1, 1000) >= 1)


def test_a_store_follows_a_sentinel_failover_without_a_restart(
    sentinels: Testbed, store: RedisStore,
) -> None:
    _replicated_write(sentinels, store, "before")
    with sentinels.demotion_held():
        old, new = sentinels.failover()
        # The old primary still accepts writes until the Sentinels reconfigure it: a store
        # still talking to it would write there and lose it when it resyncs.
        assert _plain(old).info("replication")["role"] == "master"
        # The store asks the Sentinels again at most every RECHECK_S (0.5 s): a failover that
        # completes within that much of its last question is learnt at its next one. What is
        # pinned: once it has learnt it, nothing goes to the old primary, still writable.
        pool: Any = store.client.connection_pool
        until("the store to learn the new primary",
              lambda: (pool._recheck(), pool.proxy.master_address)[1] == ("127.0.0.1", new))
        store.put_worker(_worker("after"))
        key = store._k("workers")
        assert _plain(new).hexists(key, "after") and not _plain(old).hexists(key, "after")
        assert _plain(old).info("replication")["role"] == "master"  # it was there to be written
    sentinels.wait_demoted(old)
    store.put_worker(_worker("demoted"))
    assert [w.name for w in store.workers()] == ["after", "before", "demoted"]
    assert store.acquire_lease("coordinator", "c1", 5000) == 1
    until("the Sentinels to see the old primary as a replica", sentinels.redis_ready)


def test_a_store_comes_back_after_a_kill_of_the_primary(
    sentinels: Testbed, store: RedisStore,
) -> None:
    _replicated_write(sentinels, store, "before")
    old, new = sentinels.kill_redis_primary()

    def written() -> bool:
        try:
            store.put_worker(_worker("after"))
        except StoreUnavailable:  # until the store moves; never another error
            return False
        return True

    wait_for(written, 60, "a write after the kill")  # any other error fails the test
    assert [w.name for w in store.workers()] == ["after", "before"]
    assert _plain(new).hexists(store._k("workers"), "after")
    sentinels.restart(sentinels.redis_name(old))
    sentinels.wait_demoted(old)
    assert _plain(old).hexists(store._k("workers"), "after")  # resynced from the new primary
    until("the Sentinels to see the old primary as a replica", sentinels.redis_ready)


def test_a_write_refused_by_a_read_only_replica_is_unavailable_not_an_error(
    sentinels: Testbed,
) -> None:
    primary = sentinels.primary_port()
    replica = next(p for p in sentinels.layout.redis_ports if p != primary)
    assert _plain(replica).info("replication")["role"] == "slave"
    stuck = RedisStore.from_url(f"redis://127.0.0.1:{replica}/0", prefix="tb-ro")
    try:
        assert stuck.workers() == []  # reads answer
        with pytest.raises(StoreUnavailable, match="read only replica"):
            stuck.put_worker(_worker("w1"))
        with pytest.raises(StoreUnavailable):
            stuck.acquire_lease("coordinator", "c1", 5000)  # a Lua script that writes
    finally:
        stuck.close()


def test_a_primary_short_of_replicas_is_unavailable_until_they_return(
    sentinels: Testbed, store: RedisStore,
) -> None:
    primary = sentinels.primary_port()
    assert primary is not None
    connection = store.client.client_id()
    _plain(primary).config_set("min-replicas-to-write", 2)  # one replica: short of two
    try:
        with pytest.raises(StoreUnavailable, match="NOREPLICAS"):
            store.put_worker(_worker("w1"))
        # The refusal dropped the connection: the next one asked the Sentinels again.
        assert store.client.client_id() != connection
        with pytest.raises(StoreUnavailable):
            store.claim_key("k", "t1", "f1")
    finally:
        _plain(primary).config_set("min-replicas-to-write", 0)
    store.put_worker(_worker("w1"))
    assert [w.name for w in store.workers()] == ["w1"]


def test_with_wait_replicas_a_write_returns_only_once_a_replica_holds_it(
    sentinels: Testbed,
) -> None:
    """`?wait_replicas=1`: when a write returns, the replica already holds it (no waiting
    here: read at once). Asking for more replicas than there are makes every write that a
    client could be told about unavailable, the fenced apply and a result write included."""
    primary = sentinels.primary_port()
    assert primary is not None
    replica = next(p for p in sentinels.layout.redis_ports if p != primary)
    ns = f"tb-wait-{uuid.uuid4().hex[:8]}"
    durable = RedisStore.from_url(f"redis://127.0.0.1:{primary}/0?wait_replicas=1", prefix=ns)
    short = RedisStore.from_url(f"redis://127.0.0.1:{primary}/0?wait_replicas=2&wait_ms=50",
                                prefix=ns + "-short")
    try:
        assert durable.wait_replicas == 1 and short.wait_ms == 50
        for i in range(20):
            durable.claim_key(f"k{i}", f"t{i}", "f")
            assert _plain(replica).exists(durable._k("key", f"k{i}"))
        url = sentinels.layout.store_url
        followed = RedisStore.from_url(url + ("&" if "?" in url else "?") + "wait_replicas=1",
                                       prefix=ns + "-sentinel")
        try:
            assert followed.wait_replicas == 1
            assert followed.claim_key("k", "t", "f") == ("t", "f")
            assert _plain(replica).exists(followed._k("key", "k"))
        finally:
            followed.delete_all()
            followed.close()
        connection = short.client.client_id()
        with pytest.raises(StoreUnavailable, match="NOT REPLICATED: 1 of 2"):
            short.claim_key("k", "t1", "f1")
        # It dropped its connection: the next one asks where the primary is (a Sentinel URL).
        assert short.client.client_id() != connection
        with pytest.raises(StoreUnavailable, match="NOT REPLICATED"):
            short.apply([PutTask(record=TaskRecord(spec=TaskSpec(id="t", type="echo")))],
                        epoch=0)
        with pytest.raises(StoreUnavailable, match="NOT REPLICATED"):
            short.put_result(TaskResult(task_id="t", attempt=1, worker="w", ok=True))
    finally:
        for s in (durable, short):
            s.delete_all()
            s.close()


def test_other_refusals_stay_store_errors(store: RedisStore) -> None:
    store.client.set(store._k("workers"), "not a hash")
    with pytest.raises(StoreError) as caught:
        store.put_worker(_worker("w1"))
    assert not isinstance(caught.value, StoreUnavailable)


# the whole testbed ----------------------------------------------------------------------------
@pytest.mark.slow
def test_the_testbed_command_runs_a_three_node_rabbitmq_cluster(tmp_path: Path) -> None:
    _require("redis-server", have_redis())
    _require("rabbitmq-server", have_rabbitmq())
    import pika

    base = free_base_port()
    dtq = [sys.executable, "-m", "dtq.cli.main", "testbed"]
    where = ["--dir", str(tmp_path)]
    up = subprocess.run([*dtq, "up", "--base-port", str(base), *where], capture_output=True,
                        text=True, timeout=300, check=False)
    bed = Testbed.load(tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        assert bed is not None and bed.rabbit_ready()
        exports = dict(line.removeprefix("export ").split("=", 1)
                       for line in up.stdout.splitlines())
        brokers = exports["DTQ_BROKER_URL"].split(",")
        assert brokers == bed.layout.broker_urls and len(brokers) == 3
        assert exports["DTQ_STORE_URL"] == bed.layout.store_url
        # A quorum queue declared through one node is replicated: read through another.
        first = pika.BlockingConnection(pika.URLParameters(brokers[0]))
        channel = first.channel()
        channel.queue_declare("testbed-q", durable=True, arguments={"x-queue-type": "quorum"})
        channel.basic_publish("", "testbed-q", b"hello")
        last = pika.BlockingConnection(pika.URLParameters(brokers[2]))
        other = last.channel()
        until("the message through another node",
              lambda: other.basic_get("testbed-q", auto_ack=True)[2] == b"hello", 30)
        first.close()
        last.close()
        status = subprocess.run([*dtq, "status", *where], capture_output=True, text=True,
                                timeout=60, check=False)
        assert status.returncode == 0, status.stdout
        # kill -9 of a node: the others carry on without it; restarted, it is back in.
        bed.kill("rabbit-3")
        until("the cluster to run without node 3",
              lambda: bed.running_nodes() == [bed.layout.node_name(i) for i in (0, 1)], 60)
        bed.restart("rabbit-3")
        assert bed.rabbit_ready()
    finally:
        down = subprocess.run([*dtq, "down", *where], capture_output=True, text=True,
                              timeout=120, check=False)
    assert down.returncode == 0, down.stderr
    assert Testbed.load(tmp_path) is None
    assert bed is not None and not any(alive(pid) for pid in bed.pids.values())


def test_a_scenario_plays_the_testbeds_own_faults(tmp_path: Path, redis_url: str) -> None:
    """scenarios/testbed-faults.toml on real processes on a testbed of its own, under a steady
    50 tasks/s: RabbitMQ node 1 (every process's first address) killed and restarted, a
    Sentinel failover, the new primary killed and restarted. Every task succeeds, none runs
    twice, one leader per epoch (the checker), and the faults were played in the load."""
    _require("redis-server", have_redis())
    _require("rabbitmq-server", have_rabbitmq())
    with running(Layout(tmp_path, base_port=free_base_port())) as bed:
        result = run_real(load(ROOT / "scenarios" / "testbed-faults.toml"), live=False,
                          testbed=bed, history_url=redis_url)
    s = held(result)
    assert s["transport"] == "testbed"
    assert s["tasks"]["succeeded"] == 900 and s["tasks"]["duplicated"] == 0
    played = [e.data["action"] for e in result.events if e.kind == "fault"]
    assert played == ["kill_broker_node", "redis_failover", "kill_redis_primary"]


def test_down_with_nothing_recorded_is_quiet(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "dtq.cli.main", "testbed", "down", "--dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0 and "nothing recorded" in done.stderr


# a cluster through a failover ---------------------------------------------------------------
@pytest.mark.rabbitmq
@pytest.mark.slow
def test_a_cluster_keeps_running_through_a_sentinel_failover(
    rabbitmq_url: str, sentinels: Testbed,
) -> None:
    """Two coordinators and two workers on the shared RabbitMQ, their store behind Sentinels:
    `SENTINEL FAILOVER` in the middle of a stream of tasks. Every node moves to the new primary
    (whether before or after the Sentinels reconfigure the old one depends on how loaded the
    machine is: the test does not pin it), no node crash-loops (a leader that lost its lease
    may come back once as a standby), and every task submitted after the move succeeds.

    Not shown, because it does not hold yet: that every task submitted before the failover
    succeeds. Writes the old primary acknowledged between the replica's promotion and the
    Sentinels naming it (about a second) are lost when it resyncs (no `WAIT` for a replica yet):
    in one run the client heard 139 of 150 such tasks succeed while the new primary recorded
    72, and 78 stayed `dispatched`/`running` for a minute past a 3 s task timeout."""
    url = sentinels.layout.store_url
    ns = f"test-tb-{uuid.uuid4().hex[:8]}"
    common: dict[str, Any] = {"broker_url": rabbitmq_url, "store_url": url, "namespace": ns,
                              "log_level": "error", "lease_ttl_ms": 2000}
    names = ["coordinator-1", "coordinator-2", "worker-1", "worker-2"]
    sup = Supervisor([NodeConfig(role=n.split("-")[0], name=n, **common) for n in names])
    store = RedisStore.from_url(url, prefix=ns)
    with contextlib.ExitStack() as cleanup:  # run in reverse order
        cleanup.callback(delete_namespace, rabbitmq_url, ns, [*names, "client"])
        cleanup.callback(store.close)
        cleanup.callback(store.delete_all)
        cleanup.callback(sup.stop_all)
        sup.start()
        wait_for(lambda: store.lease("coordinator") is not None, 60, "a leader", sup.poll)
        heard: queue.Queue[Finished] = queue.Queue()
        submitter = Submitter(rabbitmq_url, namespace=ns, name="client", on_finished=heard.put,
                              store_url=url)
        cleanup.callback(submitter.close)
        before = [TaskSpec(id=f"a{i:03d}", type="sleep", payload={"ms": 20}) for i in range(150)]
        submitter.submit(before)
        wait_for(lambda: len(store.scan_tasks(states=[TaskState.SUCCEEDED])) >= 20, 60,
                 "tasks under way", sup.poll)
        old, new = sentinels.failover()

        def ours(port: int) -> int:
            """Connections of the namespace's nodes and of the client's subscription."""
            return sum(c.get("name") == client_name(ns)
                       or c.get("name", "").startswith(f"dtq-notices:{ns}:")
                       for c in _plain(port).client_list())

        def moved() -> bool:
            store.epoch()  # this process's connections move on use too
            return ours(old) == 0 and ours(new) > 1

        wait_for(moved, 60, "every node and the subscription on the new primary", sup.poll)
        after = [TaskSpec(id=f"b{i:03d}", type="sleep", payload={"ms": 20}) for i in range(150)]
        submitter.submit(after)

        def done_after() -> bool:
            ok = store.scan_tasks(states=[TaskState.SUCCEEDED], after="b", limit=1000)
            return len(ok) == len(after)

        wait_for(done_after, 120, "every task submitted after the move to succeed", sup.poll)
        # ... and the client heard each end: its subscription moved to the new primary too.
        ends: dict[str, str] = {}

        def unheard() -> set[str]:
            return {s.id for s in after} - _drain(heard, ends)

        with contextlib.suppress(ScenarioError):
            wait_for(lambda: not unheard(), 30, "every end to be heard", sup.poll)
        assert not unheard(), f"never heard: {sorted(unheard())}"
        assert {ends[s.id] for s in after} == {"succeeded"}
        assert store.scan_tasks(states=[TaskState.FAILED]) == []
        restarts = {n: node.restarts for n, node in sup.nodes.items()}
        assert sum(restarts.values()) <= 1 and restarts["worker-1"] == restarts["worker-2"] == 0, \
            restarts


def test_a_node_given_a_broken_sentinel_url_stops_with_a_configuration_error(
    tmp_path: Path,
) -> None:
    """Exit status 78 (not restarted by a supervisor), one line naming what is wrong, and the
    password never printed."""
    done = subprocess.run(
        [sys.executable, "-m", "dtq.cli.main", "coordinator", "--store-url",
         "redis+sentinel://:hunter2@127.0.0.1:1/mymaster/x"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "database 'x' is not a number" in done.stderr and "hunter2" not in done.stderr


def _drain(heard: queue.Queue[Finished], ends: dict[str, str]) -> set[str]:
    """Move what was heard into `ends` (task id -> state); the ids heard so far."""
    while not heard.empty():
        f = heard.get_nowait()
        ends.setdefault(f.task_id, f.state)
    return set(ends)
