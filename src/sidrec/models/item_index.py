"""Maximum inner-product / cosine search over item vectors (`ItemIndex`), exact or through a
faiss IVF-Flat index whose probe is measured on the queries it will serve.

Below `exact_below` rows (200k) the search is exact: a matrix product, chunked so that a
[B, N] score matrix never has to fit in memory. There dense top-10 runs at thousands of
users/s on 2 cores and exact search has recall 1, so no index is built.

Above it, an IVF-Flat index (k-means cells, nlist = 4 sqrt(N); each query scores exactly
the items of its `nprobe` nearest cells) *calibrates* itself: on a sample of queries it
finds the smallest nprobe whose recall of the exact top-k (k = 10) reaches
`TARGET_RECALL` = 0.99, doubling and then bisecting (recall only grows with nprobe), adds
a quarter (`HEADROOM`), and times that search against exact search on the same queries.
The IVF is kept only when that nprobe scans at most `MAX_SCANNED` = 1/8 of the cells;
otherwise the index drops it and stays exact. The crossover is a count, not a timing, so
that the same data and queries give the same answers on any machine (a timed rule would
let a busy moment decide between two searches that differ in a few results); it rests on
the measurements below, where an IVF scanning 1/20 of its cells ran at 4.4x exact and
one scanning 1/8 would be about 1.8x. `choice` records what was picked and why (`Choice`:
nlist, nprobe, the measured recall and, for the record, the speed-up timed on the
calibration queries).

The calibration queries matter: how many cells a query needs depends on how close it lies
to its items. An untrained model's queries lie far from every item (cosine ~0.45 to the
nearest): there 1/4 of the cells of 100k items found 0.990 of the top-10, at about the
cost of exact search. A trained model's queries sit near their items. A builder that has
a sample passes it (`queries=`, as benchmarks/bench_scale.py does); otherwise the index
searches exactly until it has seen `CALIBRATION_QUERIES` real queries and calibrates on
those: the only sample sure to look like the queries to come, and until then every answer
is exact. An IVF that missed the target on its calibration queries is never kept (an
explicit `probe`, for sweeps and tests, skips the calibration).

Measured on the synthetic catalogue (`sidrec data synth`, 100k items; item vectors a
random 384 -> 256 -> 64 Dense projection; queries the mean of a user's last 5 items'
vectors, cosine ~0.81 to the nearest item; 1 thread, 512 queries to calibrate, 512 others
to measure): exact 2,150 queries/s. IVF with 1,265 cells (4 sqrt N): nprobe 32 found
0.987 of the top-10 at 7.1x exact, 64 0.9955 at 4.4x; 2,530 cells: 64, 0.994 at 6.0x
(build 3.2 s against 1.0 s); 5,060 cells: 64, 0.992 at 6.3x (build 7.1 s). Calibrated: 42
of 1,265 cells, 0.994 on the held-out queries at 6.8x exact (SASRec-style dot products:
73 cells, 0.992 at 4.2x; COBRA's `cpu` item encoder, 384 -> 128 -> 64 at its init: 64
cells, 0.994 at 4.9x with k = 60). HNSW (faiss IndexHNSWFlat, inner product) on the same
queries: M 16, efSearch 256, 0.991 at 2.7x; M 32, 0.993 at 1.8x. So IVF-Flat with
4 sqrt(N) cells: no slower than more cells at the target, the cheapest to build (at 1 M
items k-means fits 4,000 cells on a 128k sample, 10 iterations; then every row is
assigned to its nearest cell), and adding an item is one nearest-cell lookup (the cells
are not refitted).
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

EXACT_BELOW = 200_000  # ItemIndex searches fewer rows than this exactly
EXACT_CHUNK = 65_536  # items per matrix product of the exact search
TARGET_RECALL = 0.99  # of the exact top-k, on the calibration queries
RECALL_AT = 10  # the k of that recall
CALIBRATION_QUERIES = 256  # real queries searched exactly before an index calibrates on them
# An IVF that needs more than this share of its cells for the target recall is dropped:
# scanning a cell's rows costs ~4.5x what exact search's matrix product spends per row
# (100k items, 1 thread: 1/20 of the cells at 4.4x exact), so 1/8 is about 1.8x exact and
# ~1/4.5 no faster at all.
MAX_SCANNED = 1 / 8
# The kept nprobe is this times the smallest that reached the target on the calibration
# queries: on queries it had not seen, the smallest one fell just short (100k items:
# 0.989 held out where 512 calibration queries measured 0.990).
HEADROOM = 1.25


def cosine_topk(
    queries: torch.Tensor, items: torch.Tensor, k: int, allowed: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by cosine. queries [B, d], items [N, d], allowed [B, N] or [N] bool."""
    scores = F.normalize(queries, dim=-1) @ F.normalize(items, dim=-1).T  # (B, N)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    top = torch.topk(scores, min(k, items.shape[0]), dim=1)
    return top.indices, top.values


