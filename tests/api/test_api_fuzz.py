"""Property-based fuzzing of every endpoint of the REST API (hypothesis), in process over a
simulated cluster.

Every answer must be: not a server error; a status that /openapi.json documents for that
operation; JSON; for an error, the `{"error": {...}}` body with the same status; for a success,
a body that conforms to the documented response schema. Inputs range from valid requests to
near-misses (one field wrong), arbitrary JSON, arbitrary bytes and media types, odd headers,
ids and query strings. Every request bears the API's token, but those of the last two
properties: without a token, or with any wrong `Authorization` header, every route but the
probes answers the documented 401.
"""

from __future__ import annotations

import json
import string
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dtq.api.schema import documented_statuses
from dtq.client.http import InProcessTransport
from dtq.task import TaskState

from .test_api_kit import TOKEN, Api, make_api

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STATES = [s.value for s in TaskState]
TYPES = ["echo", "sleep", "io", "flaky", "reverse", "nope", "Echo", ""]


@pytest.fixture(scope="module")
def api() -> Api:
    api = make_api(budget_ms=2000, max_body_bytes=64 * 1024)
    for n in range(3):
        api.client.submit("echo", n, id=f"known-{n}")
    return api


@pytest.fixture(scope="module")
def openapi(api: Api) -> dict[str, Any]:
    doc: dict[str, Any] = api.http.get("/openapi.json").json()
    return doc


# --- strategies ----------------------------------------------------------------------------------

text = st.text(st.characters(exclude_categories=()), max_size=12)  # surrogates included
scalars = st.none() | st.booleans() | st.integers() | st.floats() | text
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=10)
ids = st.sampled_from(["known-0", "known-1", "ghost", "t-1", "a", "b"]) | text


