"""TIGER / TIGER (T): training signal, beam == exact ranking, cold items, presets."""

from pathlib import Path

import pytest
import torch
import yaml
from conftest import sid_batch, sid_catalogue
from torch.testing import assert_close

from sidrec.config import from_dict, to_dict
from sidrec.errors import SidrecError
from sidrec.models import REGISTRY
from sidrec.models.base import Catalogue
from sidrec.models.tiger import (
    PRESETS,
    TIGER,
    TIGERT,
    TIGERConfig,
    TIGERInference,
    TIGERTConfig,
)

TINY = TIGERConfig(
    d_model=32, n_heads=2, head_dim=16, d_ff=64, n_encoder_layers=1, n_decoder_layers=1,
    dropout=0.0, user_buckets=16, max_history=5,
)
CONFIGS = Path(__file__).resolve().parents[1] / "src" / "sidrec" / "configs"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_registered_names_and_presets_match_yaml():
    assert REGISTRY["tiger"] is TIGER and REGISTRY["tiger-t"] is TIGERT
    paper = PRESETS["paper"]
    assert (paper.d_model, paper.n_heads, paper.head_dim, paper.d_ff) == (128, 6, 64, 1024)
    assert (paper.n_encoder_layers, paper.n_decoder_layers, paper.user_buckets) == (4, 4, 2000)
    recipes = yaml.safe_load((CONFIGS / "tiger.yaml").read_text())
    atomic = yaml.safe_load((CONFIGS / "tiger-t.yaml").read_text())
    for name, preset in PRESETS.items():
        assert from_dict(TIGERConfig, recipes[name]["model"]) == preset
        assert to_dict(from_dict(TIGERTConfig, atomic[name]["model"])) == to_dict(preset)
        assert from_dict(TIGERInference, recipes[name]["inference"]) == TIGERInference()
        for section in ("inference", "train"):
            assert atomic[name][section] == recipes[name][section]


def test_overfits_a_tiny_batch():
    cat = sid_catalogue()
    model = TIGER(TINY, cat)
    data = sid_batch(cat)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(80):
        out = model(data)
        assert set(out) == {"loss", "loss_gen"}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else out["loss"].item()
    assert out["loss"].item() < 0.1 * first
    # Once fitted, the beam's first item is each row's training target.
    items, _ = model.recommend(data["history"], data["user"], k=1)
    assert torch.equal(items[:, 0], data["target"])


def test_wide_beam_equals_exact_scores():
    cat = sid_catalogue()
    model = TIGER(TINY, cat)
    data = sid_batch(cat, b=4)
    exact = model.exact_scores(data["history"], data["user"], chunk=7)  # (B, n_items)
    assert exact.shape == (4, cat.n_items) and (exact < 0).all()
    out = model.generate(data["history"], data["user"], {"include_cold": True}, beam=cat.n_items)
    top = exact.sort(dim=1, descending=True)
    assert torch.equal(out.items, top.indices)
    assert_close(out.log_probs, top.values, atol=1e-4, rtol=1e-4)
    chosen = torch.tensor([[3, -1], [0, 29], [7, 7], [12, 5]])
    ll = model.log_likelihood(data["history"], data["user"], chosen)
    assert torch.isinf(ll[0, 1])
    ok = chosen >= 0
    assert_close(ll[ok], exact.gather(1, chosen.clamp_min(0))[ok], atol=1e-5, rtol=1e-5)
    # Teacher forcing through `forward` agrees with the scorer on the targets' SIDs:
    # loss_gen is the mean next-code NLL over B targets x n_codes levels.
    target_ll = exact.gather(1, data["target"][:, None])[:, 0]  # (B,)
    loss_gen = model.eval()(data)["loss_gen"]
    assert_close(loss_gen, -target_ll.mean() / cat.sids.shape[1], atol=1e-5, rtol=1e-5)


def test_constrained_recommend_never_returns_cold_items():
    cat = sid_catalogue()
    model = TIGER(TINY, cat)
    data = sid_batch(cat)
    items, scores = model.recommend(data["history"], data["user"], k=cat.n_items)
    n_warm = int((~cat.cold).sum())
    valid = items[:, :n_warm]
    assert (valid >= 0).all() and not cat.cold[valid].any()
    assert (items[:, n_warm:] == -1).all() and torch.isinf(scores[:, n_warm:]).all()
    every = TIGERInference(include_cold=True)
    items, _ = model.recommend(data["history"], data["user"], k=cat.n_items, inference=every)
    assert cat.cold[items].sum() == cat.cold.sum() * len(items)  # every item, cold included


def test_unconstrained_reports_invalid_sids():
    cat = sid_catalogue(n=12, sizes=(4, 4))  # 12 valid SIDs of 16 * collisions sequences
    model = TIGER(TINY, cat)
    data = sid_batch(cat)
    free = TIGERInference(beam=20, constrained=False)
    out = model.generate(data["history"], data["user"], free)
    assert out.n_invalid == int((out.items < 0).sum()) > 0
    items, scores = model.recommend(data["history"], data["user"], k=20, inference=free)
    assert torch.equal(items, out.items)
    assert torch.isinf(scores[items < 0]).all() and torch.isfinite(scores[items >= 0]).all()
    assert model.variants() == {"": TIGERInference(),
                                "unconstrained": TIGERInference(constrained=False)}


def test_tiger_t_uses_one_atomic_token_per_item():
    cat = sid_catalogue()
    cat.sids, cat.codebook_sizes = None, ()  # TIGER (T) needs no tokenizer
    model = TIGERT(TIGERTConfig(**TINY.__dict__), cat)
    assert not TIGERT.needs_sids and model.tokens.sizes == (cat.n_items,)
    data = sid_batch(cat)
    exact = model.exact_scores(data["history"], data["user"])
    assert_close(exact.logsumexp(1), torch.zeros(len(exact)), atol=1e-5, rtol=0)
    items, scores = model.recommend(data["history"], data["user"], k=5)
    assert not cat.cold[items].any()
    assert_close(scores, exact.gather(1, items))
    assert model.variants() == {"": TIGERInference()}
    with pytest.raises(SidrecError, match="cannot rank items added after training"):
        model.set_catalogue(sid_catalogue(n=31))


def test_missing_sids_and_unknown_options_are_user_errors():
    cat = sid_catalogue()
    model = TIGER(TINY, cat)
    history, users = torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    with pytest.raises(SidrecError, match="bem"):
        model.recommend(history, users, k=3, inference={"bem": 5})
    with pytest.raises(SidrecError, match="TIGERInference"):
        model.recommend(history, users, k=3, inference=object())
    cat.sids = None
    with pytest.raises(SidrecError, match="sidrec tokenize"):
        TIGER(TINY, cat)


def test_new_items_can_be_reached_after_set_catalogue():
    cat = sid_catalogue(n=30)
    old = Catalogue(  # the model was trained when only the first 24 items existed
        item_text=cat.item_text[:24], cold=cat.cold[:24],
        popularity=cat.popularity[:24], sids=cat.sids[:24], codebook_sizes=cat.codebook_sizes,
    )
    model = TIGER(TINY, old)
    model.set_catalogue(cat)
    data = sid_batch(cat)
    every = TIGERInference(include_cold=True)
    items, _ = model.recommend(data["history"], data["user"], k=30, inference=every)
    assert set(items[0].tolist()) == set(range(30))
