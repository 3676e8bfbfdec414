"""COBRA's inference (Sec. 3.3): coarse-to-fine decoding and BeamFusion.

Every COBRA model first runs its decoder once over the history (`prefill`); what follows
depends on the parts it holds (models/cobra_parts.py), one function each:

- both (`fuse`, cobra): beam search the top-M sparse IDs with the sparse heads
  (`sparse_beam`), generate v̂_k for each beam (the history prefix's cached keys and
  values plus the beam's sparse tokens, `dense_query`), take the items under that sparse
  ID (or the global nearest neighbours, `retrieval: global`) and fuse beam and cosine
  scores with BeamFusion (`beam_fusion`, Eq. 6). The inference-time switches
  (`CobraInference.mode`) turn one part off;
- the sparse part alone (`groups_by_beam`, cobra-no-dense): the beam ranks sparse IDs;
- the dense part alone (`nearest_next`, cobra-no-sparse): v̂ from the last dense token,
  the nearest items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from sidrec.models.base import InferenceConfig
from sidrec.models.beam import BeamResult, StepFn, beam_search, item_sids
from sidrec.models.item_groups import GroupedItems
from sidrec.models.item_index import ItemIndex
from sidrec.models.retrieval import merge_candidates, nearest, seen_in_history
from sidrec.models.transformer import KVCache

Mode = Literal["fusion", "no-dense", "no-sparse", "no-beamfusion"]


@dataclass(frozen=True)
class CobraInference(InferenceConfig):
    """How a trained COBRA decodes (not part of what was trained)."""

    mode: Mode = "fusion"  # the others are inference-time ablation switches
    beam: int = 20  # M sparse IDs kept by the beam
    neighbours: int = 10  # N items per sparse ID (mode no-dense: all of them)
    tau: float = 0.9  # BeamFusion: sharpness over beams
    psi: float = 16.0  # BeamFusion: sharpness over items within a beam
    retrieval: Literal["group", "global"] = "group"  # items under the sparse ID, or all
    constrained: bool = True  # beam only over sparse IDs that exist in the catalogue


def beam_fusion(
    beam_logp: torch.Tensor, cos: torch.Tensor, tau: float, psi: float
) -> torch.Tensor:
    """BeamFusion (COBRA Eq. 6): Score(a) = Softmax(τ·φ(ID_k))_k · Softmax(ψ·cos(v̂_k, v_a))_a.

    beam_logp [B, M]: beam score φ of the M sparse IDs; cos [B, M, N]: cosine between each
    beam's generated v̂_k and its N candidate items v_a (-inf where there is no candidate).
    Returns [B, M, N]. ψ = 0 spreads a beam's mass evenly over its items (sparse only);
    τ → ∞ keeps only the best beam; ψ → ∞ keeps only each beam's nearest item.
    """
    w = torch.softmax(tau * beam_logp, dim=1).nan_to_num(0.0)  # (B, M)
    logits = torch.where(torch.isfinite(cos), psi * cos, torch.full_like(cos, float("-inf")))
    p = torch.softmax(logits, dim=2).nan_to_num(0.0)  # (B, M, N); empty beams -> 0
    return w[:, :, None] * p


def prefill(model: nn.Module, history: torch.Tensor,
            ) -> tuple[torch.Tensor, KVCache, torch.Tensor | None]:
    """One decoder pass over the histories' items [B, L]: (hidden [B, L*T, d], the prefix
    cache every beam shares, the catalogue's item vectors or None without a dense part)."""
    history = history[:, -model.cfg.max_len :]
    vectors = model.dense.vectors() if model.dense is not None else None
    x, pad = model.cascade(
        history, vectors[history.clamp_min(0)] if vectors is not None else None, shift=1)
    hidden, cache = model.decoder.prefill(x, pad)
    return hidden, cache, vectors


