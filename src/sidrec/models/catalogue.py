"""Build a `Catalogue` from a run directory, and fingerprint what a model was trained on.

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

from sidrec.data.dataset import Dataset
from sidrec.errors import SidrecError
from sidrec.io import hash_array, hash_file, hash_obj, read_json
from sidrec.models.base import Catalogue, Recommender

EMBEDDINGS = "embeddings.npy"
SIDS = "sids.npy"
TOKENIZER = "tokenizer.json"


def build_catalogue(
    run_dir: str | Path,
    dataset: Dataset | None = None,
    *,
    need_text: bool = False,
    need_sids: bool = False,
) -> Catalogue:
    """The catalogue of `run_dir` (`dataset` is loaded from it unless given).

    Popularity counts are the training-sequence counts (0 for cold items), as Pop ranks by.
    """
    run_dir = Path(run_dir)
    ds = dataset if dataset is not None else Dataset.load(run_dir)
    text_emb = _load_embeddings(run_dir, ds.n_items, need_text)
    sids, codebook_sizes = _load_sids(run_dir, ds.n_items, need_sids)
    cold = np.array(ds.cold, dtype=bool)  # a copy: arrays read from parquet are read-only
    return Catalogue(
        n_users=ds.n_users,
        item_text=list(ds.item_text),
        cold=torch.from_numpy(cold),
        popularity=torch.as_tensor(ds.popularity(), dtype=torch.float32),
        text_emb=text_emb,
        sids=sids,
        codebook_sizes=codebook_sizes,
    )


def catalogue_for(cls: type[Recommender], run_dir: str | Path, dataset: Dataset) -> Catalogue:
    """The catalogue with the artifacts that model class `cls` declares it needs."""
    return build_catalogue(
        run_dir, dataset, need_text=cls.needs_text, need_sids=bool(cls.needs_sids)
    )


def input_fingerprint(cls: type[Recommender], run_dir: str | Path, dataset: Dataset) -> dict:
    """Hashes of the inputs model class `cls` is trained on (dataset, and text / SIDs if used)."""
    run_dir = Path(run_dir)
    out = {"dataset": dataset_hash(dataset)}
    if cls.needs_text:
        out["embeddings"] = hash_file(run_dir / EMBEDDINGS)
    if cls.needs_sids:
        out["sids"] = hash_file(run_dir / SIDS)
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


def _load_embeddings(run_dir: Path, n_items: int, required: bool) -> torch.Tensor | None:
    path = run_dir / EMBEDDINGS
    if not path.is_file():
        if required:
            raise SidrecError(
                f"{path}: no item text embeddings; run `sidrec embed {run_dir}` first"
            )
        return None
    emb = np.load(path, mmap_mode="r")
    if emb.ndim != 2 or emb.shape[0] != n_items:
        raise SidrecError(
            f"{path}: expected shape [{n_items}, d] for the {n_items} items of the dataset, "
            f"got {list(emb.shape)}; re-run `sidrec embed {run_dir}`"
        )
    if not np.isfinite(emb).all():
        raise SidrecError(f"{path}: contains NaN or inf; re-run `sidrec embed {run_dir}`")
    return torch.from_numpy(np.array(emb, dtype=np.float32))


def _load_sids(
    run_dir: Path, n_items: int, required: bool
) -> tuple[torch.Tensor | None, tuple[int, ...]]:
    path = run_dir / SIDS
    if not path.is_file():
        if required:
            raise SidrecError(f"{path}: no semantic IDs; run `sidrec tokenize {run_dir}` first")
        return None, ()
    sids = np.load(path)
    if sids.ndim != 2 or sids.shape[0] != n_items or not np.issubdtype(sids.dtype, np.integer):
        raise SidrecError(
            f"{path}: expected integer shape [{n_items}, n_codes], got {sids.dtype} "
            f"{list(sids.shape)}; re-run `sidrec tokenize {run_dir}`"
        )
    if sids.min() < 0:
        raise SidrecError(f"{path}: negative codes; re-run `sidrec tokenize {run_dir}`")
    n_codes = sids.shape[1]
    # codebook sizes: tokenizer.json lists the quantiser levels; the collision column's
    # vocabulary (max items per prefix) is appended when it is not listed there.
    sizes = [int(s) for s in (sids.max(axis=0) + 1)]
    tok_path = run_dir / TOKENIZER
    if tok_path.is_file():
        listed = [int(s) for s in read_json(tok_path).get("codebook_sizes", [])]
        if len(listed) == n_codes - 1:
            listed.append(sizes[-1])
        if len(listed) != n_codes or any(m > s for m, s in zip(sizes, listed, strict=True)):
            raise SidrecError(
                f"{tok_path}: codebook_sizes {listed} do not match {path} "
                f"({n_codes} columns, largest codes {[s - 1 for s in sizes]}); "
                f"re-run `sidrec tokenize {run_dir}`"
            )
        sizes = listed
    return torch.from_numpy(sids.astype(np.int64)), tuple(sizes)
