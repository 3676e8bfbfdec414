"""Shared transformer: cached decoding == full recomputation, causality, padding, grouping."""

import pytest
import torch
from torch.testing import assert_close

from sidrec.models.transformer import CausalEncoder, Decoder, Encoder, StackConfig

CFG = StackConfig(n_layers=2, d_model=16, n_heads=3, head_dim=8, d_ff=32, dropout=0.0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_head_width_is_independent_of_d_model():
    dec = Decoder(CFG, cross_attention=True)
    assert dec.blocks[0].attn.qkv.weight.shape == (3 * 3 * 8, 16)  # 3 heads x 8 != 16
    assert dec.blocks[0].cross.out.weight.shape == (16, 24)


def test_attention_biases_only_when_asked():
    # TIGER, LIGER and COBRA keep bias-free projections; SASRec and Dense ask for them.
    plain = Decoder(CFG, cross_attention=True).blocks[0]
    assert plain.attn.qkv.bias is None and plain.cross.out.bias is None
    biased = Decoder(StackConfig(**{**CFG.__dict__, "bias": True}), True).blocks[0]
    assert biased.attn.qkv.bias.shape == (72,) and biased.cross.kv.bias.shape == (48,)
    assert biased.attn.out.bias.shape == (16,)


def test_causal_encoder_counts_positions_from_the_end():
    enc = CausalEncoder(CFG, max_len=6).eval()
    x = torch.randn(2, 4, 16)
    pad = torch.tensor([[True, False, False, False], [False] * 4])
    y = enc(x, pad)
    # Two more padded columns on the left: every real position keeps its output.
    wide_x = torch.cat([torch.randn(2, 2, 16), x], dim=1)
    wide_pad = torch.cat([torch.ones(2, 2, dtype=torch.bool), pad], dim=1)
    assert_close(enc(wide_x, wide_pad)[:, 2:][~pad], y[~pad])
    # Real positions never see padded inputs, nor later ones (causal).
    x2 = x.clone()
    x2[0, 0] = torch.randn(16)
    x2[:, 3] = torch.randn(2, 16)
    y2 = enc(x2, pad)
    assert_close(y2[0, 1:3], y[0, 1:3])
    assert_close(y2[1, :3], y[1, :3])
    assert not torch.allclose(y2[:, 3], y[:, 3])
    assert torch.isfinite(y2).all()
    # Same items, same positions from the end: the last row of a shorter history
    # equals the state of the same suffix.
    assert_close(enc(x[1:, 1:], pad[1:, 1:]), enc(x[1:, 1:], torch.zeros(1, 3, dtype=bool)))


def test_encoder_ignores_padded_positions():
    enc = Encoder(CFG).eval()
    x = torch.randn(2, 5, 16)
    pad = torch.tensor([[True, True, False, False, False], [False] * 5])
    y = enc(x, pad)
    x2 = x.clone()
    x2[0, :2] = torch.randn(2, 16)  # change only what is padded
    assert_close(enc(x2, pad)[0, 2:], y[0, 2:])
    assert torch.isfinite(y).all()


def test_encoder_decoder_cached_steps_match_full_forward():
    enc, dec = Encoder(CFG).eval(), Decoder(CFG, cross_attention=True).eval()
    b, r, t = 2, 3, 4
    memory_pad = torch.tensor([[True, False, False, False, False], [False] * 5])
    memory = enc(torch.randn(b, 5, 16), memory_pad)
    x = torch.randn(b * r, t, 16)  # r sequences per user, row = user * r + j
    full = dec(x, memory=memory, memory_pad=memory_pad)  # (B*r, T, d)
    cache = dec.start(memory, memory_pad)
    steps = [dec.step(x[:, i : i + 1], cache) for i in range(t)]
    assert cache.length == t
    assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_reorder_follows_parents_within_users():
    dec = Decoder(CFG, cross_attention=True).eval()
    b, r = 2, 3
    memory = torch.randn(b, 4, 16)
    x = torch.randn(b * r, 3, 16)
    cache = dec.start(memory)
    dec.step(x[:, :2], cache)
    parents = torch.tensor([2, 2, 0, 4, 3, 3])  # each user keeps its own rows
    cache.reorder(parents)
    last = dec.step(x[parents, 2:3], cache)
    full = dec(torch.cat([x[parents, :2], x[parents, 2:3]], dim=1), memory=memory)
    assert_close(last[:, 0], full[:, 2], atol=1e-5, rtol=1e-5)


def test_grouped_cross_attention_equals_repeated_memory():
    dec = Decoder(CFG, cross_attention=True).eval()
    memory, memory_pad = torch.randn(2, 5, 16), torch.tensor([[True, False, False, False, False],
                                                               [False] * 5])
    x = torch.randn(2 * 4, 3, 16)
    grouped = dec(x, memory=memory, memory_pad=memory_pad)
    repeated = dec(x, memory=memory.repeat_interleave(4, 0),
                   memory_pad=memory_pad.repeat_interleave(4, 0))
    assert_close(grouped, repeated, atol=1e-5, rtol=1e-5)


def test_decoder_is_causal():
    dec = Decoder(CFG, cross_attention=True).eval()
    memory = torch.randn(2, 4, 16)
    x = torch.randn(2, 5, 16)
    y = dec(x, memory=memory)
    x2 = x.clone()
    x2[:, 3:] = torch.randn(2, 2, 16)  # change the future only
    assert_close(dec(x2, memory=memory)[:, :3], y[:, :3])
    assert not torch.allclose(dec(x2, memory=memory)[:, 3:], y[:, 3:])


def test_decoder_only_causal_with_left_padding():
    dec = Decoder(CFG, cross_attention=False).eval()
    x = torch.randn(2, 6, 16)
    pad = torch.tensor([[True, True, False, False, False, False], [False] * 6])
    y = dec(x, pad)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 2, 16)
    x2[0, :2] = torch.randn(2, 16)  # and the padding
    y2 = dec(x2, pad)
    assert_close(y2[0, 2:4], y[0, 2:4])
    assert_close(y2[1, :4], y[1, :4])
    assert torch.isfinite(y2).all()