def sparse_step(model: nn.Module, hidden: torch.Tensor) -> StepFn:
    """The sparse heads as a beam-search step: level 0 from the history's last token,
    level t from the beam's code t-1."""
    first = model.sparse.log_probs(hidden[:, -1], 0)  # (B, V_0)

    def step(prev: torch.Tensor, t: int, state: KVCache):
        if t == 0:
            return first, state
        h = model.decoder.step(model.code_tokens(prev[:, None], t - 1), state)  # (N, 1, d)
        return model.sparse.log_probs(h[:, -1], t), state

    return step


def beam_width(cfg: CobraInference, n: int) -> int:
    """M: the configured beam, or more when M x N candidates could not fill n items."""
    return max(cfg.beam, math.ceil(n / cfg.neighbours))


def sparse_beam(model: nn.Module, hidden: torch.Tensor, cache: KVCache, width: int,
                constrained: bool, exclude: torch.Tensor | None = None) -> BeamResult:
    """The top `width` sparse IDs of each user (only catalogue ones when constrained);
    no beam completes a sparse ID of `exclude` [B, H, S] (`beam_search`)."""
    _, index = model.sparse.tables()
    return beam_search(sparse_step(model, hidden), cache, len(hidden), width, index,
                       index if constrained else None, exclude=exclude)


def dense_query(model: nn.Module, cache: KVCache, codes: torch.Tensor) -> torch.Tensor:
    """v̂ [N, d] for sparse IDs codes [N, S] (N a multiple of the cache's B users, row n
    belonging to user n // (N / B)): the shared history prefix plus the ID's tokens."""
    h = model.decoder.step(model.code_tokens(codes), cache.branch())  # (N, S, d)
    return model.dense.head(h[:, -1])


