"""The REST API (FastAPI on Starlette, served by uvicorn): `create_app(backend)`.

    POST   /tasks               submit one task (Idempotency-Key header honoured)     202
    POST   /dags                submit a DAG of tasks, all or nothing                  202
    GET    /tasks               list tasks: ?state=&type=&cursor=&limit=               200
    GET    /tasks/{id}          one task's record                                      200
    GET    /tasks/{id}/result   its result (409 `not_finished` until it is final)      200
    DELETE /tasks/{id}          cancel a task that has not started                     202
    GET    /cluster             leader, epoch, workers, queue depths                   200
    GET    /metrics             the same and tasks by state, Prometheus text format   200
    GET    /healthz, /readyz    the process is up; the cluster can run what is sent   200/503
    GET    /openapi.json, /docs the description and interactive documentation

With tokens, every route but /healthz and /readyz needs `Authorization: Bearer <token>`, else 401
(`dtq.api.auth`).

The rule: every answer, error or not, is JSON, and no input produces a 500. Errors are raised as
`ApiError`s (see `dtq.client.errors` for what each status means) and rendered by one handler;
store and broker failures become 503. Request parsing lives in `dtq.api.body`, submissions in
`dtq.client.submissions`, rendering in `dtq.api.views`, the OpenAPI description in `dtq.api.schema`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from dtq.api import metrics, views
from dtq.api.auth import BearerAuth, openapi_security
from dtq.api.body import check_media_type, parse_json, read_body
from dtq.api.schema import COMPONENTS, DESCRIPTION, request_body, responses, text_responses
from dtq.client.backend import ApiBackend, AsyncSubmit
from dtq.client.errors import ApiError, bad_request, not_found
from dtq.client.submissions import Accepted, Submissions, check_key
from dtq.errors import StoreError, TransportError
from dtq.task import TaskState
from dtq.tasktypes import TaskActor

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
VERSION = "1"
log = structlog.get_logger("dtq.api")

KEY_DESCRIPTION = ("the same key always gives the same task id and one execution; reusing it "
                   "with a different body is 409")
KeyHeader = Annotated[str | None, Header(alias="Idempotency-Key", description=KEY_DESCRIPTION)]
KEY_PARAMETER = {"name": "Idempotency-Key", "in": "header", "required": False,
                 "description": KEY_DESCRIPTION,
                 "schema": {"anyOf": [{"type": "string"}, {"type": "null"}],
                            "description": KEY_DESCRIPTION, "title": "Idempotency-Key"}}
"""`KeyHeader` as FastAPI describes it, for a route that reads the header itself."""


def create_app(
    backend: ApiBackend, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    task_types: Mapping[str, TaskActor] | None = None, tokens: Sequence[str] = (),
) -> FastAPI:
    """The API over `backend`. With `task_types`, unknown types and payloads those types refuse
    are 422; without, any well-formed type name is accepted (workers fail unknown types). With
    `tokens`, every request but the probes must bear one of them (without, the API is open)."""
    app = FastAPI(title="dtq", version=VERSION, description=DESCRIPTION,
                  openapi_url="/openapi.json", docs_url="/docs", redoc_url=None,
                  redirect_slashes=False)
    subs = Submissions(backend=backend, task_types=task_types)
    app.state.backend = backend
    app.state.submissions = subs
    app.state.max_body_bytes = max_body_bytes
    _install_error_handlers(app)
    _install_openapi(app)
    if tokens:
        app.add_middleware(BearerAuth, tokens=tuple(tokens))
    _add_task_routes(app, subs)
    _add_read_routes(app, subs)
    _add_cluster_routes(app, backend)
    return app


async def json_body(request: Request) -> Any:
    """The request's JSON body, checked at the edge (415, 413, 400, 422)."""
    check_media_type(request.headers.get("content-type"))
    return parse_json(await read_body(request, request.app.state.max_body_bytes))


