"""Fixtures shared by the Toxiproxy-compatible server's tests: a running server, an HTTP
client for its API, an echo server upstream and a proxy to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dtq.chaos import ToxiproxyServer
from dtq.chaos.testkit import ApiClient, TcpServer


@pytest.fixture
def server() -> Iterator[ToxiproxyServer]:
    with ToxiproxyServer() as running:
        yield running


@pytest.fixture
def api(server: ToxiproxyServer) -> Iterator[ApiClient]:
    client = ApiClient(server.address)
    yield client
    client.close()


@pytest.fixture
def upstream() -> Iterator[TcpServer]:
    with TcpServer() as echo:
        yield echo


@pytest.fixture
def proxy(api: ApiClient, upstream: TcpServer) -> dict[str, object]:
    result = api.request(
        "POST", "/proxies", {"name": "p", "listen": "127.0.0.1:0", "upstream": upstream.address}
    )
    assert result.status == 201, result.body
    body = result.json()
    assert isinstance(body, dict)
    return body
