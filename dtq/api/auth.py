"""Bearer-token authentication of the REST API.

The rule: when the API has tokens, every request but `GET /healthz` and `GET /readyz` (the
probes, which reveal nothing) must carry `Authorization: Bearer <one of them>`, or it is answered
401 before it reaches a route: `missing_token` when there is no bearer credential,
`invalid_token` when it matches none (one status for both, so that a wrong token and a missing
one look alike to a prober; 403 is not used: every token grants the whole API). The answer is the
API's JSON error body, with `WWW-Authenticate: Bearer`. A token is compared to each configured
one in constant time (HMAC-SHA-256 digests of both through `hmac.compare_digest`, every token
tried), and never logged or echoed.

Tokens come from `$DTQ_API_TOKENS` (separated by commas or whitespace) and from token files
(`--token-file`, `$DTQ_API_TOKEN_FILE`: one token per line, `#` comments), all of them valid at
once, so a token can be rotated without downtime. Each must be 16 to 512 visible ASCII
characters. Without any token the API is open, and `dtq api` refuses to serve it on any address
but loopback (`check_exposure`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dtq.client.errors import ApiError, unauthorized
from dtq.errors import DtqError

__all__ = ["OPEN_PATHS", "BearerAuth", "TokenError", "check_exposure", "load_tokens",
           "openapi_security"]

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
MIN_TOKEN, MAX_TOKEN = 16, 512


class TokenError(DtqError, ValueError):
    """The API's tokens are misconfigured, or it would be exposed without one."""


def load_tokens(
    files: Iterable[str] = (), environ: dict[str, str] | None = None,
) -> tuple[str, ...]:
    """Every token of $DTQ_API_TOKENS, $DTQ_API_TOKEN_FILE and `files`, checked."""
    env = os.environ if environ is None else environ
    found = env.get("DTQ_API_TOKENS", "").replace(",", " ").split()
    for name in (*files, *([env["DTQ_API_TOKEN_FILE"]] if env.get("DTQ_API_TOKEN_FILE") else [])):
        try:
            text = Path(name).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenError(f"cannot read the token file {name!r}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        found += [line.strip() for line in text.splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    for n, token in enumerate(found, 1):
        if not (MIN_TOKEN <= len(token) <= MAX_TOKEN and token.isascii() and token.isprintable()
                and " " not in token):
            raise TokenError(f"API token #{n} is not {MIN_TOKEN} to {MAX_TOKEN} visible ASCII "
                             "characters (make one with: python -c 'import secrets; "
                             "print(secrets.token_urlsafe(32))')")
    return tuple(dict.fromkeys(found))


def check_exposure(host: str, tokens: Sequence[str]) -> None:
    """Refuse to serve an API without tokens on an address other hosts can reach."""
    if tokens or _loopback(host):
        return
    raise TokenError(f"refusing to serve the API on {host} without a token: anyone who reaches "
                     "it could run and cancel tasks. Set DTQ_API_TOKENS or --token-file, or bind "
                     "127.0.0.1")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


class BearerAuth:
    """ASGI middleware: the token check of every request but the probes (see the module)."""

    def __init__(self, app: ASGIApp, tokens: Sequence[str]) -> None:
        self.app = app
        self._key = secrets.token_bytes(32)
        self._digests = [self._digest(t.encode()) for t in tokens]

    def _digest(self, token: bytes) -> bytes:
        return hmac.new(self._key, token, hashlib.sha256).digest()

    def _valid(self, token: bytes) -> bool:
        given = self._digest(token)
        ok = False
        for digest in self._digests:  # every one, whichever matches
            ok |= hmac.compare_digest(given, digest)
        return ok

    def refusal(self, headers: Iterable[tuple[bytes, bytes]]) -> ApiError | None:
        """Why a request with these headers is refused, or None if it carries a valid token."""
        values = [v for k, v in headers if k.lower() == b"authorization"]
        scheme, _, token = (values[0].strip() if len(values) == 1 else b"").partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            return unauthorized("missing_token", "this API needs a bearer token: "
                                "Authorization: Bearer <token>")
        if not self._valid(token):
            return unauthorized("invalid_token", "the bearer token is not valid")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        err = self.refusal(scope.get("headers", ()))
        if err is None:
            await self.app(scope, receive, send)
            return
        response = JSONResponse(err.to_json(), status_code=err.status,
                                headers={"WWW-Authenticate": 'Bearer realm="dtq"'})
        await response(scope, receive, send)


def openapi_security(schema: dict[str, Any]) -> None:
    """Document the bearer scheme and the 401 of every operation but the probes."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer",
        "description": "one of the API's tokens ($DTQ_API_TOKENS, --token-file)"}
    for path, operations in schema.get("paths", {}).items():
        if path in OPEN_PATHS:
            continue
        for operation in operations.values():
            operation["security"] = [{"bearer": []}]
            operation.setdefault("responses", {})["401"] = {
                "description": "No bearer token, or not a valid one (`missing_token`, "
                               "`invalid_token`)",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
