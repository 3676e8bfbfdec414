"""`sidrec bench DUMP --profile beauty-cpu` end to end on a small hand-written Amazon 2014
5-core dump (reviews_<Cat>_5.json.gz + meta_<Cat>.json.gz, the format of the Sports and
Toys dumps): every model of the profile trains one epoch, the report puts the published
rows beside ours with the ratios, and each model writes its learning curve."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from sidrec.bench import bench_config, run_bench

N_ITEMS, N_USERS = 120, 160


def write_toys_dump(folder: Path) -> Path:
    """Two genres of toys; each user reviews 7-9 toys of one genre, in time order."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "reviews_Toys_5.json.gz", "wt", encoding="utf-8") as f:
        for u in range(N_USERS):
            pool = [i for i in range(N_ITEMS) if i % 2 == u % 2]
            for t, i in enumerate(rng.choice(pool, size=7 + u % 3, replace=False)):
                f.write(json.dumps({"reviewerID": f"U{u:04d}", "asin": f"B{i:05d}",
                                    "unixReviewTime": 1_300_000_000 + t * 86_400}) + "\n")
    with gzip.open(folder / "meta_Toys.json.gz", "wt", encoding="utf-8") as f:
        for i in range(N_ITEMS):
            kind = "wooden puzzle for toddlers" if i % 2 else "remote control racing car"
            f.write(repr({"asin": f"B{i:05d}", "title": f"Toy {i}: {kind}",
                          "categories": [["Toys & Games", kind.split()[-1]]]}) + "\n")
    return folder


@pytest.fixture(scope="module")
def profile_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = write_toys_dump(tmp_path_factory.mktemp("toys"))
    # 120 items take no 3 x 256 SIDs: TIGER's codebooks shrink to 16 (COBRA fits its own
    # 3 x 32 as in the profile); everything else is the profile's.
    cfg = bench_config("beauty-cpu", str(folder), {
        "run_dir": str(folder / "run"), "train": {"max_epochs": 1, "num_threads": 2},
        "tokenize": {"options": {"balanced": True, "codebook_size": 16}}})
    return run_bench(cfg, progress=False)


def test_the_profile_trains_the_papers_models_on_their_protocol(profile_run: dict) -> None:
    report = profile_run["report"]
    for label in ("sasrec (CE)", "tiger", "liger [hybrid K=20]", "cobra"):
        assert f"| {label} " in report, label
    assert "cold start `natural`" in report  # the papers' split: no holdout draw
    # the published rows of the dump's category (Toys) beside ours, with the ratios
    assert "| tiger |" in report and "| TIGER | 0.0712 | 0.0432 |" in report
    assert "| COBRA | 0.0781 | 0.0515 |" in report and "SASRec (BCE)" in report


def test_each_model_writes_its_learning_curve(profile_run: dict) -> None:
    models = Path(profile_run["run_dir"]) / "models"
    for name in ("sasrec", "tiger", "liger", "cobra"):
        with open(models / name / "curve.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 1 and rows[0]["epoch"] == "1"
        assert float(rows[0]["wall_seconds"]) > 0 and int(rows[0]["sequences"]) > 0
        assert 0 <= float(rows[0]["valid_ndcg@10"]) <= float(rows[0]["valid_recall@10"]) <= 1
        assert (models / name / "curve.png").stat().st_size > 1000


def test_the_cobra_checks_run_on_the_profile_model(profile_run: dict, cli) -> None:
    run = Path(profile_run["run_dir"])
    result = cli("analyze", "cobra", run, "--max-users", "40")
    assert result.code == 0, result.err
    assert "| sparse_id_first_beam |" in result.out and "| in_group_top10 |" in result.out
    checks = json.loads((run / "analysis" / "cobra_checks_cobra.json").read_text())
    assert checks["users"] == 40 and checks["split"] == "valid"
    assert 0 <= checks["sparse_id_first_beam"] <= checks["sparse_id_in_20_beams"] <= 1
    assert 1 <= checks["rank_in_group_median"] <= checks["group_size_median"]
    result = cli("analyze", "cobra", run, "--model", "tiger")  # no sparse + dense parts
    assert result.code == 2 and "sparse and dense" in result.err
