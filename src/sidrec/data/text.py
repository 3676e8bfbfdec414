"""Item text from catalogue fields: `Title: …; Brand: …; Categories: …; Price: …`.

Missing or empty fields are dropped, never the item; an item with no field left gets
`Item: <original id>` so that every item has text to embed.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

# Field name in the source -> label in the template, in template order.
FIELD_LABELS: dict[str, str] = {
    "title": "Title",
    "movie_title": "Title",
    "release_year": "Year",
    "year": "Year",
    "brand": "Brand",
    "categories": "Categories",
    "category": "Categories",
    "class": "Genres",
    "genres": "Genres",
    "genre": "Genres",
    "price": "Price",
    "description": "Description",
}


def default_text_fields(columns: list[str]) -> list[str]:
    """The columns of `columns` that the template knows, in template order."""
    known = [c for c in FIELD_LABELS if c in columns]
    labels_seen: set[str] = set()
    out = []
    for c in known:
        if FIELD_LABELS[c] not in labels_seen:
            labels_seen.add(FIELD_LABELS[c])
            out.append(c)
    return out


def item_text(fields: Mapping[str, Any], order: list[str], item_id: str) -> str:
    parts = []
    for name in order:
        value = _render(fields.get(name))
        if value:
            parts.append(f"{FIELD_LABELS.get(name, name.replace('_', ' ').title())}: {value}")
    return "; ".join(parts) if parts else f"Item: {item_id}"


def parse_list_literal(raw: str) -> list[str] | None:
    """`"'Beauty', 'Makeup'"` (a Python list body, as in RecBole exports) -> list, else None."""
    text = raw.strip()
    if not text or text[0] not in "'\"[":
        return None
    try:
        value = ast.literal_eval(text if text.startswith("[") else f"[{text}]")
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return [str(v) for v in _flatten(value)] if isinstance(value, list | tuple) else None


def _render(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, np.ndarray):  # a list column read from parquet
        return _render(value.tolist())
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.2f}".rstrip("0").rstrip(".") if not value.is_integer() else str(int(value))
    if isinstance(value, list | tuple):
        items = [" ".join(str(v).split()) for v in _flatten(value)]
        return ", ".join(dict.fromkeys(v for v in items if v))
    text = " ".join(str(value).split())
    as_list = parse_list_literal(text)
    if as_list is not None:
        return _render(as_list)
    return text


def _flatten(value: Any) -> list[Any]:
    out: list[Any] = []
    for v in value:
        if isinstance(v, list | tuple):
            out.extend(_flatten(v))
        else:
            out.append(v)
    return out
