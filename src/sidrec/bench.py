"""`sidrec bench`: the whole pipeline for every model on one dataset and split.

prepare -> embed -> tokenize -> (train -> evaluate) per model and seed -> `results.md`,
`metrics.json` (under `bench`), and plots. Every stage reuses what the run directory
already holds when its settings and inputs are unchanged, so a re-run only does new work.

Profiles (`BenchConfig` presets, see `PROFILES`):
- `demo`: MovieLens-100k, holdout cold start (5 %), CPU presets, 1 seed (`make demo`,
  docs/getting-started.md);
- `full`: the same with 3 seeds, each with its own holdout draw (seed s > 0 prepares,
  embeds and tokenizes `<run_dir>-split<s>`), so the ± covers which items went cold as
  well as training noise;
- `beauty-cpu`: the papers' Amazon protocol (5-core, natural cold start) for SASRec (CE),
  TIGER, LIGER and COBRA on 2 CPU cores, one model at a time, resumable; any Amazon
  2014 5-core dump by path (Beauty, Sports, Toys), with the published rows beside;
- `paper`: TIGER-paper settings for Amazon 2014 Beauty / Sports / Toys on one GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sidrec.config import to_dict
from sidrec.data.prepare import PrepareConfig
from sidrec.embed import EmbedConfig
from sidrec.errors import SidrecError
from sidrec.io import read_json, write_json, write_text
from sidrec.run import ModelDir, RunDir

# The demo's bench takes ~12 min on 2 cores (2026-11-23), `full` (3 seeds) ~35. The
# text-only Dense and the LIGER paper's controls, TIGER (T) and Dense (SID), add ~10 min a
# seed on CPU: `paper` runs them, and `models=...` adds them to any profile.
DEMO_MODELS = ("pop", "sasrec", "dense", "tiger", "liger", "liger-official", "cobra",
               "cobra-no-dense", "cobra-no-dense-coarse", "cobra-no-sparse")
ALL_MODELS = ("pop", "sasrec", "dense", "dense-text", "tiger", "tiger-t", "liger",
              "liger-official", "dense-sid", "cobra", "cobra-no-dense",
              "cobra-no-dense-coarse", "cobra-no-sparse")


@dataclass(frozen=True)
class TokenizeSettings:
    """Which tokenizer preset `sidrec tokenize` fits (`sidrec.tokenize.tokenizer_config`)."""

    method: Literal["rqkmeans", "rqvae"] = "rqkmeans"
    preset: str = "small"
    # Balanced RQ-KMeans: ~9 % collisions on ML-100k instead of ~25 % for plain k-means,
    # in seconds (RQ-VAE reaches ~8 % in ~30 s); see sidrec/tokenize/config.py.
    options: dict[str, Any] = field(default_factory=lambda: {"balanced": True})


@dataclass(frozen=True)
class BenchConfig:
    """The stages' own configs, nested; `sidrec bench prepare.kcore=5 tokenize.method=rqvae
    train.max_epochs=1 models=pop,tiger` sets any of them."""

    prepare: PrepareConfig = PrepareConfig(cold_mode="holdout", cold_fraction=0.05)
    embed: EmbedConfig = EmbedConfig()
    tokenize: TokenizeSettings = TokenizeSettings()
    run_dir: str = ""  # default runs/<source name>-<cold mode>
    models: tuple[str, ...] = DEMO_MODELS
    preset: str = "cpu"  # model / training presets (configs/<model>.yaml)
    seeds: tuple[int, ...] = (0,)
    # Each seed also draws its own holdout cold items (`prepare.seed`), in a run directory
    # of its own; the natural cold-start split has no draw, so there it changes nothing.
    vary_split: bool = False
    ks: tuple[int, ...] = (5, 10, 20)
    # Overrides for every model, as on `sidrec train`'s command line (training and runtime
    # settings, e.g. {"max_epochs": 1, "num_threads": 1}).
    train: dict[str, Any] = field(default_factory=dict)
    # Models trained at once, in worker processes; 0: one per 4 CPU cores, one on a GPU.
    # Python callers of run_bench with workers > 1 need the `if __name__ == "__main__":`
    # guard in their script (the workers are spawned).
    workers: int = 0


PAPER_PREPARE = PrepareConfig(kcore=5, cold_mode="natural")
PROFILES: dict[str, BenchConfig] = {
    # The papers' Amazon protocol on 2 CPU cores, each model within an hour (model presets
    # `beauty-cpu` in configs/*.yaml); TIGER's 3 x 256 SIDs, COBRA fits its own 3 x 32.
    "beauty-cpu": BenchConfig(prepare=PAPER_PREPARE,
                              tokenize=TokenizeSettings(preset="paper",
                                                        options={"balanced": True}),
                              models=("sasrec", "tiger", "liger", "cobra"),
                              preset="beauty-cpu", workers=1),
    "demo": BenchConfig(),
    "full": BenchConfig(seeds=(0, 1, 2), vary_split=True),
    "paper": BenchConfig(prepare=PAPER_PREPARE,
                         tokenize=TokenizeSettings(method="rqvae", preset="paper", options={}),
                         preset="paper", models=ALL_MODELS, seeds=(0, 1, 2)),
}


def default_run_dir(cfg: BenchConfig) -> Path:
    name = Path(cfg.prepare.source.rstrip("/")).name.split(".")[0] or "data"
    return Path("runs") / f"{name}-{cfg.prepare.cold_mode}"


def log(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(msg)


def run_bench(cfg: BenchConfig, progress: bool = True, command: str = "") -> dict[str, Any]:
    """Run the bench; `command` (the command line that asked for it) goes into the
    report, so a results table says how to make it again."""
    from sidrec.data import prepare, summary
    from sidrec.embed import embed
    from sidrec.models import get_model_class
    from sidrec.presets import resolve_config
    from sidrec.report import aggregate, format_table, render_bench, write_plots
    from sidrec.tokenize import diagnostics_markdown, run_tokenize, tokenizer_config

    if cfg.workers < 0:
        raise SidrecError(f"bench: workers must be >= 1 (0: automatic), got {cfg.workers}")
    train_overrides = dict(cfg.train)
    for name in cfg.models:  # an unknown model, preset or setting fails before any work
        resolve_config(name, cfg.preset, None, train_overrides)
    run = RunDir(cfg.run_dir or default_run_dir(cfg))
    run_dir = run.root
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def record(name: str, seconds: float) -> None:
        timings[name] = round(seconds, 1)
        log(f"[{time.perf_counter() - started:6.0f}s] {name} done ({seconds:.1f}s)")

    def stage(name: str, t0: float) -> None:
        record(name, time.perf_counter() - t0)

    split_dirs = {seed: split_dir(cfg, run_dir, seed) for seed in cfg.seeds}
    manifests = {}
    for seed, data_dir in split_dirs.items():
        if data_dir in manifests:
            continue
        suffix = "" if data_dir == run_dir else f" ({data_dir.name})"
        t0 = time.perf_counter()
        manifests[data_dir] = prepare(data_dir, replace(cfg.prepare, seed=seed)
                                      if data_dir != run_dir else cfg.prepare)
        log(summary(manifests[data_dir]))
        stage("prepare" + suffix, t0)
        t0 = time.perf_counter()
        embed(data_dir, cfg.embed, progress=progress)
        stage("embed" + suffix, t0)
        if any(get_model_class(m).needs_sids for m in cfg.models):
            t0 = time.perf_counter()
            tok_cfg = tokenizer_config(cfg.tokenize.method, cfg.tokenize.preset,
                                       dict(cfg.tokenize.options))
            tok = run_tokenize(data_dir, tok_cfg, progress=progress)
            log(diagnostics_markdown(tok["diagnostics"]))
            stage("tokenize" + suffix, t0)
    manifest = manifests[run_dir] if run_dir in manifests else next(iter(manifests.values()))

    jobs = [(name, seed) for name in cfg.models for seed in cfg.seeds]
    workers, threads = _parallelism(cfg.workers, train_overrides, len(jobs))
    log(f"training {len(jobs)} model(s), {_parallelism_text(workers, threads)}")
    # The SID-decoding models train longest: starting them first keeps the workers busy
    # to the end instead of leaving one long model running alone.
    order = sorted(jobs, key=lambda job: not get_model_class(job[0]).needs_sids)
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if workers == 1:
        from sidrec.data.dataset import Dataset

        datasets = {d: Dataset.load(d) for d in manifests}
        for job in order:
            data_dir = split_dirs[job[1]]
            done[job] = _train_and_evaluate(cfg, data_dir, *job, train_overrides, threads,
                                            bar=progress, epoch_lines=False,
                                            dataset=datasets[data_dir])
            record(_job_label(done[job]), done[job]["seconds"])
    else:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        # spawn, not fork: a forked child inherits the parent's torch thread pools.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_train_and_evaluate, cfg, split_dirs[job[1]], *job,
                                   train_overrides, threads, bar=False,
                                   epoch_lines=progress): job
                       for job in order}
            pending = set(futures)
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        job = futures[future]
                        done[job] = _result(future)
                        record(_job_label(done[job]), done[job]["seconds"])
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise

    results, per_model = [], {}
    for name in cfg.models:
        outs = [done[(name, seed)] for seed in cfg.seeds]
        runs = [o["metrics"] for o in outs]
        agg = aggregate(runs)
        agg["train_seconds"] = float(np.mean([o["train_seconds"] for o in outs]))
        agg["users_per_s"] = float(np.mean([m["users_per_s"] for m in runs]))
        results.append(agg)
        per_model[name] = {"seeds": list(cfg.seeds), "runs": runs, "aggregate": agg}

    total = time.perf_counter() - started
    # Everything the report says is recorded, so `sidrec report` renders it from
    # bench.json alone (docs/results/ keeps a copy of each published run's).
    record = {"config": to_dict(cfg), "models": per_model, "timings": timings,
              "total_seconds": total, "workers": workers, "threads": threads,
              "dataset": {"name": manifest["name"], "counts": manifest["counts"],
                          "splits": len(manifests),
                          "reader": manifest.get("dataset", "")},  # e.g. amazon-2014/Toys
              "run": _run_facts(command)}
    write_json(run.bench_record, record)
    report = render_bench(read_json(run.bench_record))  # as `sidrec report` will see it
    write_text(run.bench_report, report)
    plots = write_plots(run, results)
    return {"run_dir": str(run_dir), "table": format_table(results), "report": report,
            "plots": plots, "total_seconds": total}


def split_dir(cfg: BenchConfig, run_dir: Path, seed: int) -> Path:
    """The run directory that holds seed `seed`'s data: `run_dir` itself, or with
    `vary_split` and a holdout split, `<run_dir>-split<seed>` for seeds other than 0 (so
    seed 0 reuses the one-seed demo's run)."""
    if not cfg.vary_split or cfg.prepare.cold_mode != "holdout" or seed == 0:
        return run_dir
    return run_dir.with_name(f"{run_dir.name}-split{seed}")


def _parallelism(requested: int, train_overrides: dict[str, Any],
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


def _result(future: Any) -> dict[str, Any]:
    """A worker's result; its SidrecError comes through as is."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        return future.result()
    except BrokenProcessPool as e:
        raise SidrecError(
            "bench: a worker process died (out of memory, or a script that calls run_bench "
            "without an `if __name__ == \"__main__\":` guard); rerun with workers=1") from e


