"""CPU time per round trip, read from /proc (Linux): by process, and for the whole machine.

A sequential round trip on a 2-core machine waits for CPU as much as for the network: every
process that works for it (client, leader, worker, RabbitMQ, Redis) competes for the same two
cores. `CpuMeter` reads the clock ticks each process (and the machine) spent between `start`
and `stop` and divides by the round trips made. Tick resolution is 1/SC_CLK_TCK s (10 ms), so a
few hundred round trips give a figure good to a few hundredths of a millisecond.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

TICK_S = 1 / os.sysconf("SC_CLK_TCK")
SERVICES = {"beam.smp": "RabbitMQ", "redis-server": "Redis"}
"""Process names (comm) of the services on this machine, and how the tables name them."""


def process_ticks(pid: int) -> int | None:
    """User + system ticks of a process so far; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


def machine_busy_ticks() -> int:
    """Ticks every core spent on anything but idling or waiting for I/O."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle, iowait = values[3], values[4]
    return sum(values[:8]) - idle - iowait


def service_pids() -> dict[str, int]:
    """The local RabbitMQ and Redis server processes (a service elsewhere is not counted)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        label = SERVICES.get(comm)
        if label is not None and label not in found:
            found[label] = int(entry.name)
    return found


class CpuMeter:
    """CPU milliseconds per round trip of the named processes and of the whole machine."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, int | None] = {}
        self._machine = 0

    def start(self) -> None:
        self._start = {name: process_ticks(pid) for name, pid in self.pids.items()}
        self._machine = machine_busy_ticks()

    def stop(self, round_trips: int) -> dict[str, object]:
        per_trip = TICK_S * 1000 / max(1, round_trips)
        by_process = {}
        for name, pid in self.pids.items():
            before, after = self._start.get(name), process_ticks(pid)
            if before is not None and after is not None:
                by_process[name] = (after - before) * per_trip
        return {"round_trips": round_trips,
                "machine_ms": (machine_busy_ticks() - self._machine) * per_trip,
                "by_process_ms": by_process}
