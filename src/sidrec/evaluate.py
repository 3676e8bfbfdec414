"""Full-ranking evaluation, the same for every model (docs: the evaluation protocol).

Every user gets one example from `Dataset.eval_examples(split)`: for "valid" the history
is the training part and the target the validation item; for "test" the history also
ends with the validation item and the target is the test item. The model's
`recommend(history, users, k=max(ks))` returns its top-k over the whole catalogue, and
all metrics are computed from that [U, k] matrix at once (no loop per user; the
metrics, their tie rule and their intervals are in `sidrec.metrics`).

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
from sidrec.metrics import subset_metrics
from sidrec.models.base import Recommender
from sidrec.run import RunDir

SUBSETS = ("overall", "in-set", "cold")


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
    intervals: bool = True,
) -> dict[str, Any]:
    """Evaluate `model` on `split` of `dataset` for every variant in `model.variants()`.

    `device` defaults to the device of the model's parameters or buffers (else CPU).
    `variants` restricts the evaluation to the named variant labels (the trainer uses the
    first one); `intervals=False` leaves out the bootstrap bounds. Returns a JSON-ready dict:
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
        with model.sharing_variants():  # variants may share work per batch (LIGER's beam)
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
                                       dataset.n_items, coverage_k, cold=cold,
                                       intervals=intervals)
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
    headline_only: bool = False,
) -> dict[str, Any]:
    """Load `run_dir/models/<name>`, evaluate it on `split`, and record the result.

    `inference` overrides the model's stored inference settings (e.g. {"beam": 50}) for
    this evaluation; no retraining. `headline_only` evaluates the model's own inference
    alone (the row training selects on), not its switches: a screen of inference settings
    on validation costs one decode per setting. This is what `sidrec evaluate RUN_DIR
    --model NAME` runs.
    """
    from sidrec.checkpoint import load_model
    from sidrec.device import resolve_device
    from sidrec.report import save_metrics

    run = RunDir(run_dir)
    md = run.model(name).require()
    dataset = Dataset.load(run.root)
    dev = resolve_device(device)
    model = load_model(md, run, dataset=dataset, inference=inference).to(dev)
    variants = [next(iter(model.variants()))] if headline_only else None
    metrics = evaluate(model, dataset, split, ks, batch_size=batch_size, device=dev,
                       variants=variants)
    if save:
        save_metrics(run, metrics, name)
    return metrics
