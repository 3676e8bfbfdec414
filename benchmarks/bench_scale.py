"""Cost vs catalogue size, 10k -> 100k -> 1M items: which part of sidrec breaks first.

    .venv/bin/python benchmarks/bench_scale.py                     # 10k, 100k, 1M (~1 h, 2 cores)
    .venv/bin/python benchmarks/bench_scale.py --max-items 100000  # a quicker run
    .venv/bin/python benchmarks/bench_scale.py --report            # table + plot from the JSON

Per size N: `sidrec data synth` (N items, 10 N interactions, `sidrec.data.synth`) ->
`data prepare` (holdout: 10 % of the items cold) -> the vectors as `embeddings.npy`
(encoder "synthetic") -> the stages below. Each stage runs in its own subprocess, so the
peak RSS it reports (`ru_maxrss` of that process, from `os.wait4`) is its own.

- prepare: `sidrec.data.prepare` on the generated tables (time, memory).
- rqkmeans: balanced RQ-KMeans 3 x 256 + collision token (`run_tokenize`): fit time, whole
  stage, collision rate, most items per prefix. rqvae (100k only): RQ-VAE 3 x 256.
- trie: `SidIndex` of all items + the warm items' index with its mask tables.
- decode: TIGER `cpu` sizes, random weights (cost does not depend on what was learned),
  constrained beam 20, top-10: users/s.
- liger: LIGER `cpu` sizes, random weights, hybrid K = 20 over the 10 % cold pool: users/s
  of the default path (an index over the cold pool from `cold_index_min` = 50k cold items
  on) and of exact scoring, and the recall of the exact top-10.
- cobra: COBRA `cpu` sizes: the sparse-ID tables, BeamFusion with per-sparse-ID
  neighbours, and with the global index (`ItemIndex`: IVF from 200k items), its recall.
- dense: top-10 over all items for Dense (cosine) and SASRec-style (inner product)
  vectors: exact chunked matmul vs a faiss IVF index, recall of the exact top-10.
- add: `add_items` at N: text encoding (all-MiniLM-L6-v2, once; it does not depend on N)
  apart from SID assignment (tokenizer + collision token) + index update
  (`set_catalogue`: SID trie, item vectors, cold-pool index), and `Service.add_items`
  end to end with the encoder stubbed out (it also copies the catalogue's arrays).

- ratio: TIGER decoding and the LIGER hybrid at N and at 10k, their batches interleaved in
  one single-threaded process, timed in its CPU time (and wall time): on a shared machine
  the load varies by minutes, and other stages' users/s are wall-clock, 2 threads.

The last two lines compare constrained decoding and the LIGER hybrid at the largest size
with 10k (from the interleaved ratio stage). Results go to `<work>/scale.json`, the plot
to `--plot` (docs/scale.png).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

SIZES = (10_000, 100_000, 1_000_000)
ROOT = Path(__file__).resolve().parents[1]
STAGES = ("synth", "prepare", "embeddings", "rqkmeans", "rqvae", "trie", "decode", "liger",
          "cobra", "dense", "add", "ratio")


@dataclass(frozen=True)
class Options:
    users: int = 256  # users decoded per measurement (after one warm-up batch)
    batch: int = 64  # users per recommend call
    repeats: int = 3  # a measurement is the fastest of this many passes (shared machine)
    kmeans_iters: int = 25  # RQ-KMeans (the package defaults)
    balanced_iters: int = 10
    rqvae_epochs: int = 10
    add_batch: int = 1_000  # items per add
    add_rounds: int = 5
    encode_texts: bool = True  # time all-MiniLM-L6-v2 on add_batch texts (at the first size)
    threads: int = 2


def paths(work: Path, n: int) -> tuple[Path, Path]:
    return work / f"data-{label(n)}", work / f"run-{label(n)}"


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


# ---------------------------------------------------------------- data stages


def stage_synth(n: int, work: Path, opt: Options) -> dict[str, Any]:
    from sidrec.data.synth import SynthConfig, write_synth

    data, _ = paths(work, n)
    rec = write_synth(data, SynthConfig(n_items=n))
    return {"seconds": rec["seconds"], "cached": rec["cached"], **rec["counts"]}


def stage_prepare(n: int, work: Path, opt: Options) -> dict[str, Any]:
    from sidrec.data import PrepareConfig, prepare

    data, run = paths(work, n)
    cfg = PrepareConfig(source=str(data / "interactions.parquet"),
                        items=str(data / "items.parquet"), cold_mode="holdout",
                        cold_fraction=0.1, seed=0)
    manifest, seconds = timed(prepare, run, cfg, force=True)
    c = manifest["counts"]
    return {"seconds": seconds, "users": c["users"], "items": c["items"],
            "interactions": c["interactions"], "cold_items": c["cold_items"]}


def stage_embeddings(n: int, work: Path, opt: Options) -> dict[str, Any]:
    from sidrec.data.synth import attach_embeddings

    data, run = paths(work, n)
    info, seconds = timed(attach_embeddings, run, data)
    return {"seconds": seconds, "dim": info["dim"]}


def stage_rqkmeans(n: int, work: Path, opt: Options) -> dict[str, Any]:
    from sidrec.tokenize import RQKMeansConfig, run_tokenize

    _, run = paths(work, n)
    cfg = RQKMeansConfig(codebook_size=256, balanced=True, kmeans_iters=opt.kmeans_iters,
                         balanced_iters=opt.balanced_iters)
    info, seconds = timed(run_tokenize, run, cfg, progress=False, force=True)
    d = info["diagnostics"]
    return {"seconds": seconds, "fit_seconds": info["fit"]["seconds"],
            "collision_rate": d["collision_rate"], "max_per_prefix": d["max_items_per_prefix"],
            "codebook_sizes": info["codebook_sizes"]}


def stage_rqvae(n: int, work: Path, opt: Options) -> dict[str, Any]:
    from sidrec.data.dataset import Dataset
    from sidrec.run import RunDir
    from sidrec.tokenize import RQVAEConfig, RQVAETokenizer
    from sidrec.tokenize.diagnostics import sid_diagnostics

    _, run = paths(work, n)
    cold = Dataset.load(run).cold
    warm = RunDir(run).load_embeddings(len(cold))[~cold]
    cfg = RQVAEConfig(codebook_size=256, epochs=opt.rqvae_epochs, batch_size=1024,
                      kmeans_init_items=4096)
    tok, seconds = timed(RQVAETokenizer(cfg, "cpu").fit, warm)
    d = sid_diagnostics(tok.encode(warm), 256)
    return {"fit_seconds": seconds, "epochs": opt.rqvae_epochs,
            "seconds_per_epoch": seconds / opt.rqvae_epochs,
            "collision_rate": d["collision_rate"], "max_per_prefix": d["max_items_per_prefix"]}


def stage_trie(n: int, work: Path, opt: Options) -> dict[str, Any]:
    from sidrec.data.dataset import Dataset
    from sidrec.models.beam import SidIndex
    from sidrec.run import RunDir

    _, run = paths(work, n)
    cold = torch.from_numpy(np.array(Dataset.load(run).cold, dtype=bool))
    codes, sizes = RunDir(run).load_sids(len(cold))
    sids = torch.from_numpy(codes)
    before = rss_mb()
    full, t_full = timed(SidIndex, sids, sizes)
    warm_items = (~cold).nonzero().flatten()

    def warm_index() -> SidIndex:
        index = SidIndex(sids[warm_items], sizes, warm_items)
        for level in range(len(sizes)):
            index._child_table(level)  # the tables constrained decoding reads
        return index

    warm, t_warm = timed(warm_index)
    nbytes = sum(t.nbytes for i in (full, warm) for t in (*i.keys, i.leaf_items, *(
        t for t in i._tables if t is not None)))
    return {"seconds": t_full + t_warm, "full_seconds": t_full, "warm_seconds": t_warm,
            "index_mb": nbytes / 1e6, "rss_delta_mb": rss_mb() - before}


# ---------------------------------------------------------------- models


def load_model(name: str, n: int, work: Path, inference: dict[str, Any] | None = None,
               room: int = 0) -> Any:
    """(model with random weights, test histories, users, dataset, catalogue); `room`
    widens the collision token's vocabulary (headroom for items added later)."""
    from sidrec.data.dataset import Dataset
    from sidrec.models.catalogue import build_catalogue
    from sidrec.presets import resolve_config

    _, run = paths(work, n)
    ds = Dataset.load(run)
    s = resolve_config(name, "cpu", inference_overrides=inference)
    cat = build_catalogue(run, ds, need_text=s.cls.needs_text, need_sids=bool(s.cls.needs_sids))
    if room:
        cat = replace(cat, codebook_sizes=(*cat.codebook_sizes[:-1],
                                           cat.codebook_sizes[-1] + room))
    torch.manual_seed(0)
    model = s.cls(s.model, cat).eval()
    model.inference = s.inference
    history, _, users = ds.eval_examples("test")
    return model, torch.from_numpy(history), torch.from_numpy(users), ds, cat


