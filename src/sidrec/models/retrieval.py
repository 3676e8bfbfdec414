"""Dense retrieval shared by Dense, LIGER and COBRA: cosine top-k, re-ranking a candidate
set, leaving out seen items, and merging candidate lists (the nearest items within a
sparse ID: models/item_groups.py).

Small catalogues are searched exactly with a matrix product; `ItemIndex` switches to a
faiss IVF-Flat index when the catalogue is large (`exact_below`), since a brute-force
[B, n_items] score matrix stops fitting a CPU cache (and, for millions, memory).

IVF-Flat, not HNSW: on clustered item vectors (text embeddings, and the synthetic
catalogue of `sidrec data synth`) an HNSW graph (M 32, efSearch 512) found 0.96 of the
exact top-10 of 100k items where IVF-Flat probing a quarter of its cells found 0.99, and
adding items to IVF is one nearest-cell lookup each. A quarter, not the usual few
percent: the queries of an untrained model lie far from every item (cosine ~0.45 to the
nearest), and there 1/8 of 1,265 cells found 0.94 of the top-10 of 100k items, 1/4 0.990,
3/8 0.997 (benchmarks/bench_scale.py measures the recall of exact search at every size);
a trained model's queries, near their items, need fewer cells.
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F

EXACT_BELOW = 200_000  # ItemIndex searches fewer rows than this exactly
EXACT_CHUNK = 65_536  # items per matrix product of the exact search
ROW_SPAN = 2**32  # seen_in_rows keys (row, item) as row * ROW_SPAN + item: ids below 2^32


def cosine_topk(
    queries: torch.Tensor, items: torch.Tensor, k: int, allowed: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by cosine. queries [B, d], items [N, d], allowed [B, N] or [N] bool."""
    scores = F.normalize(queries, dim=-1) @ F.normalize(items, dim=-1).T  # (B, N)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    top = torch.topk(scores, min(k, items.shape[0]), dim=1)
    return top.indices, top.values


