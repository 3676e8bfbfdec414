"""The serving surface: load a trained model and recommend by original item ids.

    rec = sidrec.load("runs/ml-100k/models/liger")
    rec.recommend(history=["50", "172"], k=10)          # [(item_id, score), ...]
    rec.recommend(["50", "172"], user_id="196")         # a training user's own user token
    rec.recommend_batch([["50"], ["1", "2"]], k=10)
    rec.add_items([{"id": "new-1", "text": "Title: …"}])  # recommendable at once, persisted
    rec.add_items([{"id": "new-2", "text": "…", "vector": [...]}])  # a vector of its own
    rec.catalogue.search("star")                        # the items, by title

Users: a user id known from training reads its own hashed user token (TIGER, LIGER); any
other user id, or none, reads the model's anonymous user token, the one user-token dropout
trained (`sidrec.models.sid_parts`). Models without user tokens ignore users.

The items are a `LiveCatalogue` (`sidrec.catalogue`): ids <-> rows, and the items added
after training. New items go through the run's own encoder and tokenizer (fitted on warm
items, never refitted), so they get a text vector and a semantic ID exactly like the cold
items of the evaluation split. They are written to the run directory
(`added_items.parquet`) before anyone can see them, and `load` re-applies them, so a
restarted server serves them too. Models that can only rank items seen in training (SASRec,
TIGER (T)) refuse `add_items` with a clear error; Pop takes them at popularity 0, and TIGER
(or LIGER's generative mode) returns them only with `include_cold=True` (a warning says so).

Threads: one Service may be shared. A recommendation holds the catalogue's lock, so it
sees the catalogue before an add or after it, never half of it; adds run one at a time and
encode their items before they take that lock.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sidrec.catalogue import LiveCatalogue
from sidrec.config import to_dict
from sidrec.data.dataset import pad_histories
from sidrec.errors import SidrecError, UnknownItem
from sidrec.models.base import Recommender
from sidrec.run import ModelDir

ON_UNKNOWN = ("error", "skip")


class Recommendations(list):
    """A list of (item_id, score) pairs, best first."""


class Service:
    """Recommendations by item id from `model` over its `catalogue`. `on_unknown`: an
    unknown history item is an error, or skipped with a warning; `user_ids` name the
    training users in order (their dense ids)."""

    def __init__(self, model: Recommender, catalogue: LiveCatalogue, max_history: int,
                 on_unknown: str = "error", user_ids: Sequence[str] = ()) -> None:
        _check_on_unknown(on_unknown)
        self.model = model.eval()
        self.catalogue = catalogue
        self.max_history = max_history
        self.on_unknown = on_unknown
        self.user_index = {str(u): i for i, u in enumerate(user_ids)}
        self.n_invalid = 0  # generated SIDs that were no catalogue item (unconstrained)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def device(self) -> torch.device:
        params = list(self.model.parameters())
        return params[0].device if params else torch.device("cpu")

    def user(self, user_id: str | int | None) -> int:
        """The dense training id of `user_id`, or -1 (anonymous) for None or a new user."""
        return -1 if user_id is None else self.user_index.get(str(user_id), -1)

    def inference_with(self, options: dict[str, Any] | None) -> Any:
        """The model's inference settings with `options` applied; an unknown, mistyped or
        out-of-range one is a SidrecError that lists the valid ones."""
        return self.model.inference_with(options)

    def info(self) -> dict[str, Any]:
        """The model and its catalogue, as `GET /v1/info` shows them."""
        return {"model": self.name, "n_items": len(self.catalogue),
                "n_added": len(self.catalogue.added), "n_users": len(self.user_index),
                "supports_new_items": self.model.supports_new_items,
                "inference": to_dict(self.model.inference)}

    def add_items(self, items: Sequence[dict[str, Any]]) -> list[str]:
        """`LiveCatalogue.add`: new items, recommendable at once and persisted."""
        return self.catalogue.add(items)

    # ------------------------------------------------------------ recommending

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
        settings = self.inference_with(inference)
        with self.catalogue.lock:  # the same catalogue from history ids to returned ids
            encoded = [self._rows(h, row, mode) for row, h in enumerate(histories)]
            dense_users = [self.user(u) for u in users] if users is not None \
                else [-1] * len(encoded)
            return self._recommend(encoded, dense_users, k, exclude_seen, settings)

    def recommend(self, history: Sequence[str], k: int = 10, exclude_seen: bool = False,
                  inference: dict[str, Any] | None = None, user_id: str | int | None = None,
                  on_unknown: str | None = None) -> Recommendations:
        if isinstance(history, str):
            raise SidrecError("history must be a list of item ids, not a single string")
        return self.recommend_batch([history], k, exclude_seen, inference, [user_id],
                                    on_unknown)[0]

    def _rows(self, history: Sequence[str], row: int, on_unknown: str) -> list[int]:
        """The catalogue rows of history `row`'s items; an unknown id is an error, or is
        skipped with a warning."""
        rows, unknown = self.catalogue.rows_of(history)
        if unknown:
            if on_unknown == "error":
                raise UnknownItem(row, unknown)
            warnings.warn(f"history {row}: skipped {len(unknown)} unknown item id(s)",
                          stacklevel=3)
        return rows

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
        ids = self.catalogue.ids
        for row, i in enumerate(with_history):
            pairs = [(ids[it], float(s))
                     for it, s in zip(items[row].tolist(), scores[row].tolist(), strict=True)
                     if it >= 0]
            results[i] = Recommendations(pairs[:k])
        return results

    def _popular(self, k: int) -> list[tuple[str, float]]:
        pop = self.catalogue.rows.popularity
        top = torch.topk(pop.float(), min(k, len(pop)))
        return [(self.catalogue.ids[i], float(s)) for i, s in
                zip(top.indices.tolist(), top.values.tolist(), strict=True)]


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
    catalogue = LiveCatalogue(model, list(dataset.item_ids), md.run)
    service = Service(model, catalogue, dataset.max_history, on_unknown,
                      user_ids=list(dataset.user_ids))
    catalogue.load_added()
    return service