def best_of(fn: Any, repeats: int) -> tuple[Any, float]:
    """(fn()'s result, the shortest of `repeats` timings): other processes on a shared
    machine only ever add time, so the minimum is the closest to the code's own cost."""
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        out, seconds = timed(fn)
        best = min(best, seconds)
    return out, best


def users_per_s(model: Any, history: torch.Tensor, users: torch.Tensor, opt: Options,
                inference: Any = None, k: int = 10) -> tuple[float, list[torch.Tensor]]:
    """Users/s of model.recommend over opt.users users (after one warm-up batch)."""
    b = opt.batch
    model.recommend(history[:b], users[:b], k, inference)  # builds whatever is lazy
    out, seconds = best_of(lambda: [
        model.recommend(history[lo : lo + b], users[lo : lo + b], k, inference)[0]
        for lo in range(b, b + opt.users, b)], opt.repeats)
    return opt.users / seconds, out


def recall(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """Mean |got ∩ want| / |want| per row (want: the exact top-k, -1 ignored)."""
    hits = total = 0
    for a, b in zip(got, want, strict=True):
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            y = {i for i in y if i >= 0}
            hits += len(y & set(x))
            total += len(y)
    return hits / max(total, 1)


def stage_decode(n: int, work: Path, opt: Options) -> dict[str, Any]:
    (model, history, users, _, _), setup = timed(load_model, "tiger", n, work, {"beam": 20})
    ups, _ = users_per_s(model, history, users, opt)
    return {"users_per_s": ups, "setup_seconds": setup, "beam": 20}


def stage_liger(n: int, work: Path, opt: Options) -> dict[str, Any]:
    (model, history, users, _, cat), setup = timed(load_model, "liger", n, work,
                                                   {"beam": 20, "hybrid_k": 20})
    auto = model.inference
    exact = replace(auto, cold_index_min=10**12)
    (_, t_vectors) = timed(model.dense_items, model.text_emb)
    indexed = int(cat.cold.sum()) >= auto.cold_index_min
    t_index = timed(model.dense_items.pool_index, model.text_emb, model.cold)[1] if indexed \
        else 0.0
    ups, got = users_per_s(model, history, users, opt, auto)
    ups_exact, want = users_per_s(model, history, users, opt, exact)
    out = {"users_per_s": ups, "exact_users_per_s": ups_exact, "recall": recall(got, want),
           "indexed": indexed, "cold_items": int(cat.cold.sum()), "setup_seconds": setup,
           "vectors_seconds": t_vectors, "index_seconds": t_index}
    if not indexed:  # the index path at this size too (the default is exact here)
        forced = replace(auto, cold_index_min=0)
        t_index = timed(model.dense_items.pool_index, model.text_emb, model.cold)[1]
        ups_index, got = users_per_s(model, history, users, opt, forced)
        out.update(index_seconds=t_index, index_users_per_s=ups_index,
                   index_recall=recall(got, want))
    else:  # the default: the recall / speed trade-off of the fraction of cells scanned
        out.update(index_users_per_s=ups, index_recall=out["recall"], probes={})
        for probe in (0.125, 0.25, 0.375):
            ups_p, got = users_per_s(model, history, users, opt,
                                     replace(auto, cold_probe=probe))
            out["probes"][str(probe)] = {"users_per_s": ups_p, "recall": recall(got, want)}
    return out


def stage_cobra(n: int, work: Path, opt: Options) -> dict[str, Any]:
    from sidrec.models.retrieval import ItemIndex, exact_topk

    (model, history, users, _, _), setup = timed(load_model, "cobra", n, work)
    _, t_tables = timed(model.tables)
    with torch.no_grad():
        vectors, t_vectors = timed(model.item_vectors)
    ups_group, _ = users_per_s(model, history, users, opt)
    index, t_index = timed(ItemIndex.of, vectors)
    queries: list[torch.Tensor] = []
    search = index.search

    def recording(q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        queries.append(q)
        return search(q, k)

    index.search = recording  # the v̂ of every beam, to check against exact search
    glob = replace(model.inference, retrieval="global")
    ups_global, _ = users_per_s(model, history, users, opt, glob)
    del index.search
    q = queries[-1][:256]
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    want = exact_topk(torch.nn.functional.normalize(q, dim=-1), unit, 10)[0]
    return {"group_users_per_s": ups_group, "global_users_per_s": ups_global,
            "global_recall": recall([index.search(q, 10)[0]], [want]),
            "tables_seconds": t_tables, "vectors_seconds": t_vectors,
            "global_index_seconds": t_index, "global_exact": index.exact,
            "groups": model.diagnostics().get("groups"), "setup_seconds": setup}


def stage_dense(n: int, work: Path, opt: Options) -> dict[str, Any]:
    from sidrec.data.dataset import Dataset
    from sidrec.models.heads import DenseHead
    from sidrec.models.retrieval import ItemIndex, exact_topk
    from sidrec.run import RunDir

    _, run = paths(work, n)
    ds = Dataset.load(run)
    text = torch.from_numpy(RunDir(run).load_embeddings(ds.n_items))
    torch.manual_seed(0)
    head = DenseHead(text.shape[1], 256, 64, 0.07, user_proj=False)  # Dense's text tower
    with torch.no_grad():
        raw = torch.cat([head.project_items(c) for c in text.split(65_536)])
    del text
    history = torch.from_numpy(ds.eval_examples("test")[0][: opt.users])
    # a user = the mean of the last 5 items' vectors (the shape of a trained user vector)
    recent = history[:, -5:]
    out: dict[str, Any] = {}
    for name, vectors, normalize in (("dense", torch.nn.functional.normalize(raw, dim=-1), True),
                                     ("sasrec", raw, False)):
        q = vectors[recent.clamp_min(0)].mean(1)
        want, t_exact = best_of(lambda v=vectors, q=q: [
            exact_topk(q[lo : lo + opt.batch], v, 10)[0] for lo in range(0, len(q), opt.batch)],
            opt.repeats)
        index, t_build = timed(ItemIndex, vectors, exact_below=0, normalize=normalize)
        got, t_index = best_of(lambda i=index, q=q: [
            i.search(q[lo : lo + opt.batch], 10)[0] for lo in range(0, len(q), opt.batch)],
            opt.repeats)
        out[name] = {"exact_users_per_s": len(q) / t_exact, "index_users_per_s": len(q) / t_index,
                     "index_build_seconds": t_build, "recall": recall(got, want)}
    return out


def stage_add(n: int, work: Path, opt: Options) -> dict[str, Any]:
    import sidrec.embed
    from sidrec import added_items
    from sidrec.api import Service
    from sidrec.run import RunDir
    from sidrec.tokenize import load_tokenizer, sids_for_new_items

    _, run = paths(work, n)
    model, history, users, ds, cat = load_model("liger", n, work, {"beam": 20, "hybrid_k": 20},
                                                room=64)
    model.recommend(history[:8], users[:8], 10)  # item vectors and the cold-pool index exist
    rng = np.random.default_rng(1)
    emb = cat.text_emb.numpy()

    def new_vectors(m: int) -> np.ndarray:  # near an existing item, as a new variant would be
        x = emb[rng.integers(0, len(emb), m)] + 0.3 * rng.standard_normal((m, emb.shape[1]))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    out: dict[str, Any] = {"batch": opt.add_batch, "rounds": opt.add_rounds}
    if opt.encode_texts:
        texts = [f"Title: New gadget {i}; Categories: Topic {i % 7}" for i in range(opt.add_batch)]
        from sidrec.embed import EmbedConfig, encode_texts

        _, t_text = timed(encode_texts, texts, EmbedConfig(device="cpu"), progress=False)
        out["text_items_per_s"] = opt.add_batch / t_text
    tok = load_tokenizer(RunDir(run).tokenizer, device="cpu")
    t_sid = t_grow = t_update = cpu = 0.0
    for r in range(opt.add_rounds):
        vecs = new_vectors(opt.add_batch)
        current = model.catalogue
        c0 = time.process_time()
        new_sids, t = timed(sids_for_new_items, tok, current.sids.numpy(), vecs)
        cpu += time.process_time() - c0
        t_sid += t
        ids = tuple(f"new-{r}-{i}" for i in range(opt.add_batch))
        new = added_items.NewItems(ids, ids, vecs, new_sids)
        grown, t = timed(added_items.grow, current, new)
        t_grow += t
        c0 = time.process_time()
        t_update += timed(model.set_catalogue, grown)[1]
        cpu += time.process_time() - c0
    items = opt.add_batch * opt.add_rounds
    got, _ = model.recommend(history[:8], users[:8], 10)  # the new items are recommendable
    out.update({"sid_items_per_s": items / t_sid, "index_items_per_s": items / t_update,
                "sid_index_items_per_s": items / (t_sid + t_update),
                "sid_index_items_per_cpu_s": items / cpu,
                "catalogue_copy_seconds": t_grow / opt.add_rounds,
                "new_in_top10": int((got >= n).sum())})
    # End to end through the API (encoder stubbed: its cost is text_items_per_s above).
    service = Service(model, [*ds.item_ids, *(f"new-{r}-{i}" for r in range(opt.add_rounds)
                                              for i in range(opt.add_batch))], run,
                      ds.max_history)
    real = sidrec.embed.encode_texts
    sidrec.embed.encode_texts = lambda texts, *a, **k: new_vectors(len(texts))
    try:
        start = time.perf_counter()
        for r in range(opt.add_rounds):
            service.add_items([{"id": f"api-{r}-{i}", "text": f"Title: gadget {r} {i}"}
                               for i in range(opt.add_batch)])
        out["api_items_per_s"] = items / (time.perf_counter() - start)
    finally:
        sidrec.embed.encode_texts = real
        RunDir(run).added_items.unlink(missing_ok=True)
    return out


def stage_ratio(n: int, work: Path, opt: Options) -> dict[str, Any]:
    """Users/s at n vs at the smallest size, measured so that both sizes see the same
    machine: batches of the two interleaved in one process, on one thread, in CPU time of
    this process (`time.process_time`) as well as wall time. On a machine shared with other
    jobs the load moves by minutes, so wall times taken minutes apart differed by up to 5x
    for the same work; a single-threaded process's CPU time hardly moves with the load."""
    small = SIZES[0]
    torch.set_num_threads(1)
    out: dict[str, Any] = {"small": small, "threads": 1}
    for name, inference in (("tiger", {"beam": 20}), ("liger", {"beam": 20, "hybrid_k": 20})):
        runs = [load_model(name, size, work, inference)[:3] for size in (small, n)]
        wall, cpu = [0.0, 0.0], [0.0, 0.0]
        b = opt.batch
        for model, history, users in runs:
            model.recommend(history[:b], users[:b], 10)  # warm-up: lazy indexes and caches
        for _ in range(opt.repeats):
            for lo in range(b, b + opt.users, b):
                for i, (model, history, users) in enumerate(runs):
                    c0, w0 = time.process_time(), time.perf_counter()
                    model.recommend(history[lo : lo + b], users[lo : lo + b], 10)
                    cpu[i] += time.process_time() - c0
                    wall[i] += time.perf_counter() - w0
        done = opt.users * opt.repeats
        out[name] = {"small_users_per_s": done / cpu[0], "users_per_s": done / cpu[1],
                     "ratio": cpu[0] / cpu[1], "wall_ratio": wall[0] / wall[1],
                     "small_wall_users_per_s": done / wall[0], "wall_users_per_s": done / wall[1]}
        del runs
    return out


# ---------------------------------------------------------------- driver


def run_stage(name: str, n: int, work: Path, opt: Options, inline: bool) -> dict[str, Any]:
    """One stage at size n: in a subprocess (its own peak RSS) unless `inline`."""
    if inline:
        result, seconds = timed(globals()[f"stage_{name}"], n, work, opt)
        return {**result, "wall_seconds": seconds}
    cmd = [sys.executable, __file__, "--stage", name, "--size", str(n), "--work", str(work),
           "--options", json.dumps(asdict(opt))]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} at {label(n)} failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "wall_seconds": time.perf_counter() - start,
            "peak_rss_gb": usage.ru_maxrss / 1e6}


