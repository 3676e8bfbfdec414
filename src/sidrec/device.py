"""The one place that turns a `device` setting ("auto", "cpu", "cuda", "cuda:N") into a
torch device, for every stage that runs a model (embed, tokenize, train, evaluate, serve)."""

from __future__ import annotations

import os
import re

import torch

from sidrec.errors import SidrecError


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" -> CUDA when a GPU is visible, else CPU; a SidrecError for anything else than
    auto, cpu, cuda or cuda:N, or for CUDA without a GPU. Changes no global state."""
    device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise SidrecError(f"device must be auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SidrecError(f"device={device} but no CUDA GPU is visible; use device=cpu or auto")
    return torch.device(device)


def resolve_device(device: str = "auto", num_threads: int = 0) -> torch.device:
    """`pick_device(device)`, and on CPU torch gets `num_threads` threads (0: min(4, cores)).

    The models here are small, and more threads than that cost more in synchronisation
    than they give. For the stages that run a model for long (embed, train, evaluate).
    """
    out = pick_device(device)
    if out.type == "cpu":
        torch.set_num_threads(num_threads or min(4, os.cpu_count() or 1))
    return out
