"""COBRA: cascaded sparse-dense generative retrieval with BeamFusion.

Yang et al., "Sparse Meets Dense: Unified Generative Recommendations with Cascaded
Sparse-Dense Representations" (Baidu, arXiv 2503.02453), Sec. 3.

Each item is a cascade [e(ID_1) ... e(ID_L), v]: its sparse ID (the first L semantic-ID
codes, without the collision token) and a dense vector v from a trainable item encoder.
One decoder-only causal transformer reads the history's cascades and
- sparse head: after item t's dense token, predicts the next item's codes level by level,
  P(ID_{t+1} | S_{1:t}) (CE per level, Eq. 3);
- dense head: after the next item's sparse tokens, predicts v̂_{t+1},
  P(v_{t+1} | ID_{t+1}, S_{1:t}), trained with in-batch InfoNCE on cos(v̂, v) (Eq. 4);
  the negatives are the batch's other distinct items, minus those of the target's own
  sequence.
Loss = L_sparse + dense_weight * L_dense; the item encoder is trained with both. Being
decoder-only, one causal pass over a window supervises every item in it (as SASRec), so
an epoch covers every training interaction at the cost of one pass per `max_history`.

Item encoder (`item_encoder`, `models/item_encoder.py`): a light transformer over the
item's text tokens, as in the paper, or a trainable MLP over the frozen sentence embedding.

Inference is coarse-to-fine (Sec. 3.3): beam search the top-M sparse IDs, generate v̂_k
for each, take the items under that sparse ID (or the global nearest neighbours) and fuse
with BeamFusion (`beam_fusion`). Cold items have a sparse ID and a dense vector, so they
can be retrieved. The sparse ID must be coarse enough that its groups hold several items
(`sparse_levels`; group sizes in `diagnostics()`), or BeamFusion over one does nothing.

Ablations (the paper's Table 4) are separately *trained* models, set by `tokens`
(`models/cobra_ablations.py`).
One trained COBRA's inference-time switches (`variants`) are labelled "(inference)": "no-dense"
(ψ = 0) gives a beam's mass to all its sparse ID's items alike, "no-beamfusion" ranks by cosine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from sidrec.errors import SidrecError
from sidrec.models import register
from sidrec.models.base import (
    Batch,
    Catalogue,
    InferenceConfig,
    Recommender,
    excluded_items,
    init_weights,
)
from sidrec.models.beam import SidIndex, beam_search
from sidrec.models.heads import gather_rows, info_nce, mlp
from sidrec.models.item_encoder import ItemEncoder
from sidrec.models.retrieval import (
    GroupedItems,
    ItemIndex,
    merge_candidates,
    nearest,
    seen_in_history,
)
from sidrec.models.transformer import Decoder, KVCache, StackConfig

Mode = Literal["fusion", "no-dense", "no-sparse", "no-beamfusion"]
Tokens = Literal["cascade", "sparse", "dense"]


@dataclass(frozen=True)
class CobraConfig:
    d_model: int = 128
    n_layers: int = 2  # sequence decoder (paper: 2)
    n_heads: int = 4
    head_dim: int = 32
    d_ff: int = 512
    dropout: float = 0.1
    max_len: int = 50  # item positions
    item_encoder: Literal["transformer", "projection"] = "projection"
    text_layers: int = 1  # item-text transformer layers (paper: 1)
    text_tokens: int = 32  # item text truncated to this many word pieces
    temperature: float = 0.07  # InfoNCE
    dense_weight: float = 1.0
    # What an item is in the sequence: [sparse ID, v] (COBRA), its full SID only (the
    # trained w/o-dense ablation), or v only (w/o sparse); see the module docstring.
    tokens: Tokens = "cascade"
    # Leading SID levels that form the sparse ID (0: every level but the collision token;
    # with `tokens: sparse`, 0 is the full SID, one item per sparse ID).
    sparse_levels: int = 0


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


@register
class Cobra(Recommender):
    name = "cobra"
    Config = CobraConfig
    Inference = CobraInference
    needs_sids = True
    needs_text = True  # the projection item encoder, and embeddings in the fingerprint
    supports_new_items = True
    trains_every_position = True

    def __init__(self, cfg: CobraConfig, catalogue: Catalogue) -> None:
        super().__init__(cfg, catalogue)
        n_sid = len(catalogue.codebook_sizes) if cfg.tokens != "dense" else 0
        if cfg.sparse_levels >= n_sid and cfg.tokens != "dense":
            raise SidrecError(
                f"{self.name}: sparse_levels={cfg.sparse_levels} but the SIDs have "
                f"{n_sid - 1} levels before the collision token; use 1..{n_sid - 1}"
            )
        # S sparse tokens and D (0 or 1) dense tokens per item
        self.levels = {"cascade": cfg.sparse_levels or n_sid - 1,
                       "sparse": cfg.sparse_levels or n_sid, "dense": 0}[cfg.tokens]
        self.has_dense = cfg.tokens != "sparse"
        self.slots = self.levels + int(self.has_dense)
        self.sizes = tuple(catalogue.codebook_sizes[: self.levels])
        offsets = torch.tensor([0, *self.sizes[:-1]]).cumsum(0)[: self.levels]
        self.register_buffer("offsets", offsets, persistent=False)  # (S,)
        d = cfg.d_model
        self.code_emb = nn.Embedding(max(1, sum(self.sizes)), d)
        self.type_emb = nn.Embedding(self.slots, d)  # S sparse slots (+ the dense slot)
        self.pos_emb = nn.Embedding(cfg.max_len + 1, d)
        if self.has_dense:
            self.dense_in = nn.Linear(d, d)
            self.item_encoder = ItemEncoder(cfg, catalogue)
            self.dense_head = mlp(d, d, d)
        self.decoder = Decoder(StackConfig(cfg.n_layers, d, cfg.n_heads, cfg.head_dim,
                                           cfg.d_ff, cfg.dropout), cross_attention=False)
        self.sparse_heads = nn.ModuleList(nn.Linear(d, v) for v in self.sizes)
        self.drop = nn.Dropout(cfg.dropout)
        # At PyTorch's N(0, 1) embedding default the type and position embeddings dwarfed
        # dense_in(v), the item's text in its dense token (ML-100k seed 0 test NDCG@10:
        # 0.0338 before, 0.0373 after).
        self.apply(init_weights)
        self._set_tables(catalogue)

    # ----------------------------------------------------------------- catalogue tables

    def _set_tables(self, catalogue: Catalogue) -> None:
        sparse = (catalogue.sids[:, : self.levels].long() if self.levels
                  else torch.zeros(catalogue.n_items, 0, dtype=torch.long))
        self.register_buffer("sparse", sparse, persistent=False)  # (n_items, S)
        self._tables: tuple[GroupedItems, SidIndex] | None = None
        self._item_vectors: torch.Tensor | None = None

    def tables(self) -> tuple[GroupedItems, SidIndex]:
        """Items per sparse ID and the sparse-ID index, on the model's device.

        The index holds each distinct sparse ID once; its item for a sparse ID is the
        group id (the row among the distinct IDs), so `index.lookup(codes)` keys the groups.
        Built on the CPU and moved, as every `SidIndex`.
        """
        device = self.sparse.device
        if self._tables is None or self._tables[1].device != device:
            sparse = self.sparse.cpu()  # (n_items, S)
            index = SidIndex(torch.unique(sparse, dim=0), self.sizes)
            groups = GroupedItems(index.lookup(sparse).to(device))
            self._tables = (groups, index.to(device))
        return self._tables

    def diagnostics(self) -> dict[str, Any]:
        """How many items share a sparse ID: BeamFusion needs groups of several."""
        if not self.levels:
            return {}
        groups, _ = self.tables()
        sizes = (groups.members >= 0).sum(dim=1).float()  # (G,)
        return {"sparse_id": f"{self.levels} levels of {list(self.sizes)} codes",
                "groups": len(sizes), "items_per_group_mean": round(sizes.mean().item(), 2),
                "items_per_group_median": sizes.median().item(),
                "items_per_group_max": int(sizes.max()),
                "items_alone": round((sizes == 1).sum().item() / self.catalogue.n_items, 3)}

    def set_catalogue(self, catalogue: Catalogue) -> None:
        super().set_catalogue(catalogue)
        if self.has_dense:
            self.item_encoder.set_catalogue(catalogue)
        device = self.offsets.device
        self._set_tables(catalogue)
        self.to(device)

    def train(self, mode: bool = True) -> Cobra:
        self._item_vectors = None  # item vectors change with the weights
        return super().train(mode)

    # ----------------------------------------------------------------- embedding

    def _cascade(
        self, items: torch.Tensor, vectors: torch.Tensor | None, shift: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """items [B, n] (-1 = padding), their v [B, n, d] -> (tokens [B, n*T, d], padding),
        T = S sparse + D dense tokens per item.

        Positions count back from the item being predicted (position 0), as SASRec's and
        TIGER's do, so the padding width never changes a result: the training window ends
        with its target (shift 0), a history at inference one item earlier (shift 1).
        """
        b, n = items.shape
        pad = items < 0  # (B, n)
        back = torch.arange(n - 1, -1, -1, device=items.device) + shift
        parts = []
        if self.levels:
            sparse = self.code_emb(self.sparse[items.clamp_min(0)] + self.offsets)  # (B,n,S,d)
            parts.append(sparse + self.type_emb.weight[: self.levels])
        if self.has_dense:
            dense = self.dense_in(vectors) + self.type_emb.weight[self.levels]  # (B, n, d)
            parts.append(dense[:, :, None])
        x = torch.cat(parts, dim=2) + self.pos_emb(back)[:, None]  # (B, n, T, d)
        x = x.view(b, n * self.slots, -1)
        return self.drop(x), pad.repeat_interleave(self.slots, dim=1)

    def _sparse_tokens(self, codes: torch.Tensor, position: int) -> torch.Tensor:
        """codes [N, t] of the next item (levels 0..t-1) -> tokens [N, t, d]."""
        t = codes.shape[1]
        x = self.code_emb(codes + self.offsets[:t]) + self.type_emb.weight[:t]
        return x + self.pos_emb.weight[position]

    # ----------------------------------------------------------------- training

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Every item of the window with a predecessor is a target (`trains_every_position`).

        Items s_1..s_m (history + target), token j of item i at i*T+j: the last token of
        s_{i-1} predicts code 0 of s_i, code t-1 of s_i predicts code t, and the last code of
        s_i predicts v̂_i, which has seen s_i's codes but not its v (w/o sparse: the dense
        token of s_{i-1} predicts v̂_i).
        """
        seq = torch.cat([batch["history"], batch["target"][:, None]], dim=1)
        seq = seq[:, -(self.cfg.max_len + 1):]  # (B, m)
        b, m = seq.shape
        S, T = self.levels, self.slots
        real = seq >= 0
        items = seq.clamp_min(0)
        # v of each distinct item once: the in-batch InfoNCE candidates and the inputs.
        uniq, inverse = torch.unique(items, return_inverse=True)  # (U,), (B, m)
        v = self.item_encoder(uniq) if self.has_dense else None  # (U, d)
        x, pad = self._cascade(seq, gather_rows(v, inverse) if v is not None else None)
        h = self.decoder(x, pad).view(b, m, T, -1)  # (B, m, T, d)
        is_target = real[:, :-1]  # s_i (i >= 1) whose predecessor is real
        terms: dict[str, torch.Tensor] = {}
        if S:
            codes = self.sparse[items[:, 1:]][is_target]  # (N, S)
            inputs = torch.cat([h[:, :-1, T - 1 :], h[:, 1:, : S - 1]], dim=2)[is_target]
            terms["loss_sparse"] = sum(
                F.cross_entropy(head(inputs[:, t]), codes[:, t])
                for t, head in enumerate(self.sparse_heads)
            ) / S
        if v is not None:
            source = h[:, 1:, S - 1] if S else h[:, :-1, T - 1]  # (B, m-1, d)
            v_hat = self.dense_head(source[is_target])  # (N, d)
            positive = inverse[:, 1:][is_target]  # (N,)
            # Negatives: the batch's other items, minus those of the target's own sequence.
            rows = torch.arange(b, device=seq.device)[:, None].expand(b, m)  # (B, m)
            in_seq = torch.zeros(b, len(uniq), dtype=torch.bool, device=seq.device)
            in_seq[rows[real], inverse[real]] = True  # (B, U)
            row = rows[:, 1:][is_target]  # (N,)
            excluded = in_seq[row] | ~in_seq.any(0)  # padding-only columns are not items
            excluded[torch.arange(len(row)), positive] = False
            terms["loss_dense"] = info_nce(v_hat, v, positive, self.cfg.temperature, excluded)
        total = terms.get("loss_sparse", 0.0) + self.cfg.dense_weight * terms.get(
            "loss_dense", 0.0)
        return {"loss": total, **terms}

    # ----------------------------------------------------------------- inference

    def item_vectors(self) -> torch.Tensor:
        """v of every catalogue item [n_items, d], cached until the weights may change."""
        if self._item_vectors is None or len(self._item_vectors) != self.catalogue.n_items:
            items = torch.arange(self.catalogue.n_items, device=self.offsets.device)
            self._item_vectors = torch.cat(
                [self.item_encoder(chunk) for chunk in items.split(4096)])
        return self._item_vectors

    def variants(self) -> dict[str, Any]:
        """The model's own inference, then (full COBRA only) the inference-time switches;
        the trained ablations are the models cobra-no-dense and cobra-no-sparse."""
        own = self.inference
        if self.cfg.tokens != "cascade":
            return {"": own}
        return {"": own, "no-dense (inference)": replace(own, mode="no-dense"),
                "no-sparse (inference)": replace(own, mode="no-sparse"),
                "no-beamfusion": replace(own, mode="no-beamfusion")}

    @torch.no_grad()
    def recommend(
        self, history: torch.Tensor, users: torch.Tensor, k: int, inference: Any = None,
        margin: int = 0, seen: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self._inference(inference)
        excluded = excluded_items(cfg, history, seen)
        history = history[:, -self.cfg.max_len :]
        b = len(history)
        vectors = self.item_vectors() if self.has_dense else None
        x, pad = self._cascade(
            history, vectors[history.clamp_min(0)] if vectors is not None else None, shift=1)
        hidden, cache = self.decoder.prefill(x, pad)
        if not self.levels:  # w/o sparse: the next item's v̂ from the last dense token
            v_hat = self.dense_head(hidden[:, -1])
            return nearest(v_hat, vectors, k + margin, excluded)
        first = torch.log_softmax(self.sparse_heads[0](hidden[:, -1]), dim=-1)  # (B, V_0)

        def step(prev: torch.Tensor, t: int, state: KVCache):
            if t == 0:
                return first, state
            h = self.decoder.step(self._code_token(prev, t - 1, 0), state)  # (N, 1, d)
            return torch.log_softmax(self.sparse_heads[t](h[:, -1]), dim=-1), state

        if not self.has_dense:
            return self._groups_by_beam(step, cache, b, excluded, k, cfg, margin)
        return self._fuse(step, cache, b, excluded, vectors, k, cfg, margin)

    def _groups_by_beam(self, step: Any, cache: KVCache, b: int, seen: torch.Tensor | None,
                        k: int, cfg: CobraInference, margin: int,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """W/o dense: the beam ranks sparse IDs and every item of a sparse ID gets its
        beam's score (a tied block). With the full SID each group is one item: the beam
        decodes items (decoder-only TIGER), and a seen item is banned inside the search."""
        groups, sparse_index = self.tables()
        allowed = sparse_index if cfg.constrained else None
        full_sid = self.levels == len(self.catalogue.codebook_sizes)
        exclude = None
        if seen is not None and full_sid:
            seen = seen.to(self.sparse.device)
            exclude = self.sparse[seen.clamp_min(0)].masked_fill((seen < 0)[..., None], -1)
        result = beam_search(step, cache, b, max(cfg.beam, k), sparse_index, allowed,
                             exclude=exclude)
        items = groups.members[result.items.clamp_min(0)]  # (B, M, G): -1 past a group
        items = items.masked_fill((result.items < 0)[..., None], -1)
        logp = result.log_probs[..., None].expand_as(items)
        if seen is not None and exclude is None:
            items = items.masked_fill(seen_in_history(items.flatten(1), seen.to(
                items.device)).view_as(items), -1)
        return merge_candidates(items.flatten(1), logp.flatten(1), k + margin)

    def _fuse(self, step: Any, cache: KVCache, b: int, seen: torch.Tensor | None,
              vectors: torch.Tensor, k: int, cfg: CobraInference, margin: int,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Coarse to fine: top-M sparse IDs, v̂_k for each, candidates, BeamFusion."""
        mode, n_nb = cfg.mode, cfg.neighbours
        width = max(cfg.beam, math.ceil(k / n_nb))  # M grows with K
        groups, sparse_index = self.tables()
        allowed = sparse_index if cfg.constrained else None
        result = beam_search(step, cache, b, width, sparse_index, allowed)
        m = result.sids.shape[1]
        # v̂_k: the history prefix (shared, cached) + the beam's S sparse tokens.
        fresh = KVCache(own_k=[None] * len(self.decoder.blocks),
                        own_v=[None] * len(self.decoder.blocks), prefix_k=cache.prefix_k,
                        prefix_v=cache.prefix_v, prefix_pad=cache.prefix_pad)
        codes = result.sids.reshape(b * m, self.levels)
        h = self.decoder.step(self._sparse_tokens(codes, 0), fresh)  # (B*M, S, d)
        v_hat = self.dense_head(h[:, -1])  # (B*M, d)
        seen = seen.to(v_hat.device) if seen is not None else None
        if mode == "no-sparse":  # dense only: the best beam's v̂ against all items
            return nearest(v_hat.view(b, m, -1)[:, 0], vectors, k + margin, seen)
        valid = torch.isfinite(result.log_probs).view(-1)
        if cfg.retrieval == "global" and mode != "no-dense":  # (B*M, N + room for seen)
            cand, cos = ItemIndex.of(vectors).search(v_hat, n_nb + (0 if seen is None
                                                                     else seen.shape[1]))
        else:  # the items under each beam's sparse ID (-1: no catalogue sparse ID)
            cand, cos = groups.neighbours(v_hat, sparse_index.lookup(codes), vectors)
        if seen is not None:  # seen items are no candidates, before the N nearest are kept
            cos = cos.masked_fill(seen_in_history(cand.view(b, -1), seen).view_as(cand),
                                  float("-inf"))
        if cand.shape[1] > n_nb and mode != "no-dense":  # w/o dense: whole groups, no cosine
            cos, top = cos.topk(n_nb, dim=1)
            cand = cand.gather(1, top)
        cos = cos.masked_fill(~valid[:, None] | (cand < 0), float("-inf"))
        cand, cos = cand.view(b, m, -1), cos.view(b, m, -1)
        if mode == "no-beamfusion":
            scores = cos  # rank the beams' candidates by cosine alone
        else:
            psi = 0.0 if mode == "no-dense" else cfg.psi
            scores = beam_fusion(result.log_probs, cos, cfg.tau, psi)
            # a dead beam's or a missing candidate's item is no recommendation
            scores = scores.masked_fill(~torch.isfinite(cos), float("-inf"))
        return merge_candidates(cand.view(b, -1), scores.view(b, -1), k + margin)

    def _code_token(self, prev: torch.Tensor, level: int, position: int) -> torch.Tensor:
        x = self.code_emb(prev + self.offsets[level]) + self.type_emb.weight[level]
        return (x + self.pos_emb.weight[position])[:, None]  # (N, 1, d)
