"""Fit time of the tokenizers on synthetic MovieLens-size and 100k-item catalogues.

    .venv/bin/python benchmarks/bench_tokenize.py            # both sizes
    .venv/bin/python benchmarks/bench_tokenize.py --sizes 1682
    .venv/bin/python benchmarks/bench_tokenize.py --smoke     # 500 items, 1 RQ-VAE epoch

Data: clustered Gaussian vectors, d=384 (all-MiniLM-L6-v2's width), unit-normalised like
sentence embeddings. Reference row: RQ-KMeans (small preset); `ratio` = fit time / the
reference's on the same data. RQ-VAE runs the small preset (200 epochs) on the 1,682-item
set; on the 100k set its epochs are capped (`--vae-epochs-100k`, default 3: ~1.2k steps
of batch 256) so the run stays bounded -- that row times a truncated fit, not a converged
one. Usage = level-1 codes used / K; collisions = items sharing all L codes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from sidrec.tokenize import build_tokenizer, sid_diagnostics, tokenizer_config


def synthetic(n: int, d: int = 384, clusters: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(clusters, size=n)] + 0.8 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1682, 100_000])
    ap.add_argument("--vae-epochs-100k", type=int, default=3)
    ap.add_argument("--smoke", action="store_true",
                    help="smallest size that runs every tokenizer (seconds): 500 items, "
                         "RQ-VAE capped at 1 epoch")
    args = ap.parse_args()
    capped_from = 20_000  # items from which RQ-VAE's epochs are capped
    if args.smoke:
        args.sizes, args.vae_epochs_100k, capped_from = [500], 1, 0

    print(f"torch threads: {torch.get_num_threads()}\n")
    print("| items | method | fit s | ratio vs rqkmeans | L1 usage | collisions |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        x = synthetic(n)
        runs = [
            ("rqkmeans (reference)", tokenizer_config("rqkmeans", "small")),
            ("rqkmeans balanced", tokenizer_config("rqkmeans", "small", {"balanced": True})),
        ]
        vae_over = {} if n <= capped_from else {"epochs": args.vae_epochs_100k}
        label = "rqvae small" + (f" ({args.vae_epochs_100k} epochs)" if vae_over else "")
        runs.append((label, tokenizer_config("rqvae", "small", vae_over)))
        reference = None
        for name, cfg in runs:
            tok = build_tokenizer(cfg, "cpu")
            start = time.perf_counter()
            tok.fit(x)
            seconds = time.perf_counter() - start
            reference = reference or seconds
            diag = sid_diagnostics(tok.encode(x), cfg.codebook_size)
            print(
                f"| {n:,} | {name} | {seconds:.1f} | {seconds / reference:.1f}x | "
                f"{diag['levels'][0]['usage']:.0%} | {diag['collision_rate']:.1%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
