"""Dynamic batching on one inference thread.

HTTP handlers put `Query`s on a queue and await their futures; one worker thread takes
the first waiting query, collects more while others are on their way (requests the HTTP
side has received but not queued yet: `arriving`), for up to `max_wait_ms` or until
`max_batch` are in hand, and answers them with as few `Service.recommend_batch` calls as
possible (`queries.run_queries`: one per group of queries that can share a call; user
ids and histories may differ per row). Every model call runs on this one thread, so
torch's intra-op threads (`threads`) are never oversubscribed by concurrent requests, and
a catalogue swap (an add, on the add thread; `backend.Backend.add_items`) takes the
catalogue's lock, which a batch holds, so it never meets a batch halfway.

A grouped call returns what `recommend_batch` returns for those rows offline (the model
contract is row-independent; tests/test_serve_batching.py checks it within 1e-5).

With `model_process=true` the thread hands each batch to a `ModelProcess` and waits for
the answers. When that process dies, or answers no batch within `model_timeout_s`, the
thread starts a new one, up to `model_restarts` times in a row without a batch answered
between; requests meanwhile get 503 and `/readyz` says why.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from sidrec.api import Recommendations, Service
from sidrec.errors import SidrecError
from sidrec.serve.model_process import ModelProcess, ModelStopped
from sidrec.serve.queries import Query, refresh_added, run_queries
from sidrec.serve.settings import ServeSettings

log = logging.getLogger("sidrec.serve")


class Overloaded(Exception):
    """The queue is full: the server answers 503."""


@dataclass
class _Job:
    future: Future
    query: Query | None = None  # a recommendation, batched
    call: Callable[[], Any] | None = None  # anything else, run alone (a Ray batch)


_STOP = _Job(Future())


class InferenceWorker:
    """The one thread that loads the model and runs every model call (or hands it to the
    `ModelProcess`).

    `load` builds the `Service` on the thread (so /healthz answers while it loads), unless
    `service` is given already loaded; `ready` is set once the model is loaded (in the
    model process too), `error` holds why no model will answer (it did not load, or
    `model_restarts` new model processes in a row answered no batch), `restarting` why a
    new model process is being started.
    """

    def __init__(self, load: Callable[[], Service], settings: ServeSettings,
                 on_call: Callable[[int], None] | None = None,
                 service: Service | None = None) -> None:
        self._load = load
        self.settings = settings
        self.on_call = on_call
        self.service: Service | None = service
        self._model: ModelProcess | None = None
        self._starting: ModelProcess | None = None  # loading, not serving yet
        self._load_s: float | None = None  # how long the first model process took to load
        self._restarts = 0  # new model processes since the last batch one answered
        self.ready = threading.Event()
        self.error: str | None = None
        self.restarting: str | None = None
        self._stopping = threading.Event()
        # Requests received by the HTTP side and not queued yet (read by this thread, kept
        # by the event loop): while some are on their way a batch waits for them; with
        # none, it goes at once, so a lone request never waits max_wait_ms.
        self.arriving = 0
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=settings.max_queue)
        self._thread = threading.Thread(target=self._run, name="sidrec-inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout)
        self._thread.join(timeout)
        for model in (self._starting, self._model):
            if model is not None:
                model.stop(timeout)

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
            torch.set_num_threads(self.settings.model_threads)  # after the load, which sets its own
            if self.settings.model_process:
                self._start_model()
        except Exception as e:  # logged; /readyz says so, without the server's paths
            why = str(e) if isinstance(e, SidrecError) else f"{type(e).__name__}: {e}"
            log.error("sidrec serve: the model did not load: %s", why)
            self.error = "the model did not load (the server log says why)"
            self._drain(SidrecError(self.error))
            return
        self.ready.set()
        pending: _Job | None = None
        while True:
            job = pending or self._next()
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
            self._heal()
        self._drain(SidrecError("the server is shutting down"))

    def _next(self) -> _Job:
        """The next job; while none comes, a stopped model process is replaced."""
        while True:
            try:
                return self._queue.get(timeout=None if self._model is None else 1.0)
            except queue.Empty:
                self._heal()

    def _start_model(self) -> None:
        """Serve with a new model process once its model is loaded (`stop` ends it while
        it loads; it becomes `_model` before it stops being `_starting`, so `stop` never
        misses it). The first load may take what it takes; a restart gets 5 times as long
        (at least a minute), so a load that hangs counts as a failed restart."""
        started = time.monotonic()
        self._starting = model = ModelProcess(self._load, self.settings.model_threads)
        deadline = None if self._load_s is None else max(60.0, 5 * self._load_s)
        try:
            if self._stopping.is_set():
                raise SidrecError("the server is shutting down")
            model.wait_ready(deadline)
            self._model = model
        except BaseException:
            model.stop(1.0)
            raise
        finally:
            self._starting = None
        if self._load_s is None:
            self._load_s = time.monotonic() - started

    def _heal(self) -> None:
        """Start a new model process if the one serving has stopped, unless
        `model_restarts` were started in a row without answering a batch (then `error`
        says so for good). One that does not load counts as one of them."""
        model = self._model
        if model is None or model.alive or self.error is not None or self._stopping.is_set():
            return
        why = self.restarting or model.stopped_message()
        limit = self.settings.model_restarts
        if self._restarts >= limit:
            self.error = (f"{why}; {self._restarts} new model process(es) in a row answered "
                          f"no batch (model_restarts={limit}); restart sidrec serve")
            log.error("sidrec serve: %s", self.error)
            return
        self._restarts += 1
        self.restarting = f"{why}; starting a new one ({self._restarts} of {limit} in a row)"
        log.warning("sidrec serve: %s", self.restarting)
        try:
            self._start_model()
        except Exception as e:  # the next _heal (within a second) tries again, counted
            log.error("sidrec serve: a new model process did not load: %s", e)
            self.restarting = "a new model process did not load (the server log says why)"
            return
        self.restarting = None

    def failure(self) -> str | None:
        """Why no model can answer now (it did not load, restarts ran out, or its
        process stopped and a new one is starting), else None."""
        model = self._model
        if self.error or self.restarting:
            return self.error or self.restarting
        if model is not None and not model.alive:  # until the inference thread sees it
            return f"{model.stopped_message()}; a new model process is starting"
        return None

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
        refresh_added(service.catalogue)
        if self._model is None:
            return run_queries(service, queries, self.on_call)
        try:
            answers, calls, service.n_invalid = self._model.answer(
                queries, self.settings.model_timeout_s)
        except ModelStopped as e:  # 503; the thread starts a new process after the batch
            return [e] * len(queries)
        self._restarts = 0
        for rows in calls:
            if self.on_call:
                self.on_call(rows)
        returned = {item for a in answers if not isinstance(a, Exception) for item, _ in a}
        if any(item not in service.catalogue for item in returned):
            # the model process read items another server added after this process's
            # refresh above: read them here too, so that every answer can be described
            refresh_added(service.catalogue)
        if unknown := sorted(i for i in returned if i not in service.catalogue):
            # it loaded another catalogue than this process's (the run directory changed
            # since the server started): nothing it answers can be trusted
            self.error = (f"the model process answers items this server does not know "
                          f"({unknown[0]!r}, ...): the run directory changed since the "
                          "server started; restart sidrec serve")
            log.error("sidrec serve: %s", self.error)
            return [ModelStopped(self.error)] * len(queries)
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
