"""The Toxiproxy HTTP API: routes, request decoding and response shapes.

Routing behaves like the Go server's gorilla/mux router: an unknown path is a plain-text
``404 page not found``, a known path with the wrong method is an empty 405, unclean paths
are redirected, and only matched routes get an ``X-Toxiproxy-Request-Id`` and the browser
block (403 for a ``Mozilla/`` user agent). Errors are ``{"error": ..., "status": ...}`` plus a
newline, sent as ``text/plain`` like Go's ``http.Error``. One lock serialises the handlers.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote, unquote

from .collection import ProxyCollection, ProxyInput
from .errors import (
    INVALID_STREAM,
    INVALID_TOXIC_TYPE,
    TOXIC_EXISTS,
    TOXIC_NOT_FOUND,
    ApiError,
    bad_request_body,
)
from .gojson import (
    DecodeError,
    Field,
    decode_first_value,
    decode_struct,
    encode,
    get_bool,
    get_float,
    get_ints,
    get_str,
    kind_of,
)
from .httpd import Request, Response
from .logs import event
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .proxy import Proxy
from .toxics import ATTRIBUTES, Direction, ToxicSpec

VERSION = "2.12.0"

_PROXY_FIELDS = (
    Field("name", "string"),
    Field("listen", "string"),
    Field("upstream", "string"),
    Field("enabled", "bool"),
)
_WRAPPER_FIELDS = (
    Field("name", "string"),
    Field("type", "string"),
    Field("stream", "string"),
    Field("toxicity", "float32"),
    Field("attributes", "object"),
)
_UPDATE_FIELDS = (Field("attributes", "object"), Field("toxicity", "float32"))
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuv"
_TEXT = "text/plain; charset=utf-8"

Route = Callable[..., Awaitable[Response]]


def json_response(status: int, value: object) -> Response:
    return Response(status, encode(value).encode(), [("Content-Type", "application/json")])


def error_response(error: ApiError) -> Response:
    body = (encode(error.to_json()) + "\n").encode()
    return Response(error.status, body, _text_headers())


def _text_headers() -> list[tuple[str, str]]:
    return [("Content-Type", _TEXT), ("X-Content-Type-Options", "nosniff")]


def _decode(body: bytes, fields: tuple[Field, ...], type_name: str) -> dict[str, object]:
    try:
        return decode_struct(decode_first_value(body), fields, type_name)
    except DecodeError as exc:
        raise bad_request_body(str(exc)) from None


def _attributes(kind: str, raw: object, current: dict[str, int]) -> dict[str, int]:
    fields = tuple(Field(name, "int") for name in ATTRIBUTES[kind])
    try:
        decoded = decode_struct(raw, fields, f"toxics.{kind}")
    except DecodeError as exc:
        raise bad_request_body(str(exc)) from None
    merged = dict(current)
    merged.update(get_ints(decoded))
    return merged


def clean_path(path: str) -> str:
    """gorilla/mux's cleanPath: ``path.Clean`` that keeps a trailing slash."""
    if not path.startswith("/"):
        path = "/" + path
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


