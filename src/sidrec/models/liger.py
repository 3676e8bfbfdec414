"""LIGER: TIGER's generative retrieval fused with dense retrieval, so cold items count.

Yang et al., "Unifying Generative and Dense Retrieval for Sequential Recommendation"
(arXiv 2411.18814), Sec. 4.

Input (Sec. 4.1): each history item contributes its n_codes SID tokens, and every token of
the item also carries an MLP projection of the item's text embedding (the same vector for
all its codes), plus the item-position and code-level position embeddings.

Two heads, trained jointly (`gen_weight : dense_weight`, default 1 : 1):
- generative: next-token cross-entropy on the target SID, exactly as TIGER (`loss_gen`);
- dense: the encoder output at the last history position, projected, against every warm
  item's projected text embedding; logits cos / τ; softmax CE on the target
  (`loss_dense`). Cold items are masked out of this softmax: they are never a training
  target and never a negative, so their text embedding is used only at inference.

Inference (`mode`):
- "generative": TIGER's beam search;
- "dense": cosine against all items, warm and cold;
- "hybrid" (the paper's method, Sec. 4.2): C = beam top-K ∪ all cold items, ranked by the
  dense score cos(u, e_a); items outside C are not returned. K = `hybrid_k` (the paper: 20,
  also 40-100). A larger K lets fewer cold items, never pushed down as negatives in
  training, crowd out warm ones: more in-set hits, fewer cold ones.

Dense (SID), the LIGER paper's diagnostic, is `dense-sid`: this input representation with
the dense loss only and dense scoring (no decoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from sidrec.errors import SidrecError
from sidrec.models import register
from sidrec.models.base import Batch, Catalogue, init_weights
from sidrec.models.tiger import TIGER, TIGERConfig, _eval_mode

Mode = Literal["hybrid", "generative", "dense"]


@dataclass(frozen=True)
class LIGERConfig(TIGERConfig):
    text_hidden: int = 256  # MLP width of the text projections
    temperature: float = 0.07  # τ of the dense softmax
    gen_weight: float = 1.0
    dense_weight: float = 1.0
    mode: Mode = "hybrid"  # default inference mode
    hybrid_k: int = 20  # K beam candidates joined with the cold items


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


def liger_rerank(
    beam_items: torch.Tensor, cold: torch.Tensor, dense_scores: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """LIGER's inference rule: rank C = beam top-K ∪ cold items by the dense score.

    beam_items [B, K] (-1 = no item), cold [n_items] bool, dense_scores [B, n_items]
    (cos(u, e_a) for every item a) -> top-k (items [B, k], scores [B, k]).
    """
    in_c = cold[None, :].expand_as(dense_scores).clone()  # (B, n_items)
    rows = torch.arange(len(beam_items), device=beam_items.device)[:, None]
    in_c[rows.expand_as(beam_items)[beam_items >= 0], beam_items[beam_items >= 0]] = True
    scores = dense_scores.masked_fill(~in_c, float("-inf"))
    top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    return top.indices.masked_fill(~torch.isfinite(top.values), -1), top.values


@register
class LIGER(TIGER):
    name: ClassVar[str] = "liger"
    Config: ClassVar[type] = LIGERConfig
    supports_new_items: ClassVar[bool] = True
    needs_text: ClassVar[bool] = True

    def __init__(self, cfg: LIGERConfig, catalogue: Catalogue) -> None:
        if catalogue.text_emb is None:
            raise SidrecError(f"model {self.name!r} needs item text embeddings; run "
                              "`sidrec embed` for this run directory first")
        super().__init__(cfg, catalogue)
        dim = catalogue.text_emb.shape[1]
        self.text_in = _mlp(dim, cfg.text_hidden, cfg.d_model)  # input projection
        self.text_out = _mlp(dim, cfg.text_hidden, cfg.d_model)  # dense-target projection
        self.level_emb = nn.Embedding(self.n_codes, cfg.d_model)  # code-level position
        self.user_proj = nn.Linear(cfg.d_model, cfg.d_model)
        # TIGER's init ran before these existed. At PyTorch's defaults the level embedding
        # is N(0, 1), 50x the SID-token embeddings, and drowns them (ML-100k valid NDCG@10
        # 0.019 vs 0.032).
        for module in (self.text_in, self.text_out, self.level_emb, self.user_proj):
            module.apply(init_weights)
        self.register_buffer("text_emb", catalogue.text_emb.float(), persistent=False)
        self.register_buffer("cold", catalogue.cold.bool(), persistent=False)

    def set_catalogue(self, catalogue: Catalogue) -> None:
        super().set_catalogue(catalogue)
        self.text_emb = catalogue.text_emb.float().to(self.codes.device)
        self.cold = catalogue.cold.bool().to(self.codes.device)

    def input_extras(self, history: torch.Tensor) -> torch.Tensor:
        """Text projection + code-level position per history token: [B, L'*n_codes, d]."""
        text = self.text_in(self.text_emb[history.clamp_min(0)])  # (B, L', d)
        x = text[:, :, None] + self.level_emb.weight  # (B, L', n_codes, d)
        return x.flatten(1, 2)

    # -- dense head ------------------------------------------------------------------

    def user_vector(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        memory, _ = self.encode(history, users)
        return F.normalize(self.user_proj(memory[:, -1]), dim=-1)  # (B, d) last position

    def item_vectors(self) -> torch.Tensor:
        return F.normalize(self.text_out(self.text_emb), dim=-1)  # (n_items, d)

    def dense_loss(self, user: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = user @ self.item_vectors().T / self.cfg.temperature  # (B, n_items)
        return F.cross_entropy(logits.masked_fill(self.cold, float("-inf")), target)

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        memory, pad = self.encode(batch["history"], batch["user"])
        user = F.normalize(self.user_proj(memory[:, -1]), dim=-1)
        loss_dense = self.dense_loss(user, batch["target"])
        out = {"loss_dense": loss_dense}
        total = self.cfg.dense_weight * loss_dense
        if self.cfg.gen_weight > 0:
            loss_gen = self.generative_loss(batch, memory, pad)
            out["loss_gen"] = loss_gen
            total = total + self.cfg.gen_weight * loss_gen
        out["loss"] = total
        return out

    # -- inference -------------------------------------------------------------------

    @torch.no_grad()
    def recommend(
        self, history: torch.Tensor, users: torch.Tensor, k: int, mode: Mode | None = None,
        hybrid_k: int | None = None, **options: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mode = mode or self.cfg.mode
        if mode == "generative":
            return super().recommend(history, users, k, **options)
        with _eval_mode(self):
            dense = self.user_vector(history, users) @ self.item_vectors().T  # (B, n_items)
        if mode == "dense":
            top = torch.topk(dense, min(k, dense.shape[1]), dim=1)
            return top.indices, top.values
        if mode != "hybrid":
            raise SidrecError(f"liger: mode must be hybrid, generative or dense, not {mode!r}")
        beam_k = hybrid_k or self.cfg.hybrid_k
        beam_items, _ = super().recommend(history, users, beam_k, **options)
        return liger_rerank(beam_items, self.cold, dense, k)

    def variants(self) -> dict[str, dict[str, Any]]:
        """Hybrid at the configured K (trained models are selected on it) and at the
        paper's K = 20, then the two single-head modes."""
        ks = dict.fromkeys((self.cfg.hybrid_k, 20))
        hybrid = {f"hybrid K={k}": {"mode": "hybrid", "hybrid_k": k} for k in ks}
        return {**hybrid, "generative": {"mode": "generative"}, "dense": {"mode": "dense"}}


@dataclass(frozen=True)
class DenseSIDConfig(LIGERConfig):
    gen_weight: float = 0.0
    mode: Mode = "dense"
    n_decoder_layers: int = 0


@register
class DenseSID(LIGER):
    """Dense (SID): LIGER's SID + text input, dense loss only, cosine scoring."""

    name: ClassVar[str] = "dense-sid"
    Config: ClassVar[type] = DenseSIDConfig

    def __init__(self, cfg: DenseSIDConfig, catalogue: Catalogue) -> None:
        if cfg.gen_weight != 0 or cfg.mode != "dense":
            raise SidrecError("dense-sid trains the dense head only: keep gen_weight=0, "
                              "mode=dense (for both heads use model=liger)")
        super().__init__(cfg, catalogue)

    def variants(self) -> dict[str, dict[str, Any]]:
        return {"": {"mode": "dense"}}
