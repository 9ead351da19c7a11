"""The Celery side of `dtq bench`: an app with one no-op task, configured from the environment.

`dtq.bench.peers` starts workers as `python -m celery -A celery_peer worker ...` with this folder
on PYTHONPATH, and builds its submitting client with the same `make_app`, so both ends agree.
Every run names its own queue (DTQ_BENCH_QUEUE); results go to Redis and expire after an hour
even if a run is interrupted before its clean-up.
"""

from __future__ import annotations

import os

from celery import Celery

NOOP = "dtqbench.noop"


def make_app(queue: str, broker_url: str, backend_url: str) -> Celery:
    """A Celery app on RabbitMQ with a Redis result backend; acks late, prefetch 4 per thread."""
    app = Celery("dtqbench", broker=broker_url, backend=backend_url)
    app.conf.update(
        task_default_queue=queue,
        task_acks_late=True,
        worker_prefetch_multiplier=4,
        task_serializer="json", result_serializer="json", accept_content=["json"],
        result_expires=3600,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name=NOOP)
    def noop() -> None:
        return None

    return app


app = make_app(
    os.environ.get("DTQ_BENCH_QUEUE", "dtqbench"),
    os.environ.get("DTQ_BENCH_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    os.environ.get("DTQ_BENCH_CELERY_BACKEND", "redis://127.0.0.1:6379/0"),
)
