"""The `sidrec` verbs that build or read a run directory, one pipeline stage each: `data`
(prepare, synth, stats), `embed`, `tokenize`, `train`, `evaluate`, and `analyze`. Each verb
is a parser function (`add_<verb>`) beside the `cmd_<verb>` it runs; `sidrec.cli`
registers them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sidrec.config import from_dict, merge, parse_overrides
from sidrec.errors import SidrecError

# `sub` below is argparse's subparsers action (a private class): typed Any, as in cli_results.


def add_data(sub: Any) -> None:
    data = sub.add_parser("data", help="prepare a dataset into a run directory")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    _add_prepare(data_sub)
    _add_synth(data_sub)
    _add_stats(data_sub)


def default_run_dir(source: str) -> str:
    """Where `data prepare` writes without --run-dir: runs/<source name>."""
    name = Path(source.rstrip("/")).name or "data"
    return str(Path("runs") / Path(name).stem.split(".")[0])


def _add_prepare(data_sub: Any) -> None:
    p = data_sub.add_parser("prepare", help="raw input -> RUN_DIR/dataset/")
    p.add_argument("source", help="`ml-100k`, or a folder/file (MovieLens, Amazon 2014/2023, "
                   "Steam, RecBole, CSV/TSV/Parquet/JSON lines; docs/datasets.md)")
    p.add_argument("--run-dir", help="output run directory (default: runs/<source name>)")
    p.add_argument("--format", choices=["auto", "ml-100k", "grouplens", "movielens", "recbole",
                                        "amazon", "amazon-2014", "amazon-2023", "steam",
                                        "table"])
    p.add_argument("--items", help="items table / meta file when not beside the interactions")
    p.add_argument("--kcore", type=int, help="k-core filter (0 = none, 5 = the papers')")
    p.add_argument("--max-history", type=int)
    p.add_argument("--cold-mode", choices=["natural", "holdout"])
    p.add_argument("--cold-fraction", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> None:
    from sidrec.data import PrepareConfig, prepare, summary

    flags = {k: v for k, v in {
        "format": args.format, "items": args.items, "kcore": args.kcore,
        "max_history": args.max_history, "cold_mode": args.cold_mode,
        "cold_fraction": args.cold_fraction, "seed": args.seed,
    }.items() if v is not None}
    settings = merge({"source": args.source, **flags}, parse_overrides(args.overrides))
    cfg = from_dict(PrepareConfig, settings, "data prepare")
    run_dir = args.run_dir or default_run_dir(args.source)
    manifest = prepare(run_dir, cfg, force=args.force)
    print(summary(manifest))
    print(f"wrote {run_dir}/dataset/")


def _add_synth(data_sub: Any) -> None:
    p = data_sub.add_parser("synth", help="a synthetic catalogue of any size (scale tests)")
    p.add_argument("out", help="folder for interactions.parquet, items.parquet, vectors.npy")
    p.add_argument("--items", type=int, default=10_000, help="catalogue size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", help="also prepare this run directory from the tables, with "
                   "the vectors as its embeddings.npy")
    p.add_argument("--cold-fraction", type=float, default=0.0,
                   help="with --run-dir: hold this fraction of the items out (cold)")
    p.add_argument("--force", action="store_true", help="regenerate even if up to date")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="SynthConfig fields")
    p.set_defaults(func=cmd_data_synth)


def cmd_data_synth(args: argparse.Namespace) -> None:
    from sidrec.data import summary
    from sidrec.data.synth import SynthConfig, prepare_synthetic, write_synth

    settings = merge({"n_items": args.items, "seed": args.seed}, parse_overrides(args.overrides))
    record = write_synth(args.out, from_dict(SynthConfig, settings, "data synth"), args.force)
    c = record["counts"]
    done = "reused" if record["cached"] else f"made in {record['seconds']:.1f}s"
    print(f"{args.out}: {c['items']:,} items, {c['users']:,} users, {c['interactions']:,} "
          f"interactions ({done})")
    if args.run_dir:
        manifest = prepare_synthetic(args.run_dir, args.out, args.cold_fraction, args.seed)
        print(summary(manifest))
        print(f"wrote {args.run_dir}/dataset/ and embeddings.npy (encoder: synthetic)")


def _add_stats(data_sub: Any) -> None:
    p = data_sub.add_parser("stats", help="users, items, interactions, density, lengths, cold")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.set_defaults(func=cmd_data_stats, read_only=True)


def cmd_data_stats(args: argparse.Namespace) -> None:
    import json

    from sidrec.data import dataset_stats, format_stats

    stats = dataset_stats(args.run_dir)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))


def add_embed(sub: Any) -> None:
    p = sub.add_parser("embed", help="item text -> RUN_DIR/embeddings.npy")
    p.add_argument("run_dir")
    p.add_argument("--encoder", help="sentence-transformers name or path "
                   "(default all-MiniLM-L6-v2, shipped offline)")
    p.add_argument("--vectors", help="item vectors made elsewhere instead: .npy (with --ids), "
                   ".parquet or .csv of item id -> vector")
    p.add_argument("--ids", help="with a .npy --vectors: item ids, one per line, row order")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_embed)


def cmd_embed(args: argparse.Namespace) -> None:
    from sidrec.embed import EmbedConfig, embed

    settings = parse_overrides(args.overrides)
    settings.update({k: v for k, v in (("encoder", args.encoder), ("vectors", args.vectors),
                                       ("ids", args.ids)) if v})
    info = embed(args.run_dir, from_dict(EmbedConfig, settings, "embed"))
    origin = "cache" if info["cached"] else "file" if "vectors" in info else "encoder"
    source = info.get("vectors", info["encoder"])
    print(f"embeddings: {info['items']:,} x {info['dim']} from {source} ({origin})")


def add_tokenize(sub: Any) -> None:
    p = sub.add_parser("tokenize", help="embeddings -> semantic IDs (RUN_DIR/sids.npy)")
    p.add_argument("run_dir")
    p.add_argument("--method", default="rqkmeans", choices=["rqkmeans", "rqvae"])
    p.add_argument("--preset", default="small", help="small (default) or paper (3 x 256)")
    p.add_argument("--device", default="auto")
    p.add_argument("--force", action="store_true", help="refit even if up to date")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_tokenize)


def cmd_tokenize(args: argparse.Namespace) -> None:
    from sidrec.tokenize import diagnostics_markdown, run_tokenize, tokenizer_config

    cfg = tokenizer_config(args.method, args.preset, parse_overrides(args.overrides))
    info = run_tokenize(args.run_dir, cfg, device=None if args.device == "auto" else args.device,
                        force=args.force)
    print(diagnostics_markdown(info["diagnostics"]))
    origin = "reused" if info["cached"] else f"fitted in {info['fit']['seconds']:.1f}s"
    print(f"sids: {info['n_items']:,} items x {len(info['codebook_sizes'])} tokens "
          f"({info['method']}, {origin}) -> {args.run_dir}/sids.npy")


def add_train(sub: Any) -> None:
    from sidrec.models import available_models

    p = sub.add_parser("train", help="train a model into RUN_DIR/models/NAME/",
                       description="key=value: a model/train/inference/runtime setting. "
                       "tokenizer.key=value (SID models only) edits the preset's own tokenizer "
                       "(cobra), or else fits the model its own SIDs, naming the method: "
                       "tokenizer.method=rqkmeans tokenizer.codebook_size=64 [tokenizer.preset=]")
    p.add_argument("run_dir")
    p.add_argument("--model", required=True, choices=available_models())
    p.add_argument("--preset", default="cpu", help="cpu (default) or paper")
    p.add_argument("--name", help="model directory name (default: the model name)")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--no-early-stop", dest="early_stop", action="store_false",
                   help="train to max_epochs whatever patience says; a model that patience "
                   "stopped goes on from its last epoch, as if it had never stopped")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> None:
    from sidrec.presets import resolve_config, split_overrides
    from sidrec.train import train

    over = split_overrides(args.model, args.overrides)
    settings = resolve_config(args.model, args.preset, over["model"], over["train"],
                              inference_overrides=over["inference"],
                              runtime_overrides=over["runtime"],
                              tokenizer_overrides=over["tokenizer"])
    summary = train(settings, args.run_dir, name=args.name, resume=not args.restart,
                    early_stop=args.early_stop)
    if _rank() == 0:  # under torchrun every process trains; one reports
        print(f"{summary['model_dir']}: best valid {summary['metric']} = "
              f"{summary['best_valid']:.4f} at epoch {summary['best_epoch']} "
              f"({summary['epochs']} epochs{', resumed' if summary['resumed'] else ''})")


def _rank() -> int:
    from sidrec import distributed

    return distributed.current()[0]


def add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="full-ranking metrics of a trained model")
    p.add_argument("run_dir")
    p.add_argument("--model", required=True, help="model name (or its directory name)")
    p.add_argument("--name", help="model directory name if not the model name")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--ks", help="cut-offs, e.g. 5,10,20 or 50,100,200,500")
    p.add_argument("--device", default="auto")
    p.add_argument("--headline", action="store_true",
                   help="only the model's own inference, not its inference-time switches "
                        "or the masked row (one decode: for screening settings on valid)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="inference settings for this evaluation, e.g. beam=50 (no retraining)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from sidrec import distributed
    from sidrec.evaluate import evaluate_run
    from sidrec.report import format_table

    ks = _ks(args.ks) if args.ks else (5, 10, 20)
    ctx = distributed.setup(args.device)  # under torchrun: the ranks share the users
    metrics = evaluate_run(args.run_dir, args.name or args.model, args.split, ks,
                           device=str(ctx.device), save=ctx.main,
                           inference=parse_overrides(args.overrides),
                           headline_only=args.headline)
    if not ctx.main:
        return
    print(format_table(metrics))
    print(f"decode: {metrics['users_per_s']:,.0f} users/s; recorded in "
          f"{args.run_dir}/metrics.json and results.md")


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise SidrecError(
            f"--ks {text!r}: expected comma-separated integers, e.g. 5,10,20") from None
    if min(ks) < 1:
        raise SidrecError(f"--ks {text!r}: every cut-off must be >= 1, e.g. 5,10,20")
    return ks


def add_analyze(sub: Any) -> None:
    p = sub.add_parser("analyze", help="diagnostics (cold-start: generative overfitting; "
                                       "cobra: where coarse-to-fine decoding loses the target)")
    p.add_argument("analysis", choices=["cold-start", "cobra"])
    p.add_argument("run_dir")
    p.add_argument("--model", default=None,
                   help="a trained model: generative (tiger, liger) for cold-start, "
                        "a COBRA for cobra (default: tiger / cobra)")
    p.add_argument("--max-users", type=int, default=None,
                   help="users to analyse (default: 2000 for cold-start, 4000 for cobra)")
    p.add_argument("--split", choices=["valid", "test"], default="valid",
                   help="cobra: whose users (default valid: a diagnosis chooses nothing "
                        "on test)")
    p.set_defaults(func=cmd_analyze)


def cmd_analyze(args: argparse.Namespace) -> None:
    if args.max_users is not None and args.max_users < 1:
        raise SidrecError(f"--max-users {args.max_users}: must be >= 1 (e.g. 2000)")
    if args.analysis == "cobra":
        from sidrec.analyze_cobra import analyze_cobra, format_checks

        name = args.model or "cobra"
        summary = analyze_cobra(args.run_dir, name, args.split, args.max_users or 4000)
        print(f"{name}: sparse-ID beam and teacher-forced dense ranking ({args.split} users)")
        print(format_checks(summary))
        print(f"wrote {args.run_dir}/analysis/cobra_checks_{name}.json")
        return
    from sidrec.analyze import analyze_cold_start

    name = args.model or "tiger"
    summary = analyze_cold_start(args.run_dir, name, max_users=args.max_users or 2000)
    print(f"{name}: generative log P(SID), in-set vs cold-start (test users)")
    print("| quantity | n | mean | median | p10 | p90 |")
    print("|---|---|---|---|---|---|")
    for quantity, s in summary.items():
        print(f"| {quantity} | {s['n']} | {s['mean']:.2f} | {s['median']:.2f} | "
              f"{s['p10']:.2f} | {s['p90']:.2f} |")
    print(f"wrote {args.run_dir}/plots/cold_start_{name}.png")
