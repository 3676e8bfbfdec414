"""Adding items at size N: text encoding, SID assignment and index update apart, and
`LiveCatalogue.add` end to end with the encoder stubbed out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from sidrec.scale.common import Options, paths, random_model, timed


def stage_add(n: int, work: Path, opt: Options) -> dict[str, Any]:
    import sidrec.embed
    from sidrec.catalogue import LiveCatalogue
    from sidrec.catalogue.rows import NewItems, grow
    from sidrec.run import RunDir
    from sidrec.tokenize import load_tokenizer, sids_for_new_items

    _, run = paths(work, n)
    model, history, users, ds, cat = random_model("liger", n, work, {"beam": 20, "hybrid_k": 20},
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
        new = NewItems(ids, ids, vecs, new_sids)
        grown, t = timed(grow, current, new)
        t_grow += t
        c0 = time.process_time()
        t_update += timed(model.items_added, grown, current.n_items)[1]
        cpu += time.process_time() - c0
    items = opt.add_batch * opt.add_rounds
    got, _ = model.recommend(history[:8], users[:8], 10)  # the new items are recommendable
    out.update({"sid_items_per_s": items / t_sid, "index_items_per_s": items / t_update,
                "sid_index_items_per_s": items / (t_sid + t_update),
                "sid_index_items_per_cpu_s": items / cpu,
                "catalogue_copy_seconds": t_grow / opt.add_rounds,
                "new_in_top10": int((got >= n).sum())})
    # End to end through the live catalogue (encoder stubbed: its cost is text_items_per_s
    # above).
    catalogue = LiveCatalogue(model, [*ds.item_ids, *(f"new-{r}-{i}" for r in range(
        opt.add_rounds) for i in range(opt.add_batch))], run)
    real = sidrec.embed.encode_texts
    sidrec.embed.encode_texts = lambda texts, *a, **k: new_vectors(len(texts))
    try:
        start = time.perf_counter()
        for r in range(opt.add_rounds):
            catalogue.add([{"id": f"api-{r}-{i}", "text": f"Title: gadget {r} {i}"}
                           for i in range(opt.add_batch)])
        out["api_items_per_s"] = items / (time.perf_counter() - start)
    finally:
        sidrec.embed.encode_texts = real
        RunDir(run).added_items.unlink(missing_ok=True)
    return out
