"""Training and evaluation past one process: 2 gloo processes on CPU (sidrec.distributed).

The processes are started the two ways a user would: `torchrun -m sidrec train ...` (the
CLI, in a subprocess) and `torch.multiprocessing.spawn` around the library calls (where a
test needs to kill a rank mid-epoch, or to evaluate with a small batch). Tiny TIGER, toy
data, 1 CPU thread per process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import toy_dataset, write_run
from safetensors.torch import load_file

from sidrec.distributed import batch_shard, local_batch
from sidrec.errors import SidrecError
from sidrec.io import save_npy

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)

MODEL = {"d_model": 16, "n_heads": 2, "head_dim": 8, "d_ff": 32, "n_encoder_layers": 1,
         "n_decoder_layers": 1, "dropout": 0.0, "user_dropout": 0.0}
TRAIN = {"batch_size": 16, "max_epochs": 2, "warmup_steps": 2, "examples_per_epoch": 0,
         "device": "cpu", "num_threads": 1, "eval_batch_size": 8}
STEPS_PER_EPOCH = 13  # ceil(199 prefixes / 16) for toy_dataset(n_users=40)


def toy_run(root: Path) -> Path:
    """A run directory with the toy dataset and 2-level SIDs (+ a collision token)."""
    ds = toy_dataset(n_users=40)
    write_run(ds, root)
    prefix = np.stack([np.arange(ds.n_items) % 4, np.arange(ds.n_items) // 4 % 4], axis=1)
    collision = np.zeros(ds.n_items, dtype=np.int64)
    seen: dict[tuple, int] = {}
    for i, row in enumerate(map(tuple, prefix)):
        collision[i] = seen.get(row, 0)
        seen[row] = collision[i] + 1
    save_npy(root / "sids.npy", np.column_stack([prefix, collision]).astype(np.int64))
    return root


def torchrun(*args: str | Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node=2 -m sidrec ARGS` (2 gloo processes)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "sidrec", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def overrides(model: dict, train: dict) -> list[str]:
    return [f"{k}={v}" for k, v in {**model, **train}.items()]


def spawn(fn, *args) -> None:
    """Run fn(rank, *args) in 2 processes joined in a gloo group on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, fn, args), nprocs=2)


def _worker(rank: int, port: int, fn, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # a rank left waiting fails the test in a minute, not gloo's default 30
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(model_dir / "last.safetensors").items()
            if k.startswith("model/")}


