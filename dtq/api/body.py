"""Request bodies at the edge of the REST API: media type, size cap, strict JSON.

The rule: nothing past this module sees bytes. A body arrives as bytes of any size and encoding
and leaves as a JSON value that can be serialised again without surprises (no NaN or Infinity,
no lone surrogates, bounded nesting), or as an `ApiError` (400, 413, 415 or 422).
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import ClientDisconnect, Request

from dtq.client.errors import ApiError, InvalidRequest, bad_request, too_large, unprocessable

MAX_DEPTH = 100
"""How deeply a body may nest arrays and objects."""


def check_media_type(content_type: str | None) -> None:
    """JSON only: `application/json` or `application/*+json`, in UTF-8 if a charset is given."""
    mime, _, params = (content_type or "").partition(";")
    mime = mime.strip().lower()
    is_json = mime == "application/json" or (mime.startswith("application/")
                                              and mime.endswith("+json"))
    if not is_json:
        got = f"Content-Type {mime!r}" if mime else "no Content-Type"
        raise InvalidRequest(415, "unsupported_media_type",
                             f"send JSON with Content-Type: application/json (got {got})",
                             "Content-Type")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise InvalidRequest(415, "unsupported_media_type",
                                 f"JSON must be UTF-8 (got charset {charset!r})", "Content-Type")


async def read_body(request: Request, cap: int) -> bytes:
    """The body, refused with 413 as soon as its declared or actual size passes `cap` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise bad_request("invalid_header", "Content-Length must be a number of bytes",
                              "Content-Length")
        if int(declared) > cap:
            raise _over_cap(int(declared), cap)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise _over_cap(size, cap, at_least=True)
            chunks.append(chunk)
    except ClientDisconnect:
        raise bad_request("incomplete_body", "the client went away before the body ended") from None
    return b"".join(chunks)


def _over_cap(size: int, cap: int, *, at_least: bool = False) -> ApiError:
    what = f"at least {size}" if at_least else str(size)
    return too_large(f"the body is {what} bytes, over the cap of {cap} bytes", "body")


def parse_json(raw: bytes) -> Any:
    """Decode strict JSON; 400 when it is not JSON, 422 when it nests too deeply."""
    if not raw.strip():
        raise bad_request("invalid_json", "the body is empty: send a JSON object", "body")
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as exc:  # JSONDecodeError, bad encodings, huge integers, our own checks
        raise bad_request("invalid_json", f"the body is not valid JSON: {exc}", "body") from None
    check_value(value)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _too_deep() -> ApiError:
    return unprocessable(f"the body nests arrays and objects deeper than {MAX_DEPTH} levels",
                         "body")


def check_value(value: Any) -> None:
    """Refuse what JSON can carry but we cannot store or send back: deep nesting, lone
    surrogates in strings (walks iteratively, so depth cannot blow the stack here)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise _too_deep()
            if isinstance(item, dict):
                for key, sub in item.items():
                    _check_text(key)
                    stack.append((sub, depth + 1))
            else:
                stack.extend((sub, depth + 1) for sub in item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request("invalid_json", "the body has a string that is not valid Unicode "
                          "(a lone surrogate escape such as \\ud800)", "body") from None
