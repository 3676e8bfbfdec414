"""Training past one process: PyTorch DDP under `torchrun` (gloo on CPU, nccl on CUDA).

    torchrun --standalone --nproc-per-node=2 -m sidrec train RUN_DIR --model tiger
    torchrun --standalone --nproc-per-node=2 -m sidrec evaluate RUN_DIR --model tiger

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; `setup` joins
that process group (or uses one the caller made, e.g. a test's) and gives each process its
device: `cuda:LOCAL_RANK` on CUDA. Without torchrun (WORLD_SIZE unset or 1) everything
here is a no-op and the trainer runs exactly as one process always did.

How the trainer uses it (`sidrec.train`):
- every rank draws the same seeded permutation each epoch and forms the same global
  batches of `batch_size` (the batch size is global); `local_batch` gives each rank a
  contiguous slice and a loss weight len(slice) * world / len(batch), so that DDP's mean
  of the ranks' gradients is the gradient of the mean over the global batch (exactly, for
  losses that average over examples; a loss that averages over positions, as SASRec's,
  Dense's and COBRA's, gets the mean of each rank's mean: the usual DDP reweighting);
- `wrap` puts the model in `DistributedDataParallel` (`static_graph`: a parameter that no
  step uses, if a model has one, is found once instead of by a graph walk every step;
  buffers are not broadcast per step, since every rank builds them from the same
  catalogue); a model without trainable parameters (Pop) is not wrapped;
- evaluation splits the users into whole batches, one contiguous run per rank
  (`batch_shard`), and `gather_rows` joins the results in user order: every batch is the
  one a single process would have run, so the metrics are the same;
- rank 0 alone writes files (atomically, as always); the others wait at `barrier`;
- the run directory must be on a filesystem every node sees (resume reads it on every rank).

Dropout draws from each rank's own torch generator (seeded per rank); `rng_states`
collects them all into the rank-0 checkpoint and `restore_rng` puts them back on resume.
"""

from __future__ import annotations

import atexit
import inspect
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from sidrec.device import resolve_device


@dataclass(frozen=True)
class Context:
    """This process's place in the job: rank, number of processes, device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0


def launched() -> bool:
    """True inside a multi-process job (torchrun with more than one process, or a process
    group the caller already initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


# How long a process waits in a collective for the others. Rank 0 alone fits a model's
# own SIDs (COBRA's paper preset: an RQ-VAE, tens of minutes or more) while the others
# wait at a barrier; NCCL's default of 10 minutes would end the job there.
TIMEOUT_S = 7200.0


def setup(device: str = "auto", num_threads: int = 0, timeout_s: float = TIMEOUT_S) -> Context:
    """Resolve the device (and CPU threads), join the process group when launched by
    torchrun (collectives wait up to `timeout_s`), and allow TF32 matmuls on CUDA.
    Idempotent."""
    dev = resolve_device(device, num_threads)
    if dev.type == "cuda":  # TF32 for the fp32 matmuls left outside bf16 autocast
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if not launched():
        return Context(device=dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_s))
        atexit.register(_destroy)
    return Context(dist.get_rank(), dist.get_world_size(), dev)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier(ctx: Context) -> None:
    if ctx.world > 1:
        dist.barrier()


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """`model` in DistributedDataParallel when there is more than one process and it has
    something to train; otherwise `model` itself."""
    if ctx.world == 1 or not any(p.requires_grad for p in model.parameters()):
        return model
    ddp = nn.parallel.DistributedDataParallel
    # No buffer broadcast per step (`forward_sync_buffers` from torch 2.13 on).
    no_sync = ({"forward_sync_buffers": False}
               if "forward_sync_buffers" in inspect.signature(ddp).parameters
               else {"broadcast_buffers": False})
    return ddp(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None,
               static_graph=True, **no_sync)


def local_batch(idx: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, int, float]:
    """This rank's part of the global batch idx [b]: (indices [b_r], b_r, loss weight).

    A rank left without examples (b < world) runs the first one with weight 0, so that it
    still takes part in the gradient all-reduce.
    """
    if ctx.world == 1:
        return idx, len(idx), 1.0
    part = torch.tensor_split(idx, ctx.world)[ctx.rank]
    if len(part) == 0:
        return idx[:1], 0, 0.0
    return part, len(part), len(part) * ctx.world / len(idx)


def all_reduce_sum(values: dict[str, torch.Tensor], ctx: Context) -> dict[str, torch.Tensor]:
    """Sum each tensor over the ranks (one collective for all of them)."""
    if ctx.world == 1 or not values:
        return values
    keys = sorted(values)
    flat = torch.stack([values[k].float() for k in keys])  # [K]
    dist.all_reduce(flat)
    return dict(zip(keys, flat.unbind(), strict=True))


def batch_shard(n: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [lo, hi) of n for `rank`: whole batches of `batch_size`, contiguous per rank."""
    n_batches = -(-n // batch_size)
    lo, hi = (n_batches * r // world for r in (rank, rank + 1))
    return min(n, lo * batch_size), min(n, hi * batch_size)


def gather_rows(*tensors: torch.Tensor, error: Exception | None = None
                ) -> tuple[torch.Tensor, ...]:
    """Concatenate each rank's rows of every tensor, in rank order (CPU tensors out). A
    rank that failed passes its `error` instead, and every rank raises it: none is left
    waiting for rows that never come."""
    rank, world = current()
    if world == 1:
        if error is not None:
            raise error
        return tensors
    parts: list = [None] * world
    dist.all_gather_object(parts, error if error is not None else [t.cpu() for t in tensors])
    for part in parts:
        if isinstance(part, Exception):
            raise part
    return tuple(torch.cat(column) for column in zip(*parts, strict=True))


def rng_states(ctx: Context) -> dict[str, torch.Tensor]:
    """Every rank's torch (and CUDA) generator state, for the rank-0 checkpoint
    (collective: every rank calls it). Empty for one process (the checkpoint already
    holds its states)."""
    if ctx.world == 1:
        return {}
    own = [torch.get_rng_state()]
    if ctx.device.type == "cuda":
        own.append(torch.cuda.get_rng_state(ctx.device))
    parts: list = [None] * ctx.world
    dist.all_gather_object(parts, own)
    out = {}
    for rank, states in enumerate(parts):
        out[f"rng/rank{rank}/torch"] = states[0]
        if len(states) > 1:
            out[f"rng/rank{rank}/cuda"] = states[1]
    return out


def seed_rank(seed: int, ctx: Context) -> None:
    """Give each rank its own dropout stream (after the model was built alike everywhere)."""
    if ctx.world > 1:
        torch.manual_seed(seed * 65_537 + ctx.rank)


def restore_rng(tensors: dict[str, torch.Tensor], ctx: Context) -> None:
    """Put this rank's generator states back from a checkpoint written by `rng_states`.
    A checkpoint of fewer processes has no state for this rank: every rank then holds
    the one restored state, so each reseeds from it plus its rank (own dropout streams,
    still reproducible)."""
    if ctx.world == 1:
        return
    if f"rng/rank{ctx.rank}/torch" not in tensors:
        torch.manual_seed(int(torch.randint(2**62, (1,)).item()) + ctx.rank)
        return
    torch.set_rng_state(tensors[f"rng/rank{ctx.rank}/torch"])
    if ctx.device.type == "cuda" and f"rng/rank{ctx.rank}/cuda" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng/rank{ctx.rank}/cuda"], ctx.device)
