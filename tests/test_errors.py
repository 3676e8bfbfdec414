"""Issue #17, items 8, 9, 11 and 13: caches that verify what they serve, stages that refuse
stale inputs, ids that cannot be empty, and one-line errors for every fault a new user hits.

Each user mistake is run through the CLI: exit code 2, one line on stderr that names the
file (line, field) and the fix, no traceback, and nothing half-written.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import toy_dataset, write_run

import sidrec
import sidrec.data
import sidrec.tokenize.stage as stage
from sidrec.data import PrepareConfig, prepare
from sidrec.errors import SidrecError
from sidrec.io import hash_file, hash_obj, read_json, save_npy, write_json

TINY = ["d_model=16", "n_layers=1", "n_heads=1", "d_ff=16", "max_len=8"]
FAST = ["batch_size=16", "warmup_steps=2", "device=cpu", "num_threads=1", "max_epochs=1"]
# for TIGER / LIGER on MovieLens: tiny, so that a test that fails trains for a second only
GEN_FAST = ["max_epochs=1", "examples_per_epoch=32", "device=cpu", "num_threads=1"]


@pytest.fixture
def fail(cli: Callable, files_in: Callable, tmp_path: Path) -> Callable[..., str]:
    """Run the CLI expecting a user error; check the rules and return the one line.

    `watch`: folders in which nothing may appear, change or vanish; `names`: strings the
    line must contain (the file, the field, the fix)."""

    def _fail(*argv: str | Path, watch: tuple[Path, ...] = (), names: tuple = ()) -> str:
        watched = [Path(w) for w in watch]
        before = [(files_in(w), _stamps(w)) for w in watched]
        result = cli(*argv)
        assert result.code == 2, result
        assert "Traceback" not in result.err and result.out == "", result
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sidrec: error: "), result.err
        for w, old in zip(watched, before, strict=True):
            assert (files_in(w), _stamps(w)) == old, f"{w} changed"
        assert not [p for p in files_in(tmp_path) if p.endswith(".tmp") or ".partial" in p]
        for name in names:
            assert str(name) in lines[0], (name, lines[0])
        return lines[0]

    return _fail


def _stamps(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in Path(root).rglob("*") if p.is_file()}


def prepare_args(source: Path, run: Path, *extra: str) -> list[str]:
    return ["data", "prepare", str(source), "--run-dir", str(run), *extra]


# ---------------------------------------------------------------- small inputs

INTER = "user_id,item_id,timestamp\na,x,1\na,y,2\na,z,3\nb,y,1\nb,x,2\nb,z,3\n"
ITEMS = "item_id,title\nx,X\ny,Y\nz,Z\n"


def table(folder: Path, inter: str = INTER, items: str = ITEMS) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "inter.csv").write_text(inter)
    (folder / "items.csv").write_text(items)
    return folder / "inter.csv", folder / "items.csv"


def amazon(folder: Path, reviews: bytes, gz: bool = True) -> Path:
    """reviews_Toys_5.json[.gz] holding `reviews` as given + a good meta file."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    path = folder / f"reviews_Toys_5.json{suffix}"
    path.write_bytes(reviews)
    meta = b"".join(f"{{'asin': '{i}', 'title': '{i}'}}\n".encode() for i in "abc")
    (folder / f"meta_Toys.json{suffix}").write_bytes(gzip.compress(meta) if gz else meta)
    return path


def review(user: str, item: str, t: int) -> bytes:
    record = {"reviewerID": user, "asin": item, "unixReviewTime": t}
    return (json.dumps(record) + "\n").encode()


REVIEWS = review("u", "a", 1) + review("u", "b", 2) + review("u", "c", 3)


