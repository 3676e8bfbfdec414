"""`sidrec report` and docs/results/: a bench's report renders from its bench.json alone,
and every results page committed under docs/results/ is what the code renders from the
bench.json committed beside it, so the docs cannot drift from the report code.

The bench here is Pop and SASRec, one epoch, on test_bench_api's tiny catalogue, with
vectors given as a CSV (no text encoder is loaded): seconds on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_bench_api import N_ITEMS, TINY_SIDS, tables, write_tables

from sidrec.bench import BenchConfig, run_bench
from sidrec.embed import EmbedConfig
from sidrec.report import render_bench

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-report")
    inter, items = write_tables(folder)
    rng = np.random.default_rng(0)
    vectors = folder / "vectors.csv"
    vectors.write_text("item_id,a,b,c,d\n" + "".join(
        f"i{i:02d}," + ",".join(f"{v:.4f}" for v in rng.normal(size=4)) + "\n"
        for i in range(N_ITEMS)))
    cfg = BenchConfig(prepare=tables(inter, items), embed=EmbedConfig(vectors=str(vectors)),
                      tokenize=TINY_SIDS, run_dir=str(folder / "run"), models=("pop", "sasrec"),
                      train={"max_epochs": 1})
    run_bench(cfg, progress=False, command="sidrec bench tiny.csv")
    return folder / "run"


def stale_pages(folder: Path) -> list[str]:
    """The results pages under `folder` that are not what their bench.json renders to, or
    that have no bench.json beside them (README.md is the folder's instructions)."""
    stale = []
    for page in sorted(folder.glob("*.md")):
        record = page.with_suffix(".json")
        if page.name == "README.md":
            continue
        if not record.is_file() or render_bench(json.loads(record.read_text())) != \
                page.read_text():
            stale.append(page.name)
    stale += [r.with_suffix(".md").name for r in sorted(folder.glob("*.json"))
              if not r.with_suffix(".md").is_file()]
    return stale


def test_report_is_the_bench_md(bench_run: Path, cli: Callable, tmp_path: Path) -> None:
    bench_md = (bench_run / "bench.md").read_text()
    assert "| pop " in bench_md and "| sasrec (CE) " in bench_md
    assert "`sidrec bench tiny.csv`" in bench_md and "CPU cores" in bench_md
    assert "Item vectors from `vectors.csv`" in bench_md  # not the encoder it never ran
    result = cli("report", bench_run)
    assert result.code == 0, result.err
    assert result.out == bench_md
    out = tmp_path / "page.md"
    result = cli("report", bench_run / "bench.json", "--out", out)  # the file itself too
    assert result.code == 0 and out.read_text() == bench_md


def test_report_errors_are_one_line(bench_run: Path, cli: Callable, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.json"
    damaged.write_text('{"config": ')
    old = tmp_path / "old.json"  # a bench.json from before `sidrec report`
    record = json.loads((bench_run / "bench.json").read_text())
    old.write_text(json.dumps({k: v for k, v in record.items() if k not in ("dataset", "run")}))
    for path, words in ((tmp_path / "nowhere", "bench.json: no such file"),
                        (damaged, "unreadable JSON"), (old, "re-run `sidrec bench`")):
        result = cli("report", path)
        assert result.code == 2, (path, result.out)
        assert result.err.startswith("sidrec: error: ") and words in result.err, result.err
        assert len(result.err.strip().splitlines()) == 1 and result.out == ""


def test_stale_pages_are_found(bench_run: Path, tmp_path: Path) -> None:
    shutil.copy(bench_run / "bench.json", tmp_path / "tiny.json")
    shutil.copy(bench_run / "bench.md", tmp_path / "tiny.md")
    (tmp_path / "README.md").write_text("how to make a page")
    assert stale_pages(tmp_path) == []
    page = tmp_path / "tiny.md"
    page.write_text(page.read_text().replace("| pop |", "| pop (edited by hand) |"))
    (tmp_path / "orphan.md").write_text("no bench.json")
    shutil.copy(bench_run / "bench.json", tmp_path / "unrendered.json")
    assert stale_pages(tmp_path) == ["orphan.md", "tiny.md", "unrendered.md"]


def test_committed_results_pages_match_their_bench_json() -> None:
    # Regenerate a page: sidrec report docs/results/NAME.json --out docs/results/NAME.md
    assert stale_pages(RESULTS) == []
    included = (RESULTS.parent / "results.md").read_text()
    for page in RESULTS.glob("*.md"):
        if page.name != "README.md":
            assert f'--8<-- "results/{page.name}' in included, f"results.md omits {page.name}"


def test_a_profile_run_one_model_at_a_time_makes_one_table(bench_run: Path, cli: Callable,
                                                            tmp_path: Path) -> None:
    record = json.loads((bench_run / "bench.json").read_text())
    folder = bench_run.parent
    cfg = BenchConfig(prepare=tables(folder / "interactions.csv", folder / "items.csv"),
                      embed=EmbedConfig(vectors=str(folder / "vectors.csv")),
                      tokenize=TINY_SIDS, run_dir=str(tmp_path / "run"), models=("pop",),
                      train={"max_epochs": 1})
    run_bench(cfg, progress=False, command="sidrec bench tiny.csv models=pop")
    # The same settings, SASRec only, the data named by another path: it joins Pop's
    # record instead of replacing it.
    other_path = tables(Path(os.path.relpath(folder / "interactions.csv")),
                        Path(os.path.relpath(folder / "items.csv")))
    assert other_path.source != cfg.prepare.source
    run_bench(replace(cfg, models=("sasrec",), prepare=other_path), progress=False,
              command="sidrec bench tiny.csv models=sasrec")
    merged = json.loads((tmp_path / "run" / "bench.json").read_text())
    assert list(merged["models"]) == ["pop", "sasrec"] == merged["config"]["models"]
    report = (tmp_path / "run" / "bench.md").read_text()
    assert "| pop " in report and "| sasrec (CE) " in report
    assert "earlier benches of the same settings: `pop`" in report
    assert "(`sidrec bench tiny.csv models=pop`)" in report
    # Each model's numbers are the ones its own bench measured (same data, seed, epochs).
    for name in ("pop", "sasrec"):
        assert merged["models"][name]["aggregate"]["rows"] == record["models"][name][
            "aggregate"]["rows"]
    # `sidrec report` merges copies the same way; unlike settings are refused in one line.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**record, "config": {**record["config"], "seeds": [1]}}))
    result = cli("report", bench_run / "bench.json", other)
    assert result.code == 2 and "differ in more than their models" in result.err
    assert len(result.err.strip().splitlines()) == 1
    result = cli("report", tmp_path / "run" / "bench.json", bench_run / "bench.json")
    assert result.code == 0, result.err
    assert "| pop " in result.out and "| sasrec (CE) " in result.out
