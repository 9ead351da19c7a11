"""The real ``toxiproxy-python`` client drives the server unchanged (spec §12 where it can)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

from dtq.chaos import ToxiproxyServer
from dtq.chaos.testkit import TcpServer, connect, recv_exactly

SLACK = 0.5


@pytest.fixture
def toxiproxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Toxiproxy]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with ToxiproxyServer() as server:
        client = Toxiproxy()
        # The client keeps its API address on a class; restore it for other tests.
        monkeypatch.setattr(APIConsumer, "host", APIConsumer.host)
        monkeypatch.setattr(APIConsumer, "port", APIConsumer.port)
        client.update_api_consumer(server.host, server.port)
        yield client


def round_trip(listen: str) -> float:
    with connect(listen) as sock:
        start = time.monotonic()
        sock.sendall(b"ping\n")
        assert recv_exactly(sock, 5) == b"ping\n"
        return time.monotonic() - start


def test_running_and_version(toxiproxy: Toxiproxy) -> None:
    assert toxiproxy.running()
    assert toxiproxy.version() == b'{"version": "2.12.0"}\n'


def test_create_list_get_and_destroy(toxiproxy: Toxiproxy, upstream: TcpServer) -> None:
    proxy = toxiproxy.create(upstream=upstream.address, name="redis")
    assert proxy.name == "redis"
    assert proxy.enabled is True
    assert proxy.upstream == upstream.address
    assert proxy.listen.startswith("127.0.0.1:")
    assert round_trip(proxy.listen) < SLACK
    assert list(toxiproxy.proxies()) == ["redis"]
    fetched = toxiproxy.get_proxy("redis")
    assert fetched is not None
    assert fetched.listen == proxy.listen
    assert toxiproxy.get_proxy("nope") is None
    assert toxiproxy.destroy(proxy)
    assert toxiproxy.proxies() == {}


def test_server_conflict_and_not_found_map_to_client_exceptions(
    toxiproxy: Toxiproxy, upstream: TcpServer
) -> None:
    toxiproxy.create(upstream=upstream.address, name="p")
    with pytest.raises(ProxyExists):
        toxiproxy.create(upstream=upstream.address, name="p")
    body = {"name": "p", "listen": "127.0.0.1:0", "upstream": upstream.address}
    with pytest.raises(ProxyExists):
        APIConsumer.post("/proxies", json=body)
    with pytest.raises(NotFound):
        APIConsumer.get("/proxies/nope")
    with pytest.raises(NotFound, match="404 page not found"):
        APIConsumer.get("/not_found")


def test_invalid_toxics_raise(toxiproxy: Toxiproxy, upstream: TcpServer) -> None:
    proxy = toxiproxy.create(upstream=upstream.address, name="p")
    with pytest.raises(InvalidToxic):
        proxy.add_toxic(type="down")
    with pytest.raises(InvalidToxic):
        proxy.add_toxic(type="latency", stream="sideways")
    proxy.add_toxic(type="latency", attributes={"latency": 1})
    with pytest.raises(ProxyExists):
        proxy.add_toxic(type="latency", attributes={"latency": 1})


def test_toxics_through_the_client(toxiproxy: Toxiproxy, upstream: TcpServer) -> None:
    proxy = toxiproxy.create(upstream=upstream.address, name="p", listen="localhost:0")
    proxy.add_toxic(type="latency", attributes={"latency": 100})
    proxy.add_toxic(name="second_latency_downstream", type="latency", attributes={"latency": 50})
    proxy.add_toxic(
        type="slicer",
        stream="upstream",
        toxicity=0.5,
        attributes={"average_size": 2, "size_variation": 1, "delay": 10},
    )
    toxics = proxy.toxics()
    assert list(toxics) == ["slicer_upstream", "latency_downstream", "second_latency_downstream"]
    latency = proxy.get_toxic("latency_downstream")
    assert latency is not None
    assert (latency.type, latency.stream, latency.toxicity) == ("latency", "downstream", 1)
    assert latency.attributes == {"latency": 100, "jitter": 0}
    assert toxics["slicer_upstream"].toxicity == 0.5
    assert round_trip(proxy.listen) >= 0.148
    assert proxy.destroy_toxic("latency_downstream")
    assert proxy.destroy_toxic("second_latency_downstream")
    assert proxy.get_toxic("latency_downstream") is None
    assert round_trip(proxy.listen) < SLACK


def test_disable_enable_and_down(toxiproxy: Toxiproxy, upstream: TcpServer) -> None:
    proxy = toxiproxy.create(upstream=upstream.address, name="p")
    listen = proxy.listen
    with proxy.down():
        assert proxy.enabled is False
        with pytest.raises(ConnectionRefusedError):
            connect(listen)
        assert toxiproxy.get_proxy("p").enabled is False
    assert proxy.enabled is True
    assert toxiproxy.get_proxy("p").listen == listen
    assert round_trip(listen) < SLACK
    proxy.disable()
    proxy.enable()
    assert round_trip(listen) < SLACK


def test_reset_and_destroy_all(toxiproxy: Toxiproxy, upstream: TcpServer) -> None:
    first = toxiproxy.create(upstream=upstream.address, name="one")
    toxiproxy.create(upstream=upstream.address, name="two", enabled=False)
    first.add_toxic(type="timeout", attributes={"timeout": 0})
    assert toxiproxy.reset()
    assert first.toxics() == {}
    second = toxiproxy.get_proxy("two")
    assert second is not None
    assert second.enabled is True
    assert round_trip(second.listen) < SLACK
    toxiproxy.destroy_all()
    assert toxiproxy.proxies() == {}


def test_populate_through_the_client(toxiproxy: Toxiproxy, upstream: TcpServer) -> None:
    wanted = [
        {"name": "a", "upstream": upstream.address, "listen": "127.0.0.1:0"},
        {"name": "b", "upstream": upstream.address, "listen": "127.0.0.1:0"},
    ]
    created = toxiproxy.populate(wanted)
    assert sorted(proxy.name for proxy in created) == ["a", "b"]
    assert sorted(toxiproxy.proxies()) == ["a", "b"]
    for proxy in created:
        assert round_trip(proxy.listen) < SLACK
