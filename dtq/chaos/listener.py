"""An accept loop for a bound listening socket, handing each client over as asyncio streams.

asyncio's own ``Server`` asserts (and logs an error) when it is closed while accepted
sockets are still being wrapped, which happens whenever a proxy is disabled under load; this
loop owns its socket, so closing it is immediate and quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable

from .logs import event

OnAccept = Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]
_TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED}


class Listener:
    """Accepts on ``sock`` until closed, calling ``on_accept`` with each client's streams."""

    def __init__(self, sock: socket.socket, on_accept: OnAccept) -> None:
        self._sock = sock
        self._on_accept = on_accept
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                if exc.errno not in _TRANSIENT:
                    return
                event(logging.ERROR, "Accept failed, retrying", error=str(exc))
                await asyncio.sleep(0.1)
                continue
            try:
                reader, writer = await asyncio.open_connection(sock=client)
            except OSError:
                client.close()
                continue
            self._on_accept(reader, writer)

    def close(self) -> None:
        """Stop accepting and close the socket; new connects are refused at once."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):
            # Unregister first, synchronously, so a socket that reuses the fd is not affected.
            loop.remove_reader(self._sock.fileno())
        self._task.cancel()
        self._sock.close()
