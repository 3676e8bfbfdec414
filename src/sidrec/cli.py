"""`sidrec <stage> ...`: one subcommand per pipeline stage, each a few lines over the library.

Settings come from flags for the common ones and `key=value` for any config field.
A user mistake prints one line (`sidrec: error: ...`) and exits with code 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from sidrec.config import from_dict, merge, parse_overrides
from sidrec.errors import SidrecError


def _default_run_dir(source: str) -> str:
    name = Path(source.rstrip("/")).name or "data"
    return str(Path("runs") / Path(name).stem.split(".")[0])


def cmd_prepare(args: argparse.Namespace) -> None:
    from sidrec.data import PrepareConfig, prepare, summary

    flags = {k: v for k, v in {
        "format": args.format, "items": args.items, "kcore": args.kcore,
        "max_history": args.max_history, "cold_mode": args.cold_mode,
        "cold_fraction": args.cold_fraction, "seed": args.seed,
    }.items() if v is not None}
    settings = merge({"source": args.source, **flags}, parse_overrides(args.overrides))
    cfg = from_dict(PrepareConfig, settings, "data prepare")
    run_dir = args.run_dir or _default_run_dir(args.source)
    manifest = prepare(run_dir, cfg, force=args.force)
    print(summary(manifest))
    print(f"wrote {run_dir}/dataset/")


def cmd_data_stats(args: argparse.Namespace) -> None:
    import json

    from sidrec.data import dataset_stats, format_stats

    stats = dataset_stats(args.run_dir)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))


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


def cmd_embed(args: argparse.Namespace) -> None:
    from sidrec.embed import EmbedConfig, embed

    settings = parse_overrides(args.overrides)
    settings.update({k: v for k, v in (("encoder", args.encoder), ("vectors", args.vectors),
                                       ("ids", args.ids)) if v})
    info = embed(args.run_dir, from_dict(EmbedConfig, settings, "embed"))
    origin = "cache" if info["cached"] else "file" if "vectors" in info else "encoder"
    source = info.get("vectors", info["encoder"])
    print(f"embeddings: {info['items']:,} x {info['dim']} from {source} ({origin})")


def cmd_tokenize(args: argparse.Namespace) -> None:
    from sidrec.tokenize import diagnostics_markdown, run_tokenize, tokenizer_config

    cfg = tokenizer_config(args.method, args.preset, parse_overrides(args.overrides))
    info = run_tokenize(args.run_dir, cfg, device=None if args.device == "auto" else args.device,
                        force=args.force)
    print(diagnostics_markdown(info["diagnostics"]))
    origin = "reused" if info["cached"] else f"fitted in {info['fit']['seconds']:.1f}s"
    print(f"sids: {info['n_items']:,} items x {len(info['codebook_sizes'])} tokens "
          f"({info['method']}, {origin}) -> {args.run_dir}/sids.npy")


def cmd_train(args: argparse.Namespace) -> None:
    from sidrec.presets import resolve_config, split_overrides
    from sidrec.train import train

    over = split_overrides(args.model, args.overrides)
    settings = resolve_config(args.model, args.preset, over["model"], over["train"],
                              inference_overrides=over["inference"],
                              runtime_overrides=over["runtime"],
                              tokenizer_overrides=over["tokenizer"])
    summary = train(settings, args.run_dir, name=args.name, resume=not args.restart)
    if _rank() == 0:  # under torchrun every process trains; one reports
        print(f"{summary['model_dir']}: best valid {summary['metric']} = "
              f"{summary['best_valid']:.4f} at epoch {summary['best_epoch']} "
              f"({summary['epochs']} epochs{', resumed' if summary['resumed'] else ''})")


def _rank() -> int:
    from sidrec import distributed

    return distributed.current()[0]


def cmd_evaluate(args: argparse.Namespace) -> None:
    from sidrec import distributed
    from sidrec.evaluate import evaluate_run
    from sidrec.report import format_table

    ks = _ks(args.ks) if args.ks else (5, 10, 20)
    ctx = distributed.setup(args.device)  # under torchrun: the ranks share the users
    metrics = evaluate_run(args.run_dir, args.name or args.model, args.split, ks,
                           device=str(ctx.device), save=ctx.main,
                           inference=parse_overrides(args.overrides))
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


def cmd_recommend(args: argparse.Namespace) -> None:
    import sidrec
    from sidrec.errors import UnknownItem

    # key=value words are inference settings (beam=50), the others item ids.
    settings = [*args.overrides, *(h for h in args.history if "=" in h)]
    history = [h for h in args.history if "=" not in h]
    rec = sidrec.load(args.model_dir, on_unknown="skip" if args.skip_unknown else "error",
                      inference=parse_overrides(settings))
    try:
        recs = rec.recommend(history, k=args.k, exclude_seen=args.exclude_seen,
                             user_id=args.user)
    except UnknownItem as e:  # the API's advice, in the command's words
        raise UnknownItem(e.row, e.unknown, "check the id, or pass --skip-unknown") from None
    items = [{**info, "score": score} for info, (_, score) in
             zip(rec.items([i for i, _ in recs]), recs, strict=True)]
    if args.json:
        import json

        rows = [{k: i[k] for k in ("id", "score", "title", "cold")} for i in items]
        print(json.dumps({"model": rec.name, "items": rows}, ensure_ascii=False))
        return
    for i in items:
        title = i["title"] + (" [new item]" if i["cold"] else "")
        print(f"{_tsv_field(i['id'])}\t{i['score']:.4f}\t{_tsv_field(title)}")


def _tsv_field(text: str) -> str:
    """`text` with backslash, tab, newline and carriage return written as \\\\, \\t, \\n,
    \\r, so an id holding them stays on its line and in its column."""
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def cmd_serve(args: argparse.Namespace) -> None:
    from sidrec.serve import ServeSettings, check_listen
    from sidrec.serve.settings import setting_names

    # key=value words are serve settings (max_wait_ms=5) or else inference settings (beam=40).
    pairs = parse_overrides(args.overrides)
    names = setting_names()
    flags = {"batching": False} if args.no_batching else {}
    settings = from_dict(ServeSettings, {**{k: v for k, v in pairs.items() if k in names},
                                         **flags}, "serve")
    inference = {k: v for k, v in pairs.items() if k not in names}
    check_listen(args.host, args.port)
    if args.ray:
        from sidrec.serve.ray_app import serve_ray

        serve_ray(args.model_dir, args.host, args.port, settings, inference,
                  replicas=args.replicas)
    else:
        from sidrec.serve import serve

        serve(args.model_dir, args.host, args.port, settings, inference,
              access_log=args.access_log)


def cmd_analyze(args: argparse.Namespace) -> None:
    from sidrec.analyze import analyze_cold_start

    if args.max_users < 1:
        raise SidrecError(f"--max-users {args.max_users}: must be >= 1 (e.g. 2000)")
    summary = analyze_cold_start(args.run_dir, args.model, max_users=args.max_users)
    print(f"{args.model}: generative log P(SID), in-set vs cold-start (test users)")
    print("| quantity | n | mean | median | p10 | p90 |")
    print("|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['n']} | {s['mean']:.2f} | {s['median']:.2f} | {s['p10']:.2f} | "
              f"{s['p90']:.2f} |")
    print(f"wrote {args.run_dir}/plots/cold_start_{args.model}.png")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="prepare a dataset into a run directory")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
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
    p = data_sub.add_parser("stats", help="users, items, interactions, density, lengths, cold")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.set_defaults(func=cmd_data_stats, read_only=True)

    p = sub.add_parser("embed", help="item text -> RUN_DIR/embeddings.npy")
    p.add_argument("run_dir")
    p.add_argument("--encoder", help="sentence-transformers name or path "
                   "(default all-MiniLM-L6-v2, shipped offline)")
    p.add_argument("--vectors", help="item vectors made elsewhere instead: .npy (with --ids), "
                   ".parquet or .csv of item id -> vector")
    p.add_argument("--ids", help="with a .npy --vectors: item ids, one per line, row order")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("tokenize", help="embeddings -> semantic IDs (RUN_DIR/sids.npy)")
    p.add_argument("run_dir")
    p.add_argument("--method", default="rqkmeans", choices=["rqkmeans", "rqvae"])
    p.add_argument("--preset", default="small", help="small (default) or paper (3 x 256)")
    p.add_argument("--device", default="auto")
    p.add_argument("--force", action="store_true", help="refit even if up to date")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_tokenize)

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
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="full-ranking metrics of a trained model")
    p.add_argument("run_dir")
    p.add_argument("--model", required=True, help="model name (or its directory name)")
    p.add_argument("--name", help="model directory name if not the model name")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--ks", help="cut-offs, e.g. 5,10,20 or 50,100,200,500")
    p.add_argument("--device", default="auto")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="inference settings for this evaluation, e.g. beam=50 (no retraining)")
    p.set_defaults(func=cmd_evaluate)

    from sidrec import cli_results

    cli_results.add_parsers(sub)  # bench, report

    p = sub.add_parser("recommend", help="top-k for one history of original item ids",
                       description="Prints one line per item: id, score and title, "
                       "tab-separated (an item not seen in training is marked [new item]). A "
                       "backslash, tab, newline or carriage return inside an id or a title "
                       "is written \\\\, \\t, \\n or \\r; --json prints them as they are.")
    p.add_argument("model_dir", help="runs/<name>/models/<model>")
    p.add_argument("history", nargs="+", help="original item ids, oldest first")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--skip-unknown", action="store_true", help="skip unknown ids (warn)")
    p.add_argument("--exclude-seen", action="store_true", help="leave out the history's items")
    p.add_argument("--user", help="a user id from training (its user token); default: an "
                   "anonymous user")
    p.add_argument("--json", action="store_true",
                   help='print {"model", "items": [{"id", "score", "title", "cold"}]}')
    p.set_defaults(func=cmd_recommend, overrides=[])

    p = sub.add_parser("serve", help="recommendations over HTTP (FastAPI; explorer page at /)",
                       description="Serve a trained model: POST /v1/recommend, "
                       "/v1/recommend/batch, /v1/items; GET /docs, /metrics, / (explorer). "
                       "key=value sets a serve setting (max_k, max_wait_ms, threads, ...; "
                       "sidrec/serve/settings.py) or else an inference setting (beam=40).")
    p.add_argument("model_dir", help="runs/<name>/models/<model>")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-batching", action="store_true",
                   help="one model call per request (dynamic batching off, for comparison)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--ray", action="store_true",
                   help="deploy on Ray Serve (pip install 'sidrec[ray]'), a local Ray instance")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("analyze", help="diagnostics (cold-start: generative overfitting)")
    p.add_argument("analysis", choices=["cold-start"])
    p.add_argument("run_dir")
    p.add_argument("--model", default="tiger", help="a trained generative model (tiger, liger)")
    p.add_argument("--max-users", type=int, default=2000)
    p.set_defaults(func=cmd_analyze)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value pairs may follow the flags too (plain parse_args would reject them there,
    # having already closed the positionals at the first flag).
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        if getattr(args, "run_dir", None) and not getattr(args, "read_only", False):
            from sidrec.run import RunDir

            RunDir(args.run_dir).check_writable()  # a file, or read-only: before any work
        with warnings.catch_warnings():  # a library warning is one line, not source code
            warnings.showwarning = _one_line_warning
            func(args)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError:  # `sidrec data stats RUN | head`: the reader has had enough
        _quiet_stdout()
        return 141  # 128 + SIGPIPE, what the shell reports for a command cut off so
    except SidrecError as e:
        print(f"sidrec: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # only the run directory's own (or a full disk): else a bug
        message = _os_error(e, args)
        if message is None:
            raise
        print(f"sidrec: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sidrec: interrupted", file=sys.stderr)
        return 130
    return 0


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of the lines still
    buffered for the closed pipe raises nothing (the recipe of Python's signal docs)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout with no file behind it (captured): no flush
        pass


def _one_line_warning(message: Warning | str, *_: object, **__: object) -> None:
    print(f"sidrec: warning: {message}", file=sys.stderr)


def _os_error(e: OSError, args: argparse.Namespace) -> str | None:
    """One line for an OSError on a path in (or above) the run or model directory of this
    command, or for a full disk; None for any other (a bug: its traceback is shown)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}; free some space (or pass another run directory) and re-run"
    roots = [getattr(args, name, None) for name in ("run_dir", "model_dir")]
    if getattr(args, "func", None) is cmd_prepare and not args.run_dir:
        roots.append(_default_run_dir(args.source))
    if e.filename is None:
        return None
    path = os.path.abspath(os.fsdecode(e.filename))
    for root in (os.path.abspath(r) for r in roots if r):
        if path == root or path.startswith(root + os.sep) or root.startswith(path + os.sep):
            hint = ("make it writable or pass another run directory"
                    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
                    else "check the run directory")
            return f"{e.filename}: {e.strerror or type(e).__name__}; {hint}"
    return None


if __name__ == "__main__":
    sys.exit(main())
