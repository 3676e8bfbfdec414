"""The generative-SID surface that TIGER, TIGER (T) and LIGER share.

Each is an encoder over the history (`encode`) whose memory a `GenerativeSIDHead` (`gen`,
models/sid_parts.py) decodes into the next item's SID. What follows from that is written
once, here: beam search of the next SID (`generate`), the top k of that beam
(`recommend`), the log-likelihood of chosen items (`log_likelihood`) and of every item
(`exact_scores`, the beam's check), and keeping the SID tables in step when items are
added (`items_added`). Each model adds what is its own: TIGER nothing, LIGER its dense
head and hybrid inference (models/liger.py).

The inference config is a `TIGERInference` or an extension of it (`beam`, `constrained`,
`include_cold`, `score_chunk`, `exclude_history`).
"""

from __future__ import annotations

from typing import Any

import torch

from sidrec.models.base import Catalogue, Recommender, eval_mode, excluded_items
from sidrec.models.beam import BeamResult
from sidrec.models.catalogue import catalogue_sids
from sidrec.models.sid_parts import GenerativeSIDHead, SIDTokens


class GenerativeSIDModel(Recommender):
    """A model whose `gen` decodes the next item's SID from `encode`'s memory; subclasses
    build `tokens` (shared by their encoder and `gen`), the encoder and `gen`."""

    tokens: SIDTokens
    gen: GenerativeSIDHead

    def encode(
        self, history: torch.Tensor, users: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """History [B, L] (left-padded with -1) + users [B] -> (memory [B, S, d], pad [B, S])."""
        raise NotImplementedError

    def item_codes(self, catalogue: Catalogue) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Each item's codes [n_items, n_codes] and the codebook sizes: its SID."""
        return catalogue_sids(catalogue, self.name)

    def items_added(self, catalogue: Catalogue, first_new: int) -> None:
        """The new items' codes join the vocabulary, and the SID indexes take just them."""
        super().items_added(catalogue, first_new)
        self.tokens.set_codes(*self.item_codes(catalogue))
        self.gen.set_items(catalogue.cold, first_new)

    @torch.no_grad()
    def generate(
        self, history: torch.Tensor, users: torch.Tensor, inference: Any = None,
        beam: int | None = None, seen: torch.Tensor | None = None,
    ) -> BeamResult:
        """Beam search of the next item's SID (width `beam`, default the inference
        config's): items / log-probs [B, beam], n_invalid. Under `exclude_history` no beam
        completes an item of `seen` (default: the history)."""
        inference = self._inference(inference)
        with eval_mode(self):
            memory, pad = self.encode(history, users)
            width = inference.beam if beam is None else beam
            return self.gen.generate(memory, pad, width, inference.constrained,
                                     inference.include_cold,
                                     excluded_items(inference, history, seen))

    @torch.no_grad()
    def recommend(
        self, history: torch.Tensor, users: torch.Tensor, k: int, inference: Any = None,
        margin: int = 0, seen: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k of a beam of width max(beam, k); scores are SID log-probabilities, and an
        invalid SID (unconstrained decoding) is item -1 with score -inf; the margin is the
        rest of that beam."""
        inference = self._inference(inference)
        out = self.generate(history, users, inference, beam=max(inference.beam, k), seen=seen)
        return self.gen.top_k(out, k + margin)

    @torch.no_grad()
    def log_likelihood(
        self, history: torch.Tensor, users: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        """log p(SID of items[b, m] | user b) for chosen items [B, M] -> [B, M] (-inf for -1).

        E.g. the targets (M = 1) for the overfitting diagnostic: in-set vs cold-start.
        """
        with eval_mode(self):
            memory, pad = self.encode(history, users)
            return self.gen.log_likelihood(memory, pad, items.to(memory.device))

    @torch.no_grad()
    def exact_scores(
        self, history: torch.Tensor, users: torch.Tensor, chunk: int | None = None
    ) -> torch.Tensor:
        """Log-likelihood of every catalogue item's SID (cold ones too): [B, n_items].

        Exact teacher forcing over all items, `chunk` items at a time (cost: n_items *
        n_codes decoder positions per user); checks the beam (a beam as wide as the
        catalogue returns exactly this ranking). For a few items per user, such as the
        targets, `log_likelihood` is far cheaper.
        """
        with eval_mode(self):
            memory, pad = self.encode(history, users)
            return self.gen.exact_scores(memory, pad, chunk or self.inference.score_chunk)
