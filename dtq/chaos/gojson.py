"""JSON the way Toxiproxy's Go server reads and writes it.

Clients were written against Go's ``encoding/json``, so request bodies are decoded as that
package decodes into a struct: only the first JSON value in the body is read, object keys
match fields case-insensitively (the last match wins), unknown keys are ignored, ``null``
leaves a field untouched, and a value of the wrong type is an error. Integer fields refuse
fractions (even ``100.0``) and ``toxicity`` is a float32.

Responses are compact, keep insertion order, escape ``<``, ``>`` and ``&`` like Go, and print
float32 numbers in Go's shortest form (``1``, ``0.5``, ``0.2``).
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

FieldKind = Literal["string", "bool", "int", "float32", "object"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_WHITESPACE = " \t\r\n"
_SURROGATES = re.compile("[\ud800-\udfff]")
_GO_TYPES: dict[FieldKind, str] = {
    "string": "string",
    "bool": "bool",
    "int": "int64",
    "float32": "float32",
    "object": "struct",
}


class DecodeError(Exception):
    """A body Go's decoder would refuse. The text loosely follows Go's wording."""


class JsonObject:
    """A decoded JSON object that keeps every key/value pair in order, duplicates included."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: Iterable[tuple[str, object]]) -> None:
        self.pairs = list(pairs)


class Float32(float):
    """A float that is encoded in Go's shortest float32 form."""


@dataclass(frozen=True)
class Field:
    """One struct field: its JSON tag and the Go type it decodes into."""

    name: str
    kind: FieldKind


def _reject_constant(name: str) -> object:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


_DECODER = json.JSONDecoder(object_pairs_hook=JsonObject, parse_constant=_reject_constant)


def decode_first_value(body: bytes) -> object:
    """Decode the first JSON value of ``body``; anything after it is ignored, as in Go."""
    text = body.decode("utf-8", errors="replace")
    start = 0
    while start < len(text) and text[start] in _WHITESPACE:
        start += 1
    if start == len(text):
        raise DecodeError("EOF")
    try:
        value, _ = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise DecodeError(_syntax_message(text, exc)) from None
    except (ValueError, RecursionError) as exc:
        raise DecodeError(str(exc)) from None
    return value


def _syntax_message(text: str, exc: json.JSONDecodeError) -> str:
    if exc.pos >= len(text.rstrip(_WHITESPACE)):
        return "unexpected EOF"
    char = text[exc.pos]
    return f"invalid character {char!r} at offset {exc.pos}: {exc.msg[0].lower()}{exc.msg[1:]}"


def kind_of(value: object) -> str:
    """The JSON kind of a decoded value, as Go names it in type errors."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return f"number {value}"
    if isinstance(value, str):
        return "string"
    if isinstance(value, JsonObject):
        return "object"
    return "array"


def decode_struct(value: object, fields: Sequence[Field], type_name: str) -> dict[str, object]:
    """Decode a JSON object into the given fields; absent and ``null`` fields are left out."""
    if value is None:
        return {}
    if not isinstance(value, JsonObject):
        raise DecodeError(
            f"json: cannot unmarshal {kind_of(value)} into Go value of type {type_name}"
        )
    by_name = {field.name.lower(): field for field in fields}
    out: dict[str, object] = {}
    for key, item in value.pairs:
        field = by_name.get(key.lower())
        if field is None or item is None:
            continue
        out[field.name] = _convert(item, field, type_name)
    return out


def _convert(value: object, field: Field, type_name: str) -> object:
    converted = _try_convert(value, field.kind)
    if converted is None:
        raise DecodeError(
            f"json: cannot unmarshal {kind_of(value)} into Go struct field "
            f"{type_name}.{field.name} of type {_GO_TYPES[field.kind]}"
        )
    return converted


def _try_convert(value: object, kind: FieldKind) -> object | None:
    if kind == "string":
        return _SURROGATES.sub("\ufffd", value) if isinstance(value, str) else None
    if kind == "bool":
        return value if isinstance(value, bool) else None
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        return value if _INT64_MIN <= value <= _INT64_MAX else None
    if kind == "float32":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return to_float32(value)
    return value if isinstance(value, JsonObject) else None


def get_str(fields: Mapping[str, object], name: str, default: str = "") -> str:
    """A decoded string field, or ``default`` when it was absent."""
    value = fields.get(name)
    return value if isinstance(value, str) else default


def get_bool(fields: Mapping[str, object], name: str, default: bool) -> bool:
    value = fields.get(name)
    return value if isinstance(value, bool) else default


def get_float(fields: Mapping[str, object], name: str, default: float) -> float:
    value = fields.get(name)
    return float(value) if isinstance(value, int | float) else default


def get_ints(fields: Mapping[str, object]) -> dict[str, int]:
    """The integer fields of a decoded struct."""
    return {name: value for name, value in fields.items() if isinstance(value, int)}


def to_float32(value: float) -> Float32 | None:
    """Round to the nearest float32, or None when Go would report it out of range."""
    try:
        return Float32(struct.unpack("<f", struct.pack("<f", float(value)))[0])
    except OverflowError:
        return None


_F32_SMALL = struct.unpack("<f", struct.pack("<f", 1e-6))[0]
_F32_LARGE = struct.unpack("<f", struct.pack("<f", 1e21))[0]


def format_float32(value: float) -> str:
    """Go's ``encoding/json`` text for a float32: shortest digits that round-trip."""
    if value == 0:
        return "-0" if str(value).startswith("-") else "0"
    for precision in range(9):
        text = f"{value:.{precision}e}"
        if to_float32(float(text)) == value:
            break
    mantissa, exponent_text = text.split("e")
    negative = mantissa.startswith("-")
    digits = mantissa.lstrip("-").replace(".", "").rstrip("0") or "0"
    exponent = int(exponent_text)
    plain = _F32_SMALL <= abs(value) < _F32_LARGE  # Go compares in float32
    body = _plain(digits, exponent) if plain else _scientific(digits, exponent)
    return f"-{body}" if negative else body


def _scientific(digits: str, exponent: int) -> str:
    mantissa = digits[0] + (f".{digits[1:]}" if len(digits) > 1 else "")
    sign = "-" if exponent < 0 else "+"
    return f"{mantissa}e{sign}{abs(exponent)}"


def _plain(digits: str, exponent: int) -> str:
    if exponent < 0:
        return "0." + "0" * (-exponent - 1) + digits
    if exponent + 1 >= len(digits):
        return digits + "0" * (exponent + 1 - len(digits))
    return f"{digits[: exponent + 1]}.{digits[exponent + 1 :]}"


def _encode_string(text: str) -> str:
    out = json.dumps(text, ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        out = out.replace(char, escape)
    return out.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def encode(value: object) -> str:
    """Compact JSON text, Go style, for dicts, lists, strings, numbers, bools and None."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Float32):
        return format_float32(value)
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return _encode_string(value)
    if isinstance(value, Mapping):
        items = (f"{_encode_string(str(k))}:{encode(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode(item) for item in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__}")
