"""COBRA's item encoder: item text -> the dense vector v of the cascade, trained end to end.

"transformer" = a light transformer over the item's text tokens (all-MiniLM-L6-v2's
word-piece vocabulary) with a [CLS] output, as in the paper (Sec. 3.1); "projection" = a
trainable MLP over the frozen sentence embedding (the cheap preset).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sidrec.errors import SidrecError
from sidrec.models.base import Catalogue
from sidrec.models.heads import mlp
from sidrec.models.transformer import Encoder, StackConfig


class ItemEncoder(nn.Module):
    """Item text -> dense vector v [n_items, d_model] (the trainable half of the cascade)."""

    def __init__(self, cfg: Any, catalogue: Catalogue) -> None:
        """`cfg`: a `CobraConfig` (d_model, item_encoder, text sizes, stack sizes)."""
        super().__init__()
        self.kind = cfg.item_encoder
        self.text_tokens = cfg.text_tokens
        if self.kind == "projection":
            if catalogue.text_emb is None:
                raise SidrecError(
                    "item_encoder=projection needs embeddings.npy; run `sidrec embed` first"
                )
            dim = catalogue.text_emb.shape[1]
            self.proj = mlp(dim, 2 * cfg.d_model, cfg.d_model)
        else:
            self.tokenizer = _wordpiece_tokenizer()
            self.tok = nn.Embedding(self.tokenizer.vocab_size, cfg.d_model, padding_idx=0)
            self.pos = nn.Embedding(cfg.text_tokens, cfg.d_model)
            self.encoder = Encoder(StackConfig(cfg.text_layers, cfg.d_model, cfg.n_heads,
                                               cfg.head_dim, cfg.d_ff, cfg.dropout))
            self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.set_catalogue(catalogue)

    def set_catalogue(self, catalogue: Catalogue) -> None:
        if self.kind == "projection":
            self.register_buffer("text_emb", catalogue.text_emb.float(), persistent=False)
        else:
            enc = self.tokenizer(catalogue.item_text, max_length=self.text_tokens,
                                 truncation=True, padding="max_length", return_tensors="pt")
            self.register_buffer("token_ids", enc["input_ids"], persistent=False)

    @property
    def inputs(self) -> torch.Tensor:
        """What the encoder reads of every item: its sentence embedding [n_items, d_text]
        (projection) or its word pieces [n_items, text_tokens] (transformer)."""
        return self.text_emb if self.kind == "projection" else self.token_ids

    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows of `inputs` [n, ...] -> v [n, d_model]."""
        if self.kind == "projection":
            return self.proj(rows)
        x = self.tok(rows) + self.pos.weight[: rows.shape[1]]  # word pieces, [CLS] first
        h = self.encoder(x, rows == 0)  # (n, T, d)
        return self.out(h[:, 0])  # [CLS] output

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items [...] dense ids -> v [..., d_model]."""
        return self.encode(self.inputs[items.reshape(-1)]).view(*items.shape, -1)


def _wordpiece_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from sidrec.encoders import DEFAULT_ENCODER, resolve_encoder

    return AutoTokenizer.from_pretrained(resolve_encoder(DEFAULT_ENCODER))
