"""`sidrec bench`: the whole pipeline for every model on one dataset and split.

prepare -> embed -> tokenize -> (train -> evaluate) per model and seed -> `results.md`,
`metrics.json` (under `bench`), and plots. Every stage reuses what the run directory
already holds when its settings and inputs are unchanged, so a re-run only does new work.
`run_bench` runs these steps in order; the (model, seed) jobs run in `sidrec.bench_jobs`,
one at a time or in worker processes.

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

from sidrec.bench_jobs import Job, JobSettings, finished_jobs, log, parallelism, parallelism_text
from sidrec.config import to_dict
from sidrec.data.prepare import PrepareConfig
from sidrec.embed import EmbedConfig
from sidrec.errors import SidrecError
from sidrec.io import read_json, write_json, write_text
from sidrec.run import RunDir

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


def run_bench(cfg: BenchConfig, progress: bool = True, command: str = "") -> dict[str, Any]:
    """Run the bench; `command` (the command line that asked for it) goes into the
    report, so a results table says how to make it again."""
    from sidrec.report import format_table, render_bench, write_plots

    _check(cfg)
    run = RunDir(cfg.run_dir or default_run_dir(cfg))
    clock = _Clock()
    split_dirs = {seed: split_dir(cfg, run.root, seed) for seed in cfg.seeds}
    manifests = _prepare_splits(cfg, run.root, split_dirs, progress, clock)
    done, workers, threads = _train_models(cfg, split_dirs, progress, clock)
    results, per_model = _aggregate(cfg, done)
    total = time.perf_counter() - clock.started
    # Everything the report says is recorded, so `sidrec report` renders it from
    # bench.json alone (docs/results/ keeps a copy of each published run's).
    made = _run_facts(command)
    record = {"config": to_dict(cfg),
              "models": {name: {**entry, "run": made} for name, entry in per_model.items()},
              "timings": clock.timings, "total_seconds": total, "workers": workers,
              "threads": threads, "dataset": _dataset_facts(run.root, manifests), "run": made}
    if run.bench_record.is_file():  # `models=liger` after `models=tiger`: one table
        earlier = read_json(run.bench_record)
        if isinstance(earlier, dict) and same_settings(earlier, record):
            record = merge_records([earlier, record])
    write_json(run.bench_record, record)
    report = render_bench(read_json(run.bench_record))  # as `sidrec report` will see it
    write_text(run.bench_report, report)
    plots = write_plots(run, results)
    return {"run_dir": str(run.root), "table": format_table(results), "report": report,
            "plots": plots, "total_seconds": total}


@dataclass
class _Clock:
    """Each step's wall time, logged as it ends with the time since the bench started."""

    started: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)

    def record(self, name: str, seconds: float) -> None:
        self.timings[name] = round(seconds, 1)
        log(f"[{time.perf_counter() - self.started:6.0f}s] {name} done ({seconds:.1f}s)")

    def since(self, name: str, t0: float) -> None:
        self.record(name, time.perf_counter() - t0)


def _check(cfg: BenchConfig) -> None:
    """An unknown model, preset or setting fails before any work."""
    from sidrec.presets import resolve_config

    if cfg.workers < 0:
        raise SidrecError(f"bench: workers must be >= 1 (0: automatic), got {cfg.workers}")
    for name in cfg.models:
        resolve_config(name, cfg.preset, None, dict(cfg.train))


def _prepare_splits(cfg: BenchConfig, run_dir: Path, split_dirs: dict[int, Path],
                    progress: bool, clock: _Clock) -> dict[Path, dict[str, Any]]:
    """prepare -> embed -> tokenize once in each split's run directory: their manifests."""
    from sidrec.data import prepare, summary
    from sidrec.embed import embed
    from sidrec.models import get_model_class
    from sidrec.tokenize import diagnostics_markdown, run_tokenize, tokenizer_config

    needs_sids = any(get_model_class(m).needs_sids for m in cfg.models)
    manifests = {}
    for seed, data_dir in split_dirs.items():
        if data_dir in manifests:
            continue
        suffix = "" if data_dir == run_dir else f" ({data_dir.name})"
        t0 = time.perf_counter()
        manifests[data_dir] = prepare(data_dir, replace(cfg.prepare, seed=seed)
                                      if data_dir != run_dir else cfg.prepare)
        log(summary(manifests[data_dir]))
        clock.since("prepare" + suffix, t0)
        t0 = time.perf_counter()
        embed(data_dir, cfg.embed, progress=progress)
        clock.since("embed" + suffix, t0)
        if needs_sids:
            t0 = time.perf_counter()
            tok_cfg = tokenizer_config(cfg.tokenize.method, cfg.tokenize.preset,
                                       dict(cfg.tokenize.options))
            tok = run_tokenize(data_dir, tok_cfg, progress=progress)
            log(diagnostics_markdown(tok["diagnostics"]))
            clock.since("tokenize" + suffix, t0)
    return manifests


