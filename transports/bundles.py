"""Bundles: several messages bound for one queue carried as one broker message.

The RabbitMQ transport (`transports.rabbitmq`, see its "Bundles" and "Work bundles") cuts each
publish with `bundled`: the bodies of a bundle go one per line under the `x-dtq-bundle` header
(their count), and the consumer's transport splits them again. A message with headers of its own
or a line break in its body always travels alone.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import attrs

from dtq.transport import BUNDLE_HEADER, Outgoing

BUNDLE_MAX = 256
BUNDLE_BYTES = 1 << 20
WORK_BUNDLE_SPREAD = 16
"""Dispatches published together are cut into bundles of at most 1/16 of them."""


def work_bundle_size(dispatches: int, cap: int) -> int:
    """Parts per broker message for `dispatches` published in one call to the work queue: at
    most `cap`, and few enough that at least 16 broker messages carry them (so competing workers
    share them); 1, no bundling, below 32."""
    return max(1, min(cap, dispatches // WORK_BUNDLE_SPREAD))


def bundled(
    messages: Sequence[Outgoing], *, work_queue: str, unbundled: Collection[str],
    work_bundle: int = 1,
) -> list[Outgoing]:
    """`messages` with those bound for one queue in bundles, in publish order: none for a queue
    in `unbundled`; for the work queue only with `work_bundle` above 1, in bundles of
    `work_bundle_size` parts kept apart by priority (the work queue reorders by priority anyway;
    other queues keep the publish order, so their bundles ignore it)."""
    per_work = 1
    if work_bundle > 1:
        dispatches = sum(1 for m in messages if m.queue == work_queue and _bundleable(m))
        per_work = work_bundle_size(dispatches, work_bundle)
    out: list[Outgoing | _Bundle] = []
    open_bundles: dict[tuple[str, int], _Bundle] = {}
    for m in messages:
        work = m.queue == work_queue
        if not _bundleable(m) or m.queue in unbundled or (work and per_work == 1):
            out.append(m)
            continue
        key = (m.queue, m.priority if work else 0)
        bundle = open_bundles.get(key)
        if bundle is None or not bundle.fits(m, per_work if work else BUNDLE_MAX):
            bundle = open_bundles[key] = _Bundle()
            out.append(bundle)
        bundle.add(m)
    return [x.outgoing() if isinstance(x, _Bundle) else x for x in out]


@attrs.define(eq=False)
class _Bundle:
    """Messages for one queue that travel as one broker message."""

    messages: list[Outgoing] = attrs.field(factory=list)
    size: int = 0

    def fits(self, m: Outgoing, parts: int = BUNDLE_MAX) -> bool:
        return len(self.messages) < parts and self.size + len(m.body) <= BUNDLE_BYTES

    def add(self, m: Outgoing) -> None:
        self.messages.append(m)
        self.size += len(m.body) + 1

    def outgoing(self) -> Outgoing:
        first = self.messages[0]
        if len(self.messages) == 1:
            return first
        return Outgoing(queue=first.queue, body=b"\n".join(m.body for m in self.messages),
                        headers={BUNDLE_HEADER: len(self.messages)}, message_id=first.message_id,
                        priority=first.priority)


def _bundleable(m: Outgoing) -> bool:
    """A message with headers of its own, or a line break in its body, travels alone."""
    return not m.headers and b"\n" not in m.body
