"""SASRec: self-attentive sequential recommendation over item-ID embeddings.

Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018 (reference code:
github.com/kang205/SASRec). Item embedding + learned position embedding ->
dropout -> causal self-attention blocks -> layer norm; the hidden state at position t
scores every item by a dot product with the (shared) item embedding table.

Losses (`loss` setting; the row label in tables says which, e.g. "sasrec (CE)"):
- "ce": softmax cross-entropy over all items at every position (the setting that is
  known to beat TIGER's numbers; e.g. Klenitskiy & Vasilev, RecSys 2023).
- "bce": the paper's loss, binary cross-entropy on the positive and one negative item
  sampled uniformly per position.

Training is per position: the hidden state at every real history position predicts the
next item (`trains_every_position = True`, so the trainer feeds one window of
`max_history` targets per example instead of every prefix; see `sidrec.train`).

NOTE deviations from the reference code: no `* sqrt(d)` on the item embeddings (with
the std-0.02 init it made them 8x the position embeddings and drowned the order; on
ML-100k, max length 50, it cost test NDCG@10 0.0536 vs 0.0620 without, against
RecBole's 0.0561 on the same split: benchmarks/recbole_sasrec.py), pre-LN blocks
(nanoGPT style; the original normalises only the queries), GELU in the feed-forward
layer, the negative of "bce" is any item other than that position's positive (the
original also rejects every item of the user's history), and position 0 is the most
recent item (right-aligned), which is the original's left-padded absolute positions
relabelled so that outputs do not depend on how wide the padding is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from sidrec.models import register
from sidrec.models.base import Batch, Catalogue, Recommender, init_weights, item_padding


@dataclass(frozen=True)
class SASRecConfig:
    d_model: int = 64  # hidden size (paper: d = 50)
    n_layers: int = 2  # self-attention blocks (paper: 2)
    n_heads: int = 1  # attention heads (paper: 1; more did not help there)
    d_ff: int = 64  # feed-forward width (paper: = d)
    dropout: float = 0.2  # paper: 0.2 on MovieLens-1M, 0.5 on the sparse Amazon data
    max_len: int = 50  # position table size; a longer history keeps its last max_len items
    loss: Literal["ce", "bce"] = "ce"  # see the module docstring


class Block(nn.Module):
    """Pre-LN transformer block: causal multi-head self-attention + feed-forward."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            from sidrec.errors import SidrecError

            raise SidrecError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x [B, L, d]; mask [B, 1, L, L] bool, True where query i may attend to key j
        B, L, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)  # 3 x [B, L, d]
        q = q.view(B, L, self.n_heads, -1).transpose(1, 2)  # (B, nh, L, hs)
        k = k.view(B, L, self.n_heads, -1).transpose(1, 2)  # (B, nh, L, hs)
        v = v.view(B, L, self.n_heads, -1).transpose(1, 2)  # (B, nh, L, hs)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, nh, L, hs)
        y = y.transpose(1, 2).reshape(B, L, d)  # [B, L, d]
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.ff(self.ln2(x)))  # [B, L, d]


class CausalEncoder(nn.Module):
    """Item vectors [B, L, d] -> causal hidden states [B, L, d] (shared by SASRec and Dense).

    Positions are counted from the most recent item (right-aligned); padded positions
    attend only to themselves, so no softmax row is empty, and real positions never see
    padding (it is always to their left and masked out).
    """

    def __init__(
        self, d_model: int, n_layers: int, n_heads: int, d_ff: int, dropout: float, max_len: int
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.pos = nn.Embedding(max_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        # x [B, L, d] item vectors (zeros where padded); pad [B, L] bool
        L = x.shape[1]
        positions = torch.arange(L - 1, -1, -1, device=x.device)  # [L] most recent = 0
        h = self.drop(x + self.pos(positions))  # [B, L, d]
        h = h.masked_fill(pad[..., None], 0.0)
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()  # [L, L]
        eye = torch.eye(L, dtype=torch.bool, device=x.device)  # [L, L]
        mask = (causal & ~pad[:, None, :]) | eye  # [B, L, L]
        mask = mask[:, None]  # [B, 1, L, L]
        for block in self.blocks:
            h = block(h, mask)
        return self.ln_f(h)  # [B, L, d]


def next_items(history: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The item each history position should predict [B, L]: the next one, then `target`."""
    return torch.cat([history[:, 1:], target[:, None]], dim=1)


@register
class SASRec(Recommender):
    name = "sasrec"
    Config = SASRecConfig
    trains_every_position = True

    def __init__(self, cfg: SASRecConfig, catalogue: Catalogue) -> None:
        super().__init__(cfg, catalogue)
        n_items = catalogue.n_items
        self.item_emb = nn.Embedding(n_items + 1, cfg.d_model, padding_idx=0)  # 0 = padding
        self.encoder = CausalEncoder(
            cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.dropout, cfg.max_len
        )
        self.apply(init_weights)

    @property
    def display_name(self) -> str:
        return f"{self.name} ({self.cfg.loss.upper()})"

    def hidden(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states [B, L', d], padding mask [B, L']), L' = min(L, max_len)."""
        ids, pad = item_padding(history[:, -self.cfg.max_len :])  # [B, L'] (0 = padding)
        x = self.item_emb(ids)  # [B, L', d]
        return self.encoder(x, pad), pad

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        history = batch["history"][:, -self.cfg.max_len :]  # [B, L]
        h, pad = self.hidden(history)  # [B, L, d], [B, L]
        real = ~pad  # with left padding every real position has a real next item
        h = h[real]  # [N, d]
        y = next_items(history, batch["target"])[real]  # [N]
        items = self.item_emb.weight[1:]  # [n_items, d]
        if self.cfg.loss == "ce":
            logits = h @ items.T  # [N, n_items]
            loss = F.cross_entropy(logits, y)
            return {"loss": loss, "ce": loss.detach()}
        # one negative per position, uniform over every item but the positive
        n_items = items.shape[0]
        neg = (y + torch.randint(1, n_items, y.shape, device=y.device)) % n_items  # [N]
        pos_logit = (h * items[y]).sum(-1)  # [N]
        neg_logit = (h * items[neg]).sum(-1)  # [N]
        loss = F.softplus(-pos_logit).mean() + F.softplus(neg_logit).mean()
        return {"loss": loss, "bce": loss.detach()}

    @torch.no_grad()
    def score(self, history: torch.Tensor, users: torch.Tensor, **options: Any) -> torch.Tensor:
        h, _ = self.hidden(history)  # [B, L, d]
        return h[:, -1] @ self.item_emb.weight[1:].T  # [B, n_items]

