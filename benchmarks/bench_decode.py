"""Decoding throughput: sidrec's batched beam search vs Hugging Face T5 `generate()`, and
against this machine's own limit.

Same run, same sizes: a TIGER-paper-size model (4+4 layers, d_model 128, 6 heads x 64,
FFN 1024) with random weights over a synthetic catalogue (default 12,000 items, 3 x 256
codes + a collision token), 20-item histories + a user token (81 encoder tokens), beam
widths 20 and 50, all beams returned, 32 and 64 users per decoding call.
T5ForConditionalGeneration gets the same sizes (d_kv 64, vocabulary = the same SID tokens
+ 2,000 user buckets); its constrained mode is the usual `prefix_allowed_tokens_fn` over a
Python trie (one call per beam and step). Random weights are fine: decoding cost does not
depend on what the model learned (the unconstrained invalid rate does: it is printed for
completeness only). `transformers` comes with sentence-transformers, a core dependency.

The machine's limit: the FP32 throughput of a large `torch.mm` on the same threads, timed
in the same run (best of a few, before and after the decoding; the better counts, since a
busy machine only lowers it). `decode_flops` counts the multiply-adds one user's decode
needs (tests/test_decode_flops.py checks it against torch's FlopCounterMode), so sidrec's
users/s become FLOP/s and a fraction of that limit.

    .venv/bin/python benchmarks/bench_decode.py            # ~3-5 min on 2 cores
    .venv/bin/python benchmarks/bench_decode.py --smoke    # tiny sizes, seconds (the tests)
    .venv/bin/python benchmarks/bench_decode.py --users 256 --batch 128 --device cuda
"""

from __future__ import annotations

import argparse
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sidrec.models.base import Catalogue  # noqa: E402
from sidrec.models.tiger import PRESETS, TIGER, TIGERConfig, TIGERInference  # noqa: E402

# Goals at the largest batch (issue #26): constrained speed-up over T5 per beam width, the
# fraction of the GEMM limit, and constrained users/s against unconstrained.
SPEED_UP_GOAL = {20: 10.0, 50: 20.0}
LIMIT_GOAL = 0.5
CONSTRAINED_GOAL = 0.85


def synthetic_catalogue(n_items: int, levels: int, size: int, seed: int = 0) -> Catalogue:
    """Random distinct SIDs: `levels` codes of `size` + a collision token (as the tokenizer)."""
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, size, (n_items, levels), generator=g)
    key = torch.zeros(n_items, dtype=torch.int64)
    for t in range(levels):
        key = key * size + prefix[:, t]
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    first = torch.searchsorted(sorted_key, sorted_key)  # first position of each prefix
    collision = torch.empty(n_items, dtype=torch.int64)
    collision[order] = torch.arange(n_items) - first
    sids = torch.cat([prefix, collision[:, None]], dim=1)
    return Catalogue(
        item_text=[""] * n_items, cold=torch.zeros(n_items, dtype=torch.bool),
        popularity=torch.ones(n_items), sids=sids,
        codebook_sizes=(*([size] * levels), int(collision.max()) + 1),
    )


def decode_flops(cfg: TIGERConfig, sizes: tuple[int, ...], history: int, beam: int) -> int:
    """FLOPs (2 per multiply-add) of one user's TIGER decode with a full `history`.

    Counted as sidrec runs it: the encoder once over the user token + history tokens, the
    cross-attention K/V of that memory once, then one decoder row at step 0 and `beam`
    rows at each later step (rows without a candidate are padded, not dropped: the
    search keeps its shape), each through self-attention over its own cached
    positions, cross-attention over the memory, the FFN, and the output layer over that
    level's codes only. Norms, softmax and the beam bookkeeping are left out (not
    matrix products; FlopCounterMode leaves them out too).
    """
    d, inner, ff = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.d_ff
    s = (1 if cfg.user_buckets else 0) + history * len(sizes)  # encoder tokens
    proj = 2 * d * 3 * inner + 2 * inner * d + 2 * 2 * d * ff  # qkv, out, FFN per token
    flops = cfg.n_encoder_layers * s * (proj + 2 * 2 * s * inner)
    flops += cfg.n_decoder_layers * s * 2 * d * 2 * inner  # cross-attention K/V, once
    rows = 1
    for t, size in enumerate(sizes):
        attention = 2 * 2 * (t + 1) * inner + 2 * 2 * s * inner  # own cache, memory
        cross = 2 * d * inner + 2 * inner * d  # query and output projections
        flops += rows * (cfg.n_decoder_layers * (proj + cross + attention) + 2 * d * size)
        rows = beam
    return flops


