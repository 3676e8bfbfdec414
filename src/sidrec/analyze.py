"""`sidrec analyze cold-start`: the overfitting diagnostic that motivates LIGER.

LIGER (Yang et al., arXiv 2411.18814, Sec. 3.2) shows that a generative retriever gives
the semantic IDs of cold-start items far lower log-probabilities than those of in-set
items, even when the cold item is the true next item: the generative head overfits to
the SIDs it saw as targets. We measure it with the exact scorer (teacher forcing over
every catalogue SID, `exact_scores`), over the test users:

- target log-prob: log P(SID(target) | history), for users whose target is in-set vs cold;
- catalogue log-prob: the mean log P(SID(a) | history) over in-set items a vs cold items a.

Writes `analysis/cold_start_<model>.json` and `plots/cold_start_<model>.png`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sidrec.data.dataset import Dataset
from sidrec.errors import SidrecError
from sidrec.io import write_json
from sidrec.report import save_figure
from sidrec.run import RunDir


def cold_start_logprobs(model: Any, dataset: Dataset, batch_size: int = 64,
                        max_users: int | None = None) -> dict[str, np.ndarray]:
    """Exact SID log-probabilities for the test users (see the module docstring)."""
    if not hasattr(model, "exact_scores"):
        raise SidrecError(f"model {model.name!r} has no generative head to analyse; "
                          "use a generative model (tiger, liger)")
    histories, targets, users = dataset.eval_examples("test")
    if max_users is not None and max_users < len(targets):
        # Keep every cold-target user (the rare, interesting ones) and a prefix of the rest.
        cold_users = np.flatnonzero(dataset.cold[targets])
        warm_users = np.flatnonzero(~dataset.cold[targets])[: max(max_users - len(cold_users), 0)]
        keep = np.sort(np.concatenate([cold_users, warm_users]))
        histories, targets, users = histories[keep], targets[keep], users[keep]
    cold = torch.as_tensor(dataset.cold)
    target_lp, warm_mean, cold_mean = [], [], []
    for start in range(0, len(targets), batch_size):
        h = torch.as_tensor(histories[start : start + batch_size])
        u = torch.as_tensor(users[start : start + batch_size])
        scores = model.exact_scores(h, u).cpu()  # (B, n_items)
        t = torch.as_tensor(targets[start : start + batch_size])
        target_lp.append(scores.gather(1, t[:, None])[:, 0])
        warm_mean.append(scores[:, ~cold].mean(1))
        cold_mean.append(scores[:, cold].mean(1) if cold.any() else torch.full((len(h),), np.nan))
    target_cold = dataset.cold[targets]
    lp = torch.cat(target_lp).numpy()
    return {
        "target_in_set": lp[~target_cold],
        "target_cold": lp[target_cold],
        "catalogue_in_set": torch.cat(warm_mean).numpy(),
        "catalogue_cold": torch.cat(cold_mean).numpy(),
    }


def summarise(values: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    out = {}
    for name, v in values.items():
        v = v[np.isfinite(v)]
        out[name] = {
            "n": int(len(v)),
            "mean": float(v.mean()) if len(v) else float("nan"),
            "median": float(np.median(v)) if len(v) else float("nan"),
            "p10": float(np.percentile(v, 10)) if len(v) else float("nan"),
            "p90": float(np.percentile(v, 90)) if len(v) else float("nan"),
        }
    return out


def plot(values: dict[str, np.ndarray], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, kind, label in ((axes[0], "target", "log P(SID of the test target)"),
                            (axes[1], "catalogue", "mean log P(SID) over the catalogue")):
        for subset, color in (("in_set", "tab:blue"), ("cold", "tab:red")):
            v = values[f"{kind}_{subset}"]
            v = v[np.isfinite(v)]
            if len(v):
                ax.hist(v, bins=40, alpha=0.6, density=True, color=color,
                        label=f"{subset.replace('_', '-')} (n={len(v)})")
        ax.set_xlabel(label)
        ax.set_ylabel("density")
        ax.legend()
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)


def analyze_cold_start(run_dir: str | Path | RunDir, name: str,
                       max_users: int | None = 2000) -> dict:
    from sidrec.checkpoint import load_model

    run = RunDir(run_dir)
    md = run.model(name).require()
    dataset = Dataset.load(run.root)
    if not dataset.cold.any():
        raise SidrecError(f"{run.root}: the split has no cold items; prepare it with "
                          "--cold-mode holdout")
    model = load_model(md, run, dataset=dataset)
    values = cold_start_logprobs(model, dataset, max_users=max_users)
    summary = summarise(values)
    write_json(run.root / "analysis" / f"cold_start_{name}.json", summary)
    plot(values, f"{name}: generative log-probabilities, in-set vs cold-start",
         run.plot(f"cold_start_{name}"))
    return summary
