"""HTTP API conformance over plain HTTP (spec §12 rows 1-18 and 43-46): proxies and routing."""

from __future__ import annotations

import re
import socket

import pytest

from dtq.chaos import ToxiproxyServer
from dtq.chaos.testkit import (
    ApiClient,
    TcpServer,
    assert_api_error,
    assert_bad_body,
    closed_by_peer,
    connect,
    echo_works,
    free_port,
    refused,
    wait_until,
)

# -- rows 1-2: version and the empty list --------------------------------------------------


def test_version_is_json_semver_at_least_2_6(api: ApiClient) -> None:
    result = api.request("GET", "/version")
    assert result.status == 200
    assert result.headers["content-type"] == "application/json;charset=utf-8"
    assert result.body.endswith(b"\n")
    version = result.json()
    assert isinstance(version, dict)
    major, minor, _ = (int(part) for part in str(version["version"]).split("."))
    assert (major, minor) >= (2, 6)


def test_no_proxies_is_an_empty_object(api: ApiClient) -> None:
    result = api.request("GET", "/proxies")
    assert (result.status, result.body) == (200, b"{}")
    assert result.headers["content-type"] == "application/json"


# -- rows 3-11: create ------------------------------------------------------------------------


def test_create_returns_201_with_bound_listen(
    api: ApiClient, upstream: TcpServer, proxy: dict[str, object]
) -> None:
    assert proxy["name"] == "p"
    assert re.fullmatch(r"127\.0\.0\.1:[1-9]\d*", str(proxy["listen"]))
    assert proxy["upstream"] == upstream.address
    assert proxy["enabled"] is True
    assert proxy["toxics"] == []
    assert echo_works(str(proxy["listen"]))


def test_create_response_headers(api: ApiClient, upstream: TcpServer) -> None:
    body = {"name": "h", "listen": "127.0.0.1:0", "upstream": upstream.address}
    result = api.request("POST", "/proxies", body)
    assert result.headers["content-type"] == "application/json"
    assert re.fullmatch(r"[0-9a-v]{20}", result.headers["x-toxiproxy-request-id"])
    assert not result.body.endswith(b"\n")
    assert list(result.json()) == ["name", "listen", "upstream", "enabled", "Logger", "toxics"]  # type: ignore[call-overload]


def test_create_duplicate_name_is_409(
    api: ApiClient, upstream: TcpServer, proxy: dict[str, object]
) -> None:
    again = {"name": "p", "listen": "127.0.0.1:0", "upstream": upstream.address}
    assert_api_error(api.request("POST", "/proxies", again), 409, "proxy already exists")
    busy = {"name": "p", "listen": proxy["listen"], "upstream": upstream.address}
    assert_api_error(api.request("POST", "/proxies", busy), 409, "proxy already exists")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"listen": "127.0.0.1:0", "upstream": "x:1"}, "missing required field: name"),
        ({"name": "q", "listen": "127.0.0.1:0"}, "missing required field: upstream"),
        ({"name": "", "upstream": "x:1"}, "missing required field: name"),
        ({"name": "q", "upstream": ""}, "missing required field: upstream"),
    ],
)
def test_create_missing_fields(api: ApiClient, body: dict[str, str], message: str) -> None:
    assert_api_error(api.request("POST", "/proxies", body), 400, message)


@pytest.mark.parametrize(
    "body",
    [
        b"{bad",
        b"",
        b"   ",
        b'{"name": 5, "upstream": "x:1"}',
        b'{"name":"q","enabled":"yes"}',
        b"[1, 2]",
        b'{"name":"q"',
    ],
)
def test_create_bad_body(api: ApiClient, body: bytes) -> None:
    assert_bad_body(api.request("POST", "/proxies", body))


def test_create_empty_body_says_eof(api: ApiClient) -> None:
    result = api.request("POST", "/proxies", b"")
    assert_api_error(result, 400, "bad request body: EOF")


def test_create_on_a_busy_port_is_500_and_creates_nothing(
    api: ApiClient, proxy: dict[str, object]
) -> None:
    body = {"name": "q", "listen": proxy["listen"], "upstream": "x:1"}
    result = api.request("POST", "/proxies", body)
    assert result.status == 500
    error = result.json()
    assert isinstance(error, dict)
    assert "address already in use" in str(error["error"])
    assert error["status"] == 500
    assert api.request("GET", "/proxies/q").status == 404


def test_create_with_unparsable_listen_is_500(api: ApiClient) -> None:
    result = api.request("POST", "/proxies", {"name": "q", "listen": "local373", "upstream": "x:1"})
    assert_api_error(result, 500, "address local373: missing port in address")


