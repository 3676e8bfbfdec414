"""The tokenize stage: `embeddings.npy` -> `sids.npy`, `tokenizer/`, `tokenizer.json`.

Reads `run_dir/embeddings.npy` [n_items, d] and the cold mask of the prepared dataset,
fits the tokenizer on warm items only (cold items stay unseen), encodes every item with
it (cold items included, without refitting), numbers collisions (warm first, then cold
items as additions; see `sids.py`) and writes, each atomically:

- `sids.npy`       int64 [n_items, L+1], unique rows, last column = collision token
- `tokenizer/`     `config.json` + `model.safetensors` (reload with `load_tokenizer`)
- `tokenizer.json` diagnostics, `codebook_sizes`, config, config hash, input hashes
- `plots/codebook_usage.png`

`tokenizer.json` is written last and records the hash of the config, of the inputs
(embeddings file, cold mask) and of the outputs (`sids.npy`, `tokenizer/`). A re-run with
the same config and inputs returns it without refitting only when the outputs on disk are
still the recorded ones: a tokenize killed after writing `sids.npy` leaves the previous
record, which no longer matches, so the killed run's output is never served as "reused".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sidrec.artifacts import require_file
from sidrec.config import to_dict
from sidrec.data.dataset import Dataset
from sidrec.device import pick_device
from sidrec.errors import SidrecError
from sidrec.io import (
    atomic_dir,
    hash_array,
    hash_file,
    hash_folder,
    hash_obj,
    read_json,
    reusable_record,
    save_npy,
    write_json,
)
from sidrec.run import RunDir
from sidrec.tokenize.base import FORMAT_VERSION, Tokenizer, _read_meta
from sidrec.tokenize.config import TokenizerConfig, check_config
from sidrec.tokenize.diagnostics import plot_codebook_usage, reconstruction_error, sid_diagnostics
from sidrec.tokenize.rqkmeans import RQKMeansTokenizer
from sidrec.tokenize.rqvae import RQVAETokenizer
from sidrec.tokenize.sids import assign_sids, codebook_sizes, extend_sids

TOKENIZERS: dict[str, type[Tokenizer]] = {
    RQVAETokenizer.method: RQVAETokenizer,
    RQKMeansTokenizer.method: RQKMeansTokenizer,
}


def build_tokenizer(cfg: TokenizerConfig, device: str | torch.device | None = None) -> Tokenizer:
    """An unfitted tokenizer for `cfg` (the method is the config's `method`)."""
    check_config(cfg)
    return TOKENIZERS[cfg.method](cfg, device)


def load_tokenizer(path: str | Path, device: str | torch.device | None = None) -> Tokenizer:
    """Any saved tokenizer directory (e.g. `run_dir/tokenizer`)."""
    method = _read_meta(path)["method"]
    if method not in TOKENIZERS:
        raise SidrecError(f"{path}/config.json: unknown tokenizer method {method!r}")
    return TOKENIZERS[method].load(path, device)


def sids_for_new_items(
    tokenizer: Tokenizer, existing_sids: np.ndarray, vectors: np.ndarray
) -> np.ndarray:
    """Full SIDs [m, L+1] for new items' vectors [m, d], appended after `existing_sids`.

    The fitted tokenizer encodes them (no refitting); each takes the next free collision
    number of its prefix. Existing SIDs are unchanged. The collision token of a new item
    can exceed the last entry of the old `codebook_sizes`; a model must check for that.
    """
    return extend_sids(existing_sids, tokenizer.encode(vectors), tokenizer.codebook_size)


def run_tokenize(
    run_dir: str | Path | RunDir,
    cfg: TokenizerConfig,
    device: str | torch.device | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Fit the tokenizer on warm items and write the SIDs; returns `tokenizer.json`'s content
    plus `"cached": bool` (True when an up-to-date result was reused)."""
    run = RunDir(run_dir)
    check_config(cfg)
    pick_device(device if device is not None else "auto")  # device=tpu: an error, cached or not
    dataset = Dataset.load(run.root)
    require_file(run.embeddings, "item text embeddings", f"sidrec embed {run}")
    run.check_writable()
    cold = np.asarray(dataset.cold, dtype=bool)
    # [n_items, d] float32, finite, and the embeddings of this dataset's catalogue
    emb = run.load_embeddings(len(cold), list(dataset.item_text))

    config_hash = hash_obj({"format": FORMAT_VERSION, "method": cfg.method, "config": to_dict(cfg)})
    inputs = {"embeddings": hash_file(run.embeddings), "cold": hash_array(cold)}
    # reused when the files it records are on disk unchanged (verified by hash); a record
    # without their hashes (an older sidrec) never is: the tokenizer is fitted again
    cached = None if force else reusable_record(
        run.tokenizer_info, {"config_hash": config_hash, "inputs": inputs},
        needs=(run.sids, run.tokenizer / "model.safetensors"),
        unchanged=lambda record: record.get("outputs") == outputs(run))
    if cached is not None:
        return {**cached, "cached": True}
    warm = emb[~cold]  # [n_warm, d]: the only rows the tokenizer ever sees while fitting

    tokenizer = build_tokenizer(cfg, device)  # device None: auto
    start = time.perf_counter()
    tokenizer.fit(warm, progress=progress)
    fit_seconds = time.perf_counter() - start

    codes = tokenizer.encode(emb)  # [n_items, L]
    sids = assign_sids(codes, cold)  # [n_items, L+1]
    diag = sid_diagnostics(codes, cfg.codebook_size)
    warm_var = float(warm.var(axis=0).mean())
    recon = tokenizer.reconstruct(emb)
    diag["reconstruction"] = {
        "warm": reconstruction_error(emb[~cold], recon[~cold], warm_var),
        "cold": reconstruction_error(emb[cold], recon[cold], warm_var),
    }
    diag["warm_levels"] = sid_diagnostics(codes[~cold], cfg.codebook_size)["levels"]

    record = {
        "format_version": FORMAT_VERSION,
        "method": cfg.method,
        "config": to_dict(cfg),
        "config_hash": config_hash,
        "inputs": inputs,
        "embeddings_meta": (
            read_json(run.embeddings_info) if run.embeddings_info.is_file() else None
        ),
        "n_items": int(len(emb)),
        "n_warm": int((~cold).sum()),
        "n_cold": int(cold.sum()),
        "dim": int(emb.shape[1]),
        "levels": cfg.levels,
        "codebook_size": cfg.codebook_size,
        "codebook_sizes": codebook_sizes(sids, cfg.codebook_size),
        "diagnostics": diag,
        "fit": {
            "seconds": round(fit_seconds, 3),
            "device": str(tokenizer.device),
            **{k: v for k, v in tokenizer.fit_log.items() if k != "curve"},
        },
    }

    # The hashes are of what this process wrote (a concurrent run's files never pass).
    with atomic_dir(run.tokenizer) as tmp:
        tokenizer.save(tmp)
        tokenizer_hash = hash_folder(tmp)
    record["outputs"] = {"sids": save_npy(run.sids, sids), "tokenizer": tokenizer_hash}
    plot_codebook_usage(
        codes,
        cfg.codebook_size,
        run.plot("codebook_usage"),
        title=f"{dataset.name}: {cfg.method} {cfg.levels}x{cfg.codebook_size}",
    )
    write_json(run.tokenizer_info, record)  # last: marks the stage complete
    return {**record, "cached": False}


def outputs(run: RunDir) -> dict[str, str]:
    """Hashes of what the stage wrote: `sids.npy` and every file of `tokenizer/`. Whoever
    rewrites them (e.g. to add items) records these anew in `tokenizer.json`."""
    return {"sids": hash_file(run.sids), "tokenizer": hash_folder(run.tokenizer)}

