"""What a model name, a preset and `key=value` overrides resolve to.

A training run has four groups of settings, and only the first two define the model:

- `model` (the model's own `Config`: sizes, loss weights) and `train` (`TrainConfig`:
  optimisation) are hashed into the model's identity; changing one retrains.
- `inference` (the model's `Inference` config: beam width, decoding mode, ...) is stored
  beside the weights as the model's default and can be changed on a trained model
  (`sidrec evaluate ... beam=50`) without retraining.
- `runtime` (`RuntimeConfig`: device, threads, evaluation batch size, compile) says how
  this process runs; it changes neither the model nor (on CPU, at a fixed thread count,
  uncompiled) the numbers.

`precision` is a train setting (hashed) and `compile` a runtime one; the comments on the
fields say why.

Presets live in `sidrec/configs/<model>.yaml` (sections `model:`, `train:`,
`inference:`) on top of `configs/train.yaml` (`train:` only).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from sidrec.config import check_ranges, from_dict, load_yaml, merge, parse_overrides
from sidrec.distributed import TIMEOUT_S
from sidrec.errors import SidrecError
from sidrec.models import available_models, get_model_class
from sidrec.models.base import Recommender

SECTIONS = ("model", "train", "inference", "runtime", "tokenizer")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings: part of what a model is (hashed)."""

    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # decoupled, on matrices and embeddings only (not biases/norms)
    batch_size: int = 128
    max_epochs: int = 200
    warmup_steps: int = 100  # linear warm-up from 0, in optimiser steps
    schedule: Literal["cosine", "constant"] = "cosine"  # cosine: to 0 at max_epochs
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    patience: int = 10  # evaluations without improvement before stopping
    eval_every: int = 1  # epochs between validation runs
    metric: str = "ndcg@10"  # validation metric (overall row, first variant) to select on
    seed: int = 0  # model init, shuffling, dropout, sampled negatives
    # Examples drawn (without replacement, seeded) per epoch; 0 = all. Long MovieLens
    # histories give ~100 prefixes per user; a CPU epoch of a seq2seq model over all of
    # them takes minutes, and a fresh subset each epoch still visits them all over time.
    examples_per_epoch: int = 0
    # Arithmetic of the forward pass: "bf16" runs it under bfloat16 autocast (weights,
    # gradients and optimiser state stay fp32), "auto" = bf16 on CUDA, fp32 elsewhere.
    # Hashed: bf16 changes the trained weights by more than rounding noise, so a model is
    # never resumed in another precision; "auto" is made concrete (`for_device`) before
    # the hash, so the record says which precision made the model.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Batches of prefixes of similar length (Hugging Face's `group_by_length`: each pool
    # of 50 batches of the epoch's seeded draw is sorted by history length, longest
    # first). An encoder that drops all-padding columns (the SID family, on CPU) then
    # reads far fewer tokens when most histories are short: on Amazon Beauty 28.6 per
    # example instead of 81, and TIGER (cpu size) trained 2.4x the examples/s
    # (benchmarks/bench_train.py). The batches are no longer uniform draws, so it is a
    # training choice (hashed), off by default.
    group_by_length: bool = False