def run_all(sizes: list[int], work: Path, opt: Options, inline: bool = False,
            stages: tuple[str, ...] = STAGES, log: Any = print) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    record_path = work / "scale.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record.setdefault("sizes", {})
    record.update({"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                   "options": asdict(opt)})
    for i, n in enumerate(sizes):
        row = record["sizes"].setdefault(str(n), {})
        for name in stages:
            if (name == "rqvae" and n != 100_000) or (name == "ratio" and i == 0):
                continue
            o = opt if i == 0 or name != "add" else replace(opt, encode_texts=False)
            load = os.getloadavg()[0]
            row[name] = {**run_stage(name, n, work, o, inline), "load_before": round(load, 1),
                         "date": time.strftime("%Y-%m-%d %H:%M")}
            log(f"{label(n)} {name}: {json.dumps(row[name])}")
            record_path.write_text(json.dumps(record, indent=1))
    return record


# ---------------------------------------------------------------- report


METRICS = [  # (stage, key, label, format)
    ("synth", "interactions", "interactions", "{:,.0f}"),
    ("prepare", "seconds", "data prepare (s)", "{:.1f}"),
    ("embeddings", "seconds", "synthetic embeddings.npy (s)", "{:.1f}"),
    ("rqkmeans", "fit_seconds", "RQ-KMeans 3x256 balanced: fit (s)", "{:.0f}"),
    ("rqkmeans", "seconds", "RQ-KMeans: whole stage (s)", "{:.0f}"),
    ("rqkmeans", "collision_rate", "collision rate", "{:.3f}"),
    ("rqkmeans", "max_per_prefix", "max items per prefix", "{}"),
    ("rqvae", "seconds_per_epoch", "RQ-VAE 3x256: s per epoch", "{:.1f}"),
    ("rqvae", "collision_rate", "RQ-VAE collision rate", "{:.3f}"),
    ("trie", "seconds", "trie build, all + warm (s)", "{:.2f}"),
    ("trie", "index_mb", "trie size (MB)", "{:.0f}"),
    ("decode", "users_per_s", "TIGER constrained beam 20 (users/s)", "{:.1f}"),
    ("liger", "users_per_s", "LIGER hybrid K=20 (users/s)", "{:.1f}"),
    ("liger", "exact_users_per_s", "LIGER hybrid, exact scoring (users/s)", "{:.1f}"),
    ("liger", "recall", "LIGER hybrid recall of exact top-10", "{:.4f}"),
    ("liger", "index_users_per_s", "LIGER hybrid, cold-pool index forced (users/s)", "{:.1f}"),
    ("liger", "index_recall", "  its recall of the exact top-10", "{:.4f}"),
    ("cobra", "tables_seconds", "COBRA sparse-ID tables (s)", "{:.2f}"),
    ("cobra", "group_users_per_s", "COBRA per-sparse-ID (users/s)", "{:.1f}"),
    ("cobra", "global_index_seconds", "COBRA global index build (s)", "{:.1f}"),
    ("cobra", "global_users_per_s", "COBRA global index (users/s)", "{:.1f}"),
    ("cobra", "global_recall", "COBRA global recall@10", "{:.4f}"),
    ("dense", "dense.exact_users_per_s", "Dense top-10 exact (users/s)", "{:,.0f}"),
    ("dense", "dense.index_users_per_s", "Dense top-10 IVF (users/s)", "{:,.0f}"),
    ("dense", "dense.recall", "Dense IVF recall@10", "{:.4f}"),
    ("dense", "sasrec.exact_users_per_s", "SASRec-style top-10 exact (users/s)", "{:,.0f}"),
    ("dense", "sasrec.index_users_per_s", "SASRec-style top-10 IVF (users/s)", "{:,.0f}"),
    ("dense", "sasrec.recall", "SASRec-style IVF recall@10", "{:.4f}"),
    ("ratio", "tiger.users_per_s", "TIGER decode, 1 thread, CPU time (users/CPU-s)", "{:.1f}"),
    ("ratio", "tiger.small_users_per_s", "  10k interleaved with it (users/CPU-s)", "{:.1f}"),
    ("ratio", "tiger.ratio", "  ratio (CPU time)", "{:.2f}"),
    ("ratio", "tiger.wall_ratio", "  ratio (wall time)", "{:.2f}"),
    ("ratio", "liger.users_per_s", "LIGER hybrid, 1 thread, CPU time (users/CPU-s)", "{:.1f}"),
    ("ratio", "liger.small_users_per_s", "  10k interleaved with it (users/CPU-s)", "{:.1f}"),
    ("ratio", "liger.ratio", "  ratio (CPU time)", "{:.2f}"),
    ("ratio", "liger.wall_ratio", "  ratio (wall time)", "{:.2f}"),
    ("add", "text_items_per_s", "add_items: text encoding (items/s)", "{:,.0f}"),
    ("add", "sid_index_items_per_s", "add_items: SID + index update (items/s)", "{:,.0f}"),
    ("add", "sid_index_items_per_cpu_s", "  the same per CPU-second (items/CPU-s)", "{:,.0f}"),
    ("add", "catalogue_copy_seconds", "  Service's catalogue copy per add (s)", "{:.2f}"),
    ("add", "api_items_per_s", "add_items: Service end to end, no encoder (items/s)", "{:,.0f}"),
]


def get(row: dict[str, Any], stage: str, key: str) -> Any:
    value: Any = row.get(stage, {})
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def table(record: dict[str, Any]) -> str:
    sizes = sorted(record["sizes"], key=int)
    rows = record["sizes"]
    head = "| | " + " | ".join(label(int(n)) for n in sizes) + " |"
    lines = [head, "|---" * (len(sizes) + 1) + "|"]
    for stage, key, name, fmt in METRICS:
        cells = [get(rows[n], stage, key) for n in sizes]
        if all(c is None for c in cells):
            continue
        lines.append(f"| {name} | " + " | ".join("–" if c is None else fmt.format(c)
                                                 for c in cells) + " |")
    lines.append("| **peak RSS (GB)** | " + " | ".join("" for _ in sizes) + " |")
    for stage in STAGES:
        cells = [rows[n].get(stage, {}).get("peak_rss_gb") for n in sizes]
        if any(c is not None for c in cells):
            lines.append(f"| {stage} | " + " | ".join("–" if c is None else f"{c:.2f}"
                                                      for c in cells) + " |")
    return "\n".join(lines)


def ratios(record: dict[str, Any]) -> list[str]:
    """The last lines: users/s at the largest size over users/s at the smallest, from the
    interleaved `ratio` stage when it ran, else from the two sizes' own stages."""
    sizes = sorted(record["sizes"], key=int)
    first, last = record["sizes"][sizes[0]], record["sizes"][sizes[-1]]
    out = []
    for stage, model, what in (("decode", "tiger", "decode"), ("liger", "liger", "liger hybrid")):
        paired = get(last, "ratio", f"{model}.ratio")
        a, b = get(first, stage, "users_per_s"), get(last, stage, "users_per_s")
        value = paired if paired is not None else (b / a if a and b else None)
        text = "n/a" if value is None else f"{value:.2f}"
        unpaired = paired is None and value is not None and len(sizes) > 1
        out.append(f"{what} users/s at {label(int(sizes[-1]))} items = {text} x at "
                   f"{label(int(sizes[0]))}" + (" (separate runs, not interleaved)"
                                                if unpaired else ""))
    return out


def dates(record: dict[str, Any]) -> list[str]:
    """When each stage was measured, when the record holds stages of more than one run
    (it keeps every stage it ever ran; older records: the run's date)."""
    when: dict[str, list[str]] = {}
    for n in sorted(record["sizes"], key=int):
        for stage, result in record["sizes"][n].items():
            stamp = result.get("date", record.get("date", "?"))
            when.setdefault(stamp, []).append(f"{stage}@{label(int(n))}")
    if len(when) < 2:
        return []
    return [f"measured {stamp}: {', '.join(stages)}" for stamp, stages in sorted(when.items())]


def plot(record: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sizes = sorted(record["sizes"], key=int)
    rows = record["sizes"]
    xs = [int(n) for n in sizes]
    fig = Figure(figsize=(12, 5))
    FigureCanvasAgg(fig)
    ax, mem = fig.subplots(1, 2)
    costs = [("data prepare (s)", "prepare", "seconds", 1.0),
             ("RQ-KMeans fit (s)", "rqkmeans", "fit_seconds", 1.0),
             ("trie build (s)", "trie", "seconds", 1.0),
             ("TIGER decode (ms/user)", "decode", "users_per_s", -1),
             ("LIGER hybrid (ms/user)", "liger", "users_per_s", -1),
             ("LIGER exact scoring (ms/user)", "liger", "exact_users_per_s", -1),
             ("COBRA per-sparse-ID (ms/user)", "cobra", "group_users_per_s", -1),
             ("COBRA global index (ms/user)", "cobra", "global_users_per_s", -1),
             ("Dense top-10 exact (ms/user)", "dense", "dense.exact_users_per_s", -1),
             ("Dense top-10 IVF (ms/user)", "dense", "dense.index_users_per_s", -1),
             ("add_items SID + index (ms/1k items)", "add", "sid_index_items_per_s", -2)]
    colours = [f"C{i}" for i in range(10)] + ["black", "olive"]
    for i, (name, stage, key, kind) in enumerate(costs):
        ys = [get(rows[n], stage, key) for n in sizes]
        pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y]
        if not pts:
            continue
        conv = {1.0: lambda v: v, -1: lambda v: 1000.0 / v, -2: lambda v: 1e6 / v}[kind]
        ax.plot([p[0] for p in pts], [conv(p[1]) for p in pts], marker="osv^D"[i % 5],
                color=colours[i % len(colours)], linestyle="-" if kind > 0 else "--",
                label=name)
    for name, model, style in (("TIGER decode, 1 thread (CPU ms/user)", "tiger", "red"),
                               ("LIGER hybrid, 1 thread (CPU ms/user)", "liger", "purple")):
        pts = [(int(sizes[0]), get(rows[sizes[-1]], "ratio", f"{model}.small_users_per_s"))]
        pts += [(int(n), get(rows[n], "ratio", f"{model}.users_per_s")) for n in sizes[1:]]
        pts = [(x, 1000.0 / y) for x, y in pts if y]
        if len(pts) > 1:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=style, linestyle=":",
                    marker="x", label=name)
    if len(xs) > 1:  # what growing with the catalogue looks like
        ax.plot(xs, [0.1 * x / xs[0] for x in xs], color="grey", linestyle=":",
                label="slope 1 (linear in items)")
    for i, stage in enumerate(STAGES):
        pts = [(x, rows[n].get(stage, {}).get("peak_rss_gb")) for x, n in zip(xs, sizes,
                                                                              strict=True)]
        pts = [p for p in pts if p[1]]
        if pts:
            mem.plot([p[0] for p in pts], [p[1] for p in pts], marker="osv^D"[i % 5],
                     color=colours[i % len(colours)], label=stage)
    mem.axhline(24, color="grey", linestyle=":", label="24 GB")
    ax.set(xscale="log", yscale="log", xlabel="catalogue items", ylabel="cost",
           title="cost vs catalogue size (flat = does not grow with the catalogue)")
    mem.set(xscale="log", yscale="log", xlabel="catalogue items", ylabel="peak RSS (GB)",
            title="peak memory per stage (own process)")
    for a in (ax, mem):
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(f"sidrec at scale, {record.get('date', '')}, {record.get('cpus')} CPU cores")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-items", type=int, default=SIZES[-1])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "scale")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "scale.png")
    p.add_argument("--report", action="store_true", help="only print and plot scale.json")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--stage", help=argparse.SUPPRESS)  # internal: one stage in this process
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--options", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    opt = Options(**json.loads(args.options)) if args.options else Options()
    torch.set_num_threads(opt.threads)
    if args.stage:
        result = globals()[f"stage_{args.stage}"](args.size, args.work, opt)
        print(json.dumps(result))
        return
    if not args.report:
        sizes = [n for n in SIZES if n <= args.max_items]
        run_all(sizes, args.work, opt, stages=tuple(args.stages.split(",")))
    record = json.loads((args.work / "scale.json").read_text())
    plot(record, args.plot)
    print(table(record))
    print(f"plot: {args.plot}")
    print("\n".join(ratios(record) + dates(record)))


if __name__ == "__main__":
    main()