JsonBody = Annotated[Any, Depends(json_body)]


def _add_task_routes(app: FastAPI, subs: Submissions) -> None:
    accept = _task_submitter(subs)

    # The hot path: the route takes the request itself (the body and the header read here, as
    # `json_body` and `KeyHeader` would), sparing FastAPI's dependency solving per request.
    @app.post("/tasks", status_code=202, summary="Submit a task", tags=["tasks"],
              openapi_extra={**request_body("TaskIn"), "parameters": [KEY_PARAMETER]},
              responses=responses(202, "Accepted", "Accepted for execution",
                                  400, 409, 413, 415, 422, 503))
    async def submit_task(request: Request) -> JSONResponse:
        data = await json_body(request)
        accepted = await accept(data, check_key(request.headers.get("idempotency-key")))
        return JSONResponse({"id": accepted.id, "state": accepted.state,
                             "links": views.links(accepted.id)}, status_code=202)

    @app.post("/dags", status_code=202, summary="Submit a DAG of tasks", tags=["tasks"],
              openapi_extra=request_body("DagIn"),
              responses=responses(202, "DagAccepted", "All tasks accepted: name -> id",
                                  400, 409, 413, 415, 422, 503))
    def submit_dag(data: JsonBody, idempotency_key: KeyHeader = None) -> JSONResponse:
        ids = subs.submit_dag(data, check_key(idempotency_key))
        return JSONResponse({"tasks": ids}, status_code=202)

    @app.delete("/tasks/{task_id}", status_code=202, summary="Cancel a task", tags=["tasks"],
                responses=responses(202, "Accepted", "Cancel requested", 404, 409, 503))
    def cancel_task(task_id: str) -> JSONResponse:
        if not views.is_task_id(task_id):
            raise not_found(task_id)
        accepted = subs.cancel(task_id)
        return JSONResponse({"id": accepted.id, "state": accepted.state,
                             "links": views.links(accepted.id)}, status_code=202)


def _task_submitter(subs: Submissions) -> Callable[[Any, str | None], Awaitable[Accepted]]:
    """How `POST /tasks` accepts one task. On a backend that can be awaited (`AsyncSubmit`):
    checked on the event loop, and a fresh task with no dependencies published with no store
    read, its confirm awaited on the loop (no thread held while the broker confirms; confirms
    grouped across requests by the submitter). What reads the store (a replay check,
    dependencies), and everything on another backend, runs in the thread pool."""
    backend = subs.backend
    if not isinstance(backend, AsyncSubmit):
        async def in_thread(data: Any, key: str | None) -> Accepted:
            return await run_in_threadpool(subs.submit_task, data, key)

        return in_thread

    async def on_loop(data: Any, key: str | None) -> Accepted:
        spec, replayable = subs.prepare_task(data, key)
        if subs.needs_store(spec, replayable):
            return await run_in_threadpool(subs.accept, spec, replayable)
        await backend.submit_async([spec])
        subs.published([spec])
        return Accepted(id=spec.id, state=TaskState.SUBMITTED.value)

    return on_loop


def _add_read_routes(app: FastAPI, subs: Submissions) -> None:
    backend, recent = subs.backend, subs.recent

    @app.get("/tasks", summary="List tasks", tags=["tasks"],
             responses=responses(200, "TaskPage", "A page of tasks in id order", 400, 503))
    def list_tasks(
        state: Annotated[list[TaskState] | None, Query(description="repeat for several")] = None,
        type: Annotated[str | None, Query(description="task type")] = None,
        cursor: Annotated[str | None, Query(description="next_cursor of the page before")] = None,
        limit: Annotated[int | None, Query(ge=1, le=views.MAX_PAGE)] = None,
    ) -> JSONResponse:
        return JSONResponse(views.list_tasks(backend, states=state, task_type=type,
                                             cursor=cursor, limit=limit))

    @app.get("/tasks/{task_id}", summary="Get a task", tags=["tasks"],
             responses=responses(200, "Task", "The task's record", 404, 503))
    def get_task(task_id: str) -> JSONResponse:
        return JSONResponse(views.get_task(backend, recent, task_id))

    @app.get("/tasks/{task_id}/result", summary="Get a task's result", tags=["tasks"],
             responses=responses(200, "Result", "The outcome of a finished task: its value, "
                                 "or why it failed", 404, 409, 410, 503))
    def get_result(task_id: str) -> JSONResponse:
        return JSONResponse(views.get_result(backend, recent, task_id))