def exact_topk(queries: torch.Tensor, items: torch.Tensor, k: int, chunk: int = EXACT_CHUNK,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by inner product, `chunk` items at a time (memory [B, chunk], not
    [B, N]): queries [B, d], items [N, d] -> (rows [B, min(k, N)], scores)."""
    best_rows, best = None, None
    for lo in range(0, len(items), chunk):
        scores = queries @ items[lo : lo + chunk].T  # (B, C)
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        rows, vals = top.indices + lo, top.values
        if best is not None:
            vals, pick = torch.cat([best, vals], 1).topk(min(k, best.shape[1] + vals.shape[1]),
                                                        dim=1)
            rows = torch.cat([best_rows, rows], 1).gather(1, pick)
        best_rows, best = rows, vals
    if best is None:
        empty = queries.new_zeros(len(queries), 0)
        return empty.long(), empty
    return best_rows, best


class ItemIndex:
    """Maximum inner-product search over item vectors: the best k ids and scores per query.

    vectors [N, d] are L2-normalised first (`normalize=True`, the default: cosine, as
    COBRA and LIGER score) or searched as they are (dot products, SASRec-style); ids [N]
    is the item id of each row (default 0..N-1). Below `exact_below` rows the search is
    exact; above it, a faiss IVF-Flat index: k-means cells (nlist = 4 sqrt(N)), each query
    scores the items of the `probe` fraction of cells nearest to it exactly (`search` may
    ask for another fraction). `add` appends rows in place (an IVF row goes to its nearest
    cell; the cells are not refitted).
    """

    def __init__(self, vectors: torch.Tensor, ids: torch.Tensor | None = None,
                 exact_below: int = EXACT_BELOW, normalize: bool = True, probe: float = 0.25,
                 seed: int = 0) -> None:
        self.normalize = normalize
        self.vectors = self._prepare(vectors)
        self.ids = (torch.arange(len(vectors), device=vectors.device) if ids is None
                    else torch.as_tensor(ids).long().to(vectors.device))
        self.exact = len(vectors) < exact_below
        self._faiss = None
        if not self.exact:
            import faiss

            n, d = self.vectors.shape
            nlist = max(1, min(n // 32, round(4 * math.sqrt(n))))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.niter, index.cp.seed = 10, seed
            index.cp.max_points_per_centroid = 32  # k-means on a sample of 32 per cell
            index.cp.min_points_per_centroid = 1  # small pools are fine (no warning)
            x = self.vectors.cpu().numpy()
            index.train(x)
            index.add_with_ids(x, self.ids.cpu().numpy())
            self._faiss = index
            self.vectors = self.vectors[:0]  # faiss holds the rows
        self.probe = probe

    def _prepare(self, vectors: torch.Tensor) -> torch.Tensor:
        vectors = vectors.detach().float()
        return F.normalize(vectors, dim=-1) if self.normalize else vectors.contiguous()

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, vectors: torch.Tensor, ids: torch.Tensor) -> None:
        """Append rows vectors [m, d] with item ids [m] (in place)."""
        ids = torch.as_tensor(ids).long().to(self.ids.device)
        x = self._prepare(vectors).to(self.ids.device)
        if self._faiss is not None:
            self._faiss.add_with_ids(x.cpu().numpy(), ids.cpu().numpy())
        else:
            self.vectors = torch.cat([self.vectors, x])
        self.ids = torch.cat([self.ids, ids])

    def search(self, queries: torch.Tensor, k: int, probe: float | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, k'], scores [B, k']) of the best rows, best first: cosine (or dot
        products) to queries [B, d]. Exact: k' = min(k, N); IVF (scanning the `probe`
        fraction of its cells, default the index's own): k' = k, ids -1 and scores -inf
        where fewer than k rows were found."""
        if self.exact:
            if self.normalize and len(self.vectors) <= EXACT_CHUNK:  # one product, as before
                rows, scores = cosine_topk(queries, self.vectors.to(queries.device), k)
            else:
                q = F.normalize(queries, dim=-1) if self.normalize else queries
                rows, scores = exact_topk(q, self.vectors.to(queries.device), k)
            return self.ids.to(queries.device)[rows], scores
        q = queries.detach().float()
        q = (F.normalize(q, dim=-1) if self.normalize else q).cpu().numpy()
        fraction = self.probe if probe is None else probe
        self._faiss.nprobe = max(1, math.ceil(fraction * self._faiss.nlist))
        scores, ids = self._faiss.search(q, k)
        ids_t, scores_t = torch.from_numpy(ids), torch.from_numpy(scores)
        scores_t = scores_t.masked_fill(ids_t < 0, float("-inf"))
        return ids_t.to(queries.device), scores_t.to(queries.device)

    @classmethod
    def of(cls, vectors: torch.Tensor) -> ItemIndex:
        """The default index of `vectors`, built once per tensor and reused until the tensor
        is modified in place or freed (COBRA's cached item vectors: a 1 M-item IVF index
        takes minutes to build, so it must not be rebuilt per request)."""
        key = id(vectors)
        hit = _BUILT.get(key)
        if hit is not None and hit[0]() is vectors and hit[1] == vectors._version:
            return hit[2]
        index = cls(vectors)
        _BUILT[key] = (weakref.ref(vectors, lambda _, k=key: _BUILT.pop(k, None)),
                       vectors._version, index)
        return index


# id(tensor) -> (weak reference to it, its version when indexed, the index)
_BUILT: dict[int, tuple[weakref.ref, int, ItemIndex]] = {}


def seen_in_history(items: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """items [B, C] that occur in the row's seen items [B, S] (-1 = padding) -> [B, C] bool."""
    rows = torch.arange(len(items), device=items.device).repeat_interleave(items.shape[1])
    return seen_in_rows(items.flatten(), rows, seen).view_as(items)


def seen_in_rows(items: torch.Tensor, rows: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """items [T] that occur among the seen items [B, S] (-1 = padding) of their row rows [T]
    -> [T] bool.

    A binary search in the sorted (row, item) keys of every seen item: a whole history
    (hundreds of items) would make a comparison as large as the candidates times the
    history, and candidates need not be a [B, C] block (COBRA's groups are ragged).
    """
    if seen.numel() == 0 or len(items) == 0:
        return torch.zeros_like(items, dtype=torch.bool)
    row = torch.arange(len(seen), device=seen.device)[:, None]
    keys = (row * ROW_SPAN + seen).masked_fill(seen < 0, -1).flatten().sort().values  # (B*S,)
    want = rows.to(seen.device) * ROW_SPAN + items
    pos = torch.searchsorted(keys, want).clamp_max(len(keys) - 1)
    return (keys[pos] == want) & (items >= 0)


def merge_candidates(
    items: torch.Tensor, scores: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k distinct items from candidates [B, C] (-1 = none); an item's best score counts."""
    # Stable sorts: equal scores keep the candidates' order, the same whatever k is.
    scores = scores.masked_fill(items < 0, float("-inf"))
    order = scores.argsort(dim=1, descending=True, stable=True)
    items, scores = items.gather(1, order), scores.gather(1, order)
    # After sorting, keep the first occurrence of each item in a row.
    srt, idx = items.sort(dim=1, stable=True)
    dup_sorted = torch.zeros_like(srt, dtype=torch.bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = torch.zeros_like(dup_sorted).scatter(1, idx, dup_sorted)
    scores = scores.masked_fill(dup | (items < 0), float("-inf"))
    pos = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
    top = scores.gather(1, pos)
    out = items.gather(1, pos).masked_fill(~torch.isfinite(top), -1)
    if out.shape[1] < k:
        pad = k - out.shape[1]
        out = F.pad(out, (0, pad), value=-1)
        top = F.pad(top, (0, pad), value=float("-inf"))
    return out, top


def nearest(queries: torch.Tensor, vectors: torch.Tensor, k: int,
            excluded: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k items by cosine to queries [B, d]; without the `excluded` items [B, S]."""
    extra = excluded.shape[1] if excluded is not None else 0  # room for the seen items
    ids, cos = ItemIndex.of(vectors).search(queries, min(k + extra, len(vectors)))
    if excluded is not None:
        cos = cos.masked_fill(seen_in_history(ids, excluded.to(ids.device)), float("-inf"))
    return merge_candidates(ids, cos, k)
