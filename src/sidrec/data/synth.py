"""`sidrec data synth`: a synthetic catalogue of any size, for measuring how sidrec scales.

Deterministic for a seed. What it makes, and why it looks like real data where that
matters for cost:

- Items belong to fine clusters ("sub-categories"), clusters to topics ("categories").
  Each item has a unit 384-d vector (the width of all-MiniLM-L6-v2's sentence vectors)
  made of a shared direction, its topic's and its cluster's directions, and its own
  variation along a few directions with a decaying spectrum (`item_vectors`): cosine
  ~0.7 within a cluster, ~0.07 across, so residual k-means has structure at every level,
  as it has on text embeddings. A short text each (`Title: ...; Categories: ...; Brand:
  ...`).
- Popularity is Zipf (weight of the item of popularity rank r is r^-zipf).
- A user's sequence walks a cluster-transition chain: the next item stays in the
  cluster with probability `stay`, else moves to one of the cluster's few successor
  clusters, else jumps anywhere (clusters weighted by their popularity); within a
  cluster, items are drawn by popularity. A sequence model can learn the transitions.
- Every item occurs at least once before its user's last two items (where leave-one-out
  trains): an item never drawn there replaces such a draw of another item of its own
  cluster (the chain over clusters is untouched). So no item is cold by accident, and a
  `holdout` split's cold pool is its `cold_fraction` of the catalogue.
- Sizes: `interactions_per_item` x n_items interactions (10 by default, so 10 M at 1 M
  items), over users with `min_length` + geometric extra items (mean `mean_length`).

Files written by `write_synth(out, cfg)`: `interactions.parquet` (user_id, item_id,
timestamp), `items.parquet` (item_id, title, categories, brand) -- the generic tables
`sidrec data prepare` reads -- plus `vectors.npy` [n_items, 384] (row i = item i) and
`synth.json`. `attach_embeddings(run_dir, out)` then writes a prepared run's
`embeddings.npy` + `embeddings.json` (encoder "synthetic") from `vectors.npy`, in the
run's dense item order, instead of running a text encoder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sidrec.config import to_dict
from sidrec.errors import SidrecError
from sidrec.io import atomic_path, hash_obj, reusable_record, save_npy, write_json

SYNTH_ENCODER = "synthetic"
VERSION = 2  # bump when the generator changes what a seed gives: cached folders are redone
_ADJECTIVES = ("red", "compact", "classic", "organic", "deluxe", "mini", "pro", "soft",
               "vintage", "smart", "light", "bold", "pure", "rapid", "silent", "golden")
_NOUNS = ("lamp", "serum", "kettle", "novel", "jacket", "speaker", "blender", "puzzle",
          "backpack", "candle", "monitor", "sneaker", "teapot", "drone", "notebook", "scarf")


@dataclass(frozen=True)
class SynthConfig:
    n_items: int = 10_000
    interactions_per_item: float = 10.0  # interactions = this x n_items
    mean_length: float = 12.0  # mean interactions per user
    min_length: int = 5  # every user has at least this many (leave-one-out needs 3)
    dim: int = 384  # all-MiniLM-L6-v2's width
    items_per_cluster: int = 100  # clusters = n_items / this (at least 8)
    clusters_per_topic: int = 16
    zipf: float = 1.0  # popularity exponent
    stay: float = 0.5  # P(next item in the same cluster)
    successors: int = 4  # clusters a cluster usually moves on to
    jump: float = 0.1  # P(a random cluster) when moving on
    seed: int = 0

    def check(self) -> None:
        if self.n_items < 16:
            raise SidrecError(f"synth: n_items must be >= 16, got {self.n_items}")
        if self.min_length < 3 or self.mean_length < self.min_length:
            raise SidrecError("synth: need min_length >= 3 and mean_length >= min_length")
        if not (0 <= self.stay < 1 and 0 <= self.jump <= 1 and self.zipf >= 0):
            raise SidrecError("synth: stay must be in [0, 1), jump in [0, 1], zipf >= 0")
        if self.interactions_per_item <= 0 or self.dim < 2 or self.items_per_cluster < 1:
            raise SidrecError("synth: interactions_per_item, dim and items_per_cluster "
                              "must be positive")


@dataclass
class SynthData:
    vectors: np.ndarray  # [n_items, dim] float32, unit rows
    cluster: np.ndarray  # [n_items] int64
    topic: np.ndarray  # [n_clusters] int64
    weight: np.ndarray  # [n_items] float64 Zipf popularity weight
    users: np.ndarray  # [n_interactions] int64, user-major
    items: np.ndarray  # [n_interactions] int64
    timestamps: np.ndarray  # [n_interactions] int64 seconds, increasing per user


def generate(cfg: SynthConfig) -> SynthData:
    """The whole synthetic catalogue and its interactions, in memory."""
    cfg.check()
    rng = np.random.default_rng(cfg.seed)
    n = cfg.n_items
    n_clusters = max(8, n // cfg.items_per_cluster)
    n_topics = max(2, n_clusters // cfg.clusters_per_topic)
    cluster = np.sort(rng.integers(0, n_clusters, n))  # items of a cluster are contiguous
    cluster[:n_clusters] = np.arange(n_clusters)  # every cluster has an item
    cluster.sort()
    topic = rng.integers(0, n_topics, n_clusters)
    vectors = item_vectors(rng, cluster, topic, n_topics, cfg.dim)
    rank = rng.permutation(n)  # popularity rank of each item, independent of its id
    weight = (rank + 1.0) ** -cfg.zipf
    users, items = _sequences(rng, cfg, cluster, weight, n_clusters)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    # Draws a leave-one-out split trains on: all but each user's last two.
    trainable = np.arange(len(users)) < np.repeat(ends - 2, ends - starts)
    items = _cover(rng, items, trainable, cluster, n)
    steps = rng.exponential(3600.0, len(users)).astype(np.int64) + 1
    first = rng.integers(1_500_000_000, 1_600_000_000, len(starts))
    time_ = np.cumsum(steps)
    offset = np.repeat(first - time_[starts], np.diff(np.r_[starts, len(users)]))
    return SynthData(vectors, cluster, topic, weight, users, items, time_ + offset)


def item_vectors(rng: np.random.Generator, cluster: np.ndarray, topic: np.ndarray,
                 n_topics: int, dim: int, chunk: int = 65_536, rank: int = 48) -> np.ndarray:
    """Unit vectors [n, dim]: shared + topic + cluster directions, the item's own variation
    in a `rank`-dimensional subspace with a decaying spectrum (sd of component j ~ j^-1/2),
    and a little isotropic noise. Sentence embeddings vary along few directions; isotropic
    noise alone would leave residual k-means nothing to quantise (90 % of 100k items
    collided on 3 x 256 codes, against 20 % with this spectrum, TIGER's Beauty 15 %)."""
    def unit(rows: int) -> np.ndarray:
        x = rng.standard_normal((rows, dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    shared, topics, clusters, basis = unit(1)[0], unit(n_topics), unit(len(topic)), unit(rank)
    spectrum = np.arange(1, rank + 1, dtype=np.float32) ** -0.5
    basis *= (spectrum / np.linalg.norm(spectrum))[:, None]  # [rank, dim]
    base = 0.3 * shared + 0.6 * topics[topic] + 0.6 * clusters  # [n_clusters, dim]
    out = np.empty((len(cluster), dim), dtype=np.float32)
    for lo in range(0, len(cluster), chunk):
        hi = min(lo + chunk, len(cluster))
        own = rng.standard_normal((hi - lo, rank), dtype=np.float32) @ basis
        x = base[cluster[lo:hi]] + 0.6 * own + 0.15 * unit(hi - lo)
        out[lo:hi] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _sequences(rng: np.random.Generator, cfg: SynthConfig, cluster: np.ndarray,
               weight: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """(user [T], item [T]) user-major, from the cluster-transition chain."""
    total = int(cfg.interactions_per_item * cfg.n_items)
    n_users = max(1, round(total / cfg.mean_length))
    extra = cfg.mean_length - cfg.min_length
    lengths = cfg.min_length + (rng.geometric(1.0 / (1.0 + extra), n_users) - 1 if extra > 0
                                else np.zeros(n_users, dtype=np.int64))
    # Within-cluster inverse CDF: item j of cluster c has key c + (cumulative weight share).
    c_weight = np.bincount(cluster, weights=weight, minlength=n_clusters)
    cum = np.cumsum(weight)
    c_start = np.searchsorted(cluster, np.arange(n_clusters))
    before = np.r_[0.0, cum][c_start][cluster]
    keys = cluster + (cum - before) / c_weight[cluster]
    keys[np.r_[c_start[1:] - 1, len(cluster) - 1]] = np.arange(1, n_clusters + 1)
    succ = rng.integers(0, n_clusters, (n_clusters, cfg.successors))
    c_cdf = np.cumsum(c_weight) / c_weight.sum()

    def pick_cluster(m: int) -> np.ndarray:
        return np.minimum(np.searchsorted(c_cdf, rng.random(m), side="right"), n_clusters - 1)

    offsets = np.r_[0, np.cumsum(lengths)]
    items = np.empty(offsets[-1], dtype=np.int64)
    state = pick_cluster(n_users)
    for step in range(int(lengths.max())):
        active = np.flatnonzero(lengths > step)
        c = state[active]
        if step > 0:
            u = rng.random(len(active))
            move = u >= cfg.stay
            jump = move & (rng.random(len(active)) < cfg.jump)
            walk = move & ~jump
            c[walk] = succ[c[walk], rng.integers(0, cfg.successors, int(walk.sum()))]
            c[jump] = pick_cluster(int(jump.sum()))
            state[active] = c
        pos = np.searchsorted(keys, c + rng.random(len(active)), side="right")
        items[offsets[active] + step] = np.minimum(pos, len(keys) - 1)
    users = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    return users, items


def _cover(rng: np.random.Generator, items: np.ndarray, trainable: np.ndarray,
           cluster: np.ndarray, n: int, rounds: int = 20) -> np.ndarray:
    """Every item drawn at least once where a leave-one-out split trains on it (so no
    item is cold by accident): a missing item replaces a random such draw of its cluster
    whose item is drawn there again."""
    where = np.flatnonzero(trainable)
    for _ in range(rounds):
        counts = np.bincount(items[where], minlength=n)
        missing = np.flatnonzero(counts == 0)
        if len(missing) == 0:
            return items
        spare = where[counts[items[where]] > 1]
        spare_cluster = cluster[items[spare]]
        order = np.argsort(spare_cluster, kind="stable")
        spare, spare_cluster = spare[order], spare_cluster[order]
        lo = np.searchsorted(spare_cluster, cluster[missing], side="left")
        hi = np.searchsorted(spare_cluster, cluster[missing], side="right")
        # A cluster without spare draws: any spare draw (rare; loses the cluster link).
        has = hi > lo
        pick = np.where(has, lo + (rng.random(len(missing)) * (hi - lo)).astype(np.int64),
                        rng.integers(0, len(spare), len(missing)))
        pos, first = np.unique(spare[pick], return_index=True)  # one item per draw
        items[pos] = missing[first]
    if (np.bincount(items[where], minlength=n) == 0).any():
        raise SidrecError("synth: too few interactions to cover every item; raise "
                          "interactions_per_item")
    return items


def item_texts(cfg: SynthConfig, data: SynthData) -> dict[str, list[str]]:
    """Short text fields per item: title, categories (topic > cluster), brand."""
    rng = np.random.default_rng(cfg.seed + 1)
    n = cfg.n_items
    adj = rng.integers(0, len(_ADJECTIVES), n)
    noun = (data.cluster * 7 + rng.integers(0, 3, n)) % len(_NOUNS)
    brand = rng.integers(0, max(2, n // 50), n)
    topic = data.topic[data.cluster]
    return {
        "title": [f"{_ADJECTIVES[a].title()} {_NOUNS[b]} {i}"
                  for i, (a, b) in enumerate(zip(adj.tolist(), noun.tolist(), strict=True))],
        "categories": [f"Topic {t}, Cluster {c}"
                       for t, c in zip(topic.tolist(), data.cluster.tolist(), strict=True)],
        "brand": [f"Brand {b}" for b in brand.tolist()],
    }


def write_synth(out: str | Path, cfg: SynthConfig, force: bool = False) -> dict[str, Any]:
    """Write the tables, `vectors.npy` and `synth.json` into `out`; returns synth.json's
    content. An existing `out` made with the same settings is reused."""
    out = Path(out)
    record_path = out / "synth.json"
    key = hash_obj([VERSION, to_dict(cfg)])
    record = None if force else reusable_record(
        record_path, {"config_hash": key},
        needs=[out / f for f in ("interactions.parquet", "items.parquet", "vectors.npy")])
    if record is not None:
        return {**record, "cached": True}
    start = time.perf_counter()
    data = generate(cfg)
    out.mkdir(parents=True, exist_ok=True)
    table = pa.table({"user_id": data.users, "item_id": data.items,
                      "timestamp": data.timestamps})
    with atomic_path(out / "interactions.parquet") as tmp:
        pq.write_table(table, tmp)
    texts = item_texts(cfg, data)
    items = pa.table({"item_id": np.arange(cfg.n_items), **texts})
    with atomic_path(out / "items.parquet") as tmp:
        pq.write_table(items, tmp)
    save_npy(out / "vectors.npy", data.vectors)
    counts = np.bincount(data.items, minlength=cfg.n_items)
    record = {
        "config": to_dict(cfg),
        "version": VERSION,
        "config_hash": key,
        "counts": {
            "items": cfg.n_items,
            "users": int(data.users[-1]) + 1,
            "interactions": len(data.items),
            "clusters": len(data.topic),
            "topics": int(data.topic.max()) + 1,
            "top_1pct_share": float(np.sort(counts)[::-1][: max(1, cfg.n_items // 100)].sum()
                                    / len(data.items)),
            "min_item_count": int(counts.min()),
        },
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json(record_path, record)
    return {**record, "cached": False}


def attach_embeddings(run_dir: str | Path, synth_dir: str | Path) -> dict[str, Any]:
    """Write a prepared run's `embeddings.npy` + `embeddings.json` from `vectors.npy`.

    The run's items are the synthetic items that survived `sidrec data prepare`, in its
    dense order; row i of `embeddings.npy` is the vector of dense item i. The record names
    the encoder "synthetic", the text hash of the run's items and the array's hash, written
    as `sidrec embed` writes them (`RunDir.save_embeddings`): the array is checked on every
    load, and `sidrec embed` with a real encoder later re-embeds instead of reusing it.
    """
    from sidrec.data.dataset import Dataset
    from sidrec.run import RunDir

    run, synth_dir = RunDir(run_dir), Path(synth_dir)
    dataset = Dataset.load(run.root)
    vectors = np.load(synth_dir / "vectors.npy", mmap_mode="r")
    try:
        rows = dataset.item_ids.astype(np.int64)
    except ValueError:
        raise SidrecError(f"{run.root}: item ids are not the synthetic catalogue's integer "
                          f"ids; prepare the run from {synth_dir}/interactions.parquet") from None
    if len(rows) and (rows.min() < 0 or rows.max() >= len(vectors)):
        raise SidrecError(f"{run.root}: item ids outside {synth_dir}/vectors.npy's "
                          f"{len(vectors)} rows; prepare the run from this synthetic folder")
    emb = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    return run.save_embeddings(emb, {"encoder": SYNTH_ENCODER,
                                     "text_hash": hash_obj(dataset.item_text),
                                     "source": str(synth_dir / "vectors.npy")})


def prepare_synthetic(run_dir: str | Path, synth_dir: str | Path, cold_fraction: float = 0.0,
                      seed: int = 0, force: bool = False) -> dict[str, Any]:
    """`sidrec data prepare` on `synth_dir`'s tables into `run_dir` (holdout cold start with
    `cold_fraction` of the items when > 0, else natural), then `attach_embeddings`.
    Returns the dataset manifest."""
    from sidrec.data.config import PrepareConfig
    from sidrec.data.prepare import prepare

    synth_dir = Path(synth_dir)
    cfg = PrepareConfig(source=str(synth_dir / "interactions.parquet"),
                        items=str(synth_dir / "items.parquet"),
                        cold_mode="holdout" if cold_fraction > 0 else "natural",
                        cold_fraction=cold_fraction if cold_fraction > 0 else 0.05, seed=seed)
    manifest = prepare(run_dir, cfg, force=force)
    attach_embeddings(run_dir, synth_dir)
    return manifest
