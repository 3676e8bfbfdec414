"""Pop, SASRec and Dense: values, causality, padding, fitting, and the ML-100k check."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sidrec.errors import SidrecError
from sidrec.models import available_models, get_model_class
from sidrec.models.base import Catalogue
from sidrec.models.dense import DenseConfig
from sidrec.models.sasrec import SASRecConfig

TINY_SAS = SASRecConfig(d_model=32, n_layers=2, n_heads=2, d_ff=32, dropout=0.0, max_len=12)
TINY_DENSE = DenseConfig(
    d_model=32, n_layers=1, n_heads=2, d_ff=32, dropout=0.0, max_len=12, text_hidden=16
)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors: a second intra-op thread only adds synchronisation, and on a busy
    # machine each barrier can wait a whole scheduler slice.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def catalogue(n_items: int = 20, text_dim: int = 8, seed: int = 0) -> Catalogue:
    g = torch.Generator().manual_seed(seed)
    pop = torch.randint(0, 50, (n_items,), generator=g).float()
    return Catalogue(
        item_text=[f"item {i}" for i in range(n_items)],
        cold=pop == 0,
        popularity=pop,
        text_emb=torch.randn(n_items, text_dim, generator=g),
    )


def tiny_batch(n_items: int = 20, B: int = 8, L: int = 10, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    history = torch.randint(0, n_items, (B, L), generator=g)
    history[: B // 2, : L // 2] = -1  # some left padding
    return {
        "history": history,
        "target": torch.randint(0, n_items, (B,), generator=g),
        "user": torch.arange(B),
    }


def build(name: str, cfg=None, cat: Catalogue | None = None, seed: int = 0):
    cls = get_model_class(name)
    torch.manual_seed(seed)
    default = {"sasrec": TINY_SAS, "dense": TINY_DENSE, "dense-text": TINY_DENSE}
    return cls(cfg if cfg is not None else default.get(name, cls.Config()), cat or catalogue())


def overfit(model, batch, steps: int = 80, lr: float = 1e-2) -> tuple[float, float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    first = None
    for _ in range(steps):
        loss = model(batch)["loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, model(batch)["loss"].item()


def test_registry_has_the_baselines():
    assert {"pop", "sasrec", "dense", "dense-text"} <= set(available_models())


# ---------------------------------------------------------------- Pop


def test_pop_ranks_by_popularity_with_stable_ties():
    cat = catalogue()
    cat.popularity = torch.tensor([3.0, 5, 5, 0, 1, 5] + [0.0] * 14)
    pop = build("pop", cat=cat)
    items, scores = pop.recommend(torch.full((2, 3), -1), torch.arange(2), k=5)
    assert items.tolist() == [[1, 2, 5, 0, 4]] * 2  # ties listed by item id
    assert scores[0].tolist() == [5.0, 5.0, 5.0, 3.0, 1.0]
    assert pop.score(torch.full((2, 3), -1), torch.arange(2)).shape == (2, 20)
    grown = dataclasses.replace(
        cat,
        item_text=cat.item_text + ["new"],
        popularity=torch.cat([cat.popularity, torch.zeros(1)]),
    )
    pop.set_catalogue(grown)
    assert pop.recommend(torch.full((1, 3), -1), torch.arange(1), k=30)[0].shape == (1, 21)


# ---------------------------------------------------------------- SASRec


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_sasrec_overfits_a_tiny_batch(loss):
    model = build("sasrec", dataclasses.replace(TINY_SAS, loss=loss))
    first, last = overfit(model, tiny_batch())
    # CE memorises the batch; BCE's loss keeps the noise of its sampled negatives
    assert last < (0.05 if loss == "ce" else 0.4) * first, (first, last)
    assert model.display_name == f"sasrec ({loss.upper()})"
    assert model(tiny_batch()).keys() == {"loss", f"loss_{loss}"}


def test_sasrec_is_causal_and_ignores_padding_width():
    model = build("sasrec").eval()
    batch = tiny_batch()
    h, _ = model.hidden(batch["history"])
    changed = batch["history"].clone()
    changed[:, -1] = (changed[:, -1] + 1) % 20  # alter only the most recent item
    h2, _ = model.hidden(changed)
    torch.testing.assert_close(h[:, :-1], h2[:, :-1])  # earlier positions cannot see it
    assert not torch.allclose(h[:, -1], h2[:, -1])
    wider = torch.cat([torch.full((8, 2), -1), batch["history"]], dim=1)  # 2 more pad columns
    torch.testing.assert_close(
        model.score(wider, batch["user"]), model.score(batch["history"], batch["user"])
    )
    # padded queries do not produce NaN (each attends to itself)
    assert torch.isfinite(h).all()


def test_sasrec_heads_must_split_d_model():
    with pytest.raises(SidrecError, match="divisible by n_heads"):
        build("sasrec", dataclasses.replace(TINY_SAS, n_heads=3))


def test_sasrec_recommend_is_topk_of_score_and_truncates_long_history():
    model = build("sasrec").eval()
    batch = tiny_batch(L=20)  # longer than max_len = 12: the last 12 items are used
    items, scores = model.recommend(batch["history"], batch["user"], k=5)
    full = model.score(batch["history"], batch["user"])
    torch.testing.assert_close(scores, full.topk(5).values)
    torch.testing.assert_close(full, model.score(batch["history"][:, -12:], batch["user"]))


# ---------------------------------------------------------------- Dense


@pytest.mark.parametrize("name", ["dense", "dense-text"])
def test_dense_overfits_a_tiny_batch(name):
    model = build(name)
    first, last = overfit(model, tiny_batch())
    assert last < 0.1 * first, (first, last)
    assert model(tiny_batch()).keys() == {"loss", "loss_dense"}


def cold_tail_catalogue(n_warm: int = 20, n_cold: int = 4) -> Catalogue:
    """`catalogue()` plus n_cold cold items after the warm ones (tiny_batch never uses them)."""
    cat = catalogue(n_warm)
    n = n_warm + n_cold
    return dataclasses.replace(
        cat,
        item_text=[f"item {i}" for i in range(n)],
        cold=torch.arange(n) >= n_warm,
        popularity=torch.cat([cat.popularity.clamp_min(1), torch.zeros(n_cold)]),
        text_emb=torch.cat([cat.text_emb, torch.randn(n_cold, cat.text_emb.shape[1])]),
    )


@pytest.mark.parametrize("name", ["dense", "dense-text"])
def test_dense_trains_without_cold_items(name):
    """Cold items are out of the training softmax (as LIGER): the loss does not depend on
    their text and they get no gradient, so training never pushes them down."""
    model = build(name, cat=cold_tail_catalogue())
    batch = tiny_batch()
    loss = model(batch)["loss"]
    loss.backward()
    if model.item_emb is not None:
        grad = model.item_emb.weight.grad  # (24, d)
        assert grad[20:].abs().max() == 0  # cold ID embeddings: no push-down
        assert grad[:20].abs().max() > 0
    with torch.no_grad():
        model.text_emb[20:] = torch.randn(4, model.text_emb.shape[1]) * 10  # other cold text
    torch.testing.assert_close(model(batch)["loss"], loss.detach(), rtol=0, atol=0)
    # ... and they are still ranked at inference, from their text
    assert torch.isfinite(model.eval().score(batch["history"], batch["user"])[:, 20:]).all()


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_sasrec_trains_without_cold_items(loss):
    """SASRec leaves cold items out of its training softmax (CE) and its negatives (BCE),
    as Dense and LIGER do: their ID embeddings get no gradient."""
    model = build("sasrec", SASRecConfig(d_model=16, n_heads=2, max_len=10, loss=loss),
                  cat=cold_tail_catalogue())
    for seed in range(5):  # BCE draws negatives: several draws, none of them cold
        torch.manual_seed(seed)
        model.zero_grad()
        model(tiny_batch(seed=seed))["loss"].backward()
        grad = model.item_emb.weight.grad[1:]  # (24, d); row 0 is padding
        assert grad[20:].abs().max() == 0 and grad[:20].abs().max() > 0


def test_tiger_t_leaves_cold_item_tokens_out_of_training():
    model = build("tiger-t", cat=cold_tail_catalogue())
    model(tiny_batch())["loss"].backward()
    grad = model.gen.out.weight.grad  # (24 item tokens, d)
    assert grad[20:].abs().max() == 0 and grad[:20].abs().max() > 0


def test_dense_text_scores_new_items_from_text_and_dense_refuses():
    cat = catalogue()
    text = build("dense-text", cat=cat).eval()
    ids = build("dense", cat=cat).eval()
    assert not any("item_emb" in k for k in text.state_dict())
    assert any("item_emb" in k for k in ids.state_dict())
    batch = tiny_batch()
    before = text.score(batch["history"], batch["user"])
    grown = dataclasses.replace(
        cat,
        item_text=cat.item_text + ["new a", "new b"],
        cold=torch.cat([cat.cold, torch.ones(2, dtype=torch.bool)]),
        popularity=torch.cat([cat.popularity, torch.zeros(2)]),
        text_emb=torch.cat([cat.text_emb, cat.text_emb[:2]]),  # same text as items 0 and 1
    )
    text.set_catalogue(grown)
    after = text.score(batch["history"], batch["user"])
    assert after.shape == (8, 22)
    torch.testing.assert_close(after[:, :20], before)
    torch.testing.assert_close(after[:, 20:], before[:, :2])  # same text, same score
    with pytest.raises(SidrecError, match="cannot rank items added"):
        ids.set_catalogue(grown)


def test_dense_needs_text_embeddings():
    cat = dataclasses.replace(catalogue(), text_emb=None)
    with pytest.raises(SidrecError, match="sidrec embed"):
        build("dense", cat=cat)


# ---------------------------------------------------------------- MovieLens-100k


@pytest.mark.slow
def test_sasrec_beats_pop_on_ml100k(request, tmp_path):
    """SASRec (CE, cpu preset) must beat Pop by a wide margin on test NDCG@10.

    Needs a prepared MovieLens-100k run directory from the `ml100k_run` fixture
    (tests/conftest.py, built with `sidrec.data.prepare`); skipped until both exist.
    """
    pytest.importorskip("sidrec.data.prepare")
    try:
        run_dir = request.getfixturevalue("ml100k_run")
    except pytest.FixtureLookupError:
        pytest.skip("no ml100k_run fixture in tests/conftest.py yet")
    from sidrec.checkpoint import load_model
    from sidrec.data.dataset import Dataset
    from sidrec.evaluate import evaluate
    from sidrec.presets import resolve_config
    from sidrec.train import train

    ds = Dataset.load(run_dir)
    ndcg = {}
    for name in ("pop", "sasrec"):
        # One thread: on a busy 2-core machine a second one costs more than it gives.
        # 10 epochs of the preset's ~24 clear the bar (NDCG@10 0.040 vs Pop's 0.022; 6 gave
        # 0.035, too close) in less than half the CI time.
        settings = {"num_threads": 1, "max_epochs": 10}
        summary = train(resolve_config(name, "cpu", None, settings), tmp_path, dataset=ds,
                        progress=False)
        model = load_model(summary["model_dir"], tmp_path, dataset=ds)
        ndcg[name] = evaluate(model, ds, "test", ks=(10,))["rows"][0]["ndcg@10"]
    assert ndcg["pop"] > 0.005  # the evaluator finds Pop's hits at all
    assert ndcg["sasrec"] > 1.5 * ndcg["pop"], ndcg
