"""A trained model on disk: its record, weights, resume checkpoint, the staging directory
of a retrain (`workspace`, `publish`), and `load_model`.

Files in `runs/<run>/models/<name>/` (`sidrec.run.ModelDir`):
- `config.json`        model name, preset, model and train configs, hashes of the inputs
                       (`sidrec.catalogue.build.input_fingerprint`), and `config_hash`,
                       the hash of all of that: the model's identity
- `inference.json`     the default inference config (beam, mode, ...); not hashed, so it
                       can change without retraining
- `model.safetensors`  best weights so far (by the validation metric); a new best is
                       written as `model.next.safetensors` and moved over it once the
                       checkpoint of its epoch is written (`settle_weights`)
- `train_log.jsonl`    one line per epoch: each loss term separately, lr, valid metrics
- `last.safetensors`   resume checkpoint after every epoch: weights, optimiser tensors,
                       RNG states; its metadata holds the `TrainState` and the optimiser
                       settings as JSON. One file written atomically, never half old.
- `state.json`         a readable copy of the `TrainState`.

Only safetensors and JSON are read: no file is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from sidrec.catalogue.build import catalogue_for, input_fingerprint
from sidrec.config import check_ranges, from_dict, to_dict
from sidrec.data.dataset import Dataset
from sidrec.errors import SidrecError
from sidrec.io import atomic_path, read_json_object, write_json
from sidrec.models import get_model_class
from sidrec.models.base import Recommender
from sidrec.presets import UNRECORDED_TRAIN_DEFAULTS
from sidrec.run import ModelDir, RunDir

RECORD_FORMAT = 2  # 1: inference settings were part of the model config (and its hash)


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint and in `state.json`."""

    config_hash: str
    epoch: int = 0
    step: int = 0
    best: float = -math.inf
    best_epoch: int = 0
    bad_evals: int = 0  # evaluations since the last improvement
    done: bool = False
    stopped_early: bool = False


@dataclass
class Checkpoint:
    tensors: dict[str, torch.Tensor]
    state: TrainState
    meta: dict[str, Any]  # optimiser param groups and non-tensor slots


def model_record(settings: Any, inputs: dict[str, str], model_name: str,
                 sid_set: str = "") -> dict[str, Any]:
    """`config.json` without its hash: what defines a trained model (`settings` is a
    `sidrec.presets.RunSettings`; runtime and inference settings are left out). `sid_set`
    names the model's own SIDs (`RunDir.with_sids`), when its preset asks for them."""
    own_sids = {"sid_set": sid_set, "tokenizer": settings.tokenizer} if sid_set else {}
    return {
        **own_sids,
        "format": RECORD_FORMAT,
        "model": model_name,
        "preset": settings.preset,
        "model_config": to_dict(settings.model),
        "train_config": {k: v for k, v in to_dict(settings.train).items()
                         if k not in UNRECORDED_TRAIN_DEFAULTS
                         or v != UNRECORDED_TRAIN_DEFAULTS[k]},
        "inputs": inputs,
    }


def write_inference(model_dir: ModelDir, inference: Any) -> None:
    write_json(model_dir.inference, to_dict(inference))


# ---------------------------------------------------------------- weights and checkpoints