def _train_models(cfg: BenchConfig, split_dirs: dict[int, Path], progress: bool,
                  clock: _Clock) -> tuple[dict[Job, dict[str, Any]], int, int]:
    """Every (model, seed) trained and evaluated: (their results, workers, threads each)."""
    from sidrec.models import get_model_class

    jobs = [(name, seed) for name in cfg.models for seed in cfg.seeds]
    workers, threads = parallelism(cfg.workers, cfg.train, len(jobs))
    log(f"training {len(jobs)} model(s), {parallelism_text(workers, threads)}")
    # The SID-decoding models train longest: starting them first keeps the workers busy
    # to the end instead of leaving one long model running alone.
    order = sorted(jobs, key=lambda job: not get_model_class(job[0]).needs_sids)
    settings = JobSettings(cfg.preset, cfg.ks, dict(cfg.train), threads)
    done = {}
    for job, out in finished_jobs(order, split_dirs, settings, workers, progress):
        done[job] = out
        clock.record(f"{out['model_dir_name']} (best epoch {out['best_epoch']})",
                     out["seconds"])
    return done, workers, threads


def _aggregate(cfg: BenchConfig, done: dict[Job, dict[str, Any]]
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(each model's row over its seeds, in `cfg.models` order; per model: its seeds, each
    seed's metrics and the row)."""
    from sidrec.report import aggregate

    results, per_model = [], {}
    for name in cfg.models:
        outs = [done[(name, seed)] for seed in cfg.seeds]
        runs = [o["metrics"] for o in outs]
        agg = aggregate(runs)
        agg["train_seconds"] = float(np.mean([o["train_seconds"] for o in outs]))
        agg["users_per_s"] = float(np.mean([m["users_per_s"] for m in runs]))
        results.append(agg)
        per_model[name] = {"seeds": list(cfg.seeds), "runs": runs, "aggregate": agg}
    return results, per_model


def _dataset_facts(run_dir: Path, manifests: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    """What the report says of the data: the main split's (or the first split's) manifest."""
    manifest = manifests[run_dir] if run_dir in manifests else next(iter(manifests.values()))
    return {"name": manifest["name"], "counts": manifest["counts"], "splits": len(manifests),
            "reader": manifest.get("dataset", "")}  # e.g. amazon-2014/Toys


def split_dir(cfg: BenchConfig, run_dir: Path, seed: int) -> Path:
    """The run directory that holds seed `seed`'s data: `run_dir` itself, or with
    `vary_split` and a holdout split, `<run_dir>-split<seed>` for seeds other than 0 (so
    seed 0 reuses the one-seed demo's run)."""
    if not cfg.vary_split or cfg.prepare.cold_mode != "holdout" or seed == 0:
        return run_dir
    return run_dir.with_name(f"{run_dir.name}-split{seed}")


def same_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two bench records measured on the same data with the same settings, whatever
    models each trained, wherever it kept its run and however many at once. The data is
    the same when the prepared datasets are (`dataset`: their fingerprint), however its
    paths were spelled (`../shared/x` from one folder, `/work/shared/x` from another)."""
    def settings(record: dict[str, Any]) -> dict[str, Any]:
        config = {k: v for k, v in record.get("config", {}).items()
                  if k not in ("models", "run_dir", "workers")}
        if isinstance(config.get("prepare"), dict):
            config["prepare"] = {k: v for k, v in config["prepare"].items()
                                 if k not in ("source", "items")}
        return config

    return settings(a) == settings(b) and a.get("dataset") == b.get("dataset")


def merge_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One record of several benches of the same settings (`same_settings`), e.g. a
    profile run one model at a time: each model as its latest record measured it, with
    that bench's run facts; the models in the order they were first measured."""
    first = next((r for r in records if not same_settings(records[0], r)), None)
    if first is not None:
        raise SidrecError(
            "these bench records differ in more than their models (data, split, presets, "
            "seeds or stage settings), so one table would compare unlike runs; report them "
            "one at a time")
    merged = dict(records[-1])
    merged["models"], merged["timings"] = {}, {}
    for record in records:
        for name, entry in record["models"].items():
            merged["models"][name] = {"run": record["run"], **entry}
        merged["timings"].update(record["timings"])
    merged["config"] = {**merged["config"], "models": list(merged["models"])}
    return merged


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


def bench_config(profile: str, source: str | None, overrides: dict[str, Any]) -> BenchConfig:
    from sidrec.config import replace as replace_cfg

    if profile not in PROFILES:
        raise SidrecError(f"unknown bench profile {profile!r}; available: "
                          f"{', '.join(PROFILES)}")
    cfg = PROFILES[profile]
    if source:
        cfg = replace(cfg, prepare=replace(cfg.prepare, source=source))
    return replace_cfg(cfg, overrides, "bench")

