"""Semantic IDs for new items when their prefix is full (`place`).

A new item's codes come from the run's fitted tokenizer; its collision token is the next
free one of its prefix (`sidrec.tokenize.extend_sids`). The trained model's collision
vocabulary bounds how many items one prefix can hold; `place` moves an item past that
bound into the nearest prefix with room.
"""

from __future__ import annotations

import numpy as np

from sidrec.errors import ItemError


def place(existing: np.ndarray, existing_vectors: np.ndarray | None, codes: np.ndarray,
          vectors: np.ndarray, limit: int, ids: list[str]) -> np.ndarray:
    """Full SIDs [m, L+1] for new codes [m, L] when some prefixes are full.

    The trained model tells at most `limit` items of one prefix apart (its collision-token
    vocabulary). A new item whose prefix already holds that many takes a free place in the
    prefix nearest to it instead: the one sharing the most leading codes with its own, then
    holding the item whose text vector is the most similar (cosine). Items are placed in
    order, so several new items share room fairly. Only a catalogue with every prefix full
    refuses an item.
    """
    n_codes = codes.shape[1]
    prefixes, group = np.unique(existing[:, :n_codes], axis=0, return_inverse=True)
    group = group.reshape(-1)
    free = np.zeros(len(prefixes), dtype=np.int64)  # next collision number per prefix
    np.maximum.at(free, group, existing[:, n_codes] + 1)
    index = {tuple(p): g for g, p in enumerate(prefixes.tolist())}
    keys = prefixes.tolist()
    rows = existing[:, :n_codes]
    text = existing_vectors is not None
    unit = _unit(existing_vectors) if text else np.zeros((len(existing), 1), np.float32)
    out = np.empty((len(codes), n_codes + 1), dtype=np.int64)
    for i, code in enumerate(codes.tolist()):
        g = index.get(tuple(code))
        if g is not None and free[g] >= limit:  # full: the nearest prefix with room
            shared = np.cumprod(rows == np.asarray(code), axis=1).sum(axis=1)  # (n,)
            similar = unit @ (_unit(vectors[i : i + 1])[0] if text else np.zeros(1))  # (n,)
            score = np.where(free[group] < limit, shared + (similar + 1) / 4, -np.inf)
            if not np.isfinite(score.max()):
                raise ItemError(i, f" ({ids[i]!r}): every semantic-ID prefix already holds "
                                f"{limit} items, the most the trained model can tell apart; "
                                "retrain with the grown catalogue")
            g = int(group[int(score.argmax())])
            code = keys[g]
        if g is None:  # a prefix no item had
            g = len(keys)
            index[tuple(code)] = g
            keys.append(code)
            free = np.append(free, 0)
        out[i] = [*code, free[g]]
        free[g] += 1
        rows = np.vstack([rows, np.asarray(code)[None]])
        group = np.append(group, g)
        unit = np.vstack([unit, _unit(vectors[i : i + 1]) if text else np.zeros((1, 1))])
    return out


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows [n, d] scaled to unit length."""
    v = np.asarray(vectors, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
