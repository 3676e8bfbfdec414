"""A dense head's item vectors, kept between requests, and a faiss index over a pool of them.

A text-projection dense head (LIGER's, Dense (SID)'s: `heads.DenseHead`) scores items by
their projected text, mlp(text_emb) [n_items, d] (COBRA's dense part by its item encoder's
output, `cobra_parts.DenseVectors`). Projecting the whole catalogue on every
request costs n_items x (d_text x hidden + hidden x d) multiply-adds: 0.1 TFLOP at 1 M
items for LIGER's `cpu` preset (384 -> 128 -> 64), seconds per batch on a CPU, for vectors
that only change when the weights or the catalogue do. `ItemVectors` computes them once
(65,536 items at a time, so a small catalogue gets exactly the one-shot values) and keeps
them until the head's parameters or the text embeddings change (their tensors' version
counters, which every in-place update such as an optimiser step or `load_state_dict`
bumps). When items are added after training (`items_added`), the new rows alone are
projected, into a buffer with spare room, so adding m items costs O(m).

`pool_index` is an `ItemIndex` (exact below its `exact_below`, else faiss IVF calibrated on
the first queries it serves, or exact where it would scan too much of itself) over the
unit vectors of a pool of items, e.g. LIGER's cold items; it is extended in place with the
pool's new members when items are added.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from sidrec.models.item_index import ItemIndex

CHUNK = 65_536  # items per projection call


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch and faiss on one thread for the few rows of an add: on a busy 2-core machine
    their thread pools made projecting and indexing 1,000 new items 4-6x slower (measured
    at 1 M items: 0.30 s vs 0.05 s per add); the pools are restored afterwards."""
    import faiss

    before, before_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        faiss.omp_set_num_threads(before_faiss)


def _key(params: Iterable[torch.Tensor], *tensors: torch.Tensor) -> tuple[Any, ...]:
    """What a cached result depends on: identity, version and shape of each tensor."""
    return tuple((t.data_ptr(), t._version, tuple(t.shape), str(t.device))
                 for t in (*params, *tensors))


class ItemVectors:
    """project(text_emb) [n_items, d], cached for inference; see the module docstring.

    project: text embeddings [m, d_text] -> item vectors [m, d]; params: the parameters it
    reads (their versions decide whether the cache is still good); chunk: items per
    `project` call.
    """

    def __init__(self, project: Callable[[torch.Tensor], torch.Tensor],
                 params: Callable[[], Iterable[torch.Tensor]], chunk: int = CHUNK) -> None:
        self.project, self.params, self.chunk = project, params, chunk
        self._key: tuple[Any, ...] | None = None
        self._buf: torch.Tensor | None = None  # [capacity, d], the first n rows in use
        self._n = 0
        # One view object while the vectors stand: `ItemIndex.of` (COBRA's global search)
        # keys its cached index by the tensor's identity, so a fresh view per call would
        # rebuild the index for every batch.
        self._view: torch.Tensor | None = None
        self._pool: tuple[tuple[Any, ...], ItemIndex] | None = None

    @torch.no_grad()
    def __call__(self, text_emb: torch.Tensor) -> torch.Tensor:
        """Projected (not normalised) vectors of every item [n_items, d]."""
        key = _key(self.params(), text_emb)
        if key != self._key:
            n = len(text_emb)
            self._buf = None
            for lo in range(0, n, self.chunk):
                rows = self.project(text_emb[lo : lo + self.chunk])
                if self._buf is None:  # room for an eighth more: adds rarely reallocate
                    self._buf = rows.new_empty(n + n // 8 + 1024, rows.shape[1])
                self._buf[lo : lo + len(rows)] = rows
            self._n, self._key, self._pool, self._view = n, key, None, None
        if self._buf is None:
            return text_emb.new_zeros(0, 0)
        if self._view is None:
            self._view = self._buf[: self._n]
        return self._view

    def pool_index(self, text_emb: torch.Tensor, pool: torch.Tensor,
                   exact_below: int = 0) -> ItemIndex:
        """Index over the unit vectors of the items where pool [n_items] is True."""
        vectors = self(text_emb)
        key = (self._key, _key((), pool))
        if self._pool is None or self._pool[0] != key:
            ids = pool.nonzero().flatten()
            index = ItemIndex(F.normalize(vectors[ids], dim=-1), ids=ids,
                              exact_below=exact_below)
            self._pool = (key, index)
        return self._pool[1]

    @torch.no_grad()
    def items_added(self, text_emb: torch.Tensor, first_new: int,
                    pool: torch.Tensor | None = None) -> None:
        """Items `first_new`.. of text_emb [n_items, d_text] (and of pool [n_items]) were
        appended, the rows before them unchanged (`Recommender.items_added`). A cache of
        exactly those first rows, made with the current weights, projects only the new
        rows (and adds the new pool members to the index); anything else is dropped and
        recomputed on the next call."""
        n = first_new
        if (n == 0 or self._buf is None or self._n != n or self._key is None
                or self._key[:-1] != _key(self.params())):
            self._key, self._pool, self._view = None, None, None
            return
        with one_thread():
            rows = self.project(text_emb[n:]) if len(text_emb) > n else self._buf[:0]
        need = n + len(rows)
        if need > len(self._buf):  # grow by a quarter: m added items cost O(m), amortised
            buf = self._buf.new_empty(max(need, len(self._buf) + len(self._buf) // 4),
                                      self._buf.shape[1])
            buf[:n] = self._buf[:n]
            self._buf = buf
        self._buf[n:need] = rows  # rows below n are never written: old views stay valid
        # the pool index is kept when it was built on these vectors (and a pool is given)
        kept = self._pool is not None and self._pool[0][0] == self._key and pool is not None
        index = self._pool[1] if kept else None
        self._n, self._key, self._pool = need, _key(self.params(), text_emb), None
        self._view = None
        if index is None:
            return
        ids = pool[n:].nonzero().flatten() + n
        if len(ids):
            with one_thread():
                index.add(F.normalize(self._buf[ids], dim=-1), ids)
        self._pool = ((self._key, _key((), pool)), index)