class Api:
    """Answers API requests against one ProxyCollection."""

    def __init__(self, collection: ProxyCollection, metrics: Metrics) -> None:
        self._collection = collection
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self._routes: list[tuple[tuple[str, ...], dict[str, Route]]] = [
            (("version",), {"GET": self.version}),
            (("reset",), {"POST": self.reset}),
            (("proxies",), {"GET": self.list_proxies, "POST": self.create_proxy}),
            (("populate",), {"POST": self.populate}),
            (
                ("proxies", "*"),
                {
                    "GET": self.get_proxy,
                    "POST": self.update_proxy,
                    "PATCH": self.update_proxy,
                    "DELETE": self.delete_proxy,
                },
            ),
            (("proxies", "*", "toxics"), {"GET": self.list_toxics, "POST": self.add_toxic}),
            (
                ("proxies", "*", "toxics", "*"),
                {
                    "GET": self.get_toxic,
                    "POST": self.update_toxic,
                    "PATCH": self.update_toxic,
                    "DELETE": self.delete_toxic,
                },
            ),
        ]

    async def handle(self, request: Request) -> Response:
        raw_path, _, query = request.target.partition("?")
        if "://" in raw_path:  # absolute-form target
            raw_path = "/" + raw_path.split("://", 1)[1].partition("/")[2]
        path = unquote(raw_path)
        cleaned = clean_path(path)
        if cleaned != path:
            location = quote(cleaned) + (f"?{query}" if query else "")
            return Response(301, b"", [("Location", location)])
        route, params, path_known = self._match(request.method, path)
        if route is None:
            if path_known:
                return Response(405)
            return Response(404, b"404 page not found\n", _text_headers())
        response = await self._dispatch(request, route, params)
        request_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))
        response.headers.append(("X-Toxiproxy-Request-Id", request_id))
        return response

    def _match(self, method: str, path: str) -> tuple[Route | None, list[str], bool]:
        """The route and its parameters, and whether the path exists for some method."""
        segments = path[1:].split("/")
        if segments == ["metrics"] and self._metrics.enabled:
            return self.metrics, [], True
        path_known = False
        for pattern, methods in self._routes:
            if len(pattern) != len(segments):
                continue
            pairs = list(zip(pattern, segments, strict=True))
            if all((p == "*" and s != "") or p == s for p, s in pairs):
                if method in methods:
                    return methods[method], [s for p, s in pairs if p == "*"], True
                path_known = True
        return None, [], path_known

    async def _dispatch(self, request: Request, route: Route, params: list[str]) -> Response:
        if request.header("user-agent").startswith("Mozilla/"):
            return Response(403, b"User agent not allowed\n", _text_headers())
        try:
            async with self._lock:
                return await route(request, *params)
        except ApiError as exc:
            event(
                logging.WARNING,
                "API error",
                method=request.method,
                path=request.target,
                status=exc.status,
                error=exc.message,
            )
            return error_response(exc)
        except Exception as exc:
            logging.getLogger("dtq.chaos").exception("API handler failed")
            return error_response(ApiError(500, str(exc)))

    # -- server ---------------------------------------------------------------------------

    async def version(self, request: Request) -> Response:
        body = encode({"version": VERSION}).replace(":", ": ", 1) + "\n"
        return Response(200, body.encode(), [("Content-Type", "application/json;charset=utf-8")])

    async def metrics(self, request: Request) -> Response:
        headers = [("Content-Type", METRICS_CONTENT_TYPE)]
        return Response(200, self._metrics.render().encode(), headers)

    async def reset(self, request: Request) -> Response:
        await self._collection.reset()
        return Response(204)

    # -- proxies --------------------------------------------------------------------------

    async def list_proxies(self, request: Request) -> Response:
        proxies = {proxy.name: proxy.to_json() for proxy in self._collection.sorted()}
        return json_response(200, proxies)

    async def create_proxy(self, request: Request) -> Response:
        fields = _decode(request.body, _PROXY_FIELDS, "toxiproxy.Proxy")
        proxy = await self._collection.create(_proxy_input(fields))
        event(
            logging.INFO,
            "Created proxy",
            name=proxy.name,
            listen=proxy.listen,
            upstream=proxy.upstream,
            enabled=proxy.enabled,
        )
        return json_response(201, proxy.to_json())

    async def populate(self, request: Request) -> Response:
        try:
            specs = populate_input(request.body)
        except ApiError as exc:
            return json_response(exc.status, {**exc.to_json(), "proxies": None})
        proxies, error = await self._collection.populate(specs)
        body: dict[str, object] = {"proxies": [proxy.to_json() for proxy in proxies] or None}
        event(
            logging.INFO,
            "Populated proxies",
            count=len(proxies),
            error=error.message if error else None,
        )
        if error is None:
            return json_response(201, body)
        return json_response(error.status, {**error.to_json(), **body})

    async def get_proxy(self, request: Request, name: str) -> Response:
        return json_response(200, self._collection.get(name).to_json())

    async def update_proxy(self, request: Request, name: str) -> Response:
        proxy = self._collection.get(name)
        fields = _decode(request.body, _PROXY_FIELDS, "toxiproxy.Proxy")
        fields.pop("name", None)  # a proxy cannot be renamed
        await self._collection.update(proxy, fields)
        event(
            logging.INFO,
            "Updated proxy",
            name=proxy.name,
            listen=proxy.listen,
            upstream=proxy.upstream,
            enabled=proxy.enabled,
        )
        return json_response(200, proxy.to_json())

    async def delete_proxy(self, request: Request, name: str) -> Response:
        self._collection.delete(name)
        event(logging.INFO, "Deleted proxy", name=name)
        return Response(204)

    # -- toxics ---------------------------------------------------------------------------

    async def list_toxics(self, request: Request, name: str) -> Response:
        proxy = self._collection.get(name)
        return json_response(200, [toxic.to_json() for toxic in proxy.all_toxics()])

    async def add_toxic(self, request: Request, name: str) -> Response:
        proxy = self._collection.get(name)
        toxic = _new_toxic(proxy, _decode(request.body, _WRAPPER_FIELDS, "toxics.ToxicWrapper"))
        proxy.add_toxic(toxic)
        event(
            logging.INFO,
            "Added toxic",
            name=proxy.name,
            toxic=toxic.name,
            type=toxic.type,
            stream=toxic.stream,
            toxicity=toxic.toxicity,
            attributes=toxic.attributes,
        )
        return json_response(200, toxic.to_json())

    async def get_toxic(self, request: Request, name: str, toxic_name: str) -> Response:
        return json_response(200, _find_toxic(self._collection.get(name), toxic_name).to_json())

    async def update_toxic(self, request: Request, name: str, toxic_name: str) -> Response:
        proxy = self._collection.get(name)
        toxic = _find_toxic(proxy, toxic_name)
        fields = _decode(request.body, _UPDATE_FIELDS, "toxics.ToxicWrapper")
        attributes = _attributes(toxic.type, fields.get("attributes"), toxic.attributes)
        toxic.attributes = attributes
        toxic.toxicity = get_float(fields, "toxicity", toxic.toxicity)
        proxy.update_toxic(toxic)
        event(
            logging.INFO,
            "Updated toxic",
            name=proxy.name,
            toxic=toxic.name,
            toxicity=toxic.toxicity,
            attributes=toxic.attributes,
        )
        return json_response(200, toxic.to_json())

    async def delete_toxic(self, request: Request, name: str, toxic_name: str) -> Response:
        proxy = self._collection.get(name)
        proxy.remove_toxic(_find_toxic(proxy, toxic_name))
        event(logging.INFO, "Removed toxic", name=proxy.name, toxic=toxic_name)
        return Response(204)


