"""The scale benchmark (`sidrec.scale`) at 10k items on the real code paths, and the
synthetic catalogue.

benchmarks/bench_scale.py runs 10k -> 1M; here its 10k size runs in-process with fewer
users, k-means iterations and added items, so it stays well under a minute on 2 cores.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from sidrec import scale
from sidrec.data.dataset import Dataset
from sidrec.data.synth import SynthConfig, generate, prepare_synthetic, write_synth
from sidrec.errors import SidrecError
from sidrec.io import hash_file, read_json
from sidrec.run import RunDir
from sidrec.scale.recommend_stages import stage_ratio


def test_synthetic_catalogue_is_deterministic_and_learnable():
    cfg = SynthConfig(n_items=600, seed=3)
    a, b = generate(cfg), generate(cfg)
    for field in ("vectors", "users", "items", "timestamps"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(generate(replace(cfg, seed=4)).items, a.items)
    assert len(a.items) == pytest.approx(10 * 600, rel=0.05)
    np.testing.assert_allclose(np.linalg.norm(a.vectors, axis=1), 1.0, atol=1e-5)
    same_user = a.users[1:] == a.users[:-1]
    stay = (a.cluster[a.items[1:]] == a.cluster[a.items[:-1]])[same_user].mean()
    assert stay > 0.4  # the transition process keeps half the steps in one cluster
    assert (np.diff(a.timestamps)[same_user] > 0).all()


def test_holdout_cold_pool_is_exactly_the_fraction_and_embeddings_follow_ids(tmp_path):
    write_synth(tmp_path / "data", SynthConfig(n_items=1000))
    manifest = prepare_synthetic(tmp_path / "run", tmp_path / "data", cold_fraction=0.1)
    assert manifest["counts"]["items"] == 1000 and manifest["counts"]["cold_items"] == 100
    ds = Dataset.load(tmp_path / "run")
    emb = RunDir(tmp_path / "run").load_embeddings(ds.n_items)
    vectors = np.load(tmp_path / "data" / "vectors.npy")
    np.testing.assert_array_equal(emb, vectors[ds.item_ids.astype(int)])
    items = pd.read_parquet(tmp_path / "data" / "items.parquet")
    assert ds.item_text[0].startswith("Title: ") and "Categories: Topic" in ds.item_text[0]
    assert len(items) == 1000
    # written as `sidrec embed` writes them: the record holds the array's hash, so an
    # array that is not the one recorded is refused, as for any run
    run = RunDir(tmp_path / "run")
    assert read_json(run.embeddings_info)["embeddings_hash"] == hash_file(run.embeddings)
    np.save(run.embeddings, emb[::-1])
    with pytest.raises(SidrecError, match="not the array embeddings.json describes"):
        run.load_embeddings(ds.n_items)


def test_a_damaged_synth_record_is_rebuilt(tmp_path):
    small = SynthConfig(n_items=200)
    write_synth(tmp_path, small)
    (tmp_path / "synth.json").write_text("{garbled")
    assert write_synth(tmp_path, small)["cached"] is False
    assert write_synth(tmp_path, small)["cached"] is True


def test_bench_at_10k_runs_every_stage_on_real_code(tmp_path):
    opt = scale.Options(users=16, batch=16, repeats=1, kmeans_iters=4, balanced_iters=2,
                        add_batch=200, add_rounds=2, encode_texts=False, threads=1)
    stages = tuple(s for s in scale.STAGES if s != "rqvae")
    record = scale.run_all([10_000], tmp_path, opt, inline=True, stages=stages,
                           log=lambda *_: None)
    row = record["sizes"]["10000"]
    # 10 % held out; the few items that only dropped users had leave the catalogue
    assert 9_990 <= row["prepare"]["items"] <= 10_000
    assert 990 <= row["prepare"]["cold_items"] <= 1_000
    assert row["synth"]["interactions"] >= 95_000
    assert row["rqkmeans"]["collision_rate"] < 0.2
    assert row["decode"]["users_per_s"] > 0
    # exact scoring at 10k; the forced cold-pool index finds the same top-10 (or nearly)
    assert not row["liger"]["indexed"] and row["liger"]["recall"] == 1.0
    assert row["liger"]["index_recall"] >= 0.85  # random weights: queries far from items
    assert row["cobra"]["global_recall"] == 1.0  # exact below 200k items
    assert row["cobra"]["global_index"] == "exact"
    # the dense index is left to choose at 10k too: an IVF it measured faster at 0.99
    # recall (on other users' queries than these), or exact search
    for kind in ("dense", "sasrec"):
        dense = row["dense"][kind]
        assert dense["recall"] >= 0.97 and dense["index"].startswith(("ivf", "exact"))
        assert dense["choice"]["kind"] == "exact" or dense["choice"]["recall"] >= 0.99
    assert row["add"]["sid_index_items_per_s"] > 0 and row["add"]["api_items_per_s"] > 0
    text = scale.table(record)
    assert "TIGER constrained beam 20 (users/s)" in text and "what the index chose" in text
    assert scale.ratios(record)[-1].startswith("dense top-10 users/s at 10k items = ")
    # One size has no ratio to speak of (10k over itself is 1.00 by construction): the
    # interleaved stage is run here at 10k against itself, and the report's ratios are read
    # from a record with a larger size whose numbers are known.
    paired = stage_ratio(10_000, tmp_path, opt)
    for model in ("tiger", "liger"):
        r = paired[model]
        assert r["ratio"] == pytest.approx(r["users_per_s"] / r["small_users_per_s"])
        assert 0.2 < r["ratio"] < 5  # the same work, on the same thread
    larger = {"decode": {"users_per_s": row["decode"]["users_per_s"] / 4},
              "liger": {"users_per_s": row["liger"]["users_per_s"] / 2},
              "cobra": {"group_users_per_s": row["cobra"]["group_users_per_s"] / 5},
              "dense": {"dense": {"exact_users_per_s": 400.0, "index_users_per_s": 1000.0,
                                  "recall": 0.9925}},
              "ratio": {"tiger": {**paired["tiger"], "ratio": 0.3}}}
    two = {**record, "sizes": {**record["sizes"], "1000000": larger}}
    assert scale.ratios(two) == [  # the interleaved ratio first, else the sizes' own
        "decode users/s at 1M items = 0.30 x at 10k",
        "liger hybrid users/s at 1M items = 0.50 x at 10k (separate runs, not interleaved)",
        "cobra users/s at 1M items = 0.20 x at 10k (separate runs, not interleaved)",
        "dense top-10 users/s at 1M items = 2.50 x exact (recall@10 0.9925)"]
    scale.plot(record, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").stat().st_size > 10_000


def test_the_report_says_when_stages_of_other_runs_were_measured():
    record = {"date": "2026-11-29", "sizes": {
        "10000": {"decode": {"users_per_s": 50.0}, "add": {"date": "2026-11-30 09:00"}},
        "1000000": {"decode": {"users_per_s": 40.0}}}}
    assert scale.dates(record) == ["measured 2026-11-29: decode@10k, decode@1M",
                                   "measured 2026-11-30 09:00: add@10k"]
    assert scale.ratios(record)[0] == ("decode users/s at 1M items = 0.80 x at 10k "
                                       "(separate runs, not interleaved)")
    assert scale.dates({"date": "2026-11-29", "sizes": {"10000": {"decode": {}}}}) == []

