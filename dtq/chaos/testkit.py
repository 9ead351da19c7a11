"""Helpers for testing through the fault proxy: loopback TCP servers, deadlines, raw HTTP.

Everything binds 127.0.0.1 on an ephemeral port, so parallel test workers never collide, and
nothing here sleeps to synchronise: :func:`wait_until` polls a condition up to a deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

LOOPBACK = "127.0.0.1"


def wait_until(condition: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """Poll ``condition`` until it is truthy; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.005)


@dataclass
class ServerSide:
    """The server end of one accepted connection, and what happened to it."""

    sock: socket.socket
    received: bytearray = field(default_factory=bytearray)
    replied: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)
    closed_at: float = 0.0  # time.monotonic() at or before the moment the socket closed
    reset: bool = False

    def mark_closed(self, at: float | None = None) -> None:
        self.closed_at = time.monotonic() if at is None else at
        self.closed.set()

    def read_until_closed(self) -> None:
        """Record everything the peer sends until EOF or reset."""
        try:
            while data := self.sock.recv(65536):
                self.received += data
        except ConnectionResetError:
            self.reset = True
        except OSError:
            pass
        self.mark_closed()


Handler = Callable[[ServerSide], None]


def echo(side: ServerSide) -> None:
    """Echo every chunk back until the peer closes."""
    try:
        while data := side.sock.recv(65536):
            side.received += data
            side.sock.sendall(data)
            side.replied.set()
    except ConnectionResetError:
        side.reset = True
    except OSError:
        pass
    side.mark_closed()


def reply_and_close(payload: bytes) -> Handler:
    """Send ``payload`` as soon as a client connects, then close."""

    def handler(side: ServerSide) -> None:
        side.sock.sendall(payload)
        side.replied.set()
        # Stamped before the close: a peer cannot see the EOF earlier than this, even when
        # this thread is descheduled right after closing.
        closing_at = time.monotonic()
        side.sock.close()
        side.mark_closed(closing_at)

    return handler


def reply_and_hold(payload: bytes) -> Handler:
    """Send ``payload`` as soon as a client connects, then read until the peer closes."""

    def handler(side: ServerSide) -> None:
        side.sock.sendall(payload)
        side.replied.set()
        side.read_until_closed()

    return handler


class TcpServer:
    """A threaded loopback TCP server running ``handler`` for each connection."""

    def __init__(self, handler: Handler = echo) -> None:
        self._handler = handler
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self.address = f"{LOOPBACK}:{self.port}"
        self.sides: list[ServerSide] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            side = ServerSide(sock)
            self.sides.append(side)
            threading.Thread(target=self._handler, args=(side,), daemon=True).start()

    def wait_for_connection(self, count: int = 1, timeout: float = 5.0) -> ServerSide:
        wait_until(lambda: len(self.sides) >= count, timeout, f"{count} connection(s)")
        return self.sides[count - 1]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for side in self.sides:
            side.sock.close()

    def __enter__(self) -> TcpServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def free_port() -> int:
    """A loopback port that was free a moment ago (for "nothing listens here" checks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def connect(address: str, timeout: float = 5.0) -> socket.socket:
    """A client socket connected to ``host:port`` with a read timeout."""
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise EOFError(f"EOF after {len(data)} of {count} bytes")
        data += chunk
    return bytes(data)


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the next read sees the connection end (EOF or reset) rather than data."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def recv_until_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


class ApiClient:
    """Raw HTTP calls to the API over one keep-alive connection."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        host, _, port = address.rpartition(":")
        self._connection = http.client.HTTPConnection(host, int(port), timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        headers: dict[str, str] | None = None,
    ) -> HttpResult:
        if isinstance(body, str):
            payload: bytes | None = body.encode()
        elif body is None or isinstance(body, bytes):
            payload = body
        else:
            payload = json.dumps(body).encode()
        self._connection.request(method, path, body=payload, headers=headers or {})
        response = self._connection.getresponse()
        data = response.read()
        found = {name.lower(): value for name, value in response.getheaders()}
        return HttpResult(response.status, found, data)

    def close(self) -> None:
        self._connection.close()


def assert_api_error(result: HttpResult, status: int, message: str) -> None:
    """An API error exactly as Toxiproxy sends it: JSON text, newline, text/plain."""
    assert result.status == status, result.body
    assert result.json() == {"error": message, "status": status}
    assert result.body.endswith(b"\n")
    assert result.headers["content-type"] == "text/plain; charset=utf-8"


def assert_bad_body(result: HttpResult) -> None:
    """A 400 whose error starts ``bad request body`` (the decoder's detail varies)."""
    assert result.status == 400, result.body
    body = result.json()
    assert isinstance(body, dict)
    assert str(body["error"]).startswith("bad request body")
    assert body["status"] == 400


def refused(address: str) -> bool:
    """Whether a TCP connect to ``address`` is refused."""
    try:
        connect(address, timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def echo_works(address: str) -> bool:
    """Whether a line sent to ``address`` comes back (through an echoing upstream)."""
    with connect(address) as sock:
        sock.sendall(b"ping\n")
        return sock.recv(16) == b"ping\n"
