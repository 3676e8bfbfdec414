"""The tokenizer interface shared by RQ-VAE and RQ-KMeans, input checks and k-means helpers.

A tokenizer maps item vectors [n, d] to codes [n, L] (one code per level, each in
[0, K)). It is fitted on warm items only and then encodes any vector (warm, cold, or an
item added later) without refitting. Checkpoints are a directory with `config.json`
(method, config, input dimension) and `model.safetensors` (tensors only; never pickle).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sidrec.config import from_dict, to_dict
from sidrec.device import pick_device
from sidrec.errors import SidrecError
from sidrec.io import atomic_path, read_json, write_json

FORMAT_VERSION = 1


class Tokenizer:
    """Base class: subclasses set `method`, `Config` and implement `_fit`, `_encode`,
    `_reconstruct`, `_tensors` and `_load_tensors`."""

    method: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, cfg: Any, device: str | torch.device | None = None) -> None:
        self.cfg = cfg
        self.device = pick_device(device or "auto")
        self.input_dim: int | None = None
        self.fit_log: dict[str, Any] = {}  # training summary for tokenizer.json

    @property
    def levels(self) -> int:
        return self.cfg.levels

    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def fitted(self) -> bool:
        return self.input_dim is not None

    def fit(self, warm: np.ndarray, progress: bool = False) -> Tokenizer:
        """Fit on warm item vectors [n_warm, d] (never on cold items)."""
        warm = check_vectors(warm, what="warm vectors")
        if len(warm) == 0:
            raise SidrecError(
                "tokenize: no warm items to fit the tokenizer on; every item is cold — "
                "check the dataset's cold-start settings (cold_fraction)"
            )
        if len(warm) < self.codebook_size:
            raise SidrecError(
                f"tokenize: {len(warm)} warm items are fewer than codebook_size "
                f"{self.codebook_size}; lower it, e.g. codebook_size={max(2, len(warm) // 8)}"
            )
        self.input_dim = warm.shape[1]
        self._fit(warm, progress)
        return self

    def encode(self, vectors: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """Codes [n, L] int64 for vectors [n, d]."""
        vectors = self._check_input(vectors)
        out = [
            self._encode(vectors[i : i + batch_size]) for i in range(0, len(vectors), batch_size)
        ]
        if not out:
            return np.zeros((0, self.levels), dtype=np.int64)
        return np.concatenate(out).astype(np.int64, copy=False)

    def reconstruct(self, vectors: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """The tokenizer's reconstruction [n, d] of vectors [n, d] from their codes."""
        vectors = self._check_input(vectors)
        out = [
            self._reconstruct(vectors[i : i + batch_size])
            for i in range(0, len(vectors), batch_size)
        ]
        if not out:
            return np.zeros((0, vectors.shape[1]), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    def save(self, path: str | Path) -> None:
        if not self.fitted:
            raise RuntimeError("save() called before fit()")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self._tensors().items()}
        with atomic_path(path / "model.safetensors") as tmp:
            save_file(tensors, str(tmp))
        write_json(
            path / "config.json",
            {
                "format_version": FORMAT_VERSION,
                "method": self.method,
                "config": to_dict(self.cfg),
                "input_dim": self.input_dim,
            },
        )

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> Tokenizer:
        meta = _read_meta(path)
        if meta["method"] != cls.method:
            raise SidrecError(
                f"{path}: holds a {meta['method']!r} tokenizer, not {cls.method!r}; "
                "use sidrec.tokenize.load_tokenizer to load any method"
            )
        tok = cls(from_dict(cls.Config, meta["config"], where=f"{path}/config.json"), device)
        tok.input_dim = int(meta["input_dim"])
        tok._load_tensors(load_file(str(Path(path) / "model.safetensors")))
        return tok

    def _check_input(self, vectors: np.ndarray) -> np.ndarray:
        if not self.fitted:
            raise RuntimeError("encode() called before fit()")
        return check_vectors(vectors, dim=self.input_dim)

    # -- implemented by subclasses -------------------------------------------------
    def _fit(self, warm: np.ndarray, progress: bool) -> None:
        raise NotImplementedError

    def _encode(self, vectors: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _reconstruct(self, vectors: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError


def _read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise SidrecError(
            f"{path}: no tokenizer checkpoint (config.json + model.safetensors); "
            "run `sidrec tokenize` for this run directory first"
        )
    meta = read_json(path / "config.json")
    if meta.get("format_version") != FORMAT_VERSION:
        raise SidrecError(
            f"{path}/config.json: tokenizer format {meta.get('format_version')!r} is not the "
            f"supported {FORMAT_VERSION}; re-run `sidrec tokenize`"
        )
    return meta


def check_vectors(
    x: np.ndarray, dim: int | None = None, what: str = "vectors", row_names: Any = None
) -> np.ndarray:
    """`x` as a C-contiguous float32 [n, d] array; a SidrecError names the first bad row."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise SidrecError(f"tokenize: {what} must be a 2-d array [n, d], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise SidrecError(f"tokenize: {what} must be numeric, got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise SidrecError(
            f"tokenize: {what} have dimension {x.shape[1]} but the tokenizer was fitted on "
            f"dimension {dim}; embed them with the same encoder as the catalogue"
        )
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        name = f" (item {row_names[row]})" if row_names is not None else ""
        bad = "NaN" if np.isnan(x[row]).any() else "inf"
        raise SidrecError(
            f"tokenize: {what} row {row}{name} contains {bad} "
            f"({int((~finite).sum())} bad rows in all); re-run the embedding stage"
        )
    return x


class Standardizer:
    """Per-dimension z-score fitted on warm items (TIGER standardises its input)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = mean.astype(np.float32)  # [d]
        self.std = std.astype(np.float32)  # [d]

    @classmethod
    def fit(cls, x: np.ndarray, enabled: bool = True) -> Standardizer:
        if not enabled:
            return cls(np.zeros(x.shape[1]), np.ones(x.shape[1]))
        std = x.std(axis=0, dtype=np.float64)
        # A constant dimension carries no information; dividing by ~0 would blow it up.
        std[std < 1e-8] = 1.0
        return cls(x.mean(axis=0, dtype=np.float64), std)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return x * self.std + self.mean


def kmeans(x: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
    """faiss k-means centroids [k, d] of x [n, d] (float32), deterministic for a seed."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    # min_points_per_centroid=1: small catalogues are legitimate here; silences faiss's
    # "please provide at least 39*k points" warning. faiss subsamples n > 256*k.
    km = faiss.Kmeans(
        x.shape[1], k, niter=iters, seed=seed, verbose=False, min_points_per_centroid=1
    )
    with _faiss_threads(min(len(x), 256 * k) * k * x.shape[1] * iters):
        km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest centroid [n] int64, squared distance [n]) by exact L2 search."""
    dist, idx = nearest_k(x, centroids, 1)
    return idx[:, 0], dist[:, 0]


def nearest_k(x: np.ndarray, centroids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(squared distances [n, k], centroid ids [n, k] int64) of the k nearest centroids of
    each row of x [n, d], nearest first, by exact L2 search."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    with _faiss_threads(len(x) * len(centroids) * centroids.shape[1]):
        dist, idx = index.search(np.ascontiguousarray(x, dtype=np.float32), k)
    return dist, idx.astype(np.int64)


@contextlib.contextmanager
def _faiss_threads(work: int) -> Iterator[None]:
    """One OpenMP thread below ~1e10 multiply-adds: there faiss's thread start-up and spinning
    cost more than they save (k-means of 1.7k x 384 into 32 codes: 0.12 s on one thread,
    0.8 s on two, on a busy 2-core machine; results are identical)."""
    before = faiss.omp_get_max_threads()
    if work < SMALL_FAISS_WORK:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


SMALL_FAISS_WORK = 10_000_000_000  # rows x centroids x dim (x iterations)
