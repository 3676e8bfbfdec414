"""Cost vs catalogue size, 10k -> 100k -> 1M items: which part of sidrec breaks first.

    .venv/bin/python benchmarks/bench_scale.py                     # 10k, 100k, 1M (~1 h, 2 cores)
    .venv/bin/python benchmarks/bench_scale.py --max-items 100000  # a quicker run
    .venv/bin/python benchmarks/bench_scale.py --report            # table + plot from the JSON

What each stage measures, and how: `sidrec.scale`. Results go to `<work>/scale.json`
(`--work`, default runs/scale), the plot to `--plot` (docs/scale.png).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sidrec import scale

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-items", type=int, default=scale.SIZES[-1])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "scale")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "scale.png")
    p.add_argument("--report", action="store_true", help="only print and plot scale.json")
    p.add_argument("--stages", default=",".join(scale.STAGES))
    args = p.parse_args(argv)
    opt = scale.Options()
    torch.set_num_threads(opt.threads)
    if not args.report:
        sizes = [n for n in scale.SIZES if n <= args.max_items]
        scale.run_all(sizes, args.work, opt, stages=tuple(args.stages.split(",")))
    record = json.loads((args.work / "scale.json").read_text())
    scale.plot(record, args.plot)
    print(scale.table(record))
    print(f"plot: {args.plot}")
    print("\n".join(scale.ratios(record) + scale.dates(record)))


if __name__ == "__main__":
    main()
