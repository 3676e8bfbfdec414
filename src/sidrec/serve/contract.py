"""The OpenAPI contract of `sidrec serve` (`GET /openapi.json`, rendered at `/docs`).

Each route lists every status it answers (`answers`); the app's schema then takes this
server's own limits (k, history, the rows of a batch or an add: past them, 400) and, when
it has API keys, the bearer scheme on every `/v1` route (`install`). What a schema cannot
say stays a 400 of the contract: an id the catalogue does not hold, an inference option
the model does not take or one over `max_option`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from sidrec.serve import schemas
from sidrec.serve.access import Access
from sidrec.serve.settings import ServeSettings

WHY = {
    400: "a value the rules or the limits refuse (the field is named), an unknown id, or a "
         "Host header this server does not answer for",
    401: "no API key, or an unknown one (only when the server has keys)",
    403: "a read-only key, or a server on a public address without keys, refusing a write",
    404: "no such item",
    408: "the request body did not arrive within body_timeout_s",
    409: "an item with this id and another text exists (nothing was added; the same id "
         "and text again is a retry, and succeeds)",
    413: "the body is over max_body_bytes",
    422: "the body or a parameter has the wrong shape (`detail` lists every problem)",
    500: "the server's own fault (e.g. its run directory); its log says why",
    503: "the model is loading or restarting, or the queue is full; retry",
    504: "no result within timeout_s (an add goes on: GET /v1/items/{id} tells, and "
         "sending it again is safe)",
}


def answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a route: each status with the error body and why it comes."""
    return {s: {"model": schemas.ErrorResponse, "description": WHY[s]} for s in statuses}


# Every route may answer these (400: the Host check; 500: an unexpected failure).
EVERY_ROUTE = answers(400, 500)


VectorRule = tuple[int | None, bool]  # LiveCatalogue.vector_rule


def install(app: FastAPI, settings: ServeSettings, access: Access,
            vectors: Callable[[], VectorRule | None]) -> None:
    """`app.openapi` builds the schema with `settings`' limits, `access`' keys and the
    run's `vectors` rule (None until the model is loaded: built again until it is)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            with_limits(schema, settings)
            if access.keys:
                with_keys(schema)
            if (rule := vectors()) is None:
                return schema
            with_vectors(schema, *rule)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _model(schema: dict[str, Any], name: str) -> dict[str, Any]:
    found = schema["components"]["schemas"]
    return found.get(name) or found[f"{name}-Input"]


def with_limits(schema: dict[str, Any], settings: ServeSettings) -> None:
    """The settings' limits in the request schemas (the server answers 400 past them)."""
    request = _model(schema, "RecommendRequest")["properties"]
    request["k"].update(minimum=1, maximum=settings.max_k)
    request["history"]["maxItems"] = settings.max_history
    _model(schema, "BatchRequest")["properties"]["requests"]["maxItems"] = \
        settings.max_batch_requests
    add = schema["paths"]["/v1/items"]["post"]["requestBody"]["content"]["application/json"]
    add["schema"]["maxItems"] = settings.max_add_items


def with_vectors(schema: dict[str, Any], dim: int | None, required: bool) -> None:
    """A new item's `vector`: `dim` values; required when the run's vectors came from a
    file (`sidrec embed --vectors`)."""
    item = _model(schema, "NewItem")
    vector = item["properties"]["vector"]
    array = next(s for s in vector.get("anyOf", [vector]) if s.get("type") == "array")
    if dim is not None:
        array.update(minItems=dim, maxItems=dim)
    if required:
        item["properties"]["vector"] = {**array, "description": vector.get("description")}
        item["required"] = sorted({*item.get("required", []), "vector"})


def with_keys(schema: dict[str, Any]) -> None:
    """The bearer scheme, required on every `/v1` route."""
    schema.setdefault("components", {})["securitySchemes"] = {"apiKey": {
        "type": "http", "scheme": "bearer",
        "description": "an API key of the server's (--api-key-file, SIDREC_API_KEYS)"}}
    for path, operations in schema["paths"].items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                operation["security"] = [{"apiKey": []}]
