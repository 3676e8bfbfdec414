"""TIGER: generative retrieval with semantic IDs (Rajput et al., NeurIPS 2023).

TIGER = `SIDEncoder` (the history as SID tokens + a hashed user token) + `GenerativeSIDHead`
(a decoder that generates the next item's SID code by code); the parts, the vocabulary
and the deviations from the reference T5 set-up are described in `sid_parts`. Training is
next-token cross-entropy on the target SID (`loss_gen`); inference is beam search,
constrained to catalogue SIDs or not (`TIGERInference`), through the surface every
generative SID model shares (`generative.GenerativeSIDModel`: generate, recommend,
log_likelihood, exact_scores).

TIGER (T), the LIGER paper's control (Yang et al., arXiv 2411.18814), is the same
assembly where every item is one atomic token (its dense id) instead of a SID: `tiger-t`.

Cold items: with constrained decoding the prefix index holds warm items only by default
(`include_cold=False`): a model trained on warm targets gives unseen SIDs little mass, and
the paper's TIGER has 0 cold-start recall. `include_cold=True` lets the beam reach them.
Unconstrained decoding maps any generated SID through the whole catalogue, cold included.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from sidrec.models import register
from sidrec.models.base import Batch, Catalogue, InferenceConfig
from sidrec.models.generative import GenerativeSIDModel
from sidrec.models.sid_parts import GenerativeSIDHead, SIDEncoder, SIDEncoderConfig, SIDTokens


@dataclass(frozen=True)
class TIGERConfig(SIDEncoderConfig):
    """Defaults = the paper's model (Sec. 4: T5-style, 4+4 layers, d 128, 6 x 64, FFN 1024)."""

    n_decoder_layers: int = 4


@dataclass(frozen=True)
class TIGERInference(InferenceConfig):
    """How a trained TIGER decodes (not part of what was trained)."""

    beam: int = 20  # beam width of `recommend` (at least k is used)
    constrained: bool = True  # decode only catalogue SIDs (False: paper-faithful, may be invalid)
    include_cold: bool = False  # constrained index also holds cold items
    score_chunk: int = 256  # items per teacher-forcing chunk in `exact_scores`


PRESETS: dict[str, TIGERConfig] = {
    # The paper's sizes + user-token dropout (sid_parts: the anonymous user token).
    "paper": TIGERConfig(user_dropout=0.1),
    # Small enough for MovieLens-100k on 2 CPU cores (see configs/tiger.yaml).
    "cpu": TIGERConfig(
        d_model=64, n_heads=4, head_dim=16, d_ff=256, n_encoder_layers=2, n_decoder_layers=2,
        user_dropout=0.1,
    ),
}


@register
class TIGER(GenerativeSIDModel):
    """SIDEncoder + GenerativeSIDHead; `recommend` = beam search of the next item's SID
    (the surface every generative SID model shares: `GenerativeSIDModel`)."""

    name: ClassVar[str] = "tiger"
    Config: ClassVar[type] = TIGERConfig
    Inference: ClassVar[type] = TIGERInference
    needs_sids: ClassVar[bool] = True
    supports_new_items: ClassVar[bool] = True  # new items get SIDs; see `include_cold`

    def __init__(self, cfg: TIGERConfig, catalogue: Catalogue) -> None:
        super().__init__(cfg, catalogue)
        codes, sizes = self.item_codes(catalogue)
        self.tokens = SIDTokens(codes, sizes, cfg.d_model, cfg.user_buckets,
                                anonymous_user=cfg.user_dropout > 0)
        self.encoder = SIDEncoder(self.tokens, cfg.stack(cfg.n_encoder_layers), cfg.max_history,
                                  user_dropout=cfg.user_dropout)
        self.gen = GenerativeSIDHead(self.tokens, cfg.stack(cfg.n_decoder_layers), catalogue.cold)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        memory, pad = self.encoder(batch["history"], batch["user"])
        loss_gen = self.gen.loss(memory, pad, batch["target"])
        return {"loss": loss_gen, "loss_gen": loss_gen}

    def encode(
        self, history: torch.Tensor, users: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """History [B, L] (left-padded with -1) + users [B] -> (memory [B, S, d], pad [B, S])."""
        return self.encoder(history, users)

    def variants(self) -> dict[str, Any]:
        """Both decoding modes are reported: the configured one and the other."""
        own = self.inference
        other = "unconstrained" if own.constrained else "constrained"
        return {"": own, other: replace(own, constrained=not own.constrained)}


@dataclass(frozen=True)
class TIGERTConfig(TIGERConfig):
    """TIGER (T): TIGER's sizes; items are atomic tokens, so there is no tokenizer."""


@register
class TIGERT(TIGER):
    """TIGER (T): TIGER's assembly over atomic item tokens (its dense id), no SIDs."""

    name: ClassVar[str] = "tiger-t"
    Config: ClassVar[type] = TIGERTConfig
    needs_sids: ClassVar[bool] = False
    supports_new_items: ClassVar[bool] = False  # an unseen item has no trained token

    def __init__(self, cfg: TIGERTConfig, catalogue: Catalogue) -> None:
        super().__init__(cfg, catalogue)
        # A cold item's token is no training target: out of the softmax, as for Dense.
        cold_tokens = self.tokens.offsets[0] + torch.nonzero(catalogue.cold.bool()).view(-1)
        self.gen.untrained[cold_tokens] = True

    def item_codes(self, catalogue: Catalogue) -> tuple[torch.Tensor, tuple[int, ...]]:
        """One code per item, its dense id, from a codebook of n_items."""
        return torch.arange(catalogue.n_items)[:, None], (catalogue.n_items,)

    def variants(self) -> dict[str, Any]:
        # Every atomic token is an item: no invalid output, only cold items to exclude.
        return {"": self.inference}
