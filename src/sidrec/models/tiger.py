"""TIGER: generative retrieval with semantic IDs (Rajput et al., NeurIPS 2023).

An encoder reads the user's history as SID tokens (each item = its n_codes codes, the last
one the collision token), prefixed by a hashed user token (2,000 buckets, Sec. 4); a
decoder generates the next item's SID code by code from a BOS token; training is
next-token cross-entropy on the target SID (logged as `loss_gen`); inference is beam
search (`sidrec.models.beam`), constrained to catalogue SIDs or not.

TIGER (T), the LIGER paper's control, is the same seq2seq where every item is one atomic
token (its dense id) instead of a SID: `tokenizer: atomic`, registered as `tiger-t`.

Vocabulary (one embedding table shared by encoder and decoder inputs):
    0 PAD | 1 BOS | 2 .. 2+sum(V_t): code c at level t -> 2 + offset_t + c | user buckets
The output head scores the sum(V_t) code tokens; at level t only level t's codes compete.

NOTE (deviations from the reference T5 set-up): learned absolute positions instead of T5
relative position buckets; LayerNorm + GELU instead of RMSNorm + ReLU; the softmax at
level t is over level t's codes only (the reference softmaxes over the whole vocabulary,
where every other token is always wrong); the history is left-padded to `max_history`
items so that position embeddings count back from the most recent item.

Cold items: with constrained decoding the prefix index holds warm items only by default
(`include_cold=False`): a model trained on warm targets gives unseen SIDs little mass, and
the paper's TIGER has 0 cold-start recall. `include_cold=True` lets the beam reach them.
Unconstrained decoding maps any generated SID through the whole catalogue, cold included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from sidrec.errors import SidrecError
from sidrec.models import register
from sidrec.models.base import Batch, Catalogue, Recommender, init_weights
from sidrec.models.beam import BeamResult, SidIndex, beam_search, exact_scores
from sidrec.models.transformer import Decoder, Encoder, KVCache, StackConfig

PAD_TOKEN, BOS_TOKEN, FIRST_CODE = 0, 1, 2


@dataclass(frozen=True)
class TIGERConfig:
    """Defaults = the paper's model (Sec. 4: T5-style, 4+4 layers, d 128, 6 x 64, FFN 1024)."""

    tokenizer: Literal["sid", "atomic"] = "sid"  # atomic = TIGER (T), one token per item
    d_model: int = 128
    n_heads: int = 6
    head_dim: int = 64  # per head; attention width n_heads * head_dim = 384 != d_model
    d_ff: int = 1024
    n_encoder_layers: int = 4
    n_decoder_layers: int = 4
    dropout: float = 0.1
    user_buckets: int = 2000  # hashed user-id token prepended to the history; 0 = none
    max_history: int = 20  # items read (the most recent ones)
    beam: int = 20  # beam width of `recommend` (at least k is used)
    constrained: bool = True  # decode only catalogue SIDs (False: paper-faithful, may be invalid)
    include_cold: bool = False  # constrained index also holds cold items
    score_chunk: int = 256  # items per teacher-forcing chunk in `exact_scores`


PRESETS: dict[str, TIGERConfig] = {
    "paper": TIGERConfig(),
    # Small enough for MovieLens-100k on 2 CPU cores (see configs/tiger.yaml).
    "cpu": TIGERConfig(
        d_model=64, n_heads=4, head_dim=16, d_ff=256, n_encoder_layers=2, n_decoder_layers=2
    ),
}


