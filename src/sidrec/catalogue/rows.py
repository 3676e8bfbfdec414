"""The catalogue's rows and their append: the items added after training (`NewItems`) and
a `Catalogue` grown by them (`grow`), copying only the new rows (`append_rows`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from sidrec.errors import SidrecError
from sidrec.models.catalogue import Catalogue


@dataclass(frozen=True)
class NewItems:
    """Items added after training: ids [m], texts [m], vectors [m, d], sids [m, L+1] or None."""

    ids: tuple[str, ...]
    texts: tuple[str, ...]
    vectors: np.ndarray
    sids: np.ndarray | None

    def __len__(self) -> int:
        return len(self.ids)

    def __add__(self, other: NewItems) -> NewItems:
        if not len(self):
            return other
        if not len(other):
            return self
        sids = None if self.sids is None or other.sids is None else np.concatenate(
            [self.sids, other.sids])
        return NewItems(self.ids + other.ids, self.texts + other.texts,
                        np.concatenate([self.vectors, other.vectors]), sids)

    def tail(self, start: int) -> NewItems:
        """The items from position `start` on."""
        sids = None if self.sids is None else self.sids[start:]
        return NewItems(self.ids[start:], self.texts[start:], self.vectors[start:], sids)


def no_items() -> NewItems:
    """No items: what a catalogue has added before its first add."""
    return NewItems((), (), np.zeros((0, 0), np.float32), None)


def grow(catalogue: Catalogue, new: NewItems) -> Catalogue:
    """`catalogue` with `new` appended: cold, popularity 0, their text vectors and SIDs.
    `catalogue` itself is unchanged (in-flight requests may still read it), and of its
    tensors only the new rows are copied (`append_rows`; the item-text list is copied).
    """
    m, reserve = len(new), catalogue.reserve
    grown: dict[str, Any] = {
        "item_text": [*catalogue.item_text, *new.texts],
        "cold": append_rows(catalogue.cold, torch.ones(m, dtype=torch.bool), reserve, "cold"),
        "popularity": append_rows(catalogue.popularity, torch.zeros(m), reserve, "popularity"),
    }
    if catalogue.text_emb is not None:
        vectors = torch.as_tensor(new.vectors)
        grown["text_emb"] = append_rows(catalogue.text_emb, vectors, reserve, "text_emb")
    if catalogue.sids is not None:
        if new.sids is None:
            raise SidrecError("the added items have no SIDs but the catalogue has; re-add them")
        sids = torch.as_tensor(new.sids, dtype=torch.int64)
        grown["sids"] = append_rows(catalogue.sids, sids, reserve, "sids")
    return replace(catalogue, **grown)


@dataclass
class Reserve:
    """A table's rows with room to spare: the first `used` rows are the newest table grown
    into it. An older catalogue's table covers fewer of the same rows, which appends never
    touch (they write past `used`)."""

    rows: torch.Tensor
    used: int


def append_rows(table: torch.Tensor, new: torch.Tensor, reserve: dict[str, Reserve],
                name: str) -> torch.Tensor:
    """`table` with the rows `new` appended, as a new tensor; `table` is unchanged.

    Appends write into `reserve[name]`'s spare rows when `table` is its newest table (one
    copy of m rows); otherwise (the first add, a full reserve, or a table that is not the
    newest, e.g. after a failed add was rolled back) the rows move to a new reserve with
    1/8 to spare: amortised O(m) per add instead of O(n_items).
    """
    n, m = len(table), len(new)
    spare = reserve.get(name)
    if (spare is None or spare.used != n or len(spare.rows) < n + m
            or spare.rows.data_ptr() != table.data_ptr()):
        rows = table.new_empty((n + m + max(m, (n + m) // 8), *table.shape[1:]))
        rows[:n] = table
        spare = reserve[name] = Reserve(rows, n)
    spare.rows[n : n + m] = new.to(table)
    spare.used = n + m
    # A tensor of its own over the first n + m rows, not a view of `rows`: views share one
    # version counter, so the next append would look like an in-place change of this
    # table to whatever caches by version (ItemVectors) and throw its cache away.
    shape = (n + m, *table.shape[1:])
    return table.new_empty(0).set_(spare.rows.untyped_storage(), 0, shape, spare.rows.stride())
