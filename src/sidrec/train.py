"""Training stage: `run_dir/models/<name>/` from a run's settings (`RunSettings`, which
`sidrec.presets.resolve_config` makes of a model name, a preset and overrides).

One loop for every registered model (it only calls `model(batch)`, which returns the named
loss terms): AdamW, linear warm-up then cosine decay (per optimiser step), gradient-norm
clipping, validation NDCG@10 (`TrainConfig.metric`) every `eval_every` epochs through
`sidrec.evaluate`, early stopping after `patience` evaluations without improvement, best
weights kept. A model with nothing to fit (Pop) runs zero epochs and is validated once.

Examples, schedule and the steps of one epoch: `sidrec.epoch` (every prefix of the
training part, or windows of them for a model whose loss covers every position).

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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import sidrec
from sidrec import distributed
from sidrec.catalogue.build import catalogue_for, input_fingerprint
from sidrec.checkpoint import (
    Checkpoint,
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
from sidrec.data.dataset import Dataset
from sidrec.epoch import group_by_length, make_optimizer, train_epoch, window_examples
from sidrec.errors import SidrecError
from sidrec.evaluate import evaluate
from sidrec.io import hash_obj, write_json, write_text
from sidrec.models.base import Recommender
from sidrec.presets import RunSettings, TrainConfig, for_device
from sidrec.report import is_point_metric
from sidrec.run import ModelDir, RunDir

# ---------------------------------------------------------------- the stage


def train(
    settings: RunSettings,
    run_dir: str | Path | RunDir,
    *,
    name: str | None = None,
    resume: bool = True,
    dataset: Dataset | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    early_stop: bool = True,
) -> dict[str, Any]:
    """Train the model of `settings` on `run_dir` into `run_dir/models/<name>/`.

    `settings`: every setting of the run, from `sidrec.presets.resolve_config(model_name,
    preset, model_overrides, train_overrides, ...)`. `name` defaults to the model's name.
    `resume=False` ignores an existing checkpoint. `dataset` replaces
    `Dataset.load(run_dir)` (tests, notebooks). `on_epoch_end` is called with each epoch's
    log entry after its checkpoint is written. `early_stop=False` trains to `max_epochs`
    whatever `patience` says, and a model that patience stopped goes on from its last
    epoch, as if it had never stopped (the settings, and so the model's identity, stay
    those it was trained with): a curve still rising when it stopped is continued to
    where it levels off. Under torchrun every process calls this
    (and `on_epoch_end`) and gets the same summary. Returns a summary: {"model_dir",
    "epochs", "best_epoch", "best_valid", "metric", "stopped_early", "resumed"}.
    """
    job = _setup(settings, RunDir(run_dir), name, dataset, progress)
    out, ck, have_weights = _open_workspace(job, resume)
    if ck is not None and ck.state.stopped_early and not early_stop:
        ck.state.done = ck.state.stopped_early = False
    if ck is not None and ck.state.done:  # a retrain stopped after its last epoch, before its move
        _write_settings(job, out, fresh=False)
        _publish(job, out)
        return _summary(job, ck.state, resumed=True)
    _write_settings(job, out, fresh=ck is None)
    epochs = _Epochs(job, out, ck, have_weights, early_stop)
    while epochs.running():
        entry = epochs.run_one()
        if on_epoch_end is not None:
            on_epoch_end(entry)
    epochs.finish()
    _publish(job, out)
    return _summary(job, epochs.state, resumed=ck is not None)


@dataclass(frozen=True)
class _Job:
    """What one call of `train` works with once this process has joined the job."""

    settings: RunSettings  # with `precision` made concrete for the device
    ctx: distributed.Context
    run: RunDir  # naming the model's own SID set, if it has one
    final: ModelDir  # where the trained model ends up
    ds: Dataset
    model: Recommender
    record: dict[str, Any]  # config.json: what defines the model, and its hash
    progress: bool

    @property
    def config_hash(self) -> str:
        return self.record["config_hash"]


def _setup(settings: RunSettings, run: RunDir, name: str | None, dataset: Dataset | None,
           progress: bool) -> _Job:
    """Join the job, fit the model's own SIDs if it has them, and build the model (seeded)."""
    runtime = settings.runtime
    ctx = distributed.setup(runtime.device, runtime.num_threads, runtime.dist_timeout_s)
    settings = replace(settings, train=for_device(settings.train, ctx.device.type))
    cls = settings.cls
    final = run.model(name or cls.name)
    ds = dataset if dataset is not None else Dataset.load(run.root)
    if settings.tokenizer is not None:  # the model's own SIDs, fitted once per setting
        run = _own_sids(run, settings.tokenizer, ctx, progress)
    record = model_record(settings, input_fingerprint(cls, run, ds), cls.name, run.sid_set)
    record["config_hash"] = hash_obj(record)
    record["sidrec_version"] = sidrec.__version__
    torch.manual_seed(settings.train.seed)
    model = cls(settings.model, catalogue_for(cls, run, ds)).to(ctx.device)
    model.inference = settings.inference
    return _Job(settings, ctx, run, final, ds, model, record, progress)


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


