"""One epoch of training, whichever loop drives it (`sidrec.train`, the benchmarks): the
examples, their order, the optimiser and its learning-rate schedule, and the steps.

Examples: every prefix of every user's training part (`Dataset.train_examples`). A model
whose loss already covers every position of the history (`trains_every_position = True`:
SASRec, Dense, COBRA) gets `window_examples` instead: per user, the prefixes ending at the last
training item, then every `max_history` items earlier, so that each training target is
predicted exactly once per epoch (each prefix would repeat it up to max_history times).

Schedule: AdamW, linear warm-up then cosine decay (or constant), per optimiser step.
Under bf16 the forward runs under autocast; nothing waits for the device until the
epoch's means are read.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sidrec import distributed
from sidrec.data.dataset import Dataset, pad_histories
from sidrec.presets import TrainConfig


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
