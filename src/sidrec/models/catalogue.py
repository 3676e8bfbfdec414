"""What a model may know about items: the arrays it is handed, and their checked reads.

A model never reads the run directory: `sidrec.catalogue.build` loads the run's artifacts
into a `Catalogue`, and the live catalogue (`sidrec.catalogue.LiveCatalogue`) grows it
when items are added after training, telling the model through
`Recommender.items_added`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sidrec.errors import SidrecError


@dataclass
class Catalogue:
    """Item side information. It grows when items are added after training."""

    item_text: list[str]
    cold: torch.Tensor  # [n_items] bool: not seen in training
    popularity: torch.Tensor  # [n_items] float, training counts (0 for cold / new items)
    text_emb: torch.Tensor | None = None  # [n_items, d] frozen sentence embeddings
    sids: torch.Tensor | None = None  # [n_items, n_codes] int64, unique rows
    codebook_sizes: tuple[int, ...] = ()  # vocabulary size of each SID position
    # Spare rows behind the tables, shared by the catalogues grown from this one, so that
    # adding m items copies m rows, not the catalogue (`sidrec.catalogue.rows.grow`).
    reserve: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_items(self) -> int:
        return len(self.item_text)


def catalogue_sids(catalogue: Catalogue, model: str) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The catalogue's SIDs [n_items, n_codes] int64 and codebook sizes, checked."""
    if catalogue.sids is None or not catalogue.codebook_sizes:
        raise SidrecError(
            f"model {model!r} reads semantic IDs but the catalogue has none; run "
            "`sidrec tokenize` for this run directory first"
        )
    sids = torch.as_tensor(catalogue.sids, dtype=torch.int64)
    if sids.shape[0] != catalogue.n_items:
        raise SidrecError(
            f"sids.npy has {sids.shape[0]} rows for {catalogue.n_items} items; re-run "
            "`sidrec tokenize` for this run directory"
        )
    return sids, tuple(int(v) for v in catalogue.codebook_sizes)


def catalogue_text(catalogue: Catalogue, model: str) -> torch.Tensor:
    """The catalogue's frozen text embeddings [n_items, d_text] float32."""
    if catalogue.text_emb is None:
        raise SidrecError(f"model {model!r} needs item text embeddings; run `sidrec embed` "
                          "for this run directory first")
    return catalogue.text_emb.float()
