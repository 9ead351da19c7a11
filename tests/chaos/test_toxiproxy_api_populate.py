"""HTTP API conformance over plain HTTP (spec §12 rows 37-42): POST /populate."""

from __future__ import annotations

import re

from dtq.chaos.testkit import (
    ApiClient,
    HttpResult,
    TcpServer,
    assert_bad_body,
    connect,
    echo_works,
    wait_until,
)

# -- rows 37-42: populate ------------------------------------------------------------------


def populate(api: ApiClient, body: object) -> HttpResult:
    return api.request("POST", "/populate", body)


def test_populate_creates(api: ApiClient, upstream: TcpServer) -> None:
    result = populate(api, [{"name": "a", "listen": "127.0.0.1:0", "upstream": upstream.address}])
    assert result.status == 201
    assert result.headers["content-type"] == "application/json"
    body = result.json()
    assert isinstance(body, dict)
    [created] = body["proxies"]
    assert created["name"] == "a"
    assert re.fullmatch(r"127\.0\.0\.1:[1-9]\d*", created["listen"])
    assert echo_works(created["listen"])


def test_populate_leaves_matching_proxies_alone(api: ApiClient, upstream: TcpServer) -> None:
    first = populate(api, [{"name": "a", "listen": "127.0.0.1:0", "upstream": upstream.address}])
    listen = first.json()["proxies"][0]["listen"]  # type: ignore[index]
    api.request("POST", "/proxies/a/toxics", {"type": "latency"})
    with connect(listen) as open_connection:
        wait_until(lambda: upstream.sides, what="connection through a")
        again = [{"name": "a", "listen": listen, "upstream": upstream.address, "enabled": False}]
        result = populate(api, again)
        assert result.status == 201
        [kept] = result.json()["proxies"]  # type: ignore[index]
        assert kept["enabled"] is True
        assert [toxic["name"] for toxic in kept["toxics"]] == ["latency_downstream"]
        open_connection.sendall(b"still here\n")
        assert open_connection.recv(32) == b"still here\n"


def test_populate_matches_hostnames_after_resolution(api: ApiClient, upstream: TcpServer) -> None:
    first = populate(api, [{"name": "a", "listen": "localhost:0", "upstream": upstream.address}])
    port = first.json()["proxies"][0]["listen"].rpartition(":")[2]  # type: ignore[index]
    api.request("POST", "/proxies/a/toxics", {"type": "noop"})
    again = [{"name": "a", "listen": f"localhost:{port}", "upstream": upstream.address}]
    [kept] = populate(api, again).json()["proxies"]  # type: ignore[index]
    assert len(kept["toxics"]) == 1


def test_populate_replaces_changed_proxies(api: ApiClient, upstream: TcpServer) -> None:
    first = populate(api, [{"name": "a", "listen": "127.0.0.1:0", "upstream": upstream.address}])
    listen = first.json()["proxies"][0]["listen"]  # type: ignore[index]
    api.request("POST", "/proxies/a/toxics", {"type": "latency"})
    with TcpServer() as second:
        result = populate(api, [{"name": "a", "listen": listen, "upstream": second.address}])
        assert result.status == 201
        [replaced] = result.json()["proxies"]  # type: ignore[index]
        assert (replaced["upstream"], replaced["toxics"]) == (second.address, [])
        assert echo_works(listen)


def test_populate_validates_everything_first(api: ApiClient) -> None:
    body = [{"name": "ok", "upstream": "x:1"}, {"name": "", "upstream": "x:1"}]
    result = populate(api, body)
    assert result.status == 400
    assert result.json() == {
        "error": "missing required field: name at proxy 2",
        "status": 400,
        "proxies": None,
    }
    assert api.request("GET", "/proxies/ok").status == 404
    result = populate(api, [{"name": "x", "upstream": ""}])
    assert b"missing required field: upstream at proxy 1" in result.body


def test_populate_needs_an_array(api: ApiClient) -> None:
    result = populate(api, {"name": "a"})
    assert_bad_body(result)
    assert result.json()["proxies"] is None  # type: ignore[index]


def test_populate_empty(api: ApiClient) -> None:
    result = populate(api, [])
    assert (result.status, result.body) == (201, b'{"proxies":null}')


def test_populate_stops_at_a_failure_and_reports_what_was_created(
    api: ApiClient, proxy: dict[str, object]
) -> None:
    body = [
        {"name": "a", "listen": "127.0.0.1:0", "upstream": "x:1"},
        {"name": "b", "listen": proxy["listen"], "upstream": "x:1"},
        {"name": "c", "listen": "127.0.0.1:0", "upstream": "x:1"},
    ]
    result = populate(api, body)
    assert result.status == 500
    reply = result.json()
    assert isinstance(reply, dict)
    assert list(reply) == ["error", "status", "proxies"]
    assert "address already in use" in reply["error"]
    assert [created["name"] for created in reply["proxies"]] == ["a"]
    assert api.request("GET", "/proxies/c").status == 404
