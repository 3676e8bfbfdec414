"""Amazon reviews, 2014 and 2023 (McAuley lab).

- `amazon-2014/<Cat>`: `reviews_<Cat>_5.json.gz` (JSON lines: `reviewerID`, `asin`,
  `unixReviewTime`) + `meta_<Cat>.json.gz` (one Python literal per line:
  `ast.literal_eval`, never `eval`, never `json`). Text: title, brand, categories, price.
- `amazon-2023/<Cat>` (https://amazon-reviews-2023.github.io): `<Cat>.jsonl(.gz)` (`user_id`,
  `parent_asin`, `timestamp` in ms, `rating`, `text`) + `meta_<Cat>.jsonl(.gz)`
  (`parent_asin`, `title`, `features`, `categories`, `description`, `store`, `price`).
  Items are keyed by `parent_asin`; a repeated (user, item) keeps its earliest review (ties:
  the first in the file), as the lab's benchmark scripts do. Text: title, store,
  categories, price, features, description (features and description cut at 1,000
  characters each; the encoders read 256 tokens at most).
- The lab's pre-split benchmark files `<Cat>.{train,valid,test}.csv(.gz)`
  (`user_id,parent_asin,rating,timestamp[,history]`): their union is read in the order
  train, valid, test, so leave-one-out over it gives back the lab's `last_out` split
  (ties in time keep that file order; the `history` column is not needed).

Only the meta lines of interacted items are parsed. An interacted item without a meta line
(2023 only) keeps `Item: <id>` as its text and is counted (`items_without_meta`); a meta
file with none of the interacted items is the wrong file and an error.
"""

from __future__ import annotations

import ast
import re
from array import array
from pathlib import Path

import numpy as np
import pandas as pd

from sidrec.data.readers.common import (
    Pool,
    RawData,
    column,
    csv_chunks,
    ident,
    interactions_frame,
    keep_earliest,
    number,
    numbered_lines,
    read_header,
)
from sidrec.data.readers.jsonl import json_object as _json
from sidrec.data.text import item_text
from sidrec.errors import SidrecError

FIELDS_2014 = ["title", "brand", "categories", "price"]
FIELDS_2023 = ["title", "store", "categories", "price", "features", "description"]
LONG_FIELDS = ("features", "description")
MAX_FIELD_CHARS = 1000
SPLITS = ("train", "valid", "test")
_PARENT = re.compile(r'"parent_asin":\s*"([^"\\]*)"')


# ---------------------------------------------------------------- 2014


def read_amazon(reviews_path: Path, meta_path: Path) -> RawData:
    pool = Pool()
    users: list[str] = []
    items: list[str] = []
    times = array("d")
    for lineno, line in numbered_lines(reviews_path):
        rec = _json(line, reviews_path, lineno, "review")
        for key in ("reviewerID", "asin", "unixReviewTime"):
            if key not in rec:
                raise SidrecError(f"{reviews_path}:{lineno}: review lacks field {key!r}")
        times.append(number(rec["unixReviewTime"], reviews_path, lineno, "unixReviewTime"))
        users.append(pool(ident(rec["reviewerID"], reviews_path, lineno, "reviewerID")))
        items.append(pool(ident(rec["asin"], reviews_path, lineno, "asin")))
    texts = []
    for lineno, line in numbered_lines(meta_path):
        try:
            rec = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
            raise SidrecError(
                f"{meta_path}:{lineno}: not a Python dict literal ({type(e).__name__}); "
                "meta lines must look like {'asin': ..., 'title': ...}"
            ) from None
        if not isinstance(rec, dict) or "asin" not in rec:
            raise SidrecError(f"{meta_path}:{lineno}: expected a dict with an 'asin' field")
        texts.append((str(rec["asin"]), item_text(rec, FIELDS_2014, str(rec["asin"]))))
    category = reviews_path.name.removeprefix("reviews_").split("_5.json")[0].split(".json")[0]
    raw = RawData(interactions_frame(users, items, times),
                  pd.DataFrame(texts, columns=["item_id", "text"]))
    raw.source = {"format": "amazon", "reviews": str(reviews_path), "meta": str(meta_path),
                  "dataset": f"amazon-2014/{category}"}
    return raw


# ---------------------------------------------------------------- 2023


def category_2023(path: Path) -> str:
    """`Musical_Instruments` from `Musical_Instruments.jsonl.gz` or `….train.csv`."""
    name = re.sub(r"\.gz$", "", path.name)
    return re.sub(r"(\.(train|valid|test))?\.(jsonl|json|csv)$", "", name)


