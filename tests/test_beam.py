"""Batched beam search, prefix index and exact scorer (sidrec.models.beam)."""

import itertools
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from sidrec.errors import SidrecError
from sidrec.models.beam import INVALID_ITEM, SidIndex, beam_search, exact_scores


def random_sids(n: int, sizes: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """n distinct SIDs drawn from the product space of `sizes`."""
    g = torch.Generator().manual_seed(seed)
    space = list(itertools.product(*[range(s) for s in sizes]))
    pick = torch.randperm(len(space), generator=g)[:n]
    return torch.tensor([space[i] for i in pick], dtype=torch.int64).view(-1, len(sizes))


@dataclass
class RnnState:
    h: torch.Tensor  # [N, d]

    def reorder(self, index: torch.Tensor) -> "RnnState":
        return RnnState(self.h.index_select(0, index))


class TinyRnn:
    """A random autoregressive model over SID codes: h' = tanh(W h + E_t[prev])."""

    def __init__(self, sizes: tuple[int, ...], n_users: int, d: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.sizes = sizes
        self.h0 = torch.randn(n_users, d, generator=g)
        self.w = torch.randn(d, d, generator=g) / d**0.5
        self.emb = [torch.randn(s, d, generator=g) for s in sizes]
        self.out = [torch.randn(d, s, generator=g) * 2 for s in sizes]

    def step(self, prev, t, state):
        inp = 0 if t == 0 else self.emb[t - 1][prev]
        h = torch.tanh(state.h @ self.w + inp)
        return torch.log_softmax(h @ self.out[t], dim=-1), RnnState(h)

    def token_logp(self, codes):  # teacher forcing: [C, L] -> [B, C, L]
        b, c = len(self.h0), len(codes)
        state = RnnState(self.h0.repeat_interleave(c, 0))
        prev = torch.full((b * c,), -1)
        out = []
        for t in range(len(self.sizes)):
            logp, state = self.step(prev, t, state)
            prev = codes[:, t].repeat(b)
            out.append(logp.gather(1, prev[:, None]))
        return torch.cat(out, dim=1).view(b, c, -1)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
    frac=st.floats(0.05, 1.0),
    seed=st.integers(0, 1000),
)
def test_prefix_masks_match_brute_force(sizes, frac, seed):
    total = 1
    for s in sizes:
        total *= s
    n = max(1, int(frac * total))
    sids = random_sids(n, sizes, seed)
    items = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) + 100
    index = SidIndex(sids, sizes, items)
    rows = [tuple(r) for r in sids.tolist()]
    # Walk every prefix of the product space: the mask equals the set of valid children.
    node_of = {(): 0}
    for t, size in enumerate(sizes):
        prefixes = list(itertools.product(*[range(s) for s in sizes[:t]]))
        nodes = torch.tensor([node_of.get(p, -1) for p in prefixes], dtype=torch.int64)
        mask = index.children_mask(t, nodes)
        assert mask.shape == (len(prefixes), size)
        for p, node, m in zip(prefixes, nodes.tolist(), mask.tolist(), strict=True):
            want = [any(r[: t + 1] == (*p, c) for r in rows) for c in range(size)]
            assert m == want
            for c in range(size):
                child = int(index.child(t, torch.tensor([node]), torch.tensor([c])))
                assert (child >= 0) == want[c]
                if child >= 0:
                    node_of[(*p, c)] = child
    # Exact lookup: every SID maps to its item; everything else to -1.
    assert index.lookup(sids).tolist() == items.tolist()
    space = torch.tensor(list(itertools.product(*[range(s) for s in sizes])))
    got = index.lookup(space)
    assert int((got >= 0).sum()) == n


def test_duplicate_or_out_of_range_sids_are_user_errors():
    with pytest.raises(SidrecError, match="share a full SID"):
        SidIndex(torch.tensor([[0, 1], [0, 1]]), (2, 2))
    with pytest.raises(SidrecError, match="outside the codebook"):
        SidIndex(torch.tensor([[0, 2]]), (2, 2))


def test_wide_beam_equals_exact_ranking():
    sizes = (4, 3, 3)
    sids = random_sids(25, sizes, seed=1)
    model = TinyRnn(sizes, n_users=5)
    index = SidIndex(sids, sizes)
    out = beam_search(model.step, RnnState(model.h0), 5, beam=25, catalogue=index, allowed=index)
    exact = exact_scores(model.token_logp, sids, chunk=7)  # (B, n_items), chunked
    top = exact.sort(dim=1, descending=True)
    assert out.n_invalid == 0
    assert torch.equal(out.items, top.indices)
    assert_close(out.log_probs, top.values, atol=1e-5, rtol=1e-5)
    # A narrower beam returns a subset of valid items in score order.
    narrow = beam_search(model.step, RnnState(model.h0), 5, beam=6, catalogue=index, allowed=index)
    assert torch.equal(narrow.log_probs, narrow.log_probs.sort(dim=1, descending=True).values)
    assert_close(exact.gather(1, narrow.items), narrow.log_probs, atol=1e-5, rtol=1e-5)


def test_constrained_beam_never_returns_invalid_sids():
    sizes = (6, 6, 2)
    sids = random_sids(20, sizes, seed=2)  # 20 of 72 sequences are valid
    model = TinyRnn(sizes, n_users=8, seed=3)
    index = SidIndex(sids, sizes)
    out = beam_search(model.step, RnnState(model.h0), 8, beam=10, catalogue=index, allowed=index)
    assert out.n_invalid == 0 and (out.items >= 0).all()
    assert torch.equal(index.lookup(out.sids), out.items)
    assert all(len(set(row)) == len(row) for row in out.items.tolist())
    free = beam_search(model.step, RnnState(model.h0), 8, beam=10, catalogue=index)
    assert free.n_invalid > 0  # the random model is not constrained to the catalogue


