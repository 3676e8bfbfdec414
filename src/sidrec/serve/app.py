"""The FastAPI app of `sidrec serve`: routes, request checks, errors, metrics.

Every bad request is answered with a JSON body `{"error": "...", "field": "..."}`: 422
when the body has the wrong shape (FastAPI's validation; `detail` lists every problem),
400 when a value is out of range or unknown (k, history length, an unknown item id, an
unknown or out-of-range inference option), 404 for an unknown item, 409 for an item id
that exists, 413 for a body over `max_body_bytes`, 503 while the model loads or when the
queue is full, 504 when a result takes longer than `timeout_s`. No traceback is ever sent;
an unexpected failure is a 500 saying so, and it is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi import Query as QueryParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from sidrec import __version__
from sidrec.added_items import ItemError
from sidrec.api import Recommendations, Service
from sidrec.config import to_dict
from sidrec.errors import SidrecError
from sidrec.serve import schemas
from sidrec.serve.metrics import Metrics
from sidrec.serve.model_process import ModelStopped
from sidrec.serve.queries import Query
from sidrec.serve.settings import ServeSettings
from sidrec.serve.worker import InferenceWorker, Overloaded

log = logging.getLogger("sidrec.serve")

RecommendFn = Callable[[Query], Awaitable[Recommendations]]


class ApiError(Exception):
    """An answer other than 200, with the request field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def check_query(body: schemas.RecommendRequest, service: Service, settings: ServeSettings,
                where: str = "") -> Query:
    """A request checked against the limits, the catalogue and the model's inference
    settings; anything wrong is a 400 naming the field (prefixed by `where`)."""
    if not 1 <= body.k <= settings.max_k:
        raise ApiError(400, f"k={body.k}: must be between 1 and {settings.max_k}", f"{where}k")
    if len(body.history) > settings.max_history:
        raise ApiError(400, f"history has {len(body.history)} items; the limit is "
                       f"{settings.max_history}", f"{where}history")
    history = tuple(str(i) for i in body.history)
    if (body.on_unknown or service.on_unknown) == "error":
        for n, item in enumerate(history):
            if item not in service.index:
                raise ApiError(400, f"unknown item id {item!r}; add it with POST /v1/items, "
                               "or send on_unknown=skip", f"{where}history[{n}]")
    for key, value in body.options.items():
        try:
            service.model.inference_with({key: value})  # unknown, mistyped or out of range
        except SidrecError as e:
            raise ApiError(400, str(e), f"{where}options.{key}") from None
        if not isinstance(value, bool) and isinstance(value, int | float) \
                and value > settings.max_option:
            raise ApiError(400, f"options.{key}={value}: the limit is {settings.max_option}",
                           f"{where}options.{key}")
    user = None if body.user_id is None else str(body.user_id)
    return Query(history, body.k, user, body.exclude_seen, dict(body.options), body.on_unknown)


def _field(problem: dict[str, Any], list_body: str) -> str:
    """("body", "requests", 0, "k") -> "requests[0].k", ("query", "limit") -> "limit"; the
    rows of a list body are `list_body`[n]; a JSON syntax error is the body's."""
    loc = tuple(problem.get("loc") or ())
    if problem.get("type") == "json_invalid" or loc in ((), ("body",)):
        return "body"
    out = ""
    for part in loc[1:] if loc[0] in ("body", "query", "path") else loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    out = out.lstrip(".")
    return f"{list_body}{out}" if out.startswith("[") else out


class Guard:
    """ASGI middleware: the body-size limit (413), the request metrics, and the count of
    recommendation requests on their way to the worker (`InferenceWorker.arriving`)."""

    def __init__(self, app: Any, max_body: int, metrics: Metrics,
                 worker: InferenceWorker) -> None:
        self.app, self.max_body, self.metrics, self.worker = app, max_body, metrics, worker

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]
        headers = dict(scope.get("headers") or [])
        try:
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            length = 0
        seen = [0]

        async def limited() -> dict:
            message = await receive()
            seen[0] += len(message.get("body", b""))
            if seen[0] > self.max_body:
                raise HTTPException(413, f"request body over {self.max_body} bytes")
            return message

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        if scope["path"].startswith("/v1/recommend"):
            scope[ARRIVING] = True
            self.worker.arriving += 1
        try:
            if length > self.max_body:
                await _error(413, f"request body over {self.max_body} bytes")(scope, receive,
                                                                              sending)
            else:
                await self.app(scope, limited, sending)
        finally:
            arrived(scope, self.worker)
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(route, status[0], time.perf_counter() - start)


