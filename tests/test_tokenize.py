"""Tokenizers (RQ-VAE, RQ-KMeans) and the tokenize stage, on tiny synthetic data."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from sidrec.errors import SidrecError
from sidrec.io import write_json
from sidrec.run import RunDir
from sidrec.tokenize import (
    RQKMeansConfig,
    RQKMeansTokenizer,
    RQVAEConfig,
    RQVAETokenizer,
    build_tokenizer,
    load_tokenizer,
    run_tokenize,
    sids_for_new_items,
    tokenizer_config,
)
from sidrec.tokenize.rqkmeans import balanced_assign

TINY_VAE = RQVAEConfig(
    levels=2, codebook_size=8, latent_dim=8, hidden=(32,), epochs=40, batch_size=64, lr=3e-3
)
TINY_KM = RQKMeansConfig(levels=2, codebook_size=8, kmeans_iters=10)


def clustered(n=240, d=16, clusters=12, seed=0):
    """Points around `clusters` well-separated centres: a tokenizer must use many codes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)) * 4
    labels = rng.integers(clusters, size=n)
    return (centres[labels] + rng.normal(size=(n, d)) * 0.5).astype(np.float32)


def make_run(tmp_path, vectors, cold, name="toy"):
    """A run directory with a minimal prepared dataset (dataset.py layout) + embeddings."""
    run = tmp_path / name
    root = run / "dataset"
    root.mkdir(parents=True)
    n = len(vectors)
    warm_ids = np.flatnonzero(~cold)
    pd.DataFrame(
        {
            "item": np.arange(n),
            "item_id": [str(i) for i in range(n)],
            "text": [f"item {i}" for i in range(n)],
            "cold": cold,
        }
    ).to_parquet(root / "items.parquet")
    pd.DataFrame({"user": [0], "user_id": ["u0"]}).to_parquet(root / "users.parquet")
    pd.DataFrame(
        {"user": [0], "train": [warm_ids.tolist()], "valid": [n - 2], "test": [n - 1]}
    ).to_parquet(root / "split.parquet")
    manifest = {"format_version": 1, "name": name, "protocol": {"max_history": 20}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    np.save(run / "embeddings.npy", vectors)
    return run


@pytest.mark.parametrize("cfg", [TINY_VAE, TINY_KM], ids=["rqvae", "rqkmeans"])
def test_no_collapse_and_deterministic(cfg):
    # 40 clusters, 32 codes. Without k-means init and dead-code reset this RQ-VAE uses
    # 66 % of its level-1 codes (measured); with them, all of them.
    cfg = type(cfg)(**{**cfg.__dict__, "codebook_size": 32})
    x = clustered(n=400, clusters=40)
    codes = build_tokenizer(cfg, "cpu").fit(x).encode(x)
    assert codes.shape == (len(x), 2) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < cfg.codebook_size
    level1_usage = len(np.unique(codes[:, 0])) / cfg.codebook_size
    assert level1_usage >= 0.9
    again = build_tokenizer(cfg, "cpu").fit(x).encode(x)
    np.testing.assert_array_equal(codes, again)


@pytest.mark.parametrize("cfg", [TINY_VAE, TINY_KM], ids=["rqvae", "rqkmeans"])
def test_encode_stable_after_save_load(cfg, tmp_path):
    x = clustered()
    tok = build_tokenizer(cfg, "cpu").fit(x)
    tok.save(tmp_path / "tok")
    assert not list((tmp_path / "tok").glob("*.pkl"))
    loaded = load_tokenizer(tmp_path / "tok", device="cpu")
    assert type(loaded) is type(tok) and loaded.cfg == cfg
    np.testing.assert_array_equal(loaded.encode(x), tok.encode(x))
    np.testing.assert_allclose(loaded.reconstruct(x), tok.reconstruct(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(SidrecError, match="rqvae|rqkmeans"):
        (RQKMeansTokenizer if cfg.method == "rqvae" else RQVAETokenizer).load(tmp_path / "tok")


def test_rqvae_training_reduces_reconstruction_loss():
    tok = build_tokenizer(TINY_VAE, "cpu").fit(clustered())
    assert tok.fit_log["final"]["recon"] < 0.5 * tok.fit_log["first"]["recon"]


def test_rqvae_stops_when_the_validation_loss_plateaus():
    # 320 items on 40 clusters: the held-out loss stops falling after ~150 epochs (measured).
    cfg = replace(TINY_VAE, epochs=1000, eval_every=5, patience=3)
    x = clustered(n=400, clusters=40)
    tok = build_tokenizer(cfg, "cpu").fit(x)
    stop = tok.fit_log["early_stopping"]
    assert stop["stopped_early"] and stop["epochs_run"] < 400
    assert stop["n_valid"] == 80 == len(tok.valid_rows)  # max(5 %, 256) capped at a fifth
    assert tok.fit_log["n_fit"] == 320  # the held-out items are not trained on
    curve = tok.fit_log["curve"]
    assert [r["epoch"] for r in curve[-4:]] == [stop["epochs_run"] - 5 * i for i in (3, 2, 1, 0)]
    best = min(curve, key=lambda r: r["valid"])
    assert (best["epoch"], best["valid"]) == (stop["best_epoch"], stop["best_valid_loss"])
    assert stop["best_epoch"] < stop["epochs_run"] and curve[-1]["valid"] > best["valid"]
    assert "3 evaluations" in stop["why"]
    # the weights kept are the best epoch's, not the last one's
    held_out = torch.from_numpy(tok.scaler(x[tok.valid_rows]))
    assert tok._valid_loss(held_out) == pytest.approx(stop["best_valid_loss"], rel=1e-5)
    again = build_tokenizer(cfg, "cpu").fit(x)  # deterministic, stopping point included
    assert again.fit_log["early_stopping"] == stop
    np.testing.assert_array_equal(again.encode(x), tok.encode(x))


def test_rqvae_patience_0_runs_every_epoch_on_every_item():
    x = clustered(n=400, clusters=40)
    tok = build_tokenizer(replace(TINY_VAE, epochs=30, patience=0), "cpu").fit(x)
    stop = tok.fit_log["early_stopping"]
    assert (stop["epochs_run"], stop["n_valid"], stop["stopped_early"]) == (30, 0, False)
    assert tok.fit_log["n_fit"] == 400 and tok.fit_log["curve"][-1]["epoch"] == 30
    assert "valid" not in tok.fit_log["curve"][-1] and "patience 0" in stop["why"]


def test_rqvae_holdout_size():
    cfg = tokenizer_config("rqvae", "small")  # 5 %, at least 256, at most a fifth
    assert [cfg.holdout_size(n) for n in (12_000, 1_682, 400, 300)] == [600, 256, 80, 60]
    assert cfg.holdout_size(150) == 0  # 30 rows would be too noisy: all epochs, all items
    assert replace(cfg, codebook_size=256).holdout_size(300) == 44  # k-means keeps 256
    assert replace(cfg, patience=0).holdout_size(12_000) == 0
    tok = build_tokenizer(replace(TINY_VAE, epochs=3), "cpu").fit(clustered(n=100))
    stop = tok.fit_log["early_stopping"]
    assert stop["n_valid"] == 0 and stop["epochs_run"] == 3 and "too few" in stop["why"]
    for bad in ({"patience": -1}, {"eval_every": 0}, {"valid_fraction": 1.0},
                {"min_improvement": -0.1}):
        with pytest.raises(SidrecError, match=next(iter(bad))):
            tokenizer_config("rqvae", "small", bad)


def test_dead_codes_are_reset_onto_live_residuals():
    tok = RQVAETokenizer(TINY_VAE, "cpu")
    tok.input_dim = 16
    from sidrec.tokenize.rqvae import RQVAE

    tok.model = RQVAE(16, TINY_VAE)
    usage = torch.ones(2, 8)
    usage[0, 3] = 0
    usage[1, [0, 5]] = 0
    residuals = torch.randn(2, 10, 8)
    before = tok.model.codebooks.detach().clone()
    n = tok._reset_dead_codes(usage, residuals, torch.Generator().manual_seed(0))
    after = tok.model.codebooks.detach()
    assert n == 3
    changed = (after != before).any(-1)
    assert changed.nonzero().tolist() == [[0, 3], [1, 0], [1, 5]]
    for level, code in changed.nonzero().tolist():
        assert (residuals[level] == after[level, code]).all(-1).any()  # a real residual


def test_balanced_assign_respects_capacity():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    x[:30] += 10  # 30 points crowd around one centroid
    centroids = np.stack([np.full(4, 10.0), np.zeros(4), np.full(4, -5.0)]).astype(np.float32)
    assign = balanced_assign(x, centroids, capacity=17)
    assert (assign >= 0).all() and np.bincount(assign, minlength=3).max() <= 17
    # with room for everyone, balanced assignment is plain nearest-centroid
    d2 = ((x[:, None] - centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(balanced_assign(x, centroids, capacity=50), d2.argmin(1))


def test_balanced_rqkmeans_spreads_codes():
    x = clustered(clusters=3)  # 3 blobs, 8 codes
    plain = build_tokenizer(TINY_KM).fit(x).encode(x)[:, 0]
    balanced = build_tokenizer(RQKMeansConfig(**{**TINY_KM.__dict__, "balanced": True}))
    codes = balanced.fit(x).encode(x)[:, 0]
    assert np.bincount(codes, minlength=8).max() <= np.bincount(plain, minlength=8).max()


@pytest.mark.parametrize("cfg", [TINY_VAE, TINY_KM], ids=["rqvae", "rqkmeans"])
def test_stage_fits_on_warm_items_only(cfg, tmp_path):
    x = clustered(n=200)
    cold = np.zeros(len(x), dtype=bool)
    cold[::10] = True
    far = x.copy()
    far[cold] += 100.0  # if cold rows leaked into the fit, the statistics would show it
    cfg = type(cfg)(**{**cfg.__dict__, "standardize": True})
    info = run_tokenize(make_run(tmp_path, far, cold, "far"), cfg, device="cpu", progress=False)
    tok = load_tokenizer(tmp_path / "far" / "tokenizer")
    np.testing.assert_allclose(tok.scaler.mean, x[~cold].mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tok.scaler.std, x[~cold].std(0), rtol=1e-4, atol=1e-4)
    if cfg.method == "rqkmeans":  # standardised warm data lies within a few units of 0
        assert np.abs(tok.codebooks[0]).max() < 10
    assert info["n_warm"] == 180 and info["n_cold"] == 20

    # Warm SIDs do not depend on the cold vectors at all.
    run_tokenize(make_run(tmp_path, x, cold, "near"), cfg, device="cpu", progress=False)
    far_sids, _ = RunDir(tmp_path / "far").load_sids()
    near_sids, _ = RunDir(tmp_path / "near").load_sids()
    np.testing.assert_array_equal(far_sids[~cold], near_sids[~cold])


def test_stage_records_early_stopping_and_refits_under_new_stopping_rules(tmp_path):
    x = clustered(n=200)
    run = make_run(tmp_path, x, np.zeros(len(x), dtype=bool))
    cfg = replace(TINY_VAE, epochs=20)
    info = run_tokenize(run, cfg, device="cpu", progress=False)
    saved = json.loads((run / "tokenizer.json").read_text())
    assert saved["fit"]["early_stopping"] == info["fit"]["early_stopping"]
    assert saved["fit"]["early_stopping"]["n_valid"] == 40 and saved["config"]["patience"] == 5
    assert "curve" not in saved["fit"]
    assert run_tokenize(run, cfg, device="cpu", progress=False)["cached"]
    # a tokenizer fitted under other stopping rules is not reused (the config hash has them)
    for changed in ({"patience": 0}, {"eval_every": 5}, {"valid_fraction": 0.1},
                    {"valid_min_items": 100}, {"min_improvement": 0.01}):
        again = run_tokenize(run, replace(cfg, **changed), device="cpu", progress=False)
        assert not again["cached"], changed


def test_stage_outputs_unique_sids_and_cache(tmp_path):
    x = clustered(n=300)
    cold = np.zeros(len(x), dtype=bool)
    cold[-30:] = True
    run = make_run(tmp_path, x, cold)
    cfg = RQKMeansConfig(levels=2, codebook_size=4, kmeans_iters=5)  # 16 prefixes: collisions
    info = run_tokenize(run, cfg, progress=False)
    assert not info["cached"]
    sids = np.load(run / "sids.npy")
    assert sids.dtype == np.int64 and sids.shape == (300, 3)
    assert len(np.unique(sids, axis=0)) == 300  # warm + cold all unique
    assert info["codebook_sizes"] == [4, 4, int(sids[:, -1].max()) + 1]
    assert info["codebook_sizes"][-1] == info["diagnostics"]["max_items_per_prefix"]
    loaded, sizes = RunDir(run).load_sids(300)
    np.testing.assert_array_equal(loaded, sids)
    assert list(sizes) == info["codebook_sizes"]
    assert (run / "plots" / "codebook_usage.png").is_file()
    tok = load_tokenizer(run / "tokenizer")
    np.testing.assert_array_equal(tok.encode(x), sids[:, :2])  # cold encoded, not refitted
    saved = json.loads((run / "tokenizer.json").read_text())
    assert saved["config"] == {**cfg.__dict__} and saved["n_cold"] == 30

    mtime = (run / "sids.npy").stat().st_mtime_ns
    again = run_tokenize(run, cfg, progress=False)
    assert again["cached"] and again["diagnostics"] == info["diagnostics"]
    assert (run / "sids.npy").stat().st_mtime_ns == mtime
    assert not run_tokenize(run, RQKMeansConfig(**{**cfg.__dict__, "seed": 1}))["cached"]
    np.save(run / "embeddings.npy", x * 2)
    assert not run_tokenize(run, RQKMeansConfig(**{**cfg.__dict__, "seed": 1}))["cached"]

    # add_items: new vectors get fresh, unique SIDs from the same tokenizer.
    sids = np.load(run / "sids.npy")
    new = sids_for_new_items(load_tokenizer(run / "tokenizer"), sids, x[:5] * 2)
    np.testing.assert_array_equal(new[:, :2], sids[:5, :2])  # same vectors, same codes
    assert len(np.unique(np.concatenate([sids, new]), axis=0)) == 305


def test_bad_inputs(tmp_path):
    x = clustered()
    tok = build_tokenizer(TINY_KM).fit(x)
    with pytest.raises(
        SidrecError, match="dimension 8 but the tokenizer was fitted on dimension 16"
    ):
        tok.encode(x[:, :8])
    bad = x.copy()
    bad[3, 5] = np.nan
    with pytest.raises(SidrecError, match="row 3 contains NaN"):
        build_tokenizer(TINY_KM).fit(bad)
    bad[3, 5] = np.inf
    with pytest.raises(SidrecError, match="row 3 contains inf"):
        tok.encode(bad)
    with pytest.raises(SidrecError, match="no warm items"):
        build_tokenizer(TINY_KM).fit(x[:0])
    with pytest.raises(SidrecError, match="fewer than codebook_size"):
        build_tokenizer(TINY_KM).fit(x[:5])
    with pytest.raises(SidrecError, match="unknown setting 'levls'"):
        tokenizer_config("rqvae", "small", {"levls": 2})
    with pytest.raises(SidrecError, match="choose one of"):
        tokenizer_config("vq", "small")
    with pytest.raises(SidrecError, match="codebook_size must be"):
        tokenizer_config("rqkmeans", "small", {"codebook_size": 1})

    cold = np.zeros(len(x), dtype=bool)
    run = make_run(tmp_path, x, cold)
    (run / "embeddings.npy").unlink()
    with pytest.raises(SidrecError, match="run `sidrec embed"):
        run_tokenize(run, TINY_KM)
    bad[3, 5] = np.nan
    np.save(run / "embeddings.npy", bad)
    with pytest.raises(SidrecError, match=r"embeddings.npy: row 3 contains NaN"):
        run_tokenize(run, TINY_KM)
    np.save(run / "embeddings.npy", x[:-1])
    with pytest.raises(SidrecError, match="re-run `sidrec embed"):
        run_tokenize(run, TINY_KM)
    all_cold = make_run(tmp_path, x, np.ones(len(x), dtype=bool), "cold")
    with pytest.raises(SidrecError, match="no warm items"):
        run_tokenize(all_cold, TINY_KM)
    with pytest.raises(SidrecError, match="no tokenizer checkpoint"):
        load_tokenizer(tmp_path / "nowhere")


def test_load_sids_checks(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(SidrecError, match=r"sids.npy: no semantic IDs; run `sidrec tokenize"):
        run.load_sids()
    sids = np.array([[0, 1, 0], [0, 1, 1], [3, 0, 0]])
    np.save(run.sids, sids)
    assert run.load_sids(3)[1] == (4, 2, 2)  # without tokenizer.json: largest code + 1
    write_json(run.tokenizer_info, {"codebook_sizes": [8, 8]})  # collision column appended
    assert run.load_sids()[1] == (8, 8, 2)
    write_json(run.tokenizer_info, {"codebook_sizes": [2, 8, 2]})  # code 3 >= 2
    with pytest.raises(SidrecError, match="codebook_sizes .* do not match"):
        run.load_sids()
    with pytest.raises(SidrecError, match=r"expected integer shape \[4, n_codes\]"):
        run.load_sids(4)
    np.save(run.sids, -sids)
    with pytest.raises(SidrecError, match="negative codes"):
        run.load_sids()


def test_presets():
    small = tokenizer_config("rqvae", "small")
    paper = tokenizer_config("rqvae", "paper")
    assert (paper.levels, paper.codebook_size, paper.latent_dim, paper.beta) == (3, 256, 32, 0.25)
    assert paper.hidden == (512, 256, 128)
    assert small.codebook_size**small.levels > 10 * 1682 > 10 * small.codebook_size
    assert tokenizer_config("rqkmeans", "small", {"balanced": True}).balanced
    # both stop early; the paper's slow, noisy Adagrad descent gets a longer patience
    assert small.patience * small.eval_every == 50 < paper.patience * paper.eval_every == 300


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rqkmeans", "rqvae"])
def test_real_movielens_codebooks_do_not_collapse(method, ml100k_holdout_run, tmp_path):
    run = tmp_path / "ml-100k-holdout"
    shutil.copytree(ml100k_holdout_run / "dataset", run / "dataset")
    shutil.copy(ml100k_holdout_run / "embeddings.npy", run / "embeddings.npy")
    info = run_tokenize(run, tokenizer_config(method, "small"), progress=False)
    assert info["diagnostics"]["levels"][0]["usage"] >= 0.6
    sids, _ = RunDir(run).load_sids()
    assert len(np.unique(sids, axis=0)) == len(sids)


def test_dead_codes_are_reset_from_the_whole_epoch_not_its_last_batch():
    from sidrec.tokenize.rqvae import sample_residuals

    gen = torch.Generator().manual_seed(0)
    sample = None
    for batch in range(10):  # 10 batches of 100 residuals, each tagged with its batch id
        residuals = torch.full((2, 100, 3), float(batch))  # [L, B, latent]
        sample = sample_residuals(sample, residuals, 100, gen)
    rows, keys = sample
    assert rows.shape == (2, 100, 3) and keys.shape == (100,)
    counts = torch.bincount(rows[0, :, 0].long(), minlength=10)
    assert (counts > 0).all()  # every batch of the epoch is represented ...
    assert counts.max() <= 25  # ... about evenly (10 each on average), not the last one only
    assert torch.equal(rows[0], rows[1])  # the levels are sampled at the same rows
