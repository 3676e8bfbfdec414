"""Batched beam search over semantic IDs, constrained or not, and the exact scorer beside it.

TIGER (Rajput et al., NeurIPS 2023, Sec. 3.2) decodes the next item's SID with beam
search; LIGER and COBRA reuse the same function. Everything is batched over users x beams
(one decoder call per SID position for the whole batch) and KV-cached by the caller's
`step_fn`.

- Constrained mode: only prefixes of catalogue SIDs may be extended. The valid-prefix
  structure (`SidIndex`) is built once as tensors: at level t, every valid prefix of
  length t+1 is a node, numbered by its rank among the sorted keys
  `parent_node * V_t + code_t` (the keys stay below n_items * V_t, so no overflow however
  many levels there are). A beam's allowed next codes (and the nodes they lead to) are one
  row of a dense table `[n_nodes_{t-1}, V_t]` of child node ids per level, built from the
  keys on first use, so the mask of all rows is one gather whose cost grows with the
  codebook, not the catalogue; a level whose table would pass `mask_budget` entries (the
  collision level at 1 M items: 626k prefixes x 608) scatters each row's children
  instead, one run of the sorted keys per node. (Both replace a membership test of
  `node * V_t + arange(V_t)` in the sorted keys, a binary search per candidate, each a
  cache miss: ~30x slower at 1 M items.) No Python loop per user or beam either way.
- Items added later (`SidIndex.extended`) are merged into the sorted keys level by level
  (O(n) per level) instead of rebuilding the index.
- Unconstrained mode (paper-faithful): any code sequence may come out; those that are no
  catalogue SID are returned as item -1 and counted in `n_invalid`.
- SID -> item is exact: walking the same keys level by level (`SidIndex.lookup`).
- `exact_scores`: log-likelihood of every catalogue SID by teacher forcing, chunked over
  items. A beam at least as wide as the catalogue must return exactly its ranking
  (tests/test_beam.py).

Scores are sums of the model's log-probabilities; constrained decoding masks invalid codes
but does not renormalise, so beam scores equal the exact scorer's log-likelihoods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from sidrec.errors import SidrecError

# step_fn(prev [N] int64 codes chosen at the previous step (-1 at step 0), step t, state)
#   -> (log-probs [N, V_t] over level t's codes, state)
StepFn = Callable[[torch.Tensor, int, Any], tuple[torch.Tensor, Any]]


MASK_BUDGET = 1 << 26  # entries (int32) of one level's dense child table; beyond: runs


class SidIndex:
    """Valid SID prefixes of a set of items as sorted keys per level (a flat trie).

    sids [n, L] int64 unique rows, code t in [0, sizes[t]); items [n] the item id of each
    row (default 0..n-1). `keys[t]` [n_nodes_t] holds the sorted `parent * sizes[t] + code`
    of the length-(t+1) prefixes, so a node id at level t is its position in `keys[t]`
    (the root, level -1, is node 0). `leaf_items[j]` is the item whose full SID is node j.
    The allowed-children tables (`children_mask`) are derived from the keys on first use.

    It is the one SID -> item index of the package (beam search, TIGER/LIGER's catalogue,
    COBRA's sparse-ID groups). It is always built on the CPU, whatever device its inputs
    are on; `.to(device)` moves it to where it is queried.
    """

    def __init__(
        self, sids: torch.Tensor, sizes: Sequence[int], items: torch.Tensor | None = None,
        mask_budget: int = MASK_BUDGET,
    ) -> None:
        sids = torch.as_tensor(sids, dtype=torch.int64).cpu()
        self.sizes = tuple(int(v) for v in sizes)
        self.mask_budget = mask_budget
        self._check(sids)
        items = torch.arange(len(sids)) if items is None else torch.as_tensor(items).long().cpu()
        self.keys: list[torch.Tensor] = []
        node = torch.zeros(len(sids), dtype=torch.int64)  # (n,) the root
        for t, size in enumerate(self.sizes):
            uniq, node = torch.unique(node * size + sids[:, t], sorted=True, return_inverse=True)
            self.keys.append(uniq)  # (n_nodes_t,)
        if len(sids) and len(self.keys[-1]) != len(sids):
            leaf, row = torch.sort(node, stable=True)
            j = int((leaf[1:] == leaf[:-1]).nonzero()[0, 0])  # first pair with one SID
            a, b = int(items[row[j]]), int(items[row[j + 1]])
            raise SidrecError(
                f"{len(sids) - len(self.keys[-1])} items share a full SID (e.g. items {a} and "
                f"{b}: {sids[row[j]].tolist()}); SIDs must be unique (the tokenizer appends a "
                "collision token), re-run `sidrec tokenize`"
            )
        self.leaf_items = torch.full((len(sids),), -1, dtype=torch.int64)
        self.leaf_items[node] = items  # (n,)
        self._tables: list[torch.Tensor | None] = [None] * len(self.sizes)
        self._runs: list[torch.Tensor | None] = [None] * len(self.sizes)

    def _check(self, sids: torch.Tensor) -> None:
        if sids.dim() != 2 or sids.shape[1] != len(self.sizes):
            raise SidrecError(
                f"SIDs have shape {tuple(sids.shape)} but the codebook sizes {self.sizes} "
                f"give {len(self.sizes)} positions; re-run `sidrec tokenize` for this run "
                "directory"
            )
        hi = torch.as_tensor(list(self.sizes), dtype=torch.int64)
        if len(sids) and ((sids < 0).any() or (sids >= hi).any()):
            raise SidrecError(
                f"SID codes outside the codebook sizes {self.sizes}; the SIDs and the "
                "tokenizer disagree, re-run `sidrec tokenize`"
            )

    def __len__(self) -> int:
        return len(self.leaf_items)

    @property
    def device(self) -> torch.device:
        return self.leaf_items.device

    def _like(self, keys: list[torch.Tensor], leaf_items: torch.Tensor) -> SidIndex:
        out = object.__new__(SidIndex)
        out.sizes, out.mask_budget = self.sizes, self.mask_budget
        out.keys, out.leaf_items = keys, leaf_items
        out._tables = [None] * len(self.sizes)
        out._runs = [None] * len(self.sizes)
        return out

    def to(self, device: torch.device | str) -> SidIndex:
        out = self._like([k.to(device) for k in self.keys], self.leaf_items.to(device))
        out._tables = [None if t is None else t.to(device) for t in self._tables]
        out._runs = [None if r is None else r.to(device) for r in self._runs]
        return out

    def extended(self, sids: torch.Tensor, items: torch.Tensor) -> SidIndex:
        """This index plus rows `sids` [m, L] for items `items` [m] (this one is unchanged).

        The new keys are merged into each level's sorted keys (old node ids shift up by the
        new nodes below them), O(n + m log m) per level, the same index as one built from
        all rows at once. A new SID equal to an indexed one (or to another new one) is an
        error, as in the constructor.
        """
        sids = torch.as_tensor(sids, dtype=torch.int64).cpu()
        self._check(sids)
        if len(sids) == 0:
            return self
        new = sids.numpy()
        node = np.zeros(len(new), dtype=np.int64)  # (m,) parent of each new row, new ids
        keys, remap, old = [], None, np.zeros(0, dtype=np.int64)
        for t, size in enumerate(self.sizes):
            old = self.keys[t].cpu().numpy()
            if remap is not None:  # old parents renumbered; the order is kept
                old = remap[old // size] * size + old % size
            cand = node * size + new[:, t]  # (m,)
            fresh = np.unique(cand)
            at = np.searchsorted(old, fresh)
            known = old[np.minimum(at, len(old) - 1)] == fresh if len(old) else at < 0
            add = fresh[~known]  # sorted keys of the new nodes
            remap = np.arange(len(old)) + np.searchsorted(add, old)  # old id -> new id
            merged = np.empty(len(old) + len(add), dtype=np.int64)
            merged[remap] = old
            merged[np.searchsorted(old, add) + np.arange(len(add))] = add
            keys.append(torch.from_numpy(merged))
            node = np.searchsorted(merged, cand)
        if len(add) != len(new):
            taken = np.isin(cand, old)
            _, first = np.unique(cand, return_index=True)
            twice = np.ones(len(cand), dtype=bool)
            twice[first] = False
            row = int(np.flatnonzero(taken | twice)[0])
            raise SidrecError(
                f"{len(new) - len(add)} added items share a full SID with an indexed item or "
                f"with each other (e.g. item {int(items[row])}: {new[row].tolist()}); SIDs "
                "must be unique (new items take the next free collision token)"
            )
        leaf = torch.full((len(merged),), -1, dtype=torch.int64)
        leaf[torch.from_numpy(remap)] = self.leaf_items.cpu()
        leaf[torch.from_numpy(node)] = torch.as_tensor(items).long().cpu()
        out = self._like(keys, leaf)
        return out if self.device.type == "cpu" else out.to(self.device)

    def _find(self, level: int, keys: torch.Tensor) -> torch.Tensor:
        """Position of each key in keys[level], or -1 where absent (same shape as keys)."""
        table = self.keys[level]
        if len(table) == 0:
            return torch.full_like(keys, -1)
        pos = torch.searchsorted(table, keys).clamp_max(len(table) - 1)
        return torch.where(table[pos] == keys, pos, -1)

    def _child_table(self, level: int) -> torch.Tensor | None:
        """Children of every node of level-1: [n_nodes_{level-1}, V] int32, the child's node
        id or -1, built once (None when larger than `mask_budget` entries)."""
        if self._tables[level] is None:
            size, keys = self.sizes[level], self.keys[level]
            parents = len(self.keys[level - 1]) if level else 1
            if parents * size > self.mask_budget or len(keys) >= 2**31:
                return None
            table = torch.full((max(parents, 1), size), -1, dtype=torch.int32,
                               device=keys.device)
            table[keys // size, keys % size] = torch.arange(
                len(keys), dtype=torch.int32, device=keys.device)
            self._tables[level] = table
        return self._tables[level]

    def children_mask(self, level: int, node: torch.Tensor) -> torch.Tensor:
        """Allowed codes at `level` after prefix nodes [N] (-1 = dead prefix): [N, V] bool."""
        table = self._child_table(level)
        if table is not None:  # one gather (see the module docstring)
            return (table.index_select(0, node.clamp_min(0)) >= 0) & (node >= 0)[:, None]
        # Too many nodes x codes for a table (e.g. the collision level at 1 M items): the
        # children of a node are one run of the sorted keys; scatter the runs of the N rows.
        size, keys = self.sizes[level], self.keys[level]
        start = self._starts(level)  # (n_parents + 1,)
        parent = node.clamp_min(0)
        first = start[parent]
        count = torch.where(node >= 0, start[parent + 1] - first, 0)  # (N,)
        row = torch.repeat_interleave(torch.arange(len(node), device=node.device), count)
        offset = torch.arange(len(row), device=node.device) - torch.repeat_interleave(
            torch.cumsum(count, 0) - count, count)
        out = torch.zeros(len(node), size, dtype=torch.bool, device=node.device)
        out[row, keys[torch.repeat_interleave(first, count) + offset] % size] = True
        return out

    def _starts(self, level: int) -> torch.Tensor:
        """Where each node of level-1's children begin in keys[level] (+ the end): [P + 1]."""
        if self._runs[level] is None:
            keys, size = self.keys[level], self.sizes[level]
            parents = len(self.keys[level - 1]) if level else 1
            bounds = torch.arange(parents + 1, device=keys.device) * size
            self._runs[level] = torch.searchsorted(keys, bounds)
        return self._runs[level]

    def child(self, level: int, node: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Node reached from `node` by `code` (same shapes), -1 when not a valid prefix
        (a code outside [0, sizes[level]) included: its key would alias another node's)."""
        size = self.sizes[level]
        table = self._tables[level]
        if table is not None:  # the table decoding built: a gather, not a search
            found = table[node.clamp_min(0), code.clamp(0, size - 1)].long()
        else:
            found = self._find(level, node.clamp_min(0) * size + code.clamp(0, size - 1))
        return torch.where((node >= 0) & (code >= 0) & (code < size), found, -1)

    def lookup(self, sids: torch.Tensor) -> torch.Tensor:
        """Item of each SID [..., L] -> [...] int64, -1 when it is no catalogue SID."""
        node = torch.zeros(sids.shape[:-1], dtype=torch.int64, device=sids.device)
        if len(self.leaf_items) == 0:
            return node - 1
        for t in range(len(self.sizes)):
            node = self.child(t, node, sids[..., t].long())
        return torch.where(node >= 0, self.leaf_items[node.clamp_min(0)], -1)


INVALID_ITEM = -2  # = sidrec.models.base.INVALID_ITEM (beam.py imports nothing of models)


class BeamResult(NamedTuple):
    items: torch.Tensor  # [B, beam] int64 catalogue item; -2 an invalid SID, -1 a dead beam
    log_probs: torch.Tensor  # [B, beam] sequence log-probability, best first
    n_invalid: int  # returned sequences with a finite score that are no catalogue SID
    sids: torch.Tensor  # [B, beam, L] the decoded code sequences


def _reorder(state: Any, index: torch.Tensor) -> Any:
    return state.reorder(index)


@torch.no_grad()
def beam_search(
    step_fn: StepFn,
    state: Any,
    n_users: int,
    beam: int,
    catalogue: SidIndex,
    allowed: SidIndex | None = None,
    reorder: Callable[[Any, torch.Tensor], Any] = _reorder,
    exclude: torch.Tensor | None = None,
) -> BeamResult:
    """Beam search of width `beam` for `n_users` users at once.

    `state` starts with one row per user (e.g. a `KVCache` on the encoder memory); after the
    first step it has n_users * beam rows, user-major (row = user * beam + b), kept in beam
    order by `reorder(state, parent_rows)`. `catalogue` maps the final SIDs to items;
    `allowed` (or None for unconstrained decoding) is the prefix index the beams must stay
    in, e.g. the warm items only. Beams that run out of valid extensions (fewer valid
    sequences than `beam`) come back as item -1 with log-prob -inf; a finished SID that is
    no catalogue item (unconstrained decoding) as `INVALID_ITEM`.

    `exclude` [B, H, L] holds per user the SIDs that must not be completed (e.g. the
    history's items; rows with a negative code are ignored): at the last level their
    completions are masked inside the search, so no beam is spent on them.
    """
    sizes = catalogue.sizes
    device = catalogue.leaf_items.device
    scores = torch.zeros(n_users, 1, device=device)  # (B, w) with w = 1 before step 0
    seqs = torch.zeros(n_users, 1, 0, dtype=torch.int64, device=device)  # (B, w, t)
    node = torch.zeros(n_users, 1, dtype=torch.int64, device=device)  # (B, w) prefix node
    prev = torch.full((n_users,), -1, dtype=torch.int64, device=device)
    users = torch.arange(n_users, device=device)[:, None]  # (B, 1)
    walk = allowed if allowed is not None else catalogue  # the index whose nodes are tracked
    banned = None if exclude is None else _last_level_keys(walk, exclude)  # (B, H) sorted
    for t, size in enumerate(sizes):
        logp, state = step_fn(prev, t, state)  # (B*w, V)
        w = scores.shape[1]
        cand = scores[:, :, None] + logp.view(n_users, w, size).float()  # (B, w, V)
        if allowed is not None:
            ok = allowed.children_mask(t, node.view(-1)).view(n_users, w, size)
            cand = cand.masked_fill(~ok, float("-inf"))
        if banned is not None and t == len(sizes) - 1:
            keys = node[:, :, None] * size + torch.arange(size, device=device)  # (B, w, V)
            cand = cand.masked_fill(_member(banned, keys.view(n_users, -1)).view_as(cand)
                                    & (node >= 0)[:, :, None], float("-inf"))
        top, idx = cand.view(n_users, w * size).topk(min(beam, w * size), dim=1)  # (B, k)
        if top.shape[1] < beam:  # fewer candidates than beams (tiny vocabularies)
            short = beam - top.shape[1]
            top = torch.cat([top, top.new_full((n_users, short), float("-inf"))], dim=1)
            idx = torch.cat([idx, idx.new_zeros(n_users, short)], dim=1)
        parent, code = idx // size, idx % size  # (B, beam)
        seqs = torch.cat([seqs[users, parent], code[..., None]], dim=2)  # (B, beam, t+1)
        if allowed is not None or banned is not None:
            node = walk.child(t, node[users, parent], code)  # (B, beam)
        scores = top
        prev = code.view(-1)
        if t + 1 < len(sizes):  # the last step's cache is never read again
            state = reorder(state, (users * w + parent).view(-1))
    items = catalogue.lookup(seqs)  # (B, beam)
    # a slot is empty when its beam never filled (-inf); NaN scores (weights that are not
    # finite) stay visible, so the caller can refuse them
    filled = ~torch.isneginf(scores)
    invalid = (items < 0) & filled
    items = torch.where(invalid, INVALID_ITEM, torch.where(filled, items, -1))
    return BeamResult(items, scores, int(invalid.sum()), seqs)


def item_sids(codes: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """The SIDs [B, H, L] of items [B, H] (-1 = none) under codes [n_items, L]: the
    `exclude` of `beam_search`, which ignores the row of -1 an item -1 gets."""
    return codes[items.clamp_min(0)].masked_fill((items < 0)[..., None], -1)


def _last_level_keys(index: SidIndex, sids: torch.Tensor) -> torch.Tensor:
    """Sorted keys `parent_node * V_last + last_code` [B, H] of SIDs [B, H, L] under
    `index` (-1 where a SID is no prefix path of the index, or has a negative code)."""
    node = torch.zeros(sids.shape[:-1], dtype=torch.int64, device=sids.device)
    for t in range(len(index.sizes) - 1):
        node = index.child(t, node, sids[..., t].clamp_min(0))
    node = torch.where((sids < 0).any(-1), -1, node)
    keys = torch.where(node >= 0, node * index.sizes[-1] + sids[..., -1], -1)
    return keys.sort(dim=1).values


def _member(sorted_keys: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """keys [B, N] found in the row's sorted_keys [B, H] -> [B, N] bool."""
    if sorted_keys.shape[1] == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, keys).clamp_max(sorted_keys.shape[1] - 1)
    return sorted_keys.gather(1, pos) == keys


@torch.no_grad()
def exact_scores(
    token_logp_fn: Callable[[torch.Tensor], torch.Tensor], sids: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """Log-likelihood of every SID for a batch of users: [B, n_items].

    `token_logp_fn(sids_chunk [C, L])` returns the teacher-forced log-probability of each
    code [B, C, L] (the model closes over the users' encoder memory); items are scored
    `chunk` at a time so memory stays bounded.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    parts = [token_logp_fn(sids[i : i + chunk]).sum(dim=-1) for i in range(0, len(sids), chunk)]
    return torch.cat(parts, dim=1)  # (B, n_items)
