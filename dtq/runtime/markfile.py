"""The file sink of stage marks (`dtq.stagemarks`): each process appends its marks to its own
file, which `dtq bench stages` reads after a run.

The rule: a node marks stages only when the benchmark that started it set `STAGES_ENV`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Collection
from pathlib import Path

from dtq.stagemarks import set_sink

STAGES_ENV = "DTQ_BENCH_STAGES"
"""Set to a folder: every dtq process started with it marks its stages into that folder."""


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
