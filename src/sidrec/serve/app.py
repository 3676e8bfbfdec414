"""The FastAPI app of `sidrec serve`, put together from its parts.

    routes       the routers: recommendations, items, the server's state
    backend      what the routes share (worker, limits, metrics), and their dependencies
    checks       a recommendation request checked before it is queued
    guard        the outer middleware: security headers, body-size limit and read
                 deadline, request metrics, requests arriving
    access       the inner middleware: the Host check, API keys, the write rule
    contract     the OpenAPI schema: every status of each route, the limits, the keys
    http_errors  every answer other than 200 as one JSON body (see there for the codes)

`/docs` serves Swagger UI from the `fastapi-offline` package (no CDN).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.routing import Mount, Route

from sidrec import __version__
from sidrec.api import Service
from sidrec.serve import contract
from sidrec.serve.access import Access, Gate
from sidrec.serve.backend import Backend, RecommendFn
from sidrec.serve.guard import Guard
from sidrec.serve.http_errors import add_error_handlers
from sidrec.serve.metrics import Metrics
from sidrec.serve.routes import ROUTERS, STATIC, log_replica
from sidrec.serve.settings import ServeSettings
from sidrec.serve.worker import InferenceWorker


def create_app(worker: InferenceWorker, settings: ServeSettings,
               recommend: RecommendFn | None = None, access: Access | None = None) -> FastAPI:
    """The app over `worker` (which loads and holds the model). `recommend` answers one
    checked query; the default queues it for the worker's dynamic batching (Ray Serve
    passes its own, batched by `serve.batch`). `access`: who may call it (default: no
    keys, bound to 127.0.0.1, answering for localhost only)."""
    access = access or Access()
    metrics = Metrics()
    worker.on_call = metrics.batch_size.observe
    watch(metrics, worker)
    app = FastAPIOffline(title="sidrec", version=__version__, lifespan=lifespan,
                         description="Recommendations from a trained sidrec model (TIGER, "
                         "LIGER, COBRA, ...): POST /v1/recommend; the explorer page is at /.")
    app.state.backend = Backend(worker, settings, metrics, recommend)
    app.add_middleware(Gate, access=access)  # inner: Guard's metrics count its refusals
    app.add_middleware(Guard, max_body=settings.max_body_bytes, metrics=metrics, worker=worker,
                       body_timeout_s=settings.body_timeout_s)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.state.endpoints = endpoints(app)
    contract.install(app, settings, access, lambda: vector_rule(worker))
    return app


def endpoints(app: FastAPI) -> list[tuple[re.Pattern, tuple[str, ...]]]:
    """(path regex, methods) of every endpoint: what a 405's `Allow` lists, the methods
    of all the routes of its path (Starlette's names those of the first route only)."""
    found = []
    for routes in (app.router.routes, *(router.routes for router in ROUTERS)):
        for r in routes:
            if isinstance(r, APIRoute | Route) and r.methods:
                found.append((r.path_regex, tuple(r.methods)))
            elif isinstance(r, Mount) and isinstance(r.app, StaticFiles):
                found.append((r.path_regex, ("GET", "HEAD")))
    return found


def vector_rule(worker: InferenceWorker) -> contract.VectorRule | None:
    """What a new item's `vector` must be (for the schema), None until the model loads."""
    service = worker.service
    if service is None:
        return None
    return service.catalogue.vector_rule() if service.model.supports_new_items \
        else (None, False)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The worker's thread runs while the app does (and the encoder process, from the
    first add on)."""
    backend = app.state.backend
    log_replica()
    backend.worker.start()
    yield
    await asyncio.to_thread(backend.worker.stop)
    await asyncio.to_thread(backend.close)


def watch(metrics: Metrics, worker: InferenceWorker) -> None:
    """The gauges, read at scrape time; those of the service are 0 while it loads."""

    def of(read: Callable[[Service], float]) -> Callable[[], float]:
        return lambda: float(read(worker.service)) if worker.service else 0.0

    metrics.watch(items=of(lambda s: len(s.catalogue)),
                  added=of(lambda s: len(s.catalogue.added)),
                  queue=lambda: float(worker.depth), invalid=of(lambda s: s.n_invalid),
                  arriving=lambda: float(worker.arriving))
