"""Training speed: examples/s beside Hugging Face at the same model size, and the demo's
TIGER's time to its final validation NDCG@10.

    .venv/bin/python benchmarks/bench_train.py                 # ~25 min on 2 busy cores
    .venv/bin/python benchmarks/bench_train.py --quick         # throughput only, a few min
    .venv/bin/python benchmarks/bench_train.py --quick --compile --models tiger
    .venv/bin/python benchmarks/bench_train.py --smoke         # every step, tiny data: seconds

1. Throughput. One optimiser step is the trainer's own `train_epoch` (forward, backward,
   gradient clipping, AdamW), for TIGER and SASRec at the `cpu` and `paper` model sizes,
   on the demo's MovieLens-100k batches (a seeded draw of every training prefix for
   TIGER at batch 256, SASRec's windows at batch 128), beside the same-size Hugging Face
   model taking one AdamW step (with the same clipping) on the same examples, padded to
   the longest history in the batch as a Hugging Face collator pads them:
   - TIGER vs `T5ForConditionalGeneration`: encoder input = the user token + the
     history's SID tokens, labels = the target's SID (T5's own relative positions,
     RMSNorm and ReLU; our blocks: learned positions, LayerNorm, GELU);
   - SASRec vs `GPT2LMHeadModel`: T5 has no decoder-only form, and GPT-2 is Hugging
     Face's causal LM of SASRec's shape (item vocabulary, CE over all items at every
     real position, like SASRec's `loss: ce`).
   The two run in turns (ours, theirs, ours, ...), and each is the median over rounds.
2. Where the step goes (TIGER, `cpu` size): the encoder's share of a step, measured with
   the encoder alone; and the lever for short histories, `group_by_length`, on Amazon
   Beauty's prefixes (mean tokens the encoder reads per example, and examples/s).
3. Time to quality: the demo's TIGER (`--preset cpu`, the demo's run directory and SIDs)
   trained from scratch: wall time until its validation NDCG@10 first reaches the value
   it ends with; `--levers` adds the same run with 2 processes x 1 thread (torchrun).

Results of this script on 2026-11-30 are in docs/benchmarks.md (Training speed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tiny_data import movielens_table

from sidrec.data import PrepareConfig, prepare
from sidrec.data.dataset import Dataset
from sidrec.device import resolve_device
from sidrec.epoch import group_by_length, make_optimizer, train_epoch, window_examples
from sidrec.models.base import Catalogue
from sidrec.presets import resolve_config
from sidrec.train import train

DEMO_RUN = Path("runs/ml-100k-holdout")  # what `make demo` prepares (sidrec bench)
BEAUTY = Path("../shared/data/amazon-beauty-2014")


# ---------------------------------------------------------------- data


def demo_run(root: Path, smoke: bool = False) -> Path:
    """The demo's run directory (prepared, embedded, tokenized as `sidrec bench` does);
    `smoke`: the same stages on a 60-user, 48-item table with 8 codes per SID level."""
    from sidrec.bench import PROFILES
    from sidrec.embed import embed
    from sidrec.tokenize import run_tokenize, tokenizer_config

    demo = PROFILES["demo"]
    config, options = demo.prepare, dict(demo.tokenize.options)
    if smoke:
        table = movielens_table(root.parent / "tiny-table", n_users=60, n_items=48)
        config = dataclasses.replace(config, source=table)
        options["codebook_size"] = 8
    prepare(root, config)
    embed(root, demo.embed, progress=False)
    run_tokenize(root, tokenizer_config(demo.tokenize.method, demo.tokenize.preset, options),
                 progress=False)
    return root


def random_sids(n_items: int, sizes: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Unique random SIDs [n_items, len(sizes) + 1] (a collision token last)."""
    rng = np.random.default_rng(seed)
    prefix = np.stack([rng.integers(0, s, n_items) for s in sizes], axis=1)
    collision = np.zeros(n_items, dtype=np.int64)
    seen: dict[tuple, int] = {}
    for i, row in enumerate(map(tuple, prefix)):
        collision[i] = seen.get(row, 0)
        seen[row] = collision[i] + 1
    return np.column_stack([prefix, collision]).astype(np.int64)


def build(name: str, size: str, ds: Dataset, sids: np.ndarray):
    """(model, train config) of `name` at preset `size`, seeded, in train mode."""
    settings = resolve_config(name, size)
    sizes = tuple(int(v) + 1 for v in sids.max(axis=0))
    catalogue = Catalogue(item_text=list(ds.item_text), cold=torch.from_numpy(ds.cold.copy()),
                          popularity=torch.as_tensor(ds.popularity(), dtype=torch.float32),
                          sids=torch.from_numpy(sids), codebook_sizes=sizes)
    torch.manual_seed(0)
    return settings.cls(settings.model, catalogue), settings.train


