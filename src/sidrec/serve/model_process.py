"""The model in a process of its own (`ServeSettings.model_process`).

In one process the HTTP thread and the model's Python code between torch ops take turns
on one interpreter lock: the server never used more than one core, and its model waited
for work half of the time (benchmarks/bench_serve.py; docs/serving.md, "HTTP and the
model share the interpreter"). A `ModelProcess` is a child process with its own copy of
the model; the inference thread sends it each batch and waits for the answers. The server
process keeps its own `Service` for everything else (checks, item lookups, `add_items`);
items it adds are persisted before the call returns, and the child reads them from the
run directory (`LiveCatalogue.refresh`) before every batch, so the next request sees them.

A child that dies, or answers no batch within its deadline (`model_timeout_s`; it is
then killed), is a `ModelStopped`; the inference worker then starts a new one
(`worker.InferenceWorker`).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from typing import Any

import torch

from sidrec.api import Recommendations, Service
from sidrec.errors import SidrecError
from sidrec.serve.queries import Query, refresh_added, run_queries

log = logging.getLogger("sidrec.serve")


class ModelStopped(Exception):
    """The model process is gone: its batch is answered 503."""


class ModelProcess:
    """A child process holding its own copy of the model; `answer` runs `run_queries`
    there. `load` must be picklable (`sidrec.serve.Loader`). Started here; `wait_ready`
    waits for its model to load."""

    def __init__(self, load: Callable[[], Service], threads: int) -> None:
        context = multiprocessing.get_context("spawn")  # fork would copy torch's threads
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_model_process, args=(child, load, threads),
                                        name="sidrec-model", daemon=True)
        self._process.start()
        child.close()
        self._why = ""  # why the server killed it, if it did

    def wait_ready(self, deadline_s: float | None = None) -> None:
        """Until the model is loaded (at most `deadline_s`, then the process is killed); a
        SidrecError saying why if it did not."""
        try:
            if not self._conn.poll(deadline_s):
                self._why = f"the model process did not load within {deadline_s:g} s"
                self._process.kill()
                raise SidrecError(self._why)
            status, message = self._conn.recv()
        except (EOFError, OSError):
            status, message = "failed", str(self._stopped())
        if status != "ready":
            raise SidrecError(message)

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    def answer(self, queries: list[Query], deadline_s: float
               ) -> tuple[list[Recommendations | Exception], list[int], int]:
        """(answers, the rows of each model call, the model's invalid-SID count so far).
        A process that has not answered after `deadline_s` is killed (ModelStopped): a
        watchdog, since a hung process also blocks a send larger than the pipe's buffer."""
        watchdog = threading.Timer(deadline_s, self._expire, (deadline_s,))
        watchdog.daemon = True
        watchdog.start()
        try:
            self._conn.send(queries)
            return self._conn.recv()
        except (EOFError, OSError):  # the process is gone (or was killed just now)
            raise self._stopped() from None
        finally:
            watchdog.cancel()

    def _expire(self, deadline_s: float) -> None:
        self._why = f"the model process answered no batch within {deadline_s:g} s"
        self._process.kill()

    def _stopped(self) -> ModelStopped:
        self._process.join(1.0)
        return ModelStopped(self.stopped_message())

    def stopped_message(self) -> str:
        return self._why or f"the model process stopped (exit code {self._process.exitcode})"

    def stop(self, timeout: float) -> None:
        """End the process (SIGTERM, then SIGKILL after `timeout`): it holds nothing to
        save, and a hung one would never read a polite request."""
        self._process.terminate()
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout)


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
        refresh_added(service.catalogue)  # what the server process added since
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
