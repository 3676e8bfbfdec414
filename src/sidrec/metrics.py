"""Full-ranking metrics of one set of users, from their top-k lists [U, k] at once.

- Recall@K (= HR@K, one target per user): 1 if the target's rank <= K.
- NDCG@K: gain 1 at the target's rank r, i.e. 1 / log2(r + 1) if r <= K, else 0
  (the ideal DCG is 1, so no normalisation is left to do).
- Items the model does not return (-1 entries, e.g. a beam that found fewer items) count
  as misses.
- Ties: a target that shares its score with other items (a block of positions a..b of
  the list) is scored by the *expected* metric under random tie-breaking: its rank is
  uniform over a..b, so Recall@K = |a..min(b, K)| / |a..b| and NDCG@K the mean of
  1 / log2(r + 1) over those ranks. A model that scores every item alike then gets the
  chance level, not hits from the list order, and a model whose rule gives a whole block
  one score (COBRA's ψ = 0 switch) is not penalised by the tie rule rather than its
  scores. The pessimistic value (the target ranked after its whole block) is kept
  beside it as `recall@K_ties_last` / `ndcg@K_ties_last`. So that ties crossing the
  k-th item are seen, the evaluator asks for `max(ks)` more items than it reports
  (`recommend(..., margin=)`); ties that run past the margin end there. A beam's margin
  is the rest of that beam (its width is what it is without the margin), and beam
  log-probabilities practically never tie.
- Intervals: each row's Recall@K and NDCG@K carry a 95 % interval (`_lo`, `_hi`), the
  2.5th and 97.5th percentiles of the metric over 1,000 resamples of the row's users
  (bootstrap, fixed seed): 44 cold users make a wide interval, and the table says so.
- coverage@C: distinct items in the top-C lists of the users in a row / n_items.
- filled@k: mean fraction of the k slots holding a real item (< 1 when a generative
  model returns fewer items than asked, e.g. invalid SIDs dropped).
- invalid@k: mean fraction of the k slots holding a generated SID that is no catalogue
  item (`INVALID_ITEM`; unconstrained decoding, the paper's protocol).
- cold_slots@C: mean number of cold items in a top-C list. With P cold items in the
  pool (`cold_pool`), filling those slots at random would already find a cold target
  with probability cold_slots / P: that chance level is `random_cold@C`, to read beside
  the cold row's recall@C (in `natural` mode every cold item is some user's target).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from sidrec.models.base import INVALID_ITEM


def target_ranks(items: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each target in its row of `items`, 0 if it is not there.

    items [U, k] int64 (-1 = no item), scores [U, k] float (best first), targets [U] int64.
    Ties are pessimistic within the row: the rank is the last position holding the
    target's score (NaN scores never tie, so they keep their listed position).
    """
    return tied_block(items, scores, targets)[1]


