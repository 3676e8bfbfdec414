"""JSON lines: one JSON object per line, for generic tables (`.jsonl`, `.ndjson`, `.json`).

A table's columns are the keys of its first object; every later line must hold the columns
read from it. A key given twice on one line is an error (JSON keeps the last one silently,
so one of the two values would be dropped without a word).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from sidrec.data.readers.common import CHUNK_ROWS, numbered_lines
from sidrec.errors import SidrecError

SUFFIXES = (".jsonl", ".ndjson", ".json")
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def is_jsonl(path: Path) -> bool:
    return path.name.removesuffix(".gz").endswith(SUFFIXES)


def json_object(line: str, path: Path, lineno: int, what: str, unique: bool = False) -> dict:
    """The JSON object on line `lineno` of `path`; anything else is a SidrecError.
    `unique`: a key given twice is an error too."""
    try:
        rec = json.loads(line, object_pairs_hook=_unique_keys if unique else None)
    except json.JSONDecodeError as e:
        raise SidrecError(
            f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); "
            f"each line must be one {what} object"
        ) from None
    except _DuplicateKey as e:
        raise SidrecError(
            f"{path}:{lineno}: field {e.args[0]!r} is given twice; keep one, so it is clear "
            "which value to read"
        ) from None
    if not isinstance(rec, dict):
        raise SidrecError(
            f"{path}:{lineno}: expected a JSON object {{...}}, got {_JSON_TYPES[type(rec)]}; "
            f"each line must be one {what} object: fix or delete that line"
        )
    return rec


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def header(path: Path) -> list[str]:
    """The keys of the first object of a JSON-lines table."""
    for lineno, line in numbered_lines(path):
        return list(json_object(line, path, lineno, "row", unique=True))
    raise SidrecError(f"{path}: file is empty; expected one JSON object per line")


def chunks(path: Path, columns: list[str],
           required: bool = True) -> Iterator[tuple[int, pd.DataFrame]]:
    """(first line number, chunk of `columns`) of a JSON-lines table, streamed. A chunk
    never spans a blank line, so its rows are on consecutive lines (errors name the line).
    A line without one of `columns` is an error when `required`, else that value is None."""
    rows: list[list[Any]] = []
    first = following = 0
    for lineno, line in numbered_lines(path):
        if rows and (lineno != following or len(rows) >= CHUNK_ROWS):
            yield first, pd.DataFrame(rows, columns=columns, dtype=object)
            rows = []
        if not rows:
            first = lineno
        rec = json_object(line, path, lineno, "row", unique=True)
        rows.append([_field(rec, name, path, lineno) if required else rec.get(name)
                     for name in columns])
        following = lineno + 1
    if rows:
        yield first, pd.DataFrame(rows, columns=columns, dtype=object)


def records(path: Path) -> pd.DataFrame:
    """A whole JSON-lines table (the items table): the first object's keys as columns; a
    line without some of them leaves those empty (an item may lack a description)."""
    names = header(path)
    parts = [chunk for _, chunk in chunks(path, names, required=False)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=names)


def _field(rec: dict, name: str, path: Path, lineno: int) -> Any:
    if name not in rec:
        raise SidrecError(f"{path}:{lineno}: no field {name!r}, which the first line has; "
                          "give every line the same fields")
    return rec[name]