@dataclass(frozen=True)
class RuntimeConfig:
    """How this process runs: not part of what a model is (not hashed)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA if available, else CPU
    num_threads: int = 0  # CPU threads; 0 = min(4, os.cpu_count())
    eval_batch_size: int = 512  # users per recommend() call during validation
    # torch.compile the training forward (CPU and CUDA). Not hashed: the same graph, only
    # fused kernels with other rounding, like a change of device or thread count; a
    # compiled run may resume an eager one. The first steps pay the compilation.
    compile: bool = False
    # Under torchrun: how long a process waits for the others (rank 0 fitting the
    # model's own SIDs, writing a checkpoint) before the job fails.
    dist_timeout_s: float = TIMEOUT_S


@dataclass(frozen=True)
class RunSettings:
    """Every setting of one training run, resolved and checked."""

    cls: type[Recommender]
    preset: str | None
    model: Any  # cls.Config
    train: TrainConfig
    inference: Any  # cls.Inference
    runtime: RuntimeConfig
    # The model's own tokenizer (`sidrec.tokenize.tokenizer_config` of {"method",
    # "preset", overrides...}), or None for the run's SIDs. Part of what is trained.
    tokenizer: dict[str, Any] | None = None


def config_dir() -> Path:
    """Where the preset YAML files live: `sidrec/configs/`, shipped inside the package."""
    return Path(__file__).resolve().parent / "configs"


def load_preset(file_stem: str, preset: str, directory: Path | None = None) -> dict[str, Any]:
    """The `preset` section of `configs/<file_stem>.yaml`: {"model": .., "train": .., ...}."""
    path = (directory or config_dir()) / f"{file_stem}.yaml"
    if not path.is_file():
        raise SidrecError(
            f"{path}: no presets for {file_stem!r}; add the file or pass preset=None for the "
            "built-in defaults"
        )
    data = load_yaml(path)
    if preset not in data:
        raise SidrecError(f"{path}: no preset {preset!r}; available: {', '.join(sorted(data))}")
    section = data[preset] or {}
    if not isinstance(section, dict) or set(section) - {"model", "train", "inference",
                                                        "tokenizer"}:
        raise SidrecError(
            f"{path}: preset {preset!r} may contain only 'model:', 'train:', 'inference:' "
            "and 'tokenizer:' mappings"
        )
    return section


def resolve_config(
    model_name: str,
    preset: str | None = "cpu",
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    *,
    inference_overrides: dict[str, Any] | None = None,
    runtime_overrides: dict[str, Any] | None = None,
    tokenizer_overrides: dict[str, Any] | None = None,
    directory: Path | None = None,
) -> RunSettings:
    """Every setting of a run of `model_name`.

    Precedence, lowest first: dataclass defaults, `configs/train.yaml[preset].train`,
    `configs/<model>.yaml[preset]`, then the overrides. `train_overrides` may also name
    runtime settings (device, num_threads, eval_batch_size): they go to `runtime`.
    `tokenizer_overrides` change a preset's own tokenizer settings (e.g. {"method":
    "rqkmeans"} for COBRA's paper preset); for a SID model whose preset has none (TIGER,
    LIGER) they give the model its own SID set instead of the run's, and must then name
    the method. A model that reads no SIDs refuses them.
    """
    cls = get_model_class(model_name)
    own: dict[str, Any] = {}
    train_section: dict[str, Any] = {}
    if preset is not None:
        base = load_preset("train", preset, directory)
        if set(base) - {"train"}:
            raise SidrecError(f"configs/train.yaml: preset {preset!r} may only set 'train:'")
        own = load_preset(model_name, preset, directory)
        train_section = merge(base.get("train") or {}, own.get("train") or {})
    runtime_fields = {f.name for f in fields(RuntimeConfig)}
    train_over = dict(train_overrides or {})
    runtime_over = {k: train_over.pop(k) for k in list(train_over) if k in runtime_fields}
    runtime_over.update(runtime_overrides or {})
    where = f"{model_name} preset {preset!r}" if preset else model_name
    settings = RunSettings(
        cls=cls,
        preset=preset,
        model=from_dict(cls.Config, merge(own.get("model") or {}, model_overrides or {}),
                        f"{where}.model"),
        train=from_dict(TrainConfig, merge(train_section, train_over), f"{where}.train"),
        inference=from_dict(cls.Inference,
                            merge(own.get("inference") or {}, inference_overrides or {}),
                            f"{where}.inference"),
        runtime=from_dict(RuntimeConfig, runtime_over, f"{where}.runtime"),
        tokenizer=_own_tokenizer(cls, model_name, own.get("tokenizer"), tokenizer_overrides),
    )
    check_train_config(settings.train)
    check_runtime_config(settings.runtime)
    check_ranges(settings.model, f"{model_name}.model")
    check_ranges(settings.inference, f"{model_name}.inference")
    return settings


def _own_tokenizer(cls: type[Recommender], model_name: str, preset: dict[str, Any] | None,
                   overrides: dict[str, Any] | None) -> dict[str, Any] | None:
    """The model's own tokenizer settings ({"method", "preset", overrides...}) or None (the
    run's SIDs), checked now so a mistyped key fails before any work."""
    if overrides and not cls.needs_sids:
        takers = ", ".join(m for m in available_models() if get_model_class(m).needs_sids)
        raise SidrecError(
            f"tokenizer.* settings: {model_name!r} reads no semantic IDs; they apply to the "
            f"SID models ({takers})"
        )
    if not cls.needs_sids or (preset is None and not overrides):
        return None
    settings = merge(preset or {}, overrides or {})
    if "method" not in settings:
        raise SidrecError(
            f"tokenizer.* settings for {model_name!r}, whose preset uses the run's SIDs, make "
            "the model its own SID set: name its method too, e.g. tokenizer.method=rqkmeans "
            "(or rqvae)"
        )
    from sidrec.tokenize.config import tokenizer_config

    options = {k: v for k, v in settings.items() if k not in ("method", "preset")}
    tokenizer_config(settings["method"], settings.get("preset", "small"), options)
    return settings


