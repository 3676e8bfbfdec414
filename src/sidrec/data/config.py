"""`PrepareConfig`: the settings of the data stage (input, columns, protocol, version name)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sidrec.errors import SidrecError

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


def check_prepare_config(cfg: PrepareConfig) -> None:
    """Out-of-range settings are user errors, found before any file is read."""
    if cfg.max_history < 1:
        raise SidrecError(f"data prepare: max_history must be >= 1, got {cfg.max_history} "
                          "(--max-history N keeps the last N items; the papers use 20)")
    if cfg.kcore < 0:
        raise SidrecError(f"data prepare: kcore must be >= 0, got {cfg.kcore} "
                          "(0: no filtering; 5: the papers' 5-core)")
    if cfg.seed < 0:
        raise SidrecError(f"data prepare: seed must be >= 0, got {cfg.seed} (it seeds the "
                          "holdout draw; e.g. --seed 0)")
    # NaN fails too; checked in natural mode as well (where it is unused): a wrong value
    # there is a mistake, not a choice
    if not 0.0 < cfg.cold_fraction < 1.0:
        raise SidrecError(f"data prepare: cold_fraction must be in (0, 1), got "
                          f"{cfg.cold_fraction}; e.g. 0.05")
