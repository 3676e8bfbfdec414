"""The data protocol shared by every model (docs/evaluation.md, "The split").

1. k-core filtering (optional), iterated until every user and item has >= k interactions.
2. Per-user chronological order; ties keep the original file order (stable sort).
3. Dense ids in a data-independent order: original ids sorted (numerically when every id
   is an integer, else as strings). Never by first appearance, which would leak sequence
   position into the ids (the P5 leakage bug).
4. Leave-one-out: last item = test target, second-to-last = valid target, rest = train.
   Users with fewer than 3 interactions cannot be split and are dropped (counted).
5. Cold-start items (LIGER): items that never occur in any training sequence.
   `natural`: whatever the split leaves cold. `holdout`: a seeded random `cold_fraction`
   of the items is removed from every training sequence (kept as valid/test targets; an
   evaluation history is the training part, so a held-out item is in it only as the valid
   target before the test target), so a measurable cold set exists on small data. Users
   whose training part becomes empty are dropped (counted), and items that only they had
   leave the catalogue (they would be cold without ever being a target).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sidrec.errors import SidrecError

MIN_SEQUENCE = 3  # one training item, one validation target, one test target


@dataclass
class SplitResult:
    item_ids: np.ndarray  # [n_items] original ids, dense order
    user_ids: np.ndarray  # [n_users]
    sequences: list[np.ndarray]  # full chronological sequences (dense ids), per user
    train: list[np.ndarray]
    valid: np.ndarray
    test: np.ndarray
    cold: np.ndarray  # [n_items] bool
    holdout_items: np.ndarray  # dense ids removed from training in holdout mode
    dropped_short_users: int
    dropped_empty_train_users: int


def kcore(interactions: pd.DataFrame, k: int) -> pd.DataFrame:
    """Keep the largest sub-table where every user and item has >= k interactions."""
    if k <= 1:
        return interactions
    df = interactions
    while True:
        user_counts = df["user"].map(df["user"].value_counts())
        item_counts = df["item"].map(df["item"].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if keep.all():
            return df
        df = df[keep]


def natural_order(ids: np.ndarray) -> np.ndarray:
    """Original ids sorted numerically if all are integers, else lexicographically."""
    ids = np.asarray(ids, dtype=object)
    try:
        keys = np.array([int(x) for x in ids])
        return ids[np.argsort(keys, kind="stable")]
    except ValueError:
        # an object array of str (not ids.astype(str), which is fixed-width: n x longest)
        text = np.array([str(x) for x in ids], dtype=object)
        return ids[np.argsort(text, kind="stable")]


def split(
    interactions: pd.DataFrame,
    kcore_k: int = 0,
    cold_mode: str = "natural",
    cold_fraction: float = 0.05,
    seed: int = 0,
) -> SplitResult:
    df = interactions.reset_index(drop=True)
    df = df.assign(order=np.arange(len(df)))
    df = kcore(df, kcore_k)
    sizes = df.groupby("user", sort=False)["item"].transform("size")
    dropped_short = int(df.loc[sizes < MIN_SEQUENCE, "user"].nunique())
    df = df[sizes >= MIN_SEQUENCE]
    if df.empty:
        raise SidrecError(
            f"no user has {MIN_SEQUENCE} or more interactions after filtering "
            f"(k-core k={kcore_k}); lower the k-core threshold or check the input"
        )
    item_ids = natural_order(df["item"].unique())
    user_ids = natural_order(df["user"].unique())
    item_index = pd.Series(np.arange(len(item_ids)), index=item_ids)
    user_index = pd.Series(np.arange(len(user_ids)), index=user_ids)
    df = df.assign(u=user_index.loc[df["user"]].to_numpy(), i=item_index.loc[df["item"]].to_numpy())
    # mergesort is stable: equal timestamps keep the file order.
    df = df.sort_values(["u", "timestamp", "order"], kind="mergesort")
    bounds = np.flatnonzero(np.diff(df["u"].to_numpy())) + 1
    sequences = np.split(df["i"].to_numpy(dtype=np.int64), bounds)

    holdout = np.zeros(0, dtype=np.int64)
    if cold_mode == "holdout":
        if not 0.0 < cold_fraction < 1.0:
            raise SidrecError(f"cold_fraction must be in (0, 1), got {cold_fraction}")
        rng = np.random.default_rng(seed)
        n_cold = max(1, round(cold_fraction * len(item_ids)))
        holdout = np.sort(rng.choice(len(item_ids), size=n_cold, replace=False))
    elif cold_mode != "natural":
        raise SidrecError(f"cold_mode must be 'natural' or 'holdout', got {cold_mode!r}")
    is_holdout = np.zeros(len(item_ids), dtype=bool)
    is_holdout[holdout] = True

    train, valid, test, keep_users = [], [], [], []
    for u, seq in enumerate(sequences):
        part = seq[:-2]
        part = part[~is_holdout[part]]
        if len(part) == 0:
            continue
        keep_users.append(u)
        train.append(part)
        valid.append(seq[-2])
        test.append(seq[-1])
    dropped_empty = len(sequences) - len(keep_users)
    if not keep_users:
        raise SidrecError("holdout removed every training interaction; lower cold_fraction")
    kept = [sequences[u] for u in keep_users]
    present = np.zeros(len(item_ids), dtype=bool)
    present[np.concatenate(kept)] = True
    if not present.all():  # items only dropped users had: renumbered out, order kept
        new_id = np.cumsum(present) - 1
        item_ids, holdout = item_ids[present], new_id[holdout[present[holdout]]]
        kept, train = [new_id[s] for s in kept], [new_id[t] for t in train]
        valid, test = new_id[valid], new_id[test]

    seen = np.zeros(len(item_ids), dtype=bool)
    seen[np.concatenate(train)] = True
    return SplitResult(
        item_ids=item_ids,
        user_ids=user_ids[keep_users],
        sequences=kept,
        train=train,
        valid=np.asarray(valid, dtype=np.int64),
        test=np.asarray(test, dtype=np.int64),
        cold=~seen,
        holdout_items=holdout,
        dropped_short_users=dropped_short,
        dropped_empty_train_users=dropped_empty,
    )
