"""Training stage: `run_dir/models/<name>/` from a model name, a preset and overrides.

One loop for every registered model (it only calls `model.loss(batch)`): AdamW, linear
warm-up then cosine decay (per optimiser step), gradient-norm clipping, validation
NDCG@10 (`TrainConfig.metric`) every `eval_every` epochs through `sidrec.evaluate`, early
stopping after `patience` evaluations without improvement, best weights kept.

Examples: every prefix of every user's training part (`Dataset.train_examples`). A model
whose loss already covers every position of the history (`trains_every_position = True`:
SASRec, Dense, COBRA) gets `window_examples` instead: per user, the prefixes ending at the last
training item, then every `max_history` items earlier, so that each training target is
predicted exactly once per epoch (each prefix would repeat it up to max_history times).

Files in `run_dir/models/<name>/`:
- `config.json`        model name, preset, resolved model and train configs, hashes of the
                       inputs (`sidrec.models.catalogue.input_fingerprint`), config hash
- `model.safetensors`  best weights so far (by the validation metric)
- `train_log.jsonl`    one line per epoch: each loss term separately, lr, valid metrics
- `last.safetensors`   resume checkpoint after every epoch: weights, optimiser tensors,
                       RNG states; its metadata holds the rest (epoch, step, best metric,
                       patience counter, optimiser settings) as JSON. It is one file
                       written atomically, so it is never half old, half new.
- `state.json`         a readable copy of that metadata.

A run restarted with the same configuration and inputs (same config hash) resumes from
`last.safetensors` and reaches the same result as an uninterrupted run (bitwise on CPU).
Changing any setting starts over. Deterministic on CPU for a seed; CUDA kernels are not
guaranteed bitwise deterministic.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

import sidrec
from sidrec.config import from_dict, load_yaml, merge, parse_overrides, to_dict
from sidrec.data.dataset import Dataset, pad_histories
from sidrec.device import resolve_device
from sidrec.errors import SidrecError
from sidrec.evaluate import evaluate
from sidrec.io import atomic_path, hash_obj, read_json, write_json, write_text
from sidrec.models import get_model_class
from sidrec.models.base import Recommender
from sidrec.models.catalogue import catalogue_for, input_fingerprint


@dataclass(frozen=True)
class TrainConfig:
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
    eval_batch_size: int = 512  # users per recommend() call during validation
    seed: int = 0  # model init, shuffling, dropout, sampled negatives
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA if available, else CPU
    num_threads: int = 0  # CPU threads; 0 = min(4, os.cpu_count())
    # Examples drawn (without replacement, seeded) per epoch; 0 = all. Long MovieLens
    # histories give ~100 prefixes per user; a CPU epoch of a seq2seq model over all of
    # them takes minutes, and a fresh subset each epoch still visits them all over time.
    examples_per_epoch: int = 0


# ---------------------------------------------------------------- configuration


def config_dir() -> Path:
    """Where the preset YAML files live: `sidrec/configs/`, shipped inside the package."""
    return Path(__file__).resolve().parent / "configs"


def load_preset(file_stem: str, preset: str, directory: Path | None = None) -> dict[str, Any]:
    """The `preset` section of `configs/<file_stem>.yaml`: {"model": {...}, "train": {...}}."""
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
    if not isinstance(section, dict) or set(section) - {"model", "train"}:
        raise SidrecError(
            f"{path}: preset {preset!r} must contain only 'model:' and 'train:' mappings"
        )
    return section


def resolve_config(
    model_name: str,
    preset: str | None = "cpu",
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    directory: Path | None = None,
) -> tuple[type[Recommender], Any, TrainConfig]:
    """(model class, model config, train config).

    Precedence, lowest first: dataclass defaults, `configs/train.yaml[preset].train`,
    `configs/<model>.yaml[preset]` (`model:` and `train:`), then the overrides.
    """
    cls = get_model_class(model_name)
    model_section: dict[str, Any] = {}
    train_section: dict[str, Any] = {}
    if preset is not None:
        base = load_preset("train", preset, directory)
        if base.get("model"):
            raise SidrecError(f"configs/train.yaml: preset {preset!r} may only set 'train:'")
        own = load_preset(model_name, preset, directory)
        model_section = own.get("model") or {}
        train_section = merge(base.get("train") or {}, own.get("train") or {})
    where = f"{model_name} preset {preset!r}" if preset else model_name
    model_cfg = from_dict(cls.Config, merge(model_section, model_overrides or {}), f"{where}.model")
    train_cfg = from_dict(
        TrainConfig, merge(train_section, train_overrides or {}), f"{where}.train"
    )
    _check_train_config(train_cfg)
    return cls, model_cfg, train_cfg


def split_overrides(
    model_name: str, pairs: list[str] | tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """CLI `key=value` pairs -> (model overrides, train overrides).

    `model.KEY=` and `train.KEY=` go where they say; a bare `KEY=` goes to the config that
    has a field of that name, and is an error if both or neither have it.
    """
    cls = get_model_class(model_name)
    model_fields = set(cls.Config.__dataclass_fields__)
    train_fields = set(TrainConfig.__dataclass_fields__)
    model_over: dict[str, Any] = {}
    train_over: dict[str, Any] = {}
    for key, value in parse_overrides(pairs).items():
        if key in ("model", "train") and isinstance(value, dict):
            (model_over if key == "model" else train_over).update(value)
        elif key in model_fields and key in train_fields:
            raise SidrecError(f"override {key!r} is ambiguous; write model.{key}= or train.{key}=")
        elif key in model_fields:
            model_over[key] = value
        elif key in train_fields:
            train_over[key] = value
        else:
            raise SidrecError(
                f"override {key!r} is not a setting of {model_name!r} "
                f"({', '.join(sorted(model_fields)) or 'none'}) nor of training "
                f"({', '.join(sorted(train_fields))})"
            )
    return model_over, train_over


def _check_train_config(cfg: TrainConfig) -> None:
    positive = ("lr", "batch_size", "max_epochs", "eval_every", "eval_batch_size", "patience")
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise SidrecError(f"train.{name}={getattr(cfg, name)}: must be > 0")
    for name in ("weight_decay", "warmup_steps", "grad_clip", "num_threads",
                 "examples_per_epoch"):
        if getattr(cfg, name) < 0:
            raise SidrecError(f"train.{name}={getattr(cfg, name)}: must be >= 0")
    if not re.fullmatch(r"(recall|ndcg)@[1-9][0-9]*", cfg.metric):
        raise SidrecError(f"train.metric={cfg.metric!r}: expected e.g. ndcg@10 or recall@20")


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
    run_dir: str | Path,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    preset: str | None = "cpu",
    *,
    name: str | None = None,
    resume: bool = True,
    dataset: Dataset | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train `model_name` on `run_dir` into `run_dir/models/<name or model_name>/`.

    `dataset` replaces `Dataset.load(run_dir)` (tests, notebooks). `on_epoch_end` is called
    with each epoch's log entry after its checkpoint is written. Returns a summary:
    {"model_dir", "epochs", "best_epoch", "best_valid", "metric", "stopped_early", "resumed"}.
    """
    run_dir = Path(run_dir)
    cls, model_cfg, cfg = resolve_config(model_name, preset, model_overrides, train_overrides)
    ds = dataset if dataset is not None else Dataset.load(run_dir)
    device = resolve_device(cfg.device, cfg.num_threads)
    out = run_dir / "models" / (name or model_name)

    record = {
        "model": model_name,
        "preset": preset,
        "model_config": to_dict(model_cfg),
        "train_config": to_dict(cfg),
        "inputs": input_fingerprint(cls, run_dir, ds),
    }
    config_hash = hash_obj(record)
    record["config_hash"] = config_hash
    record["sidrec_version"] = sidrec.__version__

    torch.manual_seed(cfg.seed)
    model = cls(model_cfg, catalogue_for(cls, run_dir, ds)).to(device)
    ckpt_path = out / "last.safetensors"
    ck = _read_checkpoint(ckpt_path) if resume and ckpt_path.is_file() else None
    if ck is not None and ck[1]["config_hash"] != config_hash:
        tqdm.write(f"{out}: settings or inputs changed since the checkpoint; starting over")
        ck = None
    if ck is not None and ck[1]["done"]:
        return _summary(out, ck[1], cfg, resumed=True)
    if ck is None:
        for stale in ("model.safetensors", "last.safetensors", "state.json", "train_log.jsonl"):
            (out / stale).unlink(missing_ok=True)
        write_json(out / "config.json", record)

    if not cls.trainable:
        return _fit_untrainable(model, ds, cfg, out, config_hash, progress)

    if cls.trains_every_position:
        h_np, t_np, u_np = window_examples(ds)
    else:
        h_np, t_np, u_np = ds.train_examples()
    if len(t_np) == 0:
        raise SidrecError(f"{run_dir}: no training examples (every user has < 2 training items)")
    histories = torch.as_tensor(h_np, device=device)  # [N, L]
    targets = torch.as_tensor(t_np, device=device)  # [N]
    users = torch.as_tensor(u_np, device=device)  # [N]
    n = len(targets)
    per_epoch = min(n, cfg.examples_per_epoch) if cfg.examples_per_epoch > 0 else n
    steps_per_epoch = math.ceil(per_epoch / cfg.batch_size)
    total_steps = cfg.max_epochs * steps_per_epoch
    optimizer = make_optimizer(model, cfg)
    shuffle = torch.Generator().manual_seed(cfg.seed)

    state = {
        "config_hash": config_hash,
        "epoch": 0,
        "step": 0,
        "best": -math.inf,
        "best_epoch": 0,
        "bad_evals": 0,
        "done": False,
        "stopped_early": False,
    }
    log: list[dict[str, Any]] = []
    resumed = ck is not None
    if ck is not None:
        tensors, state = ck
        _restore(model, optimizer, shuffle, tensors, state, device)
        log = [e for e in _read_log(out) if e["epoch"] <= state["epoch"]]

    bar = tqdm(
        total=cfg.max_epochs,
        initial=state["epoch"],
        disable=not progress,
        desc=name or model_name,
        unit="epoch",
        dynamic_ncols=True,
    )
    examples = {"history": histories, "target": targets, "user": users}
    while state["epoch"] < cfg.max_epochs and state["bad_evals"] < cfg.patience:
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=shuffle)[:per_epoch].to(device)  # [N']
        means, state["step"], lr = train_epoch(
            model, optimizer, examples, perm, cfg, state["step"], total_steps
        )
        state["epoch"] += 1
        epoch = state["epoch"]
        entry: dict[str, Any] = {"epoch": epoch, "step": state["step"], "lr": lr}
        entry.update({f"train_{k}": v for k, v in means.items()})
        if not math.isfinite(entry["train_loss"]):
            raise SidrecError(
                f"{model_name}: training loss became {entry['train_loss']} in epoch {epoch}; "
                f"lower lr (now {cfg.lr}) or set grad_clip"
            )
        entry["train_seconds"] = time.perf_counter() - t0

        if epoch % cfg.eval_every == 0 or epoch == cfg.max_epochs:
            valid = validate(model, ds, cfg, device)
            entry.update({f"valid_{k}": v for k, v in valid.items()})
            if valid[cfg.metric] > state["best"]:
                state.update(best=valid[cfg.metric], best_epoch=epoch, bad_evals=0)
                _save_weights(model, out / "model.safetensors", config_hash, epoch)
            else:
                state["bad_evals"] += 1
        stop = state["epoch"] >= cfg.max_epochs or state["bad_evals"] >= cfg.patience
        if stop:
            state.update(done=True, stopped_early=state["epoch"] < cfg.max_epochs)
        log.append(entry)
        write_text(out / "train_log.jsonl", "".join(json.dumps(e) + "\n" for e in log))
        _write_checkpoint(ckpt_path, model, optimizer, shuffle, state)
        write_json(out / "state.json", state)
        bar.update(1)
        bar.set_postfix(
            loss=f"{entry['train_loss']:.4f}",
            **{
                cfg.metric: f"{entry.get('valid_' + cfg.metric, math.nan):.4f}",
                "best": f"{state['best']:.4f}",
            },
        )
        if on_epoch_end is not None:
            on_epoch_end(entry)
    bar.close()
    if not (out / "model.safetensors").is_file():  # no evaluation happened: keep the last
        _save_weights(model, out / "model.safetensors", config_hash, state["epoch"])
    return _summary(out, state, cfg, resumed=resumed)


