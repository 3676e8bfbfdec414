"""`sidrec bench`: the whole pipeline for every model on one dataset and split.

prepare -> embed -> tokenize -> (train -> evaluate) per model and seed -> `results.md`,
`metrics.json` (under `bench`), and plots. Every stage reuses what the run directory
already holds when its settings and inputs are unchanged, so a re-run only does new work.

Profiles (`BenchConfig` presets, see `PROFILES`):
- `demo`: MovieLens-100k, holdout cold start (5 %), CPU presets, 1 seed (README's `make demo`);
- `full`: the same with 3 seeds;
- `paper`: TIGER-paper settings for Amazon 2014 Beauty / Sports / Toys on one GPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sidrec.config import to_dict
from sidrec.errors import SidrecError
from sidrec.io import atomic_path, write_json, write_text

# The demo's bench takes ~12 min on 2 cores (2026-11-23), `full` (3 seeds) ~35. The
# text-only Dense and the LIGER paper's controls, TIGER (T) and Dense (SID), add ~10 min a
# seed on CPU: `paper` runs them, and `models=...` adds them to any profile.
DEMO_MODELS = ("pop", "sasrec", "dense", "tiger", "liger", "cobra")
ALL_MODELS = ("pop", "sasrec", "dense", "dense-text", "tiger", "tiger-t", "liger",
              "dense-sid", "cobra")


@dataclass(frozen=True)
class BenchConfig:
    source: str = "ml-100k"
    items: str = ""  # items table, for a generic interactions table as `source`
    run_dir: str = ""  # default runs/<source name>-<cold mode>
    kcore: int = 0
    cold_mode: str = "holdout"
    cold_fraction: float = 0.05
    split_seed: int = 0
    encoder: str = "all-MiniLM-L6-v2"
    tokenizer: str = "rqkmeans"  # rqkmeans | rqvae
    tokenizer_preset: str = "small"
    # Balanced RQ-KMeans: ~9 % collisions on ML-100k instead of ~25 % for plain k-means,
    # in seconds (RQ-VAE reaches ~8 % in ~30 s); see sidrec/tokenize/config.py.
    tokenizer_options: tuple[str, ...] = ("balanced=true",)
    models: tuple[str, ...] = DEMO_MODELS
    preset: str = "cpu"  # model / training presets (configs/<model>.yaml)
    seeds: tuple[int, ...] = (0,)
    ks: tuple[int, ...] = (5, 10, 20)
    train: tuple[str, ...] = ()  # extra key=value training overrides for every model
    # Models trained at once, in worker processes; 0: one per 4 CPU cores, one on a GPU.
    # Python callers of run_bench with workers > 1 need the `if __name__ == "__main__":`
    # guard in their script (the workers are spawned).
    workers: int = 0


PROFILES: dict[str, BenchConfig] = {
    "demo": BenchConfig(),
    "full": BenchConfig(seeds=(0, 1, 2)),
    "paper": BenchConfig(kcore=5, cold_mode="natural", tokenizer="rqvae",
                         tokenizer_preset="paper", tokenizer_options=(), preset="paper",
                         models=ALL_MODELS, seeds=(0, 1, 2)),
}


def default_run_dir(cfg: BenchConfig) -> Path:
    name = Path(cfg.source.rstrip("/")).name.split(".")[0] or "data"
    return Path("runs") / f"{name}-{cfg.cold_mode}"


def log(msg: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(msg)


def run_bench(cfg: BenchConfig, progress: bool = True) -> dict[str, Any]:
    from sidrec.config import parse_overrides
    from sidrec.data import PrepareConfig, prepare, summary
    from sidrec.embed import EmbedConfig, embed
    from sidrec.evaluate import aggregate, format_table
    from sidrec.models import get_model_class
    from sidrec.tokenize import diagnostics_markdown, run_tokenize, tokenizer_config
    from sidrec.train import resolve_config

    if cfg.workers < 0:
        raise SidrecError(f"bench: workers must be >= 1 (0: automatic), got {cfg.workers}")
    train_overrides = parse_overrides(list(cfg.train))
    for name in cfg.models:  # an unknown model, preset or setting fails before any work
        resolve_config(name, cfg.preset, None, train_overrides)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def record(name: str, seconds: float) -> None:
        timings[name] = round(seconds, 1)
        log(f"[{time.perf_counter() - started:6.0f}s] {name} done ({seconds:.1f}s)")

    def stage(name: str, t0: float) -> None:
        record(name, time.perf_counter() - t0)

    t0 = time.perf_counter()
    manifest = prepare(run_dir, PrepareConfig(
        source=cfg.source, items=cfg.items, kcore=cfg.kcore, cold_mode=cfg.cold_mode,  # type: ignore[arg-type]
        cold_fraction=cfg.cold_fraction, seed=cfg.split_seed))
    log(summary(manifest))
    stage("prepare", t0)
    t0 = time.perf_counter()
    embed(run_dir, EmbedConfig(encoder=cfg.encoder), progress=progress)
    stage("embed", t0)
    if any(get_model_class(m).needs_sids for m in cfg.models):
        t0 = time.perf_counter()
        tok_cfg = tokenizer_config(cfg.tokenizer, cfg.tokenizer_preset,
                                   parse_overrides(list(cfg.tokenizer_options)))
        tok = run_tokenize(run_dir, tok_cfg, progress=progress)
        log(diagnostics_markdown(tok["diagnostics"]))
        stage("tokenize", t0)

    jobs = [(name, seed) for name in cfg.models for seed in cfg.seeds]
    workers, threads = _parallelism(cfg.workers, train_overrides, len(jobs))
    log(f"training {len(jobs)} model(s), {_parallelism_text(workers, threads)}")
    # The SID-decoding models train longest: starting them first keeps the workers busy
    # to the end instead of leaving one long model running alone.
    order = sorted(jobs, key=lambda job: not get_model_class(job[0]).needs_sids)
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if workers == 1:
        from sidrec.data.dataset import Dataset

        dataset = Dataset.load(run_dir)
        for job in order:
            done[job] = _train_and_evaluate(cfg, run_dir, *job, train_overrides, threads,
                                            bar=progress, epoch_lines=False, dataset=dataset)
            record(_job_label(done[job]), done[job]["seconds"])
    else:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        # spawn, not fork: a forked child inherits the parent's torch thread pools.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_train_and_evaluate, cfg, run_dir, *job, train_overrides,
                                   threads, bar=False, epoch_lines=progress): job
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
    table = format_table(results)
    report = render_report(cfg, manifest, results, table, timings, total, workers, threads)
    write_json(run_dir / "bench.json", {"config": to_dict(cfg), "models": per_model,
                                         "timings": timings, "total_seconds": total,
                                         "workers": workers, "threads": threads})
    write_text(run_dir / "results.md", report)
    plots = write_plots(run_dir, results)
    return {"run_dir": str(run_dir), "table": table, "report": report, "plots": plots,
            "total_seconds": total}


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


def _job_label(out: dict[str, Any]) -> str:
    return f"{out['model_dir_name']} (best epoch {out['best_epoch']})"


def _train_and_evaluate(cfg: BenchConfig, run_dir: Path, name: str, seed: int,
                        train_overrides: dict[str, Any], threads: int, *, bar: bool,
                        epoch_lines: bool, dataset: Any = None) -> dict[str, Any]:
    """Train one (model, seed), or reuse it, and evaluate it on test. Runs in a worker
    process when the bench trains several models at once; there a log line per epoch
    replaces the progress bar, which would garble the other workers' bars."""
    from sidrec.device import resolve_device
    from sidrec.evaluate import evaluate
    from sidrec.train import load_model, train

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

    info = train(name, run_dir, None, overrides, preset=cfg.preset, name=model_dir_name,
                 dataset=dataset, progress=bar,
                 on_epoch_end=epoch_line if epoch_lines else None)
    model_dir = run_dir / "models" / model_dir_name
    train_s = _train_seconds(model_dir, time.perf_counter() - t0)
    model = load_model(model_dir, run_dir, dataset=dataset)
    device = resolve_device(overrides.get("device", "auto"), threads)
    metrics = evaluate(model.to(device), dataset, "test", cfg.ks)
    return {"model_dir_name": model_dir_name, "best_epoch": info.get("best_epoch"),
            "metrics": metrics, "train_seconds": train_s,
            "seconds": time.perf_counter() - t0}