def _open_workspace(job: _Job, resume: bool) -> tuple[ModelDir, Checkpoint | None, bool]:
    """(directory to train in, checkpoint to resume or None, whether best weights exist)."""
    ctx = job.ctx
    out, ck = workspace(job.final, job.config_hash, resume, ctx.main)
    # Rank 0 settles a best written after the last checkpoint before any rank looks for
    # the weights; every rank has looked before rank 0 writes anything more.
    if ctx.main:
        settle_weights(out, ck.state if ck is not None else None)
    distributed.barrier(ctx)
    have_weights = ck is not None and out.weights.is_file()
    distributed.barrier(ctx)
    return out, ck, have_weights


def _write_settings(job: _Job, out: ModelDir, fresh: bool) -> None:
    """inference.json (not hashed: the latest request wins) and, for a `fresh` start in an
    emptied directory, config.json; by rank 0."""
    if not job.ctx.main:
        return
    if fresh:
        shutil.rmtree(out.root, ignore_errors=True)
        write_json(out.config, job.record)
    write_inference(out, job.settings.inference)


def _publish(job: _Job, out: ModelDir) -> None:
    if job.ctx.main:
        publish(out, job.final)
    distributed.barrier(job.ctx)  # the other ranks return once the model is in place


def _summary(job: _Job, state: TrainState, resumed: bool) -> dict[str, Any]:
    return {
        "model_dir": str(job.final.root),
        "epochs": state.epoch,
        "best_epoch": state.best_epoch,
        "best_valid": state.best,
        "metric": job.settings.train.metric,
        "stopped_early": state.stopped_early,
        "resumed": resumed,
    }


def _examples(job: _Job) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """(the training examples as tensors on the device, each history's length [N] when
    the batches are grouped by length, else None)."""
    if job.settings.cls.trains_every_position:
        h_np, t_np, u_np = window_examples(job.ds)
    else:
        h_np, t_np, u_np = job.ds.train_examples()
    if len(t_np) == 0:
        raise SidrecError(f"{job.run.root}: no training examples (every user has < 2 "
                          "training items)")
    device = job.ctx.device
    examples = {
        "history": torch.as_tensor(h_np, device=device),  # [N, L]
        "target": torch.as_tensor(t_np, device=device),  # [N]
        "user": torch.as_tensor(u_np, device=device),  # [N]
    }
    group = job.settings.train.group_by_length
    return examples, torch.from_numpy((h_np >= 0).sum(axis=1)) if group else None


