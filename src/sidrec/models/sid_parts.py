"""Parts of the SID family: the SID vocabulary, the SID encoder and the generative SID head.

TIGER, TIGER (T), LIGER and Dense (SID) are assemblies of these parts and
`heads.DenseHead` (see models/tiger.py and models/liger.py).

From TIGER (Rajput et al., "Recommender Systems with Generative Retrieval", NeurIPS 2023,
Sec. 3-4):
- `SIDEncoder` reads the user's history as SID tokens (each item = its n_codes codes, the
  last one the collision token), prefixed by a hashed user token (2,000 buckets, Sec. 4).
  With `user_dropout` > 0 the vocabulary also holds one reserved *anonymous* user token:
  in training, each example's user token is replaced by it with that probability, so the
  model learns to recommend from the history alone; at inference a user unknown to the
  training data (dense id -1, e.g. a new visitor of `sidrec serve`) reads that token. A
  model trained without it (user_dropout = 0) reads training user 0's bucket for an
  unknown user, as sidrec did before: a train/serve skew that a retrain removes.
  With a text input (LIGER, Yang et al., arXiv 2411.18814, Sec. 4.1) every token of an
  item also carries an MLP projection of the item's text embedding (the same vector for
  all its codes) and a code-level position embedding.
- `GenerativeSIDHead` decodes the next item's SID code by code from a BOS token:
  next-token cross-entropy on the target SID for training, batched beam search
  (`sidrec.models.beam`, constrained to catalogue SIDs or not) for inference, and an exact
  teacher-forced scorer (`exact_scores`, `log_likelihood`) beside it.
- `SIDTokens` is the vocabulary both read, with its one embedding table (so encoder and
  decoder inputs share it, as in TIGER's T5):
      0 PAD | 1 BOS | 2 .. 2+sum(V_t): code c at level t -> 2 + offset_t + c | user buckets
      | the anonymous user (only with user dropout)
  The head's output layer scores the sum(V_t) code tokens; at level t only level t's codes
  compete.

NOTE (deviations from the reference T5 set-up): learned absolute positions instead of T5
relative position buckets; LayerNorm + GELU instead of RMSNorm + ReLU; the softmax at
level t is over level t's codes only (the reference softmaxes over the whole vocabulary,
where every other token is always wrong); the history is left-padded to `max_history`
items so that position embeddings count back from the most recent item.

Cold items: the generative head's constrained index holds warm items only unless
`include_cold`: a model trained on warm targets gives unseen SIDs little mass, and the
paper's TIGER has 0 cold-start recall. Unconstrained decoding maps any generated SID
through the whole catalogue, cold included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sidrec.errors import SidrecError
from sidrec.models.base import init_weights
from sidrec.models.beam import BeamResult, SidIndex, beam_search, exact_scores, item_sids
from sidrec.models.heads import mlp
from sidrec.models.transformer import Decoder, Encoder, KVCache, StackConfig

PAD_TOKEN, BOS_TOKEN, FIRST_CODE = 0, 1, 2


@dataclass(frozen=True)
class SIDEncoderConfig:
    """Sizes of the SID encoder. Defaults = TIGER's paper model (Sec. 4: T5-style, d 128,
    6 heads x 64, FFN 1024, 4 layers, 2,000 user buckets)."""

    d_model: int = 128
    n_heads: int = 6
    head_dim: int = 64  # per head; attention width n_heads * head_dim = 384 != d_model
    d_ff: int = 1024
    n_encoder_layers: int = 4
    dropout: float = 0.1
    user_buckets: int = 2000  # hashed user-id token prepended to the history; 0 = none
    # Probability that a training example reads the reserved anonymous user token instead
    # of its user's bucket: the token that users unseen in training read. 0 = the paper
    # (no such token); the cpu and paper presets use 0.1.
    user_dropout: float = 0.0
    max_history: int = 20  # items read (the most recent ones)

    def stack(self, n_layers: int) -> StackConfig:
        """A transformer stack of these widths with `n_layers` blocks."""
        return StackConfig(n_layers=n_layers, d_model=self.d_model, n_heads=self.n_heads,
                           head_dim=self.head_dim, d_ff=self.d_ff, dropout=self.dropout)


def user_bucket(users: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Multiplicative (Knuth) hash of dense user ids into [0, n_buckets)."""
    return (users * 2654435761) % (2**32) % n_buckets


