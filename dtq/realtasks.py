"""Task execution on real processes: a `TaskContext` with real time, files and HTTP.

Runs in a worker's task thread, never on the handler loop. Files are confined to an I/O root
directory (`DTQ_IO_ROOT`, default the working directory): a path that escapes it is refused.
"""

from __future__ import annotations

import functools
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dtq.actor import Execution
from dtq.store import Store
from dtq.tasktypes import Executed, TaskError


class RealTaskContext:
    def __init__(
        self, ex: Execution, *, store: Store, record: Callable[[str, Mapping[str, Any]], None],
        io_root: str,
    ) -> None:
        self._ex = ex
        self._store = store
        self._record = record
        self._io_root = io_root
        self._deadline = time.monotonic() + ex.input.timeout_ms / 1000

    @property
    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def sleep(self, ms: int) -> None:
        time.sleep(max(0, ms) / 1000)  # the task's own work, in its own thread

    def charge(self, ms: int) -> None:
        """Real CPU time is already spent; nothing to account for."""

    @functools.cached_property
    def _root(self) -> Path:
        """The I/O root, resolved once per task, on its first file access."""
        return Path(self._io_root).resolve()

    def _path(self, path: str) -> Path:
        root = self._root
        full = (root / path.lstrip("/")).resolve()
        if full != root and root not in full.parents:
            raise TaskError(f"path {path!r} is outside the I/O root {root}")
        return full

    def read_file(self, path: str) -> bytes:
        try:
            return self._path(path).read_bytes()
        except OSError as exc:
            raise TaskError(f"cannot read {path}: {exc.strerror}") from exc

    def write_file(self, path: str, data: bytes) -> None:
        target = self._path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)

    def http_get(self, url: str) -> tuple[int, bytes]:
        if not url.startswith(("http://", "https://")):
            raise TaskError(f"only http and https URLs are fetched, not {url!r}")
        timeout = max(0.1, self._deadline - time.monotonic())
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # scheme checked above
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except (urllib.error.URLError, TimeoutError) as exc:
            raise TaskError(f"GET {url} failed: {exc}") from exc

    def once(self, key: str, fn: Callable[[], object]) -> bool:
        owner = f"{self._ex.input.task_id}#{self._ex.input.attempt}"
        _, new = self._store.once(key, owner)
        if new:
            fn()
            self._record("side_effect", {"key": key, "task": self._ex.input.task_id})
        return new


def run_task(
    ex: Execution, *, store: Store, record: Callable[[str, Mapping[str, Any]], None],
    actor: str, io_root: str,
) -> Executed:
    ctx = RealTaskContext(ex, store=store, record=record, io_root=io_root)
    started = time.monotonic()
    try:
        value = ex.task_actor.run(ex.input, ctx)
        ok, error = True, None
    except Exception as exc:  # task code may raise anything; it fails the attempt
        value, ok, error = None, False, f"{type(exc).__name__}: {exc}"
    elapsed = int((time.monotonic() - started) * 1000)
    return Executed(ref=ex.ref, ok=ok, value=value, error=error, elapsed_ms=elapsed)