def _train_seconds(model_dir: Path, fallback: float) -> float:
    """Training wall time from the log (a reused model costs ~0 now but did not then)."""
    log_path = model_dir / "train_log.jsonl"
    if log_path.is_file():
        import json

        entries = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
        seconds = [e.get("train_seconds", 0.0) for e in entries]
        if seconds and all(isinstance(s, int | float) for s in seconds):
            return float(sum(seconds))
    return fallback


def render_report(cfg: BenchConfig, manifest: dict, results: list[dict[str, Any]], table: str,
                  timings: dict[str, float], total: float, workers: int, threads: int) -> str:
    c = manifest["counts"]
    lines = [
        f"# sidrec bench: {manifest['name']}",
        "",
        f"Dataset: {c['users']:,} users, {c['items']:,} items, {c['interactions']:,} "
        f"interactions; leave-one-out, full ranking over all items; cold start "
        f"`{cfg.cold_mode}` ({c['cold_items']:,} cold items, {c['cold_test_users']:,} cold "
        f"test users). Encoder `{cfg.encoder}`, tokenizer `{cfg.tokenizer}` "
        f"(`{cfg.tokenizer_preset}`), model presets `{cfg.preset}`, seeds "
        f"{', '.join(map(str, cfg.seeds))} (mean ± sd when more than one).",
        "",
        "Rows: overall / in-set (test target seen in training) / cold (target never seen "
        "in training). Generative models: items the beam does not return are misses.",
        "",
        table,
        "",
        f"Models trained and evaluated {_parallelism_text(workers, threads)}"
        + ("; decode speeds are measured beside the other workers, so they are below an "
           "idle machine's." if workers > 1 else "."),
        "",
        "| model | train s | decode users/s |",
        "|---|---|---|",
    ]
    for r in results:
        ups = r["users_per_s"]
        lines.append(f"| {r['display_name']} | {r['train_seconds']:.0f} | "
                     f"{'∞' if math.isinf(ups) else f'{ups:,.0f}'} |")
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()),
              f"Total wall time: {total / 60:.1f} min.", ""]
    return "\n".join(lines)


