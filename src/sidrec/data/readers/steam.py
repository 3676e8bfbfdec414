"""Steam, as in the LIGER paper (its fourth dataset; Kang & McAuley's crawl, the one SASRec
used): `steam_reviews.json.gz` + `steam_games.json.gz`, one Python literal per line
(single-quoted dicts: parsed with `ast.literal_eval`, never `eval`, never `json`).

- Reviews: user = `username`, item = `product_id`, time = `date` (`YYYY-MM-DD`, so many
  ties; ties keep the file order). Every review is kept, as SASRec's preprocessing does.
- Games: id = `id` (a game without one cannot be interacted with and is skipped); text
  from `title` (else `app_name`), `genres`, `tags`, `developer`.

A reviewed game missing from the games file keeps `Item: <id>` as its text and is counted
(`items_without_meta`); a games file with none of the reviewed games is an error.
"""

from __future__ import annotations

import ast
from array import array
from pathlib import Path
from typing import Any

import pandas as pd

from sidrec.data.readers.common import (
    Pool,
    RawData,
    ident,
    interactions_frame,
    iso_date,
    numbered_lines,
)
from sidrec.data.text import item_text
from sidrec.errors import SidrecError

TEXT_FIELDS = ["title", "genres", "tags", "developer"]


def read_steam(reviews_path: Path, games_path: Path) -> RawData:
    pool = Pool()
    users: list[str] = []
    items: list[str] = []
    times = array("d")
    dates: dict[str, float] = {}  # a few thousand distinct days: parse each once
    for lineno, line in numbered_lines(reviews_path):
        rec = _literal(line, reviews_path, lineno, "{'username': ..., 'product_id': ...}")
        for key in ("username", "product_id", "date"):
            if rec.get(key) in (None, ""):
                raise SidrecError(f"{reviews_path}:{lineno}: review lacks field {key!r}")
        day = str(rec["date"])
        if day not in dates:
            dates[day] = iso_date(day, reviews_path, lineno, "date")
        users.append(pool(ident(rec["username"], reviews_path, lineno, "username")))
        items.append(pool(ident(rec["product_id"], reviews_path, lineno, "product_id")))
        times.append(dates[day])
    interactions = interactions_frame(users, items, times)
    wanted = set(interactions["item"].unique())
    texts: dict[str, str] = {}
    for lineno, line in numbered_lines(games_path):
        rec = _literal(line, games_path, lineno, "{'id': ..., 'title': ...}")
        if rec.get("id") in (None, ""):
            continue
        item = str(rec["id"])
        if item in wanted and item not in texts:
            fields = {**rec, "title": rec.get("title") or rec.get("app_name")}
            texts[item] = item_text(fields, TEXT_FIELDS, item)
    if wanted and not texts:
        raise SidrecError(
            f"{games_path}: none of the {len(wanted):,} reviewed games is listed (by 'id'); "
            "pass steam_games.json.gz (--items PATH)"
        )
    missing = sorted(wanted - texts.keys())
    texts.update((i, item_text({}, TEXT_FIELDS, i)) for i in missing)
    raw = RawData(interactions, pd.DataFrame(list(texts.items()), columns=["item_id", "text"]))
    raw.source = {"format": "steam", "reviews": str(reviews_path), "meta": str(games_path),
                  "dataset": "steam", "items_without_meta": len(missing)}
    return raw


def _literal(line: str, path: Path, lineno: int, shape: str) -> dict[str, Any]:
    try:
        rec = ast.literal_eval(line.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        raise SidrecError(
            f"{path}:{lineno}: not a Python dict literal ({type(e).__name__}); "
            f"lines must look like {shape}"
        ) from None
    if not isinstance(rec, dict):
        raise SidrecError(f"{path}:{lineno}: expected a dict, got {type(rec).__name__}")
    return rec
