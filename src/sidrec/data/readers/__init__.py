"""Readers for each supported input format, all returning the same `RawData`.

- `movielens-100k`: `read_ml100k_from_wheel` (`ml-100k` by name), `read_grouplens`
  (`u.data` + `u.item`).
- `movielens-1m` (and 10m): `read_movielens_dat` (`ratings.dat` + `movies.dat`, `::`).
- `movielens-20m` / `-25m` / `-32m`: `read_movielens_csv` (`ratings.csv` + `movies.csv`).
- `amazon-2014/<Cat>`: `read_amazon` (`reviews_<Cat>_5.json.gz` + `meta_<Cat>.json.gz`).
- `amazon-2023/<Cat>`: `read_amazon_2023` (`<Cat>.jsonl.gz` + `meta_<Cat>.jsonl.gz`),
  `read_amazon_2023_splits` (the lab's `<Cat>.train/valid/test.csv`).
- `steam`: `read_steam` (`steam_reviews.json.gz` + `steam_games.json.gz`).
- `recbole/<stem>`: `read_recbole` (RecBole atomic `.inter` + `.item`).
- `table/<stem>`: `read_tables` (a CSV/TSV/Parquet interactions table + an items table).

Every reader streams its input (line by line, or a million rows at a time) and every
malformed input is a `SidrecError` naming the file, line and field. `RawData.source` records
the format, the files and the version name (`dataset`).
"""

from sidrec.data.readers.amazon import read_amazon, read_amazon_2023, read_amazon_2023_splits
from sidrec.data.readers.common import RawData, cache_dir
from sidrec.data.readers.movielens import (
    read_grouplens,
    read_ml100k_from_wheel,
    read_movielens_csv,
    read_movielens_dat,
    recbole_wheel,
)
from sidrec.data.readers.recbole import read_recbole
from sidrec.data.readers.steam import read_steam
from sidrec.data.readers.tables import read_tables

__all__ = [
    "RawData", "cache_dir", "read_amazon", "read_amazon_2023", "read_amazon_2023_splits",
    "read_grouplens", "read_ml100k_from_wheel", "read_movielens_csv", "read_movielens_dat",
    "read_recbole", "read_steam", "read_tables", "recbole_wheel",
]