def split_overrides(model_name: str, pairs: list[str] | tuple[str, ...]) -> dict[str, dict]:
    """CLI `key=value` pairs -> {"model": .., "train": .., "inference": .., "runtime": ..,
    "tokenizer": ..}.

    `SECTION.KEY=` goes where it says; a bare `KEY=` goes to the one section that has a
    field of that name, and is an error if several or none have it. `tokenizer.KEY=` is
    never bare (its keys are checked by `resolve_config`).
    """
    cls = get_model_class(model_name)
    known = {
        "model": _field_names(cls.Config),
        "train": _field_names(TrainConfig),
        "inference": _field_names(cls.Inference),
        "runtime": _field_names(RuntimeConfig),
    }
    out: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for key, value in parse_overrides(pairs).items():
        if key in SECTIONS and isinstance(value, dict):
            out[key].update(value)
            continue
        owners = [section for section, names in known.items() if key in names]
        if len(owners) > 1:
            raise SidrecError(
                f"override {key!r} is ambiguous; write "
                + " or ".join(f"{s}.{key}=" for s in owners)
            )
        if not owners:
            listing = "; ".join(f"{s}: {', '.join(sorted(n)) or 'none'}"
                                for s, n in known.items())
            raise SidrecError(f"override {key!r} is not a setting of {model_name!r} ({listing})")
        out[owners[0]][key] = value
    return out


# Train settings added after models had been trained: at these values they change nothing,
# so `config.json` leaves them out and those models keep their identity (config hash).
UNRECORDED_TRAIN_DEFAULTS = {"precision": "fp32", "group_by_length": False}


def for_device(cfg: TrainConfig, device_type: str) -> TrainConfig:
    """`precision: auto` made concrete for the device: bf16 on CUDA, fp32 elsewhere."""
    if cfg.precision != "auto":
        return cfg
    return dataclasses.replace(cfg, precision="bf16" if device_type == "cuda" else "fp32")


def check_train_config(cfg: TrainConfig) -> None:
    """Out-of-range or non-finite optimisation settings are user errors."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise SidrecError(f"train.{f.name}={value}: must be a finite number")
    for name in ("lr", "batch_size", "max_epochs", "eval_every", "patience"):
        if getattr(cfg, name) <= 0:
            raise SidrecError(f"train.{name}={getattr(cfg, name)}: must be > 0")
    for name in ("weight_decay", "warmup_steps", "grad_clip", "examples_per_epoch", "seed"):
        if getattr(cfg, name) < 0:
            raise SidrecError(f"train.{name}={getattr(cfg, name)}: must be >= 0")
    if not re.fullmatch(r"(recall|ndcg)@[1-9][0-9]*", cfg.metric):
        raise SidrecError(f"train.metric={cfg.metric!r}: expected e.g. ndcg@10 or recall@20")


def check_runtime_config(cfg: RuntimeConfig) -> None:
    if not (math.isfinite(cfg.dist_timeout_s) and cfg.dist_timeout_s > 0):
        raise SidrecError(f"runtime.dist_timeout_s={cfg.dist_timeout_s}: must be a finite "
                          "number of seconds > 0 (e.g. 7200)")
    if cfg.num_threads < 0:
        raise SidrecError(f"runtime.num_threads={cfg.num_threads}: must be >= 0 (0: automatic)")
    if cfg.eval_batch_size <= 0:
        raise SidrecError(f"runtime.eval_batch_size={cfg.eval_batch_size}: must be > 0")


def _field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}
