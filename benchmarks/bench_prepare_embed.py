"""Wall time of the data and embed stages on MovieLens-100k, against the project's goals.

    .venv/bin/python benchmarks/bench_prepare_embed.py [--threads 2] [--device cpu]
    .venv/bin/python benchmarks/bench_prepare_embed.py --smoke   # 40 items, no download

Goals: `prepare` + `embed` under 60 s on 2 CPU cores with an empty cache, and a second
`embed` of the same catalogue under 2 s. The cache starts empty (SIDREC_CACHE points at a
temporary folder), except for the recbole wheel that ships ml-100k, which is copied in from
the user's cache so that no network time is measured (it is fetched once if absent).
"Cold" therefore means: no embeddings cached, sentence-transformers not yet imported, the
encoder not yet loaded. The second embed is timed three ways: in the same run directory
(nothing to do), into a new run directory in-process (served from the sidrec cache), and
as a new `sidrec embed` process (what a user types; includes Python and library imports).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tiny_data import movielens_table

T = TypeVar("T")

GOAL_FIRST_S = 60.0
GOAL_SECOND_S = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (goal: 2)")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--smoke", action="store_true",
                        help="smallest size (seconds): a 40-item MovieLens-format table "
                             "instead of MovieLens-100k (nothing fetched)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        (cache / "wheels").mkdir(parents=True)
        if args.smoke:
            source = movielens_table(Path(tmp) / "tiny", n_users=30, n_items=40)
        else:
            from sidrec.data import readers

            wheel = readers.recbole_wheel()  # the user's cache; downloads once if absent
            shutil.copy2(wheel, cache / "wheels" / wheel.name)
            source = "ml-100k"
        os.environ["SIDREC_CACHE"] = str(cache)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        rows = run(Path(tmp), args.threads, args.device, source)

    data = "a tiny MovieLens-format table" if args.smoke else "MovieLens-100k"
    print(f"\n{data}, {args.threads} torch threads on {os.cpu_count()} CPUs, "
          f"device {args.device}\n")
    print("| step | seconds | CPU seconds | goal s | ratio (seconds / goal) |")
    print("|---|---|---|---|---|")
    for name, seconds, cpu, goal in rows:
        ratio = f"{seconds / goal:.2f}" if goal else "–"
        print(f"| {name} | {seconds:.2f} | {cpu:.2f} | {goal or '–'} | {ratio} |")
    print("\nCPU seconds: all threads of this process (children for the CLI row); a wall time"
          "\nwell above them on a busy machine means the cores were shared.")


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float, float]:
    """(result, wall seconds, CPU seconds of this process and its children)."""

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
            resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    w0, c0 = time.perf_counter(), cpu()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - w0, cpu() - c0


def run(tmp: Path, threads: int, device: str,
        source: str) -> list[tuple[str, float, float, float | None]]:
    import torch

    torch.set_num_threads(threads)
    from sidrec.data import PrepareConfig, prepare
    from sidrec.embed import EmbedConfig, embed

    cfg = EmbedConfig(device=device)
    run_dir = tmp / "runs" / "ml-100k"
    manifest, t_prepare, c_prepare = timed(prepare, run_dir, PrepareConfig(source=source))
    info, t_embed, c_embed = timed(embed, run_dir, cfg, progress=False)
    assert not info["cached"], "the embedding cache was not empty"
    c = manifest["counts"]
    print(f"prepared {c['users']} users, {c['items']} items, {c['interactions']} interactions; "
          f"embedded {info['items']} x {info['dim']}")

    n_items = info["items"]
    info, t_same, c_same = timed(embed, run_dir, cfg, progress=False)
    assert info["cached"]

    other = tmp / "runs" / "ml-100k-copy"
    shutil.copytree(run_dir / "dataset", other / "dataset")
    info, t_new_dir, c_new_dir = timed(embed, other, cfg, progress=False)
    assert info["cached"]

    third = tmp / "runs" / "ml-100k-cli"
    shutil.copytree(run_dir / "dataset", third / "dataset")
    cmd = [sys.executable, "-m", "sidrec.cli", "embed", str(third), f"device={device}"]
    proc, t_cli, c_cli = timed(subprocess.run, cmd, capture_output=True, text=True)
    if proc.returncode != 0 or "(cache)" not in proc.stdout:
        raise SystemExit(f"sidrec embed failed: {proc.stderr.strip() or proc.stdout.strip()}")

    return [
        ("prepare (cold, wheel cached)", t_prepare, c_prepare, None),
        (f"embed (cold: import, load MiniLM, encode {n_items:,})", t_embed, c_embed, None),
        ("prepare + embed", t_prepare + t_embed, c_prepare + c_embed, GOAL_FIRST_S),
        ("embed again, same run dir", t_same, c_same, GOAL_SECOND_S),
        ("embed, new run dir (sidrec cache)", t_new_dir, c_new_dir, GOAL_SECOND_S),
        ("`sidrec embed`, new process (sidrec cache)", t_cli, c_cli, GOAL_SECOND_S),
    ]


if __name__ == "__main__":
    main()
