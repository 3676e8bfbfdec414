"""Atomic artifact writes: all or nothing, with the user's usual permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidrec.io import atomic_dir, atomic_path, write_json


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
