"""The run's added items on disk (`sidrec.catalogue.store`): each add appends a part of its
own instead of rewriting everything, reads back identically before and after a
compaction, runs written as one file before parts existed still load, and the temporary
files a killed writer left behind go at the next start."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sidrec.catalogue import store
from sidrec.catalogue.rows import NewItems
from sidrec.errors import SidrecError
from sidrec.run import RunDir

AGAINST = {"encoder": "e", "embeddings": "h1", "sids": "h2"}


def items(start: int, m: int) -> NewItems:
    rows = range(start, start + m)
    return NewItems(tuple(f"n{i}" for i in rows), tuple(f"Title: {i}" for i in rows),
                    np.arange(start * 3, (start + m) * 3, dtype=np.float32).reshape(m, 3),
                    np.array([[i, i, 0] for i in rows], dtype=np.int64))


def same(a: NewItems, b: NewItems) -> None:
    assert a.ids == b.ids and a.texts == b.texts
    np.testing.assert_array_equal(a.vectors, b.vectors)
    np.testing.assert_array_equal(a.sids, b.sids)


def test_adds_append_parts_that_read_back_as_one(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    everything = items(0, 2)
    store.append(run, everything, AGAINST)  # the first add writes the file
    first = run.added_items.stat()
    for step in range(1, 6):
        new = items(2 * step, 2)
        store.append(run, new, AGAINST)
        everything = everything + new
        back, meta = store.read(run)
        same(back, everything)
        assert meta["fingerprint"] == AGAINST
    # the file with the first add was never rewritten: each add wrote its own rows
    again = run.added_items.stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert store.n_parts(run) == 5
    before = store.stamp(run)
    store.write(run, everything, AGAINST)  # a compaction: one file, no parts
    assert store.n_parts(run) == 0 and store.stamp(run) != before
    same(store.read(run)[0], everything)
    store.append(run, items(12, 1), AGAINST)  # numbered after the parts the file holds
    same(store.read(run)[0], everything + items(12, 1))


def test_a_run_written_as_one_file_before_parts_still_loads(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    old = items(0, 3)
    table = pa.table({  # as the code before parts wrote it: no `through` in its metadata
        "id": pa.array(list(old.ids)), "text": pa.array(list(old.texts)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(old.vectors.ravel()), 3),
        "sid": pa.FixedSizeListArray.from_arrays(pa.array(old.sids.ravel()), 3),
    }).replace_schema_metadata({"sidrec": json.dumps(
        {"format": 1, "dim": 3, "fingerprint": AGAINST})})
    pq.write_table(table, run.added_items)
    same(store.read(run)[0], old)
    store.append(run, items(3, 2), AGAINST)
    same(store.read(run)[0], old + items(3, 2))


def test_parts_for_another_sid_set_leave_the_sids_to_compute_again(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    store.append(run, items(0, 2), AGAINST)
    store.append(run, items(2, 1), {**AGAINST, "sids": "another-set"})
    back, meta = store.read(run)
    assert back.ids == ("n0", "n1", "n2") and back.sids is None
    assert meta["fingerprint"] == {**AGAINST, "sids": None}
    store.append(run, items(3, 1), {**AGAINST, "embeddings": "re-embedded"})
    with pytest.raises(SidrecError, match="added for other embeddings"):
        store.read(run)


def test_temporary_files_a_kill_left_are_removed(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    store.append(run, items(0, 1), AGAINST)
    store.append(run, items(1, 1), AGAINST)
    left = [tmp_path / ".added_items.parquet.k1ll3d.tmp",
            store.parts_dir(run) / ".00000002.parquet.k1ll3d.tmp"]
    for path in left:
        path.write_bytes(b"half a parquet file")
    kept = tmp_path / "notes.tmp"
    kept.write_text("not ours")
    assert store.clean(run) == 2
    assert not any(p.exists() for p in left) and kept.exists()
    same(store.read(run)[0], items(0, 2))
    assert store.clean(run) == 0


def test_a_leftover_temporary_file_is_removed_when_the_model_loads(served_run: Path,
                                                                  tmp_path: Path) -> None:
    from serving import copy_of, load

    run = copy_of(served_run, tmp_path)
    leftover = run / ".added_items.parquet.k1ll3d.tmp"
    leftover.write_bytes(b"PAR1 half written")
    load(run / "models" / "liger")
    assert not leftover.exists()


def test_an_unreadable_file_is_logged_once_per_fault(served_run: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A corrupt file is reported by the first refresh after it appeared, not by every
    batch's; a different fault is reported again, and mending it serves its items."""
    from serving import copy_of, load

    from sidrec.serve.queries import refresh_added

    run = copy_of(served_run, tmp_path)
    writer, reader = (load(run / "models" / "liger") for _ in range(2))
    writer.add_items([{"id": "n1", "text": "Title: Arctic Expedition; Genres: documentary"}])
    good = (run / "added_items.parquet").read_bytes()
    (run / "added_items.parquet").write_bytes(b"PAR1 this is no parquet file")
    caplog.set_level(logging.WARNING, "sidrec.serve")
    for _ in range(5):
        refresh_added(reader.catalogue)
    assert caplog.text.count("could not read the added items") == 1
    (run / "added_items.parquet").write_bytes(b"PAR1 another broken file, longer")
    for _ in range(5):
        refresh_added(reader.catalogue)
    assert caplog.text.count("could not read the added items") == 2
    (run / "added_items.parquet").write_bytes(good)
    refresh_added(reader.catalogue)
    assert "n1" in reader.catalogue