def train_epoch(
    model: Recommender,
    optimizer: torch.optim.Optimizer,
    examples: dict[str, torch.Tensor],
    perm: torch.Tensor,
    cfg: TrainConfig,
    step: int,
    total_steps: int,
) -> tuple[dict[str, float], int, float]:
    """One pass over `examples` in the order `perm` [N]: (mean of each loss term over the
    examples, the step count after it, the last learning rate)."""
    model.train()
    n = len(perm)
    sums: dict[str, torch.Tensor] = {}
    lr = lr_at(step, cfg, total_steps)
    for start in range(0, n, cfg.batch_size):
        idx = perm[start : start + cfg.batch_size]  # [b]
        batch = {key: value[idx] for key, value in examples.items()}
        lr = lr_at(step, cfg, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        terms = model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        for key, value in terms.items():  # summed on the device: no sync per step
            sums[key] = sums.get(key, 0.0) + value.detach().float() * len(idx)
    return {key: value.item() / n for key, value in sums.items()}, step, lr


def validate(
    model: Recommender, ds: Dataset, cfg: TrainConfig, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Validation metrics at cfg.metric's cut-off (overall row of the first variant)."""
    first_variant = next(iter(model.variants()))
    metrics = evaluate(
        model,
        ds,
        "valid",
        ks=(int(cfg.metric.split("@")[1]),),
        batch_size=cfg.eval_batch_size,
        device=device,
        variants=[first_variant],
    )
    overall = next(r for r in metrics["rows"] if r["subset"] == "overall")
    return {k: v for k, v in overall.items() if "@" in k}


def _fit_untrainable(
    model: Recommender,
    ds: Dataset,
    cfg: TrainConfig,
    out: Path,
    config_hash: str,
    progress: bool,
) -> dict[str, Any]:
    """Models with nothing to fit (Pop): save as is, log their validation metric once."""
    t0 = time.perf_counter()
    valid = validate(model, ds, cfg)
    entry = {"epoch": 0, "step": 0, **{f"valid_{k}": v for k, v in valid.items()}}
    entry["train_seconds"] = time.perf_counter() - t0
    _save_weights(model, out / "model.safetensors", config_hash, 0)
    write_text(out / "train_log.jsonl", json.dumps(entry) + "\n")
    state = {
        "config_hash": config_hash,
        "epoch": 0,
        "step": 0,
        "best": valid[cfg.metric],
        "best_epoch": 0,
        "bad_evals": 0,
        "done": True,
        "stopped_early": False,
    }
    _write_checkpoint(out / "last.safetensors", model, None, None, state)
    write_json(out / "state.json", state)
    if progress:
        tqdm.write(f"{model.name}: nothing to train; valid {cfg.metric} = {state['best']:.4f}")
    return _summary(out, state, cfg, resumed=False)


def _summary(out: Path, state: dict[str, Any], cfg: TrainConfig, resumed: bool) -> dict[str, Any]:
    return {
        "model_dir": str(out),
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best_valid": state["best"],
        "metric": cfg.metric,
        "stopped_early": state["stopped_early"],
        "resumed": resumed,
    }


# ---------------------------------------------------------------- weights and checkpoints


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share memory (tied weights); each name gets
    # its own copy and load_state_dict fills both ties with the same values.
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


def _save_weights(model: torch.nn.Module, path: Path, config_hash: str, epoch: int) -> None:
    with atomic_path(path) as tmp:
        save_file(
            _cpu_state(model), str(tmp), metadata={"config_hash": config_hash, "epoch": str(epoch)}
        )


def _write_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    shuffle: torch.Generator | None,
    state: dict[str, Any],
) -> None:
    tensors = {f"model/{k}": v for k, v in _cpu_state(model).items()}
    meta: dict[str, Any] = {"state": state}
    if optimizer is not None:
        sd = optimizer.state_dict()
        extra: dict[str, dict[str, Any]] = {}
        for idx, slots in sd["state"].items():
            for slot, value in slots.items():
                if torch.is_tensor(value):
                    tensors[f"optim/{idx}/{slot}"] = value.detach().to("cpu").clone().contiguous()
                else:
                    extra.setdefault(str(idx), {})[slot] = value
        meta["param_groups"] = sd["param_groups"]
        meta["optim_extra"] = extra
    if shuffle is not None:
        tensors["rng/shuffle"] = shuffle.get_state()
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"sidrec": json.dumps(meta)})


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(tensors, state with "_meta") or None if the file is unreadable (then: start over)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["sidrec"])
        tensors = load_file(str(path))
    except Exception as e:  # a truncated or foreign file: report and retrain from scratch
        tqdm.write(f"{path}: unreadable checkpoint ({type(e).__name__}); starting over")
        return None
    state = dict(meta["state"])
    state["_meta"] = meta
    return tensors, state


