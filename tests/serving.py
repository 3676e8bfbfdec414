"""Helpers of the serving tests (tests/test_serve_*.py): a tiny trained run and a real
`sidrec serve` process on 127.0.0.1.

The run is the tiny two-genre catalogue of test_bench_api.py's kind (48 items, 64 users)
with TIGER, LIGER and COBRA trained for one epoch at the cpu presets (so TIGER and LIGER
have the anonymous user token), which takes well under a minute on 2 cores; the session
fixture `served_run` (conftest.py) builds it once for every serving test.
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

N_ITEMS, N_USERS = 48, 64
MODELS = ("tiger", "liger", "cobra")


def write_tables(folder: Path) -> tuple[Path, Path]:
    """Two genres; users stick to one. Ids `i00`..; titles `Film number N`."""
    rng = np.random.default_rng(0)
    inter, items = folder / "interactions.csv", folder / "items.csv"
    with open(items, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "genres"])
        for i in range(N_ITEMS):
            genre = "space opera science fiction" if i % 2 else "romantic comedy"
            w.writerow([f"i{i:02d}", f"Film number {i}", genre])
    with open(inter, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp"])
        for u in range(N_USERS):
            pool = [i for i in range(N_ITEMS) if i % 2 == u % 2]
            for t, i in enumerate(rng.choice(pool, size=10, replace=False)):
                w.writerow([f"u{u}", f"i{i:02d}", t])
    return inter, items


def train_tiny_run(folder: Path) -> Path:
    """The run directory, with models/{tiger,liger,cobra} trained one epoch at the cpu
    presets: the pipeline's stages called one by one (no evaluation, report or plots)."""
    from sidrec.data.prepare import PrepareConfig, prepare
    from sidrec.embed import EmbedConfig, embed
    from sidrec.presets import resolve_config
    from sidrec.tokenize import run_tokenize, tokenizer_config
    from sidrec.train import train

    inter, items = write_tables(folder)
    run = folder / "run"
    prepare(run, PrepareConfig(source=str(inter), items=str(items), cold_mode="holdout",
                               cold_fraction=0.1))
    embed(run, EmbedConfig(device="cpu"), progress=False)
    run_tokenize(run, tokenizer_config("rqkmeans", "small",
                                       {"codebook_size": 4, "balanced": True}),
                 device="cpu", progress=False)
    for model in MODELS:
        train(resolve_config(model, "cpu", None, {"max_epochs": 1}), run, progress=False)
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(model_dir: Path):
    """`sidrec.load`, then one torch thread (the load sets min(4, cores)): these models are
    tiny, and on a busy 2-core machine a second thread makes each call several times slower."""
    import torch

    import sidrec

    rec = sidrec.load(model_dir)
    torch.set_num_threads(1)
    return rec


class Server:
    """`sidrec serve MODEL_DIR --port P [args]` in a subprocess (one torch thread unless
    `args` sets threads=); `url` is 127.0.0.1 only."""

    def __init__(self, model_dir: Path, *args: str, log: Path, timeout: float = 90.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        threads = [] if any(a.startswith("threads=") for a in args) else ["threads=1"]
        command = [sys.executable, "-m", "sidrec.cli", "serve", str(model_dir), "--host",
                   "127.0.0.1", "--port", str(self.port), *threads, *args]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        with open(log, "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited ({self.process.returncode}):\n{self.logs()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGINT (as Ctrl-C), then SIGKILL to the group if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode


@contextlib.contextmanager
def running(model_dir: Path, *args: str, log: Path, timeout: float = 90.0) -> Iterator[Server]:
    server = Server(model_dir, *args, log=log, timeout=timeout)
    try:
        yield server
    finally:
        server.stop()


def copy_of(run: Path, folder: Path) -> Path:
    """A writable copy of `run` (the session's is shared by every serving test)."""
    import shutil

    target = folder / "run"
    shutil.copytree(run, target)
    return target


def post_all(url: str, bodies: list, concurrency: int = 16, timeout: float = 60.0) -> list:
    """POST every body to `url` with at most `concurrency` in flight; the responses in
    order. Bounded: len(bodies) requests, each within `timeout` seconds."""
    import asyncio

    async def run() -> list:
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=timeout) as client:
            async def one(body: object) -> httpx.Response:
                async with gate:
                    return await client.post(url, json=body)

            return await asyncio.gather(*(one(b) for b in bodies))

    return asyncio.run(run())


def metric(text: str, name: str) -> float:
    """A sample's value in Prometheus text: the first line that is `name` or starts with
    it (`name` may hold the first labels, e.g. 'x_total{route="/a"')."""
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):][:1] in (" ", "{", "}"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)
