"""The data and tokenizer stages at size N: synthetic catalogue, `data prepare`, the vectors
as `embeddings.npy`, RQ-KMeans and RQ-VAE, and the SID trie (`SidIndex`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sidrec.scale.common import Options, paths, rss_mb, timed


def stage_synth(n: int, work: Path, opt: Options) -> dict[str, Any]:
    from sidrec.data.synth import SynthConfig, write_synth

    data, _ = paths(work, n)
    rec = write_synth(data, SynthConfig(n_items=n))
    return {"seconds": rec["seconds"], "cached": rec["cached"], **rec["counts"]}


def stage_prepare(n: int, work: Path, opt: Options) -> dict[str, Any]:
    from sidrec.data import PrepareConfig, prepare

    data, run = paths(work, n)
    cfg = PrepareConfig(source=str(data / "interactions.parquet"),
                        items=str(data / "items.parquet"), cold_mode="holdout",
                        cold_fraction=0.1, seed=0)
    manifest, seconds = timed(prepare, run, cfg, force=True)
    c = manifest["counts"]
    return {"seconds": seconds, "users": c["users"], "items": c["items"],
            "interactions": c["interactions"], "cold_items": c["cold_items"]}


def stage_embeddings(n: int, work: Path, opt: Options) -> dict[str, Any]:
    from sidrec.data.synth import attach_embeddings

    data, run = paths(work, n)
    info, seconds = timed(attach_embeddings, run, data)
    return {"seconds": seconds, "dim": info["dim"]}


def stage_rqkmeans(n: int, work: Path, opt: Options) -> dict[str, Any]:
    from sidrec.tokenize import RQKMeansConfig, run_tokenize

    _, run = paths(work, n)
    cfg = RQKMeansConfig(codebook_size=256, balanced=True, kmeans_iters=opt.kmeans_iters,
                         balanced_iters=opt.balanced_iters)
    info, seconds = timed(run_tokenize, run, cfg, progress=False, force=True)
    d = info["diagnostics"]
    return {"seconds": seconds, "fit_seconds": info["fit"]["seconds"],
            "collision_rate": d["collision_rate"], "max_per_prefix": d["max_items_per_prefix"],
            "codebook_sizes": info["codebook_sizes"]}


def stage_rqvae(n: int, work: Path, opt: Options) -> dict[str, Any]:
    from sidrec.data.dataset import Dataset
    from sidrec.run import RunDir
    from sidrec.tokenize import RQVAEConfig, RQVAETokenizer
    from sidrec.tokenize.diagnostics import sid_diagnostics

    _, run = paths(work, n)
    cold = Dataset.load(run).cold
    warm = RunDir(run).load_embeddings(len(cold))[~cold]
    cfg = RQVAEConfig(codebook_size=256, epochs=opt.rqvae_epochs, batch_size=1024,
                      kmeans_init_items=4096)
    tok, seconds = timed(RQVAETokenizer(cfg, "cpu").fit, warm)
    d = sid_diagnostics(tok.encode(warm), 256)
    return {"fit_seconds": seconds, "epochs": opt.rqvae_epochs,
            "seconds_per_epoch": seconds / opt.rqvae_epochs,
            "collision_rate": d["collision_rate"], "max_per_prefix": d["max_items_per_prefix"]}


def stage_trie(n: int, work: Path, opt: Options) -> dict[str, Any]:
    from sidrec.data.dataset import Dataset
    from sidrec.models.beam import SidIndex
    from sidrec.run import RunDir

    _, run = paths(work, n)
    cold = torch.from_numpy(np.array(Dataset.load(run).cold, dtype=bool))
    codes, sizes = RunDir(run).load_sids(len(cold))
    sids = torch.from_numpy(codes)
    before = rss_mb()
    full, t_full = timed(SidIndex, sids, sizes)
    warm_items = (~cold).nonzero().flatten()

    def warm_index() -> SidIndex:
        index = SidIndex(sids[warm_items], sizes, warm_items)
        for level in range(len(sizes)):
            index._child_table(level)  # the tables constrained decoding reads
        return index

    warm, t_warm = timed(warm_index)
    nbytes = sum(t.nbytes for i in (full, warm) for t in (*i.keys, i.leaf_items, *(
        t for t in i._tables if t is not None)))
    return {"seconds": t_full + t_warm, "full_seconds": t_full, "warm_seconds": t_warm,
            "index_mb": nbytes / 1e6, "rss_delta_mb": rss_mb() - before}
