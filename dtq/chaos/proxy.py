"""A proxy: its listener, its live connections and its toxics.

Every accepted client is dialled through to ``upstream`` at once (resolving the host on each
connection); when that fails the client sees EOF, never "connection refused". Stopping a proxy
closes the listener and both sockets of every connection; its toxics stay configured.
Changes to the toxics reach every live connection immediately.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct

from .addr import AddressError, bind_listener, resolve, sockname_text, upstream_target
from .link import Link
from .listener import Listener
from .logs import event
from .metrics import Metrics
from .toxics import Direction, ToxicSpec

DIRECTIONS: tuple[Direction, Direction] = ("upstream", "downstream")
_LINGER_ZERO = struct.pack("ii", 1, 0)


class Proxy:
    """A named TCP listener forwarding connections to ``upstream`` through toxics."""

    def __init__(
        self, name: str, listen: str, upstream: str, *, rng: random.Random, metrics: Metrics
    ) -> None:
        self.name = name
        self.listen = listen  # the bound address once started, the client's text before
        self.upstream = upstream
        self.enabled = False
        self.rng = rng
        self.metrics = metrics
        self.toxics: dict[Direction, list[ToxicSpec]] = {"upstream": [], "downstream": []}
        self._listener: Listener | None = None
        self._connections: set[Connection] = set()

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "Logger": {},
            "toxics": [toxic.to_json() for toxic in self.all_toxics()],
        }

    # -- listener -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind ``listen`` and accept; raises AddressError with Go's text on failure."""
        if self.enabled:
            return
        sock = bind_listener(await resolve(self.listen))
        self._listener = Listener(sock, self._accept)
        self.listen = sockname_text(sock)
        self.enabled = True
        event(
            logging.INFO, "Started proxy", name=self.name, proxy=self.listen, upstream=self.upstream
        )

    def stop(self) -> None:
        """Close the listener and every connection."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for connection in list(self._connections):
            connection.close()
        self._connections.clear()
        if self.enabled:
            event(logging.INFO, "Terminated proxy", name=self.name, proxy=self.listen)
        self.enabled = False

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(self, reader, writer)
        self._connections.add(connection)
        connection.start()

    def forget(self, connection: Connection) -> None:
        self._connections.discard(connection)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def report(self, direction: Direction, what: str, count: int) -> None:
        self.metrics.add(what, (direction, self.listen, self.name, self.upstream), count)

    # -- toxics ---------------------------------------------------------------------------

    def all_toxics(self) -> list[ToxicSpec]:
        """Upstream toxics in the order added, then downstream ones."""
        return [*self.toxics["upstream"], *self.toxics["downstream"]]

    def find_toxic(self, name: str) -> ToxicSpec | None:
        return next((toxic for toxic in self.all_toxics() if toxic.name == name), None)

    def add_toxic(self, toxic: ToxicSpec) -> None:
        self.toxics[toxic.direction].append(toxic)
        for connection in list(self._connections):
            connection.change("add", toxic)

    def update_toxic(self, toxic: ToxicSpec) -> None:
        for connection in list(self._connections):
            connection.change("update", toxic)

    def remove_toxic(self, toxic: ToxicSpec) -> None:
        self.toxics[toxic.direction].remove(toxic)
        for connection in list(self._connections):
            connection.change("remove", toxic)

    def remove_all_toxics(self) -> None:
        for direction in DIRECTIONS:
            for toxic in list(self.toxics[direction]):
                self.remove_toxic(toxic)


class Connection:
    """One accepted client, its upstream socket and the two links between them."""

    def __init__(
        self, proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._proxy = proxy
        self._client_reader = reader
        self._client_writer = writer
        self._server_writer: asyncio.StreamWriter | None = None
        self._links: dict[Direction, Link] = {}
        self._task: asyncio.Task[None] | None = None
        self._client_name = str(writer.get_extra_info("peername"))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        proxy = self._proxy
        event(logging.DEBUG, "Accepted client", name=proxy.name, client=self._client_name)
        try:
            host, port = upstream_target(proxy.upstream)
            server_reader, server_writer = await asyncio.open_connection(host, port)
        except (OSError, AddressError) as exc:
            event(
                logging.ERROR,
                "Unable to open connection to upstream",
                name=proxy.name,
                upstream=proxy.upstream,
                error=str(exc),
            )
            self._client_writer.transport.abort()
            proxy.forget(self)
            return
        self._server_writer = server_writer
        if any(toxic.type == "reset_peer" for toxic in proxy.all_toxics()):
            for writer in (self._client_writer, server_writer):
                _set_linger_zero(writer)
        self._links = {
            "upstream": Link(
                "upstream", self._client_reader, server_writer, proxy.toxics["upstream"], proxy.rng
            ),
            "downstream": Link(
                "downstream",
                server_reader,
                self._client_writer,
                proxy.toxics["downstream"],
                proxy.rng,
            ),
        }
        for link in self._links.values():
            link.on_finished = self._link_finished
            link.report = proxy.report
            link.start()

    def _link_finished(self, link: Link, ok: bool) -> None:
        if all(each.finished for each in self._links.values()):
            event(
                logging.DEBUG, "Closed connection", name=self._proxy.name, client=self._client_name
            )
            self._proxy.forget(self)

    def change(self, action: str, toxic: ToxicSpec) -> None:
        link = self._links.get(toxic.direction)
        if link is None:
            return
        if action == "add":
            link.add(toxic)
        elif action == "update":
            link.update(toxic)
        else:
            link.remove(toxic)

    def close(self) -> None:
        """Drop the connection: stop both links and close both sockets at once."""
        if self._task is not None:
            self._task.cancel()
        for link in self._links.values():
            link.stop()
        for writer in (self._client_writer, self._server_writer):
            if writer is not None:
                writer.transport.abort()


def _set_linger_zero(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
