"""Full semantic IDs: codes + a collision token (the SID -> item lookup is
`sidrec.models.beam.SidIndex`).

Items whose L codes are identical share a *prefix*. TIGER (Rajput et al. 2023, Sec. 3.1)
appends one more token numbering the items within each prefix, so every item gets a
unique full SID of length L+1: the first item of a prefix gets 0, the next 1, and so on.

Order within a prefix: the items that were there first keep their numbers and newcomers
take the next free number. In the tokenize stage warm items are numbered first (by dense
id) and cold items are then *added* (by dense id) exactly like items added to a trained
model later (`extend_sids`), so the SIDs of warm items never depend on the cold set.
"""

from __future__ import annotations

import math

import numpy as np

from sidrec.errors import SidrecError


def rank_in_group(groups: np.ndarray) -> np.ndarray:
    """For group labels [n], each row's 0-based rank among its group's rows, by row order."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    first = np.searchsorted(sorted_groups, sorted_groups, side="left")
    rank = np.empty(len(groups), dtype=np.int64)
    rank[order] = np.arange(len(groups)) - first
    return rank


def prefix_keys(*codes: np.ndarray, radix: int | None = None) -> list[np.ndarray] | None:
    """One int64 key per row of each codes array [n_i, L], equal for equal rows and
    ordered as the rows are (lexicographically): the codes in mixed radix, each column's
    radix its largest code + 1 over all the arrays, or `radix` for every column when
    given (the codebook size: one pass over the rows, not three). None when the keys
    would overflow (or a code is negative or, with `radix`, not below it)."""
    codes = [np.asarray(c, dtype=np.int64) for c in codes]
    levels = codes[0].shape[1]
    if radix is None:
        tops = [c.max(axis=0) for c in codes if len(c)]
        if not tops or any(c.min(initial=0) < 0 for c in codes):
            return None
        dims = tuple(int(r) for r in np.max(tops, axis=0) + 1)
    else:
        dims = (int(radix),) * levels
    if math.prod(dims) >= 2**62:
        return None
    try:
        return [np.ravel_multi_index(tuple(c.T), dims).astype(np.int64) for c in codes]
    except ValueError:  # a code outside [0, radix)
        return None


def _prefix_groups(codes: np.ndarray) -> np.ndarray:
    """Group label [n] of each row of codes [n, L]: the rank of its distinct row."""
    if len(codes) == 0:
        return np.zeros(0, dtype=np.int64)
    keys = prefix_keys(codes)
    if keys is not None:  # the same labels, ~10x faster than unique rows at 1 M items
        return np.unique(keys[0], return_inverse=True)[1].astype(np.int64)
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def collision_tokens(codes: np.ndarray) -> np.ndarray:
    """Collision token [n] for codes [n, L]: numbering within each prefix, by row order."""
    codes = np.asarray(codes, dtype=np.int64)
    return rank_in_group(_prefix_groups(codes))


def add_collision_tokens(codes: np.ndarray) -> np.ndarray:
    """Full SIDs [n, L+1] int64 for codes [n, L]."""
    codes = np.asarray(codes, dtype=np.int64)
    return np.concatenate([codes, collision_tokens(codes)[:, None]], axis=1)


def extend_sids(
    existing: np.ndarray, new_codes: np.ndarray, codebook_size: int | None = None
) -> np.ndarray:
    """Full SIDs [m, L+1] for new items' codes [m, L], given the existing SIDs [n, L+1].

    A new item takes the next free collision number of its prefix (one more than the
    largest number already used there, 0 for a new prefix); several new items in the same
    prefix are numbered in row order. Existing SIDs are never changed. This is how cold
    items and items added after training (`add_items`) get their SIDs. `codebook_size`
    (the tokenizer's K, when known) saves a pass over the existing SIDs.
    """
    existing = np.asarray(existing, dtype=np.int64)
    new_codes = np.asarray(new_codes, dtype=np.int64)
    levels = existing.shape[1] - 1
    if new_codes.ndim != 2 or new_codes.shape[1] != levels:
        raise SidrecError(
            f"tokenize: new items have {new_codes.shape[-1]} codes each but existing SIDs "
            f"have {levels} codes + 1 collision token; use the same tokenizer"
        )
    if len(new_codes) == 0:
        return np.zeros((0, levels + 1), dtype=np.int64)
    keys = prefix_keys(existing[:, :levels], new_codes, radix=codebook_size)
    if keys is None:  # the reference: group every row, old and new
        groups = _prefix_groups(np.concatenate([existing[:, :levels], new_codes]))
        old_groups, new_groups = groups[: len(existing)], groups[len(existing) :]
        next_free = np.zeros(int(groups.max(initial=-1)) + 1, dtype=np.int64)
        np.maximum.at(next_free, old_groups, existing[:, levels] + 1)
        tokens = next_free[new_groups] + rank_in_group(new_groups)
        return np.concatenate([new_codes, tokens[:, None]], axis=1)
    # Only the existing rows that share a prefix with a new item are read further, so an
    # addition costs O(n) cheap passes over the catalogue, not a sort of it.
    old_keys, new_keys = keys
    prefixes, new_groups = np.unique(new_keys, return_inverse=True)
    at = np.minimum(np.searchsorted(prefixes, old_keys), len(prefixes) - 1)  # (n,), m small
    rows = np.flatnonzero(prefixes[at] == old_keys)
    next_free = np.zeros(len(prefixes), dtype=np.int64)
    np.maximum.at(next_free, np.searchsorted(prefixes, old_keys[rows]), existing[rows, levels] + 1)
    tokens = next_free[new_groups] + rank_in_group(new_groups.reshape(-1))
    return np.concatenate([new_codes, tokens[:, None]], axis=1)


def assign_sids(codes: np.ndarray, cold: np.ndarray) -> np.ndarray:
    """Full SIDs [n_items, L+1]: warm items numbered first, then cold items added."""
    cold = np.asarray(cold, dtype=bool)
    sids = np.empty((len(codes), codes.shape[1] + 1), dtype=np.int64)
    sids[~cold] = add_collision_tokens(codes[~cold])
    sids[cold] = extend_sids(sids[~cold], codes[cold])
    return sids


def codebook_sizes(sids: np.ndarray, codebook_size: int) -> list[int]:
    """Vocabulary size of each SID position: K per code level, then max items per prefix."""
    levels = sids.shape[1] - 1
    return [int(codebook_size)] * levels + [int(sids[:, -1].max(initial=-1)) + 1]
