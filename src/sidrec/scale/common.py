"""What every stage of the scale benchmark shares: sizes, options, timing, the
random-weight models whose recommending it times, and recall against exact search."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

SIZES = (10_000, 100_000, 1_000_000)


@dataclass(frozen=True)
class Options:
    users: int = 256  # users decoded per measurement (after one warm-up batch)
    batch: int = 64  # users per recommend call
    repeats: int = 3  # a measurement is the fastest of this many passes (shared machine)
    calibration_users: int = 512  # users whose queries calibrate the item indexes
    kmeans_iters: int = 25  # RQ-KMeans (the package defaults)
    balanced_iters: int = 10
    rqvae_epochs: int = 10
    add_batch: int = 1_000  # items per add
    add_rounds: int = 5
    encode_texts: bool = True  # time all-MiniLM-L6-v2 on add_batch texts (at the first size)
    threads: int = 2


def paths(work: Path, n: int) -> tuple[Path, Path]:
    return work / f"data-{label(n)}", work / f"run-{label(n)}"


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def random_model(name: str, n: int, work: Path, inference: dict[str, Any] | None = None,
                 room: int = 0) -> Any:
    """(model with random weights, test histories, users, dataset, catalogue); `room`
    widens the collision token's vocabulary (headroom for items added later)."""
    from sidrec.catalogue.build import build_catalogue
    from sidrec.data.dataset import Dataset
    from sidrec.presets import resolve_config

    _, run = paths(work, n)
    ds = Dataset.load(run)
    s = resolve_config(name, "cpu", inference_overrides=inference)
    cat = build_catalogue(run, ds, need_text=s.cls.needs_text, need_sids=bool(s.cls.needs_sids))
    if room:
        cat = replace(cat, codebook_sizes=(*cat.codebook_sizes[:-1],
                                           cat.codebook_sizes[-1] + room))
    torch.manual_seed(0)
    model = s.cls(s.model, cat).eval()
    model.inference = s.inference
    history, _, users = ds.eval_examples("test")
    return model, torch.from_numpy(history), torch.from_numpy(users), ds, cat


def best_of(fn: Any, repeats: int) -> tuple[Any, float]:
    """(fn()'s result, the shortest of `repeats` timings): other processes on a shared
    machine only ever add time, so the minimum is the closest to the code's own cost."""
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        out, seconds = timed(fn)
        best = min(best, seconds)
    return out, best


def users_per_s(model: Any, history: torch.Tensor, users: torch.Tensor, opt: Options,
                inference: Any = None, k: int = 10) -> tuple[float, list[torch.Tensor]]:
    """Users/s of model.recommend over opt.users users (after one warm-up batch)."""
    b = opt.batch
    model.recommend(history[:b], users[:b], k, inference)  # builds whatever is lazy
    out, seconds = best_of(lambda: [
        model.recommend(history[lo : lo + b], users[lo : lo + b], k, inference)[0]
        for lo in range(b, b + opt.users, b)], opt.repeats)
    return opt.users / seconds, out


def recent_mean(vectors: torch.Tensor, history: torch.Tensor, last: int = 5) -> torch.Tensor:
    """Queries like a trained model's, for indexes to calibrate on and be measured with: per
    user, the mean of the vectors [n_items, d] of the last `last` items of history [B, L]
    (-1 = padding) -> [B, d]. A trained user vector or v̂ lies near the items the user
    takes next, and in the synthetic data those stay near the recent ones (`stay`); the
    random weights' own queries lie far from every item, an inverted file's worst case."""
    recent = history[:, -last:]
    valid = (recent >= 0).float()[..., None]  # (B, last, 1)
    return (vectors[recent.clamp_min(0)] * valid).sum(1) / valid.sum(1).clamp_min(1)


def recall(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """Share of the ids of want (batches of the exact top-k, -1 ignored) that got's batches
    hold in the same row (`item_index.hits_of`, summed over the batches)."""
    from sidrec.models.item_index import hits_of

    counts = [hits_of(a.cpu(), b.cpu()) for a, b in zip(got, want, strict=True)]
    return sum(h for h, _ in counts) / max(sum(n for _, n in counts), 1)
