"""The trainer: config resolution, examples, schedule, checkpoints, resume, loading."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import toy_dataset, write_run
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_distributed import MODEL as TINY_TIGER
from test_distributed import toy_run

from sidrec.checkpoint import load_model
from sidrec.epoch import lr_at, window_examples
from sidrec.errors import SidrecError
from sidrec.evaluate import evaluate, evaluate_run
from sidrec.io import read_json, save_npy
from sidrec.presets import RunSettings, TrainConfig, resolve_config, split_overrides
from sidrec.train import train

TINY = {"d_model": 16, "n_layers": 1, "n_heads": 1, "d_ff": 16, "max_len": 8}
FAST = {"batch_size": 16, "warmup_steps": 2, "device": "cpu", "num_threads": 1}


def tiny_sasrec(train_overrides: dict) -> RunSettings:
    """SASRec at size TINY, on the built-in defaults (no preset) and `train_overrides`."""
    return resolve_config("sasrec", None, TINY, train_overrides)


def read_log(model_dir) -> list[dict]:
    return [json.loads(line) for line in (model_dir / "train_log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- configuration


def test_config_precedence_and_errors(tmp_path):
    (tmp_path / "train.yaml").write_text("cpu:\n  train:\n    lr: 0.01\n    batch_size: 8\n")
    (tmp_path / "sasrec.yaml").write_text(
        "cpu:\n  model:\n    d_model: 32\n  train:\n    batch_size: 4\n"
    )
    settings = resolve_config(
        "sasrec", "cpu", {"n_layers": 3}, {"seed": 7, "num_threads": 1}, directory=tmp_path
    )
    model_cfg, cfg = settings.model, settings.train
    assert (model_cfg.d_model, model_cfg.n_layers, model_cfg.loss) == (32, 3, "ce")
    assert (cfg.lr, cfg.batch_size, cfg.seed) == (0.01, 4, 7)
    assert settings.runtime.num_threads == 1  # a runtime setting, not hashed
    with pytest.raises(SidrecError, match="unknown setting 'n_layer'"):
        resolve_config("sasrec", "cpu", {"n_layer": 3}, directory=tmp_path)
    with pytest.raises(SidrecError, match="no preset 'gpu'"):
        resolve_config("sasrec", "gpu", directory=tmp_path)
    with pytest.raises(SidrecError, match="must be > 0"):
        resolve_config("sasrec", None, train_overrides={"lr": 0.0})
    with pytest.raises(SidrecError, match="metric"):
        resolve_config("sasrec", None, train_overrides={"metric": "mrr"})
    for bad in ({"lr": float("inf")}, {"lr": float("nan")}, {"seed": -1}):
        with pytest.raises(SidrecError, match="must be"):
            resolve_config("sasrec", None, train_overrides=bad)


def test_shipped_presets_resolve():
    """Every value a shipped preset sets (configs/train.yaml, then configs/<model>.yaml) is
    the value the resolved settings hold."""
    from sidrec.models import available_models

    configs = Path(__file__).resolve().parents[1] / "src" / "sidrec" / "configs"
    base = yaml.safe_load((configs / "train.yaml").read_text())
    for model in available_models():
        presets = yaml.safe_load((configs / f"{model}.yaml").read_text())
        for preset in ("cpu", "paper"):
            settings = resolve_config(model, preset)
            own = presets.get(preset) or {}
            expected = {"train": {**(base[preset].get("train") or {}),
                                  **(own.get("train") or {})},
                        "model": own.get("model") or {}, "inference": own.get("inference") or {}}
            for section, values in expected.items():
                config = getattr(settings, section)
                for key, value in values.items():
                    got = getattr(config, key)
                    assert (list(got) if isinstance(got, tuple) else got) == value, (
                        model, preset, section, key)
            assert sum(map(len, expected.values())), (model, preset)  # a preset sets something


def test_split_overrides():
    over = split_overrides(
        "sasrec", ["d_model=32", "lr=0.01", "train.seed=3", "model.loss=bce", "device=cpu"]
    )
    assert over["model"] == {"d_model": 32, "loss": "bce"}
    assert over["train"] == {"lr": 0.01, "seed": 3}
    assert over["runtime"] == {"device": "cpu"}
    assert split_overrides("tiger", ["beam=50"])["inference"] == {"beam": 50}
    with pytest.raises(SidrecError, match="not a setting"):
        split_overrides("sasrec", ["colour=red"])


def test_inference_settings_are_not_part_of_the_model_identity(tmp_path):
    ds = toy_dataset()
    first = train(resolve_config("pop", "cpu", None, FAST), tmp_path, dataset=ds, progress=False)
    config = (tmp_path / "models/pop/config.json").read_text()
    runtime = {**FAST, "num_threads": 2, "eval_batch_size": 7}
    again = train(resolve_config("pop", "cpu", None, runtime), tmp_path, dataset=ds,
                  progress=False)
    assert again["resumed"] and first["best_valid"] == again["best_valid"]
    assert (tmp_path / "models/pop/config.json").read_text() == config


# ---------------------------------------------------------------- examples and schedule


def test_windows_predict_every_training_target_once():
    ds = toy_dataset(max_history=3)
    histories, targets, users = window_examples(ds)
    covered = Counter()
    for h, t, u in zip(histories, targets, users, strict=True):
        seq = [int(x) for x in h if x >= 0] + [int(t)]
        for nxt in seq[1:]:  # per-position targets
            covered[(int(u), nxt)] += 1
    expected = Counter((u, int(x)) for u, s in enumerate(ds.train) for x in s[1:])
    assert covered == expected
    assert len(targets) < len(ds.train_examples()[1])


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, warmup_steps=10)
    assert lr_at(0, cfg, 110) == pytest.approx(0.1)
    assert lr_at(9, cfg, 110) == pytest.approx(1.0)
    assert lr_at(60, cfg, 110) == pytest.approx(0.5)
    assert lr_at(109, cfg, 110) < 0.01
    const = TrainConfig(lr=1.0, warmup_steps=0, schedule="constant")
    assert lr_at(500, const, 110) == 1.0


# ---------------------------------------------------------------- training and resuming


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    ds = toy_dataset()
    cfg = {**FAST, "max_epochs": 4, "patience": 100}

    straight = train(tiny_sasrec(cfg), tmp_path, name="straight", dataset=ds, progress=False)

    class Killed(Exception):
        pass

    def kill_after_two(entry):
        if entry["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        train(tiny_sasrec(cfg), tmp_path, name="killed", dataset=ds, progress=False,
              on_epoch_end=kill_after_two)
    assert json.loads((tmp_path / "models/killed/state.json").read_text())["epoch"] == 2
    resumed = train(tiny_sasrec(cfg), tmp_path, name="killed", dataset=ds, progress=False)
    assert resumed["resumed"] and resumed["epochs"] == 4
    assert resumed["best_valid"] == straight["best_valid"]
    assert resumed["best_epoch"] == straight["best_epoch"]

    a = load_file(tmp_path / "models/straight/model.safetensors")
    b = load_file(tmp_path / "models/killed/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last_a = load_file(tmp_path / "models/straight/last.safetensors")
    last_b = load_file(tmp_path / "models/killed/last.safetensors")
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)

    def strip(log):
        return [{k: v for k, v in e.items() if k not in ("train_seconds", "valid_seconds")}
                for e in log]

    log = strip(read_log(tmp_path / "models/straight"))
    assert log == strip(read_log(tmp_path / "models/killed"))
    assert [e["epoch"] for e in log] == [1, 2, 3, 4]
    assert {"train_loss", "train_loss_ce", "valid_ndcg@10", "valid_recall@10"} <= set(log[0])

    # a finished run is not retrained; a changed setting starts over
    again = train(tiny_sasrec(cfg), tmp_path, name="straight", dataset=ds, progress=False)
    assert again["resumed"] and again["best_valid"] == straight["best_valid"]
    changed = train(tiny_sasrec({**cfg, "max_epochs": 1}), tmp_path, name="straight",
                    dataset=ds, progress=False)
    assert not changed["resumed"] and len(read_log(tmp_path / "models/straight")) == 1


def test_a_model_patience_stopped_goes_on_as_if_it_had_never_stopped(tmp_path):
    """`early_stop=False` (`sidrec train --no-early-stop`) continues a model that patience
    stopped to max_epochs: its weights, best epoch and log are those of a run that never
    stopped, and its settings (config hash) are those it was trained with."""
    ds = toy_dataset()
    cfg = {**FAST, "lr": 0.05, "max_epochs": 8, "patience": 1}
    stopped = train(tiny_sasrec(cfg), tmp_path, name="stopped", dataset=ds, progress=False)
    assert stopped["stopped_early"] and stopped["epochs"] < 8
    config = (tmp_path / "models/stopped/config.json").read_text()
    went_on = train(tiny_sasrec(cfg), tmp_path, name="stopped", dataset=ds, progress=False,
                    early_stop=False)
    straight = train(tiny_sasrec(cfg), tmp_path, name="straight", dataset=ds,
                     progress=False, early_stop=False)
    assert went_on["resumed"] and not went_on["stopped_early"] and went_on["epochs"] == 8
    assert (went_on["best_epoch"], went_on["best_valid"]) == (straight["best_epoch"],
                                                              straight["best_valid"])
    assert (tmp_path / "models/stopped/config.json").read_text() == config
    for name in ("model.safetensors", "last.safetensors"):
        a = load_file(tmp_path / "models/stopped" / name)
        b = load_file(tmp_path / "models/straight" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    epochs = [e["epoch"] for e in read_log(tmp_path / "models/stopped")]
    assert epochs == list(range(1, 9))


def test_a_failed_retrain_keeps_the_trained_model(tmp_path):
    ds = toy_dataset()
    cfg = {**FAST, "max_epochs": 2}
    train(tiny_sasrec(cfg), tmp_path, dataset=ds, progress=False)
    weights = load_file(tmp_path / "models/sasrec/model.safetensors")
    config = (tmp_path / "models/sasrec/config.json").read_text()
    diverging = {**cfg, "lr": 1e30, "grad_clip": 0.0, "warmup_steps": 0}
    with pytest.raises(SidrecError, match="lower lr"):
        train(tiny_sasrec(diverging), tmp_path, dataset=ds, progress=False)
    assert (tmp_path / "models/sasrec/config.json").read_text() == config
    after = load_file(tmp_path / "models/sasrec/model.safetensors")
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    load_model(tmp_path / "models/sasrec", tmp_path, dataset=ds)  # still loads
    # a retrain that completes replaces it, and leaves no staging directory behind
    train(tiny_sasrec({**cfg, "max_epochs": 1}), tmp_path, dataset=ds, progress=False)
    assert len(read_log(tmp_path / "models/sasrec")) == 1
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["sasrec"]


def test_a_best_written_after_the_last_checkpoint_is_kept_only_if_that_checkpoint_says_so(
        tmp_path):
    """Killed between writing a new best and the checkpoint of its epoch, a run resumes
    from the epoch before, whose checkpoint does not know that best: its file is dropped
    (the epoch trains again), and the best weights stay those the checkpoint describes."""
    from sidrec.checkpoint import TrainState, save_weights, settle_weights
    from sidrec.run import ModelDir

    md = ModelDir(tmp_path / "m")
    md.root.mkdir()
    old, new = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    save_weights(old, md.weights, "h", epoch=1)
    save_weights(new, md.next_weights, "h", epoch=3)
    settle_weights(md, TrainState("h", epoch=2, best_epoch=1))  # the resumed checkpoint
    assert not md.next_weights.exists()
    assert torch.equal(load_file(md.weights)["weight"], old.weight.detach())
    save_weights(new, md.next_weights, "h", epoch=3)
    settle_weights(md, TrainState("h", epoch=3, best_epoch=3))  # its own epoch's checkpoint
    assert not md.next_weights.exists()
    assert torch.equal(load_file(md.weights)["weight"], new.weight.detach())


def test_an_inference_file_edited_out_of_range_is_refused_at_load(tmp_path):
    run = toy_run(tmp_path / "run")
    summary = train(resolve_config("tiger", "cpu", TINY_TIGER, {**FAST, "max_epochs": 1}), run,
                    progress=False)
    path = Path(summary["model_dir"]) / "inference.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "beam": -3}))
    with pytest.raises(SidrecError, match=r"inference.json.beam=-3: must be a finite number"):
        load_model(summary["model_dir"], run)


def test_a_checkpoint_with_nan_weights_is_refused_at_load(tmp_path):
    ds = toy_dataset()
    train(tiny_sasrec({**FAST, "max_epochs": 1}), tmp_path, dataset=ds, progress=False)
    path = tmp_path / "models/sasrec/model.safetensors"
    weights = load_file(path)
    name = sorted(weights)[0]
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, path)
    with pytest.raises(SidrecError, match=r"model.safetensors: sasrec: 1 weight tensor\(s\) "
                                          r"hold NaN or inf"):
        load_model(tmp_path / "models/sasrec", tmp_path, dataset=ds)


def test_a_retrain_stopped_after_its_last_epoch_is_published_when_run_again(tmp_path):
    """Killed between its last checkpoint and the move over the old model (here: in
    on_epoch_end of the last epoch), a retrain is done in its staging directory; running
    it again moves it into place instead of reporting the staging directory."""
    ds = toy_dataset()
    cfg = {**FAST, "max_epochs": 1}
    train(tiny_sasrec(cfg), tmp_path, dataset=ds, progress=False)

    class Killed(Exception):
        pass

    def kill(entry):
        raise Killed

    retrain = {**cfg, "lr": 5e-4}
    with pytest.raises(Killed):
        train(tiny_sasrec(retrain), tmp_path, dataset=ds, progress=False, on_epoch_end=kill)
    first_lr = read_json(tmp_path / "models/sasrec/config.json")["train_config"]["lr"]
    assert first_lr != 5e-4
    again = train(tiny_sasrec(retrain), tmp_path, dataset=ds, progress=False)
    assert again["resumed"] and again["model_dir"] == str(tmp_path / "models/sasrec")
    assert read_json(tmp_path / "models/sasrec/config.json")["train_config"]["lr"] == 5e-4
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["sasrec"]


def test_model_names_stay_inside_the_run_dir(tmp_path):
    with pytest.raises(SidrecError, match="plain directory name"):
        train(resolve_config("pop", "cpu", None, FAST), tmp_path, name="../..",
              dataset=toy_dataset(), progress=False)
    assert not (tmp_path / "models").exists()


def test_training_learns_and_early_stops(tmp_path):
    ds = toy_dataset(n_users=40)
    summary = train(tiny_sasrec({**FAST, "lr": 0.01, "max_epochs": 60, "patience": 3}),
                    tmp_path, dataset=ds, progress=False)
    log = read_log(tmp_path / "models/sasrec")
    assert log[-1]["train_loss"] < 0.8 * log[0]["train_loss"]
    assert summary["stopped_early"] and summary["epochs"] < 60
    assert summary["best_epoch"] == summary["epochs"] - 3

    model = load_model(tmp_path / "models/sasrec", tmp_path, dataset=ds)
    assert not model.training
    valid = evaluate(model, ds, "valid", ks=(10,))["rows"][0]["ndcg@10"]
    assert valid == pytest.approx(summary["best_valid"], abs=1e-6)
    config = json.loads((tmp_path / "models/sasrec/config.json").read_text())
    assert config["model_config"]["d_model"] == 16 and config["train_config"]["lr"] == 0.01


def test_pop_is_saved_without_training_and_reloads(tmp_path):
    ds = toy_dataset()
    summary = train(resolve_config("pop", "cpu", None, FAST), tmp_path, dataset=ds, progress=False)
    assert summary["epochs"] == 0
    model = load_model(summary["model_dir"], tmp_path, dataset=ds)
    items, _ = model.recommend(torch.full((1, 4), -1), torch.zeros(1, dtype=torch.long), 3)
    assert items[0, 0].item() == int(np.argmax(ds.popularity()))


def test_load_model_refuses_changed_inputs(tmp_path):
    ds = toy_dataset()
    emb = np.random.default_rng(0).normal(size=(ds.n_items, 8)).astype(np.float32)
    save_npy(tmp_path / "embeddings.npy", emb)
    train(resolve_config("dense-text", None, TINY, {**FAST, "max_epochs": 1}), tmp_path,
          dataset=ds, progress=False)
    load_model(tmp_path / "models/dense-text", tmp_path, dataset=ds)
    save_npy(tmp_path / "embeddings.npy", emb + 1.0)
    with pytest.raises(SidrecError, match="embeddings changed"):
        load_model(tmp_path / "models/dense-text", tmp_path, dataset=ds)
    with pytest.raises(SidrecError, match="no trained model"):
        load_model(tmp_path / "models/nothing", tmp_path, dataset=ds)


def test_nan_loss_is_reported(tmp_path):
    ds = toy_dataset()
    with pytest.raises(SidrecError, match="lower lr"):
        diverging = {**FAST, "lr": 1e30, "grad_clip": 0.0, "warmup_steps": 0, "max_epochs": 3}
        train(tiny_sasrec(diverging), tmp_path, dataset=ds, progress=False)


def test_train_then_evaluate_run_from_disk(tmp_path):
    ds = toy_dataset()
    write_run(ds, tmp_path)
    train(resolve_config("pop", "cpu", None, FAST), tmp_path, progress=False)
    train(tiny_sasrec({**FAST, "max_epochs": 2}), tmp_path, progress=False)
    for name in ("pop", "sasrec"):
        metrics = evaluate_run(tmp_path, name, "test", ks=(5, 10), device="cpu")
        assert [r["subset"] for r in metrics["rows"]] == ["overall", "in-set", "cold"] * 2
        assert [r["variant"] for r in metrics["rows"]][3:] == ["excl. history"] * 3
    store = read_json(tmp_path / "metrics.json")
    assert sorted(store["models"]) == ["pop", "sasrec"]
    results = (tmp_path / "results.md").read_text()
    assert "| sasrec (CE) | test | overall |" in results and "| pop | test | overall |" in results
    with pytest.raises(SidrecError, match="no trained model"):
        evaluate_run(tmp_path, "dense", "test", device="cpu")


def test_evaluate_takes_inference_settings_and_records_them(tmp_path, cli):
    ds = toy_dataset()
    write_run(ds, tmp_path)
    train(tiny_sasrec({**FAST, "max_epochs": 1}), tmp_path, progress=False)
    metrics = evaluate_run(tmp_path, "sasrec", "test", ks=(5,), device="cpu")
    assert metrics["inference"] == {"": {"exclude_history": False},
                                    "excl. history": {"exclude_history": True}}
    # SASRec has no inference settings: an unknown one is the same error for every model
    with pytest.raises(SidrecError, match="unknown setting 'beam' for NoInference"):
        evaluate_run(tmp_path, "sasrec", "test", device="cpu", inference={"beam": 50})
    result = cli("evaluate", tmp_path, "--model", "sasrec", "beam=50")
    assert result.code == 2 and "unknown setting 'beam'" in result.err
    assert "Traceback" not in result.err
    result = cli("evaluate", tmp_path, "--model", "sasrec", "--ks", "abc")
    assert result.code == 2 and "--ks 'abc'" in result.err
    result = cli("evaluate", tmp_path, "--model", "sasrec", "--split", "valid", "--headline")
    assert result.code == 0, result.err
    rows = [line for line in result.out.splitlines() if line.startswith("| sasrec")]
    assert [row.split("|")[3].strip() for row in rows] == ["overall", "in-set", "cold"]
    assert "excl. history" not in result.out


def test_damaged_model_files_are_one_line_errors(tmp_path):
    ds = toy_dataset()
    train(tiny_sasrec({**FAST, "max_epochs": 1}), tmp_path, dataset=ds, progress=False)
    md = tmp_path / "models/sasrec"
    weights = (md / "model.safetensors").read_bytes()
    (md / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(SidrecError, match="model.safetensors: unreadable"):
        load_model(md, tmp_path, dataset=ds)
    (md / "model.safetensors").write_bytes(weights)
    record = json.loads((md / "config.json").read_text())
    (md / "config.json").write_text("{not json")
    with pytest.raises(SidrecError, match="config.json: unreadable JSON"):
        load_model(md, tmp_path, dataset=ds)
    del record["format"]  # as written by the sidrec before inference settings moved out
    (md / "config.json").write_text(json.dumps(record))
    with pytest.raises(SidrecError, match="older sidrec.*retrain it once"):
        load_model(md, tmp_path, dataset=ds)


@pytest.mark.parametrize(("override", "message"), [
    ({"n_layers": -1}, "n_layers=-1: must be a finite number >= 0"),
    ({"n_layers": 0}, "n_layers=0: must be > 0"),
    ({"dropout": 2.0}, "dropout=2.0: a dropout rate must be in"),
    ({"d_model": 0}, "d_model=0: must be > 0"),
])
def test_out_of_range_model_settings_are_errors(override, message):
    with pytest.raises(SidrecError, match=message):
        resolve_config("sasrec", "cpu", override)


def test_tied_weights_are_stored_once_and_load_back(tmp_path):
    run = toy_run(tmp_path / "run")
    summary = train(resolve_config("tiger", "cpu", TINY_TIGER, {**FAST, "max_epochs": 1}), run,
                    progress=False)
    path = tmp_path / "run/models/tiger/model.safetensors"
    stored = load_file(path)
    # the token table is one tensor in three modules: stored once
    assert "tokens.emb.weight" in stored
    assert not {"encoder.tokens.emb.weight", "gen.tokens.emb.weight"} & set(stored)
    model = load_model(summary["model_dir"], run)
    assert model.gen.tokens.emb.weight is model.tokens.emb.weight
    assert torch.equal(model.tokens.emb.weight, stored["tokens.emb.weight"])
    history, users = torch.tensor([[-1, 1, 2, 3]]), torch.tensor([0])
    expected = model.recommend(history, users, 5)
    # a file written before (every name of a tie stored) loads the same model
    full = {k: v.clone() for k, v in model.state_dict().items()}
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file(full, str(path), metadata=metadata)
    again = load_model(summary["model_dir"], run).recommend(history, users, 5)
    assert all(torch.equal(a, b) for a, b in zip(expected, again, strict=True))
    # a file holding the tie under another of its names loads the same model too
    other = {k: v for k, v in full.items() if k not in ("tokens.emb.weight",
                                                         "encoder.tokens.emb.weight")}
    save_file(other, str(path), metadata=metadata)
    again = load_model(summary["model_dir"], run).recommend(history, users, 5)
    assert all(torch.equal(a, b) for a, b in zip(expected, again, strict=True))

