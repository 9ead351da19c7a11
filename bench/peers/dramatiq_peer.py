"""The Dramatiq side of `dtq bench`: a RabbitMQ broker with Redis results and one no-op actor.

`dtq.bench.peers` starts workers as `python -m dramatiq dramatiq_peer --processes 2 ...` with
this folder on the import path. The queue (DTQ_BENCH_QUEUE) and the results namespace
(DTQ_BENCH_RESULTS) are unique per run, so runs never share messages or result keys.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

NOOP = "noop"

broker = RabbitmqBroker(url=os.environ.get("DTQ_BENCH_BROKER",
                                           "amqp://guest:guest@127.0.0.1:5672/%2F"))
broker.add_middleware(Results(backend=RedisBackend(
    url=os.environ.get("DTQ_BENCH_STORE", "redis://127.0.0.1:6379/0"),
    namespace=os.environ.get("DTQ_BENCH_RESULTS", "dtqbench-results"))))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name=NOOP, queue_name=os.environ.get("DTQ_BENCH_QUEUE", "dtqbench"),
                store_results=True, max_retries=0)
def noop() -> None:
    return None