def nearest_next(model: nn.Module, history: torch.Tensor, n: int,
                 seen: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense part alone (cobra-no-sparse): v̂ of the next item from the history's last
    (dense) token, and the n items nearest to it."""
    hidden, _, vectors = prefill(model, history)
    return nearest(model.dense.head(hidden[:, -1]), vectors, n, seen)


def groups_by_beam(model: nn.Module, history: torch.Tensor, n: int, cfg: CobraInference,
                   seen: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse part alone (cobra-no-dense): the beam ranks sparse IDs and every item of a
    sparse ID gets its beam's score (a tied block). With the full SID each group is one
    item: the beam decodes items (decoder-only TIGER), and a seen item is banned inside
    the search."""
    hidden, cache, _ = prefill(model, history)
    groups, _ = model.sparse.tables()
    exclude = None
    if seen is not None and model.sparse.whole_sid:
        exclude = item_sids(model.sparse.codes, seen.to(model.sparse.codes.device))
    result = sparse_beam(model, hidden, cache, max(cfg.beam, n), cfg.constrained, exclude)
    b, m = result.items.shape
    items = groups.padded(result.items.view(-1)).view(b, m, -1)  # (B, M, W): -1 past a group
    logp = result.log_probs[..., None].expand_as(items)
    if seen is not None and exclude is None:
        items = items.masked_fill(seen_in_history(items.flatten(1), seen.to(
            items.device)).view_as(items), -1)
    return merge_candidates(items.flatten(1), logp.flatten(1), n)


def fuse(model: nn.Module, history: torch.Tensor, n: int, cfg: CobraInference,
         seen: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both parts (cobra), coarse to fine: top-M sparse IDs, v̂_k for each, candidates,
    BeamFusion; `cfg.mode` may switch one part off."""
    hidden, cache, vectors = prefill(model, history)
    groups, sparse_index = model.sparse.tables()
    result = sparse_beam(model, hidden, cache, beam_width(cfg, n), cfg.constrained)
    b, m = result.sids.shape[:2]
    codes = result.sids.reshape(b * m, model.sparse.levels)
    v_hat = dense_query(model, cache, codes).view(b, m, -1)  # v̂_k of each beam
    seen = seen.to(v_hat.device) if seen is not None else None
    if cfg.mode == "no-sparse":  # dense only: the best beam's v̂ against all items
        return nearest(v_hat[:, 0], vectors, n, seen)
    if cfg.retrieval == "global" and cfg.mode != "no-dense":
        return fuse_global(result.log_probs, v_hat, vectors, n, cfg, seen)
    return fuse_groups(groups, result.log_probs, sparse_index.lookup(codes).view(b, m),
                       v_hat, vectors, n, cfg, seen)


def fuse_groups(groups: GroupedItems, beam_logp: torch.Tensor, beam_group: torch.Tensor,
                v_hat: torch.Tensor, vectors: torch.Tensor, n: int, cfg: CobraInference,
                seen: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The top n items of B users from the items under their M beams' sparse IDs.

    beam_logp [B, M] (-inf: no beam), beam_group [B, M] the group of each beam's sparse ID
    (-1: none in the catalogue), v̂ [B, M, d]; seen [B, S] items are no candidates. Each
    beam's candidates are its group's `cfg.neighbours` items nearest to its v̂ (all of
    them without the dense part), found among its own group's members only.
    """
    b, m = beam_logp.shape
    live = torch.where(torch.isfinite(beam_logp), beam_group, -1).view(-1)  # (B*M,)
    k = None if cfg.mode == "no-dense" else cfg.neighbours  # w/o dense: whole groups
    cand, cos = groups.nearest(v_hat.reshape(b * m, -1), live, vectors, k, seen)
    return fused_scores(beam_logp, cand.view(b, m, -1), cos.view(b, m, -1), n, cfg)


def fuse_global(beam_logp: torch.Tensor, v_hat: torch.Tensor, vectors: torch.Tensor, n: int,
                cfg: CobraInference, seen: torch.Tensor | None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """`fuse_groups` with each beam's candidates its v̂'s nearest items in the whole
    catalogue (`retrieval: global`, the ANN search of COBRA's serving)."""
    b, m = beam_logp.shape
    n_nb = cfg.neighbours
    extra = 0 if seen is None else seen.shape[1]  # room for the seen items
    cand, cos = ItemIndex.of(vectors).search(v_hat.reshape(b * m, -1), n_nb + extra)
    if seen is not None:  # seen items are no candidates, before the N nearest are kept
        cos = cos.masked_fill(seen_in_history(cand.view(b, -1), seen).view_as(cand),
                              float("-inf"))
    if cand.shape[1] > n_nb:
        cos, top = cos.topk(n_nb, dim=1)
        cand = cand.gather(1, top)
    return fused_scores(beam_logp, cand.view(b, m, -1), cos.view(b, m, -1), n, cfg)


def fused_scores(beam_logp: torch.Tensor, cand: torch.Tensor, cos: torch.Tensor, n: int,
                 cfg: CobraInference) -> tuple[torch.Tensor, torch.Tensor]:
    """Top n distinct items of the beams' candidates cand [B, M, N] (-1: none) with their
    cosine to the beam's v̂ cos [B, M, N]: BeamFusion, or per `cfg.mode` cosine alone
    (no-beamfusion) or the beam's score spread evenly over its items (no-dense)."""
    b = len(cand)
    dead = ~torch.isfinite(beam_logp)[:, :, None] | (cand < 0)
    cos = cos.masked_fill(dead, float("-inf"))
    if cfg.mode == "no-beamfusion":
        scores = cos  # rank the beams' candidates by cosine alone
    else:
        psi = 0.0 if cfg.mode == "no-dense" else cfg.psi
        scores = beam_fusion(beam_logp, cos, cfg.tau, psi)
        # a dead beam's or a missing candidate's item is no recommendation
        scores = scores.masked_fill(~torch.isfinite(cos), float("-inf"))
    return merge_candidates(cand.view(b, -1), scores.view(b, -1), n)