def examples_of(model, ds: Dataset) -> dict[str, torch.Tensor]:
    h, t, u = window_examples(ds) if model.trains_every_position else ds.train_examples()
    return {"history": torch.from_numpy(h), "target": torch.from_numpy(t),
            "user": torch.from_numpy(u)}


def batches(examples: dict[str, torch.Tensor], perm: torch.Tensor, size: int) -> list[dict]:
    return [{k: v[idx] for k, v in examples.items()} for idx in perm.split(size)]


def trimmed(history: torch.Tensor) -> torch.Tensor:
    """History [B, L] without the columns padded in every row (what a collator pads to)."""
    keep = (history >= 0).any(dim=0).nonzero()
    return history[:, int(keep[0]) if len(keep) else history.shape[1]:]


# ---------------------------------------------------------------- Hugging Face twins


def hf_t5(tiger):
    """T5ForConditionalGeneration of TIGER's sizes and vocabulary, and its batch builder."""
    from transformers import T5Config, T5ForConditionalGeneration

    cfg, tok = tiger.cfg, tiger.tokens
    t5 = T5ForConditionalGeneration(T5Config(
        vocab_size=tok.emb.num_embeddings, d_model=cfg.d_model, d_kv=cfg.head_dim,
        d_ff=cfg.d_ff, num_layers=cfg.n_encoder_layers,
        num_decoder_layers=cfg.n_decoder_layers, num_heads=cfg.n_heads,
        dropout_rate=cfg.dropout, pad_token_id=0, decoder_start_token_id=1))

    def inputs(batch: dict) -> dict:
        h = trimmed(batch["history"])  # [B, L']
        pad = (h < 0).repeat_interleave(tok.n_codes, dim=1)  # [B, L' * n_codes]
        ids = tok.code_tokens(tok.codes[h.clamp_min(0)]).flatten(1).masked_fill(pad, 0)
        ids = torch.cat([tok.user_tokens(batch["user"])[:, None], ids], dim=1)  # [B, S]
        labels = tok.code_tokens(tok.codes[batch["target"]])  # [B, n_codes]
        return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": labels}

    def loss(model, x: dict) -> torch.Tensor:
        return model(**x).loss

    return t5, inputs, loss


