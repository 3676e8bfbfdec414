"""Training and evaluation throughput of the baselines on a synthetic ML-100k-sized run.

    .venv/bin/python benchmarks/bench_train_eval.py [--epochs 2] [--device auto] [--threads 0]
    .venv/bin/python benchmarks/bench_train_eval.py --smoke   # 60 users, 1 epoch: seconds

Synthetic data of MovieLens-100k's size (943 users, 1,682 items, 100,000 interactions,
384-d random "text" embeddings) so that the numbers need no download. Prints, per model:
training sequences/s (the examples the trainer feeds: every prefix, or one window per
`max_history` targets for per-position models), training targets/s (positions with a
loss), and evaluation users/s on the test split, with evaluation speed relative to Pop.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sidrec.checkpoint import load_model
from sidrec.data.dataset import Dataset
from sidrec.device import resolve_device
from sidrec.epoch import window_examples
from sidrec.evaluate import evaluate
from sidrec.io import save_npy
from sidrec.presets import resolve_config
from sidrec.train import train


def synthetic_dataset(
    n_users: int = 943, n_items: int = 1682, n_interactions: int = 100_000, seed: int = 0
) -> Dataset:
    """Sequences with learnable structure: a fixed successor per item (p = 0.5), else a
    Zipf-popular item. Items that appear only as valid/test targets are cold."""
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(mean=0.0, sigma=0.8, size=n_users)
    lengths = np.maximum(20, np.round(lengths / lengths.sum() * n_interactions)).astype(int)
    successor = rng.permutation(n_items)
    zipf = 1.0 / np.arange(1, n_items + 1) ** 0.8
    zipf /= zipf.sum()
    seqs = []
    for n in lengths:
        seq = np.empty(n, dtype=np.int64)
        seq[0] = rng.choice(n_items, p=zipf)
        follow = rng.random(n) < 0.5
        popular = rng.choice(n_items, size=n, p=zipf)
        for i in range(1, n):
            seq[i] = successor[seq[i - 1]] if follow[i] else popular[i]
        seqs.append(seq)
    train = [s[:-2] for s in seqs]
    seen = np.zeros(n_items, dtype=bool)
    seen[np.concatenate(train)] = True
    return Dataset(
        name="synthetic-ml100k",
        item_ids=np.asarray([str(i) for i in range(n_items)], dtype=object),
        item_text=[f"item {i}" for i in range(n_items)],
        cold=~seen,
        user_ids=np.asarray([str(u) for u in range(n_users)], dtype=object),
        train=train,
        valid=np.asarray([s[-2] for s in seqs], dtype=np.int64),
        test=np.asarray([s[-1] for s in seqs], dtype=np.int64),
        max_history=20,
    )


def _per_epoch(name: str, n: int) -> int:
    per = resolve_config(name, "cpu").train.examples_per_epoch
    return min(n, per) if per > 0 else n


def bench_model(name: str, ds: Dataset, run_dir: Path, args: argparse.Namespace) -> dict:
    """Train `name` for args.epochs epochs (each with one validation), then time test eval."""
    overrides = {
        "max_epochs": args.epochs,
        "patience": 10**6,  # never stop early: time exactly args.epochs epochs
        "device": args.device,
        "num_threads": args.threads,
    }
    t0 = time.perf_counter()
    summary = train(resolve_config(name, "cpu", None, overrides), run_dir, dataset=ds,
                    progress=False)
    wall = time.perf_counter() - t0
    device = resolve_device(args.device, args.threads)
    model = load_model(summary["model_dir"], run_dir, dataset=ds).to(device)
    log_path = Path(summary["model_dir"]) / "train_log.jsonl"
    log = [json.loads(line) for line in log_path.read_text().splitlines() if line]
    per_position = getattr(type(model), "trains_every_position", False)
    examples = window_examples(ds) if per_position else ds.train_examples()
    evaluate(model, ds, "test", batch_size=512, device=device)  # warm-up
    metrics = evaluate(model, ds, "test", batch_size=512, device=device)
    return {
        "name": name,
        "trainable": model.trainable,
        # the examples an epoch trains on (the tiger/liger presets draw a sample of them)
        "sequences": _per_epoch(name, len(examples[1])) * args.epochs,
        "targets": sum(len(t) - 1 for t in ds.train) * args.epochs,
        "train_s": sum(e.get("train_seconds", 0.0) for e in log),
        "wall_s": wall,
        "eval_users_per_s": metrics["users_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="training epochs to time")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--models", default="pop,sasrec,dense,dense-text")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: min(4, cores))")
    parser.add_argument("--smoke", action="store_true",
                        help="smallest size (seconds): 60 users, 200 items, 1 epoch")
    args = parser.parse_args()
    if args.smoke:
        args.epochs = 1
    ds = synthetic_dataset(60, 200, 2_000) if args.smoke else synthetic_dataset()
    device = resolve_device(args.device, args.threads)
    print(
        f"synthetic ML-100k: {ds.n_users} users, {ds.n_items} items, "
        f"{sum(len(t) - 1 for t in ds.train)} training targets, device {device}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        text = np.random.default_rng(1).normal(size=(ds.n_items, 384)).astype(np.float32)
        save_npy(run_dir / "embeddings.npy", text)
        rows = [bench_model(name, ds, run_dir, args) for name in args.models.split(",")]

    pop = next((r["eval_users_per_s"] for r in rows if r["name"] == "pop"), float("nan"))
    print("\n| model | train seq/s | train targets/s | eval users/s | eval vs pop | wall s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["trainable"]:
            seq_s = f"{r['sequences'] / r['train_s']:,.0f}"
            tgt_s = f"{r['targets'] / r['train_s']:,.0f}"
        else:
            seq_s = tgt_s = "–"
        users_s = r["eval_users_per_s"]
        print(
            f"| {r['name']} | {seq_s} | {tgt_s} | {users_s:,.0f} | {users_s / pop:.4f} |"
            f" {r['wall_s']:.1f} |"
        )
    print(f"(wall s: {args.epochs} training epochs with a validation each, or Pop's saving)")


if __name__ == "__main__":
    main()
