"""The serving surface: load a trained model and recommend by original item ids.

    rec = sidrec.load("runs/ml-100k/models/liger")
    rec.recommend(history=["50", "172"], k=10)          # [(item_id, score), ...]
    rec.recommend_batch([["50"], ["1", "2"]], k=10)
    rec.add_items([{"id": "new-1", "text": "Title: …"}])  # searchable at once

New items go through the run's own encoder and tokenizer (fitted on warm items, never
refitted), so they get a text vector and a semantic ID exactly like the cold items of the
evaluation split. Models that can only rank items seen in training (Pop, SASRec, TIGER)
refuse `add_items` with a clear error.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sidrec.data.dataset import pad_histories
from sidrec.errors import SidrecError
from sidrec.models.base import Recommender
from sidrec.run import ModelDir, RunDir


class Recommendations(list):
    """A list of (item_id, score) pairs, best first."""


class Service:
    def __init__(self, model: Recommender, item_ids: Sequence[str], run_dir: str | Path | RunDir,
                 max_history: int, on_unknown: str = "error") -> None:
        if on_unknown not in ("error", "skip"):
            raise SidrecError(f"on_unknown must be 'error' or 'skip', got {on_unknown!r}")
        self.model = model.eval()
        self.run = RunDir(run_dir)
        self.max_history = max_history
        self.on_unknown = on_unknown
        self.item_ids = [str(i) for i in item_ids]
        self.index = {item: i for i, item in enumerate(self.item_ids)}

    @property
    def device(self) -> torch.device:
        params = list(self.model.parameters())
        return params[0].device if params else torch.device("cpu")

    def _encode_history(self, history: Sequence[str], row: int) -> list[int]:
        out, unknown = [], []
        for item in history:
            idx = self.index.get(str(item))
            if idx is None:
                unknown.append(str(item))
            else:
                out.append(idx)
        if unknown:
            if self.on_unknown == "error":
                raise SidrecError(
                    f"history {row}: unknown item id {unknown[0]!r} ({len(unknown)} unknown); "
                    "add it with add_items() or load with on_unknown='skip'"
                )
            warnings.warn(f"history {row}: skipped {len(unknown)} unknown item id(s)",
                          stacklevel=3)
        return out

    def recommend_batch(self, histories: Sequence[Sequence[str]], k: int = 10,
                        exclude_seen: bool = False,
                        inference: dict[str, Any] | None = None) -> list[Recommendations]:
        """Top-k (item id, score) lists for several histories. `inference` overrides the
        model's inference settings for this call (e.g. {"beam": 50}); an unknown one is an
        error that lists the valid ones."""
        if k < 1:
            raise SidrecError(f"k must be >= 1, got {k}")
        if isinstance(histories, str | bytes):
            raise SidrecError("recommend_batch expects a list of histories (lists of item ids)")
        for row, history in enumerate(histories):
            if isinstance(history, str | bytes) or not isinstance(history, Sequence):
                raise SidrecError(
                    f"histories[{row}]: expected a list of item ids, got {history!r}; e.g. "
                    "recommend_batch([['50', '172'], ['1']])"
                )
        settings = self.model.inference_with(inference)
        encoded = [self._encode_history(h, row) for row, h in enumerate(histories)]
        results: list[Recommendations] = [Recommendations() for _ in encoded]
        with_history = [i for i, h in enumerate(encoded) if h]
        popular = self._popular(k)
        for i, h in enumerate(encoded):
            if not h:  # no usable history: the popularity fallback
                results[i] = Recommendations(popular)
        if with_history:
            hist = torch.as_tensor(
                pad_histories([encoded[i] for i in with_history], self.max_history),
                device=self.device)
            users = torch.zeros(len(with_history), dtype=torch.long, device=self.device)
            extra = self.max_history if exclude_seen else 0
            items, scores = self.model.recommend(hist, users, k + extra, settings)
            for row, i in enumerate(with_history):
                seen = set(encoded[i]) if exclude_seen else set()
                pairs = [(self.item_ids[it], float(s))
                         for it, s in zip(items[row].tolist(), scores[row].tolist(), strict=True)
                         if it >= 0 and it not in seen]
                results[i] = Recommendations(pairs[:k])
        return results

    def recommend(self, history: Sequence[str], k: int = 10, exclude_seen: bool = False,
                  inference: dict[str, Any] | None = None) -> Recommendations:
        if isinstance(history, str):
            raise SidrecError("history must be a list of item ids, not a single string")
        return self.recommend_batch([history], k, exclude_seen, inference)[0]

    def _popular(self, k: int) -> list[tuple[str, float]]:
        pop = self.model.catalogue.popularity
        top = torch.topk(pop.float(), min(k, len(pop)))
        return [(self.item_ids[i], float(s)) for i, s in
                zip(top.indices.tolist(), top.values.tolist(), strict=True)]

    def add_items(self, items: Sequence[dict[str, str]]) -> None:
        """Make new items recommendable now: embed their text, give them a semantic ID."""
        from sidrec.embed import EmbedConfig, encode_texts
        from sidrec.io import read_json

        if not self.model.supports_new_items:
            raise SidrecError(
                f"model {self.model.name!r} ranks only items seen in training and cannot take "
                "new items; use liger, cobra or dense-text"
            )
        ids, texts = [], []
        for n, item in enumerate(items):
            if not isinstance(item, dict) or "id" not in item:
                raise SidrecError(f"items[{n}]: expected a dict with 'id' and 'text'")
            item_id, text = str(item["id"]), str(item.get("text") or "").strip()
            if item_id in self.index or item_id in ids:
                raise SidrecError(f"items[{n}]: item id {item_id!r} already exists; ids are unique")
            if not text:
                raise SidrecError(f"items[{n}] ({item_id!r}): empty text; give the item a text")
            ids.append(item_id)
            texts.append(text)
        if not ids:
            return
        cat = self.model.catalogue
        encoder = read_json(self.run.embeddings_info)["encoder"]
        vectors = torch.as_tensor(
            encode_texts(texts, EmbedConfig(encoder=encoder), progress=False))
        grown: dict[str, Any] = {
            "item_text": [*cat.item_text, *texts],
            "cold": torch.cat([cat.cold, torch.ones(len(ids), dtype=torch.bool)]),
            "popularity": torch.cat([cat.popularity, torch.zeros(len(ids))]),
        }
        if cat.text_emb is not None:
            grown["text_emb"] = torch.cat([cat.text_emb, vectors.to(cat.text_emb)])
        if cat.sids is not None:
            from sidrec.tokenize import load_tokenizer, sids_for_new_items

            tokenizer = load_tokenizer(self.run.tokenizer)
            new = sids_for_new_items(tokenizer, cat.sids.cpu().numpy(), vectors.numpy())
            sids = np.concatenate([cat.sids.cpu().numpy(), new])
            too_big = np.flatnonzero(sids[:, -1] >= cat.codebook_sizes[-1])
            if len(too_big):
                raise SidrecError(
                    f"items[{too_big[0] - cat.n_items}]: its semantic-ID prefix is already "
                    f"shared by {cat.codebook_sizes[-1]} items, the most the trained model "
                    "can tell apart; retrain with the grown catalogue"
                )
            grown["sids"] = torch.as_tensor(sids).to(cat.sids.device)
        self.model.set_catalogue(replace(cat, **grown))
        self.item_ids.extend(ids)
        self.index.update({item: len(self.index) + n for n, item in enumerate(ids)})


def load(model_dir: str | Path, on_unknown: str = "error", device: str = "auto",
         inference: dict[str, Any] | None = None) -> Service:
    """Load a trained model from `runs/<name>/models/<model>` for serving; `inference`
    overrides its stored inference settings (e.g. {"beam": 50})."""
    from sidrec.checkpoint import load_model
    from sidrec.data.dataset import Dataset
    from sidrec.device import resolve_device

    md = ModelDir(Path(model_dir)).require()
    dataset = Dataset.load(md.run.root)
    model = load_model(md, md.run, dataset=dataset, inference=inference)
    model = model.to(resolve_device(device))
    return Service(model, list(dataset.item_ids), md.run, dataset.max_history, on_unknown)
