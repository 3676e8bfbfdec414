"""Pre-norm transformer blocks shared by every model (nanoGPT-style, no zoo).

Four stacks are built from the same blocks:

- `Encoder`: bidirectional self-attention with a key-padding mask (TIGER / LIGER encoder).
- `Decoder(cross_attention=True)`: causal self-attention + cross-attention to an encoder
  memory (TIGER / LIGER decoder).
- `Decoder(cross_attention=False)`: a decoder-only causal stack (COBRA), whose `prefill`
  caches the history once per user and whose `step` decodes beams against it.
- `CausalEncoder`: that decoder-only stack plus learned positions counted back from the
  most recent item (SASRec, Dense).

The stacks take *embedded* inputs [B, T, d_model] and return the final-norm hidden
states; token/position embeddings and output heads belong to each model, so LIGER can add
text embeddings to the input and read a dense head from the encoder output, and COBRA can
interleave sparse tokens with dense vectors. `CausalEncoder` is the one exception: SASRec
and Dense embed items differently but position them alike, so it owns their positions.

Incremental decoding (`KVCache`) has two kinds of keys/values:

- *shared* ones, computed once per user and never copied per beam: the cross-attention
  K/V of the encoder memory, and (decoder-only) the self-attention K/V of the prefix.
  A query row n belongs to user n // r where r = n_rows / n_users, so all beams of a
  user attend to one [B, H, S, hd] tensor ("grouped" attention, see `_grouped_sdpa`).
- *own* ones, one row per beam, grown by one position per step and reordered when the
  beam search picks parents (`KVCache.reorder`).

Attention uses `F.scaled_dot_product_attention`; heads have their own width (`head_dim`)
independent of `d_model` (TIGER: d_model 128, 6 heads x 64 -> inner width 384, as in
T5's `d_kv`). NOTE: we use learned absolute positions in the models and LayerNorm +
GELU here; the TIGER reference (T5) uses relative position buckets, RMSNorm and ReLU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class StackConfig:
    """Sizes of one transformer stack."""

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 6
    head_dim: int = 64  # per-head width; n_heads * head_dim need not equal d_model
    d_ff: int = 1024
    dropout: float = 0.1  # on residual branches and the FFN
    # Dropout on attention probabilities. Off by default: with it, CPU SDPA leaves its
    # fused kernel and a TIGER training step took 7x longer (16.6 vs 2.3 ms per example).
    attn_dropout: float = 0.0
    # Biases on the attention projections: off as in T5 (TIGER, LIGER, COBRA), on for
    # SASRec and Dense as in the SASRec reference and RecBole. The FFN always has them.
    bias: bool = False


def attention_mask(
    key_pad: torch.Tensor | None, n_queries: int, causal: bool, device: torch.device
) -> torch.Tensor | None:
    """Boolean mask (True = may attend) for SDPA, [B, 1, Tq, Tk] or [Tq, Tk], or None.

    Queries and keys are the same positions (self-attention). A query may always attend to
    its own position, so padded rows never see an all-masked row (which would give NaN);
    their outputs are garbage and never used, because padded keys are masked everywhere.
    """
    if key_pad is None and not causal:
        return None
    eye = torch.eye(n_queries, dtype=torch.bool, device=device)  # (T, T)
    if causal:
        allowed = torch.ones(n_queries, n_queries, dtype=torch.bool, device=device).tril()
    else:
        allowed = torch.ones(n_queries, n_queries, dtype=torch.bool, device=device)
    if key_pad is None:
        return allowed  # (T, T)
    return (allowed & ~key_pad[:, None, None, :]) | eye  # (B, 1, T, T)


def _memory_mask(memory_pad: torch.Tensor | None) -> torch.Tensor | None:
    """Key mask [B, 1, 1, S] for cross-attention; an all-padding memory attends to all of it."""
    if memory_pad is None:
        return None
    keep = ~memory_pad | memory_pad.all(dim=1, keepdim=True)  # (B, S)
    return keep[:, None, None, :]


def _grouped_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: float
) -> torch.Tensor:
    """Attention of q rows [N, H, Tq, hd] to shared keys [B, H, S, hd], N = B * r.

    Rows n*r .. n*r+r-1 all read user n's keys: the r query blocks are laid side by side
    along the query axis, so no key is copied per beam. `mask` is [B, 1, 1, S] or None.
    """
    n, h, tq, hd = q.shape
    b = k.shape[0]
    r = n // b
    qg = q.view(b, r, h, tq, hd).transpose(1, 2).reshape(b, h, r * tq, hd)  # (B, H, r*Tq, hd)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, dropout_p=dropout)
    return out.view(b, h, r, tq, hd).transpose(1, 2).reshape(n, h, tq, hd)  # (N, H, Tq, hd)


class SelfAttention(nn.Module):
    def __init__(self, cfg: StackConfig) -> None:
        super().__init__()
        inner = cfg.n_heads * cfg.head_dim
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * inner, bias=cfg.bias)
        self.out = nn.Linear(inner, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.attn_dropout

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim)  # (B, T, 3, H, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
        return q, k, v

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, -1))  # (B, T, d)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, causal_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full-sequence attention. Returns (output [B, T, d], k, v [B, H, T, hd]).

        `causal_only`: the mask is plain causal, so SDPA's `is_causal` fast path is used.
        """
        q, k, v = self._heads(x)  # (B, H, T, hd)
        p = self.dropout if self.training else 0.0
        if causal_only:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self._merge(y), k, v  # (B, T, d)

    def step(self, x: torch.Tensor, cache: KVCache, layer: int) -> torch.Tensor:
        """New positions x [N, T, d] attend to the cached prefix, the own past and themselves."""
        q, k, v = self._heads(x)  # (N, H, T, hd)
        k, v = cache.append(layer, k, v)  # (N, H, t_own, hd), t_own includes the new T
        n, h, t, hd = q.shape
        t_own = k.shape[2]
        # Own keys: causal within the new block, everything before it is visible.
        own_ok = torch.ones(t, t_own, dtype=torch.bool, device=x.device).tril(t_own - t)
        pk = cache.prefix_k[layer] if cache.prefix_k is not None else None
        if pk is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=own_ok)  # (N, H, T, hd)
            return self._merge(y)
        # Shared prefix (one copy per user) + own keys (one per row): one softmax over both.
        pv = cache.prefix_v[layer]
        b, s = pk.shape[0], pk.shape[2]
        r = n // b
        scale = 1.0 / math.sqrt(hd)
        qg = q.view(b, r, h, t, hd)
        s_pre = torch.einsum("brhqd,bhkd->brhqk", qg, pk) * scale  # (B, r, H, T, S)
        if cache.prefix_pad is not None:
            s_pre = s_pre.masked_fill(cache.prefix_pad[:, None, None, None, :], float("-inf"))
        s_own = (q @ k.transpose(-1, -2)) * scale  # (N, H, T, t_own)
        s_own = s_own.masked_fill(~own_ok, float("-inf"))
        logits = torch.cat([s_pre.reshape(n, h, t, s), s_own], dim=-1)  # (N, H, T, S+t_own)
        att = logits.softmax(dim=-1)
        a_pre = att[..., :s].reshape(b, r, h, t, s)
        y = torch.einsum("brhqk,bhkd->brhqd", a_pre, pv).reshape(n, h, t, hd)
        y = y + att[..., s:] @ v  # (N, H, T, hd)
        return self._merge(y)


