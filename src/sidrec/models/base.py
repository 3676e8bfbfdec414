"""One interface for every model (cornac's `score`/`rank`, RecBole's `calculate_loss`).

A model is built from its config dataclass and a `Catalogue` (what it may know about
items). Training calls `loss(batch)`; inference calls `recommend(history, users, k)`.
The trainer, the evaluator, the benchmark and the serving API only ever use this
surface, so none of them branches on a model's name.

Batches are dicts of tensors:
    history  [B, L] int64, left-padded with -1 (most recent item last)
    target   [B]    int64 (training / evaluation target)
    user     [B]    int64 dense user id
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


@dataclass
class Catalogue:
    """Item side information. It grows when items are added after training."""

    n_users: int
    item_text: list[str]
    cold: torch.Tensor  # [n_items] bool: not seen in training
    popularity: torch.Tensor  # [n_items] float, training counts (0 for cold / new items)
    text_emb: torch.Tensor | None = None  # [n_items, d] frozen sentence embeddings
    sids: torch.Tensor | None = None  # [n_items, n_codes] int64, unique rows
    codebook_sizes: tuple[int, ...] = ()  # vocabulary size of each SID position
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_text)


class Recommender(nn.Module):
    """Base class. Subclasses set `name` and `Config`, implement `loss` and `recommend`."""

    name: ClassVar[str]
    Config: ClassVar[type]
    needs_sids: ClassVar[bool] = False  # True: the run needs `sids.npy` (tokenize stage)
    trainable: ClassVar[bool] = True  # False: nothing to fit by gradient descent (Pop)
    supports_new_items: ClassVar[bool] = False  # can rank items added after training
    needs_text: ClassVar[bool] = False  # True: the run needs `embeddings.npy` (embed stage)
    # True: `loss` supervises every history position, so the trainer feeds one window per
    # `max_history` items instead of every prefix (see `sidrec.train.window_examples`).
    trains_every_position: ClassVar[bool] = False

    @property
    def display_name(self) -> str:
        """The row label in tables; models whose training choice changes what a row means
        (SASRec's loss) say so here."""
        return self.name

    def __init__(self, cfg: Any, catalogue: Catalogue) -> None:
        super().__init__()
        self.cfg = cfg
        self.catalogue = catalogue

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Loss terms for one batch; key "loss" is the total that is minimised."""
        raise NotImplementedError

    @torch.no_grad()
    def recommend(
        self, history: torch.Tensor, users: torch.Tensor, k: int, **options: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k items per row: (items [B, k] int64, scores [B, k] float), best first.

        Rows may contain -1 items (with score -inf) when a model returns fewer than k.
        """
        scores = self.score(history, users, **options)
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        return top.indices, top.values

    @torch.no_grad()
    def score(self, history: torch.Tensor, users: torch.Tensor, **options: Any) -> torch.Tensor:
        """Scores of every catalogue item [B, n_items], for models that have them."""
        raise NotImplementedError(f"{self.name} does not produce a full score matrix")

    def variants(self) -> dict[str, dict[str, Any]]:
        """Inference modes the evaluator reports as separate rows: label -> recommend kwargs."""
        return {"": {}}

    def set_catalogue(self, catalogue: Catalogue) -> None:
        """Swap in a grown catalogue (items added after training)."""
        if catalogue.n_items != self.catalogue.n_items and not self.supports_new_items:
            from sidrec.errors import SidrecError

            raise SidrecError(
                f"model {self.name!r} cannot rank items added after training; "
                "use a text- or SID-based model (dense-text, liger, cobra)"
            )
        self.catalogue = catalogue


def item_padding(history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids shifted by +1 so that 0 is padding [B, L], padding mask [B, L] True where padded)."""
    pad = history < 0
    return (history + 1).clamp_min(0), pad


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) weights, zero biases, zero padding rows (as nanoGPT / RecBole), for every
    model: at PyTorch's N(0, 1) embedding default, embeddings drown each other."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
