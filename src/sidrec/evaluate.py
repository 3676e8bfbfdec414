"""Full-ranking evaluation, the same for every model (docs: the evaluation protocol).

Every user gets one example from `Dataset.eval_examples(split)`: for "valid" the history
is the training part and the target the validation item; for "test" the history also
ends with the validation item and the target is the test item. The model's
`recommend(history, users, k=max(ks))` returns its top-k over the whole catalogue, and
all metrics are computed from that [U, k] matrix at once (no loop per user):

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

Rows: one per (variant of `model.variants()`, subset), with subsets "overall",
"in-set" (the split's target is warm: seen in training) and "cold" (the target is a
cold-start item). An empty subset is reported with n = 0 and NaN metrics. The first
variant is also reported with the user's own history masked (`exclude_history`, label
"excl. history"); the other rows follow the paper protocol, which does not mask. The mask
is the user's whole history before the target (`Dataset.seen_items`), not the model's
`max_history` input window: on MovieLens-100k (median history 65 items, window 20 or 50)
the window alone left most seen items recommendable.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sidrec import distributed
from sidrec.config import to_dict
from sidrec.data.dataset import Dataset, Split
from sidrec.errors import SidrecError
from sidrec.models.base import INVALID_ITEM, Recommender
from sidrec.run import RunDir

SUBSETS = ("overall", "in-set", "cold")


# ---------------------------------------------------------------- metric functions


def target_ranks(items: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1-based rank of each target in its row of `items`, 0 if it is not there.

    items [U, k] int64 (-1 = no item), scores [U, k] float (best first), targets [U] int64.
    Ties are pessimistic within the row: the rank is the last position holding the
    target's score (NaN scores never tie, so they keep their listed position).
    """
    if items.shape[1] == 0:
        return torch.zeros_like(targets)
    hit = (items == targets[:, None]) & (targets[:, None] >= 0)  # [U, k]
    found = hit.any(dim=1)  # [U]
    first = hit.int().argmax(dim=1)  # [U] position of the target (0 where not found)
    target_score = scores.gather(1, first[:, None])  # [U, 1]
    pos = torch.arange(1, items.shape[1] + 1, device=items.device)  # [k]
    tied = (scores == target_score) & (items >= 0)  # [U, k]
    last_tied = torch.where(tied, pos, 0).amax(dim=1)  # [U]
    rank = torch.maximum(first + 1, last_tied)  # [U]
    return torch.where(found, rank, torch.zeros_like(rank))


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
) -> dict[str, float]:
    """Recall@K, NDCG@K for each K, coverage@coverage_k, filled@ and invalid@max(ks) of
    one user set; with the catalogue's `cold` [n_items] bool, also cold_slots@ and
    random_cold@coverage_k (see the module docstring)."""
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
    lo, hi = bootstrap_interval(values)
    for j, name in enumerate(per_user):
        out[name] = float(values[:, j].mean())
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


# ---------------------------------------------------------------- evaluation loop


