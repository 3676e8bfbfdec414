"""The live catalogue: one object for the items a trained model serves (`LiveCatalogue`).

It holds the item ids and their rows (ids <-> rows), the item rows themselves (a
`Catalogue`, grown by `rows.grow`) and the items added since training, kept in step with
the run's `added_items.parquet` (`store`) and with the model that ranks them, which hears
of every add through `Recommender.items_added(catalogue, first_new)`. `sidrec.api.Service`
recommends over it; `sidrec serve`'s worker, its model process and every Ray Serve replica
each hold one over the same run directory, and `refresh` applies what the others added.

Threads: one lock (`lock`). A reader that needs the catalogue to stay put while it works
(a recommendation: history ids to rows, the model's call, rows back to ids) holds it; an
add or a refresh holds it while it reads the file and swaps the grown catalogue in, so the
swap falls between two recommendations. Adds are serialised by the run's file lock
(`store.lock`), across the threads of one process as across processes, and encode their
items (the slow part; `encode_texts_with` may send it to another process) before they
take `lock`. Item descriptions (`item`, `describe`, `search`) read `view`, replaced whole,
with no lock.

An add is idempotent by id: an added item's id given again with the same text (and the
same vector, when one is given) is a success that adds nothing, so a client may retry an
add whose answer it did not get; the same id with another text is an `ItemError`
(duplicate).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sidrec.catalogue import store
from sidrec.catalogue.encode import Encoder, check_new, encode, encode_again, with_sids
from sidrec.catalogue.rows import NewItems, grow, no_items
from sidrec.catalogue.view import CatalogueView
from sidrec.errors import ItemError, SidrecError
from sidrec.models.base import Recommender
from sidrec.run import RunDir
from sidrec.vectors import given_vectors


class LiveCatalogue:
    """The items `model` ranks: `item_ids` name the rows of its catalogue in order; the
    items added after training live in the run directory `run`."""

    def __init__(self, model: Recommender, item_ids: Sequence[str],
                 run: str | Path | RunDir) -> None:
        self.model = model
        self.run = RunDir(run)
        self.rows = model.catalogue
        self.ids = [str(i) for i in item_ids]
        if len(self.ids) != self.rows.n_items:
            raise SidrecError(f"{len(self.ids)} item ids for the model's "
                              f"{self.rows.n_items} items")
        self.index = {item: row for row, item in enumerate(self.ids)}
        self.view = CatalogueView.of(self.ids, self.rows)
        self.added: NewItems = no_items()
        self.lock = threading.RLock()
        self._encoder = Encoder(self.run)
        self._fingerprint: dict[str, str | None] | None = None
        self._stamp: store.Stamp | None = None  # the files as this process last read or wrote them
        self._faulted: store.Stamp | None = None  # the files as they were when unreadable
        self._rewritten: str | None = None  # why added_items.parquet is not ours to rewrite

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self.index

    def rows_of(self, item_ids: Sequence[str]) -> tuple[list[int], list[str]]:
        """(the rows of the known ids, in order; the unknown ids)."""
        rows: list[int] = []
        unknown: list[str] = []
        for item in item_ids:
            row = self.index.get(str(item))
            if row is None:
                unknown.append(str(item))
            else:
                rows.append(row)
        return rows, unknown

    # ------------------------------------------------------------ describing items

    def item(self, item_id: str) -> dict[str, Any] | None:
        """{"id", "title", "text", "cold", "added"} of one item, or None if unknown."""
        view, row = self.view, self.index.get(str(item_id))
        if row is None or row >= len(view.item_ids):  # indexed, not yet in this view
            return None
        return {**view.describe(row), "text": self.rows.item_text[row]}

    def describe(self, item_ids: Sequence[str]) -> list[dict[str, Any]]:
        """{"id", "title", "cold", "added"} of known item ids (e.g. recommended ones)."""
        view = self.view
        return [view.describe(self.index[str(i)]) for i in item_ids]

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """`item` of the items whose title contains `query` (any case), the most popular
        first, then the newest; an empty query lists the most popular items."""
        view = self.view
        return [{**view.describe(row), "text": self.rows.item_text[row]}
                for row in view.search(query, limit)]

    # ------------------------------------------------------------ adding items

    def add(self, items: Sequence[dict[str, Any]]) -> list[str]:
        """Make new items recommendable now: embed their text (or take their own
        `vector`, which a run embedded with `--vectors` needs), give them a semantic ID,
        persist them to the run directory. All or nothing: a failing item adds none.
        Returns the ids, those added before by the same id and text included."""
        if not self.model.supports_new_items:
            raise SidrecError(
                f"model {self.model.name!r} ranks only items seen in training and cannot "
                "take new items; use liger, cobra or dense-text"
            )
        if isinstance(items, dict | str | bytes):
            raise SidrecError("add_items expects a list of {'id': ..., 'text': ...} dicts")
        with store.lock(self.run):
            with self.lock:  # first what other processes added to this run
                self._apply_appended(strict=True)
                ids, texts = check_new(items, self.index, same=self._same)
            every = [str(item["id"]) for item in items]
            if not ids:
                return every
            fresh = set(ids)
            at = [n for n, item_id in enumerate(every) if item_id in fresh]
            given = given_vectors(items, self._encoder.record().get("dim"))
            try:
                new = encode(self._encoder, self.rows, ids, texts, [given[n] for n in at])
            except ItemError as e:  # its row among the new items: the request's row
                raise ItemError(at[e.row], str(e).removeprefix(f"items[{e.row}]"),
                                e.duplicate, e.field) from None
            self._commit(new, persist="append")
            if store.n_parts(self.run) >= store.COMPACT_AFTER:
                store.write(self.run, self.added, self.fingerprint())
                self._stamp = store.stamp(self.run)
        if (why := unreachable(self.model)) is not None:
            warnings.warn(why, stacklevel=3)
        return every

    def encode_texts_with(self, fn: Callable[[list[str], str], np.ndarray] | None) -> None:
        """Encode new items' texts with `fn(texts, encoder)` instead of in this thread
        (None: here again); `sidrec serve` passes its encoder process."""
        self._encoder.encode_texts = fn

    def stale(self) -> bool:
        """Another process added items this one has not read (a stat and a listing)."""
        return self.model.supports_new_items and \
            store.stamp(self.run) not in (self._stamp, self._faulted)

    def refresh(self) -> int:
        """Apply the items that another process (another server or Ray Serve replica on
        this run directory, the server's model process) added since; returns how many.
        Cheap when nothing changed (a stat). Unreadable files raise once, then read as
        unchanged until they change again."""
        if not self.stale():
            return 0
        with self.lock:
            return self._apply_appended()

    def load_added(self) -> int:
        """Apply the run's added items (at load): encoded again from their text when the
        run's encoder or embeddings changed since, their SIDs computed again from their
        vectors when only the SIDs differ (`store`). First the temporary files a writer
        killed mid-write left behind go."""
        store.clean(self.run)
        if not self.model.supports_new_items or len(self.added):
            return 0
        with self.lock:
            found, stamp = self._read_added()
            if found is None:
                return 0
            if self._same_vectors(found[1]):
                items = self._own_sids(*found)
                self._commit(items)
                self._stamp = stamp
                return len(items)
        with store.lock(self.run):  # re-embedded: encode them again, as they are now that
            with self.lock:  # no other process can add
                found, _ = self._read_added()
            if found is None:
                return 0
            items = encode_again(self._encoder, self.rows, found[0])
            self._commit(items, persist="all")
        return len(items)

    def vector_rule(self) -> tuple[int | None, bool]:
        """(how many values a new item's own `vector` has, None when the run does not say;
        whether every new item must bring one: the run's vectors came from a file)."""
        return self._encoder.record().get("dim"), self._encoder.no_text() is not None

    def fingerprint(self) -> dict[str, str | None]:
        """What this process computes added items against (`store.fingerprint`)."""
        if self._fingerprint is None:
            self._fingerprint = store.fingerprint(self.run)
        return self._fingerprint

    def _commit(self, new: NewItems, persist: str = "") -> None:
        """Swap in the catalogue grown by `new`, once the model took it and, when
        `persist` says so, the run holds it (append: `new` after the stored items; all:
        every added item rewritten); on a failure the model gets the old one back."""
        with self.lock:
            first = self.rows.n_items
            grown = grow(self.rows, new)
            try:
                self.model.items_added(grown, first)
                if persist == "append":
                    store.append(self.run, new, self.fingerprint())
                elif persist == "all":
                    store.write(self.run, self.added + new, self.fingerprint())
            except BaseException:
                self.model.set_catalogue(self.rows)
                raise
            self.rows, self.added = grown, self.added + new
            self.ids.extend(new.ids)
            self.view = self.view.extended(new)  # first: an id in the index is in the view
            self.index.update({item: first + n for n, item in enumerate(new.ids)})
            if persist:
                self._stamp = store.stamp(self.run)

    def _same(self, row: int, text: str, item: dict[str, Any]) -> bool:
        """Item `row` is an added item with this text (and this vector, when `item` gives
        one): `item` is a retry of its add."""
        first = self.view.n_trained
        return row >= first and self.rows.item_text[row] == text and (
            item.get("vector") is None or _equal(item["vector"], self.added.vectors[row - first]))

    def _apply_appended(self, strict: bool = False) -> int:
        """Apply what other processes appended to the added items (under `lock`). A file
        rewritten under this process (other items, other embeddings) is served only after
        a restart: a warning when found, and from then on (`strict`: before an add, which
        rewrites the file from this process's items and would drop the others) an error."""
        applied = 0
        changed = store.stamp(self.run) != self._stamp
        found, stamp = self._read() if changed else (None, None)
        if found is not None:
            items, meta = found
            n = len(self.added)
            if items.ids[:n] != self.added.ids or not self._same_vectors(meta):
                self._rewritten = (f"{self.run.added_items} was rewritten by another process "
                                   "or for other embeddings since this one read it; restart "
                                   "to serve it")
                warnings.warn(self._rewritten, stacklevel=4)
            else:
                tail = self._own_sids(items.tail(n), meta)
                if len(tail):
                    self._commit(tail)
                applied = len(tail)
        if changed:  # only now: `stale` (unlocked) must not read current before the items are in
            self._stamp = stamp
        if strict and self._rewritten:
            raise SidrecError(f"{self._rewritten} (adding now would drop its items)")
        return applied

    def _read(self) -> tuple[tuple[NewItems, dict[str, Any]] | None, store.Stamp | None]:
        """(the run's added items and the file's metadata, the stamp taken before the read:
        an add between the two is read again later; kept once the items are in)."""
        stamp = store.stamp(self.run)
        try:
            found = store.read(self.run)
        except SidrecError:
            self._faulted = stamp
            raise
        self._faulted = None
        return found, stamp

    def _read_added(self) -> tuple[tuple[NewItems, dict[str, Any]] | None, store.Stamp | None]:
        """`_read`, its items checked against the catalogue."""
        found, stamp = self._read()
        if found is not None:
            try:
                check_new([{"id": i, "text": t} for i, t in
                           zip(found[0].ids, found[0].texts, strict=True)],
                          self.index, stored=True)
            except SidrecError as e:
                raise SidrecError(f"{self.run.added_items}: {e}") from None
        return found, stamp

    def _same_vectors(self, meta: dict[str, Any]) -> bool:
        """The stored vectors came from this run's encoder and embeddings."""
        stored, mine = meta.get("fingerprint") or {}, self.fingerprint()
        return all(stored.get(k) == mine[k] for k in ("encoder", "embeddings"))

    def _own_sids(self, items: NewItems, meta: dict[str, Any]) -> NewItems:
        """`items` with this model's SIDs: the stored ones when they were computed for the
        same SIDs, else recomputed from the stored vectors (another model's SID set)."""
        stored = (meta.get("fingerprint") or {}).get("sids")
        if stored == self.fingerprint()["sids"] and (items.sids is not None
                                                     or self.rows.sids is None):
            return items
        return with_sids(self._encoder, self.rows, items)


def _equal(given: Any, stored: np.ndarray) -> bool:
    try:
        return bool(np.array_equal(np.asarray(given, dtype=np.float32), stored))
    except (TypeError, ValueError):  # not numbers: not the stored item's vector
        return False


def unreachable(model: Recommender) -> str | None:
    """Why `model` never returns added items with its own inference settings, or None: a
    beam over the SIDs of warm items only (TIGER's default) cannot reach an item that was
    not in training, though it is stored and its SID is known."""
    inference = model.inference
    if getattr(inference, "include_cold", True) or getattr(inference, "mode", "") in (
            "hybrid", "dense"):
        return None
    return (f"model {model.name!r} decodes only items seen in training (include_cold=False), "
            "so it will not return the added items; pass include_cold=True (an inference "
            "setting) to let its beam reach them")
