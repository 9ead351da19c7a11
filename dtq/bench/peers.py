"""Celery and Dramatiq on the same RabbitMQ and Redis as dtq, for throughput and latency.

Each peer runs as its own worker processes (`python -m celery ... worker`, `python -m dramatiq`)
started from `bench/peers/` in a source checkout, on a queue and result namespace unique to the
run; the processes are stopped and the queues and result keys removed when the run ends. The
client side is the peer's own API (`send_task` + `AsyncResult.get`, `broker.enqueue` +
`backend.get_result`), so "result available" means what it means to that peer's users.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from dtq.bench.common import BenchError, await_value, delete_queues, queue_counts, summary
from dtq.runtime.process import broker_url, store_url

PEERS_DIR = Path(__file__).resolve().parents[2] / "bench" / "peers"
PEERS = ("celery", "dramatiq")


class Client(Protocol):
    """Submit one no-op task; wait until its result is available."""

    def submit(self) -> Any: ...

    def wait(self, handle: Any, timeout_s: float) -> None: ...


def available(peer: str) -> bool:
    """Whether the peer's library is installed and its worker module is in this checkout."""
    try:
        importlib.import_module(peer)
    except ImportError:
        return False
    return (PEERS_DIR / f"{peer}_peer.py").is_file()


def _peer_module(name: str) -> Any:
    if not PEERS_DIR.is_dir():
        raise BenchError(f"the peers' worker modules are not at {PEERS_DIR}: run from a source "
                         "checkout of dtq")
    if str(PEERS_DIR) not in sys.path:
        sys.path.insert(0, str(PEERS_DIR))
    return importlib.import_module(name)


def _kombu_url(url: str) -> str:
    """Kombu spells the default vhost `//`, not `/%2F`."""
    return url[:-4] + "//" if url.endswith("/%2F") else url


