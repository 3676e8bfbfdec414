"""Prometheus metrics of one server (`GET /metrics`), in a registry of its own.

    sidrec_requests_total{route, status}      HTTP requests answered
    sidrec_request_seconds{route}             latency histogram (queueing included)
    sidrec_batch_size                         rows per model call (dynamic batching)
    sidrec_catalogue_items, sidrec_added_items  catalogue size, items added after training
    sidrec_queue_depth                        queries waiting for the inference worker
    sidrec_requests_arriving                  recommendation requests not queued yet
    sidrec_invalid_sids_total                 generated SIDs that were no catalogue item
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sidrec_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("sidrec_request_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("sidrec_batch_size", "Rows per model call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.items = Gauge("sidrec_catalogue_items", "Items in the catalogue", registry=r)
        self.added = Gauge("sidrec_added_items", "Items added after training", registry=r)
        self.queue = Gauge("sidrec_queue_depth", "Queries waiting for the worker", registry=r)
        self.arriving = Gauge("sidrec_requests_arriving",
                              "Recommendation requests received and not queued yet", registry=r)
        self.invalid = Gauge("sidrec_invalid_sids_total",
                             "Generated SIDs that were no catalogue item", registry=r)

    def watch(self, items: Callable[[], float], added: Callable[[], float],
              queue: Callable[[], float], invalid: Callable[[], float],
              arriving: Callable[[], float]) -> None:
        """Gauges read at scrape time."""
        self.arriving.set_function(arriving)
        self.items.set_function(items)
        self.added.set_function(added)
        self.queue.set_function(queue)
        self.invalid.set_function(invalid)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
