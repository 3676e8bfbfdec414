"""The text encoder of `POST /v1/items` in a process of its own (`ServeSettings.encoder_process`).

Encoding a thousand long texts takes a minute on one core. On the inference thread it
held every recommendation back for that long; in another thread of the server it would
still take turns with the model on one interpreter lock and share torch's threads. An
`EncoderProcess` is a child process with one torch thread (`encoder_threads`) that loads
the run's encoder on first use and keeps it: the add's thread sends it the texts and
waits, while the inference thread goes on answering. It starts with the first add (a
server that never adds pays nothing) and a new one replaces one that died.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from typing import Any

import numpy as np

from sidrec.errors import SidrecError

log = logging.getLogger("sidrec.serve")


class EncoderProcess:
    """`encoder(texts, encoder_name)` -> vectors [len(texts), d] float32, computed in the
    child process; a child that answers nothing within `deadline_s` is killed (a
    SidrecError), and the next call starts a new one."""

    def __init__(self, threads: int = 1, deadline_s: float = 120.0) -> None:
        self.threads, self.deadline_s = threads, deadline_s
        self._lock = threading.Lock()  # one request on the pipe at a time
        self._process: Any = None
        self._conn: Any = None

    def __call__(self, texts: list[str], encoder: str) -> np.ndarray:
        with self._lock:
            if self._process is None or not self._process.is_alive():
                self._start()
            try:
                self._conn.send((texts, encoder))
                if not self._conn.poll(self.deadline_s):
                    self._process.kill()
                    raise SidrecError(f"the encoder process encoded nothing within "
                                      f"{self.deadline_s:g} s (model_timeout_s)")
                status, answer = self._conn.recv()
            except (EOFError, OSError):
                self._process.join(1.0)
                raise SidrecError(f"the encoder process stopped (exit code "
                                  f"{self._process.exitcode})") from None
        if status != "ok":
            raise SidrecError(answer)
        return answer

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # fork would copy torch's threads
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_encoder_process, args=(child, self.threads),
                                        name="sidrec-encoder", daemon=True)
        self._process.start()
        child.close()

    def stop(self, timeout: float = 5.0) -> None:
        """End the process (it holds nothing to save)."""
        with self._lock:
            if self._process is None:
                return
            self._process.terminate()
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout)
            self._process = None


def _encoder_process(conn: Any, threads: int) -> None:
    from sidrec.embed import EmbedConfig, encode_texts

    # Ctrl-C reaches the whole process group; the server stops this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            texts, encoder = conn.recv()
        except EOFError:  # the server process is gone
            return
        try:
            vectors = encode_texts(texts, EmbedConfig(encoder=encoder, device="cpu"),
                                   progress=False, threads=threads)
            answer: tuple[str, Any] = ("ok", vectors)
        except Exception as e:  # the add fails with it; the process goes on
            log.exception("sidrec serve: the encoder process failed")
            answer = ("failed", str(e) if isinstance(e, SidrecError)
                      else f"{type(e).__name__}: {e}")
        conn.send(answer)
