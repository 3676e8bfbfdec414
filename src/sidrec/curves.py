"""Learning curves: validation Recall / NDCG against wall time and training sequences.

Written by the trainer after every epoch (rank 0), from the training log alone, so a
long run's curve can be read while it trains and a resumed run continues it:

- `curve.csv`: epoch, training sequences seen, cumulative wall seconds (training plus
  validation), the training loss and every validation metric of the log;
- `curve.png`: valid Recall@K and NDCG@K against wall seconds (left) and against
  sequences seen (right), which tells a slow model from one that learns little per pass;
- TensorBoard scalars under `tensorboard/` (x = sequences seen), when the `tensorboard`
  package is installed (`pip install sidrec[tensorboard]`); without it nothing is written.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import shutil
from collections.abc import Sequence
from typing import Any

from sidrec.io import write_text
from sidrec.run import ModelDir


def curve_rows(log: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per validated epoch: epoch, sequences, wall_seconds (cumulative over every
    epoch so far, validation included), train_loss and the `valid_*` metrics."""
    rows, wall = [], 0.0
    for entry in log:
        wall += entry.get("train_seconds", 0.0) + entry.get("valid_seconds", 0.0)
        metrics = {k: v for k, v in entry.items() if k.startswith("valid_") and "@" in k}
        if not metrics:
            continue
        rows.append({"epoch": entry["epoch"], "sequences": entry.get("examples_seen", 0),
                     "wall_seconds": round(wall, 2), "train_loss": entry.get("train_loss"),
                     **metrics})
    return rows


def write_curves(model_dir: ModelDir, log: Sequence[dict[str, Any]], title: str = "") -> None:
    """Write curve.csv and curve.png (and TensorBoard scalars if installed) from `log`."""
    rows = curve_rows(log)
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[-1]), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(model_dir.curve.with_suffix(".csv"), buffer.getvalue())
    _plot(model_dir, rows, title or model_dir.name)
    if importlib.util.find_spec("tensorboard") is not None:
        _tensorboard(model_dir, rows)


def _plot(model_dir: ModelDir, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sidrec.report import save_figure

    # the ranking metrics only: coverage or filled@ (near 1) would flatten them to the axis
    metrics = [k for k in rows[-1] if k.startswith(("valid_recall@", "valid_ndcg@"))]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, x, label in ((axes[0], "wall_seconds", "wall seconds (training + validation)"),
                         (axes[1], "sequences", "training sequences seen")):
        for metric in metrics:
            points = [(r[x], r[metric]) for r in rows if metric in r]
            ax.plot(*zip(*points, strict=True), marker="o", label=metric[len("valid_"):])
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation")
    axes[0].legend()
    fig.suptitle(f"{title}: learning curve (valid, overall)")
    save_figure(fig, model_dir.curve.with_suffix(".png"))


def _tensorboard(model_dir: ModelDir, rows: list[dict[str, Any]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    # Rewritten whole each epoch, so a resumed run's curve stays one series.
    shutil.rmtree(model_dir.tensorboard, ignore_errors=True)
    with SummaryWriter(str(model_dir.tensorboard)) as writer:
        for row in rows:
            for key, value in row.items():
                if key.startswith("valid_") or key == "train_loss":
                    writer.add_scalar(key.replace("@", "_at_"), value, row["sequences"],
                                      walltime=row["wall_seconds"])