def test_decoder_only_prefill_then_beam_steps_match_full_forward():
    dec = Decoder(CFG, cross_attention=False).eval()
    b, r, s, t = 2, 3, 5, 3
    prefix = torch.randn(b, s, 16)
    pad = torch.tensor([[True, True, False, False, False], [False] * 5])
    hidden, cache = dec.prefill(prefix, pad)
    assert_close(hidden, dec(prefix, pad))
    new = torch.randn(b * r, t, 16)  # r continuations per user, decoded one at a time
    cache.reorder(torch.arange(b).repeat_interleave(r))  # no own rows yet: a no-op
    steps = torch.cat([dec.step(new[:, i : i + 1], cache) for i in range(t)], dim=1)
    full = dec(
        torch.cat([prefix.repeat_interleave(r, 0), new], dim=1),
        torch.cat([pad.repeat_interleave(r, 0), torch.zeros(b * r, t, dtype=torch.bool)], 1),
    )
    assert_close(steps, full[:, s:], atol=1e-5, rtol=1e-5)
    # Several new positions in one step (a teacher-forced block) give the same states.
    _, cache2 = dec.prefill(prefix, pad)
    assert_close(dec.step(new, cache2), full[:, s:], atol=1e-5, rtol=1e-5)


def test_a_branch_decodes_from_the_shared_prefix_alone():
    """`KVCache.branch` after beam steps grew the cache: new rows see the prefix, not the
    beams' own positions (COBRA's v̂ of each beam's sparse ID)."""
    dec = Decoder(CFG, cross_attention=False).eval()
    prefix, pad = torch.randn(2, 4, 16), torch.tensor([[True, False, False, False], [False] * 4])
    _, cache = dec.prefill(prefix, pad)
    dec.step(torch.randn(6, 1, 16), cache)  # three beams per user, one position
    new = torch.randn(4, 2, 16)  # two rows per user
    _, fresh = dec.prefill(prefix, pad)
    assert_close(dec.step(new, cache.branch()), dec.step(new, fresh))
    assert cache.length == 1  # the branch's steps left the beams' cache as it was