def _add_cluster_routes(app: FastAPI, backend: ApiBackend) -> None:
    watch = views.StoreWatch()  # what this process saw of the store's incarnation

    @app.get("/cluster", summary="Leader, epoch, workers, queue depths", tags=["cluster"],
             responses=responses(200, "Cluster", "The cluster now", 503))
    def cluster() -> JSONResponse:
        return JSONResponse(views.cluster_json(backend, watch))

    registry = metrics.registry_for(backend)

    @app.get("/metrics", summary="Tasks by state, queue depths, leader epoch, workers (Prometheus "
             "text format)", tags=["cluster"], response_class=Response,
             responses=text_responses(metrics.CONTENT_TYPE, "One scrape", 503))
    def prometheus() -> Response:
        return Response(metrics.scrape(registry), media_type=metrics.CONTENT_TYPE)

    @app.get("/healthz", summary="The API process is alive", tags=["cluster"],
             responses=responses(200, "Status", "Alive"))
    def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", summary="The store and the broker can be reached, a leader holds the "
             "lease and a worker sent a heartbeat lately", tags=["cluster"],
             responses=responses(200, "Status", "Ready", 503))
    def readyz() -> JSONResponse:
        why = views.not_ready(backend, watch)
        if why is not None:
            lost = why.startswith("the store lost its data")
            raise ApiError(503, "store_data_lost" if lost else "not_ready", why)
        return JSONResponse({"status": "ready"})

    @app.get("/", include_in_schema=False)
    def root() -> JSONResponse:
        return JSONResponse({"name": "dtq", "docs": "/docs", "openapi": "/openapi.json"})


# --- errors ---------------------------------------------------------------------------------


def _install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StoreError, _unavailable)
    app.add_exception_handler(TransportError, _unavailable)
    app.add_exception_handler(Exception, _internal)


def _render(err: ApiError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.to_json(), status_code=err.status, headers=headers)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _render(exc)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = {404: f"no route {request.url.path}",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(
        exc.status_code, str(exc.detail))
    return _render(ApiError(exc.status_code, code, message), exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own checks cover only query parameters and headers here: 400."""
    assert isinstance(exc, RequestValidationError)
    first: dict[str, Any] = dict(exc.errors()[0]) if exc.errors() else {}
    loc = [part for part in first.get("loc", ()) if part not in ("query", "header", "path")]
    field = str(loc[0]) if loc else None
    return _render(bad_request("invalid_query", str(first.get("msg", "invalid parameter")),
                               field))


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.warning("backend unavailable", error=str(exc))
    return _render(ApiError(503, "unavailable", f"the cluster cannot be reached: {exc}"),
                   {"Retry-After": "1"})


async def _internal(_: Request, exc: Exception) -> JSONResponse:
    log.error("internal error", error=repr(exc), exc_info=exc)
    return _render(ApiError(500, "internal", "internal error (a bug: please report it)"))


# --- OpenAPI --------------------------------------------------------------------------------


def _install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            _drop_fastapi_422(schema)
            openapi_security(schema)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _drop_fastapi_422(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 for every route with parameters; ours answer 400 for those."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            found = operation.get("responses", {}).get("422", {})
            if "HTTPValidationError" in str(found.get("content", "")):
                del operation["responses"]["422"]
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
