"""What a reader needs of the live catalogue to describe items: a `CatalogueView`, built
once and replaced whole after an add, so that a thread reads it without a lock and never
sees an add half done."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sidrec.catalogue.rows import NewItems
from sidrec.models.catalogue import Catalogue


@dataclass(frozen=True)
class CatalogueView:
    """Item ids, display titles, cold flags and popularity by row; rows from `n_trained` on
    were added after training."""

    item_ids: tuple[str, ...]
    titles: tuple[str, ...]
    cold: tuple[bool, ...]
    popularity: tuple[float, ...]
    n_trained: int

    @classmethod
    def of(cls, item_ids: Sequence[str], rows: Catalogue) -> CatalogueView:
        """The view of a trained catalogue: `item_ids` name `rows`' items in order."""
        return cls(tuple(item_ids), tuple(title_of(t) for t in rows.item_text),
                   tuple(rows.cold.tolist()), tuple(rows.popularity.tolist()), len(item_ids))

    def extended(self, new: NewItems) -> CatalogueView:
        """This view with added items (cold, popularity 0) appended."""
        m = len(new)
        return CatalogueView(self.item_ids + new.ids,
                             self.titles + tuple(title_of(t) for t in new.texts),
                             self.cold + (True,) * m, self.popularity + (0.0,) * m,
                             self.n_trained)

    def describe(self, row: int) -> dict[str, Any]:
        return {"id": self.item_ids[row], "title": self.titles[row],
                "cold": self.cold[row], "added": row >= self.n_trained}

    def search(self, query: str, limit: int) -> list[int]:
        """Rows whose title contains `query` (any case), the most popular first, then the
        newest; an empty query lists the most popular items."""
        q = query.strip().lower()
        hits = [i for i, t in enumerate(self.titles) if q in t.lower()]
        hits.sort(key=lambda i: (-self.popularity[i], -i))
        return hits[:limit]


def title_of(text: str) -> str:
    """An item's display title: the `Title: …` field of its text (`sidrec.data.text`),
    else its first field."""
    for part in text.split("; "):
        label, sep, value = part.partition(": ")
        if sep and label.strip().lower() == "title":
            return value.strip()
    return text.split("; ")[0][:120]