class SIDTokens(nn.Module):
    """Item -> SID tokens, user -> bucket token, and the embedding table of both.

    codes [n_items, n_codes] int64 (code t in [0, sizes[t])) is a buffer, replaced by
    `set_codes` when the catalogue grows. `anonymous_user` adds the reserved token that
    user id -1 (unknown) reads; without it, -1 reads user 0's bucket.
    """

    def __init__(
        self, codes: torch.Tensor, sizes: tuple[int, ...], d_model: int, user_buckets: int,
        anonymous_user: bool = False,
    ) -> None:
        super().__init__()
        self.sizes = tuple(sizes)
        self.n_codes = len(sizes)
        self.n_code_tokens = sum(sizes)
        self.first_user = FIRST_CODE + self.n_code_tokens
        self.user_buckets = user_buckets
        self.anonymous = self.first_user + user_buckets if anonymous_user else None
        offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0)  # (n_codes,)
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("codes", codes, persistent=False)  # (n_items, n_codes)
        self.emb = nn.Embedding(self.first_user + user_buckets + int(anonymous_user), d_model)
        self.apply(init_weights)

    def set_codes(self, codes: torch.Tensor, sizes: tuple[int, ...]) -> None:
        """Codes of a grown catalogue; the codebooks must be the trained ones."""
        if tuple(sizes) != self.sizes:
            raise SidrecError(
                f"the new catalogue's codebook sizes {tuple(sizes)} differ from the trained "
                f"model's {self.sizes}; encode new items with the tokenizer it was trained with"
            )
        self.codes = codes.to(self.codes.device)

    def code_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [..., n_codes] -> token ids [..., n_codes]."""
        return FIRST_CODE + self.offsets + codes

    def user_tokens(self, users: torch.Tensor) -> torch.Tensor:
        """Dense user ids [B] (-1: unknown) -> token ids [B]: the user's bucket, or the
        anonymous token for -1 (user 0's bucket when the model has none)."""
        tokens = self.first_user + user_bucket(users.clamp_min(0), self.user_buckets)
        if self.anonymous is None:
            return tokens
        return tokens.masked_fill(users < 0, self.anonymous)


class SIDEncoder(nn.Module):
    """Bidirectional encoder over a history of SID tokens (+ user token, + item text).

    `d_text` > 0 adds LIGER's text input: `text_in` = mlp(d_text, text_hidden, d) of the
    item's text embedding and a code-level position, on every token of the item.
    `user_dropout` > 0 (training only) swaps a user's token for the anonymous one (the
    tokens must have it).
    """

    def __init__(
        self, tokens: SIDTokens, stack: StackConfig, max_history: int, d_text: int = 0,
        text_hidden: int = 0, user_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if user_dropout > 0 and tokens.user_buckets > 0 and tokens.anonymous is None:
            raise ValueError("user_dropout needs SIDTokens(..., anonymous_user=True)")
        self.max_history = max_history
        self.user_dropout = user_dropout
        n_codes, d = tokens.n_codes, stack.d_model
        self.pos = nn.Embedding(1 + max_history * n_codes, d)  # 0: the user token
        self.layers = Encoder(stack)
        self.drop = nn.Dropout(stack.dropout)
        self.text_in = mlp(d_text, text_hidden, d) if d_text else None
        self.level_emb = nn.Embedding(n_codes, d) if d_text else None
        self.apply(init_weights)
        self.tokens = tokens  # shared with the generative head, initialised by itself

    def text_inputs(self, history: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Text projection + code-level position per history token: history [B, L'] ->
        [B, L'*n_codes, d] (padding rows read item 0; they are masked)."""
        text = self.text_in(text_emb[history.clamp_min(0)])  # (B, L', d)
        x = text[:, :, None] + self.level_emb.weight  # (B, L', n_codes, d)
        return x.flatten(1, 2)

    def forward(
        self, history: torch.Tensor, users: torch.Tensor, text_emb: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """History [B, L] (left-padded with -1) + users [B] (+ text_emb [n_items, d_text]
        with a text input) -> (memory [B, S, d], pad [B, S] True where padded)."""
        device = self.tokens.codes.device
        history, users = history.to(device), users.to(device)
        m, n_codes = self.max_history, self.tokens.n_codes
        history = history[:, -m:]
        if history.shape[1] < m:  # align positions to the most recent item
            history = F.pad(history, (m - history.shape[1], 0), value=-1)
        # Columns padded in every row are dropped on CPU; positions still count from the
        # end. On CUDA and under torch.compile the width stays m: finding those columns
        # reads a value back from the device (a sync every step) and makes the shape
        # depend on the data; the masked columns change nothing but the cost.
        start = 0
        if not (history.is_cuda or torch.compiler.is_compiling()):
            keep = (history >= 0).any(dim=0).nonzero()
            start = int(keep[0]) if len(keep) else m
        history = history[:, start:]  # (B, L')
        pad = (history < 0).repeat_interleave(n_codes, dim=1)  # (B, L'*n_codes)
        codes = self.tokens.codes[history.clamp_min(0)]  # (B, L', n_codes)
        tok = self.tokens.code_tokens(codes).flatten(1).masked_fill(pad, PAD_TOKEN)
        pos = torch.arange(1 + start * n_codes, 1 + m * n_codes, device=device)
        x = self.tokens.emb(tok) + self.pos(pos)  # (B, L'*n_codes, d)
        if self.text_in is not None:
            if text_emb is None:
                raise ValueError("this encoder reads item text: pass text_emb")
            x = x + self.text_inputs(history, text_emb)  # (B, L'*n_codes, d)
        if self.tokens.user_buckets > 0:
            if self.training and self.user_dropout > 0:  # users unseen in training
                drop = torch.rand(users.shape, device=device) < self.user_dropout  # (B,)
                users = users.masked_fill(drop, -1)
            u = self.tokens.emb(self.tokens.user_tokens(users)) + self.pos.weight[0]  # (B, d)
            x = torch.cat([u[:, None], x], dim=1)  # (B, S, d)
            pad = torch.cat([pad.new_zeros(len(pad), 1), pad], dim=1)  # (B, S)
        return self.layers(self.drop(x), pad), pad


class GenerativeSIDHead(nn.Module):
    """Decoder over the encoder memory that generates the next item's SID code by code.

    Every method takes the encoder output (memory [B, S, d], pad [B, S]). The catalogue's
    codes come from the shared `SIDTokens`; `cold` [n_items] bool selects the warm-only
    prefix index (`include_cold=False`).
    """

    def __init__(self, tokens: SIDTokens, stack: StackConfig, cold: torch.Tensor) -> None:
        super().__init__()
        self.pos = nn.Embedding(tokens.n_codes, stack.d_model)
        self.decoder = Decoder(stack, cross_attention=True)
        self.out = nn.Linear(stack.d_model, tokens.n_code_tokens, bias=False)
        self.drop = nn.Dropout(stack.dropout)
        # level_bias[t] is 0 on level t's codes, -inf elsewhere: a per-level softmax.
        n_codes = tokens.n_codes
        level = torch.repeat_interleave(torch.arange(n_codes), torch.tensor(tokens.sizes))
        bias = torch.where(level[None, :] == torch.arange(n_codes)[:, None], 0.0, -torch.inf)
        self.register_buffer("level_bias", bias, persistent=False)  # (n_codes, n_code_tokens)
        # Code tokens that are never a training target's (TIGER (T): the cold items' own
        # tokens), left out of the training softmax as Dense and LIGER leave cold items out.
        untrained = torch.zeros(tokens.n_code_tokens, dtype=torch.bool)
        self.register_buffer("untrained", untrained, persistent=False)
        self.apply(init_weights)
        self.tokens = tokens  # shared with the encoder
        self.set_items(cold)

    def set_items(self, cold: torch.Tensor, first_new: int = 0) -> None:
        """After the catalogue (and `tokens.codes`) changed: items `first_new`.. are new,
        the ones before them unchanged, so the prefix indexes built so far take just the
        new items (`SidIndex.extended`, O(n) per level, against a rebuild's sort);
        first_new = 0: every index is rebuilt. The SIDs are validated now (unique rows,
        codes in range)."""
        cold = torch.as_tensor(cold, dtype=torch.bool).cpu()
        codes = self.tokens.codes.cpu()
        indices: dict[tuple[bool, str], SidIndex] = {}
        if first_new > 0:
            new = torch.arange(first_new, len(codes))
            for (include_cold, device), index in self._indices.items():
                rows = new if include_cold else new[~cold[new]]
                indices[(include_cold, device)] = index.extended(codes[rows], rows)
        self.cold, self._indices = cold, indices
        self.index(include_cold=True, device=torch.device("cpu"))

    def index(self, include_cold: bool, device: torch.device) -> SidIndex:
        """Prefix index of the catalogue (all items) or of its warm items, built once."""
        key = (include_cold, str(device))
        if key not in self._indices:
            codes = self.tokens.codes.cpu()
            items = torch.arange(len(codes))
            if not include_cold:
                items = items[~self.cold]
            self._indices[key] = SidIndex(codes[items], self.tokens.sizes, items).to(device)
        return self._indices[key]

    # -- teacher forcing -------------------------------------------------------------------

    def _inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing inputs [BOS, c_0, .., c_{L-2}] of target codes [N, L] -> [N, L, d]."""
        tok = self.tokens.code_tokens(codes)  # (N, L)
        tok = torch.cat([torch.full_like(tok[:, :1], BOS_TOKEN), tok[:, :-1]], dim=1)
        return self.drop(self.tokens.emb(tok) + self.pos.weight)  # (N, L, d)

    def logits(
        self, memory: torch.Tensor, pad: torch.Tensor, codes: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced logits [N, L, n_code_tokens] of codes [N, L]; level t's logits are
        -inf outside its codes. Row n reads memory row n // (N / B)."""
        hidden = self.decoder(self._inputs(codes), memory=memory, memory_pad=pad)  # (N, L, d)
        return self.out(hidden) + self.level_bias

    def loss(self, memory: torch.Tensor, pad: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy on the SIDs of the target items [B] (`loss_gen`)."""
        codes = self.tokens.codes[target]  # (B, L)
        logits = self.logits(memory, pad, codes).masked_fill(self.untrained, float("-inf"))
        return F.cross_entropy(logits.flatten(0, 1), (self.tokens.offsets + codes).flatten())

    def _level_logp(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """Log-probs over level `level`'s codes from decoder states [..., d] -> [..., V_t]."""
        lo = int(self.tokens.offsets[level])
        weight = self.out.weight[lo : lo + self.tokens.sizes[level]]  # (V_t, d)
        return F.log_softmax(hidden @ weight.T, dim=-1)

    def code_logp(
        self, memory: torch.Tensor, pad: torch.Tensor, codes: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced log-prob of each code of codes [N, L] -> [N, L]."""
        hidden = self.decoder(self._inputs(codes), memory=memory, memory_pad=pad)
        out = [
            self._level_logp(hidden[:, t], t).gather(1, codes[:, t : t + 1])
            for t in range(self.tokens.n_codes)
        ]
        return torch.cat(out, dim=1)  # (N, L)

    def log_likelihood(
        self, memory: torch.Tensor, pad: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        """log p(SID of items[b, m] | user b) for items [B, M] -> [B, M] (-inf for -1)."""
        codes = self.tokens.codes[items.clamp_min(0)].flatten(0, 1)  # (B*M, L)
        logp = self.code_logp(memory, pad, codes).sum(dim=1).view(items.shape)
        return logp.masked_fill(items < 0, float("-inf"))

    def exact_scores(self, memory: torch.Tensor, pad: torch.Tensor, chunk: int) -> torch.Tensor:
        """Log-likelihood of every catalogue item's SID, cold ones too: [B, n_items]."""
        b, codes = len(memory), self.tokens.codes
        if self.tokens.n_codes == 1:  # atomic tokens: one softmax gives every item
            bos = torch.zeros(b, dtype=torch.int64, device=memory.device)
            return self._step(bos, 0, self.decoder.start(memory, pad))[0][:, codes[:, 0]]

        def token_logp(chunk_codes: torch.Tensor) -> torch.Tensor:  # (C, L) -> (B, C, L)
            rows = chunk_codes.repeat(b, 1)  # (B*C, L), row = user * C + c
            return self.code_logp(memory, pad, rows).view(b, len(chunk_codes), -1)

        return exact_scores(token_logp, codes, chunk)

    # -- decoding --------------------------------------------------------------------------

    def _step(self, prev: torch.Tensor, t: int, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """One decoding position for all rows: prev codes [N] -> log-probs [N, V_t]."""
        if t == 0:
            tok = torch.full_like(prev, BOS_TOKEN)
        else:
            tok = FIRST_CODE + self.tokens.offsets[t - 1] + prev
        x = self.tokens.emb(tok)[:, None] + self.pos.weight[t]  # (N, 1, d)
        hidden = self.decoder.step(x, cache)  # (N, 1, d)
        return self._level_logp(hidden[:, 0], t), cache

    def generate(
        self, memory: torch.Tensor, pad: torch.Tensor, beam: int, constrained: bool,
        include_cold: bool, exclude: torch.Tensor | None = None,
    ) -> BeamResult:
        """Beam search of the next item's SID: items / log-probs [B, beam], n_invalid.
        `exclude` [B, H] (-1 = none): items whose SIDs the search must not complete."""
        device = memory.device
        catalogue = self.index(True, device)
        allowed = self.index(include_cold, device) if constrained else None
        cache = self.decoder.start(memory, pad)
        banned = None if exclude is None else item_sids(self.tokens.codes, exclude.to(device))
        return beam_search(self._step, cache, len(memory), beam, catalogue, allowed,
                           exclude=banned)

    def top_k(self, out: BeamResult, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first k of a beam as (items [B, k], scores [B, k]): an invalid SID keeps its
        rank as item -1 with score -inf (a miss, as in the paper)."""
        items = out.items[:, :k]
        return items, out.log_probs[:, :k].masked_fill(items < 0, float("-inf"))

