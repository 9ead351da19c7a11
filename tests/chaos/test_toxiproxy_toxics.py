"""Toxics on real TCP traffic (spec §12 data-path checks D1-D18, and live changes).

Each test runs a fresh server and a loopback upstream on ephemeral ports. Timings use
``time.monotonic()``; lower bounds are the toxic's contract, upper bounds are generous because
the suite runs in parallel on two cores.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from dtq.chaos.testkit import (
    ApiClient,
    Handler,
    TcpServer,
    closed_by_peer,
    connect,
    echo,
    free_port,
    recv_exactly,
    recv_until_eof,
    reply_and_close,
    reply_and_hold,
    wait_until,
)
from dtq.chaos.toxics import slice_sizes

SLACK = 0.5  # seconds allowed above a toxic's delay on a busy machine
SILENCE = 0.3  # how long "nothing arrives" is observed


class Rig:
    """A proxy ``p`` in front of a loopback upstream, and ways to poke at it."""

    def __init__(self, api: ApiClient, upstream: TcpServer) -> None:
        self.api = api
        self.upstream = upstream
        body = {"name": "p", "listen": "127.0.0.1:0", "upstream": upstream.address}
        result = api.request("POST", "/proxies", body)
        assert result.status == 201, result.body
        self.listen = str(result.json()["listen"])  # type: ignore[index]

    def toxic(self, kind: str, stream: str = "downstream", **attributes: int) -> str:
        name = f"{kind}_{stream}_{len(self.toxics())}"
        body = {"name": name, "type": kind, "stream": stream, "attributes": attributes}
        result = self.api.request("POST", "/proxies/p/toxics", body)
        assert result.status == 200, result.body
        return name

    def toxics(self) -> list[object]:
        listed = self.api.request("GET", "/proxies/p/toxics").json()
        assert isinstance(listed, list)
        return listed

    def update(self, name: str, body: dict[str, object]) -> None:
        result = self.api.request("PATCH", f"/proxies/p/toxics/{name}", body)
        assert result.status == 200, result.body

    def remove(self, name: str) -> None:
        assert self.api.request("DELETE", f"/proxies/p/toxics/{name}").status == 204

    def connect(self) -> socket.socket:
        return connect(self.listen)


@pytest.fixture
def handler() -> Handler:
    return echo


@pytest.fixture
def rig(api: ApiClient, handler: Handler) -> Iterator[Rig]:
    with TcpServer(handler) as upstream:
        yield Rig(api, upstream)


def round_trip(sock: socket.socket, payload: bytes = b"ping\n") -> float:
    start = time.monotonic()
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload
    return time.monotonic() - start


def assert_silent(sock: socket.socket, seconds: float = SILENCE) -> None:
    """Nothing arrives for ``seconds`` and the connection stays open."""
    sock.settimeout(seconds)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.settimeout(5)


def assert_delay(samples: list[float], delay: float) -> None:
    assert min(samples) >= delay - 0.002, samples
    assert min(samples) < delay + SLACK, samples


# -- D1-D5: pass-through and latency ----------------------------------------------------------


def test_d1_bytes_pass_unchanged(rig: Rig) -> None:
    payload = random.Random(1).randbytes(1 << 20)
    with rig.connect() as sock:
        assert round_trip(sock) < SLACK
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert recv_exactly(sock, len(payload)) == payload
        sender.join()


def test_d2_downstream_latency(rig: Rig) -> None:
    rig.toxic("latency", latency=100)
    with rig.connect() as sock:
        assert_delay([round_trip(sock) for _ in range(3)], 0.1)


def test_d3_latencies_add_up_across_and_within_directions(rig: Rig) -> None:
    rig.toxic("latency", "upstream", latency=100)
    rig.toxic("latency", "downstream", latency=100)
    with rig.connect() as sock:
        assert_delay([round_trip(sock) for _ in range(3)], 0.2)
    rig.api.request("POST", "/reset")
    rig.toxic("latency", latency=100)
    rig.toxic("latency", latency=100)
    with rig.connect() as sock:
        assert_delay([round_trip(sock) for _ in range(3)], 0.2)


def test_d4_removing_latency_releases_held_data(rig: Rig) -> None:
    name = rig.toxic("latency", latency=5000)
    with rig.connect() as sock:
        sock.sendall(b"held\n")
        side = rig.upstream.wait_for_connection()
        assert side.replied.wait(5)
        removed_at = time.monotonic()
        rig.remove(name)
        assert recv_exactly(sock, 5) == b"held\n"
        assert time.monotonic() - removed_at < 1.0


def test_d5_toxicity_zero_never_applies(rig: Rig) -> None:
    result = rig.api.request(
        "POST",
        "/proxies/p/toxics",
        {"type": "latency", "toxicity": 0, "attributes": {"latency": 1000}},
    )
    assert result.status == 200
    for _ in range(3):
        with rig.connect() as sock:
            assert round_trip(sock) < 0.5


def test_jitter_stays_within_bounds(rig: Rig) -> None:
    rig.toxic("latency", latency=100, jitter=50)
    with rig.connect() as sock:
        samples = [round_trip(sock) for _ in range(4)]
    assert min(samples) >= 0.05 - 0.002, samples
    assert min(samples) < 0.15 + SLACK, samples


# -- D6-D7: timeout ---------------------------------------------------------------------------


def test_d6_timeout_zero_blackholes_until_removed(rig: Rig) -> None:
    name = rig.toxic("timeout", timeout=0)
    with rig.connect() as sock:
        sock.sendall(b"lost\n")
        side = rig.upstream.wait_for_connection()
        assert side.replied.wait(5)
        assert_silent(sock)
        removed_at = time.monotonic()
        rig.remove(name)
        assert closed_by_peer(sock)
        assert time.monotonic() - removed_at < 1.0
        assert side.closed.wait(5)


def test_d7_upstream_timeout_closes_an_idle_connection(rig: Rig) -> None:
    rig.toxic("timeout", "upstream", timeout=200)
    sock = rig.connect()
    start = time.monotonic()
    assert closed_by_peer(sock)
    elapsed = time.monotonic() - start
    sock.close()
    assert 0.18 <= elapsed < 0.2 + SLACK
    assert rig.upstream.wait_for_connection().closed.wait(5)


def test_timeout_drops_data_then_closes(rig: Rig) -> None:
    rig.toxic("timeout", "downstream", timeout=200)
    with rig.connect() as sock:
        start = time.monotonic()
        sock.sendall(b"dropped\n")
        assert recv_until_eof(sock) == b""
        assert 0.18 <= time.monotonic() - start < 0.2 + SLACK


def test_reset_closes_connections_held_by_timeout(rig: Rig) -> None:
    rig.toxic("timeout", "upstream", timeout=0)
    with rig.connect() as sock:
        sock.sendall(b"x")
        assert_silent(sock)
        assert rig.api.request("POST", "/reset").status == 204
        assert closed_by_peer(sock)


# -- D8: limit_data ---------------------------------------------------------------------------


@pytest.mark.parametrize("handler", [reply_and_hold(b"0123456789abcdefghij")])
def test_d8_limit_data_downstream(rig: Rig) -> None:
    rig.toxic("limit_data", bytes=10)
    with rig.connect() as sock:
        assert recv_until_eof(sock) == b"0123456789"


def test_limit_data_upstream(rig: Rig) -> None:
    rig.toxic("limit_data", "upstream", bytes=10)
    with rig.connect() as sock:
        sock.sendall(b"0123456789abcdefghij")
        side = rig.upstream.wait_for_connection()
        assert side.closed.wait(5)
        assert bytes(side.received) == b"0123456789"
        # The echo races the proxy closing the upstream socket; only the close is certain.
        assert b"0123456789".startswith(recv_until_eof(sock))


def test_limit_data_counter_survives_updates(rig: Rig) -> None:
    name = rig.toxic("limit_data", bytes=10)
    with rig.connect() as sock:
        assert round_trip(sock, b"abcdef") < SLACK
        rig.update(name, {"attributes": {"bytes": 8}})
        sock.sendall(b"ghijkl")
        assert recv_until_eof(sock) == b"gh"


# -- D9-D10: reset_peer -----------------------------------------------------------------------


def test_d9_reset_peer_resets_after_the_first_write(rig: Rig) -> None:
    rig.toxic("reset_peer", "upstream", timeout=0)
    with rig.connect() as sock:
        sock.sendall(b"hello\n")
        with pytest.raises(ConnectionResetError):
            sock.recv(16)


def test_d10_reset_peer_waits_its_timeout(rig: Rig) -> None:
    rig.toxic("reset_peer", "upstream", timeout=100)
    with rig.connect() as sock:
        start = time.monotonic()
        sock.sendall(b"hello\n")
        with pytest.raises(ConnectionResetError):
            sock.recv(16)
        assert 0.098 <= time.monotonic() - start < 0.1 + SLACK


def test_reset_peer_added_to_an_open_connection_closes_with_fin(rig: Rig) -> None:
    with rig.connect() as sock:
        assert round_trip(sock) < SLACK
        rig.toxic("reset_peer", "upstream", timeout=0)
        sock.sendall(b"hello\n")
        assert sock.recv(16) == b""


def test_reset_peer_with_toxicity_zero_still_resets_on_close(rig: Rig) -> None:
    body = {"type": "reset_peer", "stream": "upstream", "toxicity": 0}
    assert rig.api.request("POST", "/proxies/p/toxics", body).status == 200
    with rig.connect() as sock:
        assert round_trip(sock) < SLACK
        rig.upstream.wait_for_connection().sock.shutdown(socket.SHUT_RDWR)
        with pytest.raises(ConnectionResetError):
            sock.recv(16)


# -- D11: slow_close --------------------------------------------------------------------------


@pytest.mark.parametrize("handler", [reply_and_close(b"bye\n")])
def test_d11_slow_close_delays_only_the_close(rig: Rig) -> None:
    rig.toxic("slow_close", delay=300)
    with rig.connect() as sock:
        start = time.monotonic()
        assert recv_exactly(sock, 4) == b"bye\n"
        assert time.monotonic() - start < SLACK
        assert sock.recv(16) == b""
        eof_at = time.monotonic()
    side = rig.upstream.wait_for_connection()
    assert side.closed.is_set()
    assert eof_at - side.closed_at >= 0.298


# -- D12-D13: bandwidth -----------------------------------------------------------------------


@pytest.mark.parametrize("handler", [reply_and_hold(bytes(10_000))])
def test_d12_bandwidth_rate(rig: Rig) -> None:
    rig.toxic("bandwidth", rate=10)
    with rig.connect() as sock:
        start = time.monotonic()
        assert len(recv_exactly(sock, 10_000)) == 10_000
        assert 0.9 <= time.monotonic() - start < 1.3 + SLACK


@pytest.mark.parametrize("handler", [reply_and_hold(b"data")])
def test_d13_bandwidth_zero_stalls_until_removed(rig: Rig) -> None:
    name = rig.toxic("bandwidth", rate=0)
    with rig.connect() as sock:
        assert rig.upstream.wait_for_connection().replied.wait(5)
        assert_silent(sock)
        rig.remove(name)
        assert recv_exactly(sock, 4) == b"data"


@pytest.mark.parametrize("handler", [reply_and_hold(bytes(2000))])
def test_negative_bandwidth_is_unthrottled(rig: Rig) -> None:
    rig.toxic("bandwidth", rate=-5)
    with rig.connect() as sock:
        start = time.monotonic()
        recv_exactly(sock, 2000)
        assert time.monotonic() - start < SLACK


# -- D14: slicer ------------------------------------------------------------------------------


@pytest.mark.parametrize("handler", [reply_and_hold(b"hello")])
def test_d14_slicer_cuts_and_paces(rig: Rig) -> None:
    rig.toxic("slicer", average_size=1, size_variation=0, delay=10_000)
    with rig.connect() as sock:
        start = time.monotonic()
        assert recv_exactly(sock, 5) == b"hello"
        assert 0.04 <= time.monotonic() - start < 0.05 + SLACK


def test_slicer_upstream_keeps_bytes_and_order(rig: Rig) -> None:
    rig.toxic("slicer", "upstream", average_size=3, size_variation=2, delay=100)
    payload = bytes(range(256)) * 8
    with rig.connect() as sock:
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload


@pytest.mark.parametrize(
    ("average", "variation"), [(1, 0), (10, 3), (0, 0), (5, 5), (2, 100), (-3, -1)]
)
def test_slice_sizes_cover_the_chunk(average: int, variation: int) -> None:
    rng = random.Random(7)
    for length in [1, 2, 5, 100, 32 * 1024]:
        sizes = slice_sizes(length, average, variation, rng)
        assert sum(sizes) == length
        assert all(size >= 1 for size in sizes)
    assert slice_sizes(5, 1, 0, rng) == [1, 1, 1, 1, 1]
    assert slice_sizes(0, 1, 0, rng) == []


# -- D15-D18: connections ---------------------------------------------------------------------


def test_d15_dead_upstream_accepts_then_closes(api: ApiClient) -> None:
    body = {"name": "dead", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{free_port()}"}
    listen = str(api.request("POST", "/proxies", body).json()["listen"])  # type: ignore[index]
    with connect(listen) as sock:
        assert sock.recv(16) == b""


def test_d16_disabled_proxy_refuses(rig: Rig) -> None:
    assert rig.api.request("POST", "/proxies/p", {"enabled": False}).status == 200
    with pytest.raises(ConnectionRefusedError):
        rig.connect()


def test_d17_toxics_apply_to_live_connections(rig: Rig) -> None:
    with rig.connect() as sock:
        assert round_trip(sock) < SLACK
        name = rig.toxic("latency", latency=200)
        assert_delay([round_trip(sock)], 0.2)
        rig.update(name, {"attributes": {"latency": 400}})
        assert_delay([round_trip(sock)], 0.4)
        rig.remove(name)
        assert round_trip(sock) < SLACK


def test_d18_half_close_closes_the_upstream_socket(rig: Rig) -> None:
    """The proxy does not propagate half-close: a client FIN closes both sockets fully."""
    with rig.connect() as sock:
        sock.sendall(b"last words\n")
        sock.shutdown(socket.SHUT_WR)
        side = rig.upstream.wait_for_connection()
        assert side.closed.wait(5)
        recv_until_eof(sock)  # the echo may or may not have made it before the close
    wait_until(lambda: bytes(side.received) == b"last words\n", what="upstream received data")


def test_removing_a_toxic_keeps_the_stream_intact(rig: Rig) -> None:
    payload = random.Random(3).randbytes(256 * 1024)
    with rig.connect() as sock:
        name = rig.toxic("slicer", average_size=1000, size_variation=500, delay=200)
        latency = rig.toxic("latency", latency=20)
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        received = bytearray(recv_exactly(sock, 1000))
        rig.remove(name)
        rig.update(latency, {"attributes": {"latency": 0}})
        received += recv_exactly(sock, len(payload) - len(received))
        sender.join()
        assert bytes(received) == payload
