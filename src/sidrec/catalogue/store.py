"""`runs/<run>/added_items.parquet` (`RunDir.added_items`) and its parts: every item added
after training, in the order added, so that `sidrec.load` (and so a restarted `sidrec
serve`) serves them too.

    id      string          original item id (unique among the run's items)
    text    string          the item text, as given
    vector  float32[d]      its text vector
    sid     int64[L+1]      its full SID (null when the run has no SIDs)

Each add appends one part file, `added_items.parts/<seq>.parquet` (`append`; written
atomically: temporary file, then rename), so an add costs its own rows, not the whole
catalogue's. Every `COMPACT_AFTER` parts the items are rewritten into
`added_items.parquet`, whose metadata records the last part it holds (`through`), and the
parts it holds are removed (`write`). A reader takes the file, then the parts after
`through`, in order; a part removed under it (a compaction) makes it read again. A run
written before parts existed has the file alone (`through` 0) and reads as before.

Each file's metadata records the encoder and the hashes of `embeddings.npy` and
`sids.npy` its rows were computed against (`fingerprint`). When the encoder or the
embeddings differ from the run's (it was re-embedded), the items are encoded again from
their text; when only the SIDs differ (the run was re-tokenized, or the reader is a model
with its own SID set, `RunDir.with_sids`), their SIDs are computed again from the stored
vectors (`sidrec.catalogue.live`).

`lock` serialises writers across processes (several servers or Ray Serve replicas on one
run directory) and across the threads of one; `stamp` tells a reader cheaply whether
anything changed since it last looked; `clean` removes the temporary files a killed
writer left behind.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sidrec.artifacts import read_record
from sidrec.catalogue.rows import NewItems
from sidrec.errors import SidrecError
from sidrec.io import atomic_path, exclusive, hash_file
from sidrec.run import RunDir

FORMAT = 1
COMPACT_AFTER = 32  # parts before the items are rewritten into one file
_READS = 5  # reads that may meet a compaction before a reader gives up

# (the file's mtime, size and inode, or None; the names of the parts)
Stamp = tuple[tuple[int, int, int] | None, tuple[str, ...]]


def parts_dir(run: RunDir) -> Path:
    return run.added_items.with_suffix(".parts")


def fingerprint(run: RunDir) -> dict[str, str | None]:
    """What added items are computed against: the encoder and the base artifacts."""
    encoder = read_record(run.embeddings_info, f"sidrec embed {run.root}").get("encoder") \
        if run.embeddings_info.is_file() else None
    return {
        "encoder": encoder,
        "embeddings": hash_file(run.embeddings) if run.embeddings.is_file() else None,
        "sids": hash_file(run.sids) if run.sids.is_file() else None,
    }


def lock(run: RunDir) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on the run's added items, across processes (flock). Each call
    opens the lock file anew, so two threads of one process exclude each other too."""
    return exclusive(run.added_items_lock, "the added items")