def test_create_disabled_keeps_listen_text_and_refuses(api: ApiClient) -> None:
    listen = f"127.0.0.1:{free_port()}"
    body = {"name": "d", "listen": listen, "upstream": "x:1", "enabled": False}
    result = api.request("POST", "/proxies", body)
    assert result.status == 201
    created = result.json()
    assert isinstance(created, dict)
    assert created["enabled"] is False
    assert created["listen"] == listen
    assert refused(listen)


def test_create_localhost_binds_ipv4(api: ApiClient) -> None:
    result = api.request(
        "POST", "/proxies", {"name": "l", "listen": "localhost:0", "upstream": "x:1"}
    )
    assert result.status == 201
    created = result.json()
    assert isinstance(created, dict)
    assert re.fullmatch(r"127\.0\.0\.1:\d+", str(created["listen"]))


def test_create_without_listen_binds_all_interfaces(api: ApiClient, upstream: TcpServer) -> None:
    result = api.request("POST", "/proxies", {"name": "w", "upstream": upstream.address})
    assert result.status == 201
    created = result.json()
    assert isinstance(created, dict)
    match = re.fullmatch(r"(\[::\]|0\.0\.0\.0):(\d+)", str(created["listen"]))
    assert match, created["listen"]
    assert echo_works(f"127.0.0.1:{match.group(2)}")


def test_create_accepts_keys_in_any_case(api: ApiClient) -> None:
    body = {"NAME": "c", "Listen": "127.0.0.1:0", "UpStream": "x:1", "extra": [1, {"a": 2}]}
    result = api.request("POST", "/proxies", body)
    assert result.status == 201
    created = result.json()
    assert isinstance(created, dict)
    assert (created["name"], created["upstream"]) == ("c", "x:1")


def test_create_reads_only_the_first_json_value(api: ApiClient) -> None:
    result = api.request(
        "POST", "/proxies", b'{"name":"f","listen":"127.0.0.1:0","upstream":"x:1"} trailing {'
    )
    assert result.status == 201


def test_null_fields_keep_defaults(api: ApiClient) -> None:
    body = {"name": "n", "listen": "127.0.0.1:0", "upstream": "x:1", "enabled": None}
    result = api.request("POST", "/proxies", body)
    assert result.status == 201
    created = result.json()
    assert isinstance(created, dict)
    assert created["enabled"] is True


# -- rows 12-18: read and update proxies -------------------------------------------------------


def test_get_proxy(api: ApiClient, proxy: dict[str, object]) -> None:
    result = api.request("GET", "/proxies/p")
    assert result.status == 200
    assert result.json() == proxy
    assert_api_error(api.request("GET", "/proxies/nope"), 404, "proxy not found")


def test_list_proxies_is_keyed_by_name_and_sorted(api: ApiClient, proxy: dict[str, object]) -> None:
    api.request("POST", "/proxies", {"name": "a", "listen": "127.0.0.1:0", "upstream": "x:1"})
    listed = api.request("GET", "/proxies").json()
    assert isinstance(listed, dict)
    assert list(listed) == ["a", "p"]
    assert listed["p"] == proxy
    assert {"name", "listen", "upstream", "enabled", "toxics"} <= set(listed["p"])


def test_disable_refuses_and_drops_connections(api: ApiClient, proxy: dict[str, object]) -> None:
    listen = str(proxy["listen"])
    with connect(listen) as open_connection:
        assert echo_works(listen)
        result = api.request("POST", "/proxies/p", {"enabled": False})
        assert result.status == 200
        updated = result.json()
        assert isinstance(updated, dict)
        assert updated["enabled"] is False
        assert updated["listen"] == listen
        assert refused(listen)
        assert closed_by_peer(open_connection)


def test_enable_rebinds_the_same_port(api: ApiClient, proxy: dict[str, object]) -> None:
    listen = str(proxy["listen"])
    api.request("POST", "/proxies/p", {"enabled": False})
    result = api.request("PATCH", "/proxies/p", {"enabled": True})
    assert result.status == 200
    updated = result.json()
    assert isinstance(updated, dict)
    assert (updated["enabled"], updated["listen"]) == (True, listen)
    assert echo_works(listen)
    assert api.request("POST", "/proxies/p", {"enabled": True}).status == 200


