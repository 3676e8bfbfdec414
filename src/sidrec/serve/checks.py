"""A recommendation request checked against the server's limits, the catalogue and the
model's inference settings, before it is queued (`check_query`)."""

from __future__ import annotations

from sidrec.api import Service
from sidrec.errors import SidrecError
from sidrec.serve import schemas
from sidrec.serve.http_errors import ApiError
from sidrec.serve.queries import Query
from sidrec.serve.settings import ServeSettings


def check_query(body: schemas.RecommendRequest, service: Service, settings: ServeSettings,
                where: str = "") -> Query:
    """`body` as a `Query`; anything wrong is a 400 naming the field (prefixed by
    `where`): k or the history past the limits, an unknown item id (unless it is
    skipped), an inference option the model does not take or one over `max_option`."""
    if not 1 <= body.k <= settings.max_k:
        raise ApiError(400, f"k={body.k}: must be between 1 and {settings.max_k}", f"{where}k")
    if len(body.history) > settings.max_history:
        raise ApiError(400, f"history has {len(body.history)} items; the limit is "
                       f"{settings.max_history}", f"{where}history")
    history = tuple(str(i) for i in body.history)
    if (body.on_unknown or service.on_unknown) == "error":
        for n, item in enumerate(history):
            if item not in service.catalogue:
                raise ApiError(400, f"unknown item id {item!r}; add it with POST /v1/items, "
                               "or send on_unknown=skip", f"{where}history[{n}]")
    for key, value in body.options.items():
        try:
            service.inference_with({key: value})  # unknown, mistyped or out of range
        except SidrecError as e:
            raise ApiError(400, str(e), f"{where}options.{key}") from None
        if not isinstance(value, bool) and isinstance(value, int | float) \
                and value > settings.max_option:
            raise ApiError(400, f"options.{key}={value}: the limit is {settings.max_option}",
                           f"{where}options.{key}")
    user = None if body.user_id is None else str(body.user_id)
    return Query(history, body.k, user, body.exclude_seen, dict(body.options), body.on_unknown)
