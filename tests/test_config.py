"""Config plumbing: dataclass <-> dict, `key=value` overrides, YAML files, and the CLI's
handling of settings."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from sidrec.config import from_dict, load_yaml, merge, parse_overrides, replace, to_dict
from sidrec.data import Dataset, PrepareConfig
from sidrec.embed import EmbedConfig
from sidrec.errors import SidrecError


@dataclass(frozen=True)
class Block:
    n_layers: int = 2
    dropout: float = 0.1
    norm: Literal["layer", "rms"] = "layer"


@dataclass(frozen=True)
class Model:
    name: str = "tiny"
    lr: float = 1e-3
    use_bias: bool = True
    levels: tuple[int, ...] = (256, 256, 256)
    encoder: Block = field(default_factory=Block)
    decoder: Block = field(default_factory=lambda: Block(n_layers=4))
    note: str | None = None


def test_round_trip_through_a_dict() -> None:
    cfg = Model(levels=(32, 32), encoder=Block(norm="rms"))
    data = to_dict(cfg)
    assert data["levels"] == [32, 32] and data["encoder"] == {
        "n_layers": 2, "dropout": 0.1, "norm": "rms"}
    assert from_dict(Model, data) == cfg
    for real in (PrepareConfig(text_cols=("title", "brand")), EmbedConfig(batch_size=7)):
        assert from_dict(type(real), to_dict(real)) == real


def test_unknown_key() -> None:
    with pytest.raises(SidrecError) as e:
        from_dict(PrepareConfig, {"kcores": 5}, "data prepare")
    msg = str(e.value)
    assert "data prepare: unknown setting 'kcores' for PrepareConfig" in msg
    assert "kcore" in msg.split("valid settings:")[1]
    with pytest.raises(SidrecError, match=r"m\.encoder: unknown setting 'layers' for Block"):
        from_dict(Model, {"encoder": {"layers": 3}}, "m")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"encoder": {"n_layers": "two"}}, "cfg.encoder.n_layers: expected an integer, got 'two'"),
        ({"encoder": {"n_layers": 2.5}}, "expected an integer, got 2.5"),
        ({"encoder": {"n_layers": True}}, "expected an integer, got True"),
        ({"lr": "fast"}, "cfg.lr: expected a number, got 'fast'"),
        ({"lr": False}, "cfg.lr: expected a number, got False"),
        ({"use_bias": "yes"}, "cfg.use_bias: expected true or false, got 'yes'"),
        ({"use_bias": 1}, "expected true or false, got 1"),
        ({"name": ["a"]}, "cfg.name: expected a string"),
        ({"encoder": {"norm": "batch"}}, "cfg.encoder.norm: 'batch' is not one of 'layer', 'rms'"),
        ({"levels": [32, "x"]}, r"cfg.levels[1]: expected an integer, got 'x'"),
        ({"levels": {"a": 1}}, "cfg.levels: expected a list"),
        ({"encoder": 3}, "cfg.encoder: expected a mapping of settings, got int"),
    ],
)
def test_type_errors(data: dict, message: str) -> None:
    with pytest.raises(SidrecError) as e:
        from_dict(Model, data, "cfg")
    assert message in str(e.value)


def test_coercions() -> None:
    cfg = from_dict(Model, {"lr": 1, "levels": 8, "name": 3, "encoder": {"n_layers": 3.0},
                            "note": None})
    assert (cfg.lr, cfg.levels, cfg.name, cfg.encoder.n_layers) == (1.0, (8,), "3", 3)
    assert isinstance(cfg.lr, float) and isinstance(cfg.encoder.n_layers, int)
    assert from_dict(Model, {"note": "x"}).note == "x"
    assert from_dict(Model, {"encoder": None}).encoder == Block()


def test_comma_separated_lists_from_the_command_line() -> None:
    cfg = replace(Model(), parse_overrides(["levels=64,32,8"]))
    assert cfg.levels == (64, 32, 8)
    with pytest.raises(SidrecError, match=r"levels\[1\]"):
        replace(Model(), parse_overrides(["levels=64,x"]))


def test_nested_overrides() -> None:
    over = parse_overrides(["encoder.n_layers=6", "decoder.norm=rms", "lr=1e-3",
                            "levels=[32, 32]", "name=", "encoder.dropout=0"])
    assert over == {"encoder": {"n_layers": 6, "dropout": 0}, "decoder": {"norm": "rms"},
                    "lr": "1e-3", "levels": [32, 32], "name": ""}
    cfg = replace(Model(decoder=Block(n_layers=4, dropout=0.3)), over)
    # nested mappings merge: decoder keeps n_layers=4 and dropout=0.3, only norm changes
    assert cfg.decoder == Block(n_layers=4, dropout=0.3, norm="rms")
    assert cfg.encoder == Block(n_layers=6, dropout=0.0)
    assert cfg.lr == 0.001 and cfg.levels == (32, 32) and cfg.name == ""
    # later overrides win; a value containing '=' is kept whole
    assert parse_overrides(["lr=1", "lr=2", "name=a=b"]) == {"lr": 2, "name": "a=b"}
    assert merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 3}, "d": {"e": 1}}) == {
        "a": {"b": 3, "c": 2}, "d": {"e": 1}}


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["lr"], "override 'lr': expected key=value"),
        (["=3"], "override '=3': expected key=value"),
        (["lr=[1,"], "override 'lr=[1,': the value is not valid YAML"),
        (["encoder=2", "encoder.n_layers=1"], "'encoder' was already set to a value"),
        (["encoder.n_layers=1", "encoder=2"], "'encoder' already has nested settings"),
    ],
)
def test_bad_overrides(pairs: list[str], message: str) -> None:
    with pytest.raises(SidrecError) as e:
        parse_overrides(pairs)
    assert message in str(e.value)


def test_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "model.yaml"
    path.write_text("name: big\nencoder:\n  n_layers: 8\n  norm: rms\nlr: 3.0e-4\n")
    cfg = from_dict(Model, load_yaml(path), str(path))
    assert (cfg.name, cfg.encoder.n_layers, cfg.encoder.norm, cfg.lr) == ("big", 8, "rms", 3e-4)
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}


def test_yaml_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: big\nencoder:\n  n_layers: [1, 2\nlr: 0.1\n")
    with pytest.raises(SidrecError) as e:
        load_yaml(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:4:") and "invalid YAML" in msg
    assert "\n" not in msg
    path.write_text("name: a\n  bad indent: b\n")
    with pytest.raises(SidrecError, match=rf"{path}:2:\d+: invalid YAML"):
        load_yaml(path)


def test_yaml_file_problems(tmp_path: Path) -> None:
    with pytest.raises(SidrecError, match="config file not found"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SidrecError, match="expected a mapping of settings at the top level"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "typo.yaml").write_text("encoder:\n  n_layer: 3\n")
    with pytest.raises(SidrecError, match=r"typo.yaml.encoder: unknown setting 'n_layer'"):
        from_dict(Model, load_yaml(tmp_path / "typo.yaml"), str(tmp_path / "typo.yaml"))


def test_cli_overrides_before_and_after_flags(cli: Callable, tmp_path: Path) -> None:
    (tmp_path / "inter.csv").write_text(
        "uid,iid,t\n" + "".join(f"u{u},i{(u + k) % 4},{k}\n" for u in range(3) for k in range(4)))
    (tmp_path / "items.csv").write_text("iid,title\n" + "".join(f"i{k},T{k}\n" for k in range(4)))
    for n, argv in enumerate([
        ["user_col=uid", "--run-dir", "{run}", "item_col=iid", "--items", "{items}", "time_col=t",
         "--max-history", "2"],
        ["--run-dir", "{run}", "--items", "{items}", "--max-history", "2", "user_col=uid",
         "item_col=iid", "time_col=t"],
    ]):
        run = tmp_path / f"run{n}"
        args = [a.format(run=run, items=tmp_path / "items.csv") for a in argv]
        result = cli("data", "prepare", tmp_path / "inter.csv", *args)
        assert result.code == 0, result.err
        assert result.out.splitlines()[-1] == f"wrote {run}/dataset/"
        ds = Dataset.load(run)
        assert ds.max_history == 2 and ds.n_users == 3 and ds.n_items == 4
        assert ds.manifest["protocol"]["user_col"] == "uid"
    # a flag and a key=value for the same setting: the key=value wins
    run = tmp_path / "run-both"
    result = cli("data", "prepare", tmp_path / "inter.csv", "--run-dir", run, "--items",
                 tmp_path / "items.csv", "user_col=uid", "item_col=iid", "time_col=t",
                 "--max-history", "2", "max_history=3")
    assert result.code == 0 and Dataset.load(run).max_history == 3


def test_cli_rejects_stray_arguments(cli: Callable, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        cli("data", "prepare", "ml-100k", "--run-dir", tmp_path / "r", "stray")
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli("data", "prepare", "ml-100k", "--bogus", "1")
    assert e.value.code == 2
    assert not (tmp_path / "r").exists()


def _toy_sid_run(tmp_path: Path) -> Path:
    """A toy run with item vectors and no `sids.npy`: a SID model needs its own SIDs."""
    import numpy as np
    from conftest import toy_dataset, write_run

    run = tmp_path / "run"
    ds = toy_dataset()
    write_run(ds, run)
    rng = np.random.default_rng(0)
    np.save(run / "embeddings.npy", rng.normal(size=(ds.n_items, 8)).astype(np.float32))
    return run


def test_cli_train_takes_tokenizer_settings(cli: Callable, tmp_path: Path) -> None:
    """`tokenizer.key=value` gives TIGER (whose cpu preset reads the run's sids.npy) its own
    SID set, fitted with those settings."""
    from sidrec.checkpoint import load_model
    from sidrec.run import ModelDir

    run = _toy_sid_run(tmp_path)
    result = cli("train", run, "--model", "tiger", "tokenizer.method=rqkmeans",
                 "tokenizer.levels=2", "tokenizer.codebook_size=3", "max_epochs=1",
                 "device=cpu", "num_threads=1", "d_model=16", "d_ff=16")
    assert result.code == 0, result.err
    assert not (run / "sids.npy").exists()
    tagged = ModelDir(run / "models" / "tiger").run
    info = json.loads(tagged.tokenizer_info.read_text())
    assert (info["method"], info["levels"], info["codebook_size"]) == ("rqkmeans", 2, 3)
    assert load_model(run / "models" / "tiger").tokens.sizes[:2] == (3, 3)


@pytest.mark.parametrize(("model", "pairs", "message"), [
    ("sasrec", ["tokenizer.method=rqkmeans"], "'sasrec' reads no semantic IDs; they apply to "
                                              "the SID models (cobra, "),
    ("tiger", ["tokenizer.codebook_size=3"], "name its method too, e.g. tokenizer.method="),
    ("tiger", ["tokenizer.method=rqkmeans", "tokenizer.codebok_size=3"],
     "unknown setting 'codebok_size'"),
    ("cobra", ["tokenizer.method=kmeans"], "unknown tokenizer method 'kmeans'"),
])
def test_cli_train_refuses_bad_tokenizer_settings(cli: Callable, tmp_path: Path, model: str,
                                                  pairs: list[str], message: str) -> None:
    run = _toy_sid_run(tmp_path)
    result = cli("train", run, "--model", model, *pairs, "max_epochs=1", "device=cpu")
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("sidrec: error: ") and result.err.count("\n") == 1
    assert message in result.err
    assert not (run / "models").exists() and not (run / "sid_sets").exists()
