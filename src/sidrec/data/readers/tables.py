"""Generic tables: an interactions table (CSV, TSV, Parquet or JSON lines) + an items table
(item id + any text columns, same formats), or no items table: the items then have no text
(`RawData.source["item_text"]` is False) and only the models that need none can use them.

Column names are detected when not given (`auto`): the one column whose name is, up to
case, in the list below for its role. Two columns that could both be the role is an error
(`user_col=NAME` and friends settle it), and so is a column name given twice. Times are
numbers or ISO dates (told by the first row). CSV and JSON-lines interactions are read in
chunks of a million rows, the three columns only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from sidrec.data.readers import jsonl
from sidrec.data.readers.common import (
    Pool,
    RawData,
    TimeColumn,
    column,
    csv_chunks,
    interactions_frame,
    read_header,
    unique_names,
)
from sidrec.data.text import item_text
from sidrec.errors import SidrecError

AUTO = "auto"
CANDIDATES = {
    "user": ("user", "user_id", "userId", "reviewerID"),
    "item": ("item", "item_id", "itemId", "asin", "parent_asin", "movieId"),
    "time": ("timestamp", "time", "ts", "unixReviewTime", "date"),
}
SETTING = {"user": "user_col", "item": "item_col", "time": "time_col"}


def detect(names: list[str], role: str, where: Any) -> str:
    """The one column of `names` that can be the `role` column (user, item, time)."""
    wanted = {c.lower() for c in CANDIDATES[role]}
    found = [n for n in names if str(n).lower() in wanted]
    if len(found) > 1:
        raise SidrecError(
            f"{where}: columns {found[0]!r} and {found[1]!r} could both be the {role} "
            f"column; pick one with {SETTING[role]}=NAME"
        )
    if not found:
        raise SidrecError(
            f"{where}: no {role} column found (looked for {', '.join(CANDIDATES[role])}); "
            f"the file has: {', '.join(map(str, names))}; pass {SETTING[role]}=NAME"
        )
    return str(found[0])


def read_tables(
    inter_path: Path,
    items_path: Path | None,
    user_col: str = AUTO,
    item_col: str = AUTO,
    time_col: str = AUTO,
    text_cols: tuple[str, ...] = (),
    item_id_col: str | None = None,
) -> RawData:
    names = table_header(inter_path)
    picked: dict[str, str] = {}
    detected = []
    for role, given in (("user", user_col), ("item", item_col), ("time", time_col)):
        if given == AUTO:
            picked[role] = detect(names, role, inter_path)
            detected.append(role)
        else:
            if given:  # time_col="" means no time column: the file order
                column(names, given, inter_path)
            picked[role] = given
    interactions = _read_interactions(inter_path, picked)
    source = {"format": "table", "interactions": str(inter_path),
              "dataset": f"table/{inter_path.name.split('.')[0]}",
              "columns": picked, "detected": detected}
    if items_path is None:  # ids only: the text stages refuse such a run (`Dataset.has_text`)
        ids = pd.unique(interactions["item"])
        texts = pd.DataFrame({"item_id": ids, "text": [item_text({}, [], i) for i in ids]})
        return RawData(interactions, texts, {**source, "item_text": False})

    table_header(items_path)  # a repeated column name is refused before the table is read
    items = read_table(items_path)
    inames = list(items.columns)
    id_col = item_id_col or (picked["item"] if picked["item"] in inames else
                             detect(inames, "item", items_path))
    column(inames, id_col, items_path)
    fields = list(text_cols) or [c for c in inames if c != id_col]
    for name in fields:
        column(inames, name, items_path)
    records = items[[id_col, *fields]].to_dict("records")
    texts = [
        (str(r[id_col]), item_text({f: r[f] for f in fields}, fields, str(r[id_col])))
        for r in records
    ]
    return RawData(interactions, pd.DataFrame(texts, columns=["item_id", "text"]),
                   {**source, "items": str(items_path), "columns": {**picked, "item_id": id_col}})


def table_header(path: Path) -> list[str]:
    if not path.is_file():
        raise SidrecError(f"{path}: file not found; check the path")
    if jsonl.is_jsonl(path):
        return jsonl.header(path)
    if path.suffix == ".parquet":
        try:
            names = list(pq.read_schema(path).names)
        except (OSError, ValueError) as e:
            raise SidrecError(f"{path}: cannot read table ({e})") from None
        unique_names(names, path)
        return names
    return read_header(path, _sep(path))


def _sep(path: Path) -> str:
    return "\t" if path.name.removesuffix(".gz").endswith(".tsv") else ","


def _read_interactions(path: Path, cols: dict[str, str]) -> pd.DataFrame:
    pool = Pool()
    parquet = path.suffix == ".parquet"  # no lines: rows are numbered from 1
    times = TimeColumn(path, cols["time"], rows=parquet)
    wanted = list(dict.fromkeys(c for c in cols.values() if c))
    if parquet:
        try:
            chunks: Any = [(1, pq.read_table(path, columns=wanted).to_pandas())]
        except (OSError, ValueError) as e:
            raise SidrecError(f"{path}: cannot read Parquet table ({e}); the file may be "
                              "damaged, write it again") from None
    elif jsonl.is_jsonl(path):
        chunks = jsonl.chunks(path, wanted)
    else:
        chunks = csv_chunks(path, wanted, _sep(path))
    users, items, stamps = [], [], []
    for first, chunk in chunks:
        users.append(pool.column(chunk[cols["user"]], path, first, cols["user"], parquet))
        items.append(pool.column(chunk[cols["item"]], path, first, cols["item"], parquet))
        stamps.append(times(chunk[cols["time"]], first) if cols["time"]
                      else np.zeros(len(chunk)))
    if not users:
        return interactions_frame([], [], [])
    return interactions_frame(*(np.concatenate(p) for p in (users, items, stamps)))


def read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SidrecError(f"{path}: file not found; check the path")
    if jsonl.is_jsonl(path):
        return jsonl.records(path)
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep=_sep(path), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SidrecError(f"{path}: cannot read table ({msg})") from None
