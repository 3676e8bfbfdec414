"""What the routes share (`Backend`), and the FastAPI dependencies that hand it out.

`create_app` puts one `Backend` on `app.state`; a route asks for it (`BackendDep`) or for
the loaded service (`ServiceDep`, a 503 until the model is loaded). A test mounts a router
on an app of its own and overrides `backend` with `app.dependency_overrides`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from sidrec.api import Recommendations, Service
from sidrec.errors import SidrecError
from sidrec.serve import schemas
from sidrec.serve.checks import check_query
from sidrec.serve.http_errors import ApiError
from sidrec.serve.metrics import Metrics
from sidrec.serve.model_process import ModelStopped
from sidrec.serve.queries import Query
from sidrec.serve.settings import ServeSettings
from sidrec.serve.worker import InferenceWorker, Overloaded

log = logging.getLogger("sidrec.serve")

RecommendFn = Callable[[Query], Awaitable[Recommendations]]


@dataclass
class Backend:
    """The worker (which loads and holds the service, and runs every model call), the
    limits, the metrics, and `answer`: how one checked query is answered (None: queued
    for the worker's dynamic batching; Ray Serve passes its own, batched by
    `serve.batch`)."""

    worker: InferenceWorker
    settings: ServeSettings
    metrics: Metrics
    answer: RecommendFn | None = None

    def service(self) -> Service:
        """The loaded service; 503 while it loads, or when no model can answer."""
        if why := self.worker.failure():
            raise ApiError(503, why)
        if not self.worker.ready.is_set() or self.worker.service is None:
            raise ApiError(503, "the model is loading; retry shortly (GET /readyz)")
        return self.worker.service

    async def run(self, query: Query) -> Recommendations:
        """The answer to a checked query; 503 when the queue is full or the model process
        stopped, 504 after `timeout_s`, 400 for a query the model refuses."""
        try:
            return await (self.answer or self._queued)(query)
        except (Overloaded, ModelStopped) as e:
            raise ApiError(503, str(e)) from None
        except TimeoutError:
            raise ApiError(504, f"no result within {self.settings.timeout_s} s") from None
        except SidrecError as e:
            raise ApiError(400, str(e)) from None

    async def _queued(self, query: Query) -> Recommendations:
        future = self.worker.submit(query)
        return await asyncio.wait_for(asyncio.wrap_future(future), self.settings.timeout_s)

    async def between_batches(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the inference thread: 503 when its queue is full, 504 after
        timeout_s (the call itself goes on)."""
        try:
            future = self.worker.call(fn, *args)
            return await asyncio.wait_for(asyncio.wrap_future(future), self.settings.timeout_s)
        except Overloaded as e:
            raise ApiError(503, str(e)) from None
        except TimeoutError:
            raise ApiError(504, f"no result within {self.settings.timeout_s} s; the server "
                           "goes on with it") from None

    async def checked(self, body: schemas.RecommendRequest, service: Service,
                      where: str = "") -> Query:
        """`check_query`; an unknown history item may have been added by another process
        on this run directory (a Ray Serve replica, another server), so the run's added
        items are read once before it is called unknown."""
        try:
            return check_query(body, service, self.settings, where)
        except ApiError as e:
            if not (e.field or "").startswith(f"{where}history["):
                raise
        try:
            await self.between_batches(service.catalogue.refresh)
        except SidrecError as e:  # the check below answers with the catalogue as it is
            log.warning("sidrec serve: could not read the added items: %s", e)
        return check_query(body, service, self.settings, where)


def backend(request: Request) -> Backend:
    return request.app.state.backend


BackendDep = Annotated[Backend, Depends(backend)]


def service(b: BackendDep) -> Service:
    return b.service()


ServiceDep = Annotated[Service, Depends(service)]
