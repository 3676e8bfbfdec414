"""COBRA's ablations (the paper's Table 4), each a separately *trained* model that holds
one of COBRA's two parts (models/cobra_parts.py):

- `cobra-no-dense` (`SparseIDs` alone, the full SID): no dense token and no dense loss;
  the item is its full SID, decoded by beam search: the decoder-only TIGER control, which
  shows what the cascade adds over decoder-only training;
- `cobra-no-dense-coarse` (`SparseIDs` alone, `sparse_levels` as COBRA's): the same at
  COBRA's own sparse-ID granularity: the beam ranks sparse IDs and every item of one
  gets its beam's score (a tied block, scored by its expected rank). Beside
  `cobra-no-dense` it tells what the cascade adds apart from the coarser ID;
- `cobra-no-sparse` (`DenseVectors` alone): no sparse tokens; v̂ of the next item from the
  last dense token, retrieved from all items by nearest neighbours.

Each keeps COBRA's config with its own `tokens`, which names its part in config.json.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sidrec.models import register
from sidrec.models.base import Catalogue
from sidrec.models.cobra import CobraBase, CobraConfig, Tokens
from sidrec.models.cobra_decode import CobraInference, groups_by_beam, nearest_next
from sidrec.models.cobra_parts import DenseVectors, SparseIDs


@dataclass(frozen=True)
class CobraNoDenseConfig(CobraConfig):
    tokens: Tokens = "sparse"


@register
class CobraNoDense(CobraBase):
    """COBRA w/o dense (trained): full SIDs only, no item encoder, no dense loss."""

    name = "cobra-no-dense"
    Config = CobraNoDenseConfig
    needs_sids = True

    def __init__(self, cfg: CobraConfig, catalogue: Catalogue) -> None:
        super().__init__(cfg, catalogue,
                         SparseIDs(cfg.d_model, catalogue, cfg.sparse_levels, whole_sid=True,
                                   model=self.name), None)

    def decode(self, history: torch.Tensor, n: int, cfg: CobraInference,
               excluded: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The beam over sparse IDs, a tied block per ID (`cobra_decode.groups_by_beam`)."""
        return groups_by_beam(self, history, n, cfg, excluded)


@dataclass(frozen=True)
class CobraNoDenseCoarseConfig(CobraConfig):
    tokens: Tokens = "sparse"
    sparse_levels: int = 2  # COBRA's cpu preset (configs/cobra.yaml)


@register
class CobraNoDenseCoarse(CobraNoDense):
    """COBRA w/o dense (trained) at COBRA's sparse-ID granularity: whole groups, tied."""

    name = "cobra-no-dense-coarse"
    Config = CobraNoDenseCoarseConfig


@dataclass(frozen=True)
class CobraNoSparseConfig(CobraConfig):
    tokens: Tokens = "dense"


@register
class CobraNoSparse(CobraBase):
    """COBRA w/o sparse (trained): dense tokens only, nearest-neighbour retrieval."""

    name = "cobra-no-sparse"
    Config = CobraNoSparseConfig
    needs_text = True

    def __init__(self, cfg: CobraConfig, catalogue: Catalogue) -> None:
        super().__init__(cfg, catalogue, None, DenseVectors(cfg, catalogue))

    def decode(self, history: torch.Tensor, n: int, cfg: CobraInference,
               excluded: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The items nearest to v̂ of the next item (`cobra_decode.nearest_next`)."""
        return nearest_next(self, history, n, excluded)
