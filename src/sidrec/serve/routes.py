"""The routes of `sidrec serve`, in three routers: recommendations, items, and the
server's own state (info, health, metrics, the explorer page). Each reads the shared
`Backend` and the loaded service through the dependencies of `sidrec.serve.backend`."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import sys
import time
from dataclasses import asdict
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi import Query as QueryParam
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from sidrec.api import Recommendations, Service
from sidrec.errors import ItemError, SidrecError
from sidrec.serve import schemas
from sidrec.serve.backend import BackendDep, FreshServiceDep, ServiceDep
from sidrec.serve.checks import check_cost
from sidrec.serve.contract import EVERY_ROUTE, answers
from sidrec.serve.guard import arrived
from sidrec.serve.http_errors import ApiError

log = logging.getLogger("sidrec.serve")

STATIC = resources.files("sidrec.serve") / "static"
# What `GET /v1/info` calls this process: opaque, so that it tells replicas apart without
# telling a caller the machine's name or the process id (the log says which is which).
REPLICA = secrets.token_hex(6)

recommend = APIRouter(responses={**EVERY_ROUTE, **answers(401, 408, 413, 422, 503, 504)})
items = APIRouter(responses={**EVERY_ROUTE, **answers(401, 503)})
status = APIRouter(responses=EVERY_ROUTE)


def respond(service: Service, recs: Recommendations, start: float) -> dict[str, Any]:
    """A `RecommendResponse`: the items described, those of infinite score left out."""
    infos = service.catalogue.describe([item for item, _ in recs])
    found = [{"id": i["id"], "score": score, "title": i["title"], "cold": i["cold"]}
             for i, (_, score) in zip(infos, recs, strict=True) if abs(score) != float("inf")]
    return {"items": found, "model": service.name,
            "took_ms": round((time.perf_counter() - start) * 1000, 3)}


# The answers are built as JSONResponse, so FastAPI does not validate them again
# (response_model documents them).


@recommend.post("/v1/recommend", response_model=schemas.RecommendResponse,
                summary="Top-k items for one history")
async def recommend_one(body: schemas.RecommendRequest, request: Request, b: BackendDep,
                        svc: ServiceDep) -> JSONResponse:
    start = time.perf_counter()
    query = await b.checked(body, svc)
    arrived(request.scope, b.worker)
    return JSONResponse(respond(svc, await b.run(query), start))


@recommend.post("/v1/recommend/batch", response_model=schemas.BatchResponse,
                summary="Several recommendation requests; results in the same order")
async def recommend_many(body: schemas.BatchRequest, request: Request, b: BackendDep,
                         svc: ServiceDep) -> JSONResponse:
    start = time.perf_counter()
    if len(body.requests) > b.settings.max_batch_requests:
        raise ApiError(400, f"{len(body.requests)} requests; the limit is "
                       f"{b.settings.max_batch_requests}", "requests")
    queries = [await b.checked(r, svc, f"requests[{n}].") for n, r in enumerate(body.requests)]
    check_cost(queries, svc, b.settings)
    arrived(request.scope, b.worker)
    results = await asyncio.gather(*(b.run(q) for q in queries))
    return JSONResponse({"results": [respond(svc, r, start) for r in results]})


@items.post("/v1/items", response_model=schemas.AddResponse,
            responses=answers(403, 408, 409, 413, 422, 504),
            summary="Add items live (encoder -> tokenizer -> catalogue; persisted). "
            "Idempotent by id: the same id and text again succeeds and adds nothing")
async def add(body: list[schemas.NewItem], b: BackendDep, svc: ServiceDep) -> dict[str, Any]:
    if len(body) > b.settings.max_add_items:
        raise ApiError(400, f"{len(body)} items; the limit is {b.settings.max_add_items}",
                       "items")
    if not svc.model.supports_new_items:
        raise ApiError(400, f"model {svc.name!r} ranks only items seen in training and "
                       "cannot take new items")
    new = [{"id": i.id, "text": i.text, "vector": i.vector} for i in body]
    try:
        added = await b.add_items(svc, new)
    except ItemError as e:  # the caller's: an id that exists, a missing vector, ...
        field = f"items[{e.row}]" + (f".{e.field}" if e.field else "")
        raise ApiError(409 if e.duplicate else 422 if e.field else 400, str(e),
                       field) from None
    except SidrecError as e:  # the server's: its run directory (paths only in the log)
        log.error("sidrec serve: POST /v1/items failed: %s", e)
        raise ApiError(500, "the server could not add the items: its run directory is not "
                       "in order (the server log says why); nothing was added") from None
    return {"added": added, "n_items": len(svc.catalogue)}


@items.get("/v1/items", response_model=schemas.SearchResponse, responses=answers(422),
           summary="Search items by title (empty q: the most popular)")
async def search(svc: FreshServiceDep, q: str = "",
                 limit: int = QueryParam(20, ge=1, le=100)) -> dict[str, Any]:
    return {"items": svc.catalogue.search(q, limit)}


@items.get("/v1/items/{item_id:path}", response_model=schemas.ItemInfo,
           responses=answers(404), summary="One item")
async def item(item_id: schemas.PathId, svc: FreshServiceDep) -> dict[str, Any]:
    found = svc.catalogue.item(item_id)
    if found is None:
        raise ApiError(404, f"no item {item_id!r}")
    return found


@status.get("/v1/info", response_model=schemas.Info, responses=answers(401, 503),
            summary="The model and the limits")
async def info(b: BackendDep, svc: FreshServiceDep) -> dict[str, Any]:
    return {**svc.info(), "replica": REPLICA, "limits": asdict(b.settings)}


@status.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@status.get("/readyz", response_model=schemas.Readiness, summary="The model is loaded (503 "
            "until then)", responses={503: {"model": schemas.Readiness,
                                            "description": "loading, restarting or failed"}})
async def readyz(b: BackendDep) -> JSONResponse:
    worker = b.worker
    if why := worker.failure():
        state = "failed" if worker.error else "restarting"
        return JSONResponse({"status": state, "error": why}, 503)
    if not worker.ready.is_set():
        return JSONResponse({"status": "loading"}, 503)
    svc = worker.service
    return JSONResponse({"status": "ready", "model": svc.name, "n_items": len(svc.catalogue)})


@status.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
async def prometheus(b: BackendDep) -> Response:
    return Response(b.metrics.render(), media_type=b.metrics.content_type)


@status.get("/", include_in_schema=False)
async def explorer() -> FileResponse:
    return FileResponse(str(STATIC / "index.html"))


def log_replica() -> None:
    """Which process `GET /v1/info`'s replica id stands for, in the server's log."""
    print(f"sidrec serve: replica {REPLICA} is pid {os.getpid()} on {socket.gethostname()}",
          file=sys.stderr, flush=True)


ROUTERS = (recommend, items, status)
