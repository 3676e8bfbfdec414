"""LIGER: TIGER's generative retrieval fused with dense retrieval, so cold items count.

Yang et al., "Unifying Generative and Dense Retrieval for Sequential Recommendation"
(arXiv 2411.18814), Sec. 4.

LIGER = `SIDEncoder` with the text input + `GenerativeSIDHead` + `DenseHead`:
- input (Sec. 4.1): each history item contributes its n_codes SID tokens, and every token
  of the item also carries an MLP projection of the item's text embedding (the same
  vector for all its codes), plus the item-position and code-level position embeddings;
- generative head: next-token cross-entropy on the target SID, exactly as TIGER
  (`loss_gen`);
- dense head: the encoder output at the last history position, projected, against every
  warm item's projected text embedding; logits cos / τ; softmax CE on the target
  (`loss_dense`). Cold items are masked out of this softmax: they are never a training
  target and never a negative, so their text embedding is used only at inference.
The total is `gen_weight * loss_gen + dense_weight * loss_dense` (default 1 : 1).

Inference (`LIGERInference.mode`):
- "generative": TIGER's beam search;
- "dense": cos(u, e_a) / τ against all items, warm and cold;
- "hybrid" (the paper's method, Sec. 4.2): `liger_rerank`. K = `hybrid_k` (the paper:
  20, also 40-100), the first K of one `hybrid_beam`-wide beam (every K row of
  `variants()` reads the same beam, searched once per batch: `sharing_variants`). A larger
  K lets fewer cold items, never pushed down as negatives, crowd out warm ones: more
  in-set hits, fewer cold ones; so the headline K is chosen on *overall* validation NDCG
  (`best_hybrid_k`). A cold pool of `cold_index_min` items or more is searched through a
  faiss IVF index over the cold items' vectors (`ItemIndex`: the cells it scans are
  calibrated on its first queries to find 0.99 of the exact top-10, else it stays exact;
  `cold_probe` fixes a fraction instead), and only the beam's K items are scored besides;
  smaller pools are scored whole.

NOTE (the official code, as we read it; the defaults follow it): one `item_proj` projects
the input text and the dense targets; the user state is not projected; LayerNorm and
dropout 0.5 on the summed inputs; every code of an item at the item's position; every K
from one 100-wide unconstrained beam. Each is a `LIGERConfig` / `LIGERInference` option;
sidrec's earlier choices (`liger_input.SIDREC_BEFORE`, constrained beam) stay named rows.
Measured on ML-100k holdout valid (seed 0, cpu preset, 3 epochs; overall NDCG@10 at the
best K, 95 % intervals about +-0.009; docs/selection-liger.md): official 0.0303 (K=50);
sidrec's old input 0.0288 (K=100), 0.0294 with its constrained beam; official with input
dropout 0.1 0.0376 (K=50), and 0.0361 (K=100) without the LayerNorm as well. So the cpu
preset deviates in `input_dropout` alone (0.1: at 0.5 the 3-epoch budget is not enough,
epoch-1 valid 0.0143 against 0.0269); the dataclass and the paper preset keep 0.5.

Dense (SID), the LIGER paper's diagnostic, is `dense-sid`: the same encoder input with the
dense head only (no decoder) and dense scoring.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F

from sidrec.errors import SidrecError
from sidrec.models import register
from sidrec.models.base import (
    Batch,
    Catalogue,
    Recommender,
    eval_mode,
    excluded_items,
    mask_history,
    top_scored,
)
from sidrec.models.catalogue import catalogue_sids, catalogue_text
from sidrec.models.generative import GenerativeSIDModel
from sidrec.models.heads import DenseHead
from sidrec.models.item_vectors import ItemVectors
from sidrec.models.liger_input import SIDREC_BEFORE, text_sid_encoder
from sidrec.models.retrieval import merge_candidates, seen_in_history
from sidrec.models.sid_parts import GenerativeSIDHead, SIDEncoderConfig
from sidrec.models.tiger import TIGERConfig, TIGERInference

Mode = Literal["hybrid", "generative", "dense"]


@dataclass(frozen=True)
class LIGERConfig(TIGERConfig):
    text_hidden: int = 256  # MLP width of the text projections (input and dense head)
    temperature: float = 0.07  # τ of the dense softmax
    gen_weight: float = 1.0
    dense_weight: float = 1.0
    # The official code's choices (defaults); `SIDREC_BEFORE` holds what sidrec did until
    # they were options, and a stored model without them loads with those (`stored`).
    shared_text_proj: bool = True  # one item_proj for the input text and the dense targets
    user_proj: bool = False  # a Linear on the user state before the cosine
    input_norm: bool = True  # LayerNorm on the summed input embeddings
    input_dropout: float = 0.5  # dropout on the inputs (the stack's `dropout` elsewhere)
    item_positions: bool = True  # every code of an item at the item's position

    @classmethod
    def stored(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A stored model_config written before these options existed means sidrec's old
        input, not the official one: its missing settings are filled from SIDREC_BEFORE
        (its weights have that shape), never from the new defaults."""
        if any(name in data for name in SIDREC_BEFORE):
            return data
        return {**SIDREC_BEFORE, "input_dropout": data.get("dropout", 0.1), **data}