@torch.no_grad()
def top_k(
    model: Recommender,
    histories: np.ndarray,
    users: np.ndarray,
    k: int,
    *,
    margin: int = 0,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    inference: Any = None,
    first_row: int = 0,
    seen: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched `model.recommend` over all rows: (items [U, k + margin] int64, scores
    [U, k + margin]) on CPU.

    Rows with fewer items (small catalogues, short beams) are padded with -1 / -inf.
    `first_row`: the row number of the first row (a rank's shard), for error messages.
    `seen` [U, S] (left-padded with -1): what `exclude_history` masks, default the window.
    """
    model.check_finite()
    n, width = len(histories), k + margin
    items = torch.full((n, width), -1, dtype=torch.int64)
    scores = torch.full((n, width), -math.inf, dtype=torch.float32)
    for start in range(0, n, batch_size):
        h = torch.as_tensor(histories[start : start + batch_size], device=device)  # [B, L]
        u = torch.as_tensor(users[start : start + batch_size], device=device)  # [B]
        s = None if seen is None else torch.as_tensor(_trim(seen[start : start + batch_size]),
                                                      device=device)  # [B, S']
        top_items, top_scores = model.recommend(h, u, k, inference, margin=margin,
                                                seen=s)  # [B, <=w]
        if torch.isnan(top_scores).any():
            raise SidrecError(
                f"{model.name}: NaN scores for users {first_row + start}.."
                f"{first_row + start + len(h) - 1}; the "
                "weights are not finite (diverged training?): retrain with a lower lr"
            )
        got = min(width, top_items.shape[1])
        items[start : start + len(h), :got] = top_items[:, :got].to("cpu", torch.int64)
        scores[start : start + len(h), :got] = top_scores[:, :got].to("cpu", torch.float32)
    return items, scores


def _trim(padded: np.ndarray) -> np.ndarray:
    """Left-padded rows [B, S] without the columns that are padding in every row."""
    width = int((padded >= 0).sum(axis=1).max(initial=0))
    return padded[:, padded.shape[1] - width :]


@torch.no_grad()
def sharded_top_k(
    model: Recommender,
    histories: np.ndarray,
    users: np.ndarray,
    k: int,
    *,
    margin: int = 0,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    inference: Any = None,
    seen: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`top_k` over all rows, split across the processes of a torchrun job (one process:
    `top_k` itself). Each rank runs a contiguous run of whole batches, the very batches one
    process would run, and every rank gets all rows back in order, so the metrics are the
    same as one process's (`sidrec.distributed`)."""
    rank, world = distributed.current()
    if world == 1:
        return top_k(model, histories, users, k, margin=margin, batch_size=batch_size,
                     device=device, inference=inference, seen=seen)
    lo, hi = distributed.batch_shard(len(histories), batch_size, rank, world)
    try:
        items, scores = top_k(model, histories[lo:hi], users[lo:hi], k, margin=margin,
                              batch_size=batch_size, device=device, inference=inference,
                              first_row=lo, seen=None if seen is None else seen[lo:hi])
    except SidrecError as e:  # raised by every rank, not only this one
        return distributed.gather_rows(error=e)
    return distributed.gather_rows(items, scores)


@torch.no_grad()
def evaluate(
    model: Recommender,
    dataset: Dataset,
    split: Split = "test",
    ks: Sequence[int] = (5, 10, 20),
    batch_size: int = 512,
    device: str | torch.device | None = None,
    coverage_k: int = 10,
    variants: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on `split` of `dataset` for every variant in `model.variants()`.

    `device` defaults to the device of the model's parameters or buffers (else CPU).
    `variants` restricts the evaluation to the named variant labels (the trainer uses the
    first one). Returns a JSON-ready dict:
    `{"model", "display_name", "split", "ks", "rows": [{"variant", "subset", "n",
    "recall@K", "ndcg@K", ..., "coverage@C", "filled@Kmax"}], "inference": {variant:
    its inference config}, "users_per_s"}`.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise SidrecError(f"ks={ks}: cut-offs must be positive integers, e.g. ks=5,10,20")
    if split not in ("valid", "test"):
        raise SidrecError(f"split {split!r}: must be 'valid' or 'test'")
    if device is None:
        tensors = itertools.chain(model.parameters(), model.buffers())
        device = next((t.device for t in tensors), torch.device("cpu"))
    histories, targets, users = dataset.eval_examples(split)
    seen = dataset.seen_items(split)  # the whole history, not the model's window
    targets_t = torch.as_tensor(targets)
    cold = torch.from_numpy(np.array(dataset.cold, dtype=bool))  # [n_items]
    cold_target = cold[targets_t]  # [U]
    masks = {"overall": torch.ones_like(cold_target), "in-set": ~cold_target, "cold": cold_target}
    kmax = max(max(ks), coverage_k)

    all_variants = dict(model.variants())
    if variants is None:  # the headline variant again, with the user's history masked
        first, inference = next(iter(all_variants.items()))
        label = f"{first}, excl. history" if first else "excl. history"
        all_variants[label] = dataclasses.replace(inference, exclude_history=True)
    else:
        wanted = list(variants)
        unknown = [v for v in wanted if v not in all_variants]
        if unknown:
            raise SidrecError(
                f"variant {unknown[0]!r} is not one of {model.name!r}'s variants: "
                f"{', '.join(map(repr, all_variants))}"
            )
        all_variants = {v: all_variants[v] for v in wanted}

    was_training = model.training
    model.eval()
    rows, seconds = [], 0.0
    try:
        for label, inference in all_variants.items():
            t0 = time.perf_counter()
            items, scores = sharded_top_k(
                model, histories, users, kmax, margin=kmax, batch_size=batch_size,
                device=device, inference=inference, seen=seen,
            )
            seconds += time.perf_counter() - t0
            for subset, mask in masks.items():
                row = {"variant": label, "subset": subset}
                row.update(
                    subset_metrics(items[mask], scores[mask], targets_t[mask], ks,
                                   dataset.n_items, coverage_k, cold=cold)
                )
                rows.append(row)
    finally:
        model.train(was_training)
    n_calls = len(all_variants) * len(targets)
    return {
        "model": model.name,
        "display_name": display_name(model),
        "split": split,
        "ks": ks,
        "coverage_k": coverage_k,
        "cold_pool": int(cold.sum()),
        "diagnostics": model.diagnostics(),
        "rows": rows,
        "inference": {label: to_dict(cfg) for label, cfg in all_variants.items()},
        "users_per_s": n_calls / seconds if seconds > 0 else math.inf,
    }


def display_name(model: Recommender) -> str:
    """How a model is labelled in tables: its `display_name` (e.g. "sasrec (CE)") or name.

    Models whose training choices change what the row means (SASRec's loss) expose a
    `display_name` property; inference modes are `variants()` and are shown beside it.
    """
    return model.display_name


def headline(metrics: dict[str, Any], key: str = "ndcg@10", subset: str = "overall") -> float:
    """The value of `key` in the first variant's `subset` row (the trainer's selection metric)."""
    for row in metrics["rows"]:
        if row["subset"] == subset:
            if key not in row:
                raise SidrecError(
                    f"metric {key!r} is not computed; available: "
                    f"{', '.join(k for k in row if '@' in k)}"
                )
            return float(row[key])
    raise SidrecError(f"no {subset!r} row in the metrics")


def evaluate_run(
    run_dir: str | Path | RunDir,
    name: str,
    split: Split = "test",
    ks: Sequence[int] = (5, 10, 20),
    batch_size: int = 512,
    device: str = "auto",
    save: bool = True,
    inference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load `run_dir/models/<name>`, evaluate it on `split`, and record the result.

    `inference` overrides the model's stored inference settings (e.g. {"beam": 50}) for
    this evaluation; no retraining. This is what `sidrec evaluate RUN_DIR --model NAME`
    runs.
    """
    from sidrec.checkpoint import load_model
    from sidrec.device import resolve_device
    from sidrec.report import save_metrics

    run = RunDir(run_dir)
    md = run.model(name).require()
    dataset = Dataset.load(run.root)
    dev = resolve_device(device)
    model = load_model(md, run, dataset=dataset, inference=inference).to(dev)
    metrics = evaluate(model, dataset, split, ks, batch_size=batch_size, device=dev)
    if save:
        save_metrics(run, metrics, name)
    return metrics
