"""New items checked (`check_new`) and encoded the way the cold items of the split were.

A new item's text goes through the run's own encoder (the one `embeddings.json` names), or
it brings its own `vector` (a run embedded from a vectors file must: `given_vectors`), and,
when the run has SIDs, through its fitted tokenizer (never refitted), taking the next
free collision token of its prefix (`sidrec.tokenize.extend_sids`), or a place in the
nearest prefix with room when its own is full (`place`). No model is retrained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sidrec.artifacts import check_tokenizer, read_record
from sidrec.catalogue.place import place
from sidrec.catalogue.rows import NewItems
from sidrec.encoders import encoder_identity
from sidrec.errors import ItemError, SidrecError
from sidrec.io import folder_stamp
from sidrec.models.catalogue import Catalogue
from sidrec.run import RunDir
from sidrec.tokenize.sids import extend_sids


def check_new(items: Sequence[Any], known: dict[str, int], stored: bool = False,
              same: Callable[[int, str, dict], bool] | None = None
              ) -> tuple[list[str], list[str]]:
    """(ids, texts) of the new items of `items` ([{"id": ..., "text": ...}]); a duplicate
    id (with the catalogue `known` or within `items`) or an empty text is an `ItemError`.
    `same(row, text, item)`: the known item `row` is this one again (a retried add),
    which is left out rather than refused. `stored`: items read back from the run, added
    before the rule on spaces around ids existed."""
    ids: list[str] = []
    texts: list[str] = []
    again: set[str] = set()
    for n, item in enumerate(items):
        if not isinstance(item, dict) or "id" not in item:
            raise ItemError(n, ": expected a dict with 'id' and 'text'")
        raw_id, raw_text = item["id"], item.get("text")
        # ids are strings, or integers compared as strings; None or 7.0 is a mistake
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
            raise ItemError(n, f": id {raw_id!r} is a {type(raw_id).__name__}; give a string")
        if raw_text is not None and not isinstance(raw_text, str):
            raise ItemError(n, f": text is a {type(raw_text).__name__}; give a string")
        item_id, text = str(raw_id), (raw_text or "").strip()
        if not item_id.strip():
            raise ItemError(n, ": empty id; give the item an id")
        if item_id != item_id.strip() and not stored:
            raise ItemError(n, f": id {item_id!r} has spaces at its ends; strip them")
        if not text:
            raise ItemError(n, f" ({item_id!r}): empty text; give the item a text")
        if item_id in ids or item_id in again or (item_id in known and not (
                same is not None and same(known[item_id], text, item))):
            raise ItemError(n, f": item id {item_id!r} already exists; ids are unique (the "
                            "same id and text again is a retry, and succeeds)",
                            duplicate=True)
        if item_id in known:
            again.add(item_id)
            continue
        ids.append(item_id)
        texts.append(text)
    return ids, texts


class Encoder:
    """The run's text encoder and tokenizer, loaded once on first use."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self._tokenizer: Any = None
        # encodes texts somewhere else (texts, encoder) -> vectors; None: in this thread
        self.encode_texts: Callable[[list[str], str], np.ndarray] | None = None
        # what the last checks saw: a check is repeated when the files have changed since
        self._encoder_checked: tuple | None = None
        self._tokenizer_checked: tuple | None = None

    def vectors(self, texts: list[str]) -> np.ndarray:
        """[len(texts), d] float32 with the encoder that made `embeddings.npy`."""
        from sidrec.embed import EmbedConfig, encode_texts

        encoder = self._checked_encoder()
        if self.encode_texts is not None:
            return self.encode_texts(texts, encoder)
        threads = torch.get_num_threads()  # encode_texts sets its own; a server keeps its
        try:
            return encode_texts(texts, EmbedConfig(encoder=encoder, device="cpu"),
                                progress=False)
        finally:
            torch.set_num_threads(threads)

    def record(self) -> dict[str, Any]:
        """`embeddings.json` (empty when the run has none)."""
        info = self.run.embeddings_info
        return read_record(info, f"sidrec embed {self.run.root}") if info.is_file() else {}

    def no_text(self) -> str | None:
        """Why this run cannot encode a new item's text, or None when it can."""
        from sidrec.embed import FROM_FILE

        record = self.record()
        if record.get("encoder") != FROM_FILE:
            return None
        return (f"this run's item vectors came from {record.get('vectors')} (sidrec embed "
                f"--vectors), so text alone cannot be encoded: give it a vector of "
                f"{record.get('dim')} numbers, from the same encoder")

    def _checked_encoder(self) -> str:
        """The encoder `embeddings.json` records, verified to be the one that made the
        catalogue's vectors (a local folder changed since would put new items elsewhere)."""
        info, command = self.run.embeddings_info, f"sidrec embed {self.run.root}"
        if not info.is_file():
            raise SidrecError(f"{info}: missing; run `{command}` so new items can be encoded "
                              "like the others")
        record = read_record(info, command)
        encoder = record.get("encoder")
        if not isinstance(encoder, str):
            raise SidrecError(f"{info}: no encoder recorded; re-run `{command}`")
        seen = (record.get("encoder_id"), folder_stamp(encoder))
        if seen != self._encoder_checked:
            if "encoder_id" in record and encoder_identity(encoder) != record["encoder_id"]:
                raise SidrecError(f"encoder {encoder} changed since `{command}` encoded the "
                                  "catalogue, so new items would not match its vectors; "
                                  f"restore it, or re-run `{command}` and retrain")
            self._encoder_checked = seen
        return encoder

    def codes(self, vectors: np.ndarray) -> np.ndarray:
        """The fitted tokenizer's codes [m, L] of new vectors [m, d] (no refitting)."""
        from sidrec.tokenize import load_tokenizer

        seen = folder_stamp(self.run.tokenizer)
        if self._tokenizer is None or seen != self._tokenizer_checked:
            check_tokenizer(self.run.tokenizer, self.run.tokenizer_info, self.run.root)
            self._tokenizer = load_tokenizer(self.run.tokenizer, device="cpu")
            self._tokenizer_checked = seen
        return self._tokenizer.encode(vectors)


