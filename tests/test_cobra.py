"""COBRA: cascade layout, BeamFusion, grouped neighbour search, training and inference."""

import math
from dataclasses import replace

import pytest
import torch

from sidrec.errors import SidrecError
from sidrec.models import get_model_class
from sidrec.models.base import Catalogue
from sidrec.models.cobra import Cobra, CobraBase
from sidrec.models.cobra_decode import CobraInference, beam_fusion
from sidrec.models.item_groups import GroupedItems
from sidrec.models.item_index import ItemIndex
from sidrec.models.retrieval import merge_candidates

SIZES = (4, 4, 3)  # 2 sparse levels x 4 codes + collision token


def catalogue(n_items: int = 24, seed: int = 0) -> Catalogue:
    g = torch.Generator().manual_seed(seed)
    codes = torch.stack([torch.arange(n_items) % 4, (torch.arange(n_items) // 4) % 4], dim=1)
    collision = torch.zeros(n_items, dtype=torch.long)
    for i in range(n_items):  # number the items sharing both codes
        collision[i] = int(((codes[:i] == codes[i]).all(1)).sum())
    sids = torch.cat([codes, collision[:, None]], dim=1)
    cold = torch.zeros(n_items, dtype=torch.bool)
    cold[-2:] = True
    return Catalogue(
        item_text=[f"item {i}" for i in range(n_items)], cold=cold,
        popularity=torch.ones(n_items), text_emb=torch.randn(n_items, 16, generator=g),
        sids=sids, codebook_sizes=(4, 4, int(collision.max()) + 1),
    )


def small_model(name: str = "cobra", **kw) -> CobraBase:
    """`name`: cobra or one of its trained ablations."""
    cls = get_model_class(name)
    torch.manual_seed(0)
    cfg = replace(cls.Config(), d_model=32, n_layers=2, n_heads=2, head_dim=16, d_ff=64,
                  dropout=0.0, max_len=8, **kw)
    return cls(cfg, catalogue())


def test_beam_fusion_hand_computed():
    beam = torch.tensor([[math.log(0.75), math.log(0.25)]])  # (1, 2)
    cos = torch.tensor([[[1.0, 0.0], [1.0, float("-inf")]]])  # (1, 2, 2)
    out = beam_fusion(beam, cos, tau=1.0, psi=1.0)
    e = math.e
    expected = torch.tensor([[[0.75 * e / (e + 1), 0.75 / (e + 1)], [0.25, 0.0]]])
    torch.testing.assert_close(out, expected)
    # psi = 0: uniform within a beam's items (sparse only); tau large: best beam only.
    torch.testing.assert_close(beam_fusion(beam, cos, 1.0, 0.0)[0, 0], torch.tensor([.375, .375]))
    assert beam_fusion(beam, cos, 1e4, 1.0)[0, 1].sum() < 1e-6
    # psi large: each beam keeps only its nearest item.
    assert beam_fusion(beam, cos, 1.0, 1e4)[0, 0, 1] < 1e-6


def test_grouped_neighbours_equal_brute_force():
    g = torch.Generator().manual_seed(1)
    keys = torch.randint(0, 5, (40,), generator=g)
    vecs = torch.randn(40, 8, generator=g)
    groups = GroupedItems(keys)
    queries = torch.randn(7, 8, generator=g)
    qkeys = torch.tensor([0, 1, 2, 3, 4, 4, 9])  # 9: no such group
    members, cos = groups.nearest(queries, qkeys, vecs)
    for q in range(7):
        got = {int(m): float(c) for m, c in zip(members[q], cos[q], strict=True) if m >= 0}
        want = {int(i): float(torch.cosine_similarity(queries[q], vecs[i], dim=0))
                for i in torch.nonzero(keys == qkeys[q]).flatten()}
        assert got.keys() == want.keys()
        for i in want:
            assert got[i] == pytest.approx(want[i], abs=1e-5)


def _dense_prediction(model: Cobra, seq: torch.Tensor) -> torch.Tensor:
    """v̂ of the last item of `seq` as the training pass computes it (its last code token)."""
    v = model.dense.encoder(seq.clamp_min(0))
    x, pad = model.cascade(seq, v)
    h = model.decoder(x, pad)
    return model.dense.head(h[:, -2])


def test_dense_prediction_sees_next_sparse_codes_but_not_its_dense_vector():
    model = small_model().eval()
    seq = torch.tensor([[-1, 3, 5, 7, 9]])
    base = _dense_prediction(model, seq)
    # The target's own dense vector is never an input: changing its text changes nothing.
    model.dense.encoder.text_emb[9] += 5.0
    torch.testing.assert_close(_dense_prediction(model, seq), base)
    # Its sparse codes are inputs: changing them changes the prediction.
    model.sparse.codes[9] = (model.sparse.codes[9] + 1) % 4
    assert not torch.allclose(_dense_prediction(model, seq), base)


def test_training_layout_matches_incremental_decoding():
    # The every-position training pass and the cached decoding of `recommend` must read the
    # same tokens: the training pass's prediction for the last item equals prefill + step.
    model = small_model().eval()
    history = torch.tensor([[-1, 3, 5, 7]])
    x, pad = model.cascade(history, model.dense.vectors()[history.clamp_min(0)], shift=1)
    _, cache = model.decoder.prefill(x, pad)
    h = model.decoder.step(model.code_tokens(model.sparse.codes[9][None]), cache)
    torch.testing.assert_close(model.dense.head(h[:, -1]),
                               _dense_prediction(model, torch.tensor([[-1, 3, 5, 7, 9]])))


def test_training_lowers_both_losses():
    model = small_model()
    batch = {"history": torch.tensor([[-1, 0, 1, 2], [3, 4, 5, 6], [-1, -1, 8, 9]]),
             "target": torch.tensor([3, 7, 10]), "user": torch.tensor([0, 1, 2])}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model(batch)
    for _ in range(60):
        opt.zero_grad()
        model(batch)["loss"].backward()
        opt.step()
    last = model(batch)
    assert last["loss_sparse"] < 0.3 * first["loss_sparse"]
    assert last["loss_dense"] < first["loss_dense"]


@pytest.mark.parametrize("mode", ["fusion", "no-dense", "no-sparse", "no-beamfusion"])
def test_recommend_returns_distinct_catalogue_items(mode):
    model = small_model().eval()
    history = torch.tensor([[-1, 0, 1, 2], [3, 4, 5, 6]])
    items, scores = model.recommend(history, torch.tensor([0, 1]), 10, CobraInference(mode=mode))
    assert items.shape == (2, 10)
    for row in items:
        real = row[row >= 0]
        assert len(set(real.tolist())) == len(real)
        assert ((real >= 0) & (real < 24)).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_group_retrieval_can_return_cold_items():
    # A wide beam covers every sparse ID, so every item -- cold ones too -- is a candidate.
    model = small_model().eval()
    wide = CobraInference(neighbours=8, beam=16)
    items, _ = model.recommend(torch.tensor([[-1, 0, 1, 2]]), torch.tensor([0]), 24, wide)
    assert {22, 23} <= set(items[0].tolist())


def test_seen_items_leave_their_place_to_unseen_items_of_the_same_sparse_id():
    # items i and i + 16 (i < 8) share a sparse ID; a beam of 16 covers all 16 of them.
    # With one neighbour per beam, a seen item must not take its group's only slot.
    model = small_model().eval()
    masked = CobraInference(neighbours=1, beam=16, exclude_history=True)
    items, _ = model.recommend(torch.arange(8)[None], torch.tensor([0]), 16, masked)
    assert sorted(items[0].tolist()) == list(range(8, 24))


def test_without_dense_a_beam_takes_its_whole_group_not_the_nearest_items():
    # psi = 0 ranks the sparse ID's items alike; which of them are candidates must not
    # depend on the dense vector either (one neighbour would keep 16 of the 24 items)
    model = small_model().eval()
    sparse_only = CobraInference(mode="no-dense", neighbours=1, beam=16)
    items, _ = model.recommend(torch.tensor([[-1, 0, 1, 2]]), torch.tensor([0]), 24,
                               sparse_only)
    assert sorted(items[0].tolist()) == list(range(24))


def test_merge_keeps_best_score_of_duplicates():
    items = torch.tensor([[5, 3, 5, -1]])
    scores = torch.tensor([[0.2, 0.5, 0.9, 1.0]])
    out, top = merge_candidates(items, scores, 3)
    assert out.tolist() == [[5, 3, -1]]
    torch.testing.assert_close(top[0, :2], torch.tensor([0.9, 0.5]))


def test_sparse_id_groups_partition_the_catalogue():
    model = small_model()
    groups, index = model.sparse.tables()
    sparse = model.sparse.codes
    group = index.lookup(sparse)  # (n_items,) group id of each item's sparse ID
    assert (group >= 0).all() and len(index) == len(torch.unique(sparse, dim=0))
    table = groups.padded(torch.arange(len(index)))
    for g in range(len(index)):
        members = table[g][table[g] >= 0]
        assert members.tolist() == torch.nonzero(group == g).view(-1).tolist()
        assert (sparse[members] == sparse[members[0]]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_recommend_on_cuda_matches_cpu():
    model = small_model().eval()
    history = torch.tensor([[-1, 0, 1, 2], [3, 4, 5, 6]])
    users = torch.tensor([0, 1])
    cpu_items, _ = model.recommend(history, users, 10)
    model.sparse.tables()  # a CPU index built first must be rebuilt on the new device
    model = model.cuda()
    items, scores = model.recommend(history.cuda(), users.cuda(), 10)
    assert items.device.type == "cuda" and scores.device.type == "cuda"
    groups, index = model.sparse.tables()
    assert groups.items.device.type == "cuda" and index.device.type == "cuda"
    for row in items.cpu():
        real = row[row >= 0]
        assert len(real) == 10 and len(set(real.tolist())) == 10 and (real < 24).all()
    assert cpu_items.shape == items.shape


@pytest.mark.parametrize("name", ["cobra-no-dense", "cobra-no-sparse"])
def test_trained_ablations_train_and_recommend(name):
    """w/o dense: the sparse part alone, full SIDs decoded (a decoder-only TIGER);
    w/o sparse: the dense part alone, v̂ from the last dense token."""
    model = small_model(name)
    names = {name.split(".")[0] for name, _ in model.named_parameters()}
    if name == "cobra-no-dense":
        assert model.dense is None and "dense" not in names
        assert model.levels == 3  # the collision token too: a full SID names one item
    else:
        assert model.sparse is None and "sparse" not in names and model.levels == 0
    batch = {"history": torch.tensor([[-1, 0, 1, 2], [3, 4, 5, 6], [-1, -1, 8, 9]]),
             "target": torch.tensor([3, 7, 10]), "user": torch.tensor([0, 1, 2])}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model(batch)
    assert set(first) == {"loss", "loss_sparse" if model.sparse is not None else "loss_dense"}
    for _ in range(60):
        opt.zero_grad()
        model(batch)["loss"].backward()
        opt.step()
    assert model(batch)["loss"] < 0.5 * first["loss"]
    model.eval()
    history = torch.tensor([[-1, 0, 1, 2], [3, 4, 5, 6]])
    items, scores = model.recommend(history, torch.tensor([0, 1]), 10)
    assert ((items >= 0) & (items < 24)).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    masked = CobraInference(exclude_history=True)
    items, _ = model.recommend(history, torch.tensor([0, 1]), 10, masked)
    for row, seen in zip(items.tolist(), history.tolist(), strict=True):
        assert not set(row) & {i for i in seen if i >= 0}
    assert model.variants() == {"": model.inference}


def test_without_dense_at_the_sparse_granularity_each_group_is_one_tied_block():
    """cobra-no-dense-coarse: sequences of 1-level sparse IDs (4 groups of 6); every item
    of a beam's group gets the beam's score, so the evaluator scores them as a block."""
    cls = get_model_class("cobra-no-dense-coarse")
    torch.manual_seed(0)
    model = cls(cls.Config(d_model=32, n_heads=2, head_dim=16, d_ff=64, max_len=8,
                           sparse_levels=1), catalogue()).eval()
    assert model.levels == 1 and model.dense is None
    history = torch.tensor([[-1, 0, 1, 2], [3, 4, 5, 6]])
    items, scores = model.recommend(history, torch.tensor([0, 1]), 12, CobraInference(beam=2))
    for row, row_scores in zip(items.tolist(), scores.tolist(), strict=True):
        groups = [i % 4 for i in row]  # level 0 = item % 4
        assert groups[:6] == [groups[0]] * 6 and groups[6:] == [groups[6]] * 6
        assert len(set(row_scores[:6])) == 1 and row_scores[0] > row_scores[6]
    masked = CobraInference(beam=2, exclude_history=True)
    items, _ = model.recommend(history, torch.tensor([0, 1]), 8, masked,
                               seen=torch.tensor([[7, 11, 0, 1, 2], [-1, 8, 4, 5, 6]]))
    assert not set(items[0].tolist()) & {7, 11, 0, 1, 2}
    assert not set(items[1].tolist()) & {8, 4, 5, 6}


def test_group_sizes_are_reported_and_coarser_sparse_ids_hold_more_items():
    fine = small_model().diagnostics()
    coarse = small_model(sparse_levels=1).diagnostics()
    # the catalogue's codes: level 0 = item % 4, level 1 = (item // 4) % 4, 24 items
    assert fine["groups"] == 16 and coarse["groups"] == 4
    assert coarse["items_per_group_mean"] == 6.0 and coarse["items_alone"] == 0.0
    with pytest.raises(SidrecError, match="sparse_levels=3"):
        small_model(sparse_levels=3)


def test_padding_width_does_not_change_a_recommendation():
    model = small_model().eval()
    short = torch.tensor([[0, 1, 2]])
    wide = torch.tensor([[-1, -1, -1, 0, 1, 2]])
    a = model.recommend(short, torch.tensor([0]), 5)
    b = model.recommend(wide, torch.tensor([0]), 5)
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


@pytest.mark.parametrize("name,tokens", [("cobra", "sparse"), ("cobra-no-dense", "cascade"),
                                         ("cobra-no-sparse", "sparse")])
def test_the_model_not_its_tokens_setting_chooses_the_parts(name, tokens):
    """Each kind of item is a model of its own; `tokens` only records it in config.json."""
    with pytest.raises(SidrecError, match=f"tokens={tokens!r}.*model of its own"):
        small_model(name, tokens=tokens)


@pytest.mark.parametrize("name", ["cobra", "cobra-no-dense", "cobra-no-sparse"])
def test_a_model_told_of_added_items_recommends_as_one_built_with_them(name):
    model = small_model(name).eval()
    history = torch.tensor([[-1, 0, 1, 2], [3, 4, 5, 6]])
    model.recommend(history, torch.tensor([0, 1]), 5)  # tables and item vectors built
    grown = catalogue(n_items=32)  # the first 24 items as before, 8 more
    model.items_added(grown, 24)
    fresh = get_model_class(name)(model.cfg, grown).eval()
    fresh.load_state_dict(model.state_dict())
    wide = CobraInference(beam=16, neighbours=8)
    got = model.recommend(history, torch.tensor([0, 1]), 32, wide)
    want = fresh.recommend(history, torch.tensor([0, 1]), 32, wide)
    assert torch.equal(got[0], want[0]) and (got[0] >= 24).any()
    torch.testing.assert_close(got[1], want[1])


def test_the_global_index_is_built_once_while_the_item_vectors_stand():
    # ItemIndex.of keys its cache by the tensor's identity: a fresh view of the same
    # vectors per call rebuilt the global index for every batch.
    model = small_model().eval()
    first, again = model.dense.vectors(), model.dense.vectors()
    assert first is again and ItemIndex.of(first) is ItemIndex.of(again)


@pytest.mark.parametrize("mode", ["fusion", "no-dense", "no-beamfusion"])
def test_added_items_of_new_sparse_ids_join_the_groups_in_place(mode):
    # 12 items use 12 of the 16 sparse IDs; of the 8 added, 4 start new groups
    model = small_model().eval()
    model.items_added(catalogue(12), 0)
    history = torch.tensor([[-1, 0, 1, 2], [3, 4, 5, 6]])
    model.recommend(history, torch.tensor([0, 1]), 5)  # the tables of the 12 are built
    grown = catalogue(20)
    model.items_added(grown, 12)
    _, index = model.sparse.tables()  # extended, not rebuilt: new groups numbered last
    assert index.lookup(model.sparse.codes[12:16]).tolist() == [12, 13, 14, 15]
    fresh = Cobra(model.cfg, grown).eval()
    fresh.load_state_dict(model.state_dict())
    for cobra in (model, fresh):
        groups, index = cobra.sparse.tables()
        table = groups.padded(index.lookup(cobra.sparse.codes))  # (n_items, W)
        assert [sorted(row[row >= 0].tolist()) for row in table] == [
            [j for j in range(20) if j % 16 == i % 16] for i in range(20)]
    cfg = CobraInference(mode=mode, beam=16, neighbours=1)
    got = model.recommend(history, torch.tensor([0, 1]), 20, cfg)
    want = fresh.recommend(history, torch.tensor([0, 1]), 20, cfg)
    assert torch.equal(got[0], want[0]) and (got[0] >= 12).any()
    torch.testing.assert_close(got[1], want[1])