def log_without_times(model_dir: Path) -> list[dict]:
    lines = (model_dir / "train_log.jsonl").read_text().splitlines()
    times = ("train_seconds", "valid_seconds")
    return [{k: v for k, v in json.loads(line).items() if k not in times} for line in lines]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy run with a TIGER trained by `torchrun` on 2 processes, dropout off."""
    run = toy_run(tmp_path_factory.mktemp("ddp") / "run")
    out = torchrun("train", run, "--model", "tiger", *overrides(MODEL, TRAIN))
    assert out.stdout.count("best valid ndcg@10") == 1  # rank 0 alone reports
    return run


# ---------------------------------------------------------------- the pieces


def test_a_checkpoint_of_fewer_processes_resumes_with_a_dropout_stream_per_rank():
    from sidrec.distributed import Context, restore_rng

    draws = []
    for rank in (0, 1, 0):
        torch.manual_seed(7)  # the one state a 1-process checkpoint restores on every rank
        restore_rng({}, Context(rank, 2, torch.device("cpu")))
        draws.append(torch.rand(4))
    assert not torch.equal(draws[0], draws[1])  # the ranks' streams differ
    assert torch.equal(draws[0], draws[2])  # and are reproducible


def test_the_global_batch_is_split_and_weighted():
    from sidrec.distributed import Context

    idx = torch.arange(7)
    parts = [local_batch(idx, Context(rank, 2)) for rank in (0, 1)]
    assert torch.equal(torch.cat([p[0] for p in parts]), idx)
    assert [p[1] for p in parts] == [4, 3]
    # the ranks' weighted means average to the global mean: sum_r w_r * mean_r / world
    x = torch.randn(7)
    means = [x[p[0]].mean() * p[2] for p in parts]
    assert (sum(means) / 2).item() == pytest.approx(x.mean().item(), abs=1e-6)
    # a rank left without examples runs one with weight 0
    assert local_batch(torch.arange(1), Context(1, 2))[1:] == (0, 0.0)
    # evaluation shards are whole batches, contiguous, covering every row once
    shards = [batch_shard(45, 8, r, 2) for r in (0, 1)]
    assert shards == [(0, 24), (24, 45)]  # 6 batches: 3 + 3
    assert [batch_shard(3, 8, r, 2) for r in (0, 1)] == [(0, 0), (0, 3)]  # one batch


# ---------------------------------------------------------------- (a) like one process


def test_two_processes_train_like_one_with_the_same_global_batch(ddp_run):
    from sidrec.presets import resolve_config
    from sidrec.train import train

    train(resolve_config("tiger", "cpu", MODEL, TRAIN), ddp_run, name="single", progress=False)
    ddp, single = ddp_run / "models/tiger", ddp_run / "models/single"
    a, b = weights(ddp), weights(single)
    assert a.keys() == b.keys()
    for key in a:  # 2 epochs x 13 AdamW steps
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)
    logs = log_without_times(ddp), log_without_times(single)
    assert [e["step"] for e in logs[0]] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    for x, y in zip(*logs, strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
    # rank 0 alone wrote, atomically: the model's files and nothing else
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    assert sorted(p.name for p in (ddp_run / "models").iterdir()) == ["single", "tiger"]


# ---------------------------------------------------------------- (b) resume after a kill


def _train_and_die(rank: int, run: Path, model: dict, train_cfg: dict, die_at: int) -> None:
    import sidrec.epoch
    from sidrec.presets import resolve_config
    from sidrec.train import train

    lr_at = sidrec.epoch.lr_at

    def dying_lr_at(step, cfg, total):  # called before every optimiser step
        if step == die_at and rank == 1:
            os._exit(3)  # killed: no cleanup, no exception, mid-epoch
        return lr_at(step, cfg, total)

    sidrec.epoch.lr_at = dying_lr_at
    train(resolve_config("tiger", "cpu", model, train_cfg), run, progress=False)


def _train(rank: int, runs: list[Path], model: dict, train_cfg: dict) -> None:
    from sidrec.presets import resolve_config
    from sidrec.train import train

    for run in runs:
        train(resolve_config("tiger", "cpu", model, train_cfg), run, progress=False)


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    model = {**MODEL, "dropout": 0.1, "user_dropout": 0.1}  # each rank's RNG must come back
    cfg = {**TRAIN, "max_epochs": 3}
    straight, killed = toy_run(tmp_path / "straight"), toy_run(tmp_path / "killed")
    with pytest.raises(mp.ProcessExitedException):
        spawn(_train_and_die, killed, model, cfg, STEPS_PER_EPOCH + 5)  # in epoch 2
    state = json.loads((killed / "models/tiger/state.json").read_text())
    assert state["epoch"] == 1 and not state["done"]
    spawn(_train, [straight, killed], model, cfg)  # fresh processes: uninterrupted, resumed
    assert json.loads((killed / "models/tiger/state.json").read_text())["epoch"] == 3
    a, b = weights(straight / "models/tiger"), weights(killed / "models/tiger")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert log_without_times(straight / "models/tiger") == log_without_times(
        killed / "models/tiger")


def _train_every_model(rank: int, run: Path) -> None:
    from dataclasses import fields

    from sidrec.models import available_models, get_model_class
    from sidrec.presets import resolve_config
    from sidrec.train import train

    small = {"d_model": 16, "n_heads": 2, "head_dim": 8, "d_ff": 32, "n_layers": 1,
             "n_encoder_layers": 1, "n_decoder_layers": 1, "text_hidden": 16, "max_len": 8}
    for name in available_models():
        names = {f.name for f in fields(get_model_class(name).Config)}
        over = {k: v for k, v in small.items() if k in names}
        settings = resolve_config(name, "cpu", over, {**TRAIN, "max_epochs": 1})
        summary = train(settings, run, progress=False)
        assert np.isfinite(summary["best_valid"]), name


def test_every_model_trains_in_two_processes(tmp_path):
    """Parameters a step leaves unused (COBRA's ablations), no parameters at all (Pop),
    boolean-mask shapes that differ per rank (SASRec, COBRA): DDP takes them all."""
    from sidrec.models import available_models

    run = toy_run(tmp_path / "run")
    save_npy(run / "embeddings.npy",
             np.random.default_rng(0).normal(size=(15, 8)).astype(np.float32))
    spawn(_train_every_model, run)
    assert sorted(p.name for p in (run / "models").iterdir()) == sorted(available_models())


# ---------------------------------------------------------------- (c) evaluation


def _evaluate(rank: int, run: Path, batch_size: int, out: Path) -> None:
    from sidrec.checkpoint import load_model
    from sidrec.cli import main
    from sidrec.data.dataset import Dataset
    from sidrec.evaluate import evaluate

    ds = Dataset.load(run)
    model = load_model(run / "models/tiger", run, dataset=ds)
    metrics = evaluate(model, ds, "test", ks=(1, 5, 10), batch_size=batch_size)
    if rank == 0:
        (out / "rows.json").write_text(json.dumps(metrics["rows"]))
    # `sidrec evaluate` in the same job: rank 0 alone prints and records the metrics
    assert main(["evaluate", str(out / "run"), "--model", "tiger", "--ks", "1,5,10",
                 "--device", "cpu"]) == 0


def _evaluate_with_nan_weights_on_rank_one(rank: int, run: Path, out: Path) -> None:
    from sidrec.checkpoint import load_model
    from sidrec.data.dataset import Dataset
    from sidrec.evaluate import evaluate

    ds = Dataset.load(run)
    model = load_model(run / "models/tiger", run, dataset=ds)
    if rank == 1:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    with pytest.raises(SidrecError, match="hold NaN or inf") as raised:
        evaluate(model, ds, "test", ks=(10,), batch_size=8)
    (out / f"rank{rank}.txt").write_text(str(raised.value))


def test_an_error_on_one_rank_is_raised_on_every_rank(ddp_run, tmp_path):
    start = time.monotonic()
    spawn(_evaluate_with_nan_weights_on_rank_one, ddp_run, tmp_path)
    assert time.monotonic() - start < 50  # rank 0 did not wait for the timeout
    for rank in (0, 1):
        assert "tiger: " in (tmp_path / f"rank{rank}.txt").read_text()


def test_distributed_evaluation_equals_one_process(ddp_run, tmp_path, capfd):
    from sidrec.checkpoint import load_model
    from sidrec.data.dataset import Dataset
    from sidrec.evaluate import evaluate, evaluate_run

    shutil.copytree(ddp_run, tmp_path / "run")
    spawn(_evaluate, ddp_run, 8, tmp_path)  # 40 users: batches 0-1 on rank 0, 2-4 on rank 1
    assert capfd.readouterr().out.count("decode:") == 1
    ds = Dataset.load(ddp_run)
    model = load_model(ddp_run / "models/tiger", ddp_run, dataset=ds)
    one = evaluate(model, ds, "test", ks=(1, 5, 10), batch_size=8)["rows"]
    sharded = json.loads((tmp_path / "rows.json").read_text())
    assert json.dumps(sharded) == json.dumps(one)  # NaN rows (no cold users) compare too
    recorded = json.loads((tmp_path / "run/metrics.json").read_text())
    alone = evaluate_run(ddp_run, "tiger", "test", (1, 5, 10), device="cpu", save=False)
    assert json.dumps(recorded["models"]["tiger"]["test"]["rows"]) == json.dumps(alone["rows"])
