"""`python -m sidrec.scale --stage NAME --size N --work DIR --options JSON`: one stage in
this process, its result printed as a JSON line (how `run_stage` gets each stage's own
peak RSS; benchmarks/bench_scale.py is the command people run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sidrec.scale.common import Options
from sidrec.scale.driver import RUNNERS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", required=True, choices=RUNNERS)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--options", required=True)
    args = p.parse_args()
    opt = Options(**json.loads(args.options))
    torch.set_num_threads(opt.threads)
    print(json.dumps(RUNNERS[args.stage](args.size, args.work, opt)))


if __name__ == "__main__":
    main()
