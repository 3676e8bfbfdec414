"""Collision tokens, SID extension for new items, the exact SID -> item lookup (SidIndex) of
tokenizer output, diagnostics."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sidrec.errors import SidrecError
from sidrec.models.beam import SidIndex
from sidrec.tokenize import (
    add_collision_tokens,
    assign_sids,
    codebook_sizes,
    collision_tokens,
    diagnostics_markdown,
    extend_sids,
    plot_codebook_usage,
    sid_diagnostics,
)


def test_collision_tokens_hand_made():
    codes = np.array([[0, 0], [1, 2], [0, 0], [1, 2], [3, 3], [0, 0], [0, 1]])
    assert collision_tokens(codes).tolist() == [0, 0, 1, 1, 0, 2, 0]
    sids = add_collision_tokens(codes)
    assert sids.shape == (7, 3) and sids.dtype == np.int64
    assert sids[:, :2].tolist() == codes.tolist()
    assert codebook_sizes(sids, codebook_size=4) == [4, 4, 3]


def test_extend_sids_takes_next_free_number():
    existing = add_collision_tokens(np.array([[0, 0], [0, 0], [1, 1]]))  # tokens 0, 1, 0
    new = extend_sids(existing, np.array([[0, 0], [2, 2], [1, 1], [0, 0], [2, 2]]))
    assert new.tolist() == [[0, 0, 2], [2, 2, 0], [1, 1, 1], [0, 0, 3], [2, 2, 1]]
    with pytest.raises(SidrecError, match="codes each"):
        extend_sids(existing, np.array([[0, 0, 0]]))


def test_assign_sids_numbers_warm_items_first():
    codes = np.array([[5, 5], [5, 5], [5, 5], [7, 7]])
    cold = np.array([True, False, False, True])
    sids = assign_sids(codes, cold)
    # warm items 1, 2 take 0, 1; cold item 0 comes after them although its id is lower
    assert sids[:, -1].tolist() == [2, 0, 1, 0]


codes_strategy = st.integers(1, 3).flatmap(
    lambda levels: st.lists(
        st.lists(st.integers(0, 2), min_size=levels, max_size=levels), min_size=1, max_size=60
    )
)


@settings(max_examples=60, deadline=None)
@given(codes_strategy)
def test_collision_numbering_properties(rows):
    codes = np.array(rows, dtype=np.int64)
    tokens = collision_tokens(codes)
    sids = add_collision_tokens(codes)
    assert len(np.unique(sids, axis=0)) == len(sids)  # every full SID is unique
    prefixes = [tuple(r) for r in rows]
    for prefix in set(prefixes):
        members = [i for i, p in enumerate(prefixes) if p == prefix]
        # contiguous 0..g-1, in dense-id order; a singleton gets 0
        assert tokens[members].tolist() == list(range(len(members)))


@settings(max_examples=40, deadline=None)
@given(codes_strategy, st.integers(0, 60))
def test_extend_equals_numbering_the_concatenation(rows, split):
    codes = np.array(rows, dtype=np.int64)
    split = min(split, len(codes))
    old = add_collision_tokens(codes[:split])
    new = extend_sids(old, codes[split:])
    np.testing.assert_array_equal(np.concatenate([old, new]), add_collision_tokens(codes))


@settings(max_examples=40, deadline=None)
@given(codes_strategy)
def test_sid_index_round_trip(rows):
    sids = torch.from_numpy(add_collision_tokens(np.array(rows, dtype=np.int64)))
    sizes = codebook_sizes(sids.numpy(), codebook_size=3)
    index = SidIndex(sids, sizes)
    assert index.lookup(sids).tolist() == list(range(len(sids)))
    missing = sids.clone()
    missing[:, -1] += sizes[-1]  # a collision number nobody has (outside the vocabulary)
    assert (index.lookup(missing) == -1).all()
    missing = sids.clone()
    missing[:, 0] = -1  # a negative code
    assert (index.lookup(missing) == -1).all()


def test_sid_index_misses_and_shapes():
    sids = torch.tensor([[0, 1, 0], [0, 1, 1], [2, 0, 0]])
    index = SidIndex(sids, [3, 2, 2])
    queries = torch.tensor([[[2, 0, 0], [1, 1, 0]], [[0, 1, 1], [-1, 0, 0]]])  # [2, 2, L+1]
    assert index.lookup(queries).tolist() == [[2, -1], [1, -1]]
    # Out-of-range codes whose flat key `parent * size + code` equals another node's:
    # [0, 1, 2] and [0, 2, 0] would both walk to item 2's SID [2, 0, 0].
    aliases = torch.tensor([[0, 1, 2], [0, 2, 0], [3, 0, 0], [0, 1, -1], [0, 3, 0]])
    assert index.lookup(aliases).tolist() == [-1] * 5
    assert SidIndex(torch.zeros(0, 3, dtype=torch.long), [3, 2, 2]).lookup(queries).eq(-1).all()
    with pytest.raises(SidrecError, match=r"share a full SID \(e.g. items 0 and 2: \[0, 1, 0\]"):
        SidIndex(torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]]), [3, 2, 2])
    with pytest.raises(SidrecError, match="outside the codebook sizes"):
        SidIndex(torch.tensor([[0, 1, 2]]), [3, 2, 2])


def test_sid_diagnostics_values(tmp_path):
    # level 1: 4 codes of 4 used evenly (perplexity 4); level 2: one code (perplexity 1)
    codes = np.array([[0, 0], [1, 0], [2, 0], [3, 0], [0, 0], [1, 0], [2, 0], [3, 0]])
    diag = sid_diagnostics(codes, codebook_size=4)
    lvl1, lvl2 = diag["levels"]
    assert lvl1["usage"] == 1.0 and lvl1["perplexity"] == pytest.approx(4.0)
    assert lvl2["usage"] == 0.25 and lvl2["perplexity"] == pytest.approx(1.0)
    assert diag["unique_prefixes"] == 4
    assert diag["collision_rate"] == pytest.approx(0.5)
    assert diag["max_items_per_prefix"] == 2 and diag["colliding_items"] == 8
    table = diagnostics_markdown(diag)
    assert "| 2 | 1 | 25.0% | 1.0 |" in table and "collision rate | 50.00%" in table
    plot_codebook_usage(codes, 4, tmp_path / "plots" / "usage.png")
    assert (tmp_path / "plots" / "usage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
