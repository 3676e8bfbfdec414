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

Item encoder (`item_encoder`): "transformer" = a light transformer over the item's text
tokens (all-MiniLM-L6-v2's word-piece vocabulary) with a [CLS] output, as in the paper;
"projection" = a trainable MLP over the frozen sentence embedding (the cheap preset).

Inference is coarse-to-fine (Sec. 3.3): beam search the top-M sparse IDs, generate v̂_k
for each, take the items under that sparse ID (or the global nearest neighbours) and fuse
with BeamFusion (`beam_fusion`). Cold items have a sparse ID and a dense vector, so they
can be retrieved. NOTE: the ablations are inference switches of one trained model
(`variants`), not separately trained models as in the paper's Table 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from sidrec.models import register
from sidrec.models.base import Batch, Catalogue, InferenceConfig, Recommender, init_weights
from sidrec.models.beam import SidIndex, beam_search
from sidrec.models.heads import mlp
from sidrec.models.retrieval import GroupedItems, ItemIndex
from sidrec.models.transformer import Decoder, Encoder, KVCache, StackConfig

Mode = Literal["fusion", "no-dense", "no-sparse", "no-beamfusion"]


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


@dataclass(frozen=True)
class CobraInference(InferenceConfig):
    """How a trained COBRA decodes (not part of what was trained)."""

    mode: Mode = "fusion"  # the others are inference-time ablation switches
    beam: int = 20  # M sparse IDs kept by the beam
    neighbours: int = 10  # N items per sparse ID
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


class ItemEncoder(nn.Module):
    """Item text -> dense vector v [n_items, d_model] (the trainable half of the cascade)."""

    def __init__(self, cfg: CobraConfig, catalogue: Catalogue) -> None:
        super().__init__()
        self.kind = cfg.item_encoder
        self.text_tokens = cfg.text_tokens
        if self.kind == "projection":
            if catalogue.text_emb is None:
                raise ValueError("item_encoder=projection needs embeddings.npy (sidrec embed)")
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

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items [...] dense ids -> v [..., d_model]."""
        if self.kind == "projection":
            return self.proj(self.text_emb[items])
        ids = self.token_ids[items.reshape(-1)]  # (n, T) word pieces, [CLS] first
        x = self.tok(ids) + self.pos.weight[: ids.shape[1]]
        h = self.encoder(x, ids == 0)  # (n, T, d)
        return self.out(h[:, 0]).view(*items.shape, -1)  # [CLS] output


def _wordpiece_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from sidrec.embed import DEFAULT_ENCODER, resolve_encoder

    return AutoTokenizer.from_pretrained(resolve_encoder(DEFAULT_ENCODER))


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
        self.levels = len(catalogue.codebook_sizes) - 1  # sparse ID = codes w/o collision
        self.sizes = tuple(catalogue.codebook_sizes[: self.levels])
        offsets = torch.tensor([0, *self.sizes[:-1]]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)  # (L,)
        d = cfg.d_model
        self.code_emb = nn.Embedding(sum(self.sizes), d)
        self.type_emb = nn.Embedding(self.levels + 1, d)  # L sparse slots + the dense slot
        self.pos_emb = nn.Embedding(cfg.max_len + 1, d)
        self.dense_in = nn.Linear(d, d)
        self.item_encoder = ItemEncoder(cfg, catalogue)
        self.decoder = Decoder(StackConfig(cfg.n_layers, d, cfg.n_heads, cfg.head_dim,
                                           cfg.d_ff, cfg.dropout), cross_attention=False)
        self.sparse_heads = nn.ModuleList(nn.Linear(d, v) for v in self.sizes)
        self.dense_head = mlp(d, d, d)
        self.drop = nn.Dropout(cfg.dropout)
        # At PyTorch's N(0, 1) embedding default the type and position embeddings dwarfed
        # dense_in(v), the item's text in its dense token (ML-100k seed 0 test NDCG@10:
        # 0.0338 before, 0.0373 after).
        self.apply(init_weights)
        self._set_tables(catalogue)

    # ----------------------------------------------------------------- catalogue tables

    def _set_tables(self, catalogue: Catalogue) -> None:
        sparse = catalogue.sids[:, : self.levels].long()
        self.register_buffer("sparse", sparse, persistent=False)  # (n_items, L)
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
            sparse = self.sparse.cpu()  # (n_items, L)
            index = SidIndex(torch.unique(sparse, dim=0), self.sizes)
            groups = GroupedItems(index.lookup(sparse).to(device))
            self._tables = (groups, index.to(device))
        return self._tables

    def set_catalogue(self, catalogue: Catalogue) -> None:
        super().set_catalogue(catalogue)
        self.item_encoder.set_catalogue(catalogue)
        device = self.offsets.device
        self._set_tables(catalogue)
        self.to(device)

    def train(self, mode: bool = True) -> Cobra:
        self._item_vectors = None  # item vectors change with the weights
        return super().train(mode)

    # ----------------------------------------------------------------- embedding

    def _cascade(
        self, items: torch.Tensor, vectors: torch.Tensor, shift: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """items [B, n] (-1 = padding), their v [B, n, d] -> (tokens [B, n*(L+1), d], padding).

        Positions count back from the item being predicted (position 0), as SASRec's and
        TIGER's do, so the padding width never changes a result: the training window ends
        with its target (shift 0), a history at inference one item earlier (shift 1).
        """
        b, n = items.shape
        pad = items < 0  # (B, n)
        back = torch.arange(n - 1, -1, -1, device=items.device) + shift
        pos = self.pos_emb(back)  # (n, d)
        sparse = self.code_emb(self.sparse[items.clamp_min(0)] + self.offsets)  # (B, n, L, d)
        sparse = sparse + self.type_emb.weight[: self.levels]
        dense = self.dense_in(vectors) + self.type_emb.weight[self.levels]  # (B, n, d)
        x = torch.cat([sparse, dense[:, :, None]], dim=2) + pos[:, None]  # (B, n, L+1, d)
        x = x.view(b, n * (self.levels + 1), -1)
        return self.drop(x), pad.repeat_interleave(self.levels + 1, dim=1)

    def _sparse_tokens(self, codes: torch.Tensor, position: int) -> torch.Tensor:
        """codes [N, t] of the next item (levels 0..t-1) -> tokens [N, t, d]."""
        t = codes.shape[1]
        x = self.code_emb(codes + self.offsets[:t]) + self.type_emb.weight[:t]
        return x + self.pos_emb.weight[position]

    # ----------------------------------------------------------------- training

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Every item of the window with a predecessor is a target (`trains_every_position`).

        Cascade of items s_1..s_m (history + target), token j of item i at i*(L+1)+j:
        the dense token of s_{i-1} predicts code 0 of s_i, code t-1 of s_i predicts code t,
        and the last code of s_i predicts v̂_i, which has seen s_i's codes but not its v.
        """
        seq = torch.cat([batch["history"], batch["target"][:, None]], dim=1)
        seq = seq[:, -(self.cfg.max_len + 1):]  # (B, m)
        b, m = seq.shape
        L = self.levels
        real = seq >= 0
        items = seq.clamp_min(0)
        # v of each distinct item once: the in-batch InfoNCE candidates and the inputs.
        uniq, inverse = torch.unique(items, return_inverse=True)  # (U,), (B, m)
        v = self.item_encoder(uniq)  # (U, d)
        x, pad = self._cascade(seq, v[inverse])
        h = self.decoder(x, pad).view(b, m, L + 1, -1)  # (B, m, L+1, d)
        is_target = real[:, :-1]  # s_i (i >= 1) whose predecessor is real
        codes = self.sparse[items[:, 1:]][is_target]  # (N, L)
        inputs = torch.cat([h[:, :-1, L:], h[:, 1:, : L - 1]], dim=2)[is_target]  # (N, L, d)
        sparse_loss = sum(
            F.cross_entropy(head(inputs[:, t]), codes[:, t])
            for t, head in enumerate(self.sparse_heads)
        ) / L
        v_hat = F.normalize(self.dense_head(h[:, 1:, L - 1][is_target]), dim=-1)  # (N, d)
        logits = v_hat @ F.normalize(v, dim=-1).T / self.cfg.temperature  # (N, U)
        positive = inverse[:, 1:][is_target]  # (N,)
        # Negatives: the batch's other items, minus those of the target's own sequence.
        rows = torch.arange(b, device=seq.device)[:, None].expand(b, m)  # (B, m)
        in_seq = torch.zeros(b, len(uniq), dtype=torch.bool, device=seq.device)
        in_seq[rows[real], inverse[real]] = True  # (B, U)
        row = rows[:, 1:][is_target]  # (N,)
        excluded = in_seq[row] | ~in_seq.any(0)  # padding-only columns are not items
        excluded[torch.arange(len(row)), positive] = False
        dense_loss = F.cross_entropy(logits.masked_fill(excluded, float("-inf")), positive)
        total = sparse_loss + self.cfg.dense_weight * dense_loss
        return {"loss": total, "loss_sparse": sparse_loss, "loss_dense": dense_loss}

    # ----------------------------------------------------------------- inference

    def item_vectors(self) -> torch.Tensor:
        """v of every catalogue item [n_items, d], cached until the weights may change."""
        if self._item_vectors is None or len(self._item_vectors) != self.catalogue.n_items:
            items = torch.arange(self.catalogue.n_items, device=self.offsets.device)
            self._item_vectors = torch.cat(
                [self.item_encoder(chunk) for chunk in items.split(4096)])
        return self._item_vectors

    def variants(self) -> dict[str, Any]:
        own = self.inference
        return {"": own, **{m: replace(own, mode=m)
                            for m in ("no-dense", "no-sparse", "no-beamfusion")}}

    @torch.no_grad()
    def recommend(
        self, history: torch.Tensor, users: torch.Tensor, k: int, inference: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self._inference(inference)
        mode = cfg.mode
        n_nb = cfg.neighbours
        width = max(cfg.beam, math.ceil(k / n_nb))  # M grows with K
        history = history[:, -self.cfg.max_len :]
        b, n = history.shape
        vectors = self.item_vectors()
        x, pad = self._cascade(history, vectors[history.clamp_min(0)], shift=1)
        hidden, cache = self.decoder.prefill(x, pad)
        first = torch.log_softmax(self.sparse_heads[0](hidden[:, -1]), dim=-1)  # (B, V_0)

        def step(prev: torch.Tensor, t: int, state: KVCache):
            if t == 0:
                return first, state
            h = self.decoder.step(self._code_token(prev, t - 1, 0), state)  # (N, 1, d)
            return torch.log_softmax(self.sparse_heads[t](h[:, -1]), dim=-1), state

        groups, sparse_index = self.tables()
        allowed = sparse_index if cfg.constrained else None
        result = beam_search(step, cache, b, width, sparse_index, allowed)
        m = result.sids.shape[1]
        # v̂_k: the history prefix (shared, cached) + the beam's L sparse tokens.
        fresh = KVCache(own_k=[None] * len(self.decoder.blocks),
                        own_v=[None] * len(self.decoder.blocks), prefix_k=cache.prefix_k,
                        prefix_v=cache.prefix_v, prefix_pad=cache.prefix_pad)
        codes = result.sids.reshape(b * m, self.levels)
        h = self.decoder.step(self._sparse_tokens(codes, 0), fresh)  # (B*M, L, d)
        v_hat = self.dense_head(h[:, -1])  # (B*M, d)
        valid = torch.isfinite(result.log_probs).view(-1)
        if mode == "no-sparse":
            # Dense only: the best beam's v̂ against the whole catalogue.
            extra = n if cfg.exclude_history else 0  # room for the seen items dropped below
            ids, cos = ItemIndex(vectors).search(v_hat.view(b, m, -1)[:, 0], k + extra)
            if cfg.exclude_history:
                cos = cos.masked_fill(_seen(ids, history), float("-inf"))
            return _merge_candidates(ids, cos, k)
        if cfg.retrieval == "global":
            cand, cos = ItemIndex(vectors).search(v_hat, n_nb)  # (B*M, N)
        else:
            group = sparse_index.lookup(codes)  # (B*M,) -1 for no catalogue sparse ID
            cand, cos = groups.neighbours(v_hat, group, vectors)
            if cand.shape[1] > n_nb:
                cos, top = cos.topk(n_nb, dim=1)
                cand = cand.gather(1, top)
        cos = cos.masked_fill(~valid[:, None] | (cand < 0), float("-inf"))
        cand, cos = cand.view(b, m, -1), cos.view(b, m, -1)
        if cfg.exclude_history:  # seen items are no candidates: BeamFusion never sees them
            cos = cos.masked_fill(_seen(cand.view(b, -1), history).view_as(cos), float("-inf"))
        if mode == "no-beamfusion":
            scores = cos  # rank the beams' candidates by cosine alone
        else:
            psi = 0.0 if mode == "no-dense" else cfg.psi
            scores = beam_fusion(result.log_probs, cos, cfg.tau, psi)
            # a dead beam's or a missing candidate's item is no recommendation
            scores = scores.masked_fill(~torch.isfinite(cos), float("-inf"))
        return _merge_candidates(cand.view(b, -1), scores.view(b, -1), k)

    def _code_token(self, prev: torch.Tensor, level: int, position: int) -> torch.Tensor:
        x = self.code_emb(prev + self.offsets[level]) + self.type_emb.weight[level]
        return (x + self.pos_emb.weight[position])[:, None]  # (N, 1, d)


def _seen(items: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """items [B, C] that occur in the row's history [B, L] -> [B, C] bool."""
    real = history >= 0
    return ((items[:, :, None] == history[:, None, :]) & real[:, None, :]).any(-1)


def _merge_candidates(
    items: torch.Tensor, scores: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k distinct items from candidates [B, C] (-1 = none); an item's best score counts."""
    scores = scores.masked_fill(items < 0, float("-inf"))
    order = scores.argsort(dim=1, descending=True)
    items, scores = items.gather(1, order), scores.gather(1, order)
    # After sorting, keep the first occurrence of each item in a row.
    srt, idx = items.sort(dim=1, stable=True)
    dup_sorted = torch.zeros_like(srt, dtype=torch.bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = torch.zeros_like(dup_sorted).scatter(1, idx, dup_sorted)
    scores = scores.masked_fill(dup | (items < 0), float("-inf"))
    top, pos = scores.topk(min(k, scores.shape[1]), dim=1)
    out = items.gather(1, pos).masked_fill(~torch.isfinite(top), -1)
    if out.shape[1] < k:
        pad = k - out.shape[1]
        out = F.pad(out, (0, pad), value=-1)
        top = F.pad(top, (0, pad), value=float("-inf"))
    return out, top
