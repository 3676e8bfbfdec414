"""Dense retrieval baseline, UniSRec-style (the LIGER paper's "Dense" row).

Hou et al., "Towards Universal Sequence Representation Learning for Recommender
Systems" (UniSRec, KDD 2022) and Yang et al., LIGER (arXiv 2411.18814) §4, "Dense".
An item's vector is the MLP projection of its frozen text embedding
(`Catalogue.text_emb`, from `sidrec embed`) plus, for `dense`, a learned item-ID
embedding (`heads.DenseHead`, shared with LIGER). The history's item vectors +
positions go through the same causal stack as SASRec (`transformer.CausalEncoder`); the
hidden state at a position is the user vector, and an item's score is
cos(user, item) / tau. Loss: softmax cross-entropy over the warm items at every history
position (as SASRec; see `sidrec.train`). Cold items (`Catalogue.cold`, seen only in
evaluation) are masked out of the softmax, as LIGER's dense head and the official LIGER
code's Dense rows do, so the LIGER-vs-Dense cold comparison is like for like: a cold item
is never a negative, its text reaches training only through the shared projection.

Two registered names, so that the method is explicit in configs and tables:
- `dense`: ID embedding + projected text (UniSRec's transductive setting). Cold items
  have an untrained ID embedding, and items added after training have none, so it
  cannot rank new items.
- `dense-text`: projected text only (UniSRec's inductive setting). Every item, including
  cold and newly added ones, is scored from its text (`supports_new_items = True`).

NOTE deviations: a 2-layer MLP replaces UniSRec's mixture-of-experts whitening adaptor,
and there is no pre-training stage (trained from scratch on the target data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from sidrec.errors import SidrecError
from sidrec.models import register
from sidrec.models.base import Batch, Catalogue, Recommender, init_weights, item_padding
from sidrec.models.heads import DenseHead, gather_rows
from sidrec.models.sasrec import causal_encoder, next_items


@dataclass(frozen=True)
class DenseConfig:
    d_model: int = 64  # hidden size of the item vectors and the transformer
    n_layers: int = 2  # transformer blocks (UniSRec: 2)
    n_heads: int = 2  # attention heads (UniSRec: 2)
    d_ff: int = 256  # feed-forward width
    dropout: float = 0.2
    max_len: int = 50  # position table size; a longer history keeps its last max_len items
    text_hidden: int = 256  # hidden width of the text-projection MLP (0: a single linear map)
    temperature: float = 0.07  # tau of the cosine logits (UniSRec, LIGER: 0.07)


@register
class Dense(Recommender):
    name = "dense"
    Config = DenseConfig
    use_id: ClassVar[bool] = True
    needs_text: ClassVar[bool] = True
    trains_every_position = True

    def __init__(self, cfg: DenseConfig, catalogue: Catalogue) -> None:
        super().__init__(cfg, catalogue)
        if catalogue.text_emb is None:
            raise SidrecError(
                f"model {self.name!r} needs item text embeddings (embeddings.npy); "
                "run `sidrec embed RUN_DIR` first"
            )
        # Dense's user vector is the encoder state itself (no user projection), as UniSRec.
        self.head = DenseHead(
            catalogue.text_emb.shape[1], cfg.text_hidden, cfg.d_model, cfg.temperature,
            user_proj=False,
        )
        self.item_emb = nn.Embedding(catalogue.n_items, cfg.d_model) if self.use_id else None
        self.in_norm = nn.LayerNorm(cfg.d_model)
        self.encoder = causal_encoder(cfg)
        self.apply(init_weights)
        # Frozen inputs, not weights: they follow .to(device) but are not saved.
        self.register_buffer("text_emb", catalogue.text_emb.float().clone(), persistent=False)
        self.register_buffer("cold", catalogue.cold.bool().clone(), persistent=False)

    def item_vectors(self) -> torch.Tensor:
        """[n_items, d]: projected text (+ ID embedding for `dense`), not normalised."""
        v = self.head.project_items(self.text_emb)  # [n_items, d]
        if self.item_emb is not None:
            v = v + self.item_emb.weight
        return v

    def hidden(
        self, history: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(user vectors at every position [B, L', d], padding mask [B, L'])."""
        ids, pad = item_padding(history[:, -self.cfg.max_len :])  # [B, L'] (0 = padding)
        table = torch.cat([items.new_zeros(1, items.shape[1]), items])  # [n_items + 1, d]
        x = self.in_norm(gather_rows(table, ids))  # [B, L', d]
        return self.encoder(x, pad), pad

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        history = batch["history"][:, -self.cfg.max_len :]  # [B, L]
        items = self.item_vectors()  # [n_items, d]
        h, pad = self.hidden(history, items)  # [B, L, d]
        real = ~pad
        user = self.head.user_vectors(h[real])  # [N, d]
        y = next_items(history, batch["target"])[real]  # [N], warm items only
        # Cold items are left out of the softmax, as LIGER's dense head (and the official
        # LIGER code's Dense rows): they are never negatives, so they are not pushed down.
        loss = self.head.loss(user, y, items, self.cold)
        return {"loss": loss, "loss_dense": loss.detach()}

    @torch.no_grad()
    def score(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        items = self.item_vectors()  # [n_items, d]
        h, _ = self.hidden(history, items)  # [B, L, d]
        return self.head.scores(h[:, -1], items)  # [B, n_items] = cos / tau

    def items_added(self, catalogue: Catalogue, first_new: int) -> None:
        super().items_added(catalogue, first_new)  # refuses growth unless supports_new_items
        if catalogue.text_emb is None or catalogue.text_emb.shape[1] != self.text_emb.shape[1]:
            raise SidrecError(
                f"model {self.name!r}: the new catalogue's text embeddings are missing or of "
                "another dimension; embed new items with the encoder used for training"
            )
        self.text_emb = catalogue.text_emb.float().to(self.text_emb.device)
        self.cold = catalogue.cold.bool().to(self.cold.device)


@register
class DenseText(Dense):
    """`dense` without item-ID embeddings: every item is scored from its text alone."""

    name = "dense-text"
    use_id = False
    supports_new_items = True
