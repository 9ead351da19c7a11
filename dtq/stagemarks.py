"""Stage marks: the hook `dtq bench stages` times a round trip with; a no-op by default.

The process runtime and the RabbitMQ transport call `mark` at the points a round trip passes
(a publish, a delivery, a fenced write, a result write). Nothing is recorded unless a sink is
set (`set_sink`), which the benchmark does in every process it starts (the sink that writes a
file is `dtq.runtime.markfile`, installed when a node starts with `STAGES_ENV` set); without
one a mark costs one global lookup, and callers that would compute its argument check
`enabled()` first. The hook itself does no I/O and reads no clock: its sink does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable

Sink = Callable[[str, Collection[bytes]], None]
"""Takes a stage name and the message kinds (as bytes) it concerns."""

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
