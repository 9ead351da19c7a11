"""HTTP API conformance over plain HTTP (spec §12 rows 19-36): toxics, reset and delete."""

from __future__ import annotations

import socket

import pytest

from dtq.chaos.testkit import (
    ApiClient,
    HttpResult,
    assert_api_error,
    assert_bad_body,
    echo_works,
    refused,
)

LATENCY_BODY = (
    b'{"attributes":{"latency":100,"jitter":0},"name":"latency_downstream",'
    b'"type":"latency","stream":"downstream","toxicity":1}'
)


# -- rows 19-34: toxics -------------------------------------------------------------------


def add_latency(api: ApiClient) -> HttpResult:
    return api.request(
        "POST", "/proxies/p/toxics", {"type": "latency", "attributes": {"latency": 100}}
    )


def test_add_toxic_returns_200_with_defaults(api: ApiClient, proxy: dict[str, object]) -> None:
    result = add_latency(api)
    assert result.status == 200
    assert result.body == LATENCY_BODY
    assert result.headers["content-type"] == "application/json"


def test_add_toxic_name_conflicts(api: ApiClient, proxy: dict[str, object]) -> None:
    add_latency(api)
    assert_api_error(add_latency(api), 409, "toxic already exists")
    other_stream = {"name": "latency_downstream", "type": "timeout", "stream": "upstream"}
    assert_api_error(
        api.request("POST", "/proxies/p/toxics", other_stream), 409, "toxic already exists"
    )


@pytest.mark.parametrize("stream", ["sideways", ""])
def test_add_toxic_invalid_stream(api: ApiClient, proxy: dict[str, object], stream: str) -> None:
    result = api.request("POST", "/proxies/p/toxics", {"type": "latency", "stream": stream})
    assert_api_error(result, 400, "stream was invalid, can be either upstream or downstream")


@pytest.mark.parametrize("kind", ["down", "Latency", ""])
def test_add_toxic_invalid_type(api: ApiClient, proxy: dict[str, object], kind: str) -> None:
    result = api.request("POST", "/proxies/p/toxics", {"type": kind})
    assert_api_error(result, 400, "invalid toxic type")


def test_add_noop_toxic(api: ApiClient, proxy: dict[str, object]) -> None:
    result = api.request("POST", "/proxies/p/toxics", {"type": "noop", "name": "n"})
    assert result.status == 200
    toxic = result.json()
    assert isinstance(toxic, dict)
    assert toxic["attributes"] == {}


@pytest.mark.parametrize(
    "attributes",
    [{"rate": "fast"}, {"rate": 1.5}, {"rate": 100.0}, {"rate": True}, 5, [1]],
)
def test_add_toxic_with_bad_attributes(
    api: ApiClient, proxy: dict[str, object], attributes: object
) -> None:
    body = {"type": "bandwidth", "attributes": attributes}
    assert_bad_body(api.request("POST", "/proxies/p/toxics", body))
    assert api.request("GET", "/proxies/p/toxics").json() == []


def test_add_toxic_case_insensitive_attributes_and_stream_echo(
    api: ApiClient, proxy: dict[str, object]
) -> None:
    body = {"Type": "bandwidth", "Stream": "UpStream", "Attributes": {"Rate": 100}, "typo": 1}
    result = api.request("POST", "/proxies/p/toxics", body)
    assert result.status == 200
    assert result.json() == {
        "attributes": {"rate": 100},
        "name": "bandwidth_UpStream",
        "type": "bandwidth",
        "stream": "UpStream",
        "toxicity": 1,
    }


def test_toxicity_is_a_float32_without_range_check(
    api: ApiClient, proxy: dict[str, object]
) -> None:
    for name, toxicity, text in [
        ("a", 0.2, b'"toxicity":0.2'),
        ("b", 2.5, b'"toxicity":2.5'),
        ("c", -1, b'"toxicity":-1'),
        ("d", 0.1, b'"toxicity":0.1'),
    ]:
        body = {"type": "noop", "name": name, "toxicity": toxicity}
        result = api.request("POST", "/proxies/p/toxics", body)
        assert result.status == 200
        assert text in result.body


def test_add_timeout_upstream_defaults(api: ApiClient, proxy: dict[str, object]) -> None:
    result = api.request("POST", "/proxies/p/toxics", {"type": "timeout", "stream": "upstream"})
    assert result.status == 200
    toxic = result.json()
    assert isinstance(toxic, dict)
    assert (toxic["name"], toxic["attributes"]) == ("timeout_upstream", {"timeout": 0})


def test_list_toxics_upstream_first(api: ApiClient, proxy: dict[str, object]) -> None:
    assert api.request("GET", "/proxies/p/toxics").json() == []
    add_latency(api)
    api.request("POST", "/proxies/p/toxics", {"type": "timeout", "stream": "upstream"})
    api.request("POST", "/proxies/p/toxics", {"type": "noop", "name": "z"})
    listed = api.request("GET", "/proxies/p/toxics").json()
    assert isinstance(listed, list)
    assert [toxic["name"] for toxic in listed] == ["timeout_upstream", "latency_downstream", "z"]
    proxy_view = api.request("GET", "/proxies/p").json()
    assert isinstance(proxy_view, dict)
    assert proxy_view["toxics"] == listed


