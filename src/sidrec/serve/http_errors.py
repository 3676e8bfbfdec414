"""Every answer other than 200 as one JSON body, `{"error": "...", "field": "..."}`.

422 when the body has the wrong shape (FastAPI's validation; `detail` lists every
problem), 400 when a value is out of range or unknown (k, history length, an unknown item
id, an unknown or out-of-range inference option, an id or text that breaks the rules of
`schemas`: a lone surrogate, a control character, ...), 401 / 403 without a key or with a
read-only one (`access`), 404 for an unknown item, 405 with `Allow` for a method a path
does not take, 409 for an item id that exists, 413 for a body over `max_body_bytes`, 503
while the model loads or when the queue is full, 504 when a result takes longer than
`timeout_s`. No traceback or server path is ever sent; an unexpected failure, or one of
the server's own files, is a 500 saying so, and the log has the details. The body is
ASCII JSON (`\\uXXXX` escapes), so no string a caller sent can make it unencodable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
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


# pydantic error types that mean "a value the rules refuse" (400), not "a wrong shape"
VALUE_ERRORS = frozenset({"sidrec_value"})


class ErrorJSON(JSONResponse):
    """JSON in ASCII: a lone surrogate echoed from the request cannot break it."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(status: int, message: str, field: str | None = None,
                   headers: Mapping[str, str] | None = None, **extra: Any) -> JSONResponse:
    return ErrorJSON({"error": message, "field": field, **extra}, status_code=status,
                     headers=dict(headers) if headers else None)


def field_of(problem: dict[str, Any], list_body: str) -> str:
    """("body", "requests", 0, "k") -> "requests[0].k", ("query", "limit") -> "limit"; the
    rows of a list body are `list_body`[n]; a JSON syntax error is the body's."""
    loc = tuple(problem.get("loc") or ())
    if problem.get("type") == "json_invalid" or loc in ((), ("body",)):
        return "body"
    if loc[-1] == "[key]":  # a dict's key at fault: the dict is named (the key may be garbled)
        loc = loc[:-2]
    out = ""
    for part in loc[1:] if loc[0] in ("body", "query", "path") else loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    out = out.lstrip(".")
    return f"{list_body}{out}" if out.startswith("[") else out


async def api_error(request: Request, e: ApiError) -> JSONResponse:
    return error_response(e.status, e.message, e.field)


async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
    """422 naming the first field at fault, or 400 when every problem is a value the rules
    refuse (`VALUE_ERRORS`); `detail` lists each field once."""
    rows = "items" if request.url.path == "/v1/items" else "body"
    problems = list({field_of(p, rows): {"field": field_of(p, rows), "message": p["msg"],
                                         "type": p["type"]} for p in e.errors()}.values())
    first = problems[0] if problems else {"field": None, "message": "invalid request"}
    status = 400 if problems and all(p["type"] in VALUE_ERRORS for p in problems) else 422
    return error_response(status, f"{first['field'] or 'body'}: {first['message']}",
                          first["field"], detail=problems)


async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own errors, and the router's 404 / 405 (with `Allow`: every method of
    the path, over all its routes, where `app.state.endpoints` lists them)."""
    headers = dict(e.headers or {})
    if e.status_code == 405 and (methods := allowed_methods(request)):
        headers["Allow"] = ", ".join(methods)
    return error_response(e.status_code, str(e.detail), headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """The methods of every endpoint whose path matches the request's;
    `app.state.endpoints`: (path regex, methods) pairs, set by `create_app`."""
    methods: set[str] = set()
    for pattern, route_methods in getattr(request.app.state, "endpoints", ()):
        if pattern.match(request.scope["path"]):
            methods |= set(route_methods)
    return sorted(methods)


async def crashed(request: Request, e: Exception) -> JSONResponse:
    log.exception("sidrec serve: %s %s failed", request.method, request.url.path)
    return error_response(500, f"internal error ({type(e).__name__}); the server log has it")


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, crashed)
