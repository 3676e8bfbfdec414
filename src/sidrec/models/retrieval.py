"""Dense retrieval shared by Dense, LIGER and COBRA: cosine top-k, re-ranking a candidate
set, and nearest neighbours among the items that share a sparse ID, and merging candidate lists.

Small catalogues are searched exactly with a matrix product; `ItemIndex` switches to a
faiss HNSW index when the catalogue is large (`exact_below`), since a brute-force
[B, n_items] score matrix stops fitting a CPU cache (and, for millions, memory).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def cosine_topk(
    queries: torch.Tensor, items: torch.Tensor, k: int, allowed: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by cosine. queries [B, d], items [N, d], allowed [B, N] or [N] bool."""
    scores = F.normalize(queries, dim=-1) @ F.normalize(items, dim=-1).T  # (B, N)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    top = torch.topk(scores, min(k, items.shape[0]), dim=1)
    return top.indices, top.values


class ItemIndex:
    """Inner-product search over L2-normalised item vectors (i.e. cosine)."""

    def __init__(self, vectors: torch.Tensor, exact_below: int = 200_000, hnsw_m: int = 32):
        self.vectors = F.normalize(vectors.float(), dim=-1)
        self.exact = len(vectors) < exact_below
        self._faiss = None
        if not self.exact:
            import faiss

            index = faiss.IndexHNSWFlat(vectors.shape[1], hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = 128
            index.add(self.vectors.cpu().numpy().astype(np.float32))
            self._faiss = index

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, k], cosine [B, k]) of the nearest items."""
        if self.exact:
            return cosine_topk(queries, self.vectors.to(queries.device), k)
        q = F.normalize(queries.float(), dim=-1).cpu().numpy()
        scores, ids = self._faiss.search(q, k)
        return (torch.from_numpy(ids).to(queries.device),
                torch.from_numpy(scores).to(queries.device))


class GroupedItems:
    """Items grouped by a key (their sparse ID), as padded member lists.

    `members[g]` holds the item ids of group g, padded with -1 to the largest group, so
    the neighbours of many queries within their own groups are one gather and one batched
    dot product: exact, and no Python loop over queries.
    """

    def __init__(self, keys: torch.Tensor):
        # keys: [N] int64 group key of each item
        order = torch.argsort(keys, stable=True)
        sorted_keys = keys[order]
        self.group_keys, counts = torch.unique_consecutive(sorted_keys, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        width = int(counts.max())
        dev = keys.device
        slot = torch.arange(len(keys), device=dev) - torch.repeat_interleave(starts, counts)
        group = torch.repeat_interleave(torch.arange(len(counts), device=dev), counts)
        self.members = torch.full((len(counts), width), -1, dtype=torch.long, device=dev)
        self.members[group, slot] = order  # (G, width)

    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """Members [..., width] of the groups with these keys (all -1 for unknown keys)."""
        pos = torch.searchsorted(self.group_keys, keys).clamp_max(len(self.group_keys) - 1)
        found = self.group_keys[pos] == keys
        out = self.members[pos]
        return torch.where(found.unsqueeze(-1), out, torch.full_like(out, -1))

    def neighbours(
        self, queries: torch.Tensor, keys: torch.Tensor, item_vectors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All members of each query's group with their cosine to the query.

        queries [Q, d], keys [Q] -> (items [Q, width] with -1 padding, cosine [Q, width]
        with -inf at padding).
        """
        members = self.lookup(keys)  # (Q, W)
        vecs = F.normalize(item_vectors, dim=-1)[members.clamp_min(0)]  # (Q, W, d)
        cos = torch.einsum("qd,qwd->qw", F.normalize(queries, dim=-1), vecs)
        return members, cos.masked_fill(members < 0, float("-inf"))


def seen_in_history(items: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """items [B, C] that occur in the row's history [B, L] -> [B, C] bool."""
    real = history >= 0
    return ((items[:, :, None] == history[:, None, :]) & real[:, None, :]).any(-1)


def merge_candidates(
    items: torch.Tensor, scores: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k distinct items from candidates [B, C] (-1 = none); an item's best score counts."""
    scores = scores.masked_fill(items < 0, float("-inf"))
    order = scores.argsort(dim=1, descending=True)
    items, scores = items.gather(1, order), scores.gather(1, order)
    # After sorting, keep the first occurrence of each item in a row.
    srt, idx = items.sort(dim=1, stable=True)
    dup_sorted = torch.zeros_like(srt, dtype=torch.bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = torch.zeros_like(dup_sorted).scatter(1, idx, dup_sorted)
    scores = scores.masked_fill(dup | (items < 0), float("-inf"))
    top, pos = scores.topk(min(k, scores.shape[1]), dim=1)
    out = items.gather(1, pos).masked_fill(~torch.isfinite(top), -1)
    if out.shape[1] < k:
        pad = k - out.shape[1]
        out = F.pad(out, (0, pad), value=-1)
        top = F.pad(top, (0, pad), value=float("-inf"))
    return out, top


def nearest(queries: torch.Tensor, vectors: torch.Tensor, k: int,
            history: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k items by cosine to queries [B, d]; without the history's items if given."""
    extra = history.shape[1] if history is not None else 0  # room for the seen items
    ids, cos = ItemIndex(vectors).search(queries, min(k + extra, len(vectors)))
    if history is not None:
        cos = cos.masked_fill(seen_in_history(ids, history), float("-inf"))
    return merge_candidates(ids, cos, k)