@dataclass(frozen=True)
class LIGERInference(TIGERInference):
    mode: Mode = "hybrid"
    hybrid_k: int = 20  # K beam candidates joined with the cold items
    # The beam every hybrid K takes its top K from (width at least K): the official code
    # takes every K from one 100-wide unconstrained beam, so K = 10 .. 100 see one search.
    hybrid_beam: int = 100
    hybrid_constrained: bool = False
    hybrid_ks: tuple[int, ...] = (10, 20, 50, 100)  # K rows reported beside hybrid_k
    # Cold pools of at least this many items are searched with a faiss index (hybrid mode);
    # smaller ones are scored whole, every item for every user (see the module docstring).
    cold_index_min: int = 50_000
    # Fraction of the cold index's cells a query scans; None: the index's own, calibrated
    # on its first queries (models/item_index.py). With untrained weights' queries at 1 M
    # items (100k cold) 1/4 found 0.96 of the exact top-10, 1/2 0.99 (docs/benchmarks.md).
    cold_probe: float | None = None


class ColdTop(NamedTuple):
    """The dense scores `liger_rerank` needs, without scoring every item: s(u, a) of the
    beam's items, and the best items of the cold pool with theirs (from an index)."""

    beam: torch.Tensor  # [B, K] s(u, a) of B_K(u)'s items (-inf where there is none)
    cold_items: torch.Tensor  # [B, M] the M >= k best items of I_cold per user (-1: none)
    cold: torch.Tensor  # [B, M] their s(u, a)


