"""Atomic artifact writes (all or nothing, with the user's usual permissions), and reading
a stage's JSON record back: one error for a bad file, one rule for reusing a result."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidrec.errors import SidrecError
from sidrec.io import atomic_dir, atomic_path, read_json_object, reusable_record, write_json


def test_artifacts_get_the_umask_permissions_not_private_temp_ones(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_dir(tmp_path / "tokenizer") as d:
        (d / "codebooks.npy").write_bytes(b"x")
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "tokenizer").stat().st_mode & 0o777 == 0o777 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "results.md"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.md"]


@pytest.mark.parametrize(("content", "says"), [
    (None, "unreadable JSON ([Errno 2]"), ("{garbled", "unreadable JSON (Expecting"),
    ("[1, 2]", "expected a JSON object")])
def test_a_bad_json_object_is_one_line_naming_the_file_and_the_fix(
        tmp_path: Path, content: str | None, says: str) -> None:
    path = tmp_path / "record.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SidrecError) as err:
        read_json_object(path, "re-run `sidrec embed RUN`")
    assert str(err.value).startswith(f"{path}: {says}")
    assert str(err.value).endswith("; re-run `sidrec embed RUN`") and "\n" not in str(err.value)
    write_json(path, {"a": 1})
    assert read_json_object(path, "unused") == {"a": 1}


def test_a_record_is_reused_only_when_it_matches_and_its_outputs_are_there(
        tmp_path: Path) -> None:
    record, output = tmp_path / "stage.json", tmp_path / "out.npy"
    match = {"config_hash": "c1", "inputs": {"embeddings": "e1"}}
    assert reusable_record(record, match) is None  # never ran
    write_json(record, {**match, "outputs": "o1"})
    assert reusable_record(record, match) == {**match, "outputs": "o1"}
    assert reusable_record(record, {**match, "config_hash": "c2"}) is None  # settings changed
    assert reusable_record(record, match, needs=[output]) is None  # an output is missing
    output.write_bytes(b"x")
    assert reusable_record(record, match, needs=[output]) is not None
    assert reusable_record(record, match, unchanged=lambda r: r["outputs"] == "o2") is None
    for damaged in ("{garbled", "[1]"):  # rebuilt by the stage, never an error
        record.write_text(damaged)
        assert reusable_record(record, match) is None
