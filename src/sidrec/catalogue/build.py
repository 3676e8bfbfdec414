"""A model's `Catalogue` built from a run directory, and the fingerprint of what it was
trained on: the one place that reads the run for a model (models are handed arrays).

A run directory holds the prepared `dataset/` and, once the later stages ran,
`embeddings.npy` (float32 [n_items, d], from `sidrec embed`) and `sids.npy` (int64
[n_items, L+1], last column = collision token) with `tokenizer.json` (from `sidrec
tokenize`). Every artifact that is present is loaded and shape-checked; the ones a model
needs must be present.

`input_fingerprint` hashes the inputs a model depends on. The trainer stores it in the
model's `config.json` and `load_model` compares it with the run's current files, so a
model is never silently paired with embeddings or SIDs that changed after it was trained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sidrec.artifacts import require_file
from sidrec.data.dataset import Dataset
from sidrec.io import hash_array, hash_file, hash_obj
from sidrec.models.base import Recommender
from sidrec.models.catalogue import Catalogue
from sidrec.run import RunDir


def build_catalogue(
    run_dir: str | Path | RunDir,
    dataset: Dataset | None = None,
    *,
    need_text: bool = False,
    need_sids: bool = False,
) -> Catalogue:
    """The catalogue of `run_dir` (`dataset` is loaded from it unless given).

    Popularity counts are the training-sequence counts (0 for cold items), as Pop ranks by.
    """
    run = RunDir(run_dir)
    ds = dataset if dataset is not None else Dataset.load(run.root)
    text_emb = sids = None
    codebook_sizes: tuple[int, ...] = ()
    # Present artifacts are checked all the same, each against the dataset: embeddings of
    # another catalogue, or SIDs fitted with another cold split, are refused (stale).
    if need_text or run.embeddings.is_file():
        text_emb = torch.from_numpy(run.load_embeddings(ds.n_items, list(ds.item_text)))
    if need_sids or run.sids.is_file():
        codes, codebook_sizes = run.load_sids(ds.n_items, np.asarray(ds.cold, dtype=bool))
        sids = torch.from_numpy(codes)
    cold = np.array(ds.cold, dtype=bool)  # a copy: arrays read from parquet are read-only
    return Catalogue(
        item_text=list(ds.item_text),
        cold=torch.from_numpy(cold),
        popularity=torch.as_tensor(ds.popularity(), dtype=torch.float32),
        text_emb=text_emb,
        sids=sids,
        codebook_sizes=codebook_sizes,
    )


def catalogue_for(
    cls: type[Recommender], run_dir: str | Path | RunDir, dataset: Dataset
) -> Catalogue:
    """The catalogue with the artifacts that model class `cls` declares it needs."""
    return build_catalogue(
        run_dir, dataset, need_text=cls.needs_text, need_sids=bool(cls.needs_sids)
    )


def input_fingerprint(
    cls: type[Recommender], run_dir: str | Path | RunDir, dataset: Dataset
) -> dict:
    """Hashes of the inputs model class `cls` is trained on (dataset, and text / SIDs if used)."""
    run = RunDir(run_dir)
    out = {"dataset": dataset_hash(dataset)}
    if cls.needs_text:  # e.g. LIGER trained before `sidrec embed`: say which stage to run
        require_file(run.embeddings, "item text embeddings", f"sidrec embed {run}")
        out["embeddings"] = hash_file(run.embeddings)
    if cls.needs_sids:
        require_file(run.sids, "semantic IDs", f"sidrec tokenize {run}")
        out["sids"] = hash_file(run.sids)
    return out


def dataset_hash(ds: Dataset) -> str:
    """Content hash of the split itself (not of file bytes): items, cold flags and sequences."""
    lengths = np.asarray([len(t) for t in ds.train], dtype=np.int64)
    flat = np.concatenate(ds.train) if ds.train else np.zeros(0, np.int64)
    return hash_obj(
        [
            ds.n_items,
            ds.max_history,
            hash_array(ds.cold.astype(bool)),
            hash_array(lengths),
            hash_array(flat.astype(np.int64)),
            hash_array(ds.valid.astype(np.int64)),
            hash_array(ds.test.astype(np.int64)),
        ]
    )
