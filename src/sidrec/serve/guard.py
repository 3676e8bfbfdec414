"""The outer ASGI middleware, in front of every route and of `access.Gate` (`Guard`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException

from sidrec.serve.access import SECURITY_HEADERS
from sidrec.serve.http_errors import error_response
from sidrec.serve.metrics import Metrics
from sidrec.serve.worker import InferenceWorker

# Set in a recommendation request's scope while it is on its way to the worker's queue.
ARRIVING = "sidrec.arriving"


class Guard:
    """ASGI middleware: the security headers on every answer, the body-size limit (413),
    the body-read deadline (408: each part of a body within `body_timeout_s`), the
    request metrics, and the count of recommendation requests on their way to the worker
    (`InferenceWorker.arriving`): a request counts once its whole body is in, so a client
    that stalls mid-body never makes a batch wait for it."""

    def __init__(self, app: Any, max_body: int, metrics: Metrics,
                 worker: InferenceWorker, body_timeout_s: float = 10.0) -> None:
        self.app, self.max_body, self.metrics, self.worker = app, max_body, metrics, worker
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]
        headers = dict(scope.get("headers") or [])
        try:
            length = int(headers.get(b"content-length", b"0"))
        except ValueError:
            length = 0
        seen, done = [0], [False]
        counts = scope["path"].startswith("/v1/recommend")

        async def limited() -> dict:
            if done[0]:  # the body is in: what is left to hear is a disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within "
                                    f"{self.body_timeout_s:g} s") from None
            seen[0] += len(message.get("body", b""))
            if seen[0] > self.max_body:
                raise HTTPException(413, f"request body over {self.max_body} bytes")
            done[0] = message["type"] != "http.request" or not message.get("more_body")
            if done[0] and counts and message["type"] == "http.request":
                scope[ARRIVING] = True
                self.worker.arriving += 1
            return message

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                names = {name.lower() for name, _ in message.get("headers") or ()}
                message = {**message, "headers": [
                    *(message.get("headers") or ()),
                    *((n, v) for n, v in SECURITY_HEADERS if n not in names)]}
            await send(message)

        try:
            if length > self.max_body:
                too_large = error_response(413, f"request body over {self.max_body} bytes")
                await too_large(scope, receive, sending)
            else:
                await self.app(scope, limited, sending)
        finally:
            arrived(scope, self.worker)
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(route, status[0], time.perf_counter() - start)


def arrived(scope: dict, worker: InferenceWorker) -> None:
    """This request is about to be queued (or is over): no longer on its way."""
    if scope.pop(ARRIVING, False):
        worker.arriving -= 1
