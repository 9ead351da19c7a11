"""The Toxiproxy-compatible server as a whole, on asyncio or in a background thread.

:class:`ToxiproxyApp` owns the API listener and the proxies on the running event loop; the
command line runs it until a signal. :class:`ToxiproxyServer` runs one in a daemon thread on
an ephemeral loopback port, for tests and for code that wants a fault proxy in-process::

    with ToxiproxyServer() as server:
        Toxiproxy().update_api_consumer(server.host, server.port)
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from pathlib import Path
from types import TracebackType

from .addr import bind_listener, join_host_port, resolve, sockname_text, split_host_port
from .api import VERSION, Api, populate_input
from .collection import ProxyCollection
from .errors import ApiError
from .httpd import HttpServer
from .listener import Listener
from .logs import event
from .metrics import Metrics

__all__ = ["VERSION", "ToxiproxyApp", "ToxiproxyServer"]


class ToxiproxyApp:
    """The API server and its proxies, living on the running event loop."""

    def __init__(
        self,
        *,
        seed: int | None = None,
        proxy_metrics: bool = False,
        runtime_metrics: bool = False,
    ) -> None:
        self.metrics = Metrics(proxy_metrics=proxy_metrics, runtime_metrics=runtime_metrics)
        self.collection = ProxyCollection(random.Random(seed), self.metrics)
        self.api = Api(self.collection, self.metrics)
        self._http = HttpServer(self.api.handle)
        self._listener: Listener | None = None
        self.address = ""

    async def populate_from_file(self, path: str | Path) -> bool:
        """Create the proxies a JSON config file lists, as POST /populate would.

        Errors are logged, not raised; proxies created before an error remain.
        """
        try:
            specs = populate_input(Path(path).read_bytes())
        except OSError as exc:
            event(logging.ERROR, "Error reading config file", config=str(path), error=str(exc))
            return False
        except ApiError as exc:
            event(logging.ERROR, "Error parsing config file", config=str(path), error=exc.message)
            return False
        proxies, error = await self.collection.populate(specs)
        if error is not None:
            event(
                logging.ERROR,
                "Failed to populate proxies from file",
                config=str(path),
                error=error.message,
            )
        event(logging.INFO, "Populated proxies from file", config=str(path), proxies=len(proxies))
        return error is None

    async def start(self, host: str = "127.0.0.1", port: int = 8474) -> str:
        """Listen for API requests; returns the bound ``host:port``. Raises AddressError."""
        sock = bind_listener(await resolve(join_host_port(host, port)))
        self._listener = Listener(sock, self._http.accept)
        self.address = sockname_text(sock)
        event(logging.INFO, "Starting Toxiproxy HTTP server", address=self.address, version=VERSION)
        return self.address

    async def close(self) -> None:
        """Stop the API and every proxy, dropping their connections."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        await self._http.close_all()
        self.collection.stop_all()
        event(logging.INFO, "Stopped Toxiproxy HTTP server", address=self.address)


class ToxiproxyServer:
    """A :class:`ToxiproxyApp` in a background thread with its own event loop.

    ``start()`` returns the base URL (``http://127.0.0.1:PORT``); ``stop()`` shuts it down.
    Usable as a context manager. ``port=0`` (the default) picks a free ephemeral port.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        seed: int | None = None,
        config: str | Path | None = None,
        proxy_metrics: bool = False,
        runtime_metrics: bool = False,
    ) -> None:
        self._bind = (host, port)
        self._config = config
        self._options = {"proxy_metrics": proxy_metrics, "runtime_metrics": runtime_metrics}
        self._seed = seed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.app: ToxiproxyApp | None = None
        self.address = ""

    @property
    def host(self) -> str:
        return split_host_port(self.address)[0]

    @property
    def port(self) -> int:
        return int(split_host_port(self.address)[1])

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self, timeout: float = 10.0) -> str:
        if self._thread is not None:
            return self.url
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._main, name="toxiproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("toxiproxy server did not start in time")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = None

    def __enter__(self) -> ToxiproxyServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._boot())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._shutdown(loop)

    async def _boot(self) -> None:
        app = ToxiproxyApp(seed=self._seed, **self._options)
        if self._config is not None:
            await app.populate_from_file(self._config)
        self.address = await app.start(*self._bind)
        self.app = app

    def _shutdown(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.app is not None:
            loop.run_until_complete(self.app.close())
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
