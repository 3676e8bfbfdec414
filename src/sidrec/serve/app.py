"""The FastAPI app of `sidrec serve`, put together from its parts.

    routes       the routers: recommendations, items, the server's state
    backend      what the routes share (worker, limits, metrics), and their dependencies
    checks       a recommendation request checked before it is queued
    guard        the middleware: body-size limit, request metrics, requests arriving
    http_errors  every answer other than 200 as one JSON body (see there for the codes)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from sidrec import __version__
from sidrec.api import Service
from sidrec.serve import schemas
from sidrec.serve.backend import Backend, RecommendFn
from sidrec.serve.guard import Guard
from sidrec.serve.http_errors import add_error_handlers
from sidrec.serve.metrics import Metrics
from sidrec.serve.routes import ROUTERS, STATIC
from sidrec.serve.settings import ServeSettings
from sidrec.serve.worker import InferenceWorker


def create_app(worker: InferenceWorker, settings: ServeSettings,
               recommend: RecommendFn | None = None) -> FastAPI:
    """The app over `worker` (which loads and holds the model). `recommend` answers one
    checked query; the default queues it for the worker's dynamic batching (Ray Serve
    passes its own, batched by `serve.batch`)."""
    metrics = Metrics()
    worker.on_call = metrics.batch_size.observe
    watch(metrics, worker)
    app = FastAPI(title="sidrec", version=__version__, lifespan=lifespan,
                  description="Recommendations from a trained sidrec model (TIGER, LIGER, "
                  "COBRA, ...): POST /v1/recommend; the explorer page is at /.",
                  responses={400: {"model": schemas.ErrorResponse},
                             422: {"model": schemas.ErrorResponse}})
    app.state.backend = Backend(worker, settings, metrics, recommend)
    app.add_middleware(Guard, max_body=settings.max_body_bytes, metrics=metrics, worker=worker)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The worker's thread runs while the app does."""
    worker = app.state.backend.worker
    worker.start()
    yield
    await asyncio.to_thread(worker.stop)


def watch(metrics: Metrics, worker: InferenceWorker) -> None:
    """The gauges, read at scrape time; those of the service are 0 while it loads."""

    def of(read: Callable[[Service], float]) -> Callable[[], float]:
        return lambda: float(read(worker.service)) if worker.service else 0.0

    metrics.watch(items=of(lambda s: len(s.catalogue)),
                  added=of(lambda s: len(s.catalogue.added)),
                  queue=lambda: float(worker.depth), invalid=of(lambda s: s.n_invalid),
                  arriving=lambda: float(worker.arriving))
