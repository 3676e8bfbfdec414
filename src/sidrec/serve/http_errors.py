"""Every answer other than 200 as one JSON body, `{"error": "...", "field": "..."}`.

422 when the body has the wrong shape (FastAPI's validation; `detail` lists every
problem), 400 when a value is out of range or unknown (k, history length, an unknown item
id, an unknown or out-of-range inference option), 404 for an unknown item, 409 for an item
id that exists, 413 for a body over `max_body_bytes`, 503 while the model loads or when
the queue is full, 504 when a result takes longer than `timeout_s`. No traceback is ever
sent; an unexpected failure is a 500 saying so, and it is logged.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("sidrec.serve")


class ApiError(Exception):
    """An answer other than 200, with the request field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def error_response(status: int, message: str, field: str | None = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "field": field, **extra}, status_code=status)


def field_of(problem: dict[str, Any], list_body: str) -> str:
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


async def api_error(request: Request, e: ApiError) -> JSONResponse:
    return error_response(e.status, e.message, e.field)


async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
    """422 naming the first field at fault; `detail` lists each field once."""
    rows = "items" if request.url.path == "/v1/items" else "body"
    problems = list({field_of(p, rows): {"field": field_of(p, rows), "message": p["msg"],
                                         "type": p["type"]} for p in e.errors()}.values())
    first = problems[0] if problems else {"field": None, "message": "invalid request"}
    return error_response(422, f"{first['field'] or 'body'}: {first['message']}",
                          first["field"], detail=problems)


async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own errors, and the router's 404 / 405."""
    return error_response(e.status_code, str(e.detail))


async def crashed(request: Request, e: Exception) -> JSONResponse:
    log.exception("sidrec serve: %s %s failed", request.method, request.url.path)
    return error_response(500, f"internal error ({type(e).__name__}); the server log has it")


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, crashed)
