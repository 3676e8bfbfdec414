"""Full-ranking evaluation, the same for every model (SPEC "Evaluation").

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
- Ties: a target that shares its score with items listed after it is ranked *after all
  of them* (pessimistic within the returned list). A model that scores every item alike
  then cannot collect hits from the list order; ties that run past the k-th item are not
  visible to the evaluator and are ranked as listed (the model's order).
- coverage@C: distinct items in the top-C lists of the users in a row / n_items.
- filled@k: mean fraction of the k slots holding a real item (< 1 when a generative
  model returns fewer items than asked, e.g. invalid SIDs dropped).

Rows: one per (variant of `model.variants()`, subset), with subsets "overall",
"in-set" (the split's target is warm: seen in training) and "cold" (the target is a
cold-start item). An empty subset is reported with n = 0 and NaN metrics.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sidrec.data.dataset import Dataset, Split
from sidrec.errors import SidrecError
from sidrec.io import read_json, write_json, write_text
from sidrec.models.base import Recommender

SUBSETS = ("overall", "in-set", "cold")
METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.md"


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
) -> dict[str, float]:
    """Recall@K, NDCG@K for each K, coverage@coverage_k and filled@max(ks) of one user set."""
    n = int(targets.shape[0])
    out: dict[str, float] = {"n": n}
    if n == 0:
        for k in ks:
            out[f"recall@{k}"] = math.nan
            out[f"ndcg@{k}"] = math.nan
        out[f"coverage@{coverage_k}"] = math.nan
        out[f"filled@{max(ks)}"] = math.nan
        return out
    ranks = target_ranks(items, scores, targets)
    for k in ks:
        out[f"recall@{k}"] = recall_at(ranks, k).mean().item()
        out[f"ndcg@{k}"] = ndcg_at(ranks, k).mean().item()
    out[f"coverage@{coverage_k}"] = coverage_at(items, coverage_k, n_items)
    kmax = max(ks)
    out[f"filled@{kmax}"] = (items[:, :kmax] >= 0).float().mean().item()
    return out


# ---------------------------------------------------------------- evaluation loop


@torch.no_grad()
def top_k(
    model: Recommender,
    histories: np.ndarray,
    users: np.ndarray,
    k: int,
    *,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched `model.recommend` over all rows: (items [U, k] int64, scores [U, k]) on CPU.

    Rows with fewer than k items (small catalogues, short beams) are padded with -1 / -inf.
    """
    n = len(histories)
    items = torch.full((n, k), -1, dtype=torch.int64)
    scores = torch.full((n, k), -math.inf, dtype=torch.float32)
    for start in range(0, n, batch_size):
        h = torch.as_tensor(histories[start : start + batch_size], device=device)  # [B, L]
        u = torch.as_tensor(users[start : start + batch_size], device=device)  # [B]
        top_items, top_scores = model.recommend(h, u, k, **options)  # [B, <=k]
        width = min(k, top_items.shape[1])
        items[start : start + len(h), :width] = top_items[:, :width].to("cpu", torch.int64)
        scores[start : start + len(h), :width] = top_scores[:, :width].to("cpu", torch.float32)
    return items, scores


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
    "recall@K", "ndcg@K", ..., "coverage@C", "filled@Kmax"}], "users_per_s"}`.
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
    targets_t = torch.as_tensor(targets)
    cold_target = torch.from_numpy(np.array(dataset.cold, dtype=bool))[targets_t]  # [U]
    masks = {"overall": torch.ones_like(cold_target), "in-set": ~cold_target, "cold": cold_target}
    kmax = max(max(ks), coverage_k)

    all_variants = model.variants()
    if variants is not None:
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
        for label, options in all_variants.items():
            t0 = time.perf_counter()
            items, scores = top_k(
                model, histories, users, kmax, batch_size=batch_size, device=device, **options
            )
            seconds += time.perf_counter() - t0
            for subset, mask in masks.items():
                row = {"variant": label, "subset": subset}
                row.update(
                    subset_metrics(
                        items[mask], scores[mask], targets_t[mask], ks, dataset.n_items, coverage_k
                    )
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
        "rows": rows,
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


# ---------------------------------------------------------------- seeds, tables, files


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample sd over seeds: same structure, each metric `m` plus `m_sd`.

    Runs must be of one model on one split with the same rows; NaN rows stay NaN.
    `n_seeds` is added; a single run gets sd NaN.
    """
    if not runs:
        raise SidrecError("aggregate: no runs to aggregate")
    first = runs[0]
    keys = [(r["variant"], r["subset"]) for r in first["rows"]]
    for other in runs[1:]:
        if [(r["variant"], r["subset"]) for r in other["rows"]] != keys or other["split"] != first[
            "split"
        ]:
            raise SidrecError(
                f"aggregate: runs of {other['display_name']!r} do not have the same rows/split "
                f"as {first['display_name']!r}; aggregate one model and split at a time"
            )
    rows = []
    for i, template in enumerate(first["rows"]):
        row: dict[str, Any] = {"variant": template["variant"], "subset": template["subset"]}
        row["n"] = template["n"]
        for name in template:
            if "@" not in name:
                continue
            values = np.asarray([float(r["rows"][i][name]) for r in runs], dtype=np.float64)
            row[name] = float(values.mean())
            row[f"{name}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        rows.append(row)
    out = {k: v for k, v in first.items() if k not in ("rows", "users_per_s")}
    out["rows"] = rows
    out["n_seeds"] = len(runs)
    return out


def format_table(metrics: dict[str, Any] | Sequence[dict[str, Any]], digits: int = 4) -> str:
    """A markdown table with one line per (model, variant, subset) row."""
    runs = [metrics] if isinstance(metrics, dict) else list(metrics)
    if not runs:
        return ""
    columns: list[str] = []
    for run in runs:
        for row in run["rows"]:
            for name in row:
                if "@" in name and not name.endswith("_sd") and name not in columns:
                    columns.append(name)
    columns.sort(key=_column_order)
    header = ["model", "split", "subset", "n", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        label = run["display_name"]
        if run.get("name", run["model"]) != run["model"]:  # e.g. "sasrec-seed1: sasrec (CE)"
            label = f"{run['name']}: {label}"
        seeds = run.get("n_seeds")
        if seeds and seeds > 1:
            label += f" ×{seeds} seeds"
        for row in run["rows"]:
            name = f"{label} [{row['variant']}]" if row["variant"] else label
            cells = [name, run["split"], row["subset"], str(row["n"])]
            for col in columns:
                cells.append(_cell(row.get(col), row.get(f"{col}_sd"), digits))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def save_metrics(run_dir: str | Path, metrics: dict[str, Any], name: str) -> None:
    """Record `metrics` of model directory `name` in `run_dir/metrics.json` and rewrite
    `results.md` with every recorded model (both files written atomically)."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    store = read_json(path) if path.is_file() else {"models": {}}
    store.setdefault("models", {}).setdefault(name, {})[metrics["split"]] = {
        **metrics,
        "name": name,
    }
    write_json(path, store)
    runs = [m for splits in store["models"].values() for m in splits.values()]
    title = (
        f"# Results: {run_dir.name}\n\nFull ranking over the whole catalogue, leave-one-out.\n\n"
    )
    write_text(run_dir / RESULTS_FILE, title + format_table(runs))


def _cell(value: Any, sd: Any, digits: int) -> str:
    if value is None:
        return ""
    value = float(value)
    if math.isnan(value):
        return "–"
    text = f"{value:.{digits}f}"
    if sd is not None and not math.isnan(float(sd)):
        text += f" ± {float(sd):.{digits}f}"
    return text


def _column_order(name: str) -> tuple[int, int, int]:
    # recall@5, ndcg@5, recall@10, ndcg@10, ..., then coverage and filled
    kind, _, k = name.partition("@")
    group, within = {"recall": (0, 0), "ndcg": (0, 1), "coverage": (1, 0), "filled": (2, 0)}.get(
        kind, (3, 0)
    )
    return (group, int(k) if k.isdigit() else 0, within)


def evaluate_run(
    run_dir: str | Path,
    name: str,
    split: Split = "test",
    ks: Sequence[int] = (5, 10, 20),
    batch_size: int = 512,
    device: str = "auto",
    save: bool = True,
) -> dict[str, Any]:
    """Load `run_dir/models/<name>`, evaluate it on `split`, and record the result.

    This is what `sidrec evaluate RUN_DIR --model NAME --split test` runs.
    """
    # Imported here: the trainer imports this module for its validation metric.
    from sidrec.device import resolve_device
    from sidrec.train import load_model

    run_dir = Path(run_dir)
    dataset = Dataset.load(run_dir)
    dev = resolve_device(device)
    model = load_model(run_dir / "models" / name, run_dir, dataset=dataset).to(dev)
    metrics = evaluate(model, dataset, split, ks, batch_size=batch_size, device=dev)
    if save:
        save_metrics(run_dir, metrics, name)
    return metrics