def write_plots(run_dir: Path, results: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir = run_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    out = []

    def label(r: dict, row: dict) -> str:
        return f"{r['display_name']} [{row['variant']}]" if row["variant"] else r["display_name"]

    fig, ax = plt.subplots(figsize=(8, 5))
    overall = [(r, row) for r in results for row in r["rows"] if row["subset"] == "overall"]
    colors = plt.cm.tab20(np.linspace(0, 1, max(len(overall), 2)))  # distinct per line
    for n, (r, row) in enumerate(overall):
        ks = sorted(int(k.split("@")[1]) for k in row if k.startswith("recall@")
                    and not k.endswith("_sd"))
        ax.plot(ks, [row[f"recall@{k}"] for k in ks], marker="os^dv"[n % 5], color=colors[n],
                label=label(r, row))
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (overall)")
    ax.set_title(f"{run_dir.name}: Recall@K")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    out.append(_save(fig, plots_dir / "recall_at_k.png"))

    names, inset, cold = [], [], []
    for r in results:
        by = {(row["variant"], row["subset"]): row for row in r["rows"]}
        for variant in dict.fromkeys(row["variant"] for row in r["rows"]):
            names.append(label(r, {"variant": variant}))
            inset.append(by[(variant, "in-set")].get("recall@10", math.nan))
            cold.append(by[(variant, "cold")].get("recall@10", math.nan))
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(names)), 5))
    x = np.arange(len(names))
    ax.bar(x - 0.2, np.nan_to_num(inset), 0.4, label="in-set")
    ax.bar(x + 0.2, np.nan_to_num(cold), 0.4, label="cold-start")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("Recall@10")
    ax.set_title(f"{run_dir.name}: in-set vs cold-start Recall@10")
    ax.legend()
    fig.tight_layout()
    out.append(_save(fig, plots_dir / "inset_vs_cold.png"))
    usage = plots_dir / "codebook_usage.png"
    if usage.is_file():
        out.append(str(usage))
    return out


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return str(path)


def bench_config(profile: str, source: str | None, overrides: dict[str, Any]) -> BenchConfig:
    from sidrec.config import replace as replace_cfg

    if profile not in PROFILES:
        raise SidrecError(f"unknown bench profile {profile!r}; available: "
                          f"{', '.join(PROFILES)}")
    cfg = PROFILES[profile]
    if source:
        cfg = replace(cfg, source=source)
    return replace_cfg(cfg, overrides, "bench")