def test_beam_wider_than_catalogue_pads_with_minus_one():
    sizes = (3, 2)
    sids = torch.tensor([[0, 1], [2, 0], [2, 1]])
    model = TinyRnn(sizes, n_users=2)
    index = SidIndex(sids, sizes, torch.tensor([7, 8, 9]))
    out = beam_search(model.step, RnnState(model.h0), 2, beam=5, catalogue=index, allowed=index)
    assert out.items.shape == (2, 5)
    assert sorted(out.items[0, :3].tolist()) == [7, 8, 9]
    assert (out.items[:, 3:] == -1).all() and torch.isinf(out.log_probs[:, 3:]).all()
    assert out.n_invalid == 0


def test_nan_scores_stay_visible_not_empty_slots():
    # a model with non-finite weights scores NaN: its beams are items with NaN scores (the
    # evaluator refuses them), never -1 slots that would pass for "nothing to recommend"
    sizes = (3, 2)
    sids = torch.tensor([[0, 1], [2, 0], [2, 1]])
    model = TinyRnn(sizes, n_users=2)
    model.out = [torch.full_like(o, float("nan")) for o in model.out]
    index = SidIndex(sids, sizes, torch.tensor([7, 8, 9]))
    out = beam_search(model.step, RnnState(model.h0), 2, beam=3, catalogue=index, allowed=index)
    assert torch.isnan(out.log_probs).all()
    assert (out.items != -1).all()


class FixedState:
    def reorder(self, index):
        return self


def test_unconstrained_counts_invalid_sids_exactly():
    # Prefix-independent distributions: the top-k sequences are the top-k products, which
    # a beam finds exactly; most mass goes to first code 2, which no item has.
    sizes = (3, 2)
    dists = [torch.tensor([0.1, 0.2, 0.7]).log(), torch.tensor([0.45, 0.55]).log()]
    sids = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    index = SidIndex(sids, sizes)

    def step(prev, t, state):
        return dists[t].expand(len(prev), -1), state

    out = beam_search(step, FixedState(), 2, beam=3, catalogue=index)
    space = list(itertools.product(range(3), range(2)))
    scores = torch.tensor([float(dists[0][a] + dists[1][b]) for a, b in space])
    best = [space[i] for i in scores.topk(3).indices.tolist()]  # (2,1), (2,0), (1,1)
    expect_invalid = sum(a == 2 for a, _ in best)
    assert out.n_invalid == 2 * expect_invalid == 4
    assert out.items[:, :2].eq(INVALID_ITEM).all() and out.items[:, 2].eq(3).all()
    assert torch.isfinite(out.log_probs).all()
    constrained = beam_search(step, FixedState(), 2, beam=3, catalogue=index, allowed=index)
    assert constrained.n_invalid == 0 and constrained.items[0].tolist() == [3, 2, 1]


def test_index_is_built_on_cpu_and_moved_whole():
    sids = random_sids(12, (3, 3, 2), seed=4)
    index = SidIndex(sids, (3, 3, 2), torch.arange(12) + 5)
    assert index.device == torch.device("cpu")
    moved = index.to("meta")  # a device without data: any tensor left behind would show
    assert moved.device == torch.device("meta") and moved.sizes == index.sizes
    assert all(t.device.type == "meta" for t in [*moved.keys, moved.leaf_items])
    assert index.lookup(sids).tolist() == (torch.arange(12) + 5).tolist()  # original intact


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_index_from_cuda_inputs():
    sids = random_sids(12, (3, 3, 2), seed=4)
    index = SidIndex(sids.cuda(), (3, 3, 2), (torch.arange(12) + 5).cuda())
    assert index.device.type == "cpu"
    on_gpu = index.to("cuda")
    assert on_gpu.lookup(sids.cuda()).tolist() == (torch.arange(12) + 5).tolist()
    nodes = on_gpu.child(0, torch.zeros(4, dtype=torch.long, device="cuda"),
                         torch.arange(4, device="cuda"))
    assert nodes.device.type == "cuda" and int(nodes[3]) == -1


def test_excluded_items_are_masked_inside_the_search():
    """Excluding items = searching a catalogue without them: the full beam width still
    goes to other items (masking after the search would leave holes)."""
    sizes = (4, 3, 3)
    sids = random_sids(25, sizes, seed=4)
    model = TinyRnn(sizes, n_users=5, seed=5)
    index = SidIndex(sids, sizes)
    g = torch.Generator().manual_seed(6)
    seen = torch.randint(0, 25, (5, 4), generator=g)  # per-user items to exclude
    seen[0, 2:] = -1  # padding
    banned = sids[seen.clamp_min(0)].masked_fill((seen < 0)[..., None], -1)
    for allowed in (index, None):
        out = beam_search(model.step, RnnState(model.h0), 5, beam=8, catalogue=index,
                          allowed=allowed, exclude=banned)
        for u in range(5):
            gone = set(seen[u][seen[u] >= 0].tolist())
            keep = torch.tensor([i for i in range(25) if i not in gone])
            alone = SidIndex(sids[keep], sizes, keep)
            one = RnnState(model.h0[u : u + 1])
            want = beam_search(model.step, one, 1, beam=8, catalogue=index,
                               allowed=alone if allowed is not None else None, exclude=None)
            if allowed is not None:
                assert torch.equal(out.items[u], want.items[0])
                assert_close(out.log_probs[u], want.log_probs[0])
            assert not gone & set(out.items[u].tolist())
