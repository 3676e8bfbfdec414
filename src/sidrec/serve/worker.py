"""Dynamic batching on one inference thread, and the model in a process of its own.

HTTP handlers put `Query`s on a queue and await their futures; one worker thread takes
the first waiting query, collects more while others are on their way (requests the HTTP
side has received but not queued yet: `arriving`), for up to `max_wait_ms` or until
`max_batch` are in hand, and answers them with as few `Service.recommend_batch` calls as
possible: one per group of queries that can share a call (same k, exclude_seen,
on_unknown and inference options; user ids and histories may differ per row). Every
model call runs on this one thread, so torch's intra-op threads (`threads`) are never
oversubscribed by concurrent requests, and a catalogue swap (`add_items`, run on the
same thread) never meets a batch halfway.

A grouped call returns what `recommend_batch` returns for those rows offline (the model
contract is row-independent; tests/test_serve_batching.py checks it within 1e-5).

With `model_process=true` the worker thread hands each batch to a `ModelProcess`,
a child process with its own copy of the model, and waits for the answers. In one
process the HTTP thread and the model's Python code between torch ops took turns on one
interpreter lock: the server never used more than one core, and its model waited for work
half of the time (benchmarks/bench_serve.py, README "Serving"). The server process keeps
its own `Service` for everything else (checks, item lookups, `add_items`); items it adds
are persisted before the call returns, and the model process reads them from the run
directory (`Service.refresh`) before every batch, so the next request sees them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from sidrec.api import Recommendations, Service
from sidrec.errors import SidrecError
from sidrec.serve.settings import ServeSettings

log = logging.getLogger("sidrec.serve")


@dataclass(frozen=True)
class Query:
    """One recommendation request, checked (`app.check_query`)."""

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


class Overloaded(Exception):
    """The queue is full: the server answers 503."""


class ModelStopped(Exception):
    """The model process is gone: the server answers 503 from then on."""


@dataclass
class _Job:
    future: Future
    query: Query | None = None  # a recommendation, batched
    call: Callable[[], Any] | None = None  # anything else, run alone (add_items)


_STOP = _Job(Future())


class ModelProcess:
    """A child process holding its own copy of the model; `answer` runs `run_queries`
    there. `load` must be picklable (`sidrec.serve.Loader`)."""

    def __init__(self, load: Callable[[], Service], threads: int) -> None:
        context = multiprocessing.get_context("spawn")  # fork would copy torch's threads
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_model_process, args=(child, load, threads),
                                        name="sidrec-model", daemon=True)
        self._process.start()
        child.close()
        try:
            status, message = self._receive()
        except ModelStopped as e:
            status, message = "failed", str(e)
        if status != "ready":
            raise SidrecError(message)

    def answer(self, queries: list[Query]) -> tuple[list[Recommendations | Exception],
                                                     list[int], int]:
        """(answers, the rows of each model call, the model's invalid-SID count so far)."""
        try:
            self._conn.send(queries)
        except OSError:  # a broken pipe: the process is gone
            raise self._stopped() from None
        return self._receive()

    def _receive(self) -> Any:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise self._stopped() from None

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def _stopped(self) -> ModelStopped:
        self._process.join(1.0)
        return ModelStopped(self.stopped_message())

    def stopped_message(self) -> str:
        return (f"the model process stopped (exit code {self._process.exitcode}); restart "
                "sidrec serve")

    def stop(self, timeout: float) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()


def _model_process(conn: Any, load: Callable[[], Service], threads: int) -> None:
    # Ctrl-C reaches the whole process group; the server stops this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        service = load()
        torch.set_num_threads(threads)
    except Exception as e:  # the server reports it (/readyz) and exits
        conn.send(("failed", str(e) if isinstance(e, SidrecError) else f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", ""))
    while True:
        try:
            queries = conn.recv()
        except EOFError:  # the server process is gone
            return
        if queries is None:
            return
        try:
            service.refresh()  # the items the server process added since the last batch
        except Exception as e:  # serving goes on with the catalogue it has
            log.warning("sidrec serve: could not read the added items: %s", e)
        calls: list[int] = []
        try:
            answers = [plain(a) for a in run_queries(service, queries, calls.append)]
        except Exception as e:  # the server answers this batch with it and goes on
            log.exception("sidrec serve: the model process failed on a batch")
            answers = [plain(e)] * len(queries)
        conn.send((answers, calls, service.n_invalid))


def plain(answer: Any) -> Any:
    """An answer that crosses the pipe: an exception becomes a SidrecError (a user's
    mistake, HTTP 400) or a RuntimeError naming its type (500), whatever it held."""
    if not isinstance(answer, Exception):
        return answer
    if isinstance(answer, SidrecError):
        return SidrecError(str(answer))
    return RuntimeError(f"{type(answer).__name__}: {answer}")


class InferenceWorker:
    """The one thread that loads the model and runs every model call (or hands it to the
    `ModelProcess`).

    `load` builds the `Service` on the thread (so /healthz answers while it loads), unless
    `service` is given already loaded; `ready` is set once the model is loaded (in the
    model process too), `error` holds why loading failed.
    """

    def __init__(self, load: Callable[[], Service], settings: ServeSettings,
                 on_call: Callable[[int], None] | None = None,
                 service: Service | None = None) -> None:
        self._load = load
        self.settings = settings
        self.on_call = on_call
        self.service: Service | None = service
        self._model: ModelProcess | None = None
        self.ready = threading.Event()
        self.error: str | None = None
        # Requests received by the HTTP side and not queued yet (read by this thread, kept
        # by the event loop): while some are on their way a batch waits for them; with
        # none, it goes at once, so a lone request never waits max_wait_ms.
        self.arriving = 0
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=settings.max_queue)
        self._thread = threading.Thread(target=self._run, name="sidrec-inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        self._thread.join(timeout)
        if self._model is not None:
            self._model.stop(timeout)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, query: Query) -> Future:
        """Queue a recommendation; its future holds `Recommendations` or the error."""
        return self._put(_Job(Future(), query=query))

    def call(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn(*args)` on the worker thread between batches."""
        return self._put(_Job(Future(), call=lambda: fn(*args)))

    def _put(self, job: _Job) -> Future:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(f"{self._queue.maxsize} requests are waiting; retry later") from None
        return job.future

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        try:
            self.service = self.service or self._load()
            torch.set_num_threads(self.threads)  # after the load, which sets its own
            if self.settings.model_process:
                self._model = ModelProcess(self._load, self.threads)
        except Exception as e:  # reported by /readyz, logged
            why = str(e) if isinstance(e, SidrecError) else f"{type(e).__name__}: {e}"
            self.error = f"the model did not load: {why}"
            log.error("sidrec serve: %s", self.error)
            self._drain(SidrecError(self.error))
            return
        self.ready.set()
        pending: _Job | None = None
        while True:
            job = pending or self._queue.get()
            pending = None
            if job is _STOP:
                break
            if job.call is not None:
                self._run_call(job)
                continue
            batch = [job]
            pending = self._collect(batch)
            try:
                self._run_batch(batch)
            except Exception as e:  # this batch fails (500); the thread goes on
                log.exception("sidrec serve: a batch failed")
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(e)
        self._drain(SidrecError("the server is shutting down"))

    def failure(self) -> str | None:
        """Why no model can answer (it did not load, or its process stopped), else None."""
        if self.error is None and self._model is not None and not self._model.alive:
            self.error = self._model.stopped_message()
        return self.error

    @property
    def threads(self) -> int:
        """Torch threads of the model: `threads`, or all cores but one (at most 4), so
        that the HTTP side keeps a core (on 2 cores: 1)."""
        return self.settings.threads or max(1, min(4, (os.cpu_count() or 1) - 1))

    def _collect(self, batch: list[_Job]) -> _Job | None:
        """Add queued queries to `batch` (up to max_batch), waiting up to max_wait_ms while
        more are arriving; returns a non-query job met on the way, to run after it."""
        limit = self.settings.rows_per_call
        deadline = time.monotonic() + self.settings.max_wait_ms / 1000
        while len(batch) < limit:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.arriving <= 0:
                    break  # nothing queued and nothing on its way: go now
                try:
                    job = self._queue.get(timeout=min(remaining, 0.0005))
                except queue.Empty:
                    continue
            if job.query is None:
                return job
            batch.append(job)
        return None

    def _run_batch(self, batch: list[_Job]) -> None:
        live = [j for j in batch if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        answers = self.answer([j.query for j in live])
        for job, answer in zip(live, answers, strict=True):
            if isinstance(answer, Exception):
                job.future.set_exception(answer)
            else:
                job.future.set_result(answer)

    def answer(self, queries: list[Query]) -> list[Recommendations | Exception]:
        """`run_queries` on the loaded service, after picking up the items that another
        process added to the run directory. Call it on the worker thread."""
        service = self.service
        assert service is not None, "answer() before the model loaded"
        try:
            service.refresh()
        except Exception as e:  # serving goes on with the catalogue it has
            log.warning("sidrec serve: could not read the added items: %s", e)
        if self._model is None:
            return run_queries(service, queries, self.on_call)
        try:
            answers, calls, service.n_invalid = self._model.answer(queries)
        except ModelStopped as e:
            self.error = str(e)  # /readyz and every request say so from now on
            return [e] * len(queries)
        for rows in calls:
            if self.on_call:
                self.on_call(rows)
        returned = {item for a in answers if not isinstance(a, Exception) for item, _ in a}
        if not returned <= service.index.keys():
            # the model process read items another server added after this process's
            # refresh above: read them here too, so that every answer can be described
            service.refresh()
        return answers

    def _run_call(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.call())
        except Exception as e:  # the caller gets it
            job.future.set_exception(e)

    def _drain(self, error: Exception) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                job.future.set_exception(error)