def _parallelism_text(workers: int, threads: int) -> str:
    return f"{workers} at a time" + (f", {threads} CPU thread(s) each" if threads else "")


def _run_facts(command: str) -> dict[str, str]:
    """When, where and how the bench ran: a published table names all three."""
    import os
    import platform

    import torch

    from sidrec import __version__

    machine = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores"
    if torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name(0)}"
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine,
            "version": __version__, "command": command}


def _job_label(out: dict[str, Any]) -> str:
    return f"{out['model_dir_name']} (best epoch {out['best_epoch']})"


def _train_and_evaluate(cfg: BenchConfig, run_dir: Path, name: str, seed: int,
                        train_overrides: dict[str, Any], threads: int, *, bar: bool,
                        epoch_lines: bool, dataset: Any = None) -> dict[str, Any]:
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
    overrides = {**({"num_threads": threads} if threads else {}), **train_overrides,
                 "seed": seed}

    def epoch_line(entry: dict[str, Any]) -> None:
        metric = next((k for k in entry if k.startswith("valid_ndcg")), None)
        valid = f", {metric[6:]} {entry[metric]:.4f}" if metric else ""
        log(f"{model_dir_name}: epoch {entry['epoch']} ({entry['train_seconds']:.0f}s), "
            f"loss {entry['train_loss']:.4f}{valid}")

    info = train(resolve_config(name, cfg.preset, None, overrides), run_dir,
                 name=model_dir_name, dataset=dataset, progress=bar,
                 on_epoch_end=epoch_line if epoch_lines else None)
    model_dir = RunDir(run_dir).model(model_dir_name)
    train_s = _train_seconds(model_dir, time.perf_counter() - t0)
    model = load_model(model_dir, run_dir, dataset=dataset)
    device = resolve_device(overrides.get("device", "auto"),
                            overrides.get("num_threads") or threads)  # as the model trained
    metrics = evaluate(model.to(device), dataset, "test", cfg.ks)
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


def bench_config(profile: str, source: str | None, overrides: dict[str, Any]) -> BenchConfig:
    from sidrec.config import replace as replace_cfg

    if profile not in PROFILES:
        raise SidrecError(f"unknown bench profile {profile!r}; available: "
                          f"{', '.join(PROFILES)}")
    cfg = PROFILES[profile]
    if source:
        cfg = replace(cfg, prepare=replace(cfg.prepare, source=source))
    return replace_cfg(cfg, overrides, "bench")