def recbole(folder: Path, inter: bytes, gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("x.inter.gz" if gz else "x.inter")
    path.write_bytes(inter)
    (folder / "x.item").write_text("item_id:token\ttitle:token_seq\na\tA\nb\tB\nc\tC\n")
    return path


RECBOLE = b"user_id:token\titem_id:token\ttimestamp:float\nu\ta\t1\nu\tb\t2\nu\tc\t3\n"


# ---------------------------------------------------------------- 8: caches verify what they serve


@pytest.fixture
def tokenized(ml100k_holdout_run: Path, copy_run: Callable, cli: Callable) -> Path:
    """A copy of the MovieLens holdout run with SIDs (RQ-KMeans, small preset)."""
    run = copy_run(ml100k_holdout_run)
    assert cli("tokenize", run).code == 0
    return run


def _killed_tokenize(run: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> None:
    """`sidrec tokenize` with other settings, dying after sids.npy and tokenizer/ are written
    and before tokenizer.json (what `kill -9` at that moment leaves)."""

    class Killed(BaseException):
        pass

    def die(*args: object, **kwargs: object) -> None:
        raise Killed

    from sidrec.cli import main

    with monkeypatch.context() as m:
        m.setattr(stage, "plot_codebook_usage", die)
        with pytest.raises(Killed):
            main(["tokenize", str(run), *overrides])


def test_tokenize_killed_after_writing_sids_is_refit_not_reused(
    tokenized: Path, cli: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    sids = (tokenized / "sids.npy").read_bytes()
    _killed_tokenize(tokenized, monkeypatch, "codebook_size=16")
    assert (tokenized / "sids.npy").read_bytes() != sids  # the killed run's output
    result = cli("tokenize", tokenized)  # the earlier settings again
    assert result.code == 0 and "reused" not in result.out and "fitted in" in result.out
    assert (tokenized / "sids.npy").read_bytes() == sids
    assert cli("tokenize", tokenized).out.rstrip().endswith(f"reused) -> {tokenized}/sids.npy")


def test_training_refuses_the_sids_of_a_killed_tokenize(
    tokenized: Path, fail: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    _killed_tokenize(tokenized, monkeypatch, "codebook_size=16")
    sids = tokenized / "sids.npy"
    fail("train", tokenized, "--model", "tiger", *GEN_FAST, watch=[tokenized],
         names=[f"{sids}: not the SIDs tokenizer.json describes",
                f"re-run `sidrec tokenize {tokenized}`"])


def test_embed_killed_between_its_writes_is_not_reused(
    ml100k_holdout_run: Path, copy_run: Callable, cli: Callable, fail: Callable
) -> None:
    run = copy_run(ml100k_holdout_run)
    vectors = np.load(run / "embeddings.npy")
    # what an `embed encoder=other` killed after writing embeddings.npy leaves behind
    np.save(run / "embeddings.npy", vectors[::-1].copy())
    fail("train", run, "--model", "dense-text", *GEN_FAST, watch=[run],
         names=[f"{run}/embeddings.npy: not the array embeddings.json describes",
                f"re-run `sidrec embed {run}`"])
    assert cli("embed", run, "device=cpu").code == 0  # not "served": rewritten
    np.testing.assert_array_equal(np.load(run / "embeddings.npy"), vectors)
    assert read_json(run / "embeddings.json")["embeddings_hash"] == hash_file(
        run / "embeddings.npy")


# ---------------------------------------------------------------- 9: stale inputs are refused


def test_training_refuses_sids_fitted_with_another_cold_split(
    tokenized: Path, cli: Callable, fail: Callable
) -> None:
    assert cli("data", "prepare", "ml-100k", "--run-dir", tokenized, "--cold-mode", "holdout",
               "--seed", "1").code == 0  # another 5 % of the items held out
    for model in ("tiger", "liger"):
        fail("train", tokenized, "--model", model, *GEN_FAST, watch=[tokenized],
             names=[f"{tokenized}/sids.npy: fitted with another cold-start split",
                    f"re-run `sidrec tokenize {tokenized}`"])
    assert cli("tokenize", tokenized).code == 0
    assert cli("train", tokenized, "--model", "tiger", *GEN_FAST).code == 0


def test_training_refuses_sids_fitted_on_other_embeddings(
    tokenized: Path, fail: Callable
) -> None:
    vectors = np.load(tokenized / "embeddings.npy")
    save_npy(tokenized / "embeddings.npy", vectors[::-1].copy())  # as a re-embed leaves it
    info = read_json(tokenized / "embeddings.json")
    write_json(tokenized / "embeddings.json",
               {**info, "embeddings_hash": hash_file(tokenized / "embeddings.npy")})
    fail("train", tokenized, "--model", "tiger", *GEN_FAST, watch=[tokenized],
         names=[f"{tokenized}/sids.npy: fitted on other item embeddings",
                f"re-run `sidrec tokenize {tokenized}`"])


def test_tokenize_refuses_embeddings_of_another_catalogue(
    ml100k_holdout_run: Path, copy_run: Callable, fail: Callable
) -> None:
    run = copy_run(ml100k_holdout_run)
    info = read_json(run / "embeddings.json")
    write_json(run / "embeddings.json", {**info, "text_hash": hash_obj(["another catalogue"])})
    fail("tokenize", run, watch=[run],
         names=[f"{run}/embeddings.npy: embeds another item catalogue",
                f"re-run `sidrec embed {run}`"])


# ---------------------------------------------------------------- 11: ids and memory


def test_an_empty_user_id_is_an_error_naming_the_line(fail: Callable, tmp_path: Path) -> None:
    inter, items = table(tmp_path / "d", INTER + ",x,4\n,y,5\n,z,6\n")
    fail(*prepare_args(inter, tmp_path / "run", "--items", str(items)), watch=[tmp_path / "d"],
         names=[f"{inter}:8: field 'user_id' is empty", "fill it in, or delete that line"])
    assert not (tmp_path / "run").exists()


def test_a_null_id_in_parquet_is_an_error_naming_the_row(fail: Callable, tmp_path: Path) -> None:
    inter = tmp_path / "inter.parquet"
    pd.DataFrame({"user_id": ["a", "a", "a", None, None, None, "b", "b", "b"],
                  "item_id": list("xyz") * 3, "timestamp": [1, 2, 3] * 3}).to_parquet(inter)
    _, items = table(tmp_path / "d")
    fail(*prepare_args(inter, tmp_path / "run", "--items", str(items)),
         names=[f"{inter}: row 4: field 'user_id' is null"])


def test_an_empty_item_id_in_a_review_is_an_error(fail: Callable, tmp_path: Path) -> None:
    reviews = amazon(tmp_path / "a", REVIEWS + review("u", "", 4), gz=False)
    fail(*prepare_args(tmp_path / "a", tmp_path / "run"),
         names=[f"{reviews}:4: field 'asin' is empty"])


def test_a_long_text_costs_its_length_not_items_times_it(tmp_path: Path) -> None:
    n_items, long_text = 1000, "word " * 10_000  # 50 kB; the old cost: 1000 x 50 k x 4 = 200 MB
    rows = [f"u{u},i{(u * 7 + j) % n_items},{j}" for u in range(400) for j in range(5)]
    inter, items = table(
        tmp_path / "d", "user_id,item_id,timestamp\n" + "\n".join(rows) + "\n",
        "item_id,title\n" + "".join(f"i{i},{long_text if i == 3 else f't{i}'}\n"
                                    for i in range(n_items)))
    tracemalloc.start()
    try:
        prepare(tmp_path / "run", PrepareConfig(source=str(inter), items=str(items)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 40e6, f"peak {peak / 1e6:.0f} MB"
    stored = pd.read_parquet(tmp_path / "run/dataset/items.parquet").set_index("item_id")
    assert stored.loc["i3", "text"] == f"Title: {long_text.strip()}"


# ---------------------------------------------------------------- 13: input files


@pytest.mark.parametrize("gz", [False, True])
def test_non_utf8_bytes_in_a_recbole_file(fail: Callable, tmp_path: Path, gz: bool) -> None:
    data = RECBOLE.replace(b"u\tc", b"u\t\xff")
    inter = recbole(tmp_path / "r", gzip.compress(data) if gz else data, gz)
    fail(*prepare_args(inter, tmp_path / "run", "--format", "recbole"),
         names=[f"{inter}:4: byte b'\\xff' at column 3 is not UTF-8 text",
                "re-save the file as UTF-8"])


@pytest.mark.parametrize("gz", [False, True])
def test_non_utf8_bytes_in_an_amazon_file(fail: Callable, tmp_path: Path, gz: bool) -> None:
    data = REVIEWS.replace(b'"b"', b'"\xe9"')
    reviews = amazon(tmp_path / "a", gzip.compress(data) if gz else data, gz)
    fail(*prepare_args(tmp_path / "a", tmp_path / "run"),
         names=[f"{reviews}:2: byte b'\\xe9'", "is not UTF-8 text"])


def test_a_recbole_gz_that_is_not_gzip(fail: Callable, tmp_path: Path) -> None:
    inter = recbole(tmp_path / "r", RECBOLE, gz=True)  # plain text named .gz
    fail(*prepare_args(inter, tmp_path / "run", "--format", "recbole"),
         names=[f"{inter}: cannot read: not gzip data", "drop the .gz from its name"])


def test_an_amazon_gz_that_is_not_gzip(fail: Callable, tmp_path: Path) -> None:
    reviews = amazon(tmp_path / "a", REVIEWS)
    fail(*prepare_args(tmp_path / "a", tmp_path / "run"),
         names=[f"{reviews}: cannot read: not gzip data"])


@pytest.mark.parametrize("reader", ["amazon", "recbole"])
def test_a_truncated_gzip(fail: Callable, tmp_path: Path, reader: str) -> None:
    many = REVIEWS * 2000 if reader == "amazon" else RECBOLE + b"u\ta\t4\n" * 5000
    data = gzip.compress(many)
    data = data[: len(data) // 2]
    path = (amazon(tmp_path / "a", data) if reader == "amazon"
            else recbole(tmp_path / "r", data, gz=True))
    source = tmp_path / "a" if reader == "amazon" else path
    fail(*prepare_args(source, tmp_path / "run"),
         names=[f"{path}: cannot read: the gzip stream ends early", "download or copy it again"])


def test_an_amazon_review_line_null(fail: Callable, tmp_path: Path) -> None:
    reviews = amazon(tmp_path / "a", REVIEWS + b"null\n", gz=False)
    fail(*prepare_args(tmp_path / "a", tmp_path / "run"),
         names=[f"{reviews}:4: expected a JSON object {{...}}, got null", "delete that line"])


# ---------------------------------------------------------------- 13: run directories


def test_a_run_dir_that_is_a_file(fail: Callable, tmp_path: Path) -> None:
    inter, items = table(tmp_path / "d")
    (tmp_path / "run").write_text("a file\n")
    message = f"{tmp_path / 'run'}: is a file, not a folder"
    fail(*prepare_args(inter, tmp_path / "run", "--items", str(items)), names=[message])
    fail(*prepare_args(inter, tmp_path / "run" / "sub", "--items", str(items)), names=[message])
    fail("embed", tmp_path / "run", names=[message])
    fail("train", tmp_path / "run", "--model", "pop", names=[message])
    assert (tmp_path / "run").read_text() == "a file\n"


def test_a_read_only_run_dir(
    cli: Callable, fail: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inter, items = table(tmp_path / "d")
    run = tmp_path / "run"
    assert cli(*prepare_args(inter, run, "--items", str(items))).code == 0
    run.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root writes anywhere: make the check see what a user would
            access = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: (
                Path(p) != run and access(p, mode, *a, **k)))
        fail(*prepare_args(inter, run, "--items", str(items), "--force"), watch=[run],
             names=[f"{run}: permission denied", "make it writable"])
        fail("train", run, "--model", "pop", *FAST, watch=[run], names=[f"{run}: permission"])
    finally:
        run.chmod(0o755)


def test_an_os_error_on_the_run_dir_is_one_line_and_any_other_a_traceback(
    cli: Callable, fail: Callable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inter, items = table(tmp_path / "d")
    run = tmp_path / "run"

    def denied(*args: object, dir: str = "", **kwargs: object) -> str:  # noqa: A002
        raise PermissionError(errno.EACCES, "Permission denied", dir)

    with monkeypatch.context() as m:  # e.g. a folder inside the run made read-only
        m.setattr(tempfile, "mkdtemp", denied)
        fail(*prepare_args(inter, run, "--items", str(items)),
             names=[f"{run}: Permission denied; make it writable"])

    def broken(*args: object) -> None:
        raise OSError(errno.EIO, "Input/output error", str(tmp_path / "elsewhere"))

    monkeypatch.setattr(sidrec.data, "dataset_stats", broken)
    with pytest.raises(OSError, match="Input/output error"):  # not the user's: a traceback
        cli("data", "stats", run)


# ---------------------------------------------------------------- 13: settings


@pytest.mark.parametrize(("extra", "needle"), [
    (["--max-history", "0"], "data prepare: max_history must be >= 1, got 0"),
    (["--seed", "-1", "--cold-mode", "holdout"], "data prepare: seed must be >= 0, got -1"),
    (["--kcore", "-3"], "data prepare: kcore must be >= 0, got -3"),
    (["--cold-fraction", "1.5"], "data prepare: cold_fraction must be in (0, 1), got 1.5"),
])
def test_out_of_range_prepare_settings(
    fail: Callable, tmp_path: Path, extra: list[str], needle: str
) -> None:
    inter, items = table(tmp_path / "d")
    fail(*prepare_args(inter, tmp_path / "run", "--items", str(items), *extra), names=[needle])
    assert not (tmp_path / "run").exists()


@pytest.fixture
def toy_run(tmp_path: Path) -> Path:
    """A toy prepared dataset (24 users, 15 items), no embeddings, no SIDs."""
    run = tmp_path / "toy"
    write_run(toy_dataset(), run)
    return run


@pytest.mark.parametrize(("setting", "needle"), [
    ("lr=.nan", "train.lr=nan: must be a finite number"),
    ("dropout=2", "sasrec.model.dropout=2.0: a dropout rate must be in [0, 1)"),
])
def test_bad_training_settings(fail: Callable, toy_run: Path, setting: str, needle: str) -> None:
    fail("train", toy_run, "--model", "sasrec", *TINY, *FAST, setting, watch=[toy_run],
         names=[needle])


def test_ks_abc(fail: Callable, toy_run: Path) -> None:
    fail("evaluate", toy_run, "--model", "pop", "--ks", "abc", watch=[toy_run],
         names=["--ks 'abc': expected comma-separated integers"])
    fail("evaluate", toy_run, "--model", "pop", "--ks", "5,0", watch=[toy_run],
         names=["--ks '5,0': every cut-off must be >= 1"])


def test_embed_batch_size_0(ml100k_holdout_run: Path, copy_run: Callable, fail: Callable) -> None:
    run = copy_run(ml100k_holdout_run)  # embedded already: the setting is checked all the same
    fail("embed", run, "batch_size=0", watch=[run],
         names=["embed: batch_size must be >= 1, got 0"])


def test_tokenize_device_tpu(tokenized: Path, fail: Callable) -> None:
    fail("tokenize", tokenized, "--device", "tpu", watch=[tokenized],
         names=["device must be auto, cpu or cuda, got 'tpu'"])


def test_liger_before_embed_and_tiger_before_tokenize(
    ml100k_holdout_run: Path, copy_run: Callable, fail: Callable
) -> None:
    run = copy_run(ml100k_holdout_run)
    fail("train", run, "--model", "tiger", *GEN_FAST, watch=[run],
         names=[f"{run}/sids.npy: no semantic IDs; run `sidrec tokenize {run}` first"])
    (run / "embeddings.npy").unlink()
    (run / "embeddings.json").unlink()
    fail("train", run, "--model", "liger", *GEN_FAST, watch=[run],
         names=[f"{run}/embeddings.npy: no item text embeddings; run `sidrec embed {run}` first"])


def test_model_name_cannot_leave_the_run_dir(fail: Callable, toy_run: Path) -> None:
    fail("train", toy_run, "--model", "pop", "--name", "../..", *FAST, watch=[toy_run.parent],
         names=["model name '../..': must be a plain directory name"])


# ---------------------------------------------------------------- 13: damaged run files


@pytest.fixture
def trained(toy_run: Path, cli: Callable) -> Path:
    """The toy run with a tiny SASRec in models/sasrec."""
    assert cli("train", toy_run, "--model", "sasrec", *TINY, *FAST).code == 0
    return toy_run


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncate" else b"{not json")


@pytest.mark.parametrize(("name", "how", "needle"), [
    ("models/sasrec/model.safetensors", "truncate", "unreadable or not this model's weights"),
    ("models/sasrec/config.json", "garble", "unreadable JSON"),
    ("dataset/manifest.json", "garble", "unreadable JSON"),
    ("dataset/split.parquet", "truncate", "unreadable"),
    ("dataset/items.parquet", "truncate", "unreadable"),
])
def test_damaged_run_files(
    trained: Path, fail: Callable, name: str, how: str, needle: str
) -> None:
    path = trained / name
    _damage(path, how)
    line = fail("evaluate", trained, "--model", "sasrec", watch=[trained],
                names=[f"{path}: {needle}"])
    assert "sidrec train" in line or "sidrec data prepare" in line  # the fix
    fail("recommend", trained / "models/sasrec", "1", "2", names=[f"{path}: {needle}"])
    with pytest.raises(SidrecError, match=f"{path}: "):
        sidrec.load(trained / "models/sasrec")


def test_a_run_directory_where_a_model_is_expected(trained: Path, fail: Callable) -> None:
    fail("recommend", trained, "1", names=[
        f"{trained}: a run directory, not a model; pass {trained}/models/<model> "
        "(trained here: sasrec)"])
    fail("analyze", "cold-start", trained, "--max-users", "0",
         names=["--max-users 0: must be >= 1"])


def test_an_unknown_history_id_in_the_commands_words(trained: Path, fail: Callable,
                                                      cli: Callable) -> None:
    fail("recommend", trained / "models/sasrec", "1", "nope",
         names=["unknown item id 'nope'", "check the id, or pass --skip-unknown"])
    skipped = cli("recommend", trained / "models/sasrec", "1", "nope", "--skip-unknown")
    assert skipped.code == 0
    assert skipped.err.strip() == "sidrec: warning: history 0: skipped 1 unknown item id(s)"


def test_a_model_record_without_its_fields(trained: Path, fail: Callable) -> None:
    (trained / "models/sasrec/config.json").write_text('{"format": 2}')
    fail("recommend", trained / "models/sasrec", "1",
         names=[f"{trained}/models/sasrec/config.json: not a model record"])


# ---------------------------------------------------------------- 13: recommend output


def test_recommend_output_stays_one_id_per_line(cli: Callable, tmp_path: Path) -> None:
    odd = ["tab\there", "new\nline", "back\\slash\\t"]
    rows = ["user_id,item_id,timestamp"]
    for u in range(6):  # the odd ids are the most popular
        rows += [f'u{u},"{odd[0]}",1', f'u{u},"{odd[1]}",2', f'u{u},"{odd[2]}",3', f"u{u},x,4"]
    items = "item_id,title\n" + "".join(f'"{i}",T\n' for i in [*odd, "x"])
    inter, items_path = table(tmp_path / "d", "\n".join(rows) + "\n", items)
    run = tmp_path / "run"
    assert cli(*prepare_args(inter, run, "--items", str(items_path))).code == 0
    assert cli("train", run, "--model", "pop", *FAST).code == 0
    result = cli("recommend", run / "models/pop", "x", "-k", "4")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    # id, score, title: the escapes keep every line at three tab-separated fields
    assert len(lines) == 4 and all(len(line.split("\t")) == 3 for line in lines)
    unescape = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}

    def decode(field: str) -> str:
        out, i = [], 0
        while i < len(field):
            pair = field[i:i + 2]
            out.append(unescape.get(pair, field[i]))
            i += 2 if pair in unescape else 1
        return "".join(out)

    assert {decode(line.split("\t")[0]) for line in lines} == {*odd, "x"}
