"""What the routes share (`Backend`), and the FastAPI dependencies that hand it out.

`create_app` puts one `Backend` on `app.state`; a route asks for it (`BackendDep`), for
the loaded service (`ServiceDep`, a 503 until the model is loaded), or for the service
with what other processes added to the run applied (`FreshServiceDep`: item lookups,
search, info). A test mounts a router on an app of its own and overrides `backend` or
`service` with `app.dependency_overrides`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from sidrec.api import Recommendations, Service
from sidrec.errors import SidrecError
from sidrec.serve import schemas
from sidrec.serve.checks import check_query
from sidrec.serve.encoder_process import EncoderProcess
from sidrec.serve.http_errors import ApiError
from sidrec.serve.metrics import Metrics
from sidrec.serve.model_process import ModelStopped
from sidrec.serve.queries import Query, refresh_added
from sidrec.serve.settings import ServeSettings
from sidrec.serve.worker import InferenceWorker, Overloaded

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
    # Adds run here, one at a time, never on the inference thread: their encoding (in
    # `encoder`, the encoder process, unless encoder_process=false) leaves the model free,
    # and only the swap of the grown catalogue waits for the batch in progress.
    adds: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(
        1, thread_name_prefix="sidrec-add"))
    encoder: EncoderProcess | None = None

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

    async def add_items(self, service: Service, items: list[dict[str, Any]]) -> list[str]:
        """`service.catalogue.add(items)` on the add thread; 504 after timeout_s (the add
        goes on, and sending it again is safe: the same items again succeed)."""
        if self.settings.encoder_process and self.encoder is None:
            self.encoder = EncoderProcess(deadline_s=self.settings.model_timeout_s)
            service.catalogue.encode_texts_with(self.encoder)
        future = asyncio.wrap_future(self.adds.submit(service.catalogue.add, items))
        try:  # shielded: a 504 leaves the add to finish, though nobody hears of it
            return await asyncio.wait_for(asyncio.shield(future), self.settings.timeout_s)
        except TimeoutError:
            raise ApiError(504, f"no result within {self.settings.timeout_s} s; the server "
                           "goes on with it (sending it again is safe)") from None

    def close(self) -> None:
        """Stop the encoder process; an add in progress finishes first."""
        self.adds.shutdown(wait=True, cancel_futures=True)
        if self.encoder is not None:
            self.encoder.stop()

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
        await refreshed(service)  # an unreadable file: the check below answers as it is
        return check_query(body, service, self.settings, where)


def backend(request: Request) -> Backend:
    return request.app.state.backend


BackendDep = Annotated[Backend, Depends(backend)]


def service(b: BackendDep) -> Service:
    return b.service()


ServiceDep = Annotated[Service, Depends(service)]


async def refreshed(service: Service) -> Service:
    """`service` with the items other processes (servers, Ray Serve replicas) added to
    the run applied: a stat on the event loop when nothing changed, else a read on a
    thread (it waits for the batch in progress to swap the grown catalogue in)."""
    if service.catalogue.stale():
        await asyncio.to_thread(refresh_added, service.catalogue)
    return service


async def fresh_service(svc: ServiceDep) -> Service:
    return await refreshed(svc)


FreshServiceDep = Annotated[Service, Depends(fresh_service)]
