"""The cost of recommending at size N, with random weights (it does not depend on what was
learned): TIGER's constrained beam, the LIGER hybrid, COBRA's two retrievals, dense top-k
exact and by index, and TIGER / LIGER at N against the smallest size in one process.

An index's probe and recall do depend on the queries: the item indexes are calibrated and
their recall measured on queries like a trained model's (`common.recent_mean`), not on the
random weights' (COBRA's global index reports both)."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from sidrec.scale.common import (
    SIZES,
    Options,
    best_of,
    paths,
    random_model,
    recall,
    recent_mean,
    timed,
    users_per_s,
)


def stage_decode(n: int, work: Path, opt: Options) -> dict[str, Any]:
    (model, history, users, _, _), setup = timed(random_model, "tiger", n, work, {"beam": 20})
    ups, _ = users_per_s(model, history, users, opt)
    return {"users_per_s": ups, "setup_seconds": setup, "beam": 20}


def cold_pool_index(model: Any, history: torch.Tensor, opt: Options) -> Any:
    """LIGER's cold-pool index, calibrated on trained-like queries of users that are not
    timed (`recent_mean`), not on the random weights' first queries (its default)."""
    index = model.dense_items.pool_index(model.text_emb, model.cold)
    unit = torch.nn.functional.normalize(model.dense_items(model.text_emb), dim=-1)
    index.calibrate(recent_mean(unit, history[-opt.calibration_users :]))
    return index


def stage_liger(n: int, work: Path, opt: Options) -> dict[str, Any]:
    (model, history, users, _, cat), setup = timed(random_model, "liger", n, work,
                                                   {"beam": 20, "hybrid_k": 20})
    auto = model.inference
    exact = replace(auto, cold_index_min=10**12)
    (_, t_vectors) = timed(model.dense_items, model.text_emb)
    indexed = int(cat.cold.sum()) >= auto.cold_index_min
    index, t_index = timed(cold_pool_index, model, history, opt) if indexed else (None, 0.0)
    ups, got = users_per_s(model, history, users, opt, auto)
    ups_exact, want = users_per_s(model, history, users, opt, exact)
    out = {"users_per_s": ups, "exact_users_per_s": ups_exact, "recall": recall(got, want),
           "indexed": indexed, "cold_items": int(cat.cold.sum()), "setup_seconds": setup,
           "vectors_seconds": t_vectors, "index_seconds": t_index}
    if not indexed:  # the index path at this size too (the default is exact here)
        forced = replace(auto, cold_index_min=0)
        index, t_index = timed(cold_pool_index, model, history, opt)
        ups_index, got = users_per_s(model, history, users, opt, forced)
        out.update(index_seconds=t_index, index_users_per_s=ups_index,
                   index_recall=recall(got, want), index=str(index.choice))
    else:  # the default: the recall / speed trade-off of the fraction of cells scanned
        out.update(index_users_per_s=ups, index_recall=out["recall"], probes={},
                   index=str(index.choice))
        for probe in (0.125, 0.25, 0.375):
            ups_p, got = users_per_s(model, history, users, opt,
                                     replace(auto, cold_probe=probe))
            out["probes"][str(probe)] = {"users_per_s": ups_p, "recall": recall(got, want)}
    return out


def stage_cobra(n: int, work: Path, opt: Options) -> dict[str, Any]:
    from sidrec.models.item_index import ItemIndex, exact_topk

    (model, history, users, _, _), setup = timed(random_model, "cobra", n, work)
    _, t_tables = timed(model.sparse.tables)
    with torch.no_grad():
        vectors, t_vectors = timed(model.dense.vectors)
    ups_group, _ = users_per_s(model, history, users, opt)
    # The global index calibrates on trained-like v̂ (`recent_mean`, from users that are
    # not timed) and is measured with the timed users' own; the random weights' v̂ time it.
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    index, t_index = timed(ItemIndex.of, vectors, recent_mean(
        unit, history[-opt.calibration_users :]))
    held_out = recent_mean(unit, history[opt.batch : opt.batch + opt.users])
    queries: list[torch.Tensor] = []
    search = index.search

    def recording(q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        queries.append(q)
        return search(q, k)

    index.search = recording  # the v̂ of every beam, to check against exact search
    glob = replace(model.inference, retrieval="global")
    ups_global, _ = users_per_s(model, history, users, opt, glob)
    del index.search
    untrained = torch.nn.functional.normalize(queries[-1][:256], dim=-1)
    return {"group_users_per_s": ups_group, "global_users_per_s": ups_global,
            "global_recall": recall([index.search(held_out, 10)[0]],
                                    [exact_topk(held_out, unit, 10)[0]]),
            "global_recall_untrained": recall([index.search(untrained, 10)[0]],
                                              [exact_topk(untrained, unit, 10)[0]]),
            "global_index": str(index.choice), "global_choice": asdict(index.choice),
            "tables_seconds": t_tables, "vectors_seconds": t_vectors,
            "global_index_seconds": t_index, "global_exact": index.exact,
            "groups": model.diagnostics().get("groups"), "setup_seconds": setup}


def stage_dense(n: int, work: Path, opt: Options) -> dict[str, Any]:
    from sidrec.data.dataset import Dataset
    from sidrec.models.heads import DenseHead
    from sidrec.models.item_index import ItemIndex, exact_topk
    from sidrec.run import RunDir

    _, run = paths(work, n)
    ds = Dataset.load(run)
    text = torch.from_numpy(RunDir(run).load_embeddings(ds.n_items))
    torch.manual_seed(0)
    head = DenseHead(text.shape[1], 256, 64, 0.07, user_proj=False)  # Dense's text tower
    with torch.no_grad():
        raw = torch.cat([head.project_items(c) for c in text.split(65_536)])
    del text
    history = torch.from_numpy(ds.eval_examples("test")[0])
    timed_users, calibration = history[: opt.users], history[-opt.calibration_users :]
    out: dict[str, Any] = {}
    for name, vectors, normalize in (("dense", torch.nn.functional.normalize(raw, dim=-1), True),
                                     ("sasrec", raw, False)):
        q = recent_mean(vectors, timed_users)  # in the index's own space
        want, t_exact = best_of(lambda v=vectors, q=q: [
            exact_topk(q[lo : lo + opt.batch], v, 10)[0] for lo in range(0, len(q), opt.batch)],
            opt.repeats)
        # exact_below=0: the index decides by measuring whether IVF beats exact at this n
        index, t_build = timed(ItemIndex, vectors, exact_below=0, normalize=normalize,
                               queries=recent_mean(vectors, calibration))
        got, t_index = best_of(lambda i=index, q=q: [
            i.search(q[lo : lo + opt.batch], 10)[0] for lo in range(0, len(q), opt.batch)],
            opt.repeats)
        out[name] = {"exact_users_per_s": len(q) / t_exact, "index_users_per_s": len(q) / t_index,
                     "index_build_seconds": t_build, "recall": recall(got, want),
                     "index": str(index.choice), "choice": asdict(index.choice)}
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
        runs = [random_model(name, size, work, inference)[:3] for size in (small, n)]
        for model, history, _ in runs:  # LIGER's cold-pool index as stage_liger has it
            if name == "liger" and int(model.cold.sum()) >= model.inference.cold_index_min:
                cold_pool_index(model, history, opt)
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
