"""`PrepareConfig`: the settings of the data stage (input, columns, protocol, version name)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Format = Literal["auto", "ml-100k", "grouplens", "movielens", "recbole", "amazon",
                 "amazon-2014", "amazon-2023", "steam", "table"]


@dataclass(frozen=True)
class PrepareConfig:
    source: str = "ml-100k"  # "ml-100k" (fetched), or a folder / file path
    format: Format = "auto"
    items: str = ""  # items / meta / games file when not beside the interactions
    user_col: str = "auto"  # column names (tables: detected; recbole: user_id, item_id,
    item_col: str = "auto"  # timestamp); time_col="" = no time column, file order
    time_col: str = "auto"
    text_cols: tuple[str, ...] = ()  # item text fields; empty = the known ones present
    kcore: int = 0  # 0 = no filtering; 5 = the papers' 5-core
    max_history: int = 20  # histories keep the last N items
    cold_mode: Literal["natural", "holdout"] = "natural"
    cold_fraction: float = 0.05  # holdout mode only
    seed: int = 0  # holdout item draw
    dataset: str = ""  # version name to record (default: told by the reader, e.g. movielens-1m)