def user_bucket(users: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Multiplicative (Knuth) hash of dense user ids into [0, n_buckets)."""
    return (users * 2654435761) % (2**32) % n_buckets


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Inference without dropout; the caller's train/eval state is restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@register
class TIGER(Recommender):
    """Encoder-decoder over SID tokens; `recommend` = beam search of the next item's SID."""

    name: ClassVar[str] = "tiger"
    Config: ClassVar[type] = TIGERConfig
    needs_sids: ClassVar[bool] = True
    supports_new_items: ClassVar[bool] = True  # new items get SIDs; see `include_cold`

    def __init__(self, cfg: TIGERConfig, catalogue: Catalogue) -> None:
        super().__init__(cfg, catalogue)
        codes, sizes = self._codes(catalogue)
        self.sizes = sizes
        self.n_codes = len(sizes)
        offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0)  # (n_codes,)
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("codes", codes, persistent=False)  # (n_items, n_codes)
        n_code_tokens = sum(sizes)
        self.first_user = FIRST_CODE + n_code_tokens
        stack = dict(
            d_model=cfg.d_model, n_heads=cfg.n_heads, head_dim=cfg.head_dim, d_ff=cfg.d_ff,
            dropout=cfg.dropout,
        )
        self.tok_emb = nn.Embedding(self.first_user + cfg.user_buckets, cfg.d_model)
        self.enc_pos = nn.Embedding(1 + cfg.max_history * self.n_codes, cfg.d_model)
        self.dec_pos = nn.Embedding(self.n_codes, cfg.d_model)
        self.encoder = Encoder(StackConfig(n_layers=cfg.n_encoder_layers, **stack))
        self.decoder = Decoder(StackConfig(n_layers=cfg.n_decoder_layers, **stack), True)
        self.head = nn.Linear(cfg.d_model, n_code_tokens, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        # level_bias[t] is 0 on level t's codes, -inf elsewhere: a per-level softmax.
        level = torch.repeat_interleave(torch.arange(self.n_codes), torch.tensor(sizes))
        bias = torch.where(level[None, :] == torch.arange(self.n_codes)[:, None], 0.0, -torch.inf)
        self.register_buffer("level_bias", bias, persistent=False)  # (n_codes, n_code_tokens)
        self._indices: dict[tuple[bool, str], SidIndex] = {}
        self.apply(init_weights)
        self._index(include_cold=True, device=torch.device("cpu"))  # validates the SIDs now

    def _codes(self, catalogue: Catalogue) -> tuple[torch.Tensor, tuple[int, ...]]:
        if self.cfg.tokenizer == "atomic":
            return torch.arange(catalogue.n_items)[:, None], (catalogue.n_items,)
        if catalogue.sids is None or not catalogue.codebook_sizes:
            raise SidrecError(
                f"model {self.name!r} reads semantic IDs but the catalogue has none; run "
                "`sidrec tokenize` for this run directory first (or use tokenizer=atomic)"
            )
        sids = torch.as_tensor(catalogue.sids, dtype=torch.int64)
        if sids.shape[0] != catalogue.n_items:
            raise SidrecError(
                f"sids.npy has {sids.shape[0]} rows for {catalogue.n_items} items; re-run "
                "`sidrec tokenize` for this run directory"
            )
        return sids, tuple(int(v) for v in catalogue.codebook_sizes)

    def set_catalogue(self, catalogue: Catalogue) -> None:
        super().set_catalogue(catalogue)
        codes, sizes = self._codes(catalogue)
        if sizes != self.sizes:
            raise SidrecError(
                f"the new catalogue's codebook sizes {sizes} differ from the trained model's "
                f"{self.sizes}; encode new items with the tokenizer the model was trained with"
            )
        self.codes = codes.to(self.codes.device)
        self._indices = {}

    def _index(self, include_cold: bool, device: torch.device) -> SidIndex:
        """Prefix index of the catalogue (all items) or of its warm items, built once."""
        key = (include_cold, str(device))
        if key not in self._indices:
            codes = self.codes.cpu()
            items = torch.arange(len(codes))
            if not include_cold:
                items = items[~torch.as_tensor(self.catalogue.cold, dtype=torch.bool)]
            self._indices[key] = SidIndex(codes[items], self.sizes, items).to(device)
        return self._indices[key]

    # -- network -------------------------------------------------------------------------

    def encode(
        self, history: torch.Tensor, users: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """History [B, L] (left-padded with -1) + users [B] -> (memory [B, S, d], pad [B, S])."""
        m = self.cfg.max_history
        history = history[:, -m:]
        if history.shape[1] < m:  # align positions to the most recent item
            history = F.pad(history, (m - history.shape[1], 0), value=-1)
        # Columns padded in every row are dropped; positions still count from the end.
        keep = (history >= 0).any(dim=0).nonzero()
        start = int(keep[0]) if len(keep) else m
        history = history[:, start:]  # (B, L')
        pad = (history < 0).repeat_interleave(self.n_codes, dim=1)  # (B, L'*n_codes)
        codes = self.codes[history.clamp_min(0)]  # (B, L', n_codes)
        tok = (FIRST_CODE + self.offsets + codes).flatten(1).masked_fill(pad, PAD_TOKEN)
        pos = torch.arange(1 + start * self.n_codes, 1 + m * self.n_codes, device=tok.device)
        x = self.tok_emb(tok) + self.enc_pos(pos)  # (B, L'*n_codes, d)
        extras = self.input_extras(history)
        if extras is not None:
            x = x + extras  # (B, L'*n_codes, d)
        if self.cfg.user_buckets > 0:
            user_tok = self.first_user + user_bucket(users, self.cfg.user_buckets)  # (B,)
            u = self.tok_emb(user_tok) + self.enc_pos.weight[0]  # (B, d)
            x = torch.cat([u[:, None], x], dim=1)  # (B, S, d)
            pad = torch.cat([pad.new_zeros(len(pad), 1), pad], dim=1)  # (B, S)
        return self.encoder(self.drop(x), pad), pad

    def input_extras(self, history: torch.Tensor) -> torch.Tensor | None:
        """Hook: more input embeddings per history token [B, L'*n_codes, d], or None.

        `history` [B, L'] is the (trimmed, left-padded) history `encode` reads; LIGER adds
        projected item-text embeddings and code-level positions here.
        """
        return None

    def _decoder_inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing inputs [BOS, c_0, .., c_{L-2}] of target codes [N, L] -> [N, L, d]."""
        tok = FIRST_CODE + self.offsets + codes  # (N, L)
        bos = torch.full_like(tok[:, :1], BOS_TOKEN)
        tok = torch.cat([bos, tok[:, :-1]], dim=1)  # (N, L)
        return self.tok_emb(tok) + self.dec_pos.weight  # (N, L, d)

    def generative_logits(
        self, memory: torch.Tensor, pad: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced decoder on target items [B]: (logits [B, n_codes, n_code_tokens],
        target tokens [B, n_codes]); each level's logits are -inf outside its codes."""
        codes = self.codes[target]  # (B, n_codes)
        x = self.drop(self._decoder_inputs(codes))
        hidden = self.decoder(x, memory=memory, memory_pad=pad)  # (B, n_codes, d)
        logits = self.head(hidden) + self.level_bias  # (B, n_codes, n_code_tokens)
        return logits, self.offsets + codes

    def generative_loss(
        self, batch: Batch, memory: torch.Tensor, pad: torch.Tensor
    ) -> torch.Tensor:
        """Next-token cross-entropy on the target SID, given the encoder output."""
        logits, target = self.generative_logits(memory, pad, batch["target"])
        return F.cross_entropy(logits.flatten(0, 1), target.flatten())

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits [B, n_codes, n_code_tokens] and target tokens [B, n_codes]."""
        memory, pad = self.encode(batch["history"], batch["user"])
        return self.generative_logits(memory, pad, batch["target"])

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        memory, pad = self.encode(batch["history"], batch["user"])
        loss_gen = self.generative_loss(batch, memory, pad)
        return {"loss": loss_gen, "loss_gen": loss_gen}

    def _level_logp(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """Log-probs over level `level`'s codes from decoder states [..., d] -> [..., V_t]."""
        lo = int(self.offsets[level])
        weight = self.head.weight[lo : lo + self.sizes[level]]  # (V_t, d)
        return F.log_softmax(hidden @ weight.T, dim=-1)

    # -- inference -----------------------------------------------------------------------

    def _step(self, prev: torch.Tensor, t: int, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """One decoding position for all rows: prev codes [N] -> log-probs [N, V_t]."""
        if t == 0:
            tok = torch.full_like(prev, BOS_TOKEN)
        else:
            tok = FIRST_CODE + self.offsets[t - 1] + prev
        x = self.tok_emb(tok)[:, None] + self.dec_pos.weight[t]  # (N, 1, d)
        hidden = self.decoder.step(x, cache)  # (N, 1, d)
        return self._level_logp(hidden[:, 0], t), cache

    @torch.no_grad()
    def generate(
        self, history: torch.Tensor, users: torch.Tensor, beam: int | None = None,
        constrained: bool | None = None, include_cold: bool | None = None,
    ) -> BeamResult:
        """Beam search of the next item's SID: items / log-probs [B, beam], n_invalid."""
        beam = self.cfg.beam if beam is None else beam
        constrained = self.cfg.constrained if constrained is None else constrained
        include_cold = self.cfg.include_cold if include_cold is None else include_cold
        device = self.codes.device
        with _eval_mode(self):
            memory, pad = self.encode(history.to(device), users.to(device))
            cache = self.decoder.start(memory, pad)
            catalogue = self._index(True, device)
            allowed = self._index(include_cold, device) if constrained else None
            return beam_search(self._step, cache, len(history), beam, catalogue, allowed)

    @torch.no_grad()
    def recommend(
        self, history: torch.Tensor, users: torch.Tensor, k: int, **options: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k of a beam of width max(beam, k); options: beam, constrained, include_cold.

        Scores are SID log-probabilities. An invalid SID (unconstrained decoding) keeps its
        rank as item -1 with score -inf: it is a miss, as in the paper.
        """
        unknown = set(options) - {"beam", "constrained", "include_cold"}
        if unknown:
            raise SidrecError(
                f"{self.name}: unknown recommend option {sorted(unknown)[0]!r}; "
                "valid: beam, constrained, include_cold"
            )
        beam = max(options.get("beam") or self.cfg.beam, k)
        out = self.generate(
            history, users, beam, options.get("constrained"), options.get("include_cold")
        )
        items = out.items[:, :k]
        return items, out.log_probs[:, :k].masked_fill(items < 0, float("-inf"))

    def _sid_logp(
        self, memory: torch.Tensor, pad: torch.Tensor, codes: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced log-prob of each code of codes [B*M, L], row = user * M + m."""
        hidden = self.decoder(self._decoder_inputs(codes), memory=memory, memory_pad=pad)
        out = [
            self._level_logp(hidden[:, t], t).gather(1, codes[:, t : t + 1])
            for t in range(self.n_codes)
        ]
        return torch.cat(out, dim=1)  # (B*M, L)

    @torch.no_grad()
    def log_likelihood(
        self, history: torch.Tensor, users: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        """log p(SID of items[b, m] | user b) for chosen items [B, M] -> [B, M] (-inf for -1).

        E.g. the targets (M = 1) for the overfitting diagnostic: in-set vs cold-start.
        """
        device = self.codes.device
        items = items.to(device)
        with _eval_mode(self):
            memory, pad = self.encode(history.to(device), users.to(device))
            codes = self.codes[items.clamp_min(0)].flatten(0, 1)  # (B*M, L)
            logp = self._sid_logp(memory, pad, codes).sum(dim=1).view(items.shape)
        return logp.masked_fill(items < 0, float("-inf"))

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
        device = self.codes.device
        with _eval_mode(self):
            memory, pad = self.encode(history.to(device), users.to(device))
            b = len(memory)
            if self.n_codes == 1:  # atomic tokens: one softmax gives every item
                cache = self.decoder.start(memory, pad)
                bos = torch.zeros(b, dtype=torch.int64, device=device)
                return self._step(bos, 0, cache)[0][:, self.codes[:, 0]]  # (B, n_items)

            def token_logp(codes: torch.Tensor) -> torch.Tensor:  # (C, L) -> (B, C, L)
                rows = codes.repeat(b, 1)  # (B*C, L), row = user * C + c
                return self._sid_logp(memory, pad, rows).view(b, len(codes), self.n_codes)

            return exact_scores(token_logp, self.codes, chunk or self.cfg.score_chunk)

    def variants(self) -> dict[str, dict[str, Any]]:
        """Both decoding modes are reported: the configured one and the other."""
        other = "unconstrained" if self.cfg.constrained else "constrained"
        return {"": {}, other: {"constrained": not self.cfg.constrained}}


@dataclass(frozen=True)
class TIGERTConfig(TIGERConfig):
    """TIGER (T): the LIGER paper's control with one atomic token per item."""

    tokenizer: Literal["sid", "atomic"] = "atomic"


@register
class TIGERT(TIGER):
    """TIGER (T): TIGER's seq2seq over atomic item tokens (its dense id), no SIDs."""

    name: ClassVar[str] = "tiger-t"
    Config: ClassVar[type] = TIGERTConfig
    needs_sids: ClassVar[bool] = False
    supports_new_items: ClassVar[bool] = False  # an unseen item has no trained token

    def __init__(self, cfg: TIGERConfig, catalogue: Catalogue) -> None:
        if cfg.tokenizer != "atomic":
            raise SidrecError("model 'tiger-t' uses atomic item tokens; for SIDs use model=tiger")
        super().__init__(cfg, catalogue)

    def variants(self) -> dict[str, dict[str, Any]]:
        # Every atomic token is an item: no invalid output, only cold items to exclude.
        return {"": {}}
