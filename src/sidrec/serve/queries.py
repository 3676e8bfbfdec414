"""A checked recommendation request (`Query`) and how a batch of them is answered with
as few model calls as possible (`run_queries`), in the server process or the model
process alike."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sidrec.api import Recommendations, Service
from sidrec.catalogue import LiveCatalogue
from sidrec.errors import SidrecError

log = logging.getLogger("sidrec.serve")


@dataclass(frozen=True)
class Query:
    """One recommendation request, checked (`checks.check_query`)."""

    history: tuple[str, ...]
    k: int = 10
    user_id: str | None = None
    exclude_seen: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    on_unknown: str | None = None

    def group(self) -> tuple[Any, ...]:
        """Queries with the same group share one model call."""
        return (json.dumps(self.options, sort_keys=True), self.k, self.exclude_seen,
                self.on_unknown)


def run_queries(service: Service, queries: list[Query],
                on_call: Callable[[int], None] | None = None) -> list[Recommendations | Exception]:
    """Answer `queries` with one `recommend_batch` per group; a failing group is retried
    query by query, so one bad query fails alone. `on_call(rows)` sees every model call."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, q in enumerate(queries):
        groups.setdefault(q.group(), []).append(i)
    out: list[Recommendations | Exception] = [SidrecError("not run")] * len(queries)
    for rows in groups.values():
        first = queries[rows[0]]
        try:
            recs = service.recommend_batch(
                [queries[i].history for i in rows], first.k, first.exclude_seen,
                first.options or None, users=[queries[i].user_id for i in rows],
                on_unknown=first.on_unknown)
            if on_call:
                on_call(len(rows))
            for i, r in zip(rows, recs, strict=True):
                out[i] = r
        except Exception as e:  # each query gets its own answer
            if len(rows) == 1:
                out[rows[0]] = e
            else:
                for i in rows:
                    out[i] = run_queries(service, [queries[i]], on_call)[0]
    return out


def refresh_added(catalogue: LiveCatalogue) -> None:
    """Read the items other processes added to the run; serving goes on with the catalogue
    it has if the file cannot be read."""
    try:
        catalogue.refresh()
    except Exception as e:
        log.warning("sidrec serve: could not read the added items: %s", e)
