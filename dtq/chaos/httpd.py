"""A small HTTP/1.1 server on asyncio streams, enough for the Toxiproxy API.

It supports keep-alive (the Ruby client sends every call over one connection),
``Content-Length`` and chunked request bodies, ``Expect: 100-continue``, and Go's time
limits: 60 s idle between requests, 15 s to read a request once it has started. A request it
cannot parse gets ``400 Bad Request`` and the connection is closed, as Go's server does.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus

from .logs import event

IDLE_TIMEOUT = 60.0
READ_TIMEOUT = 15.0
MAX_HEADER_BYTES = 1 << 20
MAX_BODY_BYTES = 64 << 20


class BadRequest(Exception):
    """The bytes on the wire are not an HTTP request we can answer."""


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes = b""

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    def encode(self, keep_alive: bool, http10: bool) -> bytes:
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = ""
        lines = [f"HTTP/1.1 {self.status} {reason}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        lines.append(f"Date: {email.utils.formatdate(usegmt=True)}")
        if self.status != 204:  # a 204 carries no body and, per RFC 9110, no length
            lines.append(f"Content-Length: {len(self.body)}")
        if not keep_alive:
            lines.append("Connection: close")
        elif http10:
            lines.append("Connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    """Serves ``handler`` on connections accepted by an asyncio server."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve a newly accepted client in its own task."""
        task = asyncio.get_running_loop().create_task(self.serve_connection(reader, writer))
        self._connections[task] = writer

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            await self._serve(reader, writer)
        except (OSError, EOFError, TimeoutError):
            pass
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def close_all(self, timeout: float = 5.0) -> None:
        """Drop every client connection and wait for their handlers to finish.

        Connections are aborted rather than their tasks cancelled, so a request being
        answered finishes its handler instead of stopping halfway.
        """
        tasks = list(self._connections)
        for writer in self._connections.values():
            writer.transport.abort()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await read_request(reader, writer)
            except BadRequest as exc:
                event(logging.DEBUG, "Bad HTTP request", error=str(exc))
                body = b"400 Bad Request"
                headers = [("Content-Type", "text/plain; charset=utf-8")]
                writer.write(Response(400, body, headers).encode(False, False))
                await writer.drain()
                return
            if request is None:
                return
            keep_alive = _keep_alive(request)
            response = await self._handler(request)
            writer.write(response.encode(keep_alive, request.version == "HTTP/1.0"))
            await writer.drain()
            if not keep_alive:
                return


def _keep_alive(request: Request) -> bool:
    tokens = {token.strip().lower() for token in request.header("connection").split(",")}
    if request.version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Request | None:
    """The next request on the connection, or None when the client is done."""
    first = await asyncio.wait_for(_request_line(reader), IDLE_TIMEOUT)
    if first is None:
        return None
    return await asyncio.wait_for(_rest_of_request(first, reader, writer), READ_TIMEOUT)


async def _request_line(reader: asyncio.StreamReader) -> str | None:
    while True:  # Go ignores empty lines before a request line
        line = await _read_line(reader)
        if line is None:
            return None
        if line:
            return line


async def _read_line(reader: asyncio.StreamReader) -> str | None:
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise BadRequest("truncated line") from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest("line too long") from None
    return raw.rstrip(b"\r\n").decode("latin-1")


async def _rest_of_request(
    first: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Request:
    parts = first.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"malformed request line {first!r}")
    method, target, version = parts
    headers = await _read_headers(reader)
    request = Request(method, target, version, headers)
    if request.header("expect").lower() == "100-continue" and version == "HTTP/1.1":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.body = await _read_body(request, reader)
    return request


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    total = 0
    while True:
        line = await _read_line(reader)
        if line is None:
            raise BadRequest("connection closed in headers")
        if not line:
            return headers
        total += len(line)
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or total > MAX_HEADER_BYTES:
            raise BadRequest(f"malformed header {line!r}")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value


async def _read_body(request: Request, reader: asyncio.StreamReader) -> bytes:
    if "chunked" in request.header("transfer-encoding").lower():
        return await _read_chunked(reader)
    length_text = request.header("content-length")
    if not length_text:
        return b""
    if not length_text.isdigit() or int(length_text) > MAX_BODY_BYTES:
        raise BadRequest(f"bad Content-Length {length_text!r}")
    return await reader.readexactly(int(length_text))


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        line = await _read_line(reader)
        size_text = (line or "").split(";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadRequest(f"bad chunk size {size_text!r}") from None
        if size == 0:
            break
        if len(body) + size > MAX_BODY_BYTES:
            raise BadRequest("body too large")
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    while await _read_line(reader):  # trailers
        pass
    return bytes(body)
