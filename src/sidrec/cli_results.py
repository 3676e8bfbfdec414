"""The CLI's results verbs: `sidrec bench` (the whole pipeline, with its report) and
`sidrec report` (that report again, rendered from the run's bench.json alone, as the docs'
results pages are). Each verb is a parser function (`add_<verb>`) beside the `cmd_<verb>`
it runs; `sidrec.cli` registers them beside the stage verbs."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from sidrec.config import parse_overrides
from sidrec.errors import SidrecError


def add_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="the whole pipeline for every model, with a report")
    p.add_argument("source", nargs="?", help="dataset (default: the profile's, ml-100k)")
    p.add_argument("--profile", default="demo",
                   help="demo (1 seed), full (3 seeds and 3 holdout draws), beauty-cpu "
                   "(the papers' Amazon protocol on 2 CPU cores), paper (one GPU)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> None:
    from sidrec.bench import bench_config, run_bench
    from sidrec.run import RunDir

    source, pairs = args.source, list(args.overrides)
    if source and "=" in source:  # `sidrec bench seeds=[0,1]`: no source given
        source, pairs = None, [source, *pairs]
    cfg = bench_config(args.profile, source, parse_overrides(pairs))
    # The report names the command that made it, as a newcomer would retype it.
    command = shlex.join(["sidrec", "bench", *([source] if source else []), "--profile",
                          args.profile, *pairs])
    out = run_bench(cfg, command=command)
    print(out["report"])
    print(f"wrote {RunDir(out['run_dir']).bench_report} and {', '.join(out['plots'])}")


def add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="a bench's report again, from its bench.json alone",
                       description="Render the report of `sidrec bench` (the text of its "
                       "bench.md) from RUN's bench.json, or from a copy of it, such as "
                       "docs/results/*.json. Several records of the same settings (a "
                       "profile run one model at a time) make one table, each model as "
                       "the last of them measured it. Nothing is trained or evaluated.")
    p.add_argument("run", metavar="RUN", nargs="+",
                   help="a run directory, or a bench.json file")
    p.add_argument("--out", help="write the markdown here instead of printing it")
    p.set_defaults(func=cmd_report, read_only=True)


def cmd_report(args: argparse.Namespace) -> None:
    from sidrec.bench import merge_records
    from sidrec.io import write_text
    from sidrec.report import render_bench

    records = [read_record(Path(run)) for run in args.run]
    text = render_bench(merge_records(records) if len(records) > 1 else records[0])
    if args.out:
        write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")


def read_record(path: Path) -> dict[str, Any]:
    """A run directory's bench.json (or that file itself), or a SidrecError in one line."""
    from sidrec.io import read_json

    file = path if path.is_file() or path.suffix == ".json" else path / "bench.json"
    if not file.is_file():
        raise SidrecError(f"{file}: no such file; `sidrec bench` writes it into its run "
                          "directory")
    try:
        record = read_json(file)
    except (OSError, ValueError) as e:
        raise SidrecError(f"{file}: unreadable JSON ({e}); copy the run's bench.json again, "
                          "or re-run `sidrec bench`") from None
    if not isinstance(record, dict):
        raise SidrecError(f"{file}: not a bench record (a JSON object)")
    return record
