"""COBRA: cascaded sparse-dense generative retrieval with BeamFusion.

Yang et al., "Sparse Meets Dense: Unified Generative Recommendations with Cascaded
Sparse-Dense Representations" (Baidu, arXiv 2503.02453), Sec. 3.

Each item is a cascade [e(ID_1) ... e(ID_L), v]: its sparse ID (the first L semantic-ID
codes, without the collision token) and a dense vector v from a trainable item encoder.
The two halves are parts (models/cobra_parts.py: `SparseIDs`, `DenseVectors`) that a
COBRA model holds one or both of (`CobraBase`). One decoder-only causal transformer reads
the history's cascades and
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

Ablations (the paper's Table 4) are separately *trained* models, each holding one part
(`models/cobra_ablations.py`).
One trained COBRA's inference-time switches (`variants`) are labelled "(inference)": "no-dense"
(ψ = 0) gives a beam's mass to all its sparse ID's items alike, "no-beamfusion" ranks by cosine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from sidrec.errors import SidrecError
from sidrec.models import register
from sidrec.models.base import Batch, Catalogue, Recommender, excluded_items, init_weights
from sidrec.models.cobra_decode import CobraInference, fuse
from sidrec.models.cobra_parts import DenseVectors, SparseIDs
from sidrec.models.heads import gather_rows
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
    # What an item is in the sequence: [sparse ID, v] (cobra), its sparse ID only
    # (cobra-no-dense), or v only (cobra-no-sparse). Fixed by the model, whose parts it
    # names; it stays a setting so that config.json records it (and each stored model
    # keeps its config hash). Another value is refused (`CobraBase`).
    tokens: Tokens = "cascade"
    # Leading SID levels that form the sparse ID (0: every level but the collision token;
    # cobra-no-dense: 0 is the full SID, one item per sparse ID).
    sparse_levels: int = 0


# Parameter names of checkpoints written before COBRA was split into parts (up to sidrec
# commit 29ebc69): each old prefix and the part's name for it. Loading renames them
# (`_load_legacy_names`); the parameters kept their order, so an optimiser state saved
# then (a resume checkpoint) still lines up.
LEGACY_NAMES = {"dense_in.": "dense.input.", "item_encoder.": "dense.encoder.",
                "dense_head.": "dense.head.", "sparse_heads.": "sparse.heads."}


def _load_legacy_names(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                       *_: Any) -> None:
    """`load_state_dict` pre-hook: the old names of `state_dict` renamed in place."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        name = key[len(prefix):]
        old = next((o for o in LEGACY_NAMES if name.startswith(o)), None)
        if old is not None:
            state_dict[prefix + LEGACY_NAMES[old] + name[len(old):]] = state_dict.pop(key)


