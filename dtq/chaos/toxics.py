"""The toxic types: their attributes and the coroutine each one runs on a link.

A toxic's ``pipe`` reads items from its stage and forwards, delays, slices, drops or ends the
stream. Each run sees one snapshot of the attributes; an update interrupts the run and starts
a new one (re-rolling toxicity), which is how Toxiproxy applies changes to live connections.

Edge cases where the Go server crashes or loops forever are defined here instead:
a negative bandwidth ``rate`` is unthrottled (``rate`` 0 still stalls the link, as users rely
on); the slicer never cuts pieces smaller than one byte, so ``average_size`` 0 or a
``size_variation`` at or above ``average_size`` are safe; negative delays, latencies and
timeouts count as zero.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from .gojson import Float32
from .pipeline import EOF, Chunk, Stage, forever

Direction = Literal["upstream", "downstream"]

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "slicer": ("average_size", "size_variation", "delay"),
    "limit_data": ("bytes",),
    "noop": (),
}
_BUFFER_SIZES = {"latency": 1024}


@dataclass(eq=False)
class ToxicSpec:
    """A configured toxic, as the API shows it. Mutated in place by updates."""

    name: str
    type: str
    stream: str  # echoed exactly as the client spelled it
    direction: Direction
    toxicity: float
    attributes: dict[str, int] = field(default_factory=dict)

    @property
    def buffer_size(self) -> int:
        return _BUFFER_SIZES.get(self.type, 1)

    def to_json(self) -> dict[str, object]:
        return {
            "attributes": dict(self.attributes),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": Float32(self.toxicity),
        }


Pipe = Callable[[Stage, Mapping[str, int], random.Random], Awaitable[None]]


def _seconds(milliseconds: float) -> float:
    return max(milliseconds, 0) / 1000


async def _sleep_until(deadline: float) -> None:
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


async def pipe_noop(stage: Stage, attrs: Mapping[str, int], rng: random.Random) -> None:
    while await stage.recv() is not EOF:
        await stage.forward()
    await stage.close()


async def pipe_latency(stage: Stage, attrs: Mapping[str, int], rng: random.Random) -> None:
    latency, jitter = attrs["latency"], attrs["jitter"]
    while True:
        item = await stage.recv()
        if not isinstance(item, Chunk):
            await stage.close()
            return
        delay = latency + (rng.randrange(-jitter, jitter) if jitter > 0 else 0)
        deadline = item.stamp + delay / 1000
        await _sleep_until(deadline)
        # Moving the stamp to the release time is what makes latency toxics stack.
        stage.replace_head(Chunk(item.data, max(deadline, item.stamp)))
        await stage.forward()


async def pipe_bandwidth(stage: Stage, attrs: Mapping[str, int], rng: random.Random) -> None:
    rate = attrs["rate"]  # KB/s, which is bytes per millisecond
    if rate < 0:
        await pipe_noop(stage, attrs, rng)
        return
    loop = asyncio.get_running_loop()
    debt = 0.0  # seconds owed; timer overshoot makes it negative and is paid back later
    while True:
        item = await stage.recv()
        if not isinstance(item, Chunk):
            await stage.close()
            return
        if rate == 0:
            await forever()
        debt += len(item.data) / rate / 1000
        piece = rate * 100
        while len(_head_data(stage)) > piece:
            await asyncio.sleep(0.1)
            await stage.forward_part(piece)
            debt -= 0.1
        start = loop.time()
        if debt > 0:
            await asyncio.sleep(debt)
        debt -= loop.time() - start
        await stage.forward()


def _head_data(stage: Stage) -> bytes:
    head = stage.held[0]
    return head.data if isinstance(head, Chunk) else b""


async def pipe_slow_close(stage: Stage, attrs: Mapping[str, int], rng: random.Random) -> None:
    while await stage.recv() is not EOF:
        await stage.forward()
    await asyncio.sleep(_seconds(attrs["delay"]))
    await stage.close()


async def pipe_timeout(stage: Stage, attrs: Mapping[str, int], rng: random.Random) -> None:
    timeout = _seconds(attrs["timeout"]) or None
    while True:
        item = await stage.recv(timeout)
        if not isinstance(item, Chunk):  # EOF, or silence for the whole timeout
            await stage.close()
            return
        stage.drop()


async def pipe_reset_peer(stage: Stage, attrs: Mapping[str, int], rng: random.Random) -> None:
    item = await stage.recv()
    stage.committed = True
    if isinstance(item, Chunk):
        stage.drop()
    await asyncio.sleep(_seconds(attrs["timeout"]))
    await stage.close()


async def pipe_slicer(stage: Stage, attrs: Mapping[str, int], rng: random.Random) -> None:
    average, variation = attrs["average_size"], max(attrs["size_variation"], 0)
    pause = max(attrs["delay"], 0) / 1_000_000  # microseconds
    while True:
        item = await stage.recv()
        if not isinstance(item, Chunk):
            await stage.close()
            return
        for size in slice_sizes(len(item.data), average, variation, rng):
            await stage.forward_part(size)
            if pause:
                await asyncio.sleep(pause)


def slice_sizes(length: int, average: int, variation: int, rng: random.Random) -> list[int]:
    """Toxiproxy's recursive halving, iteratively, never producing an empty piece."""
    sizes: list[int] = []
    spans = [(0, length)] if length > 0 else []
    while spans:
        start, end = spans.pop()
        size = end - start
        if size <= 1 or size - average <= variation:
            sizes.append(size)
            continue
        middle = start + size // 2
        if variation > 0:
            middle += rng.randrange(-variation, variation)
        middle = min(max(middle, start + 1), end - 1)
        spans.append((middle, end))
        spans.append((start, middle))
    return sizes


async def pipe_limit_data(stage: Stage, attrs: Mapping[str, int], rng: random.Random) -> None:
    limit = attrs["bytes"]
    while True:
        item = await stage.recv()
        if not isinstance(item, Chunk):
            await stage.close()
            return
        allowance = max(limit - stage.counter, 0)
        if allowance > 0:
            stage.replace_head(Chunk(item.data[:allowance], item.stamp))
            # Counted before delivery: an interrupted delivery is flushed, so it still counts.
            stage.counter += min(allowance, len(item.data))
            await stage.forward()
        else:
            stage.drop()
        if stage.counter >= limit:
            await stage.close()
            return


PIPES: dict[str, Pipe] = {
    "latency": pipe_latency,
    "bandwidth": pipe_bandwidth,
    "slow_close": pipe_slow_close,
    "timeout": pipe_timeout,
    "reset_peer": pipe_reset_peer,
    "slicer": pipe_slicer,
    "limit_data": pipe_limit_data,
    "noop": pipe_noop,
}


async def run_stage(stage: Stage, rng: random.Random) -> None:
    """A stage's task: deliver what an interrupted run left held, then run its toxic."""
    if await stage.flush():
        return
    toxic = stage.toxic
    if toxic is None or not rng.random() < toxic.toxicity:
        await pipe_noop(stage, {}, rng)
        return
    await PIPES[toxic.type](stage, dict(toxic.attributes), rng)
