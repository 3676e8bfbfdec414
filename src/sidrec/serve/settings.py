"""`sidrec serve` settings: request limits, dynamic batching, the inference worker.

Every field can be set on the command line as `key=value` (`sidrec serve MODEL_DIR
max_wait_ms=5 max_k=50`); the checks below make a bad value a one-line error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from sidrec.errors import SidrecError


@dataclass(frozen=True)
class ServeSettings:
    # -- request limits (past them: 400, or 413 for the body)
    max_k: int = 100  # largest k a request may ask for
    max_history: int = 200  # items in one request's history (the model reads its last 20)
    max_batch_requests: int = 64  # requests in one POST /v1/recommend/batch
    max_add_items: int = 1000  # items in one POST /v1/items
    max_body_bytes: int = 1 << 20  # request body size
    max_option: int = 1000  # largest integer inference option (beam, hybrid_k, ...)
    # the work one request may ask for: the sum over its rows (1, or a batch's requests)
    # of max(beam, k), beam being the request's own or the model's (400 past it)
    max_cost: int = 8192
    # -- dynamic batching: concurrent requests merged into one `recommend` call
    batching: bool = True  # False: one model call per request (for comparison)
    max_batch: int = 64  # rows of one model call; a fuller queue flushes at once
    max_wait_ms: float = 10.0  # wait at most this long for requests on their way
    max_queue: int = 4096  # requests waiting for the worker before 503 (overload)
    timeout_s: float = 30.0  # a request waits this long for its result before 504
    # -- the inference worker (one thread runs every model call)
    # true: the model's calls in a process of its own, so that the HTTP side and the
    # model's Python code between torch ops never wait for one interpreter lock (on 2
    # cores 1.03-1.17x the requests/s at 64 concurrent requests), at the cost of a second
    # copy of the model in memory (on a GPU, in GPU memory). Off by default: one process
    # holds the model.
    model_process: bool = False
    # A model process that dies, or answers no batch within model_timeout_s (it is then
    # killed), is replaced, at most model_restarts times in a row without a batch
    # answered between. The deadline is well past timeout_s: a slow batch is no hang.
    model_timeout_s: float = 120.0
    model_restarts: int = 3
    threads: int = 0  # torch CPU threads; 0 = cores - 1 (at least 1, at most 4)
    # true: POST /v1/items encodes texts in a process of its own with one torch thread
    # (started by the first add), so a long add never holds recommendations back
    encoder_process: bool = True
    # -- connections (uvicorn; body_timeout_s also on Ray Serve)
    header_timeout_s: float = 10.0  # a request's headers must arrive within this (closed)
    body_timeout_s: float = 10.0  # then each part of its body (408)
    keep_alive_s: float = 5.0  # an idle kept-alive connection is closed after this
    max_connections: int = 1024  # connections and requests in flight; past it: 503
    device: str = "auto"  # auto | cpu | cuda[:N]
    on_unknown: str = "error"  # an unknown history item: 400 (error) or ignored (skip)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            lowest = 0 if f.name in ("threads", "max_wait_ms", "model_restarts") else 1
            if value < lowest:
                raise SidrecError(f"serve setting {f.name}={value}: must be >= {lowest}")
        if self.on_unknown not in ("error", "skip"):
            raise SidrecError(f"serve setting on_unknown={self.on_unknown!r}: error or skip")

    @property
    def model_threads(self) -> int:
        """Torch threads of the model: `threads`, or all cores but one (at most 4), so
        that the HTTP side keeps a core (on 2 cores: 1)."""
        return self.threads or max(1, min(4, (os.cpu_count() or 1) - 1))

    @property
    def rows_per_call(self) -> int:
        """Requests merged into one model call (1 with batching off)."""
        return self.max_batch if self.batching else 1


def setting_names() -> set[str]:
    return {f.name for f in fields(ServeSettings)}