def read_amazon_2023(reviews_path: Path, meta_path: Path) -> RawData:
    pool = Pool()
    users: list[str] = []
    items: list[str] = []
    times = array("d")
    for lineno, line in numbered_lines(reviews_path):
        rec = _json(line, reviews_path, lineno, "review")
        for key in ("user_id", "parent_asin", "timestamp"):
            if rec.get(key) in (None, ""):
                raise SidrecError(f"{reviews_path}:{lineno}: review lacks field {key!r}")
        times.append(number(rec["timestamp"], reviews_path, lineno, "timestamp") / 1000.0)
        users.append(pool(ident(rec["user_id"], reviews_path, lineno, "user_id")))
        items.append(pool(ident(rec["parent_asin"], reviews_path, lineno, "parent_asin")))
    interactions, duplicates = keep_earliest(interactions_frame(users, items, times))
    raw = _with_meta_2023(interactions, meta_path)
    raw.source = {"format": "amazon-2023", "reviews": str(reviews_path), "meta": str(meta_path),
                  "dataset": f"amazon-2023/{category_2023(reviews_path)}",
                  "repeated_reviews_dropped": duplicates, **raw.source}
    return raw


def read_amazon_2023_splits(train_path: Path, meta_path: Path) -> RawData:
    """The lab's `<Cat>.train/.valid/.test.csv`: `train_path` is any of the three."""
    paths = [split_path(train_path, s) for s in SPLITS]
    pool = Pool()
    users, items, times = [], [], []
    for path in paths:
        header = read_header(path)
        for name in ("user_id", "parent_asin", "timestamp"):
            column(header, name, path)
        for first, chunk in csv_chunks(path, ["user_id", "parent_asin", "timestamp"]):
            stamp = pd.to_numeric(chunk["timestamp"], errors="coerce").to_numpy(np.float64)
            bad = np.flatnonzero(~np.isfinite(stamp))
            if len(bad):
                raise SidrecError(
                    f"{path}:{first + bad[0]}: field 'timestamp' is not numeric "
                    f"({chunk['timestamp'].iloc[bad[0]]!r}); expected milliseconds")
            users.append(pool.column(chunk["user_id"], path, first, "user_id"))
            items.append(pool.column(chunk["parent_asin"], path, first, "parent_asin"))
            times.append(stamp / 1000.0)
    interactions = interactions_frame(
        *(np.concatenate(p) if p else np.zeros(0) for p in (users, items, times)))
    raw = _with_meta_2023(interactions, meta_path)
    raw.source = {"format": "amazon-2023-splits", "splits": [str(p) for p in paths],
                  "meta": str(meta_path), "variant": train_path.parent.name,
                  "dataset": f"amazon-2023/{category_2023(train_path)}", **raw.source}
    return raw


def split_path(path: Path, split: str) -> Path:
    """The `split` sibling of one of the lab's split files (same suffix)."""
    m = re.fullmatch(r"(.+)\.(train|valid|test)(\.csv(\.gz)?)", path.name)
    if not m:
        raise SidrecError(f"{path}: not one of the lab's split files (<Cat>.train.csv)")
    return path.with_name(f"{m.group(1)}.{split}{m.group(3)}")


def _with_meta_2023(interactions: pd.DataFrame, meta_path: Path) -> RawData:
    wanted = set(interactions["item"].unique())
    texts: dict[str, str] = {}
    for lineno, line in numbered_lines(meta_path):
        m = _PARENT.search(line)
        if m and m.group(1) not in wanted:
            continue  # not interacted: never parsed
        rec = _json(line, meta_path, lineno, "meta")
        item = rec.get("parent_asin")
        if item in (None, ""):
            raise SidrecError(f"{meta_path}:{lineno}: meta lacks field 'parent_asin'")
        item = str(item)
        if item in wanted and item not in texts:
            texts[item] = item_text(_clean_2023(rec), FIELDS_2023, item)
    if wanted and not texts:
        raise SidrecError(
            f"{meta_path}: none of the {len(wanted):,} reviewed items has a meta line; "
            "pass the meta file of the same category (--items meta_<Category>.jsonl.gz)"
        )
    missing = sorted(wanted - texts.keys())
    texts.update((i, item_text({}, FIELDS_2023, i)) for i in missing)
    items = pd.DataFrame(list(texts.items()), columns=["item_id", "text"])
    return RawData(interactions, items, {"items_without_meta": len(missing)})


def _clean_2023(rec: dict) -> dict:
    out = {}
    for name in FIELDS_2023:
        value = rec.get(name)
        if value is None or (isinstance(value, str) and value.strip() in ("", "None")):
            continue
        out[name] = _cut(value) if name in LONG_FIELDS else value
    return out


def _cut(value: object, limit: int = MAX_FIELD_CHARS) -> list[str]:
    """The first `limit` characters of a list of sentences (or of one string)."""
    out, used = [], 0
    for v in value if isinstance(value, list) else [value]:
        text = " ".join(str(v).split())[: limit - used]
        if text:
            out.append(text)
            used += len(text)
    return out