def test_change_upstream_drops_connections_and_keeps_port_and_toxics(
    api: ApiClient, proxy: dict[str, object]
) -> None:
    listen = str(proxy["listen"])
    api.request("POST", "/proxies/p/toxics", {"type": "noop", "name": "keep"})
    with TcpServer() as second, connect(listen) as open_connection:
        assert echo_works(listen)
        result = api.request("POST", "/proxies/p", {"upstream": second.address})
        assert result.status == 200
        updated = result.json()
        assert isinstance(updated, dict)
        assert (updated["upstream"], updated["listen"]) == (second.address, listen)
        assert [toxic["name"] for toxic in updated["toxics"]] == ["keep"]
        assert closed_by_peer(open_connection)
        assert echo_works(listen)
        second.wait_for_connection()


def test_update_ignores_name(api: ApiClient, proxy: dict[str, object]) -> None:
    result = api.request("POST", "/proxies/p", {"name": "renamed"})
    assert result.status == 200
    assert api.request("GET", "/proxies/renamed").status == 404


def test_update_missing_proxy_is_404(api: ApiClient) -> None:
    assert_api_error(
        api.request("POST", "/proxies/nope", {"enabled": True}), 404, "proxy not found"
    )


def test_update_with_empty_body_is_400(api: ApiClient, proxy: dict[str, object]) -> None:
    result = api.request("POST", "/proxies/p", b"")
    assert_bad_body(result)
    assert b"EOF" in result.body


def test_update_to_a_busy_port_is_500_and_leaves_proxy_disabled(
    api: ApiClient, proxy: dict[str, object]
) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy = f"127.0.0.1:{blocker.getsockname()[1]}"
        result = api.request("POST", "/proxies/p", {"listen": busy})
        assert result.status == 500
        assert b"address already in use" in result.body
    current = api.request("GET", "/proxies/p").json()
    assert isinstance(current, dict)
    assert (current["enabled"], current["listen"]) == (False, busy)


# -- rows 43-46: routing -------------------------------------------------------------------


def test_browsers_are_blocked(api: ApiClient) -> None:
    result = api.request("GET", "/proxies", headers={"User-Agent": "Mozilla/5.0 (X11)"})
    assert result.status == 403
    assert result.body == b"User agent not allowed\n"


def test_unknown_path_is_plain_404(api: ApiClient) -> None:
    for path in ["/nope", "/proxies/", "/proxies/p/toxics/t/extra"]:
        result = api.request("GET", path)
        assert (result.status, result.body) == (404, b"404 page not found\n")
        assert "x-toxiproxy-request-id" not in result.headers


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/proxies"), ("GET", "/reset"), ("DELETE", "/version"), ("GET", "/populate")],
)
def test_wrong_method_is_empty_405(api: ApiClient, method: str, path: str) -> None:
    result = api.request(method, path)
    assert (result.status, result.body) == (405, b"")


def test_metrics_absent_by_default(api: ApiClient) -> None:
    assert api.request("GET", "/metrics").status == 404


def test_unclean_paths_redirect(api: ApiClient) -> None:
    result = api.request("GET", "/proxies/../version")
    assert (result.status, result.headers["location"]) == (301, "/version")


def test_names_are_url_decoded(api: ApiClient) -> None:
    api.request("POST", "/proxies", {"name": "a b", "listen": "127.0.0.1:0", "upstream": "x:1"})
    result = api.request("GET", "/proxies/a%20b")
    assert result.status == 200


def test_keep_alive_serves_many_requests_on_one_connection(server: ToxiproxyServer) -> None:
    with connect(server.address) as sock:
        request = b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request * 3)
        data = b""
        while data.count(b"HTTP/1.1 200 OK") < 3:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk


def test_malformed_request_is_400(server: ToxiproxyServer) -> None:
    with connect(server.address) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")


def test_chunked_request_body(server: ToxiproxyServer) -> None:
    body = b'{"name":"k","listen":"127.0.0.1:0","upstream":"x:1"}'
    head = b"POST /proxies HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with connect(server.address) as sock:
        sock.sendall(head + chunks)
        assert sock.recv(4096).startswith(b"HTTP/1.1 201")


def test_metrics_when_enabled() -> None:
    with ToxiproxyServer(proxy_metrics=True, runtime_metrics=True) as server, TcpServer() as echo:
        api = ApiClient(server.address)
        body = {"name": "m", "listen": "127.0.0.1:0", "upstream": echo.address}
        listen = api.request("POST", "/proxies", body).json()["listen"]  # type: ignore[index]
        assert echo_works(listen)
        echo.sides[0].closed.wait(5)

        def counted() -> bool:
            text = api.request("GET", "/metrics").body.decode()
            return 'toxiproxy_proxy_sent_bytes_total{direction="downstream"' in text

        wait_until(counted, what="byte counters")
        text = api.request("POST", "/metrics").body.decode()
        assert f'direction="upstream",listener="{listen}",proxy="m"' in text
        assert "python_info" in text
        api.close()
