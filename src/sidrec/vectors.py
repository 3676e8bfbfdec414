"""Item vectors computed elsewhere (Sentence-T5, CLIP, an LLM's embeddings): `sidrec embed RUN
--vectors FILE` takes them instead of running a text encoder.

FILE is one of:
- `.npy`: a 2-d array, one row per item, with an ids file (`--ids IDS`, one item id per
  line, in the rows' order);
- `.parquet`: an item id column and either one list column (the vector) or numeric columns;
- `.csv` / `.tsv`: an item id column, then one numeric column per dimension.

Every catalogue item must have exactly one row, and the file no other item: else a one-line
error naming the first missing, repeated or extra id. Values must be finite, every vector
of one dimension. Nothing is unpickled (`allow_pickle=False`).

`given_vectors`: the vectors items bring when added after training (`LiveCatalogue.add`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sidrec.data.readers.common import read_text
from sidrec.data.readers.tables import detect, read_table, table_header
from sidrec.errors import ItemError, SidrecError


def read_vectors(path: Path, item_ids: list[str], ids_path: Path | None = None) -> np.ndarray:
    """[len(item_ids), d] float32, row i the vector of `item_ids[i]` (catalogue order)."""
    if not path.is_file():
        raise SidrecError(f"{path}: file not found; check the --vectors path")
    if path.suffix == ".npy":
        ids, matrix = _from_npy(path, ids_path)
    elif ids_path is not None:
        raise SidrecError(f"{path}: --ids is for a .npy file; this table holds its own ids")
    else:
        ids, matrix = _from_table(path)
    return _in_catalogue_order(path, ids, matrix, item_ids)


def _from_npy(path: Path, ids_path: Path | None) -> tuple[list[str], np.ndarray]:
    if ids_path is None:
        raise SidrecError(f"{path}: a .npy file holds no item ids; pass --ids IDS (one item "
                          "id per line, in the rows' order)")
    try:
        matrix = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise SidrecError(f"{path}: not a readable .npy array ({e}); save it with "
                          "numpy.save (no object arrays)") from None
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
        raise SidrecError(f"{path}: expected a numeric 2-d array [items, d], got {matrix.dtype} "
                          f"{list(matrix.shape)}")
    if not ids_path.is_file():
        raise SidrecError(f"{ids_path}: file not found; check the --ids path")
    ids = [line.strip() for line in read_text(ids_path).splitlines() if line.strip()]
    if len(ids) != len(matrix):
        raise SidrecError(f"{ids_path}: {len(ids)} ids for the {len(matrix)} rows of {path}; "
                          "give one id per row, in the rows' order")
    return ids, matrix


def _from_table(path: Path) -> tuple[list[str], np.ndarray]:
    names = table_header(path)  # a column name given twice is refused here
    id_col = "id" if "id" in names else detect(names, "item", path)
    table = read_table(path)
    rest = [c for c in names if c != id_col]
    if not rest:
        raise SidrecError(f"{path}: no vector columns beside {id_col!r}; give a list column "
                          "or one numeric column per dimension")
    first = table[rest[0]].iloc[0] if len(table) else None
    if len(rest) == 1 and isinstance(first, list | np.ndarray):  # one list column
        lengths = table[rest[0]].map(len)
        if lengths.nunique() > 1:
            row = int(np.flatnonzero(lengths != lengths.iloc[0])[0])
            raise SidrecError(f"{path}: row {row + 1} ({table[id_col].iloc[row]!r}) has "
                              f"{lengths.iloc[row]} values, row 1 has {lengths.iloc[0]}; every "
                              "vector must have one dimension")
        matrix = np.array(table[rest[0]].tolist(), dtype=np.float64).reshape(len(table), -1)
    else:
        numbers = table[rest].apply(pd.to_numeric, errors="coerce")
        bad = numbers.isna().to_numpy()
        if bad.any():
            row, col = (int(x[0]) for x in np.nonzero(bad))
            raise SidrecError(f"{path}: row {row + 1}, column {rest[col]!r}: "
                              f"{table[rest[col]].iloc[row]!r} is not a number")
        matrix = numbers.to_numpy(dtype=np.float64)
    return [str(i) for i in table[id_col]], matrix


def _in_catalogue_order(path: Path, ids: list[str], matrix: np.ndarray,
                        item_ids: list[str]) -> np.ndarray:
    row_of: dict[str, int] = {}
    for row, item in enumerate(ids):
        if item in row_of:
            raise SidrecError(f"{path}: item {item!r} has two vectors (rows {row_of[item] + 1} "
                              f"and {row + 1}); give each item one")
        row_of[item] = row
    missing = next((i for i in item_ids if i not in row_of), None)
    if missing is not None:
        n = sum(i not in row_of for i in item_ids)
        raise SidrecError(f"{path}: no vector for item {missing!r} ({n} catalogue item(s) "
                          "missing); give every item of the prepared dataset a vector")
    known = set(item_ids)
    extra = next((i for i in ids if i not in known), None)
    if extra is not None:
        raise SidrecError(f"{path}: item {extra!r} is not in the prepared catalogue; give "
                          "vectors for its items only (drop that row)")
    if matrix.shape[1] == 0:
        raise SidrecError(f"{path}: the vectors have no values")
    out = np.asarray(matrix[[row_of[i] for i in item_ids]], dtype=np.float32)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise SidrecError(f"{path}: the vector of item {item_ids[row]!r} holds NaN or inf (or "
                          "a value too large for float32); every value must be finite")
    return out


def given_vectors(items: Sequence[Any], dim: int | None) -> list[np.ndarray | None]:
    """Each item's own `vector` ([dim] float32, checked), or None where it has none."""
    out: list[np.ndarray | None] = []
    for n, item in enumerate(items):
        raw = item.get("vector") if isinstance(item, dict) else None
        if raw is None:
            out.append(None)
            continue
        where = f" ({item.get('id')!r})"
        try:
            vector = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError):
            raise ItemError(n, f"{where}: vector is not a list of numbers", field="vector") \
                from None
        if vector.ndim != 1 or (dim is not None and len(vector) != dim):
            raise ItemError(n, f"{where}: vector has shape {list(vector.shape)}; this run's "
                            f"item vectors have {dim} values", field="vector")
        if not np.isfinite(vector).all():
            raise ItemError(n, f"{where}: vector holds NaN or inf; every value must be finite",
                            field="vector")
        out.append(vector)
    return out
