"""`runs/<run>/added_items.parquet` (`RunDir.added_items`): every item added after training,
in the order added, so that `sidrec.load` (and so a restarted `sidrec serve`) serves them
too.

    id      string          original item id (unique among the run's items)
    text    string          the item text, as given
    vector  float32[d]      its text vector
    sid     int64[L+1]      its full SID (null when the run has no SIDs)

The file's metadata records the encoder and the hashes of `embeddings.npy` and
`sids.npy` the rows were computed against (`fingerprint`). When the encoder or the
embeddings differ from the run's (it was re-embedded), the items are encoded again from
their text; when only the SIDs differ (the run was re-tokenized, or the reader is a model
with its own SID set, `RunDir.with_sids`), their SIDs are computed again from the stored
vectors (`sidrec.catalogue.live`).

The file is rewritten whole and atomically on each add (temporary file, then rename), so
a reader sees all of an add or none of it; `lock` serialises writers across processes
(several servers or Ray Serve replicas on one run directory) and across the threads of
one; `stamp` tells a reader cheaply whether the file changed since it last looked.
"""

from __future__ import annotations

import contextlib
import json
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

Stamp = tuple[int, int, int]


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


def stamp(run: RunDir) -> Stamp | None:
    """(mtime, size, inode) of the added items' file, None when there is none: a rename
    over it (`write`) changes the inode, so a reader that kept the stamp of the file it
    read knows with one stat whether to read it again."""
    try:
        st = run.added_items.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def write(run: RunDir, items: NewItems, against: dict[str, str | None]) -> None:
    """Rewrite `added_items.parquet` with `items` (all of them), atomically; `against` is
    the run's `fingerprint` the items were computed for."""
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
    meta = {"format": FORMAT, "dim": d, "fingerprint": against}
    table = pa.table(columns).replace_schema_metadata({"sidrec": json.dumps(meta)})
    try:
        with atomic_path(run.added_items) as tmp:
            pq.write_table(table, tmp)
    except OSError as e:
        raise SidrecError(f"{run.added_items}: cannot persist the added items ({e})") from None


def read(run: RunDir) -> tuple[NewItems, dict[str, Any]] | None:
    """(the added items, the file's metadata), or None when the run has none."""
    path = run.added_items
    if not path.is_file():
        return None
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
    except (OSError, KeyError, ValueError, TypeError, pa.ArrowException) as e:
        raise SidrecError(f"{path}: unreadable added items ({type(e).__name__}: {e}); move it "
                          "away to serve without them") from None
    if meta.get("format") != FORMAT:
        raise SidrecError(f"{path}: format {meta.get('format')!r}, not {FORMAT}; move it away")
    return items, meta
