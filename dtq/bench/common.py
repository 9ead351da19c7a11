"""Small shared pieces of the benchmarks: summaries of samples, waiting with a deadline, queue
depths and a process's resident memory. No timing here is ever asserted."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from dtq.bench.real import percentile
from dtq.errors import DtqError
from transports.rabbitmq import blocking

T = TypeVar("T")
POLL_S = 0.01


class BenchError(DtqError):
    """A benchmark could not run (a service, a peer or a condition never came)."""


def summary(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50, p99, mean and max of a list of millisecond samples."""
    values = list(samples_ms)
    mean = sum(values) / len(values) if values else float("nan")
    return {"p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99),
            "mean_ms": mean, "max_ms": max(values) if values else float("nan")}


def await_value(
    probe: Callable[[], T | None], timeout_s: float, what: str,
    tick: Callable[[], object] = lambda: None,
) -> T:
    """Poll `probe` until it returns something other than None; BenchError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        tick()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(POLL_S)


def queue_counts(url: str, queue: str) -> tuple[int, int]:
    """(ready messages, consumers) of a queue; (0, 0) when it does not exist."""
    with blocking(url) as ch:
        try:
            ok = ch.queue_declare(queue, passive=True).method
        except Exception:  # a missing queue closes the channel; it counts as empty
            return 0, 0
        return int(ok.message_count), int(ok.consumer_count)


def delete_queues(url: str, queues: Sequence[str], exchanges: Sequence[str] = ()) -> None:
    """Delete queues and exchanges, ignoring those already gone (one channel each: a failed
    delete closes its channel)."""
    for name in queues:
        with contextlib.suppress(Exception), blocking(url) as ch:
            ch.queue_delete(name)
    for name in exchanges:
        with contextlib.suppress(Exception), blocking(url) as ch:
            ch.exchange_delete(name)


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory field of /proc/PID/status in KiB (VmRSS: resident now; VmHWM: its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {field} in /proc/{pid}/status")
