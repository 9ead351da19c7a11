"""Pipeline primitives: chunks, the bounded channels between stages, and a stage's state.

A link (one direction of one proxied connection) is a chain of stages joined by channels.
Each stage runs one toxic as an asyncio task. The rule that keeps live changes to the chain
safe: a stage keeps every item it has taken from its inbox but not yet delivered in
``held``, and only ever changes ``held`` right after an ``await`` returns. Cancelling the
task therefore leaves ``held`` exact, and the link can forward, re-route or restart it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .toxics import ToxicSpec


@dataclass(frozen=True, slots=True)
class Chunk:
    """One read from a socket and the loop time it was read (or last released)."""

    data: bytes
    stamp: float


class _EndOfStream:
    __slots__ = ()

    def __repr__(self) -> str:
        return "EOF"


EOF: Final = _EndOfStream()
Item = Chunk | _EndOfStream


def _wake(waiters: deque[asyncio.Future[bool]], result: bool = True) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(result)
            return


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Channel:
    """A bounded FIFO whose ``get`` can time out without consuming anything.

    ``put`` and ``get`` are cancellation-safe: a cancelled call has not moved an item.
    """

    def __init__(self, capacity: int = 1) -> None:
        self._items: deque[Item] = deque()
        self._capacity = max(1, capacity)
        self._getters: deque[asyncio.Future[bool]] = deque()
        self._putters: deque[asyncio.Future[bool]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: Item) -> None:
        while len(self._items) >= self._capacity:
            await self._wait(self._putters, None)
        self._items.append(item)
        _wake(self._getters)

    async def get(self, timeout: float | None = None) -> Item | None:
        """The next item, or None when ``timeout`` seconds pass with nothing to read."""
        while not self._items:
            if not await self._wait(self._getters, timeout) and not self._items:
                return None
        item = self._items.popleft()
        _wake(self._putters)
        return item

    def drain(self) -> list[Item]:
        """Take every queued item at once."""
        items = list(self._items)
        self._items.clear()
        while self._putters:
            _wake(self._putters)
        return items

    async def _wait(self, waiters: deque[asyncio.Future[bool]], timeout: float | None) -> bool:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        waiters.append(waiter)
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if waiter in waiters:
                waiters.remove(waiter)


class Stage:
    """One toxic's place in a link: its channels, undelivered items and per-link state."""

    def __init__(self, toxic: ToxicSpec | None, inbox: Channel, outbox: Channel) -> None:
        self.toxic = toxic  # None for the hidden pass-through at the head of every link
        self.inbox = inbox
        self.outbox = outbox
        self.held: deque[Item] = deque()
        self.eof_seen = False  # the inbox reached EOF; like a closed Go channel it stays so
        self.closed = False  # EOF was delivered downstream; the stage is finished
        self.committed = False  # reset_peer has fired and must not be interrupted
        self.counter = 0  # limit_data's bytes forwarded; survives updates
        self.task: asyncio.Task[None] | None = None

    async def recv(self, timeout: float | None = None) -> Item | None:
        """Take the next item into ``held`` (EOF is not held); None if ``timeout`` expires."""
        if self.eof_seen:
            return EOF
        item = await self.inbox.get(timeout)
        if item is EOF:
            self.eof_seen = True
        elif item is not None:
            self.held.append(item)
        return item

    async def forward(self) -> None:
        """Deliver the oldest held item."""
        await self.outbox.put(self.held[0])
        self.held.popleft()

    async def forward_part(self, size: int) -> None:
        """Deliver the first ``size`` bytes of the oldest held chunk; keep the rest held."""
        head = self.held[0]
        assert isinstance(head, Chunk)
        await self.outbox.put(Chunk(head.data[:size], head.stamp))
        if size >= len(head.data):
            self.held.popleft()
        else:
            self.held[0] = Chunk(head.data[size:], head.stamp)

    def replace_head(self, chunk: Chunk) -> None:
        self.held[0] = chunk

    def drop(self) -> None:
        """Discard the oldest held item."""
        self.held.popleft()

    async def close(self) -> None:
        """End the stage: drop what is held and deliver EOF downstream."""
        self.held.clear()
        self.held.append(EOF)
        await self.flush()

    async def flush(self) -> bool:
        """Deliver everything held, in order. True when that included EOF (stage closed)."""
        while self.held:
            item = self.held[0]
            await self.forward()
            if item is EOF:
                self.closed = True
                return True
        return False


async def forever() -> None:
    """Block until cancelled."""
    await asyncio.get_running_loop().create_future()
