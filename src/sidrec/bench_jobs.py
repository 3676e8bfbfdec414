"""The bench's training jobs: each (model, seed) trained (or reused) and evaluated on test,
one at a time in this process or several at once in spawned worker processes.
`sidrec.bench` makes the jobs and aggregates what they return."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidrec.errors import SidrecError
from sidrec.run import ModelDir, RunDir

Job = tuple[str, int]  # (model name, seed)


@dataclass(frozen=True)
class JobSettings:
    """What every job of one bench shares."""

    preset: str  # model / training presets (configs/<model>.yaml)
    ks: tuple[int, ...]  # the test cut-offs
    overrides: dict[str, Any]  # for every model, as on `sidrec train`'s command line
    threads: int  # CPU threads per model; 0: train.py's default


def log(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(msg)


def parallelism(requested: int, train_overrides: dict[str, Any],
                n_jobs: int) -> tuple[int, int]:
    """(models trained at once, CPU threads each; 0 = train.py's default).

    One GPU takes one model at a time. On CPU the models are small and gain little from
    more than 4 threads, so a many-core machine trains one model per 4 cores. Below 8
    cores that is one at a time: on 2 cores, TIGER and LIGER side by side with one thread
    each finished no sooner than one after the other with two threads each.
    """
    import os

    import torch

    cores = os.cpu_count() or 1
    on_gpu = train_overrides.get("device", "auto") != "cpu" and torch.cuda.is_available()
    workers = requested or (1 if on_gpu else max(1, min(cores // 4, n_jobs)))
    # One at a time keeps train.py's default, so `sidrec train`'s models are reused.
    return workers, 0 if on_gpu or workers == 1 else max(1, cores // workers)


def parallelism_text(workers: int, threads: int) -> str:
    return f"{workers} at a time" + (f", {threads} CPU thread(s) each" if threads else "")


def finished_jobs(order: list[Job], split_dirs: dict[int, Path], settings: JobSettings,
                  workers: int, progress: bool) -> Iterator[tuple[Job, dict[str, Any]]]:
    """Each job of `order` with its result, as it finishes. `split_dirs`: each seed's run
    directory."""
    if workers == 1:
        yield from _one_at_a_time(order, split_dirs, settings, progress)
    else:
        yield from _in_workers(order, split_dirs, settings, workers, progress)


def _one_at_a_time(order: list[Job], split_dirs: dict[int, Path], settings: JobSettings,
                   progress: bool) -> Iterator[tuple[Job, dict[str, Any]]]:
    """In this process, each split's dataset loaded once, with a progress bar."""
    from sidrec.data.dataset import Dataset

    datasets = {d: Dataset.load(d) for d in dict.fromkeys(split_dirs.values())}
    for name, seed in order:
        data_dir = split_dirs[seed]
        yield (name, seed), train_and_evaluate(settings, data_dir, name, seed, bar=progress,
                                               epoch_lines=False, dataset=datasets[data_dir])


def _in_workers(order: list[Job], split_dirs: dict[int, Path], settings: JobSettings,
                workers: int, progress: bool) -> Iterator[tuple[Job, dict[str, Any]]]:
    """`workers` jobs at once in spawned processes, a log line per epoch for a bar."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn, not fork: a forked child inherits the parent's torch thread pools.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(train_and_evaluate, settings, split_dirs[seed], name, seed,
                               bar=False, epoch_lines=progress): (name, seed)
                   for name, seed in order}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield futures[future], _result(future)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _result(future: Any) -> dict[str, Any]:
    """A worker's result; its SidrecError comes through as is."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        return future.result()
    except BrokenProcessPool as e:
        raise SidrecError(
            "bench: a worker process died (out of memory, or a script that calls run_bench "
            "without an `if __name__ == \"__main__\":` guard); rerun with workers=1") from e


def train_and_evaluate(settings: JobSettings, run_dir: Path, name: str, seed: int, *,
                       bar: bool, epoch_lines: bool, dataset: Any = None) -> dict[str, Any]:
    """Train one (model, seed), or reuse it, and evaluate it on test. Runs in a worker
    process when the bench trains several models at once; there a log line per epoch
    replaces the progress bar, which would garble the other workers' bars."""
    from sidrec.checkpoint import load_model
    from sidrec.device import resolve_device
    from sidrec.evaluate import evaluate
    from sidrec.presets import resolve_config
    from sidrec.train import train

    t0 = time.perf_counter()
    if dataset is None:
        from sidrec.data.dataset import Dataset

        dataset = Dataset.load(run_dir)
    # Seed 0 keeps the plain name, so a 3-seed run reuses the 1-seed demo's models.
    model_dir_name = name if seed == 0 else f"{name}-seed{seed}"
    threads = settings.threads
    overrides = {**({"num_threads": threads} if threads else {}), **settings.overrides,
                 "seed": seed}

    def epoch_line(entry: dict[str, Any]) -> None:
        metric = next((k for k in entry if k.startswith("valid_ndcg")), None)
        valid = f", {metric[6:]} {entry[metric]:.4f}" if metric else ""
        log(f"{model_dir_name}: epoch {entry['epoch']} ({entry['train_seconds']:.0f}s), "
            f"loss {entry['train_loss']:.4f}{valid}")

    info = train(resolve_config(name, settings.preset, None, overrides), run_dir,
                 name=model_dir_name, dataset=dataset, progress=bar,
                 on_epoch_end=epoch_line if epoch_lines else None)
    model_dir = RunDir(run_dir).model(model_dir_name)
    train_s = _train_seconds(model_dir, time.perf_counter() - t0)
    model = load_model(model_dir, run_dir, dataset=dataset)
    device = resolve_device(overrides.get("device", "auto"),
                            overrides.get("num_threads") or threads)  # as the model trained
    metrics = evaluate(model.to(device), dataset, "test", settings.ks)
    return {"model_dir_name": model_dir_name, "best_epoch": info.get("best_epoch"),
            "metrics": metrics, "train_seconds": train_s,
            "seconds": time.perf_counter() - t0}


def _train_seconds(model_dir: ModelDir, fallback: float) -> float:
    """Training wall time from the log (a reused model costs ~0 now but did not then)."""
    from sidrec.checkpoint import read_log

    entries = read_log(model_dir)
    if entries:
        seconds = [e.get("train_seconds", 0.0) for e in entries]
        if seconds and all(isinstance(s, int | float) for s in seconds):
            return float(sum(seconds))
    return fallback
