"""Items added to a trained model's catalogue after training, and their file in the run.

A new item's text goes through the run's own encoder (the one `embeddings.json` names), or
it brings its own `vector` (a run embedded from a vectors file must: `given_vectors`), and,
when the run has SIDs, through its fitted tokenizer (never refitted), taking the next
free collision token of its prefix (`sidrec.tokenize.extend_sids`): the path the cold
items of the split took. No model is retrained; `grow` appends them to a `Catalogue`.

`runs/<run>/added_items.parquet` (`RunDir.added_items`) holds every added item, in the
order added, so that `sidrec.load` (and so a restarted `sidrec serve`) serves them too:

    id      string          original item id (unique among the run's items)
    text    string          the item text, as given
    vector  float32[d]      its text vector
    sid     int64[L+1]      its full SID (null when the run has no SIDs)

The file's metadata records the encoder and the hashes of `embeddings.npy` and
`sids.npy` the rows were computed against. When the encoder or the embeddings differ from
the run's (it was re-embedded), the items are encoded again from their text; when only the
SIDs differ (the run was re-tokenized, or the reader is a model with its own SID set,
`RunDir.with_sids`), their SIDs are computed again from the stored vectors.

The file is rewritten whole and atomically on each add (temporary file, then rename), so
a reader sees all of an add or none of it; `lock` serialises writers across processes
(several servers or Ray Serve replicas on one run directory).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sidrec.artifacts import check_tokenizer, read_record
from sidrec.errors import ItemError, SidrecError
from sidrec.io import atomic_path, exclusive, folder_stamp, hash_file
from sidrec.models.base import Catalogue
from sidrec.run import RunDir
from sidrec.tokenize.sids import extend_sids

FORMAT = 1


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


def no_items(dim: int = 0) -> NewItems:
    return NewItems((), (), np.zeros((0, dim), np.float32), None)


def check_new(items: Sequence[Any], known: dict[str, int],
              stored: bool = False) -> tuple[list[str], list[str]]:
    """(ids, texts) of `items` ([{"id": ..., "text": ...}]); a duplicate id (with the
    catalogue `known` or within `items`) or an empty text is an `ItemError`. `stored`:
    items read back from the run, added before the rule on spaces around ids existed."""
    ids: list[str] = []
    texts: list[str] = []
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
        if item_id in known or item_id in ids:
            raise ItemError(n, f": item id {item_id!r} already exists; ids are unique",
                            duplicate=True)
        if not text:
            raise ItemError(n, f" ({item_id!r}): empty text; give the item a text")
        ids.append(item_id)
        texts.append(text)
    return ids, texts


class Encoder:
    """The run's text encoder and tokenizer, loaded once on first use."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self._tokenizer: Any = None
        # what the last checks saw: a check is repeated when the files have changed since
        self._encoder_checked: tuple | None = None
        self._tokenizer_checked: tuple | None = None

    def vectors(self, texts: list[str]) -> np.ndarray:
        """[len(texts), d] float32 with the encoder that made `embeddings.npy`."""
        from sidrec.embed import EmbedConfig, encode_texts

        encoder = self._checked_encoder()
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
        from sidrec.embed import encoder_identity

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


def unreachable(model: Any) -> str | None:
    """Why `model` (a `Recommender`) never returns added items with its own inference
    settings, or None: a beam over the SIDs of warm items only (TIGER's default) cannot
    reach an item that was not in training, though it is stored and its SID is known."""
    inference = model.inference
    if getattr(inference, "include_cold", True) or getattr(inference, "mode", "") in (
            "hybrid", "dense"):
        return None
    return (f"model {model.name!r} decodes only items seen in training (include_cold=False), "
            "so it will not return the added items; pass include_cold=True (an inference "
            "setting) to let its beam reach them")


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
        limit = catalogue.codebook_sizes[-1]
        sids = extend_sids(existing, codes)
        if (sids[:, -1] >= limit).any():
            text = None if catalogue.text_emb is None else catalogue.text_emb.cpu().numpy()
            sids = place(existing, text, codes, items.vectors, limit, list(items.ids))
    return NewItems(items.ids, items.texts, items.vectors, sids)


