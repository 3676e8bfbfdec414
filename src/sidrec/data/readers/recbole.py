"""RecBole atomic files (`.inter` / `.item`): `name:type` headers, tab-separated; values may
use CSV-style quoting with embedded tabs/newlines, as in real exports.

The version name comes from the file stem: RecBole's names for the datasets of the papers
(`ml-100k`, `Amazon_Beauty`, ...) map to ours (`movielens-100k`, `amazon-2014/Beauty`);
any other is `recbole/<stem>`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pandas as pd

from sidrec.data.readers.common import RawData, column, ident, number, read_text
from sidrec.data.text import default_text_fields, item_text
from sidrec.errors import SidrecError

csv.field_size_limit(1 << 30)

KNOWN = {
    "ml-100k": "movielens-100k", "ml-1m": "movielens-1m", "ml-10m": "movielens-10m",
    "ml-20m": "movielens-20m",
    "Amazon_Beauty": "amazon-2014/Beauty",
    "Amazon_Sports_and_Outdoors": "amazon-2014/Sports_and_Outdoors",
    "Amazon_Toys_and_Games": "amazon-2014/Toys_and_Games",
}  # fmt: skip

Atomic = tuple[list[str], list[tuple[int, list[str]]]]


def read_recbole(
    inter_path: Path,
    item_path: Path,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    text_cols: tuple[str, ...] = (),
) -> RawData:
    inter = read_atomic_text(read_text(inter_path), str(inter_path))
    items = read_atomic_text(read_text(item_path), str(item_path))
    raw = from_atomic(inter, items, str(inter_path), user_col, item_col, time_col,
                      str(item_path), list(text_cols) or None)
    stem = inter_path.name.split(".")[0]
    raw.source = {"format": "recbole", "inter": str(inter_path), "item": str(item_path),
                  "dataset": KNOWN.get(stem, f"recbole/{stem}")}
    return raw


def read_atomic_text(text: str, where: str) -> Atomic:
    """(column names, [(line number, values)]) of a RecBole atomic file."""
    reader = csv.reader(io.StringIO(text), delimiter="\t", quotechar='"')
    try:
        header = next(reader)
    except StopIteration:
        raise SidrecError(f"{where}: file is empty; expected a `name:type` header") from None
    names = [h.split(":", 1)[0] for h in header]
    rows = []
    line_start = reader.line_num + 1
    try:
        for values in reader:
            if values and any(v.strip() for v in values):
                if len(values) != len(names):
                    raise SidrecError(
                        f"{where}:{line_start}: expected {len(names)} tab-separated columns "
                        f"({', '.join(names)}), found {len(values)}"
                    )
                rows.append((line_start, values))
            line_start = reader.line_num + 1
    except csv.Error as e:
        raise SidrecError(f"{where}:{reader.line_num}: malformed line ({e})") from None
    return names, rows


def from_atomic(
    inter: Atomic,
    items: Atomic,
    inter_where: str,
    user_col: str,
    item_col: str,
    time_col: str,
    item_where: str,
    text_cols: list[str] | None,
) -> RawData:
    names, rows = inter
    ui, ii = column(names, user_col, inter_where), column(names, item_col, inter_where)
    ti = column(names, time_col, inter_where) if time_col else None
    records = [
        (ident(v[ui], inter_where, ln, user_col), ident(v[ii], inter_where, ln, item_col),
         number(v[ti], inter_where, ln, time_col) if ti is not None else 0.0)
        for ln, v in rows
    ]
    interactions = pd.DataFrame(records, columns=["user", "item", "timestamp"])
    inames, irows = items
    id_idx = column(inames, item_col, item_where)
    fields = text_cols if text_cols is not None else default_text_fields(inames)
    for f in fields:
        column(inames, f, item_where)
    idx = {f: inames.index(f) for f in fields}
    item_records = []
    for _, v in irows:
        values: dict[str, Any] = {f: v[i] for f, i in idx.items()}
        if "class" in values:  # RecBole ml-100k: space-separated genre tokens
            values["class"] = values["class"].split()
        item_records.append((v[id_idx], item_text(values, fields, v[id_idx])))
    return RawData(interactions, pd.DataFrame(item_records, columns=["item_id", "text"]))
