"""Semantic-ID diagnostics: codebook usage, perplexity, collisions, reconstruction error.

- usage(l): fraction of the K codes of level l used by at least one item. A collapsed
  codebook (a few codes take every item) shows as low usage and low perplexity.
- perplexity(l): exp(entropy) of the level-l code distribution over items; K when items
  spread evenly over all K codes, 1 when every item has the same code.
- collision rate: 1 - (distinct L-code prefixes / items), i.e. the fraction of items
  that need a collision token > 0; max items per prefix = the last SID position's size.
- reconstruction: mean squared error of the tokenizer's reconstruction in the input
  space, and the same relative to the warm items' variance (fraction of variance not
  explained; comparable across methods), for warm and cold items separately.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sidrec.io import atomic_path


def sid_diagnostics(codes: np.ndarray, codebook_size: int) -> dict[str, Any]:
    """Usage / perplexity per level and collision statistics for codes [n, L]."""
    codes = np.asarray(codes, dtype=np.int64)
    n, levels = codes.shape
    per_level = []
    for level in range(levels):
        counts = np.bincount(codes[:, level], minlength=codebook_size)
        p = counts[counts > 0] / max(n, 1)
        per_level.append(
            {
                "level": level + 1,
                "codes_used": int((counts > 0).sum()),
                "usage": float((counts > 0).mean()),
                "perplexity": float(np.exp(-(p * np.log(p)).sum())) if n else 0.0,
            }
        )
    if n:
        _, prefix_counts = np.unique(codes, axis=0, return_counts=True)
    else:
        prefix_counts = np.zeros(0, dtype=np.int64)
    return {
        "n_items": int(n),
        "levels": per_level,
        "unique_prefixes": int(len(prefix_counts)),
        "collision_rate": float(1.0 - len(prefix_counts) / n) if n else 0.0,
        "colliding_items": int(prefix_counts[prefix_counts > 1].sum()),
        "max_items_per_prefix": int(prefix_counts.max(initial=0)),
    }


def reconstruction_error(
    x: np.ndarray, x_hat: np.ndarray, warm_var: float
) -> dict[str, float] | None:
    """MSE of x_hat vs x [n, d], and the same divided by the warm items' mean per-dimension
    variance `warm_var` (the MSE of predicting every item by the warm mean)."""
    if len(x) == 0:
        return None
    mse = float(((x - x_hat) ** 2).mean())
    return {"mse": mse, "relative": mse / warm_var if warm_var > 0 else float("nan")}


def diagnostics_markdown(diag: dict[str, Any]) -> str:
    """A small markdown table of `sid_diagnostics` (+ "reconstruction", if present)."""
    lines = ["| level | codes used | usage | perplexity |", "|---|---|---|---|"]
    for row in diag["levels"]:
        lines.append(
            f"| {row['level']} | {row['codes_used']} | {row['usage']:.1%} | "
            f"{row['perplexity']:.1f} |"
        )
    lines += [
        "",
        "| statistic | value |",
        "|---|---|",
        f"| items | {diag['n_items']} |",
        f"| distinct prefixes | {diag['unique_prefixes']} |",
        f"| collision rate | {diag['collision_rate']:.2%} |",
        f"| max items per prefix | {diag['max_items_per_prefix']} |",
    ]
    for part, rec in (diag.get("reconstruction") or {}).items():
        if rec is not None:
            lines.append(
                f"| reconstruction MSE ({part}) | {rec['mse']:.4g} "
                f"({rec['relative']:.1%} of warm variance) |"
            )
    return "\n".join(lines) + "\n"


def plot_codebook_usage(
    codes: np.ndarray, codebook_size: int, path: str | Path, title: str = ""
) -> None:
    """PNG: per level, items per code (codes sorted by count), written atomically."""
    codes = np.asarray(codes, dtype=np.int64)
    levels = codes.shape[1]
    fig = Figure(figsize=(3.2 * levels, 2.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, levels, squeeze=False)[0]
    for level, ax in enumerate(axes):
        counts = np.sort(np.bincount(codes[:, level], minlength=codebook_size))[::-1]
        used = int((counts > 0).sum())
        ax.bar(np.arange(codebook_size), counts, width=1.0, color="tab:blue")
        ax.axhline(len(codes) / codebook_size, color="tab:red", lw=0.8, ls="--", label="uniform")
        ax.set_title(f"level {level + 1}: {used}/{codebook_size} codes used", fontsize=9)
        ax.set_xlabel("code (sorted by count)", fontsize=8)
        if level == 0:
            ax.set_ylabel("items", fontsize=8)
            ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