class _Epochs:
    """The epochs of one run, from checkpoint `ck` when there is one: each trains on a
    fresh seeded draw of the examples, validates when due and writes a checkpoint."""

    def __init__(self, job: _Job, out: ModelDir, ck: Checkpoint | None, have_weights: bool,
                 early_stop: bool = True):
        cfg, ctx = job.settings.train, job.ctx
        self.job, self.out, self.have_weights = job, out, have_weights
        self.patience = cfg.patience if early_stop else math.inf
        self.examples, self.lengths = _examples(job)
        n = len(self.examples["target"])
        self.per_epoch = min(n, cfg.examples_per_epoch) if cfg.examples_per_epoch > 0 else n
        self.max_epochs = cfg.max_epochs if job.settings.cls.trainable else 0
        self.total_steps = self.max_epochs * math.ceil(self.per_epoch / cfg.batch_size)
        self.optimizer = make_optimizer(job.model, cfg)
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        distributed.seed_rank(cfg.seed, ctx)
        self.state, self.log = TrainState(job.config_hash), []
        if ck is not None:
            restore(ck, job.model, self.optimizer, self.shuffle, ctx.device)
            distributed.restore_rng(ck.tensors, ctx)
            self.state = ck.state
            self.log = [e for e in read_log(out) if e["epoch"] <= self.state.epoch]
        # What runs the steps: compiled and/or in DDP; `model` itself is evaluated and saved.
        compiled = torch.compile(job.model) if job.settings.runtime.compile else job.model
        self.stepper = distributed.wrap(compiled, ctx)
        self.bar = tqdm(total=self.max_epochs, initial=self.state.epoch, unit="epoch",
                        dynamic_ncols=True, desc=job.final.name,
                        disable=not job.progress or not self.max_epochs or not ctx.main)

    def running(self) -> bool:
        return self.state.epoch < self.max_epochs and self.state.bad_evals < self.patience

    def run_one(self) -> dict[str, Any]:
        """Train one epoch, validate if due, decide whether to stop, write the checkpoint;
        returns the epoch's log entry."""
        cfg, state = self.job.settings.train, self.state
        entry = self._fit()
        if state.epoch % cfg.eval_every == 0 or state.epoch == self.max_epochs:
            t0 = time.perf_counter()
            self._validate(entry)
            entry["valid_seconds"] = time.perf_counter() - t0
        if state.epoch >= self.max_epochs or state.bad_evals >= self.patience:
            state.done = True
            state.stopped_early = state.epoch < self.max_epochs
        self._record(entry)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{entry['train_loss']:.4f}", best=f"{state.best:.4f}")
        return entry

    def finish(self) -> None:
        """Close the progress bar; a model with nothing to train (Pop) is validated once,
        as epoch 0."""
        self.bar.close()
        if self.have_weights:
            return
        entry: dict[str, Any] = {"epoch": 0, "step": 0, "train_seconds": 0.0}
        self._validate(entry)
        self.state.done = True
        self._record(entry)
        if self.job.progress and self.job.ctx.main:
            tqdm.write(f"{self.job.model.name}: nothing to train; valid "
                       f"{self.job.settings.train.metric} = {self.state.best:.4f}")

    def _fit(self) -> dict[str, Any]:
        """One pass over a seeded draw of the examples: the epoch's log entry so far."""
        cfg, ctx, state = self.job.settings.train, self.job.ctx, self.state
        t0 = time.perf_counter()
        n = len(self.examples["target"])
        perm = torch.randperm(n, generator=self.shuffle)[: self.per_epoch]  # [N'], every rank's
        perm = group_by_length(perm, self.lengths, cfg.batch_size).to(ctx.device)
        means, state.step, lr = train_epoch(self.stepper, self.optimizer, self.examples, perm,
                                            cfg, state.step, self.total_steps, ctx)
        state.epoch += 1
        entry: dict[str, Any] = {"epoch": state.epoch, "step": state.step, "lr": lr,
                                 "examples_seen": state.epoch * self.per_epoch}
        entry.update({f"train_{k}": v for k, v in means.items()})
        if not math.isfinite(entry["train_loss"]):
            self.bar.leave = False  # the error is the one line the user sees
            self.bar.close()
            raise SidrecError(
                f"{self.job.settings.cls.name}: training loss became {entry['train_loss']} in "
                f"epoch {state.epoch}; lower lr (now {cfg.lr}) or set grad_clip"
            )
        entry["train_seconds"] = time.perf_counter() - t0
        return entry

    def _validate(self, entry: dict[str, Any]) -> None:
        """Validate (users shared among the ranks), log the metrics in `entry`, and keep the
        weights (rank 0) if they are the best or the first."""
        job, state = self.job, self.state
        cfg, ctx = job.settings.train, job.ctx
        valid = validate(job.model, job.ds, cfg, job.settings.runtime.eval_batch_size,
                         ctx.device)
        entry.update({f"valid_{k}": v for k, v in valid.items()})
        if valid[cfg.metric] > state.best or not self.have_weights:
            state.best, state.best_epoch, state.bad_evals = valid[cfg.metric], state.epoch, 0
            if ctx.main:
                save_weights(job.model, self.out.next_weights, state.config_hash, state.epoch)
            self.have_weights = True
        else:
            state.bad_evals += 1

    def _record(self, entry: dict[str, Any]) -> None:
        """Log `entry` and write the log, curves, checkpoint and state (rank 0)."""
        self.log.append(entry)
        ctx, out = self.job.ctx, self.out
        rng = distributed.rng_states(ctx)  # collective: before the rank-0 test
        if not ctx.main:
            return
        write_text(out.log, "".join(json.dumps(e) + "\n" for e in self.log))
        write_curves(out, self.log, self.job.model.display_name)
        write_checkpoint(out.checkpoint, self.job.model, self.optimizer, self.shuffle,
                         self.state, rng)
        write_state(out, self.state)
        settle_weights(out, self.state)


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
