"""One direction of one proxied connection: socket reader → toxic stages → socket writer.

The chain starts with a hidden pass-through stage, then one stage per toxic of this
direction in the order they were added. Changes to a live chain mirror Toxiproxy's link code
and are made synchronously, between two awaits, so no lock is needed:

* add: interrupt the last stage, append the new one; what the last stage held goes out
  without passing the new toxic;
* update: interrupt the stage and start it again (re-rolling toxicity), keeping its state;
* remove: interrupt the stage and the one before it, hand everything the removed stage held
  or had queued to the one before, splice, restart. A removed ``timeout`` instead ends the
  stream, because the data it dropped left the stream corrupt.

When the writer reaches EOF it closes its destination socket completely (half-close is not
propagated) and the link stops; the other direction then reads EOF from that socket and
follows, after flushing what its own toxics still hold.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable, Sequence

from .pipeline import EOF, Channel, Chunk, Stage
from .toxics import Direction, ToxicSpec, run_stage

READ_SIZE = 32 * 1024

Report = Callable[[Direction, str, int], None]


class Link:
    """Moves bytes from ``source`` to ``dest`` through the toxics of one direction."""

    def __init__(
        self,
        direction: Direction,
        source: asyncio.StreamReader,
        dest: asyncio.StreamWriter,
        toxics: Sequence[ToxicSpec],
        rng: random.Random,
    ) -> None:
        self.direction = direction
        self._source = source
        self._dest = dest
        self._rng = rng
        self.output = Channel()
        self.stages = [Stage(None, Channel(), self.output)]
        for toxic in toxics:
            self._append(toxic)
        self.finished = False
        self.received = 0
        self.sent = 0
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.on_finished: Callable[[Link, bool], None] = lambda link, ok: None
        self.report: Report = lambda direction, what, count: None

    def start(self) -> None:
        for stage in self.stages:
            self._run(stage)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self._writer = asyncio.get_running_loop().create_task(self._write())

    def stop(self) -> None:
        """Cancel every task of this link. Sockets are the connection's business."""
        self.finished = True
        current = asyncio.current_task()
        for task in [self._reader, self._writer, *(stage.task for stage in self.stages)]:
            if task is not None and task is not current:
                task.cancel()

    # -- live changes ---------------------------------------------------------------------

    def add(self, toxic: ToxicSpec) -> None:
        last = self.stages[-1]
        if self.finished or not self._interrupt(last):
            return
        stage = self._append(toxic)
        stage.held.extend(last.held)
        last.held.clear()
        self._run(stage)
        self._run(last)

    def update(self, toxic: ToxicSpec) -> None:
        stage = self._find(toxic)
        if stage is not None and not self.finished and self._interrupt(stage):
            self._run(stage)

    def remove(self, toxic: ToxicSpec) -> None:
        stage = self._find(toxic)
        if stage is None or self.finished or not self._interrupt(stage):
            return
        if toxic.type == "timeout":
            stage.held.clear()
            self._run_closing(stage)
            return
        index = self.stages.index(stage)
        previous = self.stages[index - 1]
        if not self._interrupt(previous):
            # The stage before is finishing by itself; leave this one as a pass-through.
            stage.toxic = None
            self._run(stage)
            return
        pending = [*stage.held, *stage.inbox.drain()]
        del self.stages[index]
        previous.held = deque([*pending, *previous.held])
        previous.outbox = stage.outbox
        self._run(previous)

    # -- internals ------------------------------------------------------------------------

    def _append(self, toxic: ToxicSpec) -> Stage:
        last = self.stages[-1]
        stage = Stage(toxic, Channel(toxic.buffer_size), last.outbox)
        last.outbox = stage.inbox
        self.stages.append(stage)
        return stage

    def _find(self, toxic: ToxicSpec) -> Stage | None:
        return next((stage for stage in self.stages if stage.toxic is toxic), None)

    def _run(self, stage: Stage) -> None:
        stage.task = asyncio.get_running_loop().create_task(run_stage(stage, self._rng))

    def _run_closing(self, stage: Stage) -> None:
        stage.task = asyncio.get_running_loop().create_task(stage.close())

    @staticmethod
    def _interrupt(stage: Stage) -> bool:
        """Stop a stage's task, leaving its held items exact. False if it must not stop."""
        if stage.closed or stage.committed:
            return False
        if stage.task is not None:
            stage.task.cancel()
            stage.task = None
        return True

    async def _read(self) -> None:
        inbox = self.stages[0].inbox
        loop = asyncio.get_running_loop()
        try:
            while data := await self._source.read(READ_SIZE):
                self.received += len(data)
                await inbox.put(Chunk(data, loop.time()))
        except OSError:
            pass
        finally:
            self.report(self.direction, "received", self.received)
        await inbox.put(EOF)

    async def _write(self) -> None:
        dest = self._dest
        ok = True
        try:
            while isinstance(item := await self.output.get(), Chunk):
                if dest.is_closing():
                    ok = False
                    break
                dest.write(item.data)
                await dest.drain()
                self.sent += len(item.data)
        except OSError:
            ok = False
        dest.close()
        if ok:
            self.report(self.direction, "sent", self.sent)
        self.stop()
        self.on_finished(self, ok)
