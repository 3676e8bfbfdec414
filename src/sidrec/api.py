"""The serving surface: load a trained model and recommend by original item ids.

    rec = sidrec.load("runs/ml-100k/models/liger")
    rec.recommend(history=["50", "172"], k=10)          # [(item_id, score), ...]
    rec.recommend(["50", "172"], user_id="196")         # a training user's own user token
    rec.recommend_batch([["50"], ["1", "2"]], k=10)
    rec.add_items([{"id": "new-1", "text": "Title: …"}])  # recommendable at once, persisted
    rec.add_items([{"id": "new-2", "text": "…", "vector": [...]}])  # a vector of its own

Users: a user id known from training reads its own hashed user token (TIGER, LIGER); any
other user id, or none, reads the model's anonymous user token, the one user-token dropout
trained (`sidrec.models.sid_parts`). Models without user tokens ignore users.

New items go through the run's own encoder and tokenizer (fitted on warm items, never
refitted), so they get a text vector and a semantic ID exactly like the cold items of the
evaluation split (`sidrec.added_items`). They are written to the run directory
(`added_items.parquet`) before anyone can see them, and `load` re-applies them, so a
restarted server serves them too. Models that can only rank items seen in training (SASRec,
TIGER (T)) refuse `add_items` with a clear error; Pop takes them at popularity 0, and TIGER
(or LIGER's generative mode) returns them only with `include_cold=True` (a warning says so).

Threads: one Service may be shared. A recommendation and a catalogue swap never overlap
(one lock), so a recommendation sees the catalogue before an add or after it, never half
of it. Adds run one at a time and encode their items before they take that lock.
"""

from __future__ import annotations

import dataclasses
import numbers
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sidrec import added_items
from sidrec.added_items import Encoder, NewItems, no_items
from sidrec.data.dataset import pad_histories
from sidrec.errors import SidrecError, UnknownItem
from sidrec.models.base import Recommender
from sidrec.run import ModelDir, RunDir
from sidrec.vectors import given_vectors

ON_UNKNOWN = ("error", "skip")


class Recommendations(list):
    """A list of (item_id, score) pairs, best first."""


@dataclass(frozen=True)
class CatalogueView:
    """What a reader needs of the catalogue, replaced whole after an add: a thread can read
    it without a lock and never see an add half done."""

    item_ids: tuple[str, ...]
    titles: tuple[str, ...]
    cold: tuple[bool, ...]
    popularity: tuple[float, ...]
    n_trained: int

    def extended(self, new: NewItems) -> CatalogueView:
        """This view with added items (cold, popularity 0) appended."""
        m = len(new)
        return CatalogueView(self.item_ids + new.ids,
                             self.titles + tuple(title_of(t) for t in new.texts),
                             self.cold + (True,) * m, self.popularity + (0.0,) * m,
                             self.n_trained)

    def describe(self, idx: int) -> dict[str, Any]:
        return {"id": self.item_ids[idx], "title": self.titles[idx],
                "cold": self.cold[idx], "added": idx >= self.n_trained}


def title_of(text: str) -> str:
    """An item's display title: the `Title: …` field of its text (`sidrec.data.text`),
    else its first field."""
    for part in text.split("; "):
        label, sep, value = part.partition(": ")
        if sep and label.strip().lower() == "title":
            return value.strip()
    return text.split("; ")[0][:120]