def _restore(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle: torch.Generator,
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
    device: torch.device,
) -> None:
    meta = state.pop("_meta")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    slots: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, slot = key.split("/", 2)
            slots.setdefault(int(idx), {})[slot] = value
    for idx, extra in meta.get("optim_extra", {}).items():
        slots.setdefault(int(idx), {}).update(extra)
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    shuffle.set_state(tensors["rng/shuffle"])
    torch.set_rng_state(tensors["rng/torch"])
    cuda_states = [
        tensors[f"rng/cuda/{i}"]
        for i in range(torch.cuda.device_count())
        if f"rng/cuda/{i}" in tensors
    ]
    if device.type == "cuda" and cuda_states:
        torch.cuda.set_rng_state_all(cuda_states)


def _read_log(out: Path) -> list[dict[str, Any]]:
    path = out / "train_log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- loading


def load_model(
    model_dir: str | Path,
    run_dir: str | Path | None = None,
    *,
    dataset: Dataset | None = None,
) -> Recommender:
    """Rebuild a trained model from `model_dir` (config.json + model.safetensors) and the
    run's catalogue; `run_dir` defaults to the directory that holds `models/`.

    Refuses (SidrecError) when the run's dataset, embeddings or SIDs differ from those the
    model was trained on. The model is returned on CPU in eval mode.
    """
    model_dir = Path(model_dir)
    run_dir = Path(run_dir) if run_dir is not None else model_dir.parent.parent
    config_path = model_dir / "config.json"
    weights_path = model_dir / "model.safetensors"
    if not config_path.is_file():
        raise SidrecError(
            f"{model_dir}: no trained model here (config.json missing); run "
            f"`sidrec train {run_dir} --model NAME` first"
        )
    if not weights_path.is_file():
        raise SidrecError(
            f"{weights_path}: missing; training has not reached its first evaluation yet — "
            f"re-run `sidrec train` for this model to resume it"
        )
    record = read_json(config_path)
    cls = get_model_class(record["model"])
    model_cfg = from_dict(cls.Config, record["model_config"], f"{config_path}: model_config")
    ds = dataset if dataset is not None else Dataset.load(run_dir)
    now = input_fingerprint(cls, run_dir, ds)
    changed = [k for k in set(now) | set(record["inputs"]) if now.get(k) != record["inputs"].get(k)]
    if changed:
        raise SidrecError(
            f"{model_dir}: the run's {', '.join(sorted(changed))} changed since this model was "
            f"trained; retrain it (`sidrec train {run_dir} --model {record['model']}`)"
        )
    model = cls(model_cfg, catalogue_for(cls, run_dir, ds))
    model.load_state_dict(load_file(str(weights_path)))
    return model.eval()
