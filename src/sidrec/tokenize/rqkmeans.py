"""Residual k-means (RQ-KMeans) semantic IDs with faiss.

Level 1 clusters the (optionally standardised) item vectors into K centroids; level l
clusters the residuals x - sum_{j<l} c_j(x) left by the previous levels. This is the
non-neural alternative to TIGER's RQ-VAE (used e.g. by OneRec and in the LIGER/COBRA
line of work as a cheap tokenizer); it needs no training loop and is a useful reference
for the RQ-VAE's codebook usage and fit time.

Encoding is nearest-centroid per level. With `balanced=True` the centroids are fitted
with capacity-constrained Lloyd steps (`balanced_assign`), but warm and cold items are
still encoded by nearest centroid, so the residuals each level is fitted on are exactly
the residuals it sees at encoding time.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sidrec.tokenize.base import Standardizer, Tokenizer, kmeans, nearest, nearest_k
from sidrec.tokenize.config import RQKMeansConfig


class RQKMeansTokenizer(Tokenizer):
    method = "rqkmeans"
    Config = RQKMeansConfig

    def __init__(self, cfg: RQKMeansConfig, device: str | torch.device | None = None) -> None:
        super().__init__(cfg, device)  # device unused: faiss runs on the CPU
        self.scaler: Standardizer | None = None
        self.codebooks: np.ndarray | None = None  # [L, K, d]

    def _fit(self, warm: np.ndarray, progress: bool) -> None:
        cfg = self.cfg
        self.scaler = Standardizer.fit(warm, cfg.standardize)
        residual = self.scaler(warm)  # [n, d]
        sample = None  # rows the balanced steps see (None: all)
        limit = cfg.balanced_sample * cfg.codebook_size
        if cfg.balanced and cfg.balanced_sample > 0 and len(warm) > limit:
            rng = np.random.default_rng(cfg.seed)
            sample = np.sort(rng.choice(len(warm), limit, replace=False))
        books = []
        for level in range(cfg.levels):
            # A different seed per level: the same seed would pick the same initial rows.
            centroids = kmeans(residual, cfg.codebook_size, cfg.kmeans_iters, cfg.seed + level)
            if cfg.balanced:
                rows = residual if sample is None else residual[sample]
                centroids = balanced_kmeans(rows, centroids, cfg.balanced_iters)
            codes, _ = nearest(residual, centroids)
            for lo in range(0, len(residual), 65_536):  # in place, no [n, d] temporary
                residual[lo : lo + 65_536] -= centroids[codes[lo : lo + 65_536]]
            books.append(centroids)
        self.codebooks = np.stack(books)  # [L, K, d]
        self.fit_log = {"n_fit": len(warm),
                        "n_balanced": len(warm) if sample is None else len(sample)}

    def _residual_pass(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        residual = self.scaler(vectors)  # [n, d]
        codes = np.empty((len(vectors), self.levels), dtype=np.int64)
        recon = np.zeros_like(residual)
        for level, centroids in enumerate(self.codebooks):
            codes[:, level], _ = nearest(residual, centroids)
            chosen = centroids[codes[:, level]]  # [n, d]
            residual = residual - chosen
            recon += chosen
        return codes, self.scaler.inverse(recon)

    def _encode(self, vectors: np.ndarray) -> np.ndarray:
        return self._residual_pass(vectors)[0]

    def _reconstruct(self, vectors: np.ndarray) -> np.ndarray:
        return self._residual_pass(vectors)[1]

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {
            "mean": torch.from_numpy(self.scaler.mean),
            "std": torch.from_numpy(self.scaler.std),
            "codebooks": torch.from_numpy(self.codebooks),
        }

    def _load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.scaler = Standardizer(tensors["mean"].numpy(), tensors["std"].numpy())
        self.codebooks = tensors["codebooks"].numpy().astype(np.float32)


def balanced_kmeans(x: np.ndarray, centroids: np.ndarray, iters: int) -> np.ndarray:
    """Lloyd steps with capacity-constrained assignment; returns new centroids [K, d]."""
    k = len(centroids)
    capacity = math.ceil(len(x) / k)
    x = np.ascontiguousarray(x, dtype=np.float32)
    x_t = torch.from_numpy(x)  # shares memory
    for _ in range(iters):
        assign = balanced_assign(x, centroids, capacity)
        counts = np.bincount(assign, minlength=k)
        sums = torch.zeros(k, x.shape[1]).index_add_(0, torch.from_numpy(assign), x_t)  # [K, d]
        # A centroid that no row ends up in keeps its old position.
        filled = counts > 0
        centroids = centroids.copy()
        centroids[filled] = (sums.numpy()[filled] / counts[filled, None]).astype(np.float32)
    return centroids


def balanced_assign(
    x: np.ndarray, centroids: np.ndarray, capacity: int, candidates: int = 16
) -> np.ndarray:
    """Assign each row of x [n, d] to a centroid, at most `capacity` rows per centroid.

    Vectorised greedy rounds: every unassigned row proposes to its next-nearest centroid;
    each centroid accepts the closest proposers up to its remaining capacity. At most K
    rounds, since total capacity K * capacity >= n. Returns [n] int64.

    A row's preference order is needed only as far as it gets: the `candidates` nearest
    centroids of every row come from one faiss k-NN search (sorted, with their distances),
    and a row that all of them refuse gets its full order then. `candidates=0` orders
    every row fully up front (the reference: the same assignment). Sorting the full
    [n, K] distance matrix (and holding it: 1 GB at 1 M x 256) was most of the fit.
    """
    n, k = len(x), len(centroids)
    if capacity * k < n:
        raise ValueError(f"capacity {capacity} x {k} centroids cannot hold {n} rows")
    x = np.ascontiguousarray(x, dtype=np.float32)
    width = k if candidates <= 0 else min(candidates, k)
    dist, pref = nearest_k(x, centroids, width)  # (n, T) each, nearest first
    more_dist = np.zeros((0, k), dtype=np.float32)  # full orders of rows that ran out
    more_pref = np.zeros((0, k), dtype=np.int64)
    more_row = np.full(n, -1, dtype=np.int64)  # row -> its line in more_*
    assign = np.full(n, -1, dtype=np.int64)
    load = np.zeros(k, dtype=np.int64)
    ptr = np.zeros(n, dtype=np.int64)  # next preference to try, per row
    for _ in range(k):
        rows = np.flatnonzero(assign < 0)
        if len(rows) == 0:
            break
        at = ptr[rows]
        out = at >= width  # refused by all T nearest: needs its full order (rare)
        fresh = rows[out & (more_row[rows] < 0)]
        if len(fresh):
            d_full, p_full = nearest_k(x[fresh], centroids, k)
            more_row[fresh] = len(more_pref) + np.arange(len(fresh))
            more_dist, more_pref = np.concatenate([more_dist, d_full]), np.concatenate(
                [more_pref, p_full])
        inside = ~out
        choice = np.empty(len(rows), dtype=np.int64)
        d = np.empty(len(rows), dtype=np.float32)
        choice[inside], d[inside] = pref[rows[inside], at[inside]], dist[rows[inside], at[inside]]
        line = more_row[rows[out]]
        choice[out], d[out] = more_pref[line, at[out]], more_dist[line, at[out]]
        order = np.lexsort((rows, d, choice))  # by centroid, then distance
        chosen = choice[order]
        first = np.searchsorted(chosen, chosen, side="left")
        rank = np.arange(len(order)) - first  # position among this centroid's proposers
        ok = rank < (capacity - load)[chosen]
        assign[rows[order[ok]]] = chosen[ok]
        load += np.bincount(chosen[ok], minlength=k)
        ptr[rows[order[~ok]]] += 1
    return assign
