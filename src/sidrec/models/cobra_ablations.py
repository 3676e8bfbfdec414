"""COBRA's ablations (the paper's Table 4), each a separately *trained* model set by
`CobraConfig.tokens`:

- `cobra-no-dense` (`tokens: sparse`): no dense token and no dense loss; the item is its
  full SID, decoded by beam search: the decoder-only TIGER control, which shows what the
  cascade adds over decoder-only training;
- `cobra-no-dense-coarse` (`tokens: sparse`, `sparse_levels` as COBRA's): the same at
  COBRA's own sparse-ID granularity: the beam ranks sparse IDs and every item of one
  gets its beam's score (a tied block, scored by its expected rank). Beside
  `cobra-no-dense` it tells what the cascade adds apart from the coarser ID;
- `cobra-no-sparse` (`tokens: dense`): no sparse tokens; v̂ of the next item from the
  last dense token, retrieved from all items by nearest neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidrec.models import register
from sidrec.models.cobra import Cobra, CobraConfig, Tokens


@dataclass(frozen=True)
class CobraNoDenseConfig(CobraConfig):
    tokens: Tokens = "sparse"


@register
class CobraNoDense(Cobra):
    """COBRA w/o dense (trained): full SIDs only, no item encoder, no dense loss."""

    name = "cobra-no-dense"
    Config = CobraNoDenseConfig
    needs_text = False


@dataclass(frozen=True)
class CobraNoDenseCoarseConfig(CobraConfig):
    tokens: Tokens = "sparse"
    sparse_levels: int = 2  # COBRA's cpu preset (configs/cobra.yaml)


@register
class CobraNoDenseCoarse(Cobra):
    """COBRA w/o dense (trained) at COBRA's sparse-ID granularity: whole groups, tied."""

    name = "cobra-no-dense-coarse"
    Config = CobraNoDenseCoarseConfig
    needs_text = False


@dataclass(frozen=True)
class CobraNoSparseConfig(CobraConfig):
    tokens: Tokens = "dense"


@register
class CobraNoSparse(Cobra):
    """COBRA w/o sparse (trained): dense tokens only, nearest-neighbour retrieval."""

    name = "cobra-no-sparse"
    Config = CobraNoSparseConfig
    needs_sids = False
