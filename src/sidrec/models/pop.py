"""Pop: recommend the most popular training items to everyone.

Score of item i = its number of occurrences in the training sequences
(`Catalogue.popularity`), the same for every user; cold items score 0. Nothing is
learned, so the trainer saves it without a training loop. It is the floor every model
must clear and a check on the evaluator (a leak of the target into the history or a
tie-breaking bug shows up as a Pop score that is too good).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from sidrec.models import register
from sidrec.models.base import (
    Catalogue,
    Recommender,
    excluded_items,
    mask_history,
    top_scored,
)


@dataclass(frozen=True)
class PopConfig:
    """Pop has no settings; the dataclass keeps the config contract uniform."""


@register
class Pop(Recommender):
    name = "pop"
    Config = PopConfig
    trainable = False
    supports_new_items = True  # a new item simply has popularity 0

    def __init__(self, cfg: PopConfig, catalogue: Catalogue) -> None:
        super().__init__(cfg, catalogue)
        # Non-persistent buffers: they follow .to(device) but come from the catalogue,
        # not from the weights file.
        self.register_buffer("popularity", catalogue.popularity.float().clone(), persistent=False)
        order, listed = self._listing(self.popularity)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("listed", listed, persistent=False)

    @staticmethod
    def _listing(popularity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(items in listing order [n_items], each item's key for that order [n_items]).

        The order is a stable descending sort: equal counts are listed by item id, the same
        every run. The key is minus an item's position in it (float64: exact up to 2**53),
        so a top-k over keys lists equal counts the same way whatever k and the margin are.
        """
        order = torch.sort(popularity, descending=True, stable=True).indices
        listed = torch.empty(len(order), dtype=torch.float64, device=order.device)
        listed[order] = -torch.arange(len(order), dtype=listed.dtype, device=order.device)
        return order, listed

    @torch.no_grad()
    def score(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        return self.popularity.expand(history.shape[0], -1)  # [B, n_items]

    @torch.no_grad()
    def recommend(
        self, history: torch.Tensor, users: torch.Tensor, k: int, inference: Any = None,
        margin: int = 0, seen: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = min(k + margin, self.order.numel())
        excluded = excluded_items(self._inference(inference), history, seen)
        if excluded is None:
            items = self.order[:n].expand(history.shape[0], -1)  # [B, n]
            return items, self.popularity[items]
        # by the listing keys, not the (tied) counts
        listed = self.listed.expand(len(history), -1)
        items, _ = top_scored(mask_history(listed, excluded.to(listed.device)), n)
        return items, self.popularity[items.clamp_min(0)].masked_fill(items < 0, -math.inf)

    def items_added(self, catalogue: Catalogue, first_new: int) -> None:
        # New items have no training occurrences (popularity 0), so Pop can always list them.
        super().items_added(catalogue, first_new)
        self.popularity = catalogue.popularity.float().to(self.order.device)
        self.order, self.listed = self._listing(self.popularity)