def hf_gpt2(sasrec):
    """GPT2LMHeadModel of SASRec's sizes over the item vocabulary, and its batch builder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from sidrec.models.sasrec import next_items

    cfg = sasrec.cfg
    gpt = GPT2LMHeadModel(GPT2Config(
        vocab_size=sasrec.catalogue.n_items + 1, n_positions=cfg.max_len, n_embd=cfg.d_model,
        n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff, resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout, attn_pdrop=0.0))

    def inputs(batch: dict) -> dict:
        h = trimmed(batch["history"][:, -cfg.max_len:])  # [B, L']
        real = h >= 0
        y = next_items(h, batch["target"])  # [B, L']
        position = (real.long().cumsum(dim=1) - 1).clamp_min(0)
        return {"input_ids": (h + 1).clamp_min(0), "attention_mask": real.long(),
                "position_ids": position, "real": real, "y": y}

    def loss(model, x: dict) -> torch.Tensor:
        hidden = model.transformer(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                                   position_ids=x["position_ids"]).last_hidden_state
        logits = model.lm_head(hidden[x["real"]])[:, 1:]  # [N, n_items], no padding token
        return F.cross_entropy(logits, x["y"][x["real"]])

    return gpt, inputs, loss


# ---------------------------------------------------------------- timing


def throughput(name: str, size: str, ds: Dataset, sids: np.ndarray, args) -> dict:
    """Per-step seconds of ours and of the Hugging Face twin on the same batches."""
    model, cfg = build(name, size, ds, sids)
    cfg = dataclasses.replace(cfg, precision=args.precision)
    twin, twin_inputs, twin_loss = (hf_t5 if name == "tiger" else hf_gpt2)(model)
    examples = examples_of(model, ds)
    g = torch.Generator().manual_seed(0)
    n = args.steps * cfg.batch_size
    perm = torch.randperm(len(examples["target"]), generator=g)[:n]
    hf_batches = [twin_inputs(b) for b in batches(examples, perm, cfg.batch_size)]
    optimizer = make_optimizer(model, cfg)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=cfg.lr)
    stepper = torch.compile(model) if args.compile else model

    def ours() -> None:
        train_epoch(stepper, optimizer, examples, perm, cfg, 0, 10**6)

    def theirs(bf16: bool) -> None:
        twin.train()
        for x in hf_batches:
            twin_opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = twin_loss(twin, x)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(twin.parameters(), cfg.grad_clip)
            twin_opt.step()

    # HF in fp32 always (how T5 and GPT-2 train on a CPU by default); with --precision
    # bf16 also under the same bf16 autocast as ours, the like-for-like twin.
    runs = {"ours": ours, "hf": lambda: theirs(False)}
    if args.precision == "bf16":
        runs["hf_bf16"] = lambda: theirs(True)
    for fn in runs.values():  # warm-up (and compilation)
        fn()
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(args.rounds):
        for key, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - t0) / args.steps)
    rate = {k: cfg.batch_size / statistics.median(v) for k, v in times.items()}
    return {"model": name, "size": size, "batch": cfg.batch_size, **rate,
            "params": sum(p.numel() for p in model.parameters()),
            "hf_params": sum(p.numel() for p in twin.parameters())}


def encoder_share(ds: Dataset, sids: np.ndarray, args) -> float:
    """Fraction of a TIGER (cpu size) training step spent in the encoder (forward+backward)."""
    model, cfg = build("tiger", "cpu", ds, sids)
    examples = examples_of(model, ds)
    perm = torch.randperm(len(examples["target"]), generator=torch.Generator().manual_seed(1))
    batch = batches(examples, perm[: cfg.batch_size], cfg.batch_size)[0]
    model.train()

    def full() -> None:
        model(batch)["loss"].backward()

    def encoder() -> None:
        memory, _ = model.encoder(batch["history"], batch["user"])
        memory.sum().backward()

    full(), encoder()
    t = {"full": [], "enc": []}
    for _ in range(args.rounds * 2):
        for key, fn in (("full", full), ("enc", encoder)):
            t0 = time.perf_counter()
            fn()
            t[key].append(time.perf_counter() - t0)
    return statistics.median(t["enc"]) / statistics.median(t["full"])


def grouped_lever(beauty: Dataset, size: str, args) -> dict:
    """TIGER on Amazon Beauty's prefixes: random batches vs `group_by_length`."""
    sids = random_sids(beauty.n_items, (256, 256, 256))
    model, cfg = build("tiger", size, beauty, sids)
    examples = examples_of(model, beauty)
    lengths = (examples["history"] >= 0).sum(dim=1)
    n = len(lengths)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    orders = {"random": perm, "grouped": group_by_length(perm, lengths, cfg.batch_size)}
    optimizer = make_optimizer(model, cfg)
    out = {}
    for label, order in orders.items():
        widths = [int(lengths[b].max()) for b in order.split(cfg.batch_size)]
        tokens = 1 + 4 * statistics.mean(widths)  # user token + 4 codes per item
        # time 10 batches spread over the first pool of 50 (a grouped pool runs long to
        # short, so a spread covers its lengths; random batches are all alike)
        pick = torch.linspace(0, 49, 10).long()
        sample = torch.cat([order.split(cfg.batch_size)[i] for i in pick.tolist()])
        train_epoch(model, optimizer, examples, sample[: cfg.batch_size], cfg, 0, 10**6)
        t0 = time.perf_counter()
        train_epoch(model, optimizer, examples, sample, cfg, 0, 10**6)
        out[label] = {"tokens": tokens, "ex_s": len(sample) / (time.perf_counter() - t0)}
    return out


# ---------------------------------------------------------------- time to quality