class Service:
    def __init__(self, model: Recommender, item_ids: Sequence[str], run_dir: str | Path | RunDir,
                 max_history: int, on_unknown: str = "error",
                 user_ids: Sequence[str] = ()) -> None:
        _check_on_unknown(on_unknown)
        self.model = model.eval()
        self.run = RunDir(run_dir)
        self.max_history = max_history
        self.on_unknown = on_unknown
        self.item_ids = [str(i) for i in item_ids]
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        self.user_index = {str(u): i for i, u in enumerate(user_ids)}
        self.n_trained_items = len(self.item_ids)
        self.view = self._snapshot()
        self.added: NewItems = no_items()
        self.n_invalid = 0  # generated SIDs that were no catalogue item (unconstrained)
        self._lock = threading.RLock()  # a recommendation vs. a catalogue swap
        self._add_lock = threading.Lock()  # one add at a time
        self._encoder = Encoder(self.run)
        self._fingerprint: dict[str, str | None] | None = None
        self._added_stamp: tuple[int, int, int] | None = None
        self._rewritten: str | None = None  # why added_items.parquet is not ours to rewrite

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def device(self) -> torch.device:
        params = list(self.model.parameters())
        return params[0].device if params else torch.device("cpu")

    # ------------------------------------------------------------ recommending

    def _encode_history(self, history: Sequence[str], row: int, on_unknown: str) -> list[int]:
        out, unknown = [], []
        for item in history:
            idx = self.index.get(str(item))
            if idx is None:
                unknown.append(str(item))
            else:
                out.append(idx)
        if unknown:
            if on_unknown == "error":
                raise UnknownItem(row, unknown)
            warnings.warn(f"history {row}: skipped {len(unknown)} unknown item id(s)",
                          stacklevel=3)
        return out

    def user(self, user_id: str | int | None) -> int:
        """The dense training id of `user_id`, or -1 (anonymous) for None or a new user."""
        return -1 if user_id is None else self.user_index.get(str(user_id), -1)

    def recommend_batch(self, histories: Sequence[Sequence[str]], k: int = 10,
                        exclude_seen: bool = False, inference: dict[str, Any] | None = None,
                        users: Sequence[str | int | None] | None = None,
                        on_unknown: str | None = None) -> list[Recommendations]:
        """Top-k (item id, score) lists for several histories. `inference` overrides the
        model's inference settings for this call (e.g. {"beam": 50}); an unknown one is an
        error that lists the valid ones. `users` gives each history's user id (None: an
        anonymous user); `exclude_seen` leaves out the items of each history."""
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise SidrecError(f"k must be an integer >= 1, got {k!r}")
        k = int(k)
        if isinstance(histories, str | bytes):
            raise SidrecError("recommend_batch expects a list of histories (lists of item ids)")
        for row, history in enumerate(histories):
            if isinstance(history, str | bytes) or not isinstance(history, Sequence):
                raise SidrecError(
                    f"histories[{row}]: expected a list of item ids, got {history!r}; e.g. "
                    "recommend_batch([['50', '172'], ['1']])"
                )
        if users is not None and len(users) != len(histories):
            raise SidrecError(f"users: {len(users)} user ids for {len(histories)} histories")
        mode = self.on_unknown if on_unknown is None else on_unknown
        _check_on_unknown(mode)
        settings = self.model.inference_with(inference)
        with self._lock:
            encoded = [self._encode_history(h, row, mode) for row, h in enumerate(histories)]
            dense_users = [self.user(u) for u in users] if users is not None \
                else [-1] * len(encoded)
            return self._recommend(encoded, dense_users, k, exclude_seen, settings)

    def _recommend(self, encoded: list[list[int]], users: list[int], k: int,
                   exclude_seen: bool, settings: Any) -> list[Recommendations]:
        results: list[Recommendations] = [Recommendations() for _ in encoded]
        with_history = [i for i, h in enumerate(encoded) if h]
        popular = self._popular(k)
        for i, h in enumerate(encoded):
            if not h:  # no usable history: the popularity fallback
                results[i] = Recommendations(popular)
        if not with_history:
            return results
        rows = [encoded[i] for i in with_history]
        seen, extra = None, 0
        if exclude_seen:  # the model masks the whole history, not only its input window;
            # a beam whose prefixes lead to seen items ends short, so it asks for more
            settings = dataclasses.replace(settings, exclude_history=True)
            extra = max(len(set(row)) for row in rows)
            seen = torch.as_tensor(pad_histories(rows, max(map(len, rows))),
                                   device=self.device)
        hist = torch.as_tensor(pad_histories(rows, self.max_history), device=self.device)
        user_rows = torch.as_tensor([users[i] for i in with_history], dtype=torch.long,
                                    device=self.device)
        items, scores = self.model.recommend(hist, user_rows, k + extra, settings, seen=seen)
        self.n_invalid += int((items < -1).sum())
        for row, i in enumerate(with_history):
            pairs = [(self.item_ids[it], float(s))
                     for it, s in zip(items[row].tolist(), scores[row].tolist(), strict=True)
                     if it >= 0]
            results[i] = Recommendations(pairs[:k])
        return results

    def recommend(self, history: Sequence[str], k: int = 10, exclude_seen: bool = False,
                  inference: dict[str, Any] | None = None, user_id: str | int | None = None,
                  on_unknown: str | None = None) -> Recommendations:
        if isinstance(history, str):
            raise SidrecError("history must be a list of item ids, not a single string")
        return self.recommend_batch([history], k, exclude_seen, inference, [user_id],
                                    on_unknown)[0]

    def _popular(self, k: int) -> list[tuple[str, float]]:
        pop = self.model.catalogue.popularity
        top = torch.topk(pop.float(), min(k, len(pop)))
        return [(self.item_ids[i], float(s)) for i, s in
                zip(top.indices.tolist(), top.values.tolist(), strict=True)]

    # ------------------------------------------------------------ the catalogue

    # Readers below take no lock: they read `self.view`, replaced whole by an add.

    def _snapshot(self) -> CatalogueView:
        cat = self.model.catalogue
        return CatalogueView(tuple(self.item_ids), tuple(title_of(t) for t in cat.item_text),
                             tuple(cat.cold.tolist()), tuple(cat.popularity.tolist()),
                             self.n_trained_items)

    def item(self, item_id: str) -> dict[str, Any] | None:
        """{"id", "title", "text", "cold", "added"} of one item, or None if unknown."""
        view, idx = self.view, self.index.get(str(item_id))
        if idx is None or idx >= len(view.item_ids):
            return None
        return {**view.describe(idx), "text": self.model.catalogue.item_text[idx]}

    def items(self, item_ids: Sequence[str]) -> list[dict[str, Any]]:
        """{"id", "title", "cold", "added"} of known item ids (e.g. recommended ones)."""
        view = self.view
        return [view.describe(self.index[str(i)]) for i in item_ids]

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """Items whose title contains `query` (any case), the most popular first, then the
        newest; an empty query lists the most popular items."""
        q, view = query.strip().lower(), self.view
        hits = [i for i, t in enumerate(view.titles) if q in t.lower()]
        hits.sort(key=lambda i: (-view.popularity[i], -i))
        return [self.item(view.item_ids[i]) or {} for i in hits[:limit]]

    def add_items(self, items: Sequence[dict[str, Any]]) -> list[str]:
        """Make new items recommendable now: embed their text (or take their own `vector`,
        which a run embedded with `--vectors` needs), give them a semantic ID, persist them
        to the run directory. All or nothing: a failing item adds none. Returns the ids."""
        if not self.model.supports_new_items:
            raise SidrecError(
                f"model {self.model.name!r} ranks only items seen in training and cannot take "
                "new items; use liger, cobra or dense-text"
            )
        if isinstance(items, dict | str | bytes):
            raise SidrecError("add_items expects a list of {'id': ..., 'text': ...} dicts")
        with self._add_lock, added_items.lock(self.run):
            self._refresh_locked(strict=True)  # first what other processes added to this run
            ids, texts = added_items.check_new(items, self.index)
            if not ids:
                return []
            given = given_vectors(items, self._encoder.record().get("dim"))
            new = added_items.encode(self._encoder, self.model.catalogue, ids, texts, given)
            self._commit(new, persist=True)
        if (unreachable := added_items.unreachable(self.model)) is not None:
            warnings.warn(unreachable, stacklevel=2)
        return ids

    def _commit(self, new: NewItems, persist: bool) -> None:
        """Swap in the catalogue grown by `new` (persisted first when `persist`)."""
        with self._lock:
            old = self.model.catalogue
            try:
                self.model.set_catalogue(added_items.grow(old, new))
                if persist:
                    added_items.write(self.run, self.added + new, self.fingerprint())
            except BaseException:
                self.model.set_catalogue(old)
                raise
            first = len(self.item_ids)
            self.added = self.added + new
            self.item_ids.extend(new.ids)
            self.view = self.view.extended(new)  # first: an id in the index is in the view
            self.index.update({item: first + n for n, item in enumerate(new.ids)})
            if persist:
                self._added_stamp = self._stamp()

    def fingerprint(self) -> dict[str, str | None]:
        if self._fingerprint is None:
            self._fingerprint = added_items.fingerprint(self.run)
        return self._fingerprint

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.run.added_items.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh(self) -> int:
        """Apply items that another process (another server or Ray Serve replica on this
        run directory) added since; returns how many. Cheap when nothing changed (a stat)."""
        if not self.model.supports_new_items or self._stamp() == self._added_stamp:
            return 0
        if not self._add_lock.acquire(blocking=False):
            return 0  # an add is under way here; it applies them itself
        try:
            return self._refresh_locked()
        finally:
            self._add_lock.release()

    def _refresh_locked(self, strict: bool = False) -> int:
        """Apply what other processes appended to the added items. A file rewritten under
        this process (other items, other embeddings) is served only after a restart: a
        warning when found, and from then on (`strict`: before an add, which rewrites the
        file from this process's items and would drop the others) an error."""
        applied = self._apply_appended()
        if strict and self._rewritten:
            raise SidrecError(f"{self._rewritten} (adding now would drop its items)")
        return applied

    def _apply_appended(self) -> int:
        stamp = self._stamp()
        if stamp == self._added_stamp:
            return 0
        found = added_items.read(self.run)
        self._added_stamp = stamp
        if found is None:
            return 0
        items, meta = found
        n = len(self.added)
        if items.ids[:n] != self.added.ids or not self._same_vectors(meta):
            self._rewritten = (f"{self.run.added_items} was rewritten by another process or "
                               "for other embeddings since this one read it; restart to "
                               "serve it")
            warnings.warn(self._rewritten, stacklevel=3)
            return 0
        tail = self._own_sids(items.tail(n), meta)
        if len(tail):
            self._commit(tail, persist=False)
        return len(tail)

    def _same_vectors(self, meta: dict[str, Any]) -> bool:
        """The stored vectors came from this run's encoder and embeddings."""
        stored, mine = meta.get("fingerprint") or {}, self.fingerprint()
        return all(stored.get(k) == mine[k] for k in ("encoder", "embeddings"))

    def _own_sids(self, items: NewItems, meta: dict[str, Any]) -> NewItems:
        """`items` with this model's SIDs: the stored ones when they were computed for the
        same SIDs, else recomputed from the stored vectors (another model's SID set)."""
        stored = (meta.get("fingerprint") or {}).get("sids")
        if stored == self.fingerprint()["sids"] and (items.sids is not None
                                                     or self.model.catalogue.sids is None):
            return items
        return added_items.with_sids(self._encoder, self.model.catalogue, items)

    def load_added(self) -> int:
        """Re-apply the run's added items (at load): encoded again from their text when the
        run's encoder or embeddings changed since, their SIDs computed again from their
        vectors when only the SIDs differ (`sidrec.added_items`)."""
        if not self.model.supports_new_items or len(self.added):
            return 0
        found = self._read_added()
        if found is None:
            return 0
        items, meta = found
        if self._same_vectors(meta):
            self._commit(self._own_sids(items, meta), persist=False)
            return len(items)
        with self._add_lock, added_items.lock(self.run):  # re-embedded: encode them again,
            found = self._read_added()  # as they are now that no other process can add
            if found is None:
                return 0
            items = added_items.encode_again(self._encoder, self.model.catalogue, found[0])
            self._commit(items, persist=True)
        return len(items)

    def _read_added(self) -> tuple[NewItems, dict[str, Any]] | None:
        """The run's added items (checked against the catalogue), stamped as read."""
        stamp = self._stamp()  # before the read: an add between the two is read later
        found = added_items.read(self.run)
        self._added_stamp = stamp
        if found is not None:
            try:
                added_items.check_new([{"id": i, "text": t} for i, t in
                                       zip(found[0].ids, found[0].texts, strict=True)],
                                      self.index, stored=True)
            except SidrecError as e:
                raise SidrecError(f"{self.run.added_items}: {e}") from None
        return found


def _check_on_unknown(on_unknown: str) -> None:
    if on_unknown not in ON_UNKNOWN:
        raise SidrecError(f"on_unknown must be 'error' or 'skip', got {on_unknown!r}")


def load(model_dir: str | Path, on_unknown: str = "error", device: str = "auto",
         inference: dict[str, Any] | None = None) -> Service:
    """Load a trained model from `runs/<name>/models/<model>` for serving, with the items
    added to its run since training; `inference` overrides its stored inference settings
    (e.g. {"beam": 50})."""
    from sidrec.checkpoint import load_model
    from sidrec.data.dataset import Dataset
    from sidrec.device import resolve_device

    md = ModelDir(Path(model_dir)).require()
    dataset = Dataset.load(md.run.root)
    model = load_model(md, md.run, dataset=dataset, inference=inference)
    model = model.to(resolve_device(device))
    service = Service(model, list(dataset.item_ids), md.run, dataset.max_history, on_unknown,
                      user_ids=list(dataset.user_ids))
    service.load_added()
    return service
