"""LIGER and Dense (SID): the inference rule, the cold-free dense softmax, training."""

from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml
from conftest import sid_batch, sid_catalogue

from sidrec.config import from_dict
from sidrec.errors import SidrecError
from sidrec.models.base import NoInference
from sidrec.models.liger import (
    LIGER,
    DenseSID,
    DenseSIDConfig,
    LIGERConfig,
    LIGERInference,
    liger_rerank,
)

TINY = LIGERConfig(
    d_model=32, n_heads=2, head_dim=16, d_ff=64, n_encoder_layers=1, n_decoder_layers=1,
    dropout=0.0, user_buckets=16, max_history=5, text_hidden=32,
)
TINY_INFERENCE = LIGERInference(beam=5, hybrid_k=5)
CONFIGS = Path(__file__).resolve().parents[1] / "src" / "sidrec" / "configs"


def test_hybrid_retrieves_cold_targets_the_beam_cannot():
    # A perfect dense head: the target (a cold item) has the highest dense score.
    cold = torch.tensor([False, False, False, True, True])
    beam_items = torch.tensor([[0, 1, -1], [2, 0, 1]])  # beams never hold cold items
    dense = torch.tensor([[0.1, 0.2, 0.3, 0.9, 0.0], [0.5, 0.1, 0.2, 0.0, 0.8]])
    items, scores = liger_rerank(beam_items, cold, dense, k=2)
    assert items.tolist() == [[3, 1], [4, 0]]
    torch.testing.assert_close(scores, torch.tensor([[0.9, 0.2], [0.8, 0.5]]))
    # Item 2 is in no beam of user 0 and not cold: never returned for that user.
    items, _ = liger_rerank(beam_items, cold, dense, k=5)
    assert 2 not in items[0].tolist() and items[0, -1] == -1


def test_hybrid_is_dense_ranking_on_beam_union_cold():
    cat = sid_catalogue(text_dim=12)
    model = LIGER(TINY, cat).eval()
    b = sid_batch(cat)
    n, kk = cat.n_items, 4  # K well below the 24 warm items: the beam must matter
    beam_items, _ = model.recommend(b["history"], b["user"], kk,
                                    LIGERInference(mode="generative", beam=kk))
    dense, _ = model.recommend(b["history"], b["user"], n, LIGERInference(mode="dense"))
    hybrid, _ = model.recommend(b["history"], b["user"], n,
                                LIGERInference(mode="hybrid", hybrid_k=kk, beam=kk))
    for row in range(len(dense)):
        allowed = set(beam_items[row][beam_items[row] >= 0].tolist()) | set(
            torch.nonzero(cat.cold).flatten().tolist())
        assert len(allowed) < n  # were it every item, hybrid would equal dense, beam or not
        expected = [i for i in dense[row].tolist() if i in allowed]
        got = [i for i in hybrid[row].tolist() if i >= 0]
        assert got == expected and got != dense[row].tolist()


def test_cold_items_never_enter_the_dense_softmax():
    cat = sid_catalogue(text_dim=12)
    torch.manual_seed(0)
    model = LIGER(TINY, cat)
    b = sid_batch(cat)
    before = model(b)["loss_dense"]
    model.text_emb[cat.cold] = torch.randn(int(cat.cold.sum()), 12) * 100  # only cold rows
    torch.testing.assert_close(model(b)["loss_dense"], before)
    model.text_emb[7] += 5.0  # a warm item: the softmax does see it
    assert not torch.allclose(model(b)["loss_dense"], before)


def test_both_losses_fall_on_a_tiny_batch():
    cat = sid_catalogue(text_dim=12)
    torch.manual_seed(0)
    model = LIGER(TINY, cat)
    b = sid_batch(cat)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model(b)
    assert set(first) == {"loss", "loss_gen", "loss_dense"}
    torch.testing.assert_close(first["loss"], first["loss_gen"] + first["loss_dense"])
    for _ in range(80):
        opt.zero_grad()
        model(b)["loss"].backward()
        opt.step()
    last = model(b)
    assert last["loss_gen"] < 0.5 * first["loss_gen"]
    assert last["loss_dense"] < 0.5 * first["loss_dense"]


@pytest.mark.parametrize("mode", ["hybrid", "generative", "dense"])
def test_modes_return_k_items(mode):
    cat = sid_catalogue(text_dim=12)
    model = LIGER(TINY, cat).eval()
    b = sid_batch(cat)
    items, scores = model.recommend(b["history"], b["user"], 5,
                                    LIGERInference(mode=mode, beam=5, hybrid_k=5))
    assert items.shape == scores.shape == (8, 5)
    assert ((items >= -1) & (items < cat.n_items)).all()


def test_dense_sid_trains_the_dense_head_only():
    cat = sid_catalogue(text_dim=12)
    own = {f.name for f in fields(DenseSIDConfig)}
    model = DenseSID(DenseSIDConfig(**{k: v for k, v in TINY.__dict__.items() if k in own}), cat)
    out = model(sid_batch(cat))
    assert set(out) == {"loss", "loss_dense"}
    assert model.variants() == {"": NoInference()}
    assert not any("decoder" in name for name, _ in model.named_parameters())
    items, scores = model.recommend(sid_batch(cat)["history"], torch.arange(8), 5)
    torch.testing.assert_close(scores, model.score(sid_batch(cat)["history"], torch.arange(8))
                               .gather(1, items))
    with pytest.raises(SidrecError, match="gen_weight"):  # no decoder: nothing to weigh
        from_dict(DenseSIDConfig, {"gen_weight": 1.0})


def test_presets_load_into_the_configs():
    loaded = {}
    for model, cfg, inference in (("liger", LIGERConfig, LIGERInference),
                                  ("dense-sid", DenseSIDConfig, NoInference)):
        for name, preset in yaml.safe_load((CONFIGS / f"{model}.yaml").read_text()).items():
            sections = {"model": from_dict(cfg, preset["model"]),
                        "inference": from_dict(inference, preset.get("inference") or {})}
            for section, config in sections.items():  # every value lands where it is named
                for key, value in (preset.get(section) or {}).items():
                    assert getattr(config, key) == value, (model, name, section, key)
            loaded[model, name] = sections
    # what the configs' comments promise: the paper's K = 20, K = 100 chosen for cpu
    assert loaded["liger", "paper"]["inference"].hybrid_k == 20
    assert loaded["liger", "cpu"]["inference"].hybrid_k == 100
    for model in ("liger", "dense-sid"):  # the paper sizes, not the cpu ones
        assert loaded[model, "paper"]["model"].d_model == 128
        assert loaded[model, "cpu"]["model"].d_model == 64


def test_text_and_level_inputs_start_at_the_sid_embeddings_scale():
    # At PyTorch's default init the level embedding was N(0, 1), 50x the SID-token
    # embeddings, and the encoder could hardly read the SIDs.
    cat = sid_catalogue(text_dim=12)
    torch.manual_seed(0)
    model = LIGER(TINY, cat)
    extras = model.encoder.text_inputs(sid_batch(cat)["history"], model.text_emb)
    assert extras.std() < 2 * model.tokens.emb.weight.std()