def time_to_quality(run: Path, args, processes: int = 1) -> dict:
    """Train the demo's TIGER from scratch in a copy of `run` (`processes` > 1: DDP, one
    thread each); seconds until its valid NDCG@10 first reaches its final value
    (validation time included, process start-up not)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("models", "metrics.json",
                                                                 "results.md", "bench*"))
        ends = Path(tmp) / "ends.jsonl"
        if processes == 1:  # as the demo trains it: the trainer's thread count
            _train_demo_tiger(0, copy, 0, ends, args.precision)
        else:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            torch.multiprocessing.spawn(_ddp_worker, nprocs=processes,
                                        args=(processes, port, copy, ends, args.precision))
        curve = [json.loads(line) for line in ends.read_text().splitlines()]
    final = curve[-1]["ndcg"]
    reached = next(e["seconds"] for e in curve if e["ndcg"] >= final)
    return {"processes": processes, "final": final, "seconds": reached, "curve": curve}


def _train_demo_tiger(rank: int, run: Path, threads: int, ends: Path,
                      precision: str = "fp32") -> None:
    start = time.perf_counter()

    def mark(entry: dict) -> None:  # rank 0 appends (seconds so far, valid NDCG@10)
        if rank == 0:
            with ends.open("a") as f:
                f.write(json.dumps({"seconds": time.perf_counter() - start,
                                    "ndcg": entry["valid_ndcg@10"]}) + "\n")

    over = {"num_threads": threads, "precision": precision}
    train(resolve_config("tiger", "cpu", None, over), run, progress=False, on_epoch_end=mark)


def _ddp_worker(rank: int, world: int, port: int, run: Path, ends: Path,
                precision: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    _train_demo_tiger(rank, run, 1, ends, precision)


# ---------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=DEMO_RUN)
    parser.add_argument("--beauty", type=Path, default=BEAUTY)
    # 1 thread by default: with 2 threads on a busy 2-core machine every op waits for both
    # threads to be scheduled, and timings swing several-fold between runs.
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of the throughput rows (0: the trainer's)")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per timing")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument("--compile", action="store_true", help="torch.compile our model")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="our training precision (bf16: autocast; the CPU needs "
                             "avx512_bf16 or AMX for it to pay)")
    parser.add_argument("--models", default="tiger,sasrec", help="throughput rows")
    parser.add_argument("--quick", action="store_true", help="throughput only")
    parser.add_argument("--levers", action="store_true", help="time to quality with 2 processes")
    parser.add_argument("--smoke", action="store_true",
                        help="smallest size (seconds): every step on a tiny table in a "
                             "temporary run (cpu size, 1 step, 1 round; no Amazon Beauty "
                             "lever)")
    args = parser.parse_args()
    resolve_device("cpu", args.threads)
    threads = torch.get_num_threads()
    if args.smoke:
        args.steps, args.rounds, args.beauty = 1, 1, None
        with tempfile.TemporaryDirectory() as tmp:
            report(demo_run(Path(tmp) / "run", smoke=True), args, threads)
    else:
        report(demo_run(args.run_dir), args, threads)


def report(run: Path, args: argparse.Namespace, threads: int) -> None:
    ds = Dataset.load(run)
    sids = np.load(run / "sids.npy")
    print(f"{time.strftime('%Y-%m-%d')}, {threads} CPU thread(s), torch {torch.__version__}; "
          f"data: {run} ({len(ds.train_examples()[1]):,} prefixes)")

    sizes = ("cpu",) if args.smoke else ("cpu", "paper")  # the same code at either size
    rows = [throughput(m, s, ds, sids, args) for m in args.models.split(",") for s in sizes]
    twin = {"tiger": "HF T5", "sasrec": "HF GPT-2"}
    ours = f"ours ({args.precision}{', compiled' if args.compile else ''})"
    bf16 = args.precision == "bf16"
    print(f"\n| model | size | params | batch | {ours} ex/s | HF twin | HF fp32 ex/s "
          f"| ours / HF fp32 |{' HF bf16 ex/s | ours / HF bf16 |' if bf16 else ''}")
    print(f"|---|---|---:|---:|---:|---|---:|---:|{'---:|---:|' if bf16 else ''}")
    for r in rows:
        like = f" {r['hf_bf16']:,.0f} | {r['ours'] / r['hf_bf16']:.2f}x |" if bf16 else ""
        print(f"| {r['model']} | {r['size']} | {r['params']:,} | {r['batch']} | {r['ours']:,.0f} "
              f"| {twin[r['model']]} | {r['hf']:,.0f} | {r['ours'] / r['hf']:.2f}x |{like}")
    if args.quick:
        return
    share = encoder_share(ds, sids, args)
    print(f"\nTIGER (cpu size) on the demo's batches: the encoder takes {share:.0%} of a "
          "training step's forward + backward")
    beauty_dir = Path("runs/beauty")
    if args.beauty and args.beauty.exists():
        prepare(beauty_dir, PrepareConfig(source=str(args.beauty)))
        beauty = Dataset.load(beauty_dir)
        print("\n| TIGER size | batches on Amazon Beauty | encoder tokens / example | ex/s |")
        print("|---|---|---:|---:|")
        for size in ("cpu",):
            for label, r in grouped_lever(beauty, size, args).items():
                print(f"| {size} | {label} | {r['tokens']:.1f} | {r['ex_s']:,.0f} |")

    demo_threads = min(4, os.cpu_count() or 1)  # sidrec.device's default
    runs = [time_to_quality(run, args)]
    if args.levers:
        runs.append(time_to_quality(run, args, processes=2))
    print("\n| demo TIGER | processes x threads | final valid NDCG@10 | seconds to reach it "
          "| valid NDCG@10 per epoch (time) |")
    print("|---|---|---:|---:|---|")
    for r in runs:
        layout = f"{r['processes']} x {demo_threads if r['processes'] == 1 else 1}"
        curve = ", ".join(f"{e['ndcg']:.4f} ({e['seconds']:.0f} s)" for e in r["curve"])
        print(f"| preset cpu, {args.precision} | {layout} | {r['final']:.4f} "
              f"| {r['seconds']:.0f} | {curve} |")
    if not math.isfinite(runs[0]["final"]):
        raise SystemExit("validation NDCG is not finite")


if __name__ == "__main__":
    main()
