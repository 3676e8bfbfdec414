"""Every fast path added for large catalogues equals its reference on small data.

- SidIndex: child-mask tables == scattered runs of the sorted keys == brute force;
  `extended` == a rebuild.
- extend_sids / collision tokens: mixed-radix keys == numbering unique rows.
- GenerativeSIDHead.set_items on a grown catalogue == building its indexes afresh.
- ItemIndex: chunked exact search == one product; IVF probing every cell == exact.
- ItemVectors: cached and grown vectors == projecting the whole catalogue.
- liger_rerank: the cold pool's top from an index == scoring every item; LIGER's indexed
  hybrid == its exact hybrid, before and after items are added.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import sid_batch, sid_catalogue
from hypothesis import given, settings
from hypothesis import strategies as st

import sidrec.tokenize.sids as sids_module
from sidrec.errors import SidrecError
from sidrec.models.beam import SidIndex
from sidrec.models.item_index import ItemIndex, exact_topk
from sidrec.models.item_vectors import ItemVectors
from sidrec.models.liger import LIGER, ColdTop, LIGERConfig, LIGERInference, liger_rerank
from sidrec.tokenize.sids import add_collision_tokens, extend_sids

TINY = LIGERConfig(d_model=32, n_heads=2, head_dim=16, d_ff=64, n_encoder_layers=1,
                   n_decoder_layers=1, dropout=0.0, user_buckets=16, max_history=5,
                   text_hidden=32)


def random_sids(n: int, sizes: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.stack([torch.randint(0, s, (n,), generator=g) for s in sizes], dim=1)
    return torch.from_numpy(add_collision_tokens(codes.numpy()))


# ---------------------------------------------------------------- SidIndex


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 200), st.integers(0, 10_000))
def test_mask_tables_equal_the_runs_of_sorted_keys(n, seed):
    sids = random_sids(n, (5, 3, 4), seed)
    sizes = (5, 3, 4, int(sids[:, -1].max()) + 1 if n else 1)
    fast, slow = SidIndex(sids, sizes), SidIndex(sids, sizes, mask_budget=0)
    g = torch.Generator().manual_seed(seed)
    for level in range(len(sizes)):
        parents = len(fast.keys[level - 1]) if level else 1
        node = torch.randint(-1, max(parents, 1), (50,), generator=g)
        assert torch.equal(fast.children_mask(level, node), slow.children_mask(level, node))
        code = torch.randint(-1, sizes[level] + 1, (50,), generator=g)
        assert torch.equal(fast.child(level, node, code), slow.child(level, node, code))
        want = torch.zeros(len(node), sizes[level], dtype=torch.bool)  # by brute force
        for row, parent in enumerate(node.tolist()):
            for code in range(sizes[level]) if parent >= 0 else ():
                want[row, code] = bool((fast._find(level, torch.tensor(
                    [parent * sizes[level] + code])) >= 0).item())
        assert torch.equal(slow.children_mask(level, node), want)
    if n:  # the table path really gathered, the other really scattered runs
        assert slow._child_table(1) is None and fast._child_table(1) is not None


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 150), st.integers(0, 150), st.integers(0, 10_000))
def test_extended_equals_a_rebuild(n_old, n_new, seed):
    sids = random_sids(n_old + n_new, (4, 3, 5), seed)
    sizes = (4, 3, 5, int(sids[:, -1].max()) + 1)
    items = torch.randperm(n_old + n_new, generator=torch.Generator().manual_seed(seed))
    old = SidIndex(sids[:n_old], sizes, items[:n_old])
    old.children_mask(1, torch.zeros(1, dtype=torch.long))  # a table built before: dropped
    grown = old.extended(sids[n_old:], items[n_old:])
    whole = SidIndex(sids, sizes, items)
    for a, b in zip(grown.keys, whole.keys, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(grown.leaf_items, whole.leaf_items)
    assert torch.equal(grown.lookup(sids), items)
    assert len(old) == n_old  # the old index is unchanged


def test_extended_refuses_a_taken_sid():
    sids = random_sids(20, (3, 3), 0)
    index = SidIndex(sids, (3, 3, int(sids[:, -1].max()) + 1))
    with pytest.raises(SidrecError, match="share a full SID"):
        index.extended(sids[3:4], torch.tensor([99]))


# ---------------------------------------------------------------- collision tokens


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 120), st.integers(0, 60), st.integers(0, 10_000))
def test_extend_sids_fast_equals_reference(n_old, n_new, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 4, (n_old + n_new, 3))
    old = add_collision_tokens(codes[:n_old])
    fast = extend_sids(old, codes[n_old:])
    np.testing.assert_array_equal(extend_sids(old, codes[n_old:], codebook_size=4), fast)
    with pytest.raises(SidrecError):  # a code outside the codebook: the reference's error
        extend_sids(old, codes[n_old:, :2])
    original = sids_module.prefix_keys
    try:
        sids_module.prefix_keys = lambda *a, **k: None  # force the unique-rows reference
        reference = extend_sids(old, codes[n_old:])
        reference_all = add_collision_tokens(codes)
    finally:
        sids_module.prefix_keys = original
    np.testing.assert_array_equal(fast, reference)
    np.testing.assert_array_equal(add_collision_tokens(codes), reference_all)


# ---------------------------------------------------------------- grown catalogues


def test_items_added_to_the_sid_indexes_equal_fresh_indexes():
    cat = sid_catalogue(n=40, n_cold=6, text_dim=12)
    part = replace(cat, item_text=cat.item_text[:30], cold=cat.cold[:30],
                   popularity=cat.popularity[:30], text_emb=cat.text_emb[:30],
                   sids=cat.sids[:30])
    model = LIGER(TINY, part).eval()
    model.gen.index(False, torch.device("cpu"))  # the warm index exists before the add
    grown = replace(cat, cold=torch.cat([cat.cold[:30], torch.ones(10, dtype=torch.bool)]))
    model.items_added(grown, 30)
    fresh = LIGER(TINY, grown).eval()
    for include_cold in (True, False):
        a = model.gen.index(include_cold, torch.device("cpu"))
        b = fresh.gen.index(include_cold, torch.device("cpu"))
        assert all(torch.equal(x, y) for x, y in zip(a.keys, b.keys, strict=True))
        assert torch.equal(a.leaf_items, b.leaf_items)


# ---------------------------------------------------------------- dense retrieval


def test_chunked_exact_topk_equals_one_product():
    g = torch.Generator().manual_seed(0)
    q, items = torch.randn(7, 16, generator=g), torch.randn(1000, 16, generator=g)
    rows, scores = exact_topk(q, items, 10, chunk=64)
    top = torch.topk(q @ items.T, 10, dim=1)
    assert torch.equal(rows, top.indices)
    torch.testing.assert_close(scores, top.values)


def test_ivf_probing_every_cell_is_exact_and_takes_additions():
    g = torch.Generator().manual_seed(0)
    vectors, q = torch.randn(3000, 16, generator=g), torch.randn(9, 16, generator=g)
    ids = torch.arange(3000) * 3 + 1
    exact = ItemIndex(vectors[:2500], ids=ids[:2500])
    ivf = ItemIndex(vectors[:2500], ids=ids[:2500], exact_below=0, probe=1.0)
    assert exact.exact and not ivf.exact
    for index in (exact, ivf):
        index.add(vectors[2500:], ids[2500:])
    want, want_cos = ItemIndex(vectors, ids=ids).search(q, 10)
    for index in (exact, ivf):
        got, cos = index.search(q, 10)
        assert torch.equal(got, want)
        torch.testing.assert_close(cos, want_cos)


def test_item_vectors_cache_and_growth_equal_projecting_everything():
    torch.manual_seed(0)
    proj = torch.nn.Linear(12, 8)
    text = torch.randn(50, 12)
    cold = torch.rand(50) < 0.5
    vecs = ItemVectors(proj, proj.parameters)
    first = vecs(text)
    assert vecs(text) is not None and vecs(text).data_ptr() == first.data_ptr()  # cached
    index = vecs.pool_index(text, cold)
    more, more_cold = torch.cat([text, torch.randn(7, 12)]), torch.cat([cold, torch.ones(7,
                                                                              dtype=torch.bool)])
    vecs.items_added(more, len(text), more_cold)
    with torch.no_grad():
        torch.testing.assert_close(vecs(more), proj(more))
    assert vecs.pool_index(more, more_cold) is index and len(index) == int(more_cold.sum())
    with torch.no_grad():
        proj.weight.mul_(2.0)  # new weights: the cache is stale and recomputed
        torch.testing.assert_close(vecs(more), proj(more))


# ---------------------------------------------------------------- LIGER's hybrid rule


def test_rerank_from_an_index_equals_scoring_every_item():
    g = torch.Generator().manual_seed(0)
    n, b, kk, k = 60, 6, 5, 8
    cold = torch.rand(n, generator=g) < 0.3
    dense = torch.randn(b, n, generator=g)
    beam = torch.randint(0, n, (b, kk), generator=g)
    beam[0, -2:] = -1  # a short beam
    beam[1, 0] = int(cold.nonzero()[0])  # a cold item in the beam too
    exact_items, exact_scores = liger_rerank(beam, cold, dense, k)
    pool = cold.nonzero().flatten()
    top = torch.topk(dense[:, pool], k, dim=1)
    scores = dense.gather(1, beam.clamp_min(0)).masked_fill(beam < 0, float("-inf"))
    items, got = liger_rerank(beam, cold, ColdTop(scores, pool[top.indices], top.values), k)
    assert torch.equal(items, exact_items)
    torch.testing.assert_close(got, exact_scores)


@pytest.mark.parametrize("exclude", [False, True])
def test_liger_indexed_hybrid_equals_exact_hybrid_and_after_adding_items(exclude):
    cat = sid_catalogue(n=40, n_cold=12, text_dim=12)
    cat = replace(cat, codebook_sizes=(4, 4, 12))  # room for the added items' tokens
    model = LIGER(TINY, cat).eval()
    b = sid_batch(cat)
    exact = LIGERInference(beam=6, hybrid_k=6, exclude_history=exclude)
    indexed = replace(exact, cold_index_min=1)

    def agree() -> None:
        want, want_s = model.recommend(b["history"], b["user"], 8, exact)
        got, got_s = model.recommend(b["history"], b["user"], 8, indexed)
        assert torch.equal(got, want)
        torch.testing.assert_close(got_s, want_s)

    agree()
    g = torch.Generator().manual_seed(1)
    new_codes = torch.stack([torch.randint(0, s, (5,), generator=g) for s in (4, 4)], dim=1)
    new = torch.from_numpy(extend_sids(cat.sids.numpy(), new_codes.numpy()))
    grown = replace(cat, item_text=cat.item_text + ["new"] * 5,
                    cold=torch.cat([cat.cold, torch.ones(5, dtype=torch.bool)]),
                    popularity=torch.cat([cat.popularity, torch.zeros(5)]),
                    text_emb=torch.cat([cat.text_emb, torch.randn(5, 12, generator=g) * 3]),
                    sids=torch.cat([cat.sids, new]))
    assert int(new[:, -1].max()) < 12
    model.items_added(grown, cat.n_items)
    agree()


# ---------------------------------------------------------------- balanced RQ-KMeans


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_assign_from_nearest_candidates_equals_full_orders(seed):
    from sidrec.tokenize.rqkmeans import balanced_assign

    rng = np.random.default_rng(seed)
    # a few dense blobs and many centroids: most rows are refused by their 4 nearest
    x = (rng.standard_normal((6, 8)) * 4)[rng.integers(0, 6, 3000)] + rng.standard_normal(
        (3000, 8))
    centroids = x[rng.choice(3000, 48, replace=False)].astype(np.float32)
    capacity = int(np.ceil(3000 / 48))
    fast = balanced_assign(x, centroids, capacity, candidates=4)
    np.testing.assert_array_equal(fast, balanced_assign(x, centroids, capacity, candidates=0))
    assert np.bincount(fast, minlength=48).max() <= capacity


def test_liger_one_encoder_pass_is_bit_identical_to_generate_plus_score():
    # The hybrid used to encode the history twice (generate, then score); one pass now.
    cat = sid_catalogue(n=40, n_cold=12, text_dim=12)
    model = LIGER(TINY, cat).eval()
    b = sid_batch(cat)
    for exclude in (False, True):
        inference = LIGERInference(beam=6, hybrid_k=6, hybrid_beam=6, exclude_history=exclude,
                                   constrained=False)  # `generate` = the hybrid's beam
        dense = model.score(b["history"], b["user"])
        if exclude:
            dense = dense.index_put((torch.arange(8)[:, None].expand(8, 5)[b["history"] >= 0],
                                     b["history"][b["history"] >= 0]), torch.tensor(-torch.inf))
        beam, _ = model.gen.top_k(model.generate(b["history"], b["user"], inference), 6)
        want = liger_rerank(beam, model.cold, dense, 8)
        got = model.recommend(b["history"], b["user"], 8, inference)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
