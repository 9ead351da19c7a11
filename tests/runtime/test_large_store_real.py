"""On Redis: a takeover over a long history costs what is unfinished.

A namespace is filled with `DTQ_LARGE_STORE_RECORDS` (default 200,000) succeeded records and
100 dispatched ones, straight through the store; a coordinator process then takes the lease and
its log's "takeover done" line says how many records it loaded and how long that took, which
must fit well inside the lease. For comparison the test also times the load of every record
that a takeover did before (printed with -s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from dtq.scenario.real import fill_finished
from dtq.store import PutTask
from dtq.task import TaskRecord, TaskSpec, TaskState
from transports.redis import RedisStore

RECORDS = int(os.environ.get("DTQ_LARGE_STORE_RECORDS", "200000"))
LEASE_TTL_MS = 2000

pytestmark = [pytest.mark.slow]


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    s = RedisStore.from_url(redis_url, prefix=f"dtq-large-{uuid.uuid4().hex[:10]}")
    try:
        yield s
    finally:
        s.delete_all()
        s.close()


def _fill(store: RedisStore, n: int) -> None:
    fill_finished(store, n)
    store.apply([PutTask(record=TaskRecord(
        spec=TaskSpec(id=f"open-{i:03d}", type="echo"), state=TaskState.DISPATCHED, attempt=1))
        for i in range(100)], epoch=0)


def _takeover_line(proc: subprocess.Popen[str]) -> dict[str, object]:
    """Read the coordinator's log until its "takeover done" line (or its exit)."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if "takeover done" in line:
            return dict(json.loads(line)) if line.startswith("{") else {"line": line}
    pytest.fail(f"the coordinator exited ({proc.wait()}) before taking over")


def test_a_takeover_over_a_large_store_fits_in_the_lease(
    store: RedisStore, redis_url: str, rabbitmq_url: str,
) -> None:
    _fill(store, RECORDS)
    started = time.perf_counter()
    after, everything = None, 0
    while page := store.scan_tasks(after=after, limit=1000):
        everything += len(page)
        after = page[-1].id
    full_ms = (time.perf_counter() - started) * 1000
    assert everything == RECORDS + 100
    proc = subprocess.Popen(
        [sys.executable, "-m", "dtq.cli.main", "coordinator", "--name", "coordinator-large",
         "--namespace", store.prefix, "--lease-ttl-ms", str(LEASE_TTL_MS),
         "--store-url", redis_url, "--broker-url", rabbitmq_url, "--log-level", "info"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, "DTQ_LOG_FORMAT": "json"})
    try:
        done = _takeover_line(proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"\n{RECORDS} finished records: takeover {done}; loading every record as before "
          f"took {full_ms:.0f} ms")
    assert done.get("records") == 100, done
    ms = done.get("ms")
    assert isinstance(ms, int) and ms < LEASE_TTL_MS * 8 // 10