def _proxy_input(fields: dict[str, object], enabled_default: bool = True) -> ProxyInput:
    return ProxyInput(
        name=get_str(fields, "name"),
        listen=get_str(fields, "listen"),
        upstream=get_str(fields, "upstream"),
        enabled=get_bool(fields, "enabled", enabled_default),
    )


def populate_input(body: bytes) -> list[ProxyInput]:
    try:
        value = decode_first_value(body)
        if value is None:
            return []
        if not isinstance(value, list):
            raise DecodeError(
                f"json: cannot unmarshal {kind_of(value)} into Go value of type []toxiproxy.Proxy"
            )
        items = [decode_struct(item, _PROXY_FIELDS, "toxiproxy.Proxy") for item in value]
    except DecodeError as exc:
        raise bad_request_body(str(exc)) from None
    return [_proxy_input(item) for item in items]


def _find_toxic(proxy: Proxy, name: str) -> ToxicSpec:
    toxic = proxy.find_toxic(name)
    if toxic is None:
        raise ApiError(404, TOXIC_NOT_FOUND)
    return toxic


def _new_toxic(proxy: Proxy, fields: dict[str, object]) -> ToxicSpec:
    """Validate an add-toxic request in Toxiproxy's order and build the toxic."""
    stream = get_str(fields, "stream", "downstream")
    direction = stream.lower()
    if direction not in ("upstream", "downstream"):
        raise ApiError(400, INVALID_STREAM)
    kind = get_str(fields, "type")
    name = get_str(fields, "name") or f"{kind}_{stream}"
    if kind not in ATTRIBUTES:
        raise ApiError(400, INVALID_TOXIC_TYPE)
    if proxy.find_toxic(name) is not None:
        raise ApiError(409, TOXIC_EXISTS)
    zeros = dict.fromkeys(ATTRIBUTES[kind], 0)
    attributes = _attributes(kind, fields.get("attributes"), zeros)
    toxicity = get_float(fields, "toxicity", 1.0)
    resolved: Direction = "upstream" if direction == "upstream" else "downstream"
    return ToxicSpec(name, kind, stream, resolved, toxicity, attributes)
