"""`sidrec data prepare`: raw input -> `runs/<name>/dataset/` (see `dataset.py`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sidrec.config import to_dict
from sidrec.data import readers
from sidrec.data.dataset import FORMAT_VERSION, Dataset
from sidrec.data.protocol import split
from sidrec.errors import SidrecError
from sidrec.io import atomic_dir, hash_array, hash_obj, read_json, write_json

Format = Literal["auto", "ml-100k", "grouplens", "recbole", "amazon", "table"]


@dataclass(frozen=True)
class PrepareConfig:
    source: str = "ml-100k"  # "ml-100k" (fetched), or a folder / file path
    format: Format = "auto"
    items: str = ""  # items table (format "table"), or the .item/meta file if not beside
    user_col: str = "user_id"  # column names for recbole / table formats
    item_col: str = "item_id"
    time_col: str = "timestamp"
    text_cols: tuple[str, ...] = ()  # item text fields; empty = the known ones present
    kcore: int = 0  # 0 = no filtering; 5 = the papers' 5-core
    max_history: int = 20  # histories keep the last N items
    cold_mode: Literal["natural", "holdout"] = "natural"
    cold_fraction: float = 0.05  # holdout mode only
    seed: int = 0  # holdout item draw


def load_raw(cfg: PrepareConfig) -> readers.RawData:
    fmt, src = cfg.format, cfg.source
    if fmt == "ml-100k" or (fmt == "auto" and src == "ml-100k"):
        return readers.read_ml100k_from_wheel()
    path = Path(src)
    if not path.exists():
        raise SidrecError(
            f"{path}: no such file or folder; pass `ml-100k` or a path to your data"
        )
    if fmt == "auto":
        fmt = _detect_format(path, cfg)
    if fmt == "grouplens":
        return readers.read_grouplens(path if path.is_dir() else path.parent)
    if fmt == "recbole":
        inter = path if path.is_file() else _one(path, "*.inter")
        item = Path(cfg.items) if cfg.items else _one(inter.parent, "*.item")
        return readers.read_recbole(inter, item, cfg.user_col, cfg.item_col, cfg.time_col,
                                    cfg.text_cols)
    if fmt == "amazon":
        reviews = path if path.is_file() else _one(path, "reviews_*_5.json*")
        category = reviews.name.removeprefix("reviews_").split("_5.json")[0]
        meta = Path(cfg.items) if cfg.items else _one(reviews.parent, f"meta_{category}.json*")
        return readers.read_amazon(reviews, meta)
    if fmt == "table":
        if not cfg.items:
            raise SidrecError("format 'table' needs the items table: pass --items PATH")
        return readers.read_tables(path, Path(cfg.items), cfg.user_col, cfg.item_col,
                                   cfg.time_col, cfg.text_cols)
    raise SidrecError(f"unknown format {fmt!r}")


def _detect_format(path: Path, cfg: PrepareConfig) -> str:
    if path.is_file():
        if path.suffix == ".inter":
            return "recbole"
        if path.name.startswith("reviews_"):
            return "amazon"
        return "table"
    if (path / "u.data").exists():
        return "grouplens"
    if list(path.glob("*.inter")):
        return "recbole"
    if list(path.glob("reviews_*_5.json*")):
        return "amazon"
    raise SidrecError(
        f"{path}: cannot tell the format (no u.data, *.inter or reviews_*_5.json.gz); "
        "pass --format grouplens|recbole|amazon|table"
    )


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise SidrecError(f"{folder}: no file matching {pattern!r}; check the folder")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise SidrecError(f"{folder}: several files match {pattern!r} ({names}); pass one path")
    return found[0]


def prepare(run_dir: str | Path, cfg: PrepareConfig, force: bool = False) -> dict:
    """Run the data stage; returns the manifest. Reuses an identical earlier run."""
    run_dir = Path(run_dir)
    out = run_dir / "dataset"
    # The input files' stamps are part of the key: an edited input is never reused stale.
    config_hash = hash_obj([to_dict(cfg), _input_stamp(cfg)])
    if not force and (out / "manifest.json").is_file():
        manifest = read_json(out / "manifest.json")
        if manifest.get("config_hash") == config_hash and manifest.get(
            "format_version") == FORMAT_VERSION:
            return manifest
    start = time.perf_counter()
    raw = load_raw(cfg)
    if raw.interactions.empty:
        raise SidrecError(f"{cfg.source}: no interactions found; check the input file")
    texts = raw.items.drop_duplicates("item_id", keep="first").set_index("item_id")["text"]
    result = split(raw.interactions, cfg.kcore, cfg.cold_mode, cfg.cold_fraction, cfg.seed)
    missing = [i for i in result.item_ids if i not in texts.index]
    if missing:
        where = next((raw.source[k] for k in ("items", "meta", "item") if k in raw.source),
                     cfg.source)
        raise SidrecError(
            f"{where}: the items table lacks {len(missing)} interacted item(s), "
            f"e.g. {missing[0]!r}; add a row for every item that appears in the interactions"
        )
    items = pd.DataFrame({
        "item": np.arange(len(result.item_ids)),
        "item_id": result.item_ids.astype(str),
        "text": texts.loc[result.item_ids].to_numpy(dtype=str),
        "cold": result.cold,
    })
    users = pd.DataFrame({"user": np.arange(len(result.user_ids)),
                          "user_id": result.user_ids.astype(str)})
    split_table = pa.table({
        "user": np.arange(len(result.user_ids)),
        "train": pa.array([t.tolist() for t in result.train], type=pa.list_(pa.int64())),
        "valid": result.valid,
        "test": result.test,
    })
    sequences = pa.table({
        "user": np.arange(len(result.user_ids)),
        "items": pa.array([s.tolist() for s in result.sequences], type=pa.list_(pa.int64())),
    })
    n_interactions = int(sum(len(s) for s in result.sequences))
    cold_ids = np.flatnonzero(result.cold)
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": run_dir.name,
        "config_hash": config_hash,
        "protocol": to_dict(cfg),
        "source": raw.source,
        "counts": {
            "users": len(result.user_ids),
            "items": len(result.item_ids),
            "interactions": n_interactions,
            "train_interactions": int(sum(len(t) for t in result.train)),
            "train_examples": int(sum(max(len(t) - 1, 0) for t in result.train)),
            "cold_items": len(cold_ids),
            "cold_valid_users": int(result.cold[result.valid].sum()),
            "cold_test_users": int(result.cold[result.test].sum()),
            "holdout_items": len(result.holdout_items),
            "dropped_short_users": result.dropped_short_users,
            "dropped_empty_train_users": result.dropped_empty_train_users,
        },
        "hashes": {
            "train": hash_array(np.concatenate(
                [np.append(t, -1) for t in result.train])),
            "valid": hash_array(result.valid),
            "test": hash_array(result.test),
            "cold": hash_array(cold_ids),
            "item_ids": hash_obj(items["item_id"].tolist()),
            "text": hash_obj(items["text"].tolist()),
        },
        "seconds": round(time.perf_counter() - start, 2),
    }
    with atomic_dir(out) as tmp:
        items.to_parquet(tmp / "items.parquet", index=False)
        users.to_parquet(tmp / "users.parquet", index=False)
        pq.write_table(split_table, tmp / "split.parquet")
        pq.write_table(sequences, tmp / "sequences.parquet")
        write_json(tmp / "manifest.json", manifest)
    return manifest


def _input_stamp(cfg: PrepareConfig) -> list[list]:
    """(path, size, mtime) of each input file (a folder source: the files directly in it)."""
    paths = [Path(p) for p in (cfg.source, cfg.items) if p and Path(p).exists()]
    files = sorted({f for p in paths for f in ([p] if p.is_file() else p.iterdir())
                    if f.is_file()})
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def summary(manifest: dict) -> str:
    c, p = manifest["counts"], manifest["protocol"]
    return (
        f"{manifest['name']}: {c['users']:,} users, {c['items']:,} items, "
        f"{c['interactions']:,} interactions ({c['train_examples']:,} training examples); "
        f"cold ({p['cold_mode']}): {c['cold_items']:,} items, {c['cold_test_users']:,} test users; "
        f"k-core {p['kcore']}, history {p['max_history']}"
    )


def load_dataset(run_dir: str | Path) -> Dataset:
    return Dataset.load(run_dir)
