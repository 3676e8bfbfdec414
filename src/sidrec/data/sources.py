"""From `PrepareConfig.source` (a name, a file or a folder) to the reader that reads it.

`format=auto` tells the format from file names: `u.data` (GroupLens ml-100k),
`ratings.dat` / `ratings.csv` + `movies.csv` (MovieLens), `steam_reviews.json*` (Steam),
`*.inter(.gz)` (RecBole), `reviews_<Cat>_5.json*` (Amazon 2014), `<Cat>.jsonl*` whose first
line has an `asin` or `parent_asin` field, or `<Cat>.train.csv*` (Amazon 2023), anything
else a generic table (a `.jsonl` one too). The companion file (items, meta, games) is
`--items`, else the one beside the interactions; a generic table needs none (no item text).
"""

from __future__ import annotations

import re
from pathlib import Path

from sidrec.data import readers
from sidrec.data.config import PrepareConfig
from sidrec.data.readers.amazon import category_2023
from sidrec.data.readers.common import numbered_lines
from sidrec.errors import SidrecError

BY_NAME = ("ml-100k", "movielens-100k")
LEGACY_COLUMNS = {"user_col": "user_id", "item_col": "item_id", "time_col": "timestamp"}
_SPLIT_FILE = re.compile(r".+\.(train|valid|test)\.csv(\.gz)?")
_JSONL = re.compile(r".+\.jsonl(\.gz)?")
_ASIN = re.compile(r'"(parent_)?asin"\s*:')


def load_raw(cfg: PrepareConfig) -> readers.RawData:
    fmt, src = cfg.format, cfg.source
    if fmt == "ml-100k" or (fmt == "auto" and src in BY_NAME):
        return readers.read_ml100k_from_wheel()
    path = Path(src)
    if not path.exists():
        raise SidrecError(
            f"{path}: no such file or folder; pass `ml-100k` or a path to your data"
        )
    if fmt == "auto":
        fmt = detect_format(path, cfg.items)
    items = Path(cfg.items) if cfg.items else None
    if fmt == "grouplens":
        return readers.read_grouplens(path if path.is_dir() else path.parent)
    if fmt == "movielens":
        ratings = path if path.is_file() else _one(path, "ratings.*")
        movies = items or _one(ratings.parent, f"movies{ratings.suffix}")
        if ratings.suffix == ".dat":
            return readers.read_movielens_dat(ratings, movies)
        return readers.read_movielens_csv(ratings, movies)
    if fmt == "recbole":
        inter = path if path.is_file() else _one(path, "*.inter")
        cols = {k: LEGACY_COLUMNS[k] if getattr(cfg, k) == "auto" else getattr(cfg, k)
                for k in LEGACY_COLUMNS}
        return readers.read_recbole(inter, items or _one(inter.parent, "*.item"),
                                    cols["user_col"], cols["item_col"], cols["time_col"],
                                    cfg.text_cols)
    if fmt in ("amazon", "amazon-2014"):
        reviews = path if path.is_file() else _one(path, "reviews_*_5.json*")
        category = reviews.name.removeprefix("reviews_").split("_5.json")[0]
        return readers.read_amazon(reviews, items or _one(reviews.parent,
                                                          f"meta_{category}.json*"))
    if fmt == "amazon-2023":
        return _amazon_2023(path, items)
    if fmt == "steam":
        reviews = path if path.is_file() else _one(path, "steam_reviews.json*")
        return readers.read_steam(reviews, items or _one(reviews.parent, "steam_games.json*"))
    if fmt == "table":
        return readers.read_tables(path, items, cfg.user_col, cfg.item_col, cfg.time_col,
                                   cfg.text_cols)
    raise SidrecError(f"unknown format {fmt!r}")


def detect_format(path: Path, items: str = "") -> str:
    if path.is_file():
        name = path.name
        if name.removesuffix(".gz").endswith(".inter"):
            return "recbole"
        if name.startswith("reviews_"):
            return "amazon"
        if name.startswith("steam_reviews"):
            return "steam"
        if _SPLIT_FILE.fullmatch(name) or (_JSONL.fullmatch(name) and _amazon_review(path)):
            return "amazon-2023"
        if name == "ratings.dat" or (name == "ratings.csv" and (
                Path(items).name == "movies.csv" if items else
                (path.parent / "movies.csv").is_file())):
            return "movielens"
        return "table"
    if (path / "u.data").exists():
        return "grouplens"
    if (path / "ratings.dat").exists() or (
            (path / "ratings.csv").exists() and (path / "movies.csv").exists()):
        return "movielens"
    if list(path.glob("steam_reviews.json*")):
        return "steam"
    if list(path.glob("*.inter")):
        return "recbole"
    if list(path.glob("reviews_*_5.json*")):
        return "amazon"
    if list(path.glob("*.train.csv*")) or _reviews_2023(path):
        return "amazon-2023"
    raise SidrecError(
        f"{path}: cannot tell the format (no u.data, ratings.dat, ratings.csv + movies.csv, "
        "steam_reviews.json.gz, *.inter, reviews_*_5.json.gz, <Cat>.jsonl.gz or "
        "<Cat>.train.csv); pass --format "
        "grouplens|movielens|steam|recbole|amazon|amazon-2023|table"
    )


def _amazon_2023(path: Path, items: Path | None) -> readers.RawData:
    if path.is_dir():
        splits = sorted(path.glob("*.train.csv*"))
        if splits:
            path = _one(path, "*.train.csv*")
        else:
            found = _reviews_2023(path)
            if len(found) != 1:
                names = ", ".join(p.name for p in found) or "none"
                raise SidrecError(f"{path}: expected one <Category>.jsonl(.gz) review file, "
                                  f"found {names}; pass one path")
            path = found[0]
    category = category_2023(path)
    meta = items or _one(path.parent, f"meta_{category}.jsonl*",
                         "pass the meta file with --items meta_<Category>.jsonl.gz")
    if _SPLIT_FILE.fullmatch(path.name):
        return readers.read_amazon_2023_splits(path, meta)
    return readers.read_amazon_2023(path, meta)


def _amazon_review(path: Path) -> bool:
    """Whether a JSON-lines file holds Amazon 2023 reviews (its first line has an `asin` or
    `parent_asin` field), not a generic interactions table."""
    if path.name.startswith("meta_"):
        return False
    for _, line in numbered_lines(path):
        return _ASIN.search(line) is not None
    return True  # empty: the Amazon reader says so


def _reviews_2023(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.jsonl*")
                  if _JSONL.fullmatch(p.name) and not p.name.startswith("meta_"))


def _one(folder: Path, pattern: str, hint: str = "check the folder") -> Path:
    found = sorted(folder.glob(pattern))
    if not found:
        raise SidrecError(f"{folder}: no file matching {pattern!r}; {hint}")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise SidrecError(f"{folder}: several files match {pattern!r} ({names}); pass one path")
    return found[0]
