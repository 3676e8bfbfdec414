"""COBRA's two parts: the sparse ID and the dense vector of each item (Yang et al., arXiv
2503.02453, Sec. 3.1-3.2).

A COBRA model (models/cobra.py) holds one or both: `cobra` both (the cascade [sparse ID,
v]), `cobra-no-dense` the sparse part alone, `cobra-no-sparse` the dense part alone
(models/cobra_ablations.py). Each part brings what it adds to the model: its inputs, its
head and loss, and what decoding reads of it. The tokens' embedding tables and the causal
decoder are the model's, shared by both parts.

- `SparseIDs`: each item's sparse ID (the first S levels of its SID), a linear head per
  level that predicts the next item's code at that level (cross-entropy per level, Eq. 3),
  and the tables decoding needs: the distinct sparse IDs as a prefix index for the beam,
  and the items under each (`GroupedItems`).
- `DenseVectors`: the trainable item encoder (models/item_encoder.py) giving each item's
  v, the projection of v into the item's dense token, and the head that predicts the next
  item's v̂, trained with in-batch InfoNCE (Eq. 4, `heads.info_nce`).

Neither initialises its weights: the model applies `init_weights` to all its modules at
once, in their order, so a seed draws the same weights whichever parts a model holds.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sidrec.errors import SidrecError
from sidrec.models.base import Catalogue, eval_mode
from sidrec.models.beam import SidIndex
from sidrec.models.heads import info_nce, mlp
from sidrec.models.item_encoder import ItemEncoder
from sidrec.models.item_groups import GroupedItems
from sidrec.models.item_vectors import ItemVectors

ENCODE_CHUNK = 4096  # items per item-encoder call when every item's v is computed


class SparseIDs(nn.Module):
    """Each item's sparse ID (codes [n_items, S], a buffer) and the heads predicting it.

    S = `sparse_levels` leading SID levels; 0 means every level but the collision token
    (`whole_sid=False`: COBRA's sparse ID, shared by several items) or the full SID
    (`whole_sid=True`: one item per sparse ID, the decoder-only TIGER control).
    """

    def __init__(self, d_model: int, catalogue: Catalogue, sparse_levels: int, whole_sid: bool,
                 model: str) -> None:
        super().__init__()
        n_sid = len(catalogue.codebook_sizes)
        if sparse_levels >= n_sid:
            raise SidrecError(
                f"{model}: sparse_levels={sparse_levels} but the SIDs have {n_sid - 1} "
                f"levels before the collision token; use 1..{n_sid - 1}")
        self.levels = sparse_levels or (n_sid if whole_sid else n_sid - 1)
        self.whole_sid = self.levels == n_sid  # a sparse ID names one item
        self.sizes = tuple(catalogue.codebook_sizes[: self.levels])
        self.heads = nn.ModuleList(nn.Linear(d_model, v) for v in self.sizes)
        self.set_items(catalogue)

    def set_items(self, catalogue: Catalogue, first_new: int = 0) -> None:
        """The sparse IDs of `catalogue`'s items. Items first_new.. were appended to the
        catalogue these tables were built for (`Recommender.items_added`): they join the
        tables; first_new 0: the tables are rebuilt on use."""
        codes = catalogue.sids[:, : self.levels].long()  # (n_items, S)
        old = getattr(self, "codes", None)
        self.register_buffer("codes", codes if old is None else codes.to(old.device),
                             persistent=False)
        tables = getattr(self, "_tables", None)
        self._tables: tuple[GroupedItems, SidIndex] | None = None
        if first_new and tables is not None and len(tables[0].items) == first_new:
            self._tables = self._extended(*tables, self.codes[first_new:])

    @staticmethod
    def _extended(groups: GroupedItems, index: SidIndex, codes: torch.Tensor,
                  ) -> tuple[GroupedItems, SidIndex]:
        """The tables with new items of sparse IDs codes [m, S] appended: a new sparse ID
        is a new group (numbered after the others), a known one takes the item in; O(n)
        copies, where a rebuild sorts the whole catalogue."""
        group = index.lookup(codes.to(index.device)).cpu()  # (m,) -1: a new sparse ID
        fresh = group < 0
        new_ids, which = torch.unique(codes[fresh].cpu(), dim=0, return_inverse=True)
        numbers = torch.arange(len(index), len(index) + len(new_ids))
        group[fresh] = numbers[which]
        index = index.extended(new_ids, numbers)
        return groups.extended(group, len(groups.items)), index

    def tables(self) -> tuple[GroupedItems, SidIndex]:
        """Items per sparse ID and the sparse-ID index, on the codes' device.

        The index holds each distinct sparse ID once; its item for a sparse ID is the
        group id, so `index.lookup(codes)` gives the groups. Built on the CPU and moved,
        as every `SidIndex`.
        """
        device = self.codes.device
        if self._tables is None or self._tables[1].device != device:
            codes = self.codes.cpu()  # (n_items, S)
            index = SidIndex(torch.unique(codes, dim=0), self.sizes)
            groups = GroupedItems(index.lookup(codes), len(index))
            self._tables = (groups.to(device), index.to(device))
        return self._tables

    def loss(self, inputs: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Mean over the S levels of the cross-entropy of code t of codes [N, S], predicted
        from inputs[:, t] [N, S, d] (the decoder state of the token before it)."""
        return sum(F.cross_entropy(head(inputs[:, t]), codes[:, t])
                   for t, head in enumerate(self.heads)) / self.levels

    def log_probs(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """Decoder states [N, d] -> log-probs [N, V_level] of the next code at `level`."""
        return torch.log_softmax(self.heads[level](hidden), dim=-1)

    def facts(self, n_items: int) -> dict[str, Any]:
        """`diagnostics`: the loss reading, and how many items share a sparse ID."""
        groups, _ = self.tables()
        sizes = groups.sizes.float()  # (G,)
        return {"sparse_loss": f"mean over {self.levels} levels (paper: sum)",
                "sparse_id": f"{self.levels} levels of {list(self.sizes)} codes",
                "groups": len(sizes), "items_per_group_mean": round(sizes.mean().item(), 2),
                "items_per_group_median": sizes.median().item(),
                "items_per_group_max": int(sizes.max()),
                "items_alone": round((sizes == 1).sum().item() / n_items, 3)}


class DenseVectors(nn.Module):
    """Each item's v from the item encoder, its dense token and the head predicting v̂.

    `cfg`: a `CobraConfig` (d_model, temperature, and the item encoder's settings).
    """

    def __init__(self, cfg: Any, catalogue: Catalogue) -> None:
        super().__init__()
        d = cfg.d_model
        self.input = nn.Linear(d, d)  # v -> the dense token
        self.encoder = ItemEncoder(cfg, catalogue)
        self.head = mlp(d, d, d)  # decoder state -> v̂
        self.temperature = cfg.temperature
        self._vectors = ItemVectors(self.encoder.encode, self.encoder.parameters,
                                    chunk=ENCODE_CHUNK)

    def set_items(self, catalogue: Catalogue, first_new: int = 0) -> None:
        """The catalogue's items; first_new > 0: items first_new.. were appended, and only
        their v is computed (`ItemVectors.items_added`)."""
        self.encoder.set_catalogue(catalogue)
        with eval_mode(self.encoder):
            self._vectors.items_added(self.encoder.inputs, first_new)

    def vectors(self) -> torch.Tensor:
        """v of every catalogue item [n_items, d], for retrieval: without dropout, and
        kept until the weights or the catalogue change (`ItemVectors`)."""
        with eval_mode(self.encoder):
            return self._vectors(self.encoder.inputs)

    def loss(self, source: torch.Tensor, v: torch.Tensor, inverse: torch.Tensor,
             real: torch.Tensor, is_target: torch.Tensor) -> torch.Tensor:
        """In-batch InfoNCE of v̂ = head(source) [N, d] against the batch's distinct items'
        v [U, d] (Eq. 4).

        The window's items are inverse [B, m] (rows of v), real [B, m] where not padding;
        the N targets are the items 1.. whose predecessor is real (is_target [B, m-1]).
        A target's negatives are the batch's other items, minus those of its own sequence.
        """
        b, m = inverse.shape
        v_hat = self.head(source)  # (N, d)
        positive = inverse[:, 1:][is_target]  # (N,)
        rows = torch.arange(b, device=inverse.device)[:, None].expand(b, m)  # (B, m)
        in_seq = torch.zeros(b, len(v), dtype=torch.bool, device=inverse.device)
        in_seq[rows[real], inverse[real]] = True  # (B, U)
        row = rows[:, 1:][is_target]  # (N,)
        excluded = in_seq[row] | ~in_seq.any(0)  # padding-only columns are not items
        excluded[torch.arange(len(row)), positive] = False
        return info_nce(v_hat, v, positive, self.temperature, excluded)

    def facts(self, cfg: Any) -> dict[str, Any]:
        """`diagnostics`: which item encoder gives v."""
        return {"item_encoder": "MLP over frozen sentence embeddings (cpu preset)"
                if cfg.item_encoder == "projection"
                else f"{cfg.text_layers}-layer text transformer, end to end (paper)"}
