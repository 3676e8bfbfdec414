"""`sidrec data stats RUN_DIR`: the numbers a paper's dataset table gives, for a prepared run.

Users, items and interactions are those of the prepared split (after k-core filtering and
after dropping users too short to split); density = interactions / (users x items);
sequence lengths are the full per-user sequences (train + valid + test targets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sidrec.data.dataset import Dataset
from sidrec.data.readers.recbole import KNOWN
from sidrec.run import RunDir

QUANTILES = (0.25, 0.5, 0.75, 0.9, 0.99)


def dataset_stats(run_dir: str | Path) -> dict[str, Any]:
    ds = Dataset.load(run_dir)
    m = ds.manifest
    sequences = pq.read_table(RunDir(run_dir).dataset / "sequences.parquet", columns=["items"])
    lengths = pc.list_value_length(sequences["items"]).to_numpy(zero_copy_only=False)
    counts = m["counts"]
    users, items, interactions = counts["users"], counts["items"], counts["interactions"]
    source = m.get("source", {})
    return {
        "dataset": m.get("dataset") or source.get("dataset") or _older_run_name(source),
        "format": source.get("format", "?"),
        "run": str(run_dir),
        "kcore": m["protocol"]["kcore"],
        "cold_mode": m["protocol"]["cold_mode"],
        "max_history": ds.max_history,
        "users": users,
        "items": items,
        "interactions": interactions,
        "density": interactions / (users * items),
        "length": {
            "min": int(lengths.min()),
            **{f"p{round(q * 100)}": float(np.quantile(lengths, q)) for q in QUANTILES},
            "max": int(lengths.max()),
            "mean": float(lengths.mean()),
        },
        "train_examples": counts["train_examples"],
        "cold_items": counts["cold_items"],
        "holdout_items": counts["holdout_items"],
        "cold_valid_users": counts["cold_valid_users"],
        "cold_test_users": counts["cold_test_users"],
        "dropped_short_users": counts["dropped_short_users"],
        "items_without_text": int(sum(t.startswith("Item: ") for t in ds.item_text)),
    }


def format_stats(s: dict[str, Any]) -> str:
    length = s["length"]
    quantiles = ", ".join(f"{k} {_num(v)}" for k, v in length.items() if k.startswith("p"))
    rows = [
        ("dataset", f"{s['dataset']} (read as {s['format']}), run {s['run']}"),
        ("protocol", f"k-core {s['kcore']}, leave-one-out, history {s['max_history']}, "
                     f"cold {s['cold_mode']}"),
        ("users", f"{s['users']:,}"),
        ("items", f"{s['items']:,}"),
        ("interactions", f"{s['interactions']:,}"),
        ("density", f"{s['density']:.4%}"),
        ("sequence length", f"mean {length['mean']:.2f}, min {length['min']}, {quantiles}, "
                            f"max {length['max']}"),
        ("training examples", f"{s['train_examples']:,}"),
        ("cold items", f"{s['cold_items']:,}" + (f" ({s['holdout_items']:,} held out)"
                                                if s["holdout_items"] else "")),
        ("cold test users", f"{s['cold_test_users']:,} (valid: {s['cold_valid_users']:,})"),
        ("dropped users", f"{s['dropped_short_users']:,} with fewer than 3 interactions"),
        ("items without text", f"{s['items_without_text']:,}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _older_run_name(source: dict) -> str:
    """The version name of a run prepared before manifests recorded it."""
    fmt = source.get("format", "?")
    if fmt in ("recbole-wheel", "grouplens"):
        return "movielens-100k"
    if fmt == "recbole":
        stem = Path(source.get("inter", "")).name.split(".")[0]
        return KNOWN.get(stem, f"recbole/{stem}")
    if fmt == "amazon":
        name = Path(source.get("reviews", "")).name
        return f"amazon-2014/{name.removeprefix('reviews_').split('_5.json')[0]}"
    return fmt


def _num(x: float) -> str:
    return f"{x:g}" if float(x).is_integer() else f"{x:.1f}"
