"""Stage marks: the hook `dtq bench stages` times a round trip with; a no-op by default.

The process runtime and the RabbitMQ transport call `mark` at the points a round trip passes
(a publish, a delivery, a fenced write, a result write). Nothing is recorded unless a sink is
set (`set_sink`), which the benchmark does in every process it starts (through `STAGES_ENV`,
read by `install_from_environment` when a node starts); without one a mark costs one global
lookup, and callers that would compute its argument check `enabled()` first.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

Sink = Callable[[str, Collection[bytes]], None]
"""Takes a stage name and the message kinds (as bytes) it concerns."""

STAGES_ENV = "DTQ_BENCH_STAGES"
"""Set to a folder: every dtq process started with it marks its stages into that folder."""

_sink: Sink | None = None
_KIND = re.compile(rb'"kind":"(\w+)"')


def set_sink(sink: Sink | None) -> None:
    """Send this process's marks to `sink` (None: stop)."""
    global _sink
    _sink = sink


def enabled() -> bool:
    return _sink is not None


def mark(stage: str, kinds: Collection[bytes] = ()) -> None:
    if _sink is not None:
        _sink(stage, kinds)


def kinds(bodies: Iterable[bytes]) -> set[bytes]:
    """The message kinds named in encoded envelopes (bundled parts included)."""
    return {k for body in bodies for k in _KIND.findall(body)}


class Marker:
    """A sink that appends this process's marks to `folder/<pid>.marks`, one line each:
    `time.monotonic()` (one clock for every process of the machine), the stage, the kinds."""

    def __init__(self, folder: str | Path) -> None:
        self._out = (Path(folder) / f"{os.getpid()}.marks").open("a", buffering=1)
        self._lock = threading.Lock()

    def __call__(self, stage: str, kinds: Collection[bytes] = ()) -> None:
        line = f"{time.monotonic():.7f} {stage} {','.join(sorted(k.decode() for k in kinds))}\n"
        with self._lock:
            self._out.write(line)

    def close(self) -> None:
        set_sink(None)
        self._out.close()


def install(folder: str | Path) -> Marker:
    """Mark this process's stages into its file in `folder`."""
    m = Marker(folder)
    set_sink(m)
    return m


def install_from_environment() -> None:
    """In a node process: mark stages if the benchmark that started it asked for it."""
    folder = os.environ.get(STAGES_ENV)
    if folder:
        install(folder)
