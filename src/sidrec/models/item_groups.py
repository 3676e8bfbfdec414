"""Items grouped by their sparse ID, stored ragged, and the nearest members of the groups a
batch of queries names (COBRA's per-sparse-ID retrieval, Sec. 3.3).

COBRA takes, for each of a user's M beams, the N items of the beam's sparse ID nearest to
the beam's v̂. Groups are uneven: at 1 M items balanced RQ-KMeans leaves 2-level sparse
IDs of 15 items on average but up to 379, so a table padded to the largest group made
every beam gather, normalise and score 379 vectors. Profiled at 100k items with 1M-like
groups (mean 12.6, largest 387; one thread), that padded search took 2/3 of a batch.

`GroupedItems` keeps the groups ragged instead (CSR): every item id sorted by group, and
where each group starts. A batch reads exactly its beams' members, so its cost is the sum
of their groups' sizes, and what it returns is as wide as the N nearest (or the largest
group it asked for, when that is smaller), not as the largest group of the catalogue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sidrec.models.retrieval import seen_in_rows


class GroupedItems:
    """Items by group: group g's members are items[offsets[g] : offsets[g + 1]], in
    ascending item id (the order every tie keeps).

    group [n_items]: each item's group, 0..G-1 (G = `n_groups`, default the largest + 1).
    A query's group -1 (or G and above) is an empty group: no members.
    """

    def __init__(self, group: torch.Tensor, n_groups: int | None = None) -> None:
        group = group.long()
        n_groups = int(group.max()) + 1 if n_groups is None and len(group) else n_groups or 0
        self.items = torch.argsort(group, stable=True)  # (n_items,)
        counts = torch.bincount(group, minlength=n_groups)  # (G,)
        self.offsets = F.pad(counts.cumsum(0), (1, 0))  # (G + 1,)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def sizes(self) -> torch.Tensor:
        """Members per group [G]."""
        return self.offsets.diff()

    @staticmethod
    def _of(items: torch.Tensor, offsets: torch.Tensor) -> GroupedItems:
        out = object.__new__(GroupedItems)
        out.items, out.offsets = items, offsets
        return out

    def to(self, device: torch.device | str) -> GroupedItems:
        return GroupedItems._of(self.items.to(device), self.offsets.to(device))

    def extended(self, group: torch.Tensor, first: int) -> GroupedItems:
        """These groups plus items first.. with groups group [m] (a group id at or above
        G starts a group; this one is unchanged). Each new item goes after its group's
        members: O(n_items + m log m), the same as one built from all items at once."""
        group = group.long().to(self.items.device)
        n_groups = max(len(self), int(group.max()) + 1 if len(group) else 0)
        old = F.pad(self.sizes, (0, n_groups - len(self)))  # (G',)
        offsets = F.pad((old + torch.bincount(group, minlength=n_groups)).cumsum(0), (1, 0))
        shift = offsets[:-1] - F.pad(self.offsets[:-1], (0, n_groups - len(self)))
        items = torch.empty(int(offsets[-1]), dtype=torch.long, device=self.items.device)
        # an old member moves up by the members added to the groups before its own
        items[torch.arange(len(self.items), device=items.device)
              + torch.repeat_interleave(shift[: len(self)], self.sizes)] = self.items
        order = torch.argsort(group, stable=True)  # (m,): the new items, by group
        g = group[order]
        rank = torch.arange(len(g), device=g.device) - torch.searchsorted(g, g)
        items[offsets[g] + old[g] + rank] = order + first
        return GroupedItems._of(items, offsets)

    def members(self, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The members of groups [Q] (-1: none), flat: (items [T], query [T], slot [T]),
        query-major, each group's in item-id order; T = the sum of the groups' sizes."""
        known = (groups >= 0) & (groups < len(self))
        g = torch.where(known, groups, 0)
        start = self.offsets[g]
        count = torch.where(known, self.offsets[g + 1] - start, 0)  # (Q,)
        query = torch.repeat_interleave(torch.arange(len(groups), device=groups.device), count)
        slot = torch.arange(len(query), device=query.device) - torch.repeat_interleave(
            count.cumsum(0) - count, count)
        return self.items[start[query] + slot], query, slot

    def padded(self, groups: torch.Tensor) -> torch.Tensor:
        """Members [Q, W] of groups [Q] in item-id order, -1 past a group's end; W = the
        largest of these groups (not of the catalogue)."""
        items, query, slot = self.members(groups)
        width = int(slot.max()) + 1 if len(slot) else 0
        out = torch.full((len(groups), width), -1, dtype=torch.long, device=groups.device)
        out[query, slot] = items
        return out

    def nearest(self, queries: torch.Tensor, groups: torch.Tensor, item_vectors: torch.Tensor,
                k: int | None = None, seen: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The k members of each query's group nearest to it by cosine (k None: all).

        queries [Q, d], groups [Q] (-1: none), item_vectors [n_items, d]; seen [B, S]
        (-1 = padding): items that are no candidates for the Q / B queries of user b
        (queries user-major), left out before the k nearest are kept. Returns (items
        [Q, W], cosine [Q, W]), -1 / -inf past a query's candidates; W = min(k, the
        largest of these groups). A group of at most k members keeps item-id order; a
        larger one its k nearest, nearest first (equal cosines in item-id order).
        """
        items, query, slot = self.members(groups)
        # Gather, then normalise: the T candidate rows, not the whole catalogue per call.
        cos = (F.normalize(item_vectors[items], dim=-1)
               * F.normalize(queries, dim=-1)[query]).sum(-1)  # (T,)
        if seen is not None:
            user = query // (len(groups) // len(seen))
            cos = cos.masked_fill(seen_in_rows(items, user, seen), float("-inf"))
        width = int(slot.max()) + 1 if len(slot) else 0
        if k is not None and width > k:  # k best per group: by cosine, then group-major
            order = cos.argsort(descending=True, stable=True)
            order = order[query[order].argsort(stable=True)]
            items, query, cos = items[order], query[order], cos[order]
            slot = torch.arange(len(query), device=query.device) - torch.searchsorted(
                query, query)
            keep = slot < k
            items, query, slot, cos = items[keep], query[keep], slot[keep], cos[keep]
            width = k
        out = torch.full((len(groups), width), -1, dtype=torch.long, device=groups.device)
        out_cos = torch.full((len(groups), width), float("-inf"), device=queries.device,
                             dtype=cos.dtype)
        out[query, slot] = items
        out_cos[query, slot] = cos
        return out, out_cos
