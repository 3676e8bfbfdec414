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
    skipped), an inference option the model does not take or one over `max_option`, a
    request whose max(beam, k) is over `max_cost`."""
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
    query = Query(history, body.k, user, body.exclude_seen, dict(body.options),
                  body.on_unknown)
    beam, name = beam_of(query, service)
    if max(beam, query.k) > settings.max_cost:
        raise ApiError(400, f"this request costs {max(beam, query.k)} (max(beam, k)); the "
                       f"limit is max_cost={settings.max_cost}",
                       f"{where}{f'options.{name}' if beam > query.k else 'k'}")
    return query


def beam_of(query: Query, service: Service) -> tuple[int, str]:
    """(the widest beam `query` decodes with, its option's name): its own option, else the
    model's; LIGER's hybrid mode decodes with `hybrid_beam`. (0, "beam"): no beam."""
    inference = service.inference_with(query.options)
    widths = {"beam": getattr(inference, "beam", 0) or 0}
    if getattr(inference, "mode", "") == "hybrid":
        widths["hybrid_beam"] = getattr(inference, "hybrid_beam", 0) or 0
    name = max(widths, key=lambda n: widths[n])
    return int(widths[name]), name


def check_cost(queries: list[Query], service: Service, settings: ServeSettings) -> None:
    """The work of a batch request: the sum of max(beam, k) over its requests, at most
    `max_cost` (400 naming `requests` past it)."""
    total = sum(max(beam_of(q, service)[0], q.k) for q in queries)
    if total > settings.max_cost:
        raise ApiError(400, f"these {len(queries)} requests cost {total} (the sum of "
                       f"max(beam, k) over them); the limit is max_cost="
                       f"{settings.max_cost}: send fewer at a time, or smaller beams",
                       "requests")
