"""LIGER's input (Yang et al., arXiv 2411.18814, Sec. 4.1), shared by LIGER and Dense
(SID): every history token is its SID code's embedding + a projection of the item's text
embedding + a code-level embedding + a position, then dropout.

Two inputs are built here, chosen by the model config (`sidrec.models.liger.LIGERConfig`):
the official code's (one position per item, LayerNorm and dropout 0.5 on the summed
inputs, the text projected by the dense head's item_proj) and sidrec's before #25
(`SIDREC_BEFORE`: one position per code token, the stack's dropout alone, a separate input
MLP). A config without these options (Dense (SID)) gets sidrec's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sidrec.models.base import init_weights
from sidrec.models.catalogue import Catalogue, catalogue_sids
from sidrec.models.sid_parts import SIDEncoder, SIDTokens

# sidrec's LIGER input until #25: separate input MLP, user Linear, no input LayerNorm,
# input dropout = the stack's dropout (0.1 in the presets), one position per code token.
SIDREC_BEFORE: dict[str, Any] = {"shared_text_proj": False, "user_proj": True,
                                 "input_norm": False, "input_dropout": 0.1,
                                 "item_positions": False}


class ItemPositions(nn.Embedding):
    """SIDEncoder's position table with every code of an item at the item's position (the
    official code). The encoder numbers code tokens 1, 2, .. (0 is the user token); code
    token p reads item position 1 + (p - 1) // n_codes, so the table has 1 + max_history
    rows instead of 1 + max_history * n_codes."""

    def __init__(self, max_history: int, n_codes: int, d: int) -> None:
        super().__init__(1 + max_history, d)
        self.n_codes = n_codes

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return super().forward(self.item_position(pos))

    def item_position(self, pos: torch.Tensor) -> torch.Tensor:
        """Code-token positions [...] -> item positions [...] (0, the user, stays 0)."""
        return torch.where(pos > 0, 1 + (pos - 1).clamp_min(0) // self.n_codes, 0)


def text_sid_encoder(cfg: Any, catalogue: Catalogue, text: torch.Tensor, name: str,
                      text_proj: nn.Module | None = None) -> tuple[SIDTokens, SIDEncoder]:
    """LIGER's input (Sec. 4.1), shared with Dense (SID): SID tokens + projected item text.
    `text_proj`: the module that projects the input text (LIGER's shared item_proj); the
    input options (`LIGERConfig`) apply where cfg has them, else sidrec's old input."""
    codes, sizes = catalogue_sids(catalogue, name)
    tokens = SIDTokens(codes, sizes, cfg.d_model, cfg.user_buckets,
                       anonymous_user=cfg.user_dropout > 0)
    encoder = SIDEncoder(tokens, cfg.stack(cfg.n_encoder_layers), cfg.max_history,
                         d_text=text.shape[1], text_hidden=cfg.text_hidden,
                         user_dropout=cfg.user_dropout)
    if text_proj is not None:
        encoder.text_in = text_proj
    if getattr(cfg, "item_positions", False):
        encoder.pos = ItemPositions(cfg.max_history, tokens.n_codes, cfg.d_model)
        encoder.pos.apply(init_weights)
    if hasattr(cfg, "input_dropout"):  # SIDEncoder applies `drop` to the summed inputs
        norm = nn.LayerNorm(cfg.d_model) if cfg.input_norm else nn.Identity()
        encoder.drop = nn.Sequential(norm, nn.Dropout(cfg.input_dropout))
    return tokens, encoder
