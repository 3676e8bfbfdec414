"""End to end on a tiny synthetic catalogue: `sidrec bench`, then the serving API.

The catalogue has two "genres" of items with genre words in their text; users stick to
one genre. It is small enough that the whole pipeline (prepare, embed with the real
MiniLM encoder, tokenize, train every model one epoch, evaluate, report) takes seconds.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import sidrec
from sidrec.bench import BenchConfig, TokenizeSettings, run_bench
from sidrec.data.prepare import PrepareConfig
from sidrec.errors import SidrecError

N_ITEMS, N_USERS = 40, 60
TINY = ("d_model=16", "n_heads=2", "head_dim=8", "d_ff=32")


def write_tables(folder: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    inter, items = folder / "interactions.csv", folder / "items.csv"
    with open(items, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "title", "genres"])
        for i in range(N_ITEMS):
            genre = "space opera science fiction" if i % 2 else "romantic comedy"
            w.writerow([f"i{i:02d}", f"Film number {i}", genre])
    with open(inter, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "timestamp"])
        for u in range(N_USERS):
            genre = u % 2
            pool = [i for i in range(N_ITEMS) if i % 2 == genre]
            for t, i in enumerate(rng.choice(pool, size=8, replace=False)):
                w.writerow([f"u{u}", f"i{i:02d}", t])
    return inter, items


TINY_SIDS = TokenizeSettings(options={"codebook_size": 4, "balanced": True})


def tables(inter: Path, items: Path) -> PrepareConfig:
    return PrepareConfig(source=str(inter), items=str(items), cold_mode="holdout",
                         cold_fraction=0.1)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("tiny")
    inter, items = write_tables(folder)
    cfg = BenchConfig(
        prepare=tables(inter, items), run_dir=str(folder / "run"), tokenize=TINY_SIDS,
        models=("pop", "sasrec", "dense-text", "tiger", "liger", "cobra"),
        train={"max_epochs": 1},
    )
    return run_bench(cfg, progress=False)


def test_bench_writes_report_and_plots(bench_run: dict) -> None:
    run = Path(bench_run["run_dir"])
    report = (run / "bench.md").read_text()
    for label in ("pop", "sasrec (CE)", "dense-text", "tiger", "liger [hybrid K=20]",
                  "liger [generative]", "liger [dense]", "cobra (MLP items)",
                  "cobra (MLP items) [no-dense (inference)]",
                  "cobra (MLP items) [excl. history]"):
        assert f"| {label} " in report, label
    assert "| cold |" in report and "| in-set |" in report
    for plot in ("recall_at_k.png", "inset_vs_cold.png", "codebook_usage.png"):
        assert (run / "plots" / plot).stat().st_size > 1000
    assert (run / "bench.json").is_file()


def test_bench_reuses_finished_stages(bench_run: dict) -> None:
    run = Path(bench_run["run_dir"])
    weights = run / "models" / "tiger" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    cfg = BenchConfig(prepare=PrepareConfig(source="unused"), run_dir=str(run),
                      models=("tiger",), tokenize=TINY_SIDS, train={"max_epochs": 1})
    # The dataset stage is keyed on its settings; a different source must not be reused.
    with pytest.raises(SidrecError, match="no such file"):
        run_bench(cfg, progress=False)
    assert weights.stat().st_mtime_ns == before


@pytest.mark.parametrize("model", ["liger", "cobra", "dense-text"])
def test_api_round_trip_with_new_item(bench_run: dict, model: str) -> None:
    rec = sidrec.load(Path(bench_run["run_dir"]) / "models" / model)
    out = rec.recommend(["i01", "i03", "i05"], k=5)
    # items added by an earlier case (another model, the same run) may be among them
    assert len(out) == 5 and all(isinstance(i, str) and i.startswith(("i", "new-"))
                                 for i, _ in out)
    assert [s for _, s in out] == sorted((s for _, s in out), reverse=True)
    # Added items belong to the run (added_items.parquet): each model adds its own.
    new = f"new-{model}"
    rec.add_items([{"id": new, "text": "Title: Film number 99; Genres: space opera"}])
    wide = {"beam": 64} if model != "dense-text" else None
    everything = rec.recommend(["i01", "i03", "i05"], k=N_ITEMS + 3, inference=wide)
    assert new in [i for i, _ in everything]
    batch = rec.recommend_batch([["i01"], [], [new]], k=3)
    assert len(batch) == 3 and all(len(r) == 3 for r in batch)


def test_api_errors(bench_run: dict) -> None:
    run = Path(bench_run["run_dir"])
    rec = sidrec.load(run / "models" / "liger")
    with pytest.raises(SidrecError, match="unknown item id 'nope'"):
        rec.recommend(["i01", "nope"])
    with pytest.warns(UserWarning, match="skipped 1 unknown"):
        skipping = sidrec.load(run / "models" / "liger", on_unknown="skip")
        assert len(skipping.recommend(["i01", "nope"], k=3)) == 3
    with pytest.raises(SidrecError, match="already exists"):
        rec.add_items([{"id": "i01", "text": "x"}])
    with pytest.raises(SidrecError, match="empty text"):
        rec.add_items([{"id": "fresh", "text": "  "}])
    with pytest.raises(SidrecError, match="cannot take new items"):
        sidrec.load(run / "models" / "sasrec").add_items([{"id": "n2", "text": "t"}])
    with pytest.raises(SidrecError, match="no trained model"):
        sidrec.load(run / "models" / "missing")


def test_cli_recommend_and_bad_model(bench_run: dict, capsys: pytest.CaptureFixture) -> None:
    from sidrec.cli import main

    model_dir = Path(bench_run["run_dir"]) / "models" / "tiger"
    assert main(["recommend", str(model_dir), "i01", "i03", "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("i") for line in lines)
    assert main(["recommend", str(model_dir), "zzz"]) == 2
    assert "unknown item id 'zzz'" in capsys.readouterr().err


def test_parallel_bench_matches_sequential(tmp_path: Path) -> None:
    """Training models side by side in worker processes changes nothing but the wall
    time: at the same thread count the metrics are bit-identical to a one-at-a-time run."""
    import json
    import shutil

    inter, items = write_tables(tmp_path)
    metrics = {}
    for workers in (1, 2):
        run = tmp_path / f"run-{workers}"
        cfg = BenchConfig(
            prepare=tables(inter, items), run_dir=str(run), tokenize=TINY_SIDS,
            models=("pop", "sasrec", "liger"), seeds=(0, 1), workers=workers,
            train={"max_epochs": 1, "num_threads": 1},
        )
        run_bench(cfg, progress=False)
        bench = json.loads((run / "bench.json").read_text())
        assert bench["workers"] == workers
        assert (run / "models" / "liger-seed1" / "model.safetensors").is_file()
        metrics[workers] = {name: [r["rows"] for r in model["runs"]]
                            for name, model in bench["models"].items()}
        shutil.rmtree(run / "models")
    assert metrics[1] == metrics[2]
    assert metrics[1]["liger"][0] != metrics[1]["liger"][1]  # the seeds did differ


def test_full_profile_seeds_draw_their_own_cold_items(tmp_path: Path) -> None:
    """With `vary_split` (the full profile) seed s > 0 prepares its own holdout draw in
    `<run>-split<s>`, so the ± over seeds covers which items went cold."""
    import json

    from sidrec.bench import PROFILES
    from sidrec.data.dataset import Dataset

    assert PROFILES["full"].vary_split and not PROFILES["demo"].vary_split
    inter, items = write_tables(tmp_path)
    run = tmp_path / "run"
    cfg = BenchConfig(prepare=tables(inter, items), run_dir=str(run), models=("pop",),
                      seeds=(0, 1), vary_split=True, train={"max_epochs": 1})
    out = run_bench(cfg, progress=False)
    other = tmp_path / "run-split1"
    assert (other / "models" / "pop-seed1").is_dir() and not (run / "models" / "pop-seed1").exists()
    cold = [set(np.flatnonzero(Dataset.load(d).cold)) for d in (run, other)]
    assert cold[0] != cold[1] and len(cold[0]) == len(cold[1])
    assert "its own holdout cold items" in out["report"]
    runs = json.loads((run / "bench.json").read_text())["models"]["pop"]["runs"]
    assert runs[0]["rows"] != runs[1]["rows"]  # Pop trains nothing: only the split differs


def test_bench_rejects_bad_settings_before_any_work(tmp_path: Path) -> None:
    inter, items = write_tables(tmp_path)
    run = tmp_path / "run"
    for train, workers, match in (({"max_epoch": 1}, 0, "max_epoch"),
                                  ({"max_epochs": 1}, -1, "workers must be")):
        cfg = BenchConfig(prepare=tables(inter, items), run_dir=str(run),
                          models=("pop", "sasrec"), train=train, workers=workers)
        with pytest.raises(SidrecError, match=match):
            run_bench(cfg, progress=False)
        assert not run.exists()


@pytest.mark.parametrize(("cores", "workers", "jobs", "expected"), [
    (2, 0, 18, (1, 0)),  # one at a time, with train.py's default threads
    (16, 0, 18, (4, 4)),  # one model per 4 cores
    (16, 0, 2, (2, 8)),  # ... but never more workers than jobs
    (16, 3, 18, (3, 5)),
])
def test_bench_parallelism_on_cpu(monkeypatch: pytest.MonkeyPatch, cores: int, workers: int,
                                  jobs: int, expected: tuple[int, int]) -> None:
    import os

    import torch

    from sidrec.bench_jobs import parallelism

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parallelism(workers, {}, jobs) == expected


def test_recommend_batch_refuses_strings_for_histories(bench_run: dict) -> None:
    rec = sidrec.load(Path(bench_run["run_dir"]) / "models" / "pop")
    with pytest.raises(SidrecError, match=r"histories\[0\]: expected a list of item ids"):
        rec.recommend_batch(["i01", "i03"], k=3)


@pytest.mark.parametrize("name", ["pop", "sasrec", "dense-text", "tiger", "liger", "cobra"])
def test_exclude_history_never_returns_a_seen_item(bench_run: dict, name: str) -> None:
    """Every model honours `exclude_history` (beam search masks inside the search, so the
    list is still full)."""
    import dataclasses

    import torch

    from sidrec.checkpoint import load_model
    from sidrec.data.dataset import Dataset

    run = Path(bench_run["run_dir"])
    model = load_model(run / "models" / name, run)
    dataset = Dataset.load(run)
    histories, _, users = dataset.eval_examples("test")
    history, users = torch.as_tensor(histories[:16]), torch.as_tensor(users[:16])
    whole = torch.as_tensor(dataset.seen_items("test")[:16])
    masked = dataclasses.replace(model.inference, exclude_history=True)
    items, scores = model.recommend(history, users, 5, masked, seen=whole)
    for row, seen in zip(items.tolist(), whole.tolist(), strict=True):
        assert not set(row) & {i for i in seen if i >= 0}
    assert (items >= 0).float().mean() > 0.9  # the masked slots went to other items
    if name == "pop":  # the most popular items are in most histories: masking had work
        plain, _ = model.recommend(history, users, 5)
        assert any(set(r) & set(h) for r, h in zip(plain.tolist(), history.tolist(),
                                                   strict=True))


@pytest.mark.parametrize("name", ["pop", "tiger", "liger", "cobra"])
def test_exclude_seen_leaves_out_history_older_than_the_window(bench_run: dict,
                                                               name: str) -> None:
    """A history longer than the model's max_history: the API masks all of it, so the
    items before the window are not recommended either (they were, unmasked, for Pop)."""
    rec = sidrec.load(Path(bench_run["run_dir"]) / "models" / name)
    popular = [item for item, _ in rec.recommend([], k=rec.max_history + 8)]
    history = popular  # the most popular items are the oldest, outside the window
    recs = rec.recommend(history, k=8, exclude_seen=True)
    assert len(recs) == 8 and not {item for item, _ in recs} & set(history)
    if name == "pop":
        plain = rec.recommend(history, k=8)
        assert {item for item, _ in plain} & set(history[: -rec.max_history])


def test_a_model_can_ask_for_its_own_tokenizer(bench_run: dict, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A preset's `tokenizer:` section gives the model its own SIDs (e.g. COBRA's 3 x 32
    beside TIGER's 3 x 256), fitted once per distinct setting into sid_sets/<tag>/."""
    import shutil

    import yaml

    from sidrec import presets
    from sidrec.checkpoint import load_model
    from sidrec.run import ModelDir, RunDir
    from sidrec.train import train

    configs = tmp_path / "configs"
    shutil.copytree(presets.config_dir(), configs)
    tiger = yaml.safe_load((configs / "tiger.yaml").read_text())
    tiger["cpu"]["tokenizer"] = {"method": "rqkmeans", "levels": 2, "codebook_size": 3,
                                 "balanced": True}
    (configs / "tiger.yaml").write_text(yaml.safe_dump(tiger))
    monkeypatch.setattr(presets, "config_dir", lambda: configs)
    run = tmp_path / "run"
    shutil.copytree(bench_run["run_dir"], run, ignore=shutil.ignore_patterns("models"))
    fast = {"max_epochs": 1, "num_threads": 1}
    for name in ("own", "own-again"):
        train(presets.resolve_config("tiger", "cpu", None, fast), run, name=name, progress=False)
    tagged = ModelDir(run / "models" / "own").run
    assert tagged.sid_set and tagged.sids.parent.parent == run / "sid_sets"
    assert sorted(p.name for p in (run / "sid_sets").iterdir()) == [tagged.sid_set]  # once
    own, _ = tagged.load_sids()
    shared, _ = RunDir(run).load_sids()
    assert own.shape[1] == 2 + 1 and shared.shape[1] == 3 + 1  # levels + collision token
    model = load_model(run / "models" / "own")
    assert model.tokens.sizes[:2] == (3, 3)


def test_cli_bench_names_the_report_it_wrote(cli: Callable, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    from sidrec import bench
    from sidrec.io import write_text
    from sidrec.run import RunDir

    commands = []

    def run_bench(cfg: BenchConfig, command: str) -> dict:  # the stages: above; here, words
        commands.append(command)
        run = RunDir(tmp_path / "run")
        run.root.mkdir(exist_ok=True)
        write_text(run.bench_report, "| model |")
        return {"run_dir": str(run.root), "report": "| model |", "plots": ["recall.png"]}

    monkeypatch.setattr(bench, "run_bench", run_bench)
    result = cli("bench", "ml-100k")
    assert result.code == 0, result.err
    wrote = result.out.splitlines()[-1]
    assert wrote == f"wrote {tmp_path / 'run' / 'bench.md'} and recall.png"
    # the report names the command, retypable (a value with a space stays one word)
    assert commands == ["sidrec bench ml-100k --profile demo"]
    assert cli("bench", "ml-100k", "seeds=[0, 1]").code == 0
    assert commands[-1] == "sidrec bench ml-100k --profile demo 'seeds=[0, 1]'"
