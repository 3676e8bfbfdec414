"""`sidrec <stage> ...`: one subcommand per pipeline stage, each a few lines over the library.

Settings come from flags for the common ones and `key=value` for any config field.
A user mistake prints one line (`sidrec: error: ...`) and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
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


def cmd_embed(args: argparse.Namespace) -> None:
    from sidrec.embed import EmbedConfig, embed

    settings = parse_overrides(args.overrides)
    if args.encoder:
        settings["encoder"] = args.encoder
    info = embed(args.run_dir, from_dict(EmbedConfig, settings, "embed"))
    origin = "cache" if info["cached"] else "encoder"
    print(f"embeddings: {info['items']:,} x {info['dim']} from {info['encoder']} ({origin})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="prepare a dataset into a run directory")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data_sub.add_parser("prepare", help="raw input -> RUN_DIR/dataset/")
    p.add_argument("source", help="`ml-100k`, or a folder/file (GroupLens, RecBole, Amazon, CSV)")
    p.add_argument("--run-dir", help="output run directory (default: runs/<source name>)")
    p.add_argument("--format", choices=["auto", "ml-100k", "grouplens", "recbole", "amazon",
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

    p = sub.add_parser("embed", help="item text -> RUN_DIR/embeddings.npy")
    p.add_argument("run_dir")
    p.add_argument("--encoder", help="sentence-transformers name or path "
                   "(default all-MiniLM-L6-v2, shipped offline)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_embed)
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
        func(args)
    except SidrecError as e:
        print(f"sidrec: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sidrec: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
