"""Prometheus text for ``GET /metrics``, served only when metrics were switched on.

Like Toxiproxy, byte counters are added once per link, when the link finishes, labelled by
direction, listener, proxy and upstream. "Runtime" metrics describe this Python process.
"""

from __future__ import annotations

import platform
import resource
import threading
import time

_HELP = {
    "toxiproxy_proxy_received_bytes_total": "The total bytes received from a proxy's source.",
    "toxiproxy_proxy_sent_bytes_total": "The total bytes sent to a proxy's destination.",
}
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[str, str, str, str]  # direction, listener, proxy, upstream


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Counters for the proxies, and the switches that decide what ``/metrics`` shows."""

    def __init__(self, *, proxy_metrics: bool = False, runtime_metrics: bool = False) -> None:
        self.proxy_metrics = proxy_metrics
        self.runtime_metrics = runtime_metrics
        self._counters: dict[str, dict[Labels, int]] = {name: {} for name in _HELP}
        self._lock = threading.Lock()
        self._started = time.time()

    @property
    def enabled(self) -> bool:
        return self.proxy_metrics or self.runtime_metrics

    def add(self, what: str, labels: Labels, count: int) -> None:
        """Add ``count`` bytes to the ``received`` or ``sent`` counter of ``labels``."""
        if not self.proxy_metrics:
            return
        name = f"toxiproxy_proxy_{what}_bytes_total"
        with self._lock:
            series = self._counters[name]
            series[labels] = series.get(labels, 0) + count

    def render(self) -> str:
        lines: list[str] = []
        if self.proxy_metrics:
            with self._lock:
                for name, series in self._counters.items():
                    lines += [f"# HELP {name} {_HELP[name]}", f"# TYPE {name} counter"]
                    lines += [self._sample(name, key, n) for key, n in sorted(series.items())]
        if self.runtime_metrics:
            lines += self._runtime()
        return "".join(f"{line}\n" for line in lines)

    @staticmethod
    def _sample(name: str, labels: Labels, value: int) -> str:
        keys = ("direction", "listener", "proxy", "upstream")
        text = ",".join(f'{key}="{_quote(val)}"' for key, val in zip(keys, labels, strict=True))
        return f"{name}{{{text}}} {value}"

    def _runtime(self) -> list[str]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        info = f'implementation="{platform.python_implementation()}"'
        info += f',version="{_quote(platform.python_version())}"'
        return [
            "# HELP python_info Python platform information.",
            "# TYPE python_info gauge",
            f"python_info{{{info}}} 1",
            "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.",
            "# TYPE process_cpu_seconds_total counter",
            f"process_cpu_seconds_total {usage.ru_utime + usage.ru_stime}",
            "# HELP process_max_resident_memory_kilobytes Peak resident set size.",
            "# TYPE process_max_resident_memory_kilobytes gauge",
            f"process_max_resident_memory_kilobytes {usage.ru_maxrss}",
            "# HELP process_threads Number of Python threads.",
            "# TYPE process_threads gauge",
            f"process_threads {threading.active_count()}",
            "# HELP process_start_time_seconds Start time of the server since the epoch.",
            "# TYPE process_start_time_seconds gauge",
            f"process_start_time_seconds {self._started}",
        ]