def encode(encoder: Encoder, catalogue: Catalogue, ids: list[str], texts: list[str],
           given: Sequence[np.ndarray | None] = ()) -> NewItems:
    """Vectors and SIDs of new items for `catalogue` (whose SIDs give the collision tokens);
    `given`: each item's own vector (`given_vectors`), used as is; the others are encoded."""
    own = list(given) or [None] * len(ids)
    rows = [n for n, v in enumerate(own) if v is None]
    if rows and (why := encoder.no_text()) is not None:
        raise ItemError(rows[0], f" ({ids[rows[0]]!r}): no vector; {why}", field="vector")
    encoded = iter(encoder.vectors([texts[n] for n in rows]) if rows else [])
    vectors = np.stack([next(encoded) if v is None else v for v in own]) if ids else \
        np.zeros((0, 0), np.float32)
    return with_sids(encoder, catalogue, NewItems(tuple(ids), tuple(texts), vectors, None))


def encode_again(encoder: Encoder, catalogue: Catalogue, items: NewItems) -> NewItems:
    """Stored `items` encoded again from their text: the run was re-embedded since."""
    try:
        return encode(encoder, catalogue, list(items.ids), list(items.texts))
    except SidrecError as e:  # vectors brought with the items: not ours to make again
        raise SidrecError(f"{encoder.run.added_items} (the run was re-embedded since its items "
                          f"were added): {e}; add them again") from None


def with_sids(encoder: Encoder, catalogue: Catalogue, items: NewItems) -> NewItems:
    """`items` with the SIDs of `catalogue`'s tokenizer, from their vectors (no SIDs when
    the catalogue has none). For items stored with another model's SID set, too."""
    sids = None
    if catalogue.sids is not None and len(items):
        existing = catalogue.sids.cpu().numpy()
        codes = encoder.codes(items.vectors)
        sizes = np.asarray(catalogue.codebook_sizes[:codes.shape[1]])
        if (outside := ((codes < 0) | (codes >= sizes)).any(axis=1)).any():
            row = int(outside.argmax())  # e.g. values so large their distances overflow
            raise ItemError(row, f" ({items.ids[row]!r}): the tokenizer cannot place its "
                            "vector; give one of the scale of the run's own", field="vector")
        limit = catalogue.codebook_sizes[-1]
        sids = extend_sids(existing, codes)
        if (sids[:, -1] >= limit).any():
            text = None if catalogue.text_emb is None else catalogue.text_emb.cpu().numpy()
            sids = place(existing, text, codes, items.vectors, limit, list(items.ids))
    return NewItems(items.ids, items.texts, items.vectors, sids)
