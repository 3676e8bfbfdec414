"""`sidrec data stats`: the counts of a paper's dataset table, exact on a small fixture."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from sidrec.data import PrepareConfig, dataset_stats, format_stats, prepare

# a: x y z -> train [x], valid y, test z.  b: y x w z -> train [y, x], valid w, test z.
# c has one interaction and is dropped. w and z are never trained on: cold.
INTER = "user,item,timestamp\na,x,1\na,y,2\na,z,3\nb,y,1\nb,x,2\nb,w,3\nb,z,4\nc,x,1\n"
ITEMS = "item,title\nx,X\ny,Y\nz,Z\nw,\n"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    (tmp_path / "inter.csv").write_text(INTER)
    (tmp_path / "items.csv").write_text(ITEMS)
    prepare(tmp_path / "run", PrepareConfig(source=str(tmp_path / "inter.csv"),
                                            items=str(tmp_path / "items.csv")))
    return tmp_path / "run"


def test_stats_values(run: Path) -> None:
    s = dataset_stats(run)
    assert (s["dataset"], s["format"], s["kcore"]) == ("table/inter", "table", 0)
    assert (s["users"], s["items"], s["interactions"]) == (2, 4, 7)
    assert s["density"] == pytest.approx(7 / 8)
    assert s["length"] == pytest.approx({"min": 3, "p25": 3.25, "p50": 3.5, "p75": 3.75,
                                         "p90": 3.9, "p99": 3.99, "max": 4, "mean": 3.5})
    assert (s["cold_items"], s["cold_test_users"], s["cold_valid_users"]) == (2, 2, 1)
    assert (s["train_examples"], s["dropped_short_users"], s["items_without_text"]) == (1, 1, 1)


def test_stats_text(run: Path) -> None:
    assert format_stats(dataset_stats(run)).splitlines() == [
        f"dataset             table/inter (read as table), run {run}",
        "protocol            k-core 0, leave-one-out, history 20, cold natural",
        "users               2",
        "items               4",
        "interactions        7",
        "density             87.5000%",
        "sequence length     mean 3.50, min 3, p25 3.2, p50 3.5, p75 3.8, p90 3.9, p99 4.0, "
        "max 4",
        "training examples   1",
        "cold items          2",
        "cold test users     2 (valid: 1)",
        "dropped users       1 with fewer than 3 interactions",
        "items without text  1",
    ]


def test_stats_cli(cli: Callable, run: Path, tmp_path: Path) -> None:
    result = cli("data", "stats", run)
    assert result.code == 0 and result.out.startswith("dataset             table/inter")
    result = cli("data", "stats", run, "--json")
    assert json.loads(result.out)["interactions"] == 7
    result = cli("data", "stats", tmp_path / "nowhere")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert "no prepared dataset here" in result.err


def test_stats_of_a_run_prepared_before_names_were_recorded(run: Path) -> None:
    manifest_path = run / "dataset" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["dataset"]
    manifest["source"] = {"format": "amazon", "reviews": "/d/reviews_Toys_and_Games_5.json.gz"}
    manifest_path.write_text(json.dumps(manifest))
    assert dataset_stats(run)["dataset"] == "amazon-2014/Toys_and_Games"


def test_stats_into_a_closed_pipe_ends_quietly(run: Path) -> None:
    # `sidrec data stats RUN | head`: the reader is gone before the lines are flushed.
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sidrec", "data", "stats", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # before the interpreter has even imported sidrec
    _, err = proc.communicate(timeout=120)
    assert err.decode() == "", err.decode()[-2000:]  # no BrokenPipeError traceback
    assert proc.returncode == 141  # 128 + SIGPIPE, as the shell reports a cut-off command