class CrossAttention(nn.Module):
    def __init__(self, cfg: StackConfig) -> None:
        super().__init__()
        inner = cfg.n_heads * cfg.head_dim
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.q = nn.Linear(cfg.d_model, inner, bias=cfg.bias)
        self.kv = nn.Linear(cfg.d_model, 2 * inner, bias=cfg.bias)
        self.out = nn.Linear(inner, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.attn_dropout

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of the encoder memory [B, S, d] -> 2 x [B, H, S, hd] (computed once per user)."""
        b, s, _ = memory.shape
        kv = self.kv(memory).view(b, s, 2, self.n_heads, self.head_dim)  # (B, S, 2, H, hd)
        k, v = kv.permute(2, 0, 3, 1, 4)  # 2 x (B, H, S, hd)
        return k, v

    def forward(
        self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """x [N, T, d] with N = B * r rows; k, v [B, H, S, hd]; mask [B, 1, 1, S]."""
        n, t, _ = x.shape
        q = self.q(x).view(n, t, self.n_heads, self.head_dim).transpose(1, 2)  # (N, H, T, hd)
        y = _grouped_sdpa(q, k, v, mask, self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(n, t, -1))  # (N, T, d)


class FeedForward(nn.Module):
    def __init__(self, cfg: StackConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(F.gelu(self.up(x))))  # (B, T, d)


class Block(nn.Module):
    """Pre-norm block: x + SelfAttn(LN x) [+ CrossAttn(LN x)] + FFN(LN x)."""

    def __init__(self, cfg: StackConfig, cross_attention: bool) -> None:
        super().__init__()
        self.ln_self = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln_cross = nn.LayerNorm(cfg.d_model) if cross_attention else None
        self.cross = CrossAttention(cfg) if cross_attention else None
        self.ln_ff = nn.LayerNorm(cfg.d_model)
        self.ff = FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def _cross_ff(
        self, x: torch.Tensor, cross_kv: tuple[torch.Tensor, torch.Tensor] | None,
        memory_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        if self.cross is not None:
            assert cross_kv is not None, "a cross-attention block needs an encoder memory"
            x = x + self.drop(self.cross(self.ln_cross(x), *cross_kv, memory_mask))
        return x + self.ff(self.ln_ff(x))  # (N, T, d)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, causal_only: bool,
        cross_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, k, v = self.attn(self.ln_self(x), mask, causal_only)
        x = x + self.drop(y)
        return self._cross_ff(x, cross_kv, memory_mask), k, v

    def step(self, x: torch.Tensor, cache: KVCache, layer: int) -> torch.Tensor:
        x = x + self.attn.step(self.ln_self(x), cache, layer)
        cross_kv = None if cache.cross_k is None else (cache.cross_k[layer], cache.cross_v[layer])
        return self._cross_ff(x, cross_kv, _memory_mask(cache.memory_pad))


@dataclass
class KVCache:
    """Keys/values for incremental decoding, per layer (see the module docstring).

    own_k/own_v [N, H, t, hd]: one row per decoded sequence (beam), grown by `step`.
    prefix_k/prefix_v [B, H, S, hd] + prefix_pad [B, S]: decoder-only history, per user.
    cross_k/cross_v [B, H, S, hd] + memory_pad [B, S]: encoder memory, per user.
    Row n of the own part belongs to user n // (N / B); `reorder` must keep that true
    (the beam search only picks parents among a user's own beams).
    """

    own_k: list[torch.Tensor | None]
    own_v: list[torch.Tensor | None]
    prefix_k: list[torch.Tensor] | None = None
    prefix_v: list[torch.Tensor] | None = None
    prefix_pad: torch.Tensor | None = None
    cross_k: list[torch.Tensor] | None = None
    cross_v: list[torch.Tensor] | None = None
    memory_pad: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """Number of positions decoded so far (own part only)."""
        k = self.own_k[0]
        return 0 if k is None else k.shape[2]

    def append(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.own_k[layer] is not None:
            k = torch.cat([self.own_k[layer], k], dim=2)  # (N, H, t+T, hd)
            v = torch.cat([self.own_v[layer], v], dim=2)
        self.own_k[layer], self.own_v[layer] = k, v
        return k, v

    def branch(self) -> KVCache:
        """A cache over the same shared parts (prefix, encoder memory) and no own positions:
        new rows decode from the shared part afresh (COBRA's v̂ of each beam's sparse ID
        after the beam search has grown this cache's own part)."""
        n = len(self.own_k)
        return KVCache(own_k=[None] * n, own_v=[None] * n, prefix_k=self.prefix_k,
                       prefix_v=self.prefix_v, prefix_pad=self.prefix_pad,
                       cross_k=self.cross_k, cross_v=self.cross_v, memory_pad=self.memory_pad)

    def reorder(self, index: torch.Tensor) -> KVCache:
        """Keep own rows `index` [N'] (int64, parents); shared per-user parts are untouched."""
        self.own_k = [None if k is None else k.index_select(0, index) for k in self.own_k]
        self.own_v = [None if v is None else v.index_select(0, index) for v in self.own_v]
        return self


class Encoder(nn.Module):
    """Bidirectional stack: x [B, S, d] + padding mask [B, S] (True = padded) -> [B, S, d]."""

    def __init__(self, cfg: StackConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg, cross_attention=False) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        mask = attention_mask(pad, x.shape[1], causal=False, device=x.device)  # (B, 1, S, S)
        for block in self.blocks:
            x, _, _ = block(x, mask, causal_only=False)
        return self.ln_f(x)  # (B, S, d)


class Decoder(nn.Module):
    """Causal stack, with cross-attention to an encoder memory or decoder-only.

    Training / teacher forcing: `forward(x, pad, memory, memory_pad)`.
    Decoding: `start(memory, memory_pad)` (encoder-decoder) or `prefill(x, pad)`
    (decoder-only) builds a `KVCache`; `step(x, cache)` runs new positions.
    With a memory of B rows, x may have N = B * r rows (r sequences per user, e.g. beams
    or candidate items): row n reads memory row n // r.
    """

    def __init__(self, cfg: StackConfig, cross_attention: bool) -> None:
        super().__init__()
        self.cross_attention = cross_attention
        self.blocks = nn.ModuleList(Block(cfg, cross_attention) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def _cross_kv(self, memory: torch.Tensor | None) -> list:
        if not self.cross_attention:
            return [None] * len(self.blocks)
        if memory is None:
            raise ValueError("this decoder has cross-attention: pass the encoder memory")
        return [block.cross.memory_kv(memory) for block in self.blocks]

    def forward(
        self, x: torch.Tensor, pad: torch.Tensor | None = None,
        memory: torch.Tensor | None = None, memory_pad: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [N, T, d], pad [N, T] (True = padded, e.g. left padding) -> hidden [N, T, d]."""
        return self._run(x, pad, memory, memory_pad)[0]

    def _run(self, x, pad, memory, memory_pad):
        # Without padding the mask is plain causal: SDPA's is_causal path, no mask tensor.
        mask = None if pad is None else attention_mask(pad, x.shape[1], True, x.device)
        mem_mask = _memory_mask(memory_pad)
        keys, values = [], []
        for block, kv in zip(self.blocks, self._cross_kv(memory), strict=True):
            x, k, v = block(x, mask, causal_only=pad is None, cross_kv=kv, memory_mask=mem_mask)
            keys.append(k)
            values.append(v)
        return self.ln_f(x), keys, values  # (N, T, d)

    def start(self, memory: torch.Tensor, memory_pad: torch.Tensor | None = None) -> KVCache:
        """Empty cache whose cross-attention K/V are computed once from memory [B, S, d]."""
        kv = self._cross_kv(memory)
        n = len(self.blocks)
        return KVCache(
            own_k=[None] * n, own_v=[None] * n,
            cross_k=[k for k, _ in kv], cross_v=[v for _, v in kv], memory_pad=memory_pad,
        )

    def prefill(
        self, x: torch.Tensor, pad: torch.Tensor | None = None,
        memory: torch.Tensor | None = None, memory_pad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Run a prefix x [B, S, d] once per user; its K/V become the shared prefix cache.

        Returns (hidden [B, S, d], cache). Later `step` rows (any multiple of B) attend to
        the non-padded prefix positions plus their own decoded positions.
        """
        hidden, keys, values = self._run(x, pad, memory, memory_pad)
        cache = self.start(memory, memory_pad) if self.cross_attention else KVCache(
            own_k=[None] * len(self.blocks), own_v=[None] * len(self.blocks)
        )
        cache.prefix_k, cache.prefix_v, cache.prefix_pad = keys, values, pad
        return hidden, cache

    def step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """New positions x [N, T, d] (usually T = 1) -> hidden [N, T, d]; cache grows by T."""
        for layer, block in enumerate(self.blocks):
            x = block.step(x, cache, layer)
        return self.ln_f(x)  # (N, T, d)


class CausalEncoder(nn.Module):
    """Item vectors x [B, L, d] (left-padded) + pad [B, L] -> causal hidden states [B, L, d].

    Learned positions count back from the most recent item (position 0 = the last column),
    so outputs do not depend on how wide the left padding is; L <= max_len. Padded inputs
    are zeroed and padded positions attend only to themselves, so no softmax row is
    empty; real positions never see padding (`attention_mask`).
    """

    def __init__(self, cfg: StackConfig, max_len: int) -> None:
        super().__init__()
        self.pos = nn.Embedding(max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.decoder = Decoder(cfg, cross_attention=False)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1] - 1, -1, -1, device=x.device)  # (L,) last = 0
        h = self.drop(x + self.pos(positions)).masked_fill(pad[..., None], 0.0)  # (B, L, d)
        return self.decoder(h, pad)  # (B, L, d)