class CobraBase(Recommender):
    """The decoder-only model every COBRA is: each item's tokens in the sequence, the
    causal decoder, and the parts it holds (`sparse`, `dense`: one or both).

    Item i's T = S + D tokens are its sparse ID's S codes (with the sparse part) and its
    dense token (with the dense part, D = 1), each embedded with its slot (`type_emb`) and
    the item's position (`pos_emb`); the code table (`code_emb`) embeds the sparse codes.
    A subclass builds its parts and decodes with them (`decode`).
    """

    Inference = CobraInference
    supports_new_items = True
    trains_every_position = True

    def __init__(self, cfg: CobraConfig, catalogue: Catalogue, sparse: SparseIDs | None,
                 dense: DenseVectors | None) -> None:
        super().__init__(cfg, catalogue)
        held = {(True, True): "cascade", (True, False): "sparse",
                (False, True): "dense"}[sparse is not None, dense is not None]
        if cfg.tokens != held:
            raise SidrecError(
                f"{self.name}: tokens={cfg.tokens!r}, but this model's items are {held!r} "
                "tokens; each kind is a model of its own: cobra (cascade), cobra-no-dense "
                "and cobra-no-dense-coarse (sparse), cobra-no-sparse (dense)")
        self.levels = sparse.levels if sparse is not None else 0  # S
        self.slots = self.levels + int(dense is not None)  # T
        sizes = sparse.sizes if sparse is not None else ()
        offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0)[: self.levels]
        self.register_buffer("offsets", offsets, persistent=False)  # (S,)
        d = cfg.d_model
        # Without a sparse part no code is read, but the table keeps the one row it always
        # had: cobra-no-sparse's checkpoints hold it, and a seed draws the same weights.
        self.code_emb = nn.Embedding(max(1, sum(sizes)), d)
        self.type_emb = nn.Embedding(self.slots, d)  # S sparse slots (+ the dense slot)
        self.pos_emb = nn.Embedding(cfg.max_len + 1, d)
        self.dense = dense
        self.decoder = Decoder(StackConfig(cfg.n_layers, d, cfg.n_heads, cfg.head_dim,
                                           cfg.d_ff, cfg.dropout), cross_attention=False)
        self.sparse = sparse
        self.drop = nn.Dropout(cfg.dropout)
        # The init every model shares (not chosen on COBRA's data): at PyTorch's N(0, 1)
        # embedding default the type and position embeddings would dwarf the dense token.
        # One pass over the modules in the order above: the order weights are drawn in.
        self.apply(init_weights)
        self.register_load_state_dict_pre_hook(_load_legacy_names)

    @property
    def display_name(self) -> str:
        if self.dense is not None and self.cfg.item_encoder == "projection":
            return f"{self.name} (MLP items)"  # not the paper's end-to-end text encoder
        return self.name

    def diagnostics(self) -> dict[str, Any]:
        """What the rows rest on: the item encoder, the loss reading (module NOTE), and how
        many items share a sparse ID (BeamFusion needs groups of several)."""
        facts: dict[str, Any] = {}
        if self.dense is not None:
            facts.update(self.dense.facts(self.cfg))
        if self.sparse is not None:
            facts.update(self.sparse.facts(self.catalogue.n_items))
        return facts

    def items_added(self, catalogue: Catalogue, first_new: int) -> None:
        super().items_added(catalogue, first_new)
        device = self.offsets.device
        for part in (self.sparse, self.dense):  # each takes just the new items in
            if part is not None:
                part.set_items(catalogue, first_new)
        self.to(device)  # the new catalogue's tables arrive on the CPU

    # ----------------------------------------------------------------- embedding

    def cascade(
        self, items: torch.Tensor, vectors: torch.Tensor | None, shift: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """items [B, n] (-1 = padding), their v [B, n, d] -> (tokens [B, n*T, d], padding).

        Positions count back from the item being predicted (position 0), as SASRec's and
        TIGER's do, so the padding width never changes a result: the training window ends
        with its target (shift 0), a history at inference one item earlier (shift 1).
        """
        b, n = items.shape
        pad = items < 0  # (B, n)
        back = torch.arange(n - 1, -1, -1, device=items.device) + shift
        parts = []
        if self.sparse is not None:
            codes = self.sparse.codes[items.clamp_min(0)]  # (B, n, S)
            parts.append(self.code_emb(codes + self.offsets) + self.type_emb.weight[: self.levels])
        if self.dense is not None:
            dense = self.dense.input(vectors) + self.type_emb.weight[self.levels]  # (B, n, d)
            parts.append(dense[:, :, None])
        x = torch.cat(parts, dim=2) + self.pos_emb(back)[:, None]  # (B, n, T, d)
        x = x.view(b, n * self.slots, -1)
        return self.drop(x), pad.repeat_interleave(self.slots, dim=1)

    def code_tokens(self, codes: torch.Tensor, first: int = 0, position: int = 0,
                    ) -> torch.Tensor:
        """codes [N, t] of levels first.. of the next item -> tokens [N, t, d] at `position`."""
        levels = slice(first, first + codes.shape[1])
        x = self.code_emb(codes + self.offsets[levels]) + self.type_emb.weight[levels]
        return x + self.pos_emb.weight[position]

    # ----------------------------------------------------------------- training

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Every item of the window with a predecessor is a target (`trains_every_position`).

        Items s_1..s_m (history + target), token j of item i at i*T+j, each predicted from
        the token before it: the last token of s_{i-1} predicts code 0 of s_i, code t-1 of
        s_i predicts code t, and the last code of s_i predicts v̂_i, which has seen s_i's
        codes but not its v (w/o sparse: the dense token of s_{i-1} predicts v̂_i).
        """
        seq = torch.cat([batch["history"], batch["target"][:, None]], dim=1)
        seq = seq[:, -(self.cfg.max_len + 1):]  # (B, m)
        b, m = seq.shape
        S, T = self.levels, self.slots
        real = seq >= 0
        # v of each distinct item once: the in-batch InfoNCE candidates and the inputs.
        uniq, inverse = torch.unique(seq.clamp_min(0), return_inverse=True)  # (U,), (B, m)
        v = self.dense.encoder(uniq) if self.dense is not None else None  # (U, d)
        x, pad = self.cascade(seq, gather_rows(v, inverse) if v is not None else None)
        h = self.decoder(x, pad)  # (B, m*T, d)
        source = h[:, T - 1 : -1].reshape(b, m - 1, T, -1)  # predicts token j of s_{i+1}
        is_target = real[:, :-1]  # s_i (i >= 1) whose predecessor is real
        terms: dict[str, torch.Tensor] = {}
        if self.sparse is not None:
            codes = self.sparse.codes[seq[:, 1:].clamp_min(0)][is_target]  # (N, S)
            terms["loss_sparse"] = self.sparse.loss(source[:, :, :S][is_target], codes)
        if self.dense is not None:
            terms["loss_dense"] = self.dense.loss(source[:, :, S][is_target], v, inverse,
                                                  real, is_target)
        total = terms.get("loss_sparse", 0.0) + self.cfg.dense_weight * terms.get(
            "loss_dense", 0.0)
        return {"loss": total, **terms}

    # ----------------------------------------------------------------- inference

    @torch.no_grad()
    def recommend(
        self, history: torch.Tensor, users: torch.Tensor, k: int, inference: Any = None,
        margin: int = 0, seen: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoding with the parts the model holds (`decode`, models/cobra_decode.py)."""
        cfg = self._inference(inference)
        return self.decode(history, k + margin, cfg, excluded_items(cfg, history, seen))

    def decode(self, history: torch.Tensor, n: int, cfg: CobraInference,
               excluded: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The top n items of each history [B, L] (`recommend`'s k + margin), leaving out
        the `excluded` items [B, S]."""
        raise NotImplementedError


@register
class Cobra(CobraBase):
    """COBRA: both parts, the cascade [sparse ID, v]; coarse-to-fine decoding."""

    name = "cobra"
    Config = CobraConfig
    needs_sids = True
    needs_text = True  # the projection item encoder, and embeddings in the fingerprint

    def __init__(self, cfg: CobraConfig, catalogue: Catalogue) -> None:
        super().__init__(cfg, catalogue,
                         SparseIDs(cfg.d_model, catalogue, cfg.sparse_levels, whole_sid=False,
                                   model=self.name),
                         DenseVectors(cfg, catalogue))

    def diagnostics(self) -> dict[str, Any]:
        return {**super().diagnostics(), "beamfusion": "item softmax within each beam"}

    def variants(self) -> dict[str, Any]:
        """The model's own inference, then the inference-time switches; the trained
        ablations are the models cobra-no-dense and cobra-no-sparse."""
        own = self.inference
        return {"": own, "no-dense (inference)": replace(own, mode="no-dense"),
                "no-sparse (inference)": replace(own, mode="no-sparse"),
                "no-beamfusion": replace(own, mode="no-beamfusion")}

    def decode(self, history: torch.Tensor, n: int, cfg: CobraInference,
               excluded: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Coarse to fine with BeamFusion (`cobra_decode.fuse`)."""
        return fuse(self, history, n, cfg, excluded)
