"""Go compatibility details: JSON decoding and encoding, address parsing and formatting."""

from __future__ import annotations

import asyncio

import pytest

from dtq.chaos.addr import AddressError, ResolvedAddress, resolve, split_host_port
from dtq.chaos.api import clean_path
from dtq.chaos.gojson import (
    DecodeError,
    Field,
    Float32,
    decode_first_value,
    decode_struct,
    encode,
    format_float32,
    to_float32,
)

FIELDS = (Field("name", "string"), Field("count", "int"), Field("ratio", "float32"))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (0.5, "0.5"),
        (0.2, "0.2"),
        (0.1, "0.1"),
        (2.5, "2.5"),
        (-1.0, "-1"),
        (0.0, "0"),
        (100.0, "100"),
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (123456.5, "123456.5"),
        (0.000001, "0.000001"),
        (3.4e38, "3.4e+38"),
    ],
)
def test_float32_shortest_form(value: float, text: str) -> None:
    converted = to_float32(value)
    assert converted is not None
    assert format_float32(converted) == text


def test_float32_overflow_is_rejected() -> None:
    assert to_float32(1e39) is None
    with pytest.raises(DecodeError):
        decode_struct(decode_first_value(b'{"ratio": 1e39}'), FIELDS, "T")


def test_decode_reads_the_first_value_only() -> None:
    assert decode_struct(decode_first_value(b' {"name":"a"} {"name":"b"'), FIELDS, "T") == {
        "name": "a"
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"", "EOF"), (b" \n\t", "EOF"), (b'{"name":', "unexpected EOF"), (b"NaN", "invalid")],
)
def test_decode_errors(body: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode_first_value(body)


def test_keys_are_case_insensitive_and_the_last_match_wins() -> None:
    value = decode_first_value(b'{"NAME":"a","Name":"b","count":null,"other":{"x":[1]}}')
    assert decode_struct(value, FIELDS, "T") == {"name": "b"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"count": 1.5}',
        b'{"count": 100.0}',
        b'{"count": "1"}',
        b'{"count": true}',
        b'{"count": 9223372036854775808}',
        b'{"name": 1}',
        b'{"ratio": "x"}',
        b"[]",
        b"1",
    ],
)
def test_wrong_types_are_errors(body: bytes) -> None:
    with pytest.raises(DecodeError, match="cannot unmarshal"):
        decode_struct(decode_first_value(body), FIELDS, "T")


def test_null_body_decodes_to_nothing() -> None:
    assert decode_struct(decode_first_value(b"null"), FIELDS, "T") == {}


def test_encode_is_compact_and_escapes_like_go() -> None:
    value = {"a": [1, True, None], "b": "<&>", "c": Float32(0.5), "d": {}}
    assert encode(value) == '{"a":[1,true,null],"b":"\\u003c\\u0026\\u003e","c":0.5,"d":{}}'


@pytest.mark.parametrize(
    ("address", "parts"),
    [
        ("127.0.0.1:80", ("127.0.0.1", "80")),
        (":80", ("", "80")),
        ("[::1]:0", ("::1", "0")),
        ("localhost:", ("localhost", "")),
    ],
)
def test_split_host_port(address: str, parts: tuple[str, str]) -> None:
    assert split_host_port(address) == parts


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("local373", "address local373: missing port in address"),
        ("1:2:3", "address 1:2:3: too many colons in address"),
        ("[::1", "address [::1: missing ']' in address"),
        ("[::1]", "address [::1]: missing port in address"),
    ],
)
def test_split_host_port_errors(address: str, message: str) -> None:
    with pytest.raises(AddressError) as raised:
        split_host_port(address)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("address", "text"),
    [
        ("localhost:7070", "127.0.0.1:7070"),
        ("0.0.0.0:5", "0.0.0.0:5"),
        ("[::]:5", "[::]:5"),
        (":5", ":5"),
        ("", ":0"),
        ("[::ffff:127.0.0.1]:1", "127.0.0.1:1"),
    ],
)
def test_resolve_formats_like_go(address: str, text: str) -> None:
    resolved = asyncio.run(resolve(address))
    assert isinstance(resolved, ResolvedAddress)
    assert resolved.go_string() == text


@pytest.mark.parametrize("address", ["127.0.0.1:70000", "127.0.0.1:nosuchservice"])
def test_bad_ports(address: str) -> None:
    with pytest.raises(AddressError):
        asyncio.run(resolve(address))


@pytest.mark.parametrize(
    ("path", "cleaned"),
    [
        ("/proxies", "/proxies"),
        ("/proxies/", "/proxies/"),
        ("//proxies", "/proxies"),
        ("/a/../version", "/version"),
        ("/./reset", "/reset"),
    ],
)
def test_clean_path(path: str, cleaned: str) -> None:
    assert clean_path(path) == cleaned