def exact_topk(queries: torch.Tensor, items: torch.Tensor, k: int, chunk: int = EXACT_CHUNK,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by inner product, `chunk` items at a time (memory [B, chunk], not
    [B, N]): queries [B, d], items [N, d] -> (rows [B, min(k, N)], scores)."""
    best_rows, best = None, None
    for lo in range(0, len(items), chunk):
        scores = queries @ items[lo : lo + chunk].T  # (B, C)
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        rows, vals = top.indices + lo, top.values
        if best is not None:
            vals, pick = torch.cat([best, vals], 1).topk(min(k, best.shape[1] + vals.shape[1]),
                                                        dim=1)
            rows = torch.cat([best_rows, rows], 1).gather(1, pick)
        best_rows, best = rows, vals
    if best is None:
        empty = queries.new_zeros(len(queries), 0)
        return empty.long(), empty
    return best_rows, best


def hits_of(got: torch.Tensor, want: torch.Tensor) -> tuple[int, int]:
    """(how many of the ids want [B, k] got [B, k'] holds in the same row, how many ids
    want holds); -1 in want is no id."""
    valid = want >= 0
    hits = (want[:, :, None] == got[:, None, :]).any(2) & valid
    return int(hits.sum()), int(valid.sum())


def recall_of(got: torch.Tensor, want: torch.Tensor) -> float:
    """Share of the ids want [B, k] (-1 ignored) that got [B, k'] holds in the same row."""
    hits, total = hits_of(got, want)
    return hits / max(total, 1)


@dataclass(frozen=True)
class Choice:
    """How an `ItemIndex` searches, and the measurement that chose it."""

    kind: str  # "exact" or "ivf"
    nlist: int = 0  # IVF cells
    nprobe: int = 0  # cells a query scans
    recall: float | None = None  # of the exact top-k on the calibration queries (None: not
    speedup: float | None = None  # measured); exact seconds / IVF seconds on those queries
    queries: int = 0  # calibration queries
    seconds: float = 0.0  # the calibration's own time

    def __str__(self) -> str:
        if not self.nlist:
            return self.kind
        ivf = f"{self.nprobe}/{self.nlist} cells"
        if self.recall is not None:
            ivf += f", recall@{RECALL_AT} {self.recall:.4f}, {self.speedup:.1f}x exact"
        return f"ivf {ivf}" if self.kind == "ivf" else f"exact (an IVF at {ivf})"


class ItemIndex:
    """Maximum inner-product search over item vectors: the best k ids and scores per query.

    vectors [N, d] are L2-normalised first (`normalize=True`, the default: cosine, as
    COBRA and LIGER score) or searched as they are (dot products, SASRec-style); ids [N]
    is the item id of each row (default 0..N-1). Below `exact_below` rows the search is
    exact; above it, a faiss IVF-Flat index is built and calibrated (module docstring) on
    `queries` [Q, d] when given, else on the first `CALIBRATION_QUERIES` searched (exact
    until then); a `probe` fraction of the cells fixes the probe instead. `choice` says what
    it searches with. `add` appends rows in place (an IVF row goes to its nearest cell).
    """

    def __init__(self, vectors: torch.Tensor, ids: torch.Tensor | None = None,
                 exact_below: int = EXACT_BELOW, normalize: bool = True,
                 probe: float | None = None, queries: torch.Tensor | None = None,
                 seed: int = 0) -> None:
        self.normalize = normalize
        self.vectors = self._prepare(vectors)  # exact search's rows (dropped for an IVF)
        self.ids = (torch.arange(len(vectors), device=vectors.device) if ids is None
                    else torch.as_tensor(ids).long().to(vectors.device))
        self._faiss = None
        self._pending: list[torch.Tensor] = []  # queries searched before calibrating
        self.choice: Choice | None = Choice("exact")  # None: IVF, not calibrated yet
        if len(vectors) < exact_below:
            return
        import faiss

        n, d = self.vectors.shape
        nlist = max(1, min(n // 32, round(4 * math.sqrt(n))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter, index.cp.seed = 10, seed
        index.cp.max_points_per_centroid = 32  # k-means on a sample of 32 per cell
        index.cp.min_points_per_centroid = 1  # small pools are fine (no warning)
        x = self.vectors.cpu().numpy()
        index.train(x)
        index.add_with_ids(x, self.ids.cpu().numpy())
        self._faiss, self.choice = index, None  # exact search until calibrated
        if probe is not None:
            self._keep_ivf(Choice("ivf", nlist, max(1, math.ceil(probe * nlist))))
        elif queries is not None:
            self.calibrate(queries)

    @property
    def exact(self) -> bool:
        """Whether the index holds no IVF (searches exactly from now on)."""
        return self._faiss is None

    def _prepare(self, vectors: torch.Tensor) -> torch.Tensor:
        vectors = vectors.detach().float()
        return F.normalize(vectors, dim=-1) if self.normalize else vectors.contiguous()

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, vectors: torch.Tensor, ids: torch.Tensor) -> None:
        """Append rows vectors [m, d] with item ids [m] (in place)."""
        ids = torch.as_tensor(ids).long().to(self.ids.device)
        x = self._prepare(vectors).to(self.ids.device)
        if self._faiss is not None:
            self._faiss.add_with_ids(x.cpu().numpy(), ids.cpu().numpy())
        if self.choice is None or self.choice.kind == "exact":  # exact search reads them
            self.vectors = torch.cat([self.vectors, x])
        self.ids = torch.cat([self.ids, ids])

    def search(self, queries: torch.Tensor, k: int, probe: float | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [B, k'], scores [B, k']) of the best rows, best first: cosine (or dot
        products) to queries [B, d]. Exact: k' = min(k, N); IVF (scanning the calibrated
        cells, or the `probe` fraction of them when given): k' = k, ids -1 and scores -inf
        where fewer than k rows were found."""
        if self._faiss is not None and probe is not None:
            return self._ivf(queries, k, max(1, math.ceil(probe * self._faiss.nlist)))
        if self.choice is not None and self.choice.kind == "ivf":
            return self._ivf(queries, k, self.choice.nprobe)
        found = self._exact(queries, k)
        if self.choice is None:  # these queries are what the index will serve
            self._pending.append(queries.detach().float().cpu())
            if sum(len(q) for q in self._pending) >= CALIBRATION_QUERIES:
                self.calibrate(torch.cat(self._pending))
        return found

    def _exact(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.normalize and len(self.vectors) <= EXACT_CHUNK:  # one product, as before
            rows, scores = cosine_topk(queries, self.vectors.to(queries.device), k)
        else:
            q = F.normalize(queries, dim=-1) if self.normalize else queries
            rows, scores = exact_topk(q, self.vectors.to(queries.device), k)
        return self.ids.to(queries.device)[rows], scores

    def _ivf(self, queries: torch.Tensor, k: int, nprobe: int,
             ) -> tuple[torch.Tensor, torch.Tensor]:
        q = queries.detach().float()
        q = (F.normalize(q, dim=-1) if self.normalize else q).cpu().numpy()
        self._faiss.nprobe = nprobe
        scores, ids = self._faiss.search(q, k)
        ids_t, scores_t = torch.from_numpy(ids), torch.from_numpy(scores)
        scores_t = scores_t.masked_fill(ids_t < 0, float("-inf"))
        return ids_t.to(queries.device), scores_t.to(queries.device)

    def calibrate(self, queries: torch.Tensor, k: int = RECALL_AT,
                  target: float = TARGET_RECALL) -> Choice:
        """Pick the smallest nprobe whose recall@k of exact search on queries [Q, d]
        reaches `target`; keep the IVF at it (with `HEADROOM`) if it scans at most
        `MAX_SCANNED` of the cells, else drop the IVF and stay exact. Returns (and records
        as `choice`) the pick; an index without an IVF has nothing to pick."""
        if self._faiss is None:
            return self.choice
        start = time.perf_counter()
        nlist = self._faiss.nlist
        most = max(1, int(nlist * MAX_SCANNED))
        want, t_exact = _best_of(lambda: self._exact(queries, k)[0].cpu())
        recalls: dict[int, float] = {}

        def recall(nprobe: int) -> float:
            if nprobe not in recalls:
                recalls[nprobe] = recall_of(self._ivf(queries, k, nprobe)[0].cpu(), want)
            return recalls[nprobe]

        # Double nprobe until the target is met or past `most` cells (recall only grows
        # with nprobe), then bisect between the last two.
        low, high = 0, 1
        while recall(high) < target and high < most:
            low, high = high, min(2 * high, most)
        reached = recall(high) >= target
        while reached and high - low > 1:
            mid = (low + high) // 2
            low, high = (low, mid) if recall(mid) >= target else (mid, high)
        if reached:  # headroom for queries it has not seen
            high = min(most, math.ceil(high * HEADROOM))
        _, seconds = _best_of(lambda: self._ivf(queries, k, high)[0].cpu())
        kind = "ivf" if reached else "exact"
        choice = Choice(kind, nlist, high, recall(high), t_exact / max(seconds, 1e-9),
                        len(queries), time.perf_counter() - start)
        if kind == "ivf":
            self._keep_ivf(choice)
        else:  # the crossover: the IVF would scan too much of itself for the target
            self._faiss, self.choice = None, choice
        self._pending = []
        return choice

    def _keep_ivf(self, choice: Choice) -> None:
        self.choice = choice
        self.vectors = self.vectors[:0]  # faiss holds the rows

    @classmethod
    def of(cls, vectors: torch.Tensor, queries: torch.Tensor | None = None) -> ItemIndex:
        """The default index of `vectors`, built once per tensor and reused until the tensor
        is modified in place or freed (COBRA's cached item vectors: a 1 M-item IVF index
        takes a minute to build, so it must not be rebuilt per request). `queries`
        calibrate it when it is built here (see the class)."""
        key = id(vectors)
        hit = _BUILT.get(key)
        if hit is not None and hit[0]() is vectors and hit[1] == vectors._version:
            return hit[2]
        index = cls(vectors, queries=queries)
        _BUILT[key] = (weakref.ref(vectors, lambda _, k=key: _BUILT.pop(k, None)),
                       vectors._version, index)
        return index


# id(tensor) -> (weak reference to it, its version when indexed, the index)
_BUILT: dict[int, tuple[weakref.ref, int, ItemIndex]] = {}


def _best_of(fn: Callable[[], torch.Tensor], repeats: int = 2) -> tuple[torch.Tensor, float]:
    """(fn()'s result, its shortest time of `repeats` runs)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best
