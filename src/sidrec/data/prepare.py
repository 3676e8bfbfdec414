"""`sidrec data prepare`: raw input -> `runs/<name>/dataset/` (see `dataset.py`)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sidrec.config import to_dict
from sidrec.data.config import PrepareConfig, check_prepare_config
from sidrec.data.dataset import FORMAT_VERSION, Dataset
from sidrec.data.protocol import split
from sidrec.data.sources import LEGACY_COLUMNS, load_raw
from sidrec.errors import SidrecError
from sidrec.io import atomic_dir, hash_array, hash_obj, reusable_record, write_json
from sidrec.run import RunDir


def prepare(run_dir: str | Path, cfg: PrepareConfig, force: bool = False) -> dict:
    """Run the data stage; returns the manifest. Reuses an identical earlier run."""
    check_prepare_config(cfg)
    run = RunDir(run_dir).check_writable()
    out = run.dataset
    # The input files' stamps are part of the key: an edited input is never reused stale.
    config_hash = hash_obj([_hashed_settings(cfg), _input_stamp(cfg)])
    manifest = None if force else reusable_record(
        out / "manifest.json", {"config_hash": config_hash, "format_version": FORMAT_VERSION},
        unchanged=_unchanged)
    if manifest is not None:
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
    # Python string lists, never numpy's fixed-width str arrays: those take n x the longest
    # string x 4 bytes (one 500 kB description made a 1,000-item catalogue 2 GB).
    items = pd.DataFrame({
        "item": np.arange(len(result.item_ids)),
        "item_id": [str(i) for i in result.item_ids],
        "text": [str(t) for t in texts.loc[result.item_ids]],
        "cold": result.cold,
    })
    users = pd.DataFrame({"user": np.arange(len(result.user_ids)),
                          "user_id": [str(u) for u in result.user_ids]})
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
        "name": run.root.name,
        "dataset": cfg.dataset or raw.source.get("dataset", ""),
        "config_hash": config_hash,
        "protocol": to_dict(cfg),
        "source": raw.source,
        # every file the reader opened, also those it found beside the source (meta_*.json,
        # movies.dat, ...): an edited one is never reused stale
        "input_files": _stamps(Path(v) for v in raw.source.values() if isinstance(v, str)),
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


def _hashed_settings(cfg: PrepareConfig) -> dict:
    """The settings as hashed before `dataset` and column detection existed, so that an
    unchanged run (e.g. the demo's ml-100k) keeps its config hash and is reused."""
    settings = to_dict(cfg)
    for key, legacy in LEGACY_COLUMNS.items():
        if settings[key] == "auto":
            settings[key] = legacy
    if not settings["dataset"]:
        del settings["dataset"]
    return settings


def _input_stamp(cfg: PrepareConfig) -> list[list]:
    """(path, size, mtime) of each input file (a folder source: the files directly in it)."""
    paths = [Path(p) for p in (cfg.source, cfg.items) if p and Path(p).exists()]
    return _stamps(f for p in paths for f in ([p] if p.is_file() else p.iterdir()))


def _stamps(paths: Iterable[Path]) -> list[list]:
    """[path, size, mtime] of each of `paths` that is a file, sorted."""
    files = sorted({p for p in paths if p.is_file()})
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _unchanged(manifest: dict) -> bool:
    """Every file the manifest's reader opened is as it was (older manifests: no record)."""
    recorded = manifest.get("input_files")
    return recorded is None or recorded == _stamps(Path(f) for f, *_ in recorded)


def summary(manifest: dict) -> str:
    c, p = manifest["counts"], manifest["protocol"]
    dataset = manifest.get("dataset")
    line = (
        f"{manifest['name']}{f' ({dataset})' if dataset else ''}: {c['users']:,} users, "
        f"{c['items']:,} items, "
        f"{c['interactions']:,} interactions ({c['train_examples']:,} training examples); "
        f"cold ({p['cold_mode']}): {c['cold_items']:,} items, {c['cold_test_users']:,} test users; "
        f"k-core {p['kcore']}, history {p['max_history']}"
    )
    source = manifest.get("source", {})
    if source.get("detected"):
        picked = ", ".join(f"{role}={source['columns'][role]!r}" for role in source["detected"])
        line += f"\ncolumns detected: {picked} (set user_col, item_col, time_col to change)"
    return line


def load_dataset(run_dir: str | Path) -> Dataset:
    return Dataset.load(run_dir)
