"""Every kind of bad input, through the CLI: exit code 2, one line on stderr naming the
file / line / field, and nothing half-written (no dataset/, no new file, no *.tmp)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from sidrec.data import Dataset
from sidrec.errors import SidrecError


@pytest.fixture
def fail(cli: Callable, files_in: Callable, tmp_path: Path) -> Callable[..., str]:
    """Run the CLI expecting a user error; return the message after checking the rules."""

    def _fail(*argv: str | Path, run: Path | None = None, inside: Path | None = None) -> str:
        run = run or tmp_path / "run"
        before = files_in(run)
        temp_before = {p for p in files_in(tmp_path) if p.endswith(".tmp")}
        result = cli(*argv)
        assert result.code == 2, result
        lines = result.err.strip().splitlines()
        assert len(lines) == 1, result.err
        assert lines[0].startswith("sidrec: error: ")
        assert "Traceback" not in result.err and result.out == ""
        assert files_in(run) == before  # nothing written, not even a temp folder
        assert {p for p in files_in(tmp_path) if p.endswith(".tmp")} == temp_before
        if inside is not None:
            assert str(inside) in lines[0]
        return lines[0]

    return _fail


def prepare_args(source: Path | str, run: Path, *extra: str) -> list[str]:
    return ["data", "prepare", str(source), "--run-dir", str(run), *extra]


def write_csv_pair(folder: Path, inter: str, items: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "inter.csv").write_text(inter)
    (folder / "items.csv").write_text(items)
    return folder / "inter.csv", folder / "items.csv"


GOOD_INTER = "user_id,item_id,timestamp\na,x,1\na,y,2\na,z,3\nb,y,1\nb,x,2\nb,z,3\n"
GOOD_ITEMS = "item_id,title\nx,X\ny,Y\nz,Z\n"


def write_amazon(folder: Path, reviews: list[str], meta: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "reviews_Toys_5.json.gz", "wt", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in reviews)
    with gzip.open(folder / "meta_Toys.json.gz", "wt", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in meta)
    return folder


def review(user: str, item: str, t: int) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": t})


GOOD_REVIEWS = [review("u", "a", 1), review("u", "b", 2), review("u", "c", 3)]
GOOD_META = ["{'asin': 'a', 'title': 'A'}", "{'asin': 'b'}", "{'asin': 'c'}"]


# ---------------------------------------------------------------- missing files


def test_missing_source(fail: Callable, tmp_path: Path) -> None:
    msg = fail(*prepare_args(tmp_path / "nowhere", tmp_path / "run"))
    assert f"{tmp_path / 'nowhere'}: no such file or folder" in msg
    assert not (tmp_path / "run").exists()


def test_missing_items_table_file(fail: Callable, tmp_path: Path) -> None:
    inter, _ = write_csv_pair(tmp_path / "d", GOOD_INTER, GOOD_ITEMS)
    missing = tmp_path / "d" / "nope.csv"
    msg = fail(*prepare_args(inter, tmp_path / "run", "--items", str(missing)))
    assert f"{missing}: file not found" in msg


def test_missing_amazon_meta(fail: Callable, tmp_path: Path) -> None:
    folder = write_amazon(tmp_path / "amz", GOOD_REVIEWS, GOOD_META)
    (folder / "meta_Toys.json.gz").unlink()
    msg = fail(*prepare_args(folder, tmp_path / "run"))
    assert str(folder) in msg and "meta_Toys.json*" in msg


def test_missing_grouplens_item_file(fail: Callable, tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "u.data").write_text("1\t1\t5\t10\n")
    msg = fail(*prepare_args(folder, tmp_path / "run"))
    assert f"{folder / 'u.item'}: file not found" in msg


def test_unknown_folder_format(fail: Callable, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "cannot tell the format" in fail(*prepare_args(tmp_path / "empty", tmp_path / "run"))


# ---------------------------------------------------------------- malformed lines


def test_bad_json_in_reviews(fail: Callable, tmp_path: Path) -> None:
    folder = write_amazon(tmp_path / "amz", [*GOOD_REVIEWS[:2], '{"reviewerID": "u", ',
                                             GOOD_REVIEWS[2]], GOOD_META)
    msg = fail(*prepare_args(folder, tmp_path / "run"))
    assert f"{folder / 'reviews_Toys_5.json.gz'}:3: not valid JSON" in msg


def test_review_without_a_field(fail: Callable, tmp_path: Path) -> None:
    folder = write_amazon(tmp_path / "amz", [GOOD_REVIEWS[0], '{"reviewerID": "u", "asin": "b"}'],
                          GOOD_META)
    msg = fail(*prepare_args(folder, tmp_path / "run"))
    assert ":2: review lacks field 'unixReviewTime'" in msg


def test_non_numeric_review_time(fail: Callable, tmp_path: Path) -> None:
    bad = json.dumps({"reviewerID": "u", "asin": "b", "unixReviewTime": "soon"})
    folder = write_amazon(tmp_path / "amz", [GOOD_REVIEWS[0], bad], GOOD_META)
    msg = fail(*prepare_args(folder, tmp_path / "run"))
    assert ":2: field 'unixReviewTime' is not numeric ('soon')" in msg


@pytest.mark.parametrize(
    "line",
    [
        "{'asin': 'b', 'title': 'unterminated}",  # syntax error
        "{'asin': 'b', 'title': __import__('os').getcwd()}",  # code, never evaluated
        "['b', 'not a dict']",
        "{'title': 'no asin'}",
    ],
)
def test_bad_literal_in_meta(fail: Callable, tmp_path: Path, line: str) -> None:
    folder = write_amazon(tmp_path / "amz", GOOD_REVIEWS, [GOOD_META[0], line, GOOD_META[2]])
    msg = fail(*prepare_args(folder, tmp_path / "run"))
    assert f"{folder / 'meta_Toys.json.gz'}:2: " in msg


def test_wrong_column_count_in_inter(fail: Callable, tmp_path: Path) -> None:
    folder = tmp_path / "rb"
    folder.mkdir()
    (folder / "d.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\nu\ta\t1\n\nu\tb\n")
    (folder / "d.item").write_text("item_id:token\ttitle:token\na\tA\nb\tB\n")
    msg = fail(*prepare_args(folder, tmp_path / "run"))
    assert f"{folder / 'd.inter'}:4: expected 3 tab-separated columns" in msg
    assert "found 2" in msg


def test_wrong_column_count_after_a_multiline_field(fail: Callable, tmp_path: Path) -> None:
    folder = tmp_path / "rb"
    folder.mkdir()
    (folder / "d.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu\ta\t1\n")
    # line 2 holds a quoted value spanning lines 2-3; line 4 has an unquoted extra tab
    (folder / "d.item").write_text(
        'item_id:token\ttitle:token\na\t"two\nlines"\nb\tB\textra\n')
    msg = fail(*prepare_args(folder, tmp_path / "run"))
    assert f"{folder / 'd.item'}:4: expected 2 tab-separated columns" in msg


@pytest.mark.parametrize("value", ["yesterday", "nan", "inf"])
def test_non_numeric_timestamp_in_inter(fail: Callable, tmp_path: Path, value: str) -> None:
    folder = tmp_path / "rb"
    folder.mkdir()
    (folder / "d.inter").write_text(
        f"user_id:token\titem_id:token\ttimestamp:float\nu\ta\t1\nu\tb\t{value}\nu\ta\t3\n")
    (folder / "d.item").write_text("item_id:token\ttitle:token\na\tA\nb\tB\n")
    msg = fail(*prepare_args(folder, tmp_path / "run"))
    assert f"{folder / 'd.inter'}:3: field 'timestamp' is not numeric ('{value}')" in msg


@pytest.mark.parametrize("value", ["later", "", "inf"])
def test_non_numeric_timestamp_in_csv(fail: Callable, tmp_path: Path, value: str) -> None:
    inter, items = write_csv_pair(tmp_path / "d", GOOD_INTER.replace("b,x,2", f"b,x,{value}"),
                                  GOOD_ITEMS)
    msg = fail(*prepare_args(inter, tmp_path / "run", "--items", str(items)))
    assert f"{inter}:6: column 'timestamp' is not numeric" in msg


def test_bad_grouplens_line(fail: Callable, tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "u.data").write_text("1\t1\t5\t10\n1\t2 5 11\n")
    (folder / "u.item").write_text("1|A (1990)|||" + "|0" * 19 + "\n")
    msg = fail(*prepare_args(folder, tmp_path / "run"))
    assert f"{folder / 'u.data'}:2: expected 4 tab-separated columns" in msg


def test_empty_atomic_file(fail: Callable, tmp_path: Path) -> None:
    folder = tmp_path / "rb"
    folder.mkdir()
    (folder / "d.inter").write_text("")
    (folder / "d.item").write_text("item_id:token\n")
    msg = fail(*prepare_args(folder, tmp_path / "run"))
    assert f"{folder / 'd.inter'}: file is empty" in msg


# ---------------------------------------------------------------- unknown columns


def test_unknown_column_in_csv(fail: Callable, tmp_path: Path) -> None:
    inter, items = write_csv_pair(tmp_path / "d", GOOD_INTER, GOOD_ITEMS)
    msg = fail(*prepare_args(inter, tmp_path / "run", "--items", str(items), "user_col=uid"))
    assert f"{inter}: unknown column 'uid'" in msg
    assert "user_id, item_id, timestamp" in msg  # lists what the file has


def test_unknown_text_column(fail: Callable, tmp_path: Path) -> None:
    inter, items = write_csv_pair(tmp_path / "d", GOOD_INTER, GOOD_ITEMS)
    msg = fail(*prepare_args(inter, tmp_path / "run", "--items", str(items),
                             "text_cols=[title,blurb]"))
    assert f"{items}: unknown column 'blurb'" in msg


def test_unknown_column_in_atomic_file(fail: Callable, tmp_path: Path) -> None:
    folder = tmp_path / "rb"
    folder.mkdir()
    (folder / "d.inter").write_text("user_id:token\titem_id:token\tts:float\nu\ta\t1\n")
    (folder / "d.item").write_text("item_id:token\ttitle:token\na\tA\n")
    msg = fail(*prepare_args(folder, tmp_path / "run"))
    assert f"{folder / 'd.inter'}: unknown column 'timestamp'" in msg


# ---------------------------------------------------------------- content problems


def test_items_table_without_some_interacted_items(fail: Callable, tmp_path: Path) -> None:
    inter, items = write_csv_pair(tmp_path / "d", GOOD_INTER, "item_id,title\nx,X\nz,Z\n")
    msg = fail(*prepare_args(inter, tmp_path / "run", "--items", str(items)))
    assert f"{items}: the items table lacks 1 interacted item(s), e.g. 'y'" in msg


def test_amazon_meta_without_some_items(fail: Callable, tmp_path: Path) -> None:
    folder = write_amazon(tmp_path / "amz", GOOD_REVIEWS, GOOD_META[:2])
    msg = fail(*prepare_args(folder, tmp_path / "run"))
    assert f"{folder / 'meta_Toys.json.gz'}: the items table lacks 1" in msg and "'c'" in msg


def test_filtering_empties_the_dataset(fail: Callable, tmp_path: Path) -> None:
    inter, items = write_csv_pair(tmp_path / "d", GOOD_INTER, GOOD_ITEMS)
    msg = fail(*prepare_args(inter, tmp_path / "run", "--items", str(items), "--kcore", "4"))
    assert "after filtering (k-core k=4)" in msg


def test_no_interactions(fail: Callable, tmp_path: Path) -> None:
    inter, items = write_csv_pair(tmp_path / "d", "user_id,item_id,timestamp\n", GOOD_ITEMS)
    msg = fail(*prepare_args(inter, tmp_path / "run", "--items", str(items)))
    assert "no interactions found" in msg


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["colour=red"], "unknown setting 'colour' for PrepareConfig"),
        (["kcore=five"], "data prepare.kcore: expected an integer, got 'five'"),
        (["cold_mode=warm"], "data prepare.cold_mode: 'warm' is not one of"),
        (["cold_fraction=[1,"], "the value is not valid YAML"),
        (["kcore=2", "kcore.x=1"], "'kcore' was already set to a value"),
        (["--cold-mode", "holdout", "--cold-fraction", "1.5"], "cold_fraction must be in (0, 1)"),
    ],
)
def test_bad_settings(fail: Callable, tmp_path: Path, extra: list[str], needle: str) -> None:
    inter, items = write_csv_pair(tmp_path / "d", GOOD_INTER, GOOD_ITEMS)
    assert needle in fail(*prepare_args(inter, tmp_path / "run", "--items", str(items), *extra))


# ---------------------------------------------------------------- existing run directories


def test_failed_rebuild_keeps_the_previous_dataset(
    cli: Callable, fail: Callable, files_in: Callable, tmp_path: Path
) -> None:
    inter, items = write_csv_pair(tmp_path / "d", GOOD_INTER, GOOD_ITEMS)
    run = tmp_path / "run"
    assert cli(*prepare_args(inter, run, "--items", str(items))).code == 0
    manifest = (run / "dataset" / "manifest.json").read_text()
    inter.write_text(GOOD_INTER + "c,x,oops\n")
    msg = fail(*prepare_args(inter, run, "--items", str(items)), run=run)
    assert f"{inter}:8: column 'timestamp'" in msg
    assert (run / "dataset" / "manifest.json").read_text() == manifest


def test_incompatible_format_version(
    cli: Callable, fail: Callable, tmp_path: Path
) -> None:
    inter, items = write_csv_pair(tmp_path / "d", GOOD_INTER, GOOD_ITEMS)
    run = tmp_path / "run"
    assert cli(*prepare_args(inter, run, "--items", str(items))).code == 0
    manifest_path = run / "dataset" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 999
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(SidrecError, match="format version 999 is not the supported"):
        Dataset.load(run)
    msg = fail("embed", run, "device=cpu", run=run)
    assert f"{manifest_path}: dataset format version 999" in msg
    assert not (run / "embeddings.npy").exists()


def test_embed_without_a_dataset(fail: Callable, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    msg = fail("embed", tmp_path / "run", run=tmp_path / "run")
    assert f"{tmp_path / 'run' / 'dataset'}: no prepared dataset here" in msg