def tied_block(items: torch.Tensor, scores: torch.Tensor,
               targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions a..b [U] (1-based) of the block of items sharing the target's score,
    the target among them; 0..0 where the target is not listed. `target_ranks` is b."""
    if items.shape[1] == 0:
        zero = torch.zeros_like(targets)
        return zero, zero
    hit = (items == targets[:, None]) & (targets[:, None] >= 0)  # [U, k]
    found = hit.any(dim=1)  # [U]
    at = hit.int().argmax(dim=1)  # [U] position of the target (0 where not found)
    target_score = scores.gather(1, at[:, None])  # [U, 1]
    pos = torch.arange(1, items.shape[1] + 1, device=items.device)  # [k]
    tied = (scores == target_score) & (items >= 0)  # [U, k]
    first = torch.where(tied, pos, items.shape[1] + 1).amin(dim=1).clamp_max(at + 1)  # [U]
    last = torch.maximum(at + 1, torch.where(tied, pos, 0).amax(dim=1))  # [U]
    zero = torch.zeros_like(first)
    return torch.where(found, first, zero), torch.where(found, last, zero)


def expected_recall_at(first: torch.Tensor, last: torch.Tensor, k: int) -> torch.Tensor:
    """[U] float: P(rank <= k) for a rank uniform over first..last (0..0: not listed)."""
    inside = (torch.minimum(last, torch.full_like(last, k)) - first + 1).clamp_min(0)
    return torch.where(first >= 1, inside / (last - first + 1).clamp_min(1), 0.0).float()


def expected_ndcg_at(first: torch.Tensor, last: torch.Tensor, k: int) -> torch.Tensor:
    """[U] float: E[1 / log2(rank + 1); rank <= k] for a rank uniform over first..last."""
    width = int(last.max().item()) if last.numel() else 0
    gains = 1.0 / torch.log2(torch.arange(1, width + 1, dtype=torch.float64) + 1.0)
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), gains.cumsum(0)])  # cum[r]: 1..r
    top = torch.minimum(last, torch.full_like(last, k))
    total = torch.where(top >= first, cum[top] - cum[(first - 1).clamp_min(0)], 0.0)
    return torch.where(first >= 1, total / (last - first + 1).clamp_min(1), 0.0).float()


def bootstrap_interval(values: np.ndarray, resamples: int = 1000,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95 % percentile intervals (lo [M], hi [M]) of the column means of per-user values
    [n, M], over `resamples` draws of n users with replacement (seeded: same rows, same
    interval)."""
    rng = np.random.default_rng(seed)
    n = len(values)
    means = np.concatenate([values[rng.integers(0, n, (c, n))].mean(axis=1)
                            for c in _chunks(resamples, max(1, 500_000 // max(n, 1)))])
    return np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - i) for i in range(0, total, size)]


def recall_at(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """[U] float: 1 where the target is in the top k (ranks from `target_ranks`)."""
    return ((ranks >= 1) & (ranks <= k)).float()


def ndcg_at(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """[U] float: 1 / log2(rank + 1) where 1 <= rank <= k, else 0."""
    hit = (ranks >= 1) & (ranks <= k)
    return torch.where(hit, 1.0 / torch.log2(ranks.double() + 1.0), 0.0).float()


def coverage_at(items: torch.Tensor, k: int, n_items: int) -> float:
    """Distinct real items in the first k columns of `items` [U, K], over n_items."""
    top = items[:, :k]
    n_distinct = torch.unique(top[top >= 0]).numel()
    return n_distinct / n_items if n_items else float("nan")


def subset_metrics(
    items: torch.Tensor,
    scores: torch.Tensor,
    targets: torch.Tensor,
    ks: Sequence[int],
    n_items: int,
    coverage_k: int = 10,
    cold: torch.Tensor | None = None,
    intervals: bool = True,
) -> dict[str, float]:
    """Recall@K, NDCG@K for each K, coverage@coverage_k, filled@ and invalid@max(ks) of
    one user set; with the catalogue's `cold` [n_items] bool, also cold_slots@ and
    random_cold@coverage_k (see the module docstring). `intervals=False` skips the
    bootstrap (the trainer's per-epoch validation reads the point values only)."""
    n = int(targets.shape[0])
    out: dict[str, float] = {"n": n}
    kmax = max(ks)
    if n == 0:
        for k in ks:
            for metric in (f"recall@{k}", f"ndcg@{k}"):
                for suffix in ("", "_lo", "_hi", "_ties_last"):
                    out[metric + suffix] = math.nan
        names = [f"coverage@{coverage_k}", f"filled@{kmax}", f"invalid@{kmax}"]
        if cold is not None:
            names += [f"cold_slots@{coverage_k}", f"random_cold@{coverage_k}"]
        return {**out, **dict.fromkeys(names, math.nan)}
    first, last = tied_block(items, scores, targets)
    per_user = {}
    for k in ks:
        per_user[f"recall@{k}"] = expected_recall_at(first, last, k)
        per_user[f"ndcg@{k}"] = expected_ndcg_at(first, last, k)
    values = torch.stack(list(per_user.values()), dim=1).double().numpy()  # [n, 2 * |ks|]
    for j, name in enumerate(per_user):
        out[name] = float(values[:, j].mean())
    if intervals:
        lo, hi = bootstrap_interval(values)
        for j, name in enumerate(per_user):
            out[f"{name}_lo"], out[f"{name}_hi"] = float(lo[j]), float(hi[j])
    for k in ks:  # `last` is the pessimistic rank (`target_ranks`)
        out[f"recall@{k}_ties_last"] = recall_at(last, k).mean().item()
        out[f"ndcg@{k}_ties_last"] = ndcg_at(last, k).mean().item()
    out[f"coverage@{coverage_k}"] = coverage_at(items, coverage_k, n_items)
    out[f"filled@{kmax}"] = (items[:, :kmax] >= 0).float().mean().item()
    out[f"invalid@{kmax}"] = (items[:, :kmax] == INVALID_ITEM).float().mean().item()
    if cold is not None:
        top = items[:, :coverage_k]
        slots = (cold[top.clamp_min(0)] & (top >= 0)).sum(dim=1).float()  # [U]
        pool = int(cold.sum())
        out[f"cold_slots@{coverage_k}"] = slots.mean().item()
        out[f"random_cold@{coverage_k}"] = (slots / pool).mean().item() if pool else math.nan
    return out
