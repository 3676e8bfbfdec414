"""Small blocks shared by the models: the one Linear–GELU–Linear `mlp`, `DenseHead`, and
`gather_rows` for trained item tables.

`DenseHead` is dense retrieval over items described by their frozen text embedding, as
UniSRec (Hou et al., KDD 2022) and LIGER's dense head (Yang et al., arXiv 2411.18814,
Sec. 4.1) use it: an item's vector is an MLP projection of its text embedding, the user's
vector a (linear) projection of an encoder state, and the score of item a for user u is
cos(u, e_a) / τ, trained with softmax cross-entropy over the catalogue. Used by Dense,
Dense-text, LIGER and Dense (SID); each model says what the user state is.

Cold items (`cold_mask`): a model that trains only on warm targets may mask cold items out
of the softmax, so they are never a negative either and their text embedding is used only
at inference (LIGER, Dense (SID), and Dense and Dense-text like LIGER's Dense rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sidrec.errors import SidrecError
from sidrec.models.base import init_weights


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`table[index]` ([n, d] rows at an index of any shape) for a table that is trained.
    Indexing's backward (index_put_ with accumulate) adds repeated rows' gradients in a
    different order on each run with several CPU threads, so training was not repeatable;
    F.embedding's backward sums them in a fixed order."""
    return F.embedding(index, table)


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Module:
    """Linear(d_in, hidden) – GELU – Linear(hidden, d_out); hidden 0: one Linear(d_in, d_out).

    An `nn.Sequential` (state-dict keys `0.*` and `2.*`), at PyTorch's default init; the
    owning model applies `init_weights`.
    """
    if hidden <= 0:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class DenseHead(nn.Module):
    """Cosine / τ softmax over items projected from their text embedding.

    item_proj = mlp(d_text, hidden, d_model) on text embeddings [n, d_text];
    user_proj = Linear(d_model, d_model) on the encoder's user state, or the identity
    (`user_proj=False`, Dense). Weights start at `init_weights` (N(0, 0.02), zero biases).

        head = DenseHead(d_text=384, hidden=256, d_model=64, temperature=0.07)
        items = head.project_items(text_emb)                # [n, d] (item_vectors: unit norm)
        loss = head.loss(state, target, items, cold_mask)   # state [B, d]: encoder output
        scores = head.scores(state, items)                  # [B, n] = cos(u, e_a) / τ

    `loss` and `scores` take the encoder's user state: they apply `user_proj` and
    normalise both sides themselves (once), so items may be raw or unit vectors.
    """

    def __init__(
        self, d_text: int, hidden: int, d_model: int, temperature: float, user_proj: bool = True
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise SidrecError(f"temperature={temperature}: must be > 0, e.g. 0.07")
        self.temperature = temperature
        self.item_proj = mlp(d_text, hidden, d_model)
        self.user_proj = nn.Linear(d_model, d_model) if user_proj else nn.Identity()
        self.apply(init_weights)

    def project_items(self, text_emb: torch.Tensor) -> torch.Tensor:
        """Text embeddings [n, d_text] -> item vectors [n, d_model], not normalised (Dense
        adds its ID embedding here and also reads these vectors as its input)."""
        return self.item_proj(text_emb)

    def item_vectors(self, text_emb: torch.Tensor) -> torch.Tensor:
        """Text embeddings [n, d_text] -> unit item vectors e_a [n, d_model]."""
        return F.normalize(self.project_items(text_emb), dim=-1)

    def user_vectors(self, state: torch.Tensor) -> torch.Tensor:
        """Encoder user states [B, d_model] -> unit user vectors u [B, d_model]."""
        return F.normalize(self.user_proj(state), dim=-1)

    def scores(self, state: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits cos(u, e_a) / τ [B, n] of user states [B, d] (u = their unit projection)
        against items [n, d] (raw or unit; normalised here). Ranking = cosine ranking."""
        cos = self.user_vectors(state) @ F.normalize(items, dim=-1).T  # (B, n)
        return cos / self.temperature

    def loss(
        self,
        state: torch.Tensor,
        target: torch.Tensor,
        items: torch.Tensor,
        cold_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Softmax cross-entropy of targets [B] over `scores(state, items)` [B, n]; items
        where cold_mask [n] bool is True are left out of the softmax (never a target)."""
        return info_nce(self.user_proj(state), items, target, self.temperature, cold_mask)


def info_nce(queries: torch.Tensor, keys: torch.Tensor, target: torch.Tensor,
             temperature: float, excluded: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE: softmax cross-entropy over cos(q, k) / τ [N, n] of queries [N, d] against
    keys [n, d], row i's positive being keys[target[i]]; `excluded` ([n] or [N, n] bool,
    never a row's target) are no negatives. Dense and LIGER score the whole catalogue
    (cold items excluded), COBRA the batch's items (the target's own sequence excluded)."""
    logits = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T / temperature
    if excluded is not None:
        logits = logits.masked_fill(excluded, float("-inf"))
    return F.cross_entropy(logits, target)