def liger_rerank(
    beam_items: torch.Tensor, cold: torch.Tensor, dense_scores: torch.Tensor | ColdTop, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """LIGER's inference rule (Sec. 4.2): rank C(u) = B_K(u) ∪ I_cold by cos(u, e_a).

    B_K(u) = beam_items [B, K] (the beam's top K, -1 = no item), I_cold = cold [n_items]
    bool. The dense score s(u, a) (cos(u, e_a), or any increasing function of it) is
    either dense_scores [B, n_items], every item's (exact), or a `ColdTop`: s(u, a) of
    B_K(u) and of the M >= k best items of I_cold from an index over the cold pool. Both
    give the same top-k of C(u) when those M are I_cold's best (a cold item outside them
    is beaten by k items of C(u)); an approximate index returns them up to its recall.
    Returns the top-k of C(u) (items [B, k], scores [B, k]); items outside C(u) are never
    returned (-1 with score -inf when C(u) has fewer than k).
    """
    if isinstance(dense_scores, ColdTop):  # C(u)'s scores arrive as candidate lists
        items = torch.cat([beam_items, dense_scores.cold_items], dim=1)  # (B, K + M)
        scores = torch.cat([dense_scores.beam, dense_scores.cold], dim=1)
        return merge_candidates(items, scores, k)
    in_c = cold[None, :].expand_as(dense_scores).clone()  # (B, n_items)
    rows = torch.arange(len(beam_items), device=beam_items.device)[:, None]
    in_c[rows.expand_as(beam_items)[beam_items >= 0], beam_items[beam_items >= 0]] = True
    scores = dense_scores.masked_fill(~in_c, float("-inf"))
    return top_scored(scores, k)


@register
class LIGER(GenerativeSIDModel):
    """SIDEncoder (SID + text input) + GenerativeSIDHead + DenseHead; hybrid inference.
    The generative head's surface (generate, log_likelihood, exact_scores) is TIGER's
    (`GenerativeSIDModel`)."""

    name: ClassVar[str] = "liger"
    Config: ClassVar[type] = LIGERConfig
    Inference: ClassVar[type] = LIGERInference
    needs_sids: ClassVar[bool] = True
    needs_text: ClassVar[bool] = True
    supports_new_items: ClassVar[bool] = True

    def __init__(self, cfg: LIGERConfig, catalogue: Catalogue) -> None:
        super().__init__(cfg, catalogue)
        text = catalogue_text(catalogue, self.name)  # (n_items, d_text)
        d_text = text.shape[1]
        self.dense = DenseHead(d_text, cfg.text_hidden, cfg.d_model, cfg.temperature,
                               user_proj=cfg.user_proj)
        shared = self.dense.item_proj if cfg.shared_text_proj else None
        self.tokens, self.encoder = text_sid_encoder(cfg, catalogue, text, self.name, shared)
        self.gen = GenerativeSIDHead(self.tokens, cfg.stack(cfg.n_decoder_layers), catalogue.cold)
        self.register_buffer("text_emb", text, persistent=False)
        self.register_buffer("cold", catalogue.cold.bool(), persistent=False)
        self.dense_items = ItemVectors(self.dense.project_items, self.dense.item_proj.parameters)
        self._shared: dict[bytes, tuple[torch.Tensor, torch.Tensor]] | None = None

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        memory, pad = self.encoder(batch["history"], batch["user"], self.text_emb)
        target = batch["target"]
        loss_gen = self.gen.loss(memory, pad, target)
        items = self.dense.project_items(self.text_emb)  # (n_items, d)
        loss_dense = self.dense.loss(memory[:, -1], target, items, self.cold)
        total = self.cfg.gen_weight * loss_gen + self.cfg.dense_weight * loss_dense
        return {"loss": total, "loss_gen": loss_gen, "loss_dense": loss_dense}

    def encode(
        self, history: torch.Tensor, users: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """History [B, L] + users [B] -> (memory [B, S, d], pad [B, S])."""
        return self.encoder(history, users, self.text_emb)

    def user_vector(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Unit user vectors u [B, d]: the projected encoder output at the last position."""
        return self.dense.user_vectors(self.encode(history, users)[0][:, -1])

    def item_vectors(self) -> torch.Tensor:
        """Unit item vectors e_a [n_items, d] from the items' text."""
        return self.dense.item_vectors(self.text_emb)

    def items_added(self, catalogue: Catalogue, first_new: int) -> None:
        """The SID indexes, the cached item vectors and the cold-pool index take just the
        new rows."""
        super().items_added(catalogue, first_new)
        self.text_emb = catalogue_text(catalogue, self.name).to(self.text_emb.device)
        self.cold = catalogue.cold.bool().to(self.cold.device)
        self.dense_items.items_added(self.text_emb, first_new, self.cold)

    # -- inference -------------------------------------------------------------------

    @torch.no_grad()
    def score(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Dense scores cos(u, e_a) / τ of every item [B, n_items]."""
        with eval_mode(self):
            memory, _ = self.encode(history, users)
            return self.dense.scores(memory[:, -1], self.dense_items(self.text_emb))

    @torch.no_grad()
    def recommend(
        self, history: torch.Tensor, users: torch.Tensor, k: int, inference: Any = None,
        margin: int = 0, seen: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inference = self._inference(inference)
        if inference.mode == "generative":  # SID log-probabilities, as TIGER
            return super().recommend(history, users, k, inference, margin, seen)
        if inference.mode == "dense":  # the top k of `score`, every item's dense score
            return Recommender.recommend(self, history, users, k, inference, margin, seen)
        return self._hybrid(history, users, k + margin, inference,
                            excluded_items(inference, history, seen))

    @contextlib.contextmanager
    def sharing_variants(self) -> Iterator[None]:
        """While it is open, hybrid rows whose beams are alike (every K of `variants()`)
        reuse one encoder pass and one beam per batch of users: the evaluator runs each
        variant over the same batches. It holds [U, beam] items and [U, d] states."""
        self._shared = {}
        try:
            yield
        finally:
            self._shared = None

    def _beam_and_state(
        self, history: torch.Tensor, users: torch.Tensor, inference: LIGERInference,
        seen: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One encoder pass and one beam of width max(hybrid_beam, hybrid_k): (its items
        best first [B, W], the user states [B, d]); a K takes the first K items. Inside
        `sharing_variants` a batch seen before with the same beam settings is not rerun."""
        width = max(inference.hybrid_beam, inference.hybrid_k)
        key = None
        if self._shared is not None:
            digest = hashlib.blake2b(repr((width, inference.hybrid_constrained,
                                           inference.include_cold)).encode())
            for t in (history, users, seen):  # the batch itself, by value
                arr = torch.empty(0) if t is None else t.detach().cpu()
                digest.update(repr((tuple(arr.shape), t is None)).encode())
                digest.update(arr.numpy().tobytes())
            key = digest.digest()
            if key in self._shared:
                return self._shared[key]
        memory, pad = self.encode(history, users)
        out = self.gen.generate(memory, pad, width, inference.hybrid_constrained,
                                inference.include_cold, seen)
        result = (self.gen.top_k(out, width)[0], memory[:, -1])  # (B, W), (B, d)
        if key is not None:
            self._shared[key] = result
        return result

    def _hybrid(
        self, history: torch.Tensor, users: torch.Tensor, k: int, inference: LIGERInference,
        seen: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LIGER's rule: one encoder pass gives the beam's K items and the user state. The
        dense scores are every item's (a [B, n_items] matrix) below `cold_index_min` cold
        items, else those of the beam's K items and the cold index's best."""
        with eval_mode(self):
            seen = seen.to(self.text_emb.device) if seen is not None else None
            beam_all, state = self._beam_and_state(history, users, inference, seen)
            beam_items = beam_all[:, : inference.hybrid_k]  # (B, K)
            if int(self.cold.sum()) < inference.cold_index_min:  # exact: score every item
                dense = self.dense.scores(state, self.dense_items(self.text_emb))
                if seen is not None:
                    dense = mask_history(dense, seen)
                return liger_rerank(beam_items, self.cold, dense, k)
            u = self.dense.user_vectors(state)  # (B, d) unit
        tau = self.dense.temperature
        vectors = self.dense_items(self.text_emb)  # (n_items, d), projected once
        e = F.normalize(vectors[beam_items.clamp_min(0)], dim=-1)  # (B, K, d)
        beam = ((u[:, None] * e).sum(-1) / tau).masked_fill(beam_items < 0, float("-inf"))
        index = self.dense_items.pool_index(self.text_emb, self.cold)
        extra = seen.shape[1] if seen is not None else 0  # room for seen cold items
        cold_items, cos = index.search(u, k + extra, inference.cold_probe)  # (B, M)
        if seen is not None:
            cos = cos.masked_fill(seen_in_history(cold_items, seen), float("-inf"))
        return liger_rerank(beam_items, self.cold, ColdTop(beam, cold_items, cos / tau), k)

    def variants(self) -> dict[str, Any]:
        """Hybrid at the configured K (trained models are selected on it), then at every K
        of `hybrid_ks` and the paper's K = 20, all from one beam as wide as the largest K
        (the official code's; `sharing_variants` runs it once), then the two single-head
        modes."""
        own = self.inference
        ks = dict.fromkeys((own.hybrid_k, *own.hybrid_ks, 20))
        width = max(own.hybrid_beam, *ks)
        hybrid = {f"hybrid K={k}": replace(own, mode="hybrid", hybrid_k=k, hybrid_beam=width)
                  for k in ks}
        return {**hybrid, "generative": replace(own, mode="generative"),
                "dense": replace(own, mode="dense")}


def best_hybrid_k(metrics: dict[str, Any], key: str = "ndcg@10") -> int:
    """The K of the hybrid row with the best *overall* `key` on the validation split: the
    headline K. Not in-set: a larger K lets fewer cold items into the top 10, so in-set
    favours the largest K by construction, whatever it costs the cold targets."""
    if metrics.get("split") != "valid":
        raise SidrecError(f"K is chosen on the valid split, not {metrics.get('split')!r}")
    rows = {int(m[1]): float(r[key]) for r in metrics["rows"]
            if r["subset"] == "overall" and (m := re.fullmatch(r"hybrid K=(\d+)", r["variant"]))}
    if not rows:
        raise SidrecError("no hybrid K rows in these metrics")
    return max(rows, key=lambda k: (rows[k], -k))  # a tie goes to the smaller K


@dataclass(frozen=True)
class DenseSIDConfig(SIDEncoderConfig):
    text_hidden: int = 256  # MLP width of the text projections (input and dense head)
    temperature: float = 0.07  # τ of the dense softmax


@register
class DenseSID(Recommender):
    """Dense (SID): SIDEncoder (SID + text input) + DenseHead; no decoder, cosine scoring."""

    name: ClassVar[str] = "dense-sid"
    Config: ClassVar[type] = DenseSIDConfig
    needs_sids: ClassVar[bool] = True
    needs_text: ClassVar[bool] = True
    supports_new_items: ClassVar[bool] = True

    def __init__(self, cfg: DenseSIDConfig, catalogue: Catalogue) -> None:
        super().__init__(cfg, catalogue)
        text = catalogue_text(catalogue, self.name)  # (n_items, d_text)
        d_text = text.shape[1]
        self.tokens, self.encoder = text_sid_encoder(cfg, catalogue, text, self.name)
        self.dense = DenseHead(d_text, cfg.text_hidden, cfg.d_model, cfg.temperature)
        self.register_buffer("text_emb", text, persistent=False)
        self.register_buffer("cold", catalogue.cold.bool(), persistent=False)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        memory, _ = self.encoder(batch["history"], batch["user"], self.text_emb)
        items = self.dense.project_items(self.text_emb)  # (n_items, d)
        loss_dense = self.dense.loss(memory[:, -1], batch["target"], items, self.cold)
        return {"loss": loss_dense, "loss_dense": loss_dense}

    def user_vector(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Unit user vectors u [B, d]: the projected encoder output at the last position."""
        memory, _ = self.encoder(history, users, self.text_emb)
        return self.dense.user_vectors(memory[:, -1])

    def item_vectors(self) -> torch.Tensor:
        """Unit item vectors e_a [n_items, d] from the items' text."""
        return self.dense.item_vectors(self.text_emb)

    @torch.no_grad()
    def score(self, history: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """cos(u, e_a) / τ of every item [B, n_items]; `recommend` is its top-k."""
        with eval_mode(self):
            memory, _ = self.encoder(history, users, self.text_emb)
            return self.dense.scores(memory[:, -1], self.dense.project_items(self.text_emb))

    def items_added(self, catalogue: Catalogue, first_new: int) -> None:
        super().items_added(catalogue, first_new)
        self.tokens.set_codes(*catalogue_sids(catalogue, self.name))
        self.text_emb = catalogue_text(catalogue, self.name).to(self.text_emb.device)
        self.cold = catalogue.cold.bool().to(self.cold.device)