def test_get_toxic(api: ApiClient, proxy: dict[str, object]) -> None:
    add_latency(api)
    result = api.request("GET", "/proxies/p/toxics/latency_downstream")
    assert (result.status, result.body) == (200, LATENCY_BODY)
    assert_api_error(api.request("GET", "/proxies/p/toxics/nope"), 404, "toxic not found")
    assert_api_error(api.request("GET", "/proxies/nope/toxics/x"), 404, "proxy not found")


def test_update_toxic_merges_attributes(api: ApiClient, proxy: dict[str, object]) -> None:
    add_latency(api)
    path = "/proxies/p/toxics/latency_downstream"
    result = api.request("PATCH", path, {"attributes": {"jitter": 5}})
    assert result.status == 200
    assert result.json() == {
        "attributes": {"latency": 100, "jitter": 5},
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1,
    }
    result = api.request("POST", path, {"toxicity": 0.5})
    toxic = result.json()
    assert isinstance(toxic, dict)
    assert (toxic["toxicity"], toxic["attributes"]) == (0.5, {"latency": 100, "jitter": 5})
    result = api.request("POST", path, {"type": "timeout", "stream": "upstream", "name": "x"})
    toxic = result.json()
    assert isinstance(toxic, dict)
    assert (toxic["type"], toxic["stream"], toxic["name"]) == (
        "latency",
        "downstream",
        "latency_downstream",
    )


def test_update_toxic_errors(api: ApiClient, proxy: dict[str, object]) -> None:
    add_latency(api)
    path = "/proxies/p/toxics/latency_downstream"
    assert_bad_body(api.request("POST", path, b""))
    assert_bad_body(api.request("POST", path, {"attributes": {"latency": "slow"}}))
    toxic = api.request("GET", path).json()
    assert isinstance(toxic, dict)
    assert toxic["attributes"] == {"latency": 100, "jitter": 0}
    assert_api_error(api.request("POST", "/proxies/p/toxics/nope", {}), 404, "toxic not found")
    assert_api_error(api.request("PATCH", "/proxies/nope/toxics/x", {}), 404, "proxy not found")


def test_delete_toxic_twice(api: ApiClient, proxy: dict[str, object]) -> None:
    add_latency(api)
    result = api.request("DELETE", "/proxies/p/toxics/latency_downstream")
    assert (result.status, result.body) == (204, b"")
    second = api.request("DELETE", "/proxies/p/toxics/latency_downstream")
    assert_api_error(second, 404, "toxic not found")


def test_add_toxic_to_missing_proxy(api: ApiClient) -> None:
    result = api.request("POST", "/proxies/nope/toxics", {"type": "latency"})
    assert_api_error(result, 404, "proxy not found")
    assert_api_error(api.request("GET", "/proxies/nope/toxics"), 404, "proxy not found")


@pytest.mark.parametrize(
    ("kind", "attributes"),
    [
        ("latency", {"latency": 0, "jitter": 0}),
        ("bandwidth", {"rate": 0}),
        ("slow_close", {"delay": 0}),
        ("timeout", {"timeout": 0}),
        ("reset_peer", {"timeout": 0}),
        ("slicer", {"average_size": 0, "size_variation": 0, "delay": 0}),
        ("limit_data", {"bytes": 0}),
        ("noop", {}),
    ],
)
def test_every_type_reports_all_attributes(
    api: ApiClient, proxy: dict[str, object], kind: str, attributes: dict[str, int]
) -> None:
    result = api.request("POST", "/proxies/p/toxics", {"type": kind, "attributes": None})
    assert result.status == 200
    toxic = result.json()
    assert isinstance(toxic, dict)
    assert toxic["attributes"] == attributes
    assert list(toxic["attributes"]) == list(attributes)


def test_toxics_can_be_added_to_a_disabled_proxy(api: ApiClient, proxy: dict[str, object]) -> None:
    api.request("POST", "/proxies/p", {"enabled": False})
    assert add_latency(api).status == 200


# -- rows 35-36: reset and delete ----------------------------------------------------------


def test_reset_enables_and_clears(api: ApiClient, proxy: dict[str, object]) -> None:
    listen = str(proxy["listen"])
    api.request("POST", "/proxies", {"name": "other", "listen": "127.0.0.1:0", "upstream": "x:1"})
    api.request("POST", "/proxies/other/toxics", {"type": "timeout"})
    api.request("POST", "/proxies/p", {"enabled": False})
    add_latency(api)
    result = api.request("POST", "/reset")
    assert (result.status, result.body) == (204, b"")
    listed = api.request("GET", "/proxies").json()
    assert isinstance(listed, dict)
    assert all(value["toxics"] == [] and value["enabled"] for value in listed.values())
    assert listed["p"]["listen"] == listen
    assert echo_works(listen)


def test_reset_reports_a_failed_rebind(api: ApiClient, proxy: dict[str, object]) -> None:
    listen = str(proxy["listen"])
    api.request("POST", "/proxies/p", {"enabled": False})
    host, _, port = listen.rpartition(":")
    with socket.socket() as blocker:
        blocker.bind((host, int(port)))
        blocker.listen()
        result = api.request("POST", "/reset")
    assert result.status == 500
    assert b"address already in use" in result.body


def test_delete_proxy_twice_and_port_refuses(api: ApiClient, proxy: dict[str, object]) -> None:
    listen = str(proxy["listen"])
    result = api.request("DELETE", "/proxies/p")
    assert (result.status, result.body) == (204, b"")
    assert_api_error(api.request("DELETE", "/proxies/p"), 404, "proxy not found")
    assert refused(listen)