ARRIVING = "sidrec.arriving"


def arrived(scope: dict, worker: InferenceWorker) -> None:
    """This request is about to be queued (or is over): no longer on its way."""
    if scope.pop(ARRIVING, False):
        worker.arriving -= 1


def _error(status: int, message: str, field: str | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "field": field, **extra}, status_code=status)


def create_app(worker: InferenceWorker, settings: ServeSettings,
               recommend: RecommendFn | None = None) -> FastAPI:
    """The app over `worker` (which loads and holds the model). `recommend` answers one
    checked query; the default queues it for the worker's dynamic batching (Ray Serve
    passes its own, batched by `serve.batch`)."""
    metrics = Metrics()
    worker.on_call = metrics.batch_size.observe

    def size(attr: str) -> Callable[[], float]:
        return lambda: float(getattr(worker.service, attr, 0) if worker.service else 0)

    metrics.watch(size("n_items"), lambda: float(len(worker.service.added))
                  if worker.service else 0.0, lambda: float(worker.depth), size("n_invalid"),
                  lambda: float(worker.arriving))

    async def queued(query: Query) -> Recommendations:
        future = worker.submit(query)
        return await asyncio.wait_for(asyncio.wrap_future(future), settings.timeout_s)

    async def between_batches(fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the inference thread: 503 when its queue is full, 504 after
        timeout_s (the call itself goes on)."""
        try:
            future = worker.call(fn, *args)
            return await asyncio.wait_for(asyncio.wrap_future(future), settings.timeout_s)
        except Overloaded as e:
            raise ApiError(503, str(e)) from None
        except TimeoutError:
            raise ApiError(504, f"no result within {settings.timeout_s} s; the server goes "
                           "on with it") from None

    answer = recommend or queued

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)

    app = FastAPI(title="sidrec", version=__version__, lifespan=lifespan,
                  description="Recommendations from a trained sidrec model (TIGER, LIGER, "
                  "COBRA, ...): POST /v1/recommend; the explorer page is at /.",
                  responses={400: {"model": schemas.ErrorResponse},
                             422: {"model": schemas.ErrorResponse}})
    app.add_middleware(Guard, max_body=settings.max_body_bytes, metrics=metrics, worker=worker)
    static = resources.files("sidrec.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return _error(e.status, e.message, e.field)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        rows = "items" if request.url.path == "/v1/items" else "body"
        problems = list({_field(p, rows): {"field": _field(p, rows), "message": p["msg"],
                                           "type": p["type"]} for p in e.errors()}.values())
        first = problems[0] if problems else {"field": None, "message": "invalid request"}
        return _error(422, f"{first['field'] or 'body'}: {first['message']}", first["field"],
                      detail=problems)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's, and the router's 404 / 405
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:
        log.exception("sidrec serve: %s %s failed", request.method, request.url.path)
        return _error(500, f"internal error ({type(e).__name__}); the server log has it")

    def service() -> Service:
        if why := worker.failure():
            raise ApiError(503, why)
        if not worker.ready.is_set() or worker.service is None:
            raise ApiError(503, "the model is loading; retry shortly (GET /readyz)")
        return worker.service

    async def run(query: Query) -> Recommendations:
        try:
            return await answer(query)
        except (Overloaded, ModelStopped) as e:
            raise ApiError(503, str(e)) from None
        except TimeoutError:
            raise ApiError(504, f"no result within {settings.timeout_s} s") from None
        except SidrecError as e:
            raise ApiError(400, str(e)) from None

    def respond(svc: Service, recs: Recommendations, start: float) -> dict[str, Any]:
        infos = svc.items([item for item, _ in recs])
        items = [{"id": i["id"], "score": score, "title": i["title"], "cold": i["cold"]}
                 for i, (_, score) in zip(infos, recs, strict=True) if abs(score) != float("inf")]
        return {"items": items, "model": svc.name,
                "took_ms": round((time.perf_counter() - start) * 1000, 3)}

    async def checked(body: schemas.RecommendRequest, svc: Service, where: str = "") -> Query:
        try:
            return check_query(body, svc, settings, where)
        except ApiError as e:
            if not (e.field or "").startswith(f"{where}history["):
                raise
        # An unknown item may have been added by another process on this run directory
        # (a Ray Serve replica, another server): read the run's added items once, then
        # check again.
        try:
            await between_batches(svc.refresh)
        except SidrecError as e:  # the check below answers with the catalogue as it is
            log.warning("sidrec serve: could not read the added items: %s", e)
        return check_query(body, svc, settings, where)

    @app.post("/v1/recommend", response_model=schemas.RecommendResponse,
              summary="Top-k items for one history")
    async def recommend_one(body: schemas.RecommendRequest, request: Request) -> JSONResponse:
        start, svc = time.perf_counter(), service()
        query = await checked(body, svc)
        arrived(request.scope, worker)
        # built here, so FastAPI does not validate the answer again (response_model: docs)
        return JSONResponse(respond(svc, await run(query), start))

    @app.post("/v1/recommend/batch", response_model=schemas.BatchResponse,
              summary="Several recommendation requests; results in the same order")
    async def recommend_many(body: schemas.BatchRequest, request: Request) -> JSONResponse:
        start, svc = time.perf_counter(), service()
        if len(body.requests) > settings.max_batch_requests:
            raise ApiError(400, f"{len(body.requests)} requests; the limit is "
                           f"{settings.max_batch_requests}", "requests")
        queries = [await checked(r, svc, f"requests[{n}].") for n, r in enumerate(body.requests)]
        arrived(request.scope, worker)
        results = await asyncio.gather(*(run(q) for q in queries))
        return JSONResponse({"results": [respond(svc, r, start) for r in results]})

    @app.post("/v1/items", response_model=schemas.AddResponse,
              summary="Add items live (encoder -> tokenizer -> catalogue; persisted)")
    async def add(body: list[schemas.NewItem]) -> dict[str, Any]:
        svc = service()
        if len(body) > settings.max_add_items:
            raise ApiError(400, f"{len(body)} items; the limit is {settings.max_add_items}",
                           "items")
        items = [{"id": str(i.id), "text": i.text, "vector": i.vector} for i in body]
        try:
            added = await between_batches(svc.add_items, items)
        except ItemError as e:
            field = f"items[{e.row}]" + (f".{e.field}" if e.field else "")
            raise ApiError(409 if e.duplicate else 422 if e.field else 400, str(e),
                           field) from None
        except SidrecError as e:
            raise ApiError(400, str(e)) from None
        return {"added": added, "n_items": svc.n_items}

    @app.get("/v1/items", response_model=schemas.SearchResponse,
             summary="Search items by title (empty q: the most popular)")
    async def search(q: str = "", limit: int = QueryParam(20, ge=1, le=100)) -> dict[str, Any]:
        return {"items": service().search(q, limit)}

    @app.get("/v1/items/{item_id:path}", response_model=schemas.ItemInfo,
             responses={404: {"model": schemas.ErrorResponse}}, summary="One item")
    async def item(item_id: str) -> dict[str, Any]:
        found = service().item(item_id)
        if found is None:
            raise ApiError(404, f"no item {item_id!r}")
        return found

    @app.get("/v1/info", response_model=schemas.Info, summary="The model and the limits")
    async def info() -> dict[str, Any]:
        svc = service()
        return {"model": svc.name, "replica": f"{socket.gethostname()}:{os.getpid()}",
                "n_items": svc.n_items, "n_added": len(svc.added),
                "n_users": len(svc.user_index),
                "supports_new_items": svc.model.supports_new_items,
                "inference": to_dict(svc.model.inference), "limits": asdict(settings)}

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded (503 until then)")
    async def readyz() -> JSONResponse:
        if why := worker.failure():
            status = "failed" if worker.error else "restarting"
            return JSONResponse({"status": status, "error": why}, 503)
        if not worker.ready.is_set():
            return JSONResponse({"status": "loading"}, 503)
        svc = worker.service
        return JSONResponse({"status": "ready", "model": svc.name, "n_items": svc.n_items})

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def explorer() -> FileResponse:
        return FileResponse(str(static / "index.html"))

    return app