def gemm_limit(n: int, repeats: int) -> float:
    """FLOP/s of the best of `repeats` FP32 n x n matrix products on torch's threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.mm(a, b)  # allocations, thread pool start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def t5_model(cat: Catalogue, cfg: TIGERConfig):
    from transformers import T5Config, T5ForConditionalGeneration

    vocab = 2 + sum(cat.codebook_sizes) + cfg.user_buckets  # pad, bos/eos, codes, users
    config = T5Config(
        vocab_size=vocab, d_model=cfg.d_model, d_kv=cfg.head_dim, d_ff=cfg.d_ff,
        num_layers=cfg.n_encoder_layers, num_decoder_layers=cfg.n_decoder_layers,
        num_heads=cfg.n_heads, dropout_rate=cfg.dropout, pad_token_id=0,
        decoder_start_token_id=0, eos_token_id=1,
    )
    return T5ForConditionalGeneration(config).eval()


def t5_inputs(cat: Catalogue, history: torch.Tensor, users: torch.Tensor, n_buckets: int):
    sizes = torch.tensor(cat.codebook_sizes)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)[:-1]])
    tok = (2 + offsets + cat.sids[history]).flatten(1)  # (B, L*n_codes)
    user = 2 + int(sizes.sum()) + users % n_buckets
    return torch.cat([user[:, None], tok], dim=1), offsets


def t5_trie(cat: Catalogue, offsets: torch.Tensor) -> dict[tuple[int, ...], list[int]]:
    """Prefix (decoder tokens after the start token) -> allowed next token ids."""
    trie: dict[tuple[int, ...], set[int]] = {}
    for row in (2 + offsets + cat.sids).tolist():
        for t in range(len(row)):
            trie.setdefault(tuple(row[:t]), set()).add(row[t])
    return {k: sorted(v) for k, v in trie.items()}


def timed(fns: list, repeats: int) -> list[float]:
    """Best wall time of each `fn()` over `repeats` rounds, after a 2-user warm-up call.

    The functions alternate within a round, so load from other processes on a shared
    machine hits them alike and the ratio stays meaningful.
    """
    for fn in fns:
        fn(warm_up=True)  # allocations, one-off index builds, generation-config checks
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=12_000)
    ap.add_argument("--codebook", type=int, default=256, help="codes per SID level (3 levels)")
    ap.add_argument("--users", type=int, default=64, help="users decoded per measurement")
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 64],
                    help="users per decoding call")
    ap.add_argument("--beams", type=int, nargs="+", default=[20, 50])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    ap.add_argument("--gemm", type=int, default=2048, help="size of the limit's square GEMM")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--smoke", action="store_true",
                    help="smallest size that runs every code path (seconds): 300 items, "
                         "3 x 16 codes, the cpu preset, 4 users in calls of 2 and 4, "
                         "beams 3 and 5")
    args = ap.parse_args()
    if args.smoke:
        args.items, args.codebook, args.users = 300, 16, 4
        args.batch, args.beams = [2, 4], [3, 5]
        args.preset, args.gemm = "cpu", 256
    return args


def main() -> None:
    args = arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cat = synthetic_catalogue(args.items, levels=3, size=args.codebook)
    cfg = PRESETS[args.preset]
    ours = TIGER(cfg, cat).to(device).eval()
    t5 = t5_model(cat, cfg).to(device)
    t5.generation_config.eos_token_id = None  # fixed-length SIDs: never stop early
    history = torch.randint(0, args.items, (args.users, cfg.max_history))
    users = torch.arange(args.users)
    t5_ids, offsets = t5_inputs(cat, history, users, cfg.user_buckets)
    trie = t5_trie(cat, offsets)
    n_codes = cat.sids.shape[1]
    limit = gemm_limit(args.gemm, repeats=5) if device.type == "cpu" else float("nan")
    print(f"device {device}, torch threads {torch.get_num_threads()}, {args.items} items, "
          f"SID {n_codes} codes {cat.codebook_sizes}, {args.users} users in calls of "
          f"{args.batch}; preset {args.preset}, params sidrec "
          f"{sum(p.numel() for p in ours.parameters()):,}, "
          f"T5 {sum(p.numel() for p in t5.parameters()):,}")
    flops = {b: decode_flops(cfg, cat.codebook_sizes, cfg.max_history, b) for b in args.beams}
    print("FLOPs per user decode: " + ", ".join(
        f"beam {b}: {f / 1e6:.1f} M" for b, f in flops.items()))
    warm = [(history[:2], users[:2], t5_ids[:2])]

    def run_ours(chunks, beam: int, constrained: bool, warm_up: bool) -> list[int]:
        inference = TIGERInference(beam=beam, constrained=constrained)
        return [ours.generate(h.to(device), u.to(device), inference).n_invalid
                for h, u, _ in (warm if warm_up else chunks)]

    def run_t5(chunks, beam: int, constrained: bool, warm_up: bool) -> None:
        def allowed(_batch_id: int, ids: torch.Tensor) -> list[int]:
            return trie.get(tuple(ids[1:].tolist()), [])

        for _, _, ids in warm if warm_up else chunks:
            with torch.no_grad():
                t5.generate(
                    input_ids=ids.to(device), num_beams=beam, num_return_sequences=beam,
                    max_new_tokens=n_codes, min_new_tokens=n_codes, do_sample=False,
                    prefix_allowed_tokens_fn=allowed if constrained else None,
                )

    rows = []
    for batch in args.batch:
        chunks = list(zip(history.split(batch), users.split(batch), t5_ids.split(batch),
                          strict=True))
        for beam in args.beams:
            for constrained in (True, False):
                invalid: list[int] = []

                def ours_fn(warm_up=False, c=chunks, b=beam, k=constrained, out=invalid):
                    out[:] = run_ours(c, b, k, warm_up)

                def t5_fn(warm_up=False, c=chunks, b=beam, k=constrained):
                    run_t5(c, b, k, warm_up)

                t_ours, t_t5 = timed([ours_fn, t5_fn], args.repeats)
                rows.append((batch, beam, constrained, args.users / t_ours, args.users / t_t5,
                             sum(invalid) / (args.users * beam)))
    if device.type == "cpu":
        limit = max(limit, gemm_limit(args.gemm, repeats=5))
    report(rows, flops, limit, args.gemm)


def report(rows: list, flops: dict[int, int], limit: float, gemm: int) -> None:
    print(f"\nGEMM limit: {limit / 1e9:.1f} GFLOP/s (FP32 {gemm} x {gemm} torch.mm, "
          f"{torch.get_num_threads()} threads, best before/after the decoding)\n")
    print("| users/call | beam | mode | sidrec users/s | T5 generate users/s | speed-up "
          "| sidrec GFLOP/s | of GEMM limit | invalid SIDs |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for batch, beam, constrained, ours_ups, t5_ups, rate in rows:
        mode = "constrained" if constrained else "unconstrained"
        achieved = ours_ups * flops[beam]
        print(f"| {batch} | {beam} | {mode} | {ours_ups:.1f} | {t5_ups:.1f} | "
              f"{ours_ups / t5_ups:.1f}x | {achieved / 1e9:.1f} | {achieved / limit:.2f} | "
              f"{rate:.1%} |")
    batch = max(r[0] for r in rows)
    by_key = {(r[1], r[2]): r for r in rows if r[0] == batch}
    print(f"\nGoals at {batch} users per call:")
    for beam in sorted({r[1] for r in rows}):
        on, off = by_key[(beam, True)], by_key[(beam, False)]
        checks = [("of GEMM limit", on[3] * flops[beam] / limit, LIMIT_GOAL),
                  ("constrained / unconstrained users/s", on[3] / off[3], CONSTRAINED_GOAL)]
        if beam in SPEED_UP_GOAL:
            checks.insert(0, ("speed-up over T5", on[3] / on[4], SPEED_UP_GOAL[beam]))
        for name, value, goal in checks:
            verdict = "met" if value >= goal else "NOT met"
            print(f"- beam {beam}, constrained, {name}: {value:.2f} (goal >= {goal}): {verdict}")


if __name__ == "__main__":
    main()
