"""Training stage: `run_dir/models/<name>/` from a model name, a preset and overrides.

One loop for every registered model (it only calls `model(batch)`, which returns the named
loss terms): AdamW, linear warm-up then cosine decay (per optimiser step), gradient-norm
clipping, validation NDCG@10 (`TrainConfig.metric`) every `eval_every` epochs through
`sidrec.evaluate`, early stopping after `patience` evaluations without improvement, best
weights kept. A model with nothing to fit (Pop) runs zero epochs and is validated once.

Examples: every prefix of every user's training part (`Dataset.train_examples`). A model
whose loss already covers every position of the history (`trains_every_position = True`:
SASRec, Dense, COBRA) gets `window_examples` instead: per user, the prefixes ending at the last
training item, then every `max_history` items earlier, so that each training target is
predicted exactly once per epoch (each prefix would repeat it up to max_history times).

Past one process: `torchrun --standalone --nproc-per-node=N -m sidrec train ...` runs the
same loop in N processes with DistributedDataParallel (`sidrec.distributed`): the batch
size is global, each rank runs its slice of every batch, validation shares the users among
the ranks, and rank 0 alone writes. One process runs exactly as it always did.

Fast path: `precision: bf16` (the default on CUDA) runs the forward under bfloat16
autocast; `compile: true` runs the steps through `torch.compile`; the examples are tensors
on the device from the start, and nothing waits for the device until an epoch ends.

Settings: `sidrec.presets` (what is hashed and what is not); files: `sidrec.checkpoint`.
A run restarted with the same configuration and inputs (same config hash) resumes from
its checkpoint and reaches the same result as an uninterrupted run (bitwise on CPU).
Changing a hashed setting trains a new model beside the old one, in
`models/.<name>.partial/`, which replaces the old one only when it is complete: a retrain
that fails leaves the trained model as it was. Deterministic on CPU for a seed; CUDA
kernels are not guaranteed bitwise deterministic.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import sidrec
from sidrec import distributed
from sidrec.checkpoint import (
    TrainState,
    model_record,
    publish,
    read_log,
    restore,
    save_weights,
    settle_weights,
    workspace,
    write_checkpoint,
    write_inference,
    write_state,
)
from sidrec.config import to_dict
from sidrec.curves import write_curves
from sidrec.data.dataset import Dataset, pad_histories
from sidrec.errors import SidrecError
from sidrec.evaluate import evaluate
from sidrec.io import hash_obj, write_json, write_text
from sidrec.models.base import Recommender
from sidrec.models.catalogue import catalogue_for, input_fingerprint
from sidrec.presets import RuntimeConfig, TrainConfig, for_device, resolve_config
from sidrec.report import is_point_metric
from sidrec.run import ModelDir, RunDir

# ---------------------------------------------------------------- examples and schedule


def window_examples(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prefixes whose per-position targets tile each user's training part exactly once.

    For a training part s_0..s_{n-1} the prefixes ending at i = n-1, n-1-L, n-1-2L, ... (>= 1)
    are kept (L = max_history); together their positions predict s_1..s_{n-1} once each.
    Returns (histories [N, L], targets [N], users [N]) like `Dataset.train_examples`.
    """
    L = ds.max_history
    histories, targets, users = [], [], []
    for u, seq in enumerate(ds.train):
        for i in range(len(seq) - 1, 0, -L):
            histories.append(seq[max(0, i - L) : i])
            targets.append(seq[i])
            users.append(u)
    return (
        pad_histories(histories, L),
        np.asarray(targets, dtype=np.int64),
        np.asarray(users, dtype=np.int64),
    )


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate before optimiser step `step` (0-based): warm-up, then constant/cosine."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # nanoGPT: decay matrices and embeddings, not biases and norm gains.
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


# ---------------------------------------------------------------- the stage


