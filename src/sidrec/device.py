"""The one place that turns a `device` setting ("auto", "cpu", "cuda", "cuda:N") into a
torch device, for every stage that runs a model (embed, train, evaluate, serve)."""

from __future__ import annotations

import os

import torch

from sidrec.errors import SidrecError


def resolve_device(device: str = "auto", num_threads: int = 0) -> torch.device:
    """ "auto" -> CUDA when a GPU is visible, else CPU.

    On CPU torch gets `num_threads` threads (0: min(4, cores)); the models here are small,
    and more threads than that cost more in synchronisation than they give.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SidrecError(f"device={device} but no CUDA GPU is visible; use device=cpu or auto")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise SidrecError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cpu":
        torch.set_num_threads(num_threads or min(4, os.cpu_count() or 1))
    return torch.device(device)