def _parts(run: RunDir) -> list[str]:
    try:
        names = [e.name for e in parts_dir(run).iterdir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise SidrecError(f"{parts_dir(run)}: cannot list the added items ({e})") from None
    return sorted(n for n in names if n.endswith(".parquet") and not n.startswith("."))


def stamp(run: RunDir) -> Stamp | None:
    """The file's (mtime, size, inode) and the parts' names, None when there is nothing:
    a rename over the file (`write`) changes its inode and an add adds a part, so a reader
    that kept the stamp of what it read knows with one stat and one listing whether to
    read again."""
    try:
        st = run.added_items.stat()
        whole: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        whole = None
    try:
        parts = tuple(_parts(run))
    except SidrecError:
        parts = ("?",)  # unlistable: read, which says why
    return None if whole is None and not parts else (whole, parts)


def _table(items: NewItems, meta: dict[str, Any]) -> pa.Table:
    d = items.vectors.shape[1] if items.vectors.ndim == 2 else 0
    columns: dict[str, Any] = {
        "id": pa.array(list(items.ids), pa.string()),
        "text": pa.array(list(items.texts), pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(items.vectors.astype(np.float32).ravel(), pa.float32()), d),
    }
    if items.sids is not None:
        width = items.sids.shape[1]
        columns["sid"] = pa.FixedSizeListArray.from_arrays(
            pa.array(items.sids.astype(np.int64).ravel(), pa.int64()), width)
    meta = {"format": FORMAT, "dim": d, **meta}
    return pa.table(columns).replace_schema_metadata({"sidrec": json.dumps(meta)})


def _save(path: Path, table: pa.Table, run: RunDir) -> None:
    try:
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
    except OSError as e:
        raise SidrecError(f"{run.added_items}: cannot persist the added items ({e})") from None


def write(run: RunDir, items: NewItems, against: dict[str, str | None]) -> None:
    """Rewrite the added items as `items` (all of them) in `added_items.parquet`,
    atomically, and remove the parts it now holds; `against` is the run's `fingerprint`
    the items were computed for. Call it holding `lock`."""
    parts = _parts(run)
    through = int(Path(parts[-1]).stem) if parts else _through(run)
    _save(run.added_items, _table(items, {"fingerprint": against, "through": through}), run)
    for name in parts:
        (parts_dir(run) / name).unlink(missing_ok=True)


def append(run: RunDir, items: NewItems, against: dict[str, str | None]) -> None:
    """Add `items` after those stored: a part of their own (the first add writes the
    file). Call it holding `lock`."""
    parts = _parts(run)
    if not parts and not run.added_items.exists():
        write(run, items, against)
        return
    seq = max(int(Path(parts[-1]).stem) if parts else 0, _through(run)) + 1
    _save(parts_dir(run) / f"{seq:08d}.parquet",
          _table(items, {"fingerprint": against, "seq": seq}), run)


def n_parts(run: RunDir) -> int:
    return len(_parts(run))


def clean(run: RunDir) -> int:
    """Remove the temporary files that a writer killed mid-write left (each is a file
    `atomic_path` had not renamed yet); returns how many. Holds `lock`, so a live
    writer's file is never one of them."""
    patterns = ((run.root, f".{run.added_items.name}.*.tmp"), (parts_dir(run), ".*.tmp"))
    if not any(any(folder.glob(p)) for folder, p in patterns if folder.is_dir()):
        return 0
    removed = 0
    with lock(run):
        for folder, pattern in patterns:
            for path in folder.glob(pattern) if folder.is_dir() else ():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
    return removed


def _through(run: RunDir) -> int:
    """The last part `added_items.parquet` holds (0: none, or no file)."""
    try:
        meta = pq.read_schema(run.added_items).metadata or {}
        return int(json.loads(meta.get(b"sidrec", b"{}")).get("through", 0))
    except FileNotFoundError:
        return 0
    except (OSError, ValueError, TypeError, pa.ArrowException) as e:
        raise SidrecError(f"{run.added_items}: unreadable added items ({type(e).__name__}: "
                          f"{e}); move it away to serve without them") from None


def _read_one(path: Path) -> tuple[NewItems, dict[str, Any]]:
    try:
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[b"sidrec"])
        d = int(meta["dim"])
        vectors = table.column("vector").combine_chunks().flatten().to_numpy()
        sids = None
        if "sid" in table.column_names:
            sid_col = table.column("sid").combine_chunks()
            sids = sid_col.flatten().to_numpy().astype(np.int64).reshape(len(table), -1)
        items = NewItems(tuple(table.column("id").to_pylist()),
                         tuple(table.column("text").to_pylist()),
                         vectors.astype(np.float32).reshape(len(table), d), sids)
    except FileNotFoundError:
        raise
    except (OSError, KeyError, ValueError, TypeError, pa.ArrowException) as e:
        raise SidrecError(f"{path}: unreadable added items ({type(e).__name__}: {e}); move it "
                          "away to serve without them") from None
    if meta.get("format") != FORMAT:
        raise SidrecError(f"{path}: format {meta.get('format')!r}, not {FORMAT}; move it away")
    return items, meta


def read(run: RunDir) -> tuple[NewItems, dict[str, Any]] | None:
    """(the added items, the metadata of what holds them), or None when the run has none.
    Parts computed for other SIDs than the file's (another model's SID set) leave the
    SIDs' fingerprint None, so a reader computes them again."""
    for _ in range(_READS):
        try:
            return _read_all(run)
        except FileNotFoundError:  # a compaction removed a part after the listing
            continue
    raise SidrecError(f"{parts_dir(run)}: the added items kept changing while read; "
                      "retry")


def _read_all(run: RunDir) -> tuple[NewItems, dict[str, Any]] | None:
    parts = _parts(run)  # first: a compaction renames the file before it removes parts
    whole = _read_one(run.added_items) if run.added_items.is_file() else None
    if run.added_items.exists() and whole is None:
        raise SidrecError(f"{run.added_items}: not a file; move it away")
    items, meta = whole if whole is not None else (None, None)
    through = int(meta.get("through", 0)) if meta else 0
    for name in parts:
        if int(Path(name).stem) <= through:
            continue
        more, more_meta = _read_one(parts_dir(run) / name)
        if meta is None:
            items, meta = more, more_meta
            continue
        mine, theirs = meta["fingerprint"] or {}, more_meta["fingerprint"] or {}
        if any(mine.get(k) != theirs.get(k) for k in ("encoder", "embeddings")) \
                or more_meta["dim"] != meta["dim"]:
            raise SidrecError(f"{parts_dir(run) / name}: added for other embeddings than "
                              f"{run.added_items}; move the parts away")
        if mine.get("sids") != theirs.get("sids") or (items.sids is None) != (
                more.sids is None):
            meta = {**meta, "fingerprint": {**mine, "sids": None}}
            items, more = (NewItems(x.ids, x.texts, x.vectors, None) for x in (items, more))
        items = items + more
    return None if items is None else (items, meta)