def train(
    model_name: str,
    run_dir: str | Path | RunDir,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    preset: str | None = "cpu",
    *,
    inference_overrides: dict[str, Any] | None = None,
    runtime_overrides: dict[str, Any] | None = None,
    tokenizer_overrides: dict[str, Any] | None = None,
    name: str | None = None,
    resume: bool = True,
    dataset: Dataset | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train `model_name` on `run_dir` into `run_dir/models/<name or model_name>/`.

    `train_overrides` may also hold runtime settings (device, num_threads,
    eval_batch_size, compile); see `sidrec.presets`; `tokenizer_overrides` change the
    preset's own tokenizer settings, if it has them. `dataset` replaces
    `Dataset.load(run_dir)` (tests, notebooks). `on_epoch_end` is called with each epoch's
    log entry after its checkpoint is written. Under torchrun every process calls this
    (and `on_epoch_end`) and gets the same summary. Returns a summary: {"model_dir",
    "epochs", "best_epoch", "best_valid", "metric", "stopped_early", "resumed"}.
    """
    run = RunDir(run_dir)
    settings = resolve_config(model_name, preset, model_overrides, train_overrides,
                              inference_overrides=inference_overrides,
                              runtime_overrides=runtime_overrides,
                              tokenizer_overrides=tokenizer_overrides)
    ctx = distributed.setup(settings.runtime.device, settings.runtime.num_threads,
                            settings.runtime.dist_timeout_s)
    device = ctx.device
    settings = replace(settings, train=for_device(settings.train, device.type))
    cls, cfg, runtime = settings.cls, settings.train, settings.runtime
    final = run.model(name or model_name)
    ds = dataset if dataset is not None else Dataset.load(run.root)

    if settings.tokenizer is not None:  # the model's own SIDs, fitted once per setting
        run = _own_sids(run, settings.tokenizer, ctx, progress)
    record = model_record(settings, input_fingerprint(cls, run, ds), model_name, run.sid_set)
    config_hash = hash_obj(record)
    record["config_hash"] = config_hash
    record["sidrec_version"] = sidrec.__version__

    torch.manual_seed(cfg.seed)
    model = cls(settings.model, catalogue_for(cls, run, ds)).to(device)
    model.inference = settings.inference
    # Rank 0 settles a best written after the last checkpoint before any rank looks for
    # the weights; every rank has looked before rank 0 writes anything more.
    out, ck = workspace(final, config_hash, resume, ctx.main)
    if ctx.main:
        settle_weights(out, ck.state if ck is not None else None)
    distributed.barrier(ctx)
    have_weights = ck is not None and out.weights.is_file()
    distributed.barrier(ctx)
    if ck is not None and ck.state.done:
        if ctx.main:
            write_inference(out, settings.inference)  # not hashed: the latest request wins
            publish(out, final)  # a retrain stopped after its last epoch, before its move
        distributed.barrier(ctx)
        return _summary(final, ck.state, cfg, resumed=True)
    if ctx.main:
        if ck is None:
            shutil.rmtree(out.root, ignore_errors=True)
            write_json(out.config, record)
        write_inference(out, settings.inference)

    if cls.trains_every_position:
        h_np, t_np, u_np = window_examples(ds)
    else:
        h_np, t_np, u_np = ds.train_examples()
    if len(t_np) == 0:
        raise SidrecError(f"{run.root}: no training examples (every user has < 2 training items)")
    examples = {
        "history": torch.as_tensor(h_np, device=device),  # [N, L]
        "target": torch.as_tensor(t_np, device=device),  # [N]
        "user": torch.as_tensor(u_np, device=device),  # [N]
    }
    n = len(t_np)
    lengths = torch.from_numpy((h_np >= 0).sum(axis=1)) if cfg.group_by_length else None
    per_epoch = min(n, cfg.examples_per_epoch) if cfg.examples_per_epoch > 0 else n
    steps_per_epoch = math.ceil(per_epoch / cfg.batch_size)
    max_epochs = cfg.max_epochs if cls.trainable else 0
    total_steps = max_epochs * steps_per_epoch
    optimizer = make_optimizer(model, cfg)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    distributed.seed_rank(cfg.seed, ctx)

    state = TrainState(config_hash)
    log: list[dict[str, Any]] = []
    resumed = ck is not None
    if ck is not None:
        restore(ck, model, optimizer, shuffle, device)
        distributed.restore_rng(ck.tensors, ctx)
        state = ck.state
        log = [e for e in read_log(out) if e["epoch"] <= state.epoch]
    # What runs the steps: compiled and/or in DDP; `model` itself is evaluated and saved.
    stepper = distributed.wrap(torch.compile(model) if runtime.compile else model, ctx)

    bar = tqdm(total=max_epochs, initial=state.epoch, unit="epoch", dynamic_ncols=True,
               disable=not progress or not max_epochs or not ctx.main, desc=final.name)
    while state.epoch < max_epochs and state.bad_evals < cfg.patience:
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=shuffle)[:per_epoch]  # [N'], the same on every rank
        perm = group_by_length(perm, lengths, cfg.batch_size).to(device)
        means, state.step, lr = train_epoch(
            stepper, optimizer, examples, perm, cfg, state.step, total_steps, ctx
        )
        state.epoch += 1
        entry: dict[str, Any] = {"epoch": state.epoch, "step": state.step, "lr": lr,
                                 "examples_seen": state.epoch * per_epoch}
        entry.update({f"train_{k}": v for k, v in means.items()})
        if not math.isfinite(entry["train_loss"]):
            bar.leave = False  # the error is the one line the user sees
            bar.close()
            raise SidrecError(
                f"{model_name}: training loss became {entry['train_loss']} in epoch "
                f"{state.epoch}; lower lr (now {cfg.lr}) or set grad_clip"
            )
        entry["train_seconds"] = time.perf_counter() - t0
        if state.epoch % cfg.eval_every == 0 or state.epoch == max_epochs:
            t0 = time.perf_counter()
            have_weights |= _evaluate_epoch(model, ds, cfg, runtime, ctx, out, state, entry,
                                            have_weights)
            entry["valid_seconds"] = time.perf_counter() - t0
        if state.epoch >= max_epochs or state.bad_evals >= cfg.patience:
            state.done = True
            state.stopped_early = state.epoch < max_epochs
        log.append(entry)
        _write_progress(out, log, model, optimizer, shuffle, state, ctx)
        bar.update(1)
        bar.set_postfix(loss=f"{entry['train_loss']:.4f}", best=f"{state.best:.4f}")
        if on_epoch_end is not None:
            on_epoch_end(entry)
    bar.close()
    if not have_weights:  # nothing to train (Pop): validated once, as epoch 0
        entry = {"epoch": 0, "step": 0, "train_seconds": 0.0}
        _evaluate_epoch(model, ds, cfg, runtime, ctx, out, state, entry, have_weights)
        state.done = True
        log.append(entry)
        _write_progress(out, log, model, optimizer, shuffle, state, ctx)
        if progress and ctx.main:
            tqdm.write(f"{model.name}: nothing to train; valid {cfg.metric} = {state.best:.4f}")
    if ctx.main:
        publish(out, final)
    distributed.barrier(ctx)  # the other ranks return once the model is in place
    return _summary(final, state, cfg, resumed=resumed)


def group_by_length(perm: torch.Tensor, lengths: torch.Tensor | None,
                    batch_size: int) -> torch.Tensor:
    """`perm` [N] with each pool of 50 batches sorted by history length, longest first
    (`TrainConfig.group_by_length`; Hugging Face's LengthGroupedSampler uses the same
    "megabatches" of 50); `lengths` None: `perm` unchanged."""
    if lengths is None:
        return perm
    pools = perm.split(50 * batch_size)
    return torch.cat([p[torch.sort(lengths[p], descending=True, stable=True).indices]
                      for p in pools])


def _own_sids(run: RunDir, settings: dict[str, Any], ctx: Any, progress: bool) -> RunDir:
    """`run` naming the SID set of tokenizer `settings` ({"method", "preset", overrides}),
    tokenized now unless it already is (by the main process; the others wait)."""
    from sidrec.tokenize import run_tokenize, tokenizer_config

    options = {k: v for k, v in settings.items() if k not in ("method", "preset")}
    cfg = tokenizer_config(settings.get("method", "rqkmeans"), settings.get("preset", "small"),
                           options)
    tagged = run.with_sids(hash_obj({"method": cfg.method, "config": to_dict(cfg)})[:12])
    if ctx.main:
        run_tokenize(tagged, cfg, progress=progress)
    distributed.barrier(ctx)
    return tagged


def _evaluate_epoch(model: Recommender, ds: Dataset, cfg: TrainConfig, runtime: RuntimeConfig,
                    ctx: distributed.Context, out: ModelDir, state: TrainState,
                    entry: dict[str, Any], have_weights: bool) -> bool:
    """Validate (users shared among the ranks), log the metrics in `entry`, and keep the
    weights (rank 0) if they are the best or the first. Returns whether it kept them."""
    valid = validate(model, ds, cfg, runtime.eval_batch_size, ctx.device)
    entry.update({f"valid_{k}": v for k, v in valid.items()})
    if valid[cfg.metric] > state.best or not have_weights:
        state.best, state.best_epoch, state.bad_evals = valid[cfg.metric], state.epoch, 0
        if ctx.main:
            save_weights(model, out.next_weights, state.config_hash, state.epoch)
        return True
    state.bad_evals += 1
    return False


def _write_progress(out: ModelDir, log: list[dict[str, Any]], model: Recommender,
                    optimizer: torch.optim.Optimizer, shuffle: torch.Generator,
                    state: TrainState, ctx: distributed.Context) -> None:
    rng = distributed.rng_states(ctx)  # collective: before the rank-0 test
    if not ctx.main:
        return
    write_text(out.log, "".join(json.dumps(e) + "\n" for e in log))
    write_curves(out, log, model.display_name)
    write_checkpoint(out.checkpoint, model, optimizer, shuffle, state, rng)
    write_state(out, state)
    settle_weights(out, state)


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    examples: dict[str, torch.Tensor],
    perm: torch.Tensor,
    cfg: TrainConfig,
    step: int,
    total_steps: int,
    ctx: distributed.Context | None = None,
) -> tuple[dict[str, float], int, float]:
    """One pass over `examples` in the order `perm` [N] (global batches of cfg.batch_size,
    each rank running its slice): (mean of each loss term over the examples, the step
    count after it, the last learning rate). `model` is the model, or its compiled or DDP
    wrapper; the forward runs under bf16 autocast when cfg.precision is "bf16". Nothing
    waits for the device until the epoch's means are read."""
    ctx = ctx or distributed.Context(device=perm.device)
    model.train()
    n = len(perm)
    sums: dict[str, torch.Tensor] = {}
    lr = lr_at(step, cfg, total_steps)
    bf16 = cfg.precision == "bf16"
    for start in range(0, n, cfg.batch_size):
        idx, count, weight = distributed.local_batch(perm[start : start + cfg.batch_size], ctx)
        batch = {key: value[idx] for key, value in examples.items()}  # [b_r, ...]
        lr = lr_at(step, cfg, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(perm.device.type, dtype=torch.bfloat16, enabled=bf16):
            terms = model(batch)
        optimizer.zero_grad(set_to_none=True)
        (terms["loss"] if weight == 1.0 else terms["loss"] * weight).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        for key, value in terms.items():  # summed on the device: no sync per step
            sums[key] = sums.get(key, 0.0) + value.detach().float() * count
    sums = distributed.all_reduce_sum(sums, ctx)
    return {key: value.item() / n for key, value in sums.items()}, step, lr


def validate(
    model: Recommender, ds: Dataset, cfg: TrainConfig, batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Validation metrics at cfg.metric's cut-off (overall row of the first variant)."""
    first_variant = next(iter(model.variants()))
    metrics = evaluate(
        model,
        ds,
        "valid",
        ks=(int(cfg.metric.split("@")[1]),),
        batch_size=batch_size,
        device=device,
        variants=[first_variant],
        intervals=False,  # the bootstrap is for reported rows, not every epoch's check
    )
    overall = next(r for r in metrics["rows"] if r["subset"] == "overall")
    return {k: v for k, v in overall.items() if is_point_metric(k)}


def _summary(out: ModelDir, state: TrainState, cfg: TrainConfig, resumed: bool) -> dict[str, Any]:
    return {
        "model_dir": str(out.root),
        "epochs": state.epoch,
        "best_epoch": state.best_epoch,
        "best_valid": state.best,
        "metric": cfg.metric,
        "stopped_early": state.stopped_early,
        "resumed": resumed,
    }
