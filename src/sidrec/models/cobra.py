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
item's text tokens, trained end to end as in the paper (`paper` preset), or a trainable
MLP over the frozen sentence embedding (`cpu` preset, the cheap one; its rows are
labelled "cobra (MLP items)").

NOTE deviations, each stated beside the rows (`diagnostics()`): the sparse loss is the
mean of the per-level cross-entropies, not their sum (a constant factor 1/S on
L_sparse, i.e. on its weight against L_dense); BeamFusion's item softmax runs within
each beam (our reading of Eq. 6: an item alone in its group gets its beam's whole
weight); under torchrun each process's InfoNCE draws its negatives from its own shard of
the batch, so P processes train with P times fewer negatives than one process on the
same global batch.

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
    Recommender,
    excluded_items,
    init_weights,
)
from sidrec.models.beam import SidIndex
from sidrec.models.cobra_decode import CobraInference, decode
from sidrec.models.heads import gather_rows, info_nce, mlp
from sidrec.models.item_encoder import ItemEncoder
from sidrec.models.retrieval import (
    GroupedItems,
)
from sidrec.models.transformer import Decoder, StackConfig

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
        # The init every model shares (not chosen on COBRA's data): at PyTorch's N(0, 1)
        # embedding default the type and position embeddings would dwarf dense_in(v), the
        # item's text in its dense token.
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

    @property
    def display_name(self) -> str:
        if self.has_dense and self.cfg.item_encoder == "projection":
            return f"{self.name} (MLP items)"  # not the paper's end-to-end text encoder
        return self.name

    def diagnostics(self) -> dict[str, Any]:
        """What the rows rest on: the item encoder, the loss and fusion readings (module
        NOTE), and how many items share a sparse ID (BeamFusion needs groups of several)."""
        facts: dict[str, Any] = {}
        if self.has_dense:
            facts["item_encoder"] = (
                "MLP over frozen sentence embeddings (cpu preset)"
                if self.cfg.item_encoder == "projection"
                else f"{self.cfg.text_layers}-layer text transformer, end to end (paper)")
        if self.levels:
            facts["sparse_loss"] = f"mean over {self.levels} levels (paper: sum)"
        if self.has_dense and self.levels:
            facts["beamfusion"] = "item softmax within each beam"
        if not self.levels:
            return facts
        groups, _ = self.tables()
        sizes = (groups.members >= 0).sum(dim=1).float()  # (G,)
        return {**facts, "sparse_id": f"{self.levels} levels of {list(self.sizes)} codes",
                "groups": len(sizes), "items_per_group_mean": round(sizes.mean().item(), 2),
                "items_per_group_median": sizes.median().item(),
                "items_per_group_max": int(sizes.max()),
                "items_alone": round((sizes == 1).sum().item() / self.catalogue.n_items, 3)}

    def items_added(self, catalogue: Catalogue, first_new: int) -> None:
        super().items_added(catalogue, first_new)  # the tables below are rebuilt whole
        if self.has_dense:
            self.item_encoder.set_catalogue(catalogue)
        device = self.offsets.device
        self._set_tables(catalogue)
        self.to(device)

    def train(self, mode: bool = True) -> Cobra:
        self._item_vectors = None  # item vectors change with the weights
        return super().train(mode)

    # ----------------------------------------------------------------- embedding

    def cascade(
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

    def sparse_tokens(self, codes: torch.Tensor, position: int) -> torch.Tensor:
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
        x, pad = self.cascade(seq, gather_rows(v, inverse) if v is not None else None)
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
        """Coarse-to-fine decoding with BeamFusion (`models/cobra_decode.py`)."""
        cfg = self._inference(inference)
        return decode(self, history, k + margin, cfg, excluded_items(cfg, history, seen))

    def code_token(self, prev: torch.Tensor, level: int, position: int) -> torch.Tensor:
        x = self.code_emb(prev + self.offsets[level]) + self.type_emb.weight[level]
        return (x + self.pos_emb.weight[position])[:, None]  # (N, 1, d)
