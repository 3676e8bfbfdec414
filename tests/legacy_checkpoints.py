"""Tiny checkpoints written by an older sidrec, and what that sidrec did with them.

`python tests/legacy_checkpoints.py` (run at commit 29ebc69, before COBRA was split into
parts and TIGER / LIGER shared one generative-SID surface) wrote tests/data/
legacy_checkpoints/: one shared catalogue and batches (`inputs.safetensors`), and per
model its weights after a few training steps from seed 0 (`<model>.safetensors`, stored
as `sidrec.checkpoint.save_weights` stores them) and `<model>.json`: the model name and
config as config.json records them, the loss terms of each step, the recommendations of
every inference variant, and the parameters in the order an optimiser's state lists them
(a resumed training reads its state by that position). tests/test_legacy_checkpoints.py checks
that today's code loads those weights and recommends the same, and that the same seed
still draws the same weights and trains through the same losses.

Do not regenerate the files with newer code: they are the old code's answers.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sidrec.config import from_dict, to_dict
from sidrec.models import get_model_class
from sidrec.models.base import Catalogue, Recommender

FOLDER = Path(__file__).parent / "data" / "legacy_checkpoints"
# Each model at a tiny size, dropout on so the draws of training are covered as well.
SETTINGS: dict[str, dict[str, Any]] = {
    **{name: {"d_model": 16, "n_layers": 1, "n_heads": 2, "head_dim": 8, "d_ff": 32,
              "dropout": 0.1, "max_len": 8}
       for name in ("cobra", "cobra-no-dense", "cobra-no-sparse")},
    "cobra-no-dense-coarse": {"d_model": 16, "n_layers": 1, "n_heads": 2, "head_dim": 8,
                              "d_ff": 32, "dropout": 0.1, "max_len": 8, "sparse_levels": 1},
    **{name: {"d_model": 16, "n_heads": 2, "head_dim": 8, "d_ff": 32, "n_encoder_layers": 1,
              "n_decoder_layers": 1, "dropout": 0.1, "user_buckets": 16, "user_dropout": 0.1,
              "max_history": 6}
       for name in ("tiger", "tiger-t")},
    "liger": {"d_model": 16, "n_heads": 2, "head_dim": 8, "d_ff": 32, "n_encoder_layers": 1,
              "n_decoder_layers": 1, "dropout": 0.1, "user_buckets": 16, "user_dropout": 0.1,
              "max_history": 6, "text_hidden": 16},
}
STEPS, BATCHES = 20, 3  # Adam steps, cycling through the batches
N_ITEMS, SIZES, N_COLD, TEXT_DIM = 40, (4, 4), 4, 8


def make_inputs() -> dict[str, torch.Tensor]:
    """The catalogue, BATCHES training batches and the histories to recommend for."""
    g = torch.Generator().manual_seed(0)
    prefix = torch.stack([torch.randint(0, s, (N_ITEMS,), generator=g) for s in SIZES], 1)
    collision = torch.zeros(N_ITEMS, dtype=torch.int64)
    count: dict[tuple, int] = {}
    for i, row in enumerate(prefix.tolist()):
        collision[i] = count.get(tuple(row), 0)
        count[tuple(row)] = int(collision[i]) + 1
    warm = torch.arange(N_COLD, N_ITEMS)
    out = {"sids": torch.cat([prefix, collision[:, None]], dim=1),
           "text_emb": torch.randn(N_ITEMS, TEXT_DIM, generator=g)}
    for step in range(BATCHES):
        history = warm[torch.randint(0, len(warm), (6, 7), generator=g)]
        history[:3, :3] = -1
        out[f"history_{step}"] = history
        out[f"target_{step}"] = warm[torch.randint(0, len(warm), (6,), generator=g)]
    history = torch.randint(0, N_ITEMS, (4, 6), generator=g)
    history[1, :2] = -1
    out["eval_history"] = history
    out["eval_users"] = torch.tensor([0, 3, 5, -1])
    return out


def catalogue(inputs: dict[str, torch.Tensor]) -> Catalogue:
    sids = inputs["sids"]
    cold = torch.zeros(N_ITEMS, dtype=torch.bool)
    cold[:N_COLD] = True
    return Catalogue(item_text=[f"item {i}" for i in range(N_ITEMS)], cold=cold,
                     popularity=(~cold).float(), text_emb=inputs["text_emb"], sids=sids,
                     codebook_sizes=(*SIZES, int(sids[:, -1].max()) + 1))


def build(name: str, model_config: dict[str, Any], inputs: dict[str, torch.Tensor]
          ) -> Recommender:
    """The model as `sidrec.checkpoint.load_model` builds it from a stored config."""
    cls = get_model_class(name)
    stored = getattr(cls.Config, "stored", lambda data: data)(model_config)
    return cls(from_dict(cls.Config, stored, name), catalogue(inputs))


def train_steps(model: Recommender, inputs: dict[str, torch.Tensor]) -> list[dict[str, float]]:
    """STEPS Adam steps from the model's weights; the loss terms of each."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    losses = []
    for step in range(STEPS):
        history = inputs[f"history_{step % BATCHES}"]
        terms = model({"history": history, "target": inputs[f"target_{step % BATCHES}"],
                       "user": torch.arange(len(history))})
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append({k: v.item() for k, v in terms.items()})
    return losses


def recommendations(model: Recommender, inputs: dict[str, torch.Tensor]
                    ) -> dict[str, dict[str, list]]:
    """Top 10 (+ a margin of 2) of every inference variant, and of the model's own with
    the history excluded."""
    model.eval()
    variants = {**model.variants(),
                "excl. history": dataclasses.replace(model.inference, exclude_history=True)}
    out = {}
    for label, inference in variants.items():
        items, scores = model.recommend(inputs["eval_history"], inputs["eval_users"], 10,
                                        inference, margin=2)
        out[label] = {"items": items.tolist(), "scores": scores.tolist()}
    return out


def write() -> None:
    from sidrec.checkpoint import save_weights

    torch.set_num_threads(1)
    FOLDER.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs()
    save_file(inputs, str(FOLDER / "inputs.safetensors"))
    for name, settings in SETTINGS.items():
        cls = get_model_class(name)
        torch.manual_seed(0)
        model = cls(dataclasses.replace(cls.Config(), **settings), catalogue(inputs))
        losses = train_steps(model, inputs)
        save_weights(model, FOLDER / f"{name}.safetensors", "legacy", STEPS)
        record = {"model": name, "model_config": to_dict(model.cfg), "losses": losses,
                  "recommendations": recommendations(model, inputs),
                  "parameters": [[key, list(p.shape)] for key, p in model.named_parameters()]}
        (FOLDER / f"{name}.json").write_text(json.dumps(record) + "\n")


def read(name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(the record, the stored weights) of one model."""
    record = json.loads((FOLDER / f"{name}.json").read_text())
    return record, load_file(str(FOLDER / f"{name}.safetensors"))


def read_inputs() -> dict[str, torch.Tensor]:
    return load_file(str(FOLDER / "inputs.safetensors"))


if __name__ == "__main__":
    write()
