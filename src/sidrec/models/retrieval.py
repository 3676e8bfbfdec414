"""Dense retrieval shared by Dense, LIGER and COBRA: the nearest items to a query (through
`ItemIndex`, models/item_index.py: exact, or a faiss IVF calibrated on its queries),
leaving out seen items, and merging candidate lists (the nearest items within a sparse ID:
models/item_groups.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sidrec.models.item_index import ItemIndex

ROW_SPAN = 2**32  # seen_in_rows keys (row, item) as row * ROW_SPAN + item: ids below 2^32


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
