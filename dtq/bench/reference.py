"""The round trips dtq's is measured beside in `dtq bench stages`, with the CPU they cost.

* Bare pika (`bare_round_trip`): a persistent message through a durable queue to a second
  process, which publishes it (confirmed) to a second durable queue it comes back from: two
  hops and nothing else, the floor that the broker and its client library set.
* The peers (`peer_round_trips`): Celery's and Dramatiq's sequential submit-and-wait, as in
  `dtq bench latency`, here with the CPU the machine spent per round trip.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

from dtq.bench.cpu import CpuMeter, service_pids
from dtq.bench.real import percentile

# --- bare pika, for the floor -----------------------------------------------------------------


def _echo(url: str, inbox: str, outbox: str, ready: Any) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_qos(prefetch_count=10)

    def on_message(_ch: Any, method: Any, _props: Any, body: bytes) -> None:
        ch.basic_publish("", outbox, body, pika.BasicProperties(delivery_mode=2))
        ch.basic_ack(method.delivery_tag)

    ch.basic_consume(inbox, on_message)
    ready.set()
    with contextlib.suppress(Exception):
        ch.start_consuming()


def bare_round_trip(n: int = 300, warmup: int = 20) -> dict[str, Any]:
    """A persistent message to a durable queue, consumed, published (confirmed) to a second
    durable queue and consumed back: two hops on bare pika, sequentially, `n` times."""
    import pika

    from dtq.runtime.process import broker_url

    url = broker_url()
    ns = f"bench-bare-{uuid.uuid4().hex[:8]}"
    there, back = f"{ns}.there", f"{ns}.back"
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    for q in (there, back):
        ch.queue_declare(q, durable=True)
    ch.confirm_delivery()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    echo = ctx.Process(target=_echo, args=(url, there, back, ready), daemon=True)
    echo.start()
    try:
        if not ready.wait(30):
            raise TimeoutError("the bare pika echo process did not start")
        samples = []
        meter = CpuMeter(service_pids())
        for i in range(warmup + n):
            if i == warmup:
                meter.start()
            t = time.perf_counter()
            ch.basic_publish("", there, b"x", pika.BasicProperties(delivery_mode=2))
            for _ in ch.consume(back, auto_ack=True):
                break
            if i >= warmup:
                samples.append((time.perf_counter() - t) * 1000)
        cpu = meter.stop(n)
        ch.cancel()
    finally:
        echo.kill()
        echo.join(10)
        for q in (there, back):
            with contextlib.suppress(Exception):
                ch.queue_delete(q)
        with contextlib.suppress(Exception):
            conn.close()
    return {"n": n, "p50_ms": statistics.median(samples), "p90_ms": percentile(samples, 90),
            "cpu": cpu}


# --- the peers' round trips, for their CPU ------------------------------------------------------


def peer_round_trips(
    n: int = 300, workers: int = 2, systems: Sequence[str] = ("celery", "dramatiq"),
    warmup: int = 20,
) -> dict[str, Any]:
    """Each peer's sequential round trips (as in `dtq bench latency`), with the CPU the machine
    and the services spent per round trip."""
    from dtq.bench import peers

    out: dict[str, Any] = {}
    for name in systems:
        if not peers.available(name):
            out[name] = {"error": f"{name} is not installed (pip install -e '.[bench]')"}
            continue
        context = peers.celery(workers) if name == "celery" else peers.dramatiq(workers)
        with context as client:
            for _ in range(warmup):
                client.wait(client.submit(), 60)
            meter = CpuMeter(service_pids())
            meter.start()
            result = peers.latency(client, n, warmup=0)
            out[name] = {**result, "cpu": meter.stop(n)}
    return out
