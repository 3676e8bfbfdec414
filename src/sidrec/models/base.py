"""One interface for every model (cornac's `score`/`rank`, RecBole's `calculate_loss`).

A model is built from its config dataclass (what is trained: sizes, loss weights) and a
`Catalogue` (what it may know about items). Training calls `forward(batch)`, which returns
the named loss terms, so `torch.compile` and `DistributedDataParallel` can wrap a model
as it is. Inference calls `recommend(history, users, k, inference)`, where `inference` is
the model's typed `Inference` config (beam width, decoding mode, ...): it is not part of
what was trained, so it can change on a trained model without retraining. The trainer,
the evaluator, the benchmark and the serving API only ever use this surface, so none of
them branches on a model's name.

Batches are dicts of tensors:
    history  [B, L] int64, left-padded with -1 (most recent item last)
    target   [B]    int64 (training / evaluation target)
    user     [B]    int64 dense user id

`recommend(..., seen=)` takes the items to leave out under `exclude_history`: [B, S]
int64, left-padded with -1, as long as the longest row. The evaluator passes each user's
whole history there (train part, plus the valid item for the test split) and the API the
whole history it was given, since the model's input window (`max_history`) is only the
most recent part of it: masking the window alone leaves older seen items in the list.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from sidrec.errors import SidrecError
from sidrec.models.catalogue import Catalogue

Batch = dict[str, torch.Tensor]


# Item ids in a recommendation: -1 = no item (a dead beam, fewer candidates than k),
# INVALID_ITEM = a generated SID that is no catalogue item (unconstrained decoding).
INVALID_ITEM = -2


@dataclass(frozen=True)
class InferenceConfig:
    """What every model's inference config has; each model's `Inference` extends it."""

    # Never recommend an item the user has seen: `recommend`'s `seen` (the whole history),
    # else the input window. The headline protocol does not mask (TIGER's); beam search
    # masks inside the search, so no beam is spent on a seen item.
    # (keyword-only, so a subclass's own fields keep their positions)
    exclude_history: bool = field(default=False, kw_only=True)


@dataclass(frozen=True)
class NoInference(InferenceConfig):
    """The inference config of models with nothing else to choose at inference time."""


class Recommender(nn.Module):
    """Base class. Subclasses set `name`, `Config` and `Inference`, implement `forward` and
    `recommend` (or `score`)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    Inference: ClassVar[type] = NoInference  # frozen dataclass of inference settings
    needs_sids: ClassVar[bool] = False  # True: the run needs `sids.npy` (tokenize stage)
    trainable: ClassVar[bool] = True  # False: nothing to fit by gradient descent (Pop)
    supports_new_items: ClassVar[bool] = False  # can rank items added after training
    needs_text: ClassVar[bool] = False  # True: the run needs `embeddings.npy` (embed stage)
    # True: `loss` supervises every history position, so the trainer feeds one window per
    # `max_history` items instead of every prefix (see `sidrec.epoch.window_examples`).
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
        self.inference = self.Inference()  # the default; the loader sets the stored one

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Loss terms for one batch: "loss" is the total that is minimised, the others
        (`loss_gen`, `loss_dense`, `loss_sparse`, `loss_ce`, ...) are logged."""
        raise NotImplementedError

    def check_finite(self) -> None:
        """A SidrecError when a weight holds NaN or inf (a diverged or damaged model),
        which would otherwise rank by NaN or drop every beam as empty."""
        bad = [n for n, p in self.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise SidrecError(f"{self.name}: {len(bad)} weight tensor(s) hold NaN or inf "
                              f"({bad[0]}, ...); retrain it (a lower lr if training diverged)")

    def inference_with(self, overrides: dict[str, Any] | None = None) -> Any:
        """The model's inference config with `overrides` applied; an unknown, mistyped or
        out-of-range setting (beam=0) is the same SidrecError for every model."""
        from sidrec.config import check_ranges, replace

        if not overrides:
            return self.inference
        inference = replace(self.inference, overrides, f"{self.name} inference")
        check_ranges(inference, f"{self.name} inference")
        return inference

    def _inference(self, inference: Any) -> Any:
        """`inference` (None: the model's own) checked to be this model's config type."""
        if inference is None:
            return self.inference
        if isinstance(inference, dict):
            return self.inference_with(inference)
        if not isinstance(inference, self.Inference):
            raise SidrecError(
                f"{self.name}: inference must be a {self.Inference.__name__} (or a dict of "
                f"its settings), got {type(inference).__name__}"
            )
        return inference

    @torch.no_grad()
    def recommend(
        self, history: torch.Tensor, users: torch.Tensor, k: int, inference: Any = None,
        margin: int = 0, seen: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k items per row: (items [B, <= k + margin] int64, scores, same shape), best
        first.

        Rows may contain -1 items (with score -inf) when a model returns fewer than k.
        `margin` asks for the items that follow the k-th as well, so that an evaluator can
        see ties that cross the k-th item. It never changes the first k, except which of
        several equal scores come first (torch.topk's choice); a beam keeps its width and
        the margin is what else that beam holds. `seen` [B, S]: the items that
        `exclude_history` leaves out (default: `history`).
        """
        inference = self._inference(inference)
        scores = self.score(history, users)
        excluded = excluded_items(inference, history, seen)
        if excluded is not None:
            scores = mask_history(scores, excluded.to(scores.device))
        return top_scored(scores, k + margin)

    @torch.no_grad()
    def score(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Scores of every catalogue item [B, n_items], for models that have them."""
        raise NotImplementedError(f"{self.name} does not produce a full score matrix")

    def diagnostics(self) -> dict[str, Any]:
        """Facts about the trained model that its results should be read with (e.g. COBRA's
        sparse-ID group sizes); the evaluator records them beside the metrics."""
        return {}

    def variants(self) -> dict[str, Any]:
        """Inference configs the evaluator reports as separate rows: label -> config.

        The first is the model's own (`self.inference`); training selects epochs on it.
        """
        return {"": self.inference}

    def sharing_variants(self) -> contextlib.AbstractContextManager:
        """A context in which the evaluator runs every variant over the same batches: a
        model may keep the work its variants share until it closes (LIGER: one beam for
        all its K rows). Default: nothing is kept."""
        return contextlib.nullcontext()

    def items_added(self, catalogue: Catalogue, first_new: int) -> None:
        """The catalogue grew (`sidrec.catalogue.LiveCatalogue` calls this once per add):
        `catalogue` is this model's with items `first_new`.. appended after training and
        the rows before them unchanged, so a table built from those rows is extended, not
        rebuilt. first_new = 0 (`set_catalogue`): a catalogue of its own, every table
        rebuilt. This default takes the catalogue, refusing a grown one for a model that
        ranks only the items it was trained on; a model whose tables follow the catalogue
        calls it first, then updates them."""
        if catalogue.n_items != self.catalogue.n_items and not self.supports_new_items:
            raise SidrecError(
                f"model {self.name!r} cannot rank items added after training; "
                "use a text- or SID-based model (dense-text, liger, cobra)"
            )
        self.catalogue = catalogue

    def set_catalogue(self, catalogue: Catalogue) -> None:
        """Swap in another catalogue whole (a rolled-back add): nothing built from the old
        one is kept."""
        self.items_added(catalogue, 0)


def excluded_items(inference: InferenceConfig, history: torch.Tensor,
                   seen: torch.Tensor | None) -> torch.Tensor | None:
    """The items [B, S] a recommendation must leave out: None unless
    `inference.exclude_history`; then `seen` when given, else the history window."""
    if not inference.exclude_history:
        return None
    return history if seen is None else seen


def mask_history(scores: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """scores [B, n_items] with the items of each row's history [B, L] (-1 = padding) set
    to -inf."""
    rows = torch.arange(len(history), device=history.device)[:, None].expand_as(history)
    real = history >= 0
    return scores.index_put((rows[real], history[real]), scores.new_tensor(float("-inf")))


def top_scored(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of scores [B, n_items] as (items, scores); -inf scores are item -1."""
    top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    return top.indices.masked_fill(top.values == float("-inf"), -1), top.values


def item_padding(history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids shifted by +1 so that 0 is padding [B, L], padding mask [B, L] True where padded)."""
    pad = history < 0
    return (history + 1).clamp_min(0), pad


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Inference without dropout; the caller's train/eval state is restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


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