def place(existing: np.ndarray, existing_vectors: np.ndarray | None, codes: np.ndarray,
          vectors: np.ndarray, limit: int, ids: list[str]) -> np.ndarray:
    """Full SIDs [m, L+1] for new codes [m, L] when some prefixes are full.

    The trained model tells at most `limit` items of one prefix apart (its collision-token
    vocabulary). A new item whose prefix already holds that many takes a free place in the
    prefix nearest to it instead: the one sharing the most leading codes with its own, then
    holding the item whose text vector is the most similar (cosine). Items are placed in
    order, so several new items share room fairly. Only a catalogue with every prefix full
    refuses an item.
    """
    n_codes = codes.shape[1]
    prefixes, group = np.unique(existing[:, :n_codes], axis=0, return_inverse=True)
    group = group.reshape(-1)
    free = np.zeros(len(prefixes), dtype=np.int64)  # next collision number per prefix
    np.maximum.at(free, group, existing[:, n_codes] + 1)
    index = {tuple(p): g for g, p in enumerate(prefixes.tolist())}
    keys = prefixes.tolist()
    rows = existing[:, :n_codes]
    text = existing_vectors is not None
    unit = _unit(existing_vectors) if text else np.zeros((len(existing), 1), np.float32)
    out = np.empty((len(codes), n_codes + 1), dtype=np.int64)
    for i, code in enumerate(codes.tolist()):
        g = index.get(tuple(code))
        if g is not None and free[g] >= limit:  # full: the nearest prefix with room
            shared = np.cumprod(rows == np.asarray(code), axis=1).sum(axis=1)  # (n,)
            similar = unit @ (_unit(vectors[i : i + 1])[0] if text else np.zeros(1))  # (n,)
            score = np.where(free[group] < limit, shared + (similar + 1) / 4, -np.inf)
            if not np.isfinite(score.max()):
                raise ItemError(i, f" ({ids[i]!r}): every semantic-ID prefix already holds "
                                f"{limit} items, the most the trained model can tell apart; "
                                "retrain with the grown catalogue")
            g = int(group[int(score.argmax())])
            code = keys[g]
        if g is None:  # a prefix no item had
            g = len(keys)
            index[tuple(code)] = g
            keys.append(code)
            free = np.append(free, 0)
        out[i] = [*code, free[g]]
        free[g] += 1
        rows = np.vstack([rows, np.asarray(code)[None]])
        group = np.append(group, g)
        unit = np.vstack([unit, _unit(vectors[i : i + 1]) if text else np.zeros((1, 1))])
    return out


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows [n, d] scaled to unit length."""
    v = np.asarray(vectors, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


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


# ---------------------------------------------------------------- the file


def fingerprint(run: RunDir) -> dict[str, str | None]:
    """What added items are computed against: the encoder and the base artifacts."""
    encoder = read_record(run.embeddings_info, f"sidrec embed {run.root}").get("encoder") \
        if run.embeddings_info.is_file() else None
    return {
        "encoder": encoder,
        "embeddings": hash_file(run.embeddings) if run.embeddings.is_file() else None,
        "sids": hash_file(run.sids) if run.sids.is_file() else None,
    }


def lock(run: RunDir) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on the run's added items, across processes (flock)."""
    return exclusive(run.added_items_lock, "the added items")


def write(run: RunDir, items: NewItems, against: dict[str, str | None]) -> None:
    """Rewrite `added_items.parquet` with `items` (all of them), atomically; `against` is
    the run's `fingerprint` the items were computed for."""
    d = items.vectors.shape[1] if items.vectors.ndim == 2 else 0
    columns: dict[str, Any] = {
        "id": pa.array(list(items.ids), pa.string()),
        "text": pa.array(list(items.texts), pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(items.vectors.astype(np.float32).ravel(), pa.float32()), d),
    }
    if items.sids is not None:
        width = items.sids.shape[1]
        columns["sid"] = pa.FixedSizeListArray.from_arrays(
            pa.array(items.sids.astype(np.int64).ravel(), pa.int64()), width)
    meta = {"format": FORMAT, "dim": d, "fingerprint": against}
    table = pa.table(columns).replace_schema_metadata({"sidrec": json.dumps(meta)})
    try:
        with atomic_path(run.added_items) as tmp:
            pq.write_table(table, tmp)
    except OSError as e:
        raise SidrecError(f"{run.added_items}: cannot persist the added items ({e})") from None


def read(run: RunDir) -> tuple[NewItems, dict[str, Any]] | None:
    """(the added items, the file's metadata), or None when the run has none."""
    path = run.added_items
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[b"sidrec"])
        d = int(meta["dim"])
        vectors = table.column("vector").combine_chunks().flatten().to_numpy()
        sids = None
        if "sid" in table.column_names:
            sid_col = table.column("sid").combine_chunks()
            sids = sid_col.flatten().to_numpy().astype(np.int64).reshape(len(table), -1)
        items = NewItems(tuple(table.column("id").to_pylist()),
                         tuple(table.column("text").to_pylist()),
                         vectors.astype(np.float32).reshape(len(table), d), sids)
    except (OSError, KeyError, ValueError, TypeError, pa.ArrowException) as e:
        raise SidrecError(f"{path}: unreadable added items ({type(e).__name__}: {e}); move it "
                          "away to serve without them") from None
    if meta.get("format") != FORMAT:
        raise SidrecError(f"{path}: format {meta.get('format')!r}, not {FORMAT}; move it away")
    return items, meta