def _either(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible values, sometimes anything at all."""
    return st.one_of(good, good, json_values)


task_fields: dict[str, st.SearchStrategy[Any]] = {
    "type": _either(st.sampled_from(TYPES)),
    "payload": json_values | st.fixed_dictionaries({"ms": st.integers(0, 5000)})
    | st.fixed_dictionaries({"fail_until": st.integers(0, 3)})
    | st.fixed_dictionaries({"text": text}),
    "deps": _either(st.lists(ids, max_size=3)),
    "max_attempts": _either(st.integers(-1, 101)),
    "timeout_ms": _either(st.integers(-1, 10**9)),
    "priority": _either(st.integers(-1, 10)),
    "metadata": _either(st.dictionaries(text, text, max_size=2)),
    "id": _either(ids),
    "idempotency_key": _either(text),
}
task_bodies = st.fixed_dictionaries({"type": task_fields["type"]}, optional={
    **{k: v for k, v in task_fields.items() if k != "type"},
    "surprise": json_values,
})
dag_bodies = st.fixed_dictionaries({"tasks": st.dictionaries(
    st.sampled_from(["a", "b", "c"]) | text,
    task_bodies | json_values, max_size=4)}, optional={"other": json_values})
media_types = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "application/problem+json",
    "text/plain", "application/json; charset=latin-1", "",
]) | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
header_values = st.none() | st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=300).map(str.strip)
query_values = st.none() | st.text(st.sampled_from(string.printable), max_size=12)


def _tame(body: Any) -> Any:
    """Keep generated work small (compute does real CPU work, even in the simulator)."""
    if isinstance(body, dict) and body.get("type") == "compute":
        return {**body, "payload": {"size": 10}}
    return body


def _tame_all(tasks: Any) -> dict[str, Any]:
    return {name: _tame(task) for name, task in tasks.items()}


# --- checking answers ----------------------------------------------------------------------------


def conforms(value: Any, schema: dict[str, Any], doc: dict[str, Any]) -> bool:
    """A small JSON Schema check for the keywords our description uses."""
    if "$ref" in schema:
        return conforms(value, doc["components"]["schemas"][schema["$ref"].split("/")[-1]], doc)
    kinds = schema.get("type")
    if kinds is not None and not any(_is(value, k) for k in
                                     (kinds if isinstance(kinds, list) else [kinds])):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if isinstance(value, dict):
        if any(k not in value for k in schema.get("required", ())):
            return False
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            sub = props.get(k, extra if isinstance(extra, dict) else None)
            if sub is not None and not conforms(v, sub, doc):
                return False
    if isinstance(value, list) and "items" in schema:
        return all(conforms(v, schema["items"], doc) for v in value)
    return True


def _is(value: Any, kind: str) -> bool:
    checks = {"object": lambda: isinstance(value, dict), "array": lambda: isinstance(value, list),
              "string": lambda: isinstance(value, str), "null": lambda: value is None,
              "integer": lambda: isinstance(value, int) and not isinstance(value, bool),
              "number": lambda: isinstance(value, int | float) and not isinstance(value, bool),
              "boolean": lambda: isinstance(value, bool)}
    return checks[kind]()


def check(r: httpx.Response, doc: dict[str, Any], path: str, method: str) -> None:
    assert r.status_code < 500, r.text
    assert r.status_code in documented_statuses(doc, path, method), (r.status_code, r.text)
    body = r.json()
    if r.status_code >= 400:
        assert set(body) == {"error"} and body["error"]["status"] == r.status_code
        assert conforms(body, {"$ref": "#/components/schemas/Error"}, doc)
        return
    schema = doc["paths"][path][method.lower()]["responses"][str(r.status_code)]
    assert conforms(body, schema["content"]["application/json"]["schema"], doc), body


def _headers(media: str | None, key: str | None) -> dict[bytes, bytes]:
    headers = {b"content-type": media.encode()} if media else {}
    if key is not None:
        headers[b"Idempotency-Key"] = key.encode("latin-1")
    return headers


def _encode(body: Any) -> bytes:
    return json.dumps(body).encode()  # NaN, Infinity and lone surrogates go through as-is


# --- the properties ------------------------------------------------------------------------------


@FUZZ
@given(body=task_bodies.map(_tame) | json_values, key=header_values,
       media=st.just("application/json") | media_types)
def test_post_tasks(api: Api, openapi: dict[str, Any], body: Any, key: str | None,
                    media: str) -> None:
    r = api.http.post("/tasks", content=_encode(body), headers=_headers(media, key))
    check(r, openapi, "/tasks", "POST")


@FUZZ
@given(body=dag_bodies.map(lambda dag: {**dag, "tasks": _tame_all(dag["tasks"])}) | json_values,
       key=header_values)
def test_post_dags(api: Api, openapi: dict[str, Any], body: Any, key: str | None) -> None:
    r = api.http.post("/dags", content=_encode(body), headers=_headers("application/json", key))
    check(r, openapi, "/dags", "POST")


@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
       media=media_types, path=st.sampled_from(["/tasks", "/dags"]))
def test_post_arbitrary_bytes(
    api: Api, openapi: dict[str, Any], raw: bytes, media: str, path: str,
) -> None:
    r = api.http.post(path, content=raw, headers=_headers(media, None))
    check(r, openapi, path, "POST")


@FUZZ
@given(task_id=ids, which=st.sampled_from(["get", "result", "delete"]))
def test_task_routes(api: Api, openapi: dict[str, Any], task_id: str, which: str) -> None:
    assume(task_id not in ("", ".", ".."))
    quoted = quote(task_id, safe="", errors="surrogatepass")
    if which == "get":
        check(api.http.get(f"/tasks/{quoted}"), openapi, "/tasks/{task_id}", "GET")
    elif which == "result":
        check(api.http.get(f"/tasks/{quoted}/result"), openapi, "/tasks/{task_id}/result",
              "GET")
    else:
        check(api.http.delete(f"/tasks/{quoted}"), openapi, "/tasks/{task_id}", "DELETE")


@FUZZ
@given(state=st.lists(st.sampled_from(STATES) | query_values.filter(bool), max_size=3),
       task_type=query_values, cursor=st.none() | ids, limit=st.none() | st.integers(-5, 2000)
       | query_values)
def test_list_tasks(
    api: Api, openapi: dict[str, Any], state: list[str], task_type: str | None,
    cursor: str | None, limit: Any,
) -> None:
    params: list[tuple[str, Any]] = [("state", s) for s in state]
    params += [(k, v) for k, v in (("type", task_type), ("cursor", cursor), ("limit", limit))
               if v is not None]
    query = "&".join(f"{k}={quote(str(v), safe='', errors='surrogatepass')}" for k, v in params)
    check(api.http.get(f"/tasks?{query}"), openapi, "/tasks", "GET")


@FUZZ
@given(path=st.sampled_from(["/cluster", "/healthz", "/readyz"]),
       junk=st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=5),
                            st.text(string.printable, max_size=5), max_size=2))
def test_cluster_routes(api: Api, openapi: dict[str, Any], path: str,
                        junk: dict[str, str]) -> None:
    check(api.http.get(path, params=junk), openapi, path, "GET")


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
       path=st.text(st.sampled_from(string.ascii_letters + string.digits + "/-_."), max_size=20))
def test_any_route_answers_json_without_a_server_error(
    api: Api, method: str, path: str,
) -> None:
    r = api.http.request(method, "/" + path, content=b"{}",
                         headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text
    body = r.json()
    if r.status_code >= 400:
        assert body["error"]["status"] == r.status_code


# --- without a token, or with a wrong one ----------------------------------------------------

DOCUMENTED = [("POST", "/tasks", "/tasks"), ("POST", "/dags", "/dags"), ("GET", "/tasks", "/tasks"),
              ("GET", "/tasks/{}", "/tasks/{task_id}"), ("DELETE", "/tasks/{}", "/tasks/{task_id}"),
              ("GET", "/tasks/{}/result", "/tasks/{task_id}/result"),
              ("GET", "/cluster", "/cluster"), ("GET", "/healthz", "/healthz"),
              ("GET", "/readyz", "/readyz")]
authorization = st.none() | header_values | header_values.map(lambda v: f"Bearer {v}") \
    | st.sampled_from(["Bearer", "bearer ", "Basic Zm9vOmJhcg==", f"Bearer {TOKEN}x",
                       f"Bearer {TOKEN.upper()}", f"Bearer {TOKEN[:-1]}"])


@FUZZ
@given(route=st.sampled_from(DOCUMENTED), task_id=ids, auth=authorization,
       body=st.none() | json_values, media=media_types)
def test_without_a_valid_token_only_the_probes_answer(
    api: Api, openapi: dict[str, Any], route: tuple[str, str, str], task_id: str,
    auth: str | None, body: Any, media: str,
) -> None:
    method, template, documented = route
    assume(task_id not in ("", ".", "..") and auth != f"Bearer {TOKEN}")
    path = template.format(quote(task_id, safe="", errors="surrogatepass"))
    headers = _headers(media, None)
    if auth is not None:
        headers[b"Authorization"] = auth.encode("latin-1")
    with httpx.Client(base_url="http://api.test",
                      transport=InProcessTransport(api.app)) as anonymous:
        r = anonymous.request(method, path, content=_encode(body), headers=headers)
    check(r, openapi, documented, method)
    if documented in ("/healthz", "/readyz"):
        assert r.status_code in (200, 503)
    else:
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] in ("missing_token", "invalid_token")


@FUZZ
@given(method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
       path=st.text(st.sampled_from(string.ascii_letters + string.digits + "/-_.%"), max_size=20),
       auth=authorization)
def test_without_a_valid_token_any_route_is_401(
    api: Api, method: str, path: str, auth: str | None,
) -> None:
    assume(("/" + path) not in ("/healthz", "/readyz") and auth != f"Bearer {TOKEN}")
    headers = {b"Authorization": auth.encode("latin-1")} if auth is not None else {}
    with httpx.Client(base_url="http://api.test",
                      transport=InProcessTransport(api.app)) as anonymous:
        r = anonymous.request(method, "/" + path, headers=headers)
    assert r.status_code == 401, r.text
    if method != "HEAD":
        assert r.json()["error"]["status"] == 401