@contextlib.contextmanager
def _process(argv: list[str], env: dict[str, str]) -> Iterator[Any]:
    """Start a worker command in its own process group; on the way out SIGTERM the group (a
    peer's worker has children), then SIGKILL what is left."""
    path = os.pathsep.join([str(PEERS_DIR), *filter(None, [os.environ.get("PYTHONPATH")])])
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty worker never blocks
        proc = subprocess.Popen(argv, env={**os.environ, **env, "PYTHONPATH": path},
                                start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        proc.log = log  # type: ignore[attr-defined]
        try:
            yield proc
        finally:
            _stop_groups([proc])


def _stop_groups(procs: list[Any]) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


def _await_consumers(queue: str, count: int, procs: list[Any], what: str) -> None:
    def ready() -> bool | None:
        for p in procs:
            if p.poll() is not None:
                p.log.seek(0)
                err = p.log.read().decode(errors="replace")[-2000:]
                raise BenchError(f"{what} worker exited with status {p.returncode}: {err}")
        return True if queue_counts(broker_url(), queue)[1] >= count else None

    await_value(ready, 60, f"{count} {what} consumers on {queue}")


# --- Celery ---------------------------------------------------------------------------------


class CeleryClient:
    def __init__(self, app: Any, noop: str) -> None:
        self.app = app
        self.noop = noop
        self.ids: list[str] = []

    def submit(self) -> Any:
        result = self.app.send_task(self.noop)
        self.ids.append(result.id)
        return result

    def wait(self, handle: Any, timeout_s: float) -> None:
        handle.get(timeout=timeout_s)


@contextlib.contextmanager
def celery(workers: int = 2, threads: int = 8, pool: str = "threads") -> Iterator[CeleryClient]:
    """`workers` Celery worker processes (pool `threads` with `threads` threads each, acks late,
    prefetch 4 per thread) on a fresh queue; yields a client of the same app."""
    queue = f"dtqbench-celery-{uuid.uuid4().hex[:8]}"
    broker, backend = _kombu_url(broker_url()), store_url()
    env = {"DTQ_BENCH_QUEUE": queue, "DTQ_BENCH_CELERY_BROKER": broker,
           "DTQ_BENCH_CELERY_BACKEND": backend}
    mod = _peer_module("celery_peer")
    app = mod.make_app(queue, broker, backend)
    client = CeleryClient(app, mod.NOOP)
    argv = [sys.executable, "-m", "celery", "-A", "celery_peer", "worker", "--pool", pool,
            "--concurrency", str(threads), "--without-gossip", "--without-mingle",
            "--loglevel", "WARNING", "-Q", queue]
    procs: list[Any] = []
    try:
        with contextlib.ExitStack() as stack:
            for i in range(workers):
                named = [*argv, "-n", f"{queue}-{i}@%h"]
                procs.append(stack.enter_context(_process(named, env)))
            _await_consumers(queue, workers, procs, "Celery")
            yield client
    finally:
        _celery_cleanup(app, queue, client.ids)


def _celery_cleanup(app: Any, queue: str, ids: list[str]) -> None:
    with contextlib.suppress(Exception):
        app.close()
    delete_queues(broker_url(), [queue], [queue])
    redis = importlib.import_module("redis")
    client = redis.Redis.from_url(store_url())
    try:
        for i in range(0, len(ids), 1000):
            client.unlink(*(f"celery-task-meta-{t}" for t in ids[i:i + 1000]))
    finally:
        client.close()


# --- Dramatiq -------------------------------------------------------------------------------


class DramatiqClient:
    def __init__(self, broker: Any, backend: Any, queue: str, actor: str) -> None:
        self.broker = broker
        self.backend = backend
        self.queue = queue
        self.actor = actor
        self._message = importlib.import_module("dramatiq").Message

    def submit(self) -> Any:
        return self.broker.enqueue(self._message(
            queue_name=self.queue, actor_name=self.actor, args=(), kwargs={}, options={}))

    def wait(self, handle: Any, timeout_s: float) -> None:
        # Dramatiq's Redis backend waits in whole seconds (BRPOPLPUSH); at least one.
        self.backend.get_result(handle, block=True, timeout=max(1000, int(timeout_s * 1000)))


@contextlib.contextmanager
def dramatiq(workers: int = 2, threads: int = 8) -> Iterator[DramatiqClient]:
    """One `dramatiq` command with `workers` worker processes of `threads` threads on a fresh
    queue (RabbitmqBroker, Redis results under a fresh namespace); yields a client."""
    queue = f"dtqbench-dramatiq-{uuid.uuid4().hex[:8]}"
    results = f"dtqbench-results-{uuid.uuid4().hex[:8]}"
    env = {"DTQ_BENCH_QUEUE": queue, "DTQ_BENCH_RESULTS": results,
           "DTQ_BENCH_BROKER": broker_url(), "DTQ_BENCH_STORE": store_url()}
    _peer_module("dramatiq_peer")  # fails early, with a clear message, outside a checkout
    rabbit = importlib.import_module("dramatiq.brokers.rabbitmq")
    backends = importlib.import_module("dramatiq.results.backends")
    broker = rabbit.RabbitmqBroker(url=broker_url())
    backend = backends.RedisBackend(url=store_url(), namespace=results)
    argv = [sys.executable, "-m", "dramatiq", "dramatiq_peer", "--processes", str(workers),
            "--threads", str(threads), "--path", str(PEERS_DIR), "--queues", queue]
    try:
        with _process(argv, env) as proc:
            _await_consumers(queue, workers, [proc], "Dramatiq")
            yield DramatiqClient(broker, backend, queue, "noop")
    finally:
        _dramatiq_cleanup(broker, backend, queue, results)


def _dramatiq_cleanup(broker: Any, backend: Any, queue: str, results: str) -> None:
    with contextlib.suppress(Exception):
        broker.close()
    delete_queues(broker_url(), [queue, f"{queue}.DQ", f"{queue}.XQ"])
    client = backend.client
    try:
        keys = list(client.scan_iter(match=f"{results}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.unlink(*keys[i:i + 1000])
    finally:
        client.close()


# --- measurements ---------------------------------------------------------------------------


def throughput(client: Client, tasks: int, timeout_s: float = 300) -> dict[str, Any]:
    """Submit `tasks` no-ops as fast as the client can, then wait for every result: tasks over
    the time from the first submission to the last result seen."""
    client.wait(client.submit(), 60)  # warm-up: connections, queues, first imports
    started = time.perf_counter()
    handles = [client.submit() for _ in range(tasks)]
    submitted = time.perf_counter()
    deadline = started + timeout_s
    for h in handles:
        client.wait(h, max(1.0, deadline - time.perf_counter()))
    elapsed = time.perf_counter() - started
    return {"tasks": tasks, "elapsed_s": elapsed, "tasks_per_s": tasks / elapsed,
            "submit_s": submitted - started}


def latency(client: Client, n: int = 200, warmup: int = 5) -> dict[str, Any]:
    """`n` sequential submit-and-wait round trips, one task in flight at a time."""
    return interleaved_latency({"one": client}, n, block=n, warmup=warmup)["one"]


def interleaved_latency(
    clients: Mapping[str, Client], n: int = 200, *, block: int = 20, warmup: int = 5,
) -> dict[str, dict[str, Any]]:
    """`n` sequential submit-and-wait round trips for each system, one task in flight at a
    time, taken in turns of `block`: every system meets the machine as it is at that moment,
    so a machine whose speed drifts during the run moves them all alike and their ratio holds."""
    for client in clients.values():
        for _ in range(warmup):
            client.wait(client.submit(), 60)
    samples: dict[str, list[float]] = {name: [] for name in clients}
    while any(len(taken) < n for taken in samples.values()):
        for name, client in clients.items():
            taken = samples[name]
            for _ in range(min(block, n - len(taken))):
                t = time.perf_counter()
                client.wait(client.submit(), 30)
                taken.append((time.perf_counter() - t) * 1000)
    return {name: {"n": n, **summary(taken)} for name, taken in samples.items()}