def _tie_groups(model: torch.nn.Module) -> list[list[str]]:
    """The state-dict names that hold one tensor, in groups of two or more (e.g. the SID
    models' token table, one tensor in three modules)."""
    groups: dict[tuple, list[str]] = {}
    for name, v in model.state_dict(keep_vars=True).items():
        if v.numel():
            key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape),
                   tuple(v.stride()), str(v.device))
            groups.setdefault(key, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # A tied tensor is stored once, under its first name (safetensors refuses shared
    # memory); `_with_tied_names` gives the other names back at load.
    others = {name for names in _tie_groups(model) for name in names[1:]}
    return {k: v.detach().to("cpu").clone().contiguous()
            for k, v in model.state_dict().items() if k not in others}


def _with_tied_names(model: torch.nn.Module,
                     tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The stored tensors with every name of a tie filled in from whichever of its names
    the file holds (a file from before ties were stored once holds them all)."""
    out = dict(tensors)
    for names in _tie_groups(model):
        stored = next((tensors[n] for n in names if n in tensors), None)
        if stored is not None:
            out.update({n: stored for n in names if n not in tensors})
    return out


def save_weights(model: torch.nn.Module, path: Path, config_hash: str, epoch: int) -> None:
    with atomic_path(path) as tmp:
        save_file(
            _cpu_state(model), str(tmp), metadata={"config_hash": config_hash, "epoch": str(epoch)}
        )


def settle_weights(model_dir: ModelDir, state: TrainState | None) -> None:
    """Move a new best (`next_weights`) over the best weights once the checkpoint of its
    epoch says it is the best (`state`: that checkpoint's); otherwise drop it, since a
    resumed run trains its epoch again. The two files never disagree with the checkpoint,
    even where that epoch does not train the same twice (CUDA)."""
    new = model_dir.next_weights
    if not new.is_file():
        return
    with safe_open(str(new), "pt") as f:
        epoch = int((f.metadata() or {}).get("epoch", -1))
    if state is not None and epoch == state.best_epoch:
        os.replace(new, model_dir.weights)
    else:
        new.unlink()


def write_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle: torch.Generator,
    state: TrainState,
    more_tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """`more_tensors`: more to keep, e.g. every DDP rank's generator states
    (`sidrec.distributed.rng_states`)."""
    tensors = {f"model/{k}": v for k, v in _cpu_state(model).items()}
    sd = optimizer.state_dict()
    extra: dict[str, dict[str, Any]] = {}
    for idx, slots in sd["state"].items():
        for slot, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{slot}"] = value.detach().to("cpu").clone().contiguous()
            else:
                extra.setdefault(str(idx), {})[slot] = value
    meta = {"state": asdict(state), "param_groups": sd["param_groups"], "optim_extra": extra}
    tensors["rng/shuffle"] = shuffle.get_state()
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    tensors.update(more_tensors or {})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"sidrec": json.dumps(meta)})


def read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at `path`, or None if it is unreadable (then training starts over)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["sidrec"])
        tensors = load_file(str(path))
        state = TrainState(**meta["state"])
    except Exception as e:  # a truncated or foreign file: report and retrain from scratch
        tqdm.write(f"{path}: unreadable checkpoint ({type(e).__name__}); starting over")
        return None
    return Checkpoint(tensors, state, meta)


def restore(
    ck: Checkpoint,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    shuffle: torch.Generator,
    device: torch.device,
) -> None:
    """Put weights, optimiser state and every RNG back as they were when `ck` was saved."""
    model.load_state_dict(_with_tied_names(model, {k[6:]: v for k, v in ck.tensors.items()
                                                   if k.startswith("model/")}))
    slots: dict[int, dict[str, Any]] = {}
    for key, value in ck.tensors.items():
        if key.startswith("optim/"):
            _, idx, slot = key.split("/", 2)
            slots.setdefault(int(idx), {})[slot] = value
    for idx, extra in ck.meta.get("optim_extra", {}).items():
        slots.setdefault(int(idx), {}).update(extra)
    optimizer.load_state_dict({"state": slots, "param_groups": ck.meta["param_groups"]})
    shuffle.set_state(ck.tensors["rng/shuffle"])
    torch.set_rng_state(ck.tensors["rng/torch"])
    cuda_states = [
        ck.tensors[f"rng/cuda/{i}"]
        for i in range(torch.cuda.device_count())
        if f"rng/cuda/{i}" in ck.tensors
    ]
    if device.type == "cuda" and cuda_states:
        torch.cuda.set_rng_state_all(cuda_states)


def workspace(final: ModelDir, config_hash: str, resume: bool,
              verbose: bool = True) -> tuple[ModelDir, Any]:
    """(directory to train in, checkpoint to resume or None), for the trainer.

    The model directory itself when its checkpoint has this config; otherwise the
    staging directory `.<name>.partial`, so the trained model stays intact (and
    loadable) until its replacement is complete.
    """
    staging = ModelDir(final.root.parent / f".{final.name}.partial")
    for candidate in (final, staging):
        if resume and candidate.checkpoint.is_file():
            ck = read_checkpoint(candidate.checkpoint)
            if ck is not None and ck.state.config_hash == config_hash:
                return candidate, ck
            if ck is not None and candidate is final and verbose:
                tqdm.write(f"{final.root}: settings or inputs changed since it was trained; "
                           "training a new model beside it")
    if not final.root.exists():
        return final, None
    return staging, None


def publish(out: ModelDir, final: ModelDir) -> None:
    """Move a completed staging directory over the model it replaces."""
    if out.root == final.root:
        return
    old = final.root.parent / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.root.exists():
        os.replace(final.root, old)
    os.replace(out.root, final.root)
    shutil.rmtree(old, ignore_errors=True)


def write_state(model_dir: ModelDir, state: TrainState) -> None:
    write_json(model_dir.state, asdict(state))


def read_log(model_dir: ModelDir) -> list[dict[str, Any]]:
    if not model_dir.log.is_file():
        return []
    return [json.loads(line) for line in model_dir.log.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- loading


def load_model(
    model_dir: str | Path | ModelDir,
    run_dir: str | Path | RunDir | None = None,
    *,
    dataset: Dataset | None = None,
    inference: dict[str, Any] | None = None,
) -> Recommender:
    """Rebuild a trained model from `model_dir` and the run's catalogue; `run_dir`
    defaults to the directory that holds `models/`. `inference` overrides settings of the
    stored inference config (e.g. {"beam": 50}) for this model object only.

    Refuses (SidrecError) when the run's dataset, embeddings or SIDs differ from those the
    model was trained on. The model is returned on CPU in eval mode.
    """
    md = model_dir if isinstance(model_dir, ModelDir) else ModelDir(Path(model_dir))
    run = RunDir(run_dir) if run_dir is not None else md.run
    md.require()
    if not md.weights.is_file():
        raise SidrecError(
            f"{md.weights}: missing; training has not reached its first evaluation yet — "
            f"re-run `sidrec train` for this model to resume it"
        )
    retrain = f"retrain it (`sidrec train {run.root} --model NAME --name {md.name} --restart`)"
    record = read_json_object(md.config, retrain)
    if not isinstance(record.get("model"), str) or not isinstance(
            record.get("model_config"), dict) or not isinstance(record.get("inputs"), dict):
        raise SidrecError(f"{md.config}: not a model record (needs model, model_config, "
                          f"inputs); {retrain}")
    if record.get("format") != RECORD_FORMAT:
        raise SidrecError(
            f"{md.config}: written by an older sidrec, whose model identity also held the "
            f"inference settings; retrain it once (`sidrec train {run.root} --model "
            f"{record.get('model', 'NAME')} --name {md.name}`)"
        )
    run = run.with_sids(str(record.get("sid_set") or ""))  # the SIDs it was trained on
    cls = get_model_class(record["model"])
    # A Config may say what the settings an older record lacks meant then (LIGER's input
    # options: such a record holds sidrec's old input, not the new defaults).
    stored_cfg = getattr(cls.Config, "stored", lambda data: data)(record["model_config"])
    model_cfg = from_dict(cls.Config, stored_cfg, f"{md.config}: model_config")
    stored = (read_json_object(md.inference, "delete it to use the model's default inference "
                               "settings") if md.inference.is_file() else {})
    ds = dataset if dataset is not None else Dataset.load(run.root)
    now = input_fingerprint(cls, run, ds)
    changed = [k for k in set(now) | set(record["inputs"]) if now.get(k) != record["inputs"].get(k)]
    if changed:
        raise SidrecError(
            f"{md.root}: the run's {', '.join(sorted(changed))} changed since this model was "
            f"trained; retrain it (`sidrec train {run.root} --model {record['model']}`)"
        )
    model = cls(model_cfg, catalogue_for(cls, run, ds))
    model.inference = from_dict(cls.Inference, stored, f"{md.inference}")
    check_ranges(model.inference, f"{md.inference}")  # the file is editable by hand
    model.inference = model.inference_with(inference)
    try:
        weights = load_file(str(md.weights))
        model.load_state_dict(_with_tied_names(model, weights))
    except Exception as e:  # truncated, foreign or mismatched weights: a user-facing error
        raise SidrecError(
            f"{md.weights}: unreadable or not this model's weights ({type(e).__name__}); "
            f"retrain it (`sidrec train {run.root} --model {record['model']} --restart`)"
        ) from None
    try:
        model.check_finite()
    except SidrecError as e:
        raise SidrecError(f"{md.weights}: {e}") from None
    return model.eval()

