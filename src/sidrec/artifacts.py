"""The one loader per array artifact of a run directory: item embeddings and semantic IDs.

`RunDir.load_embeddings` and `RunDir.load_sids` call these; every stage, model and
analysis reads the files through them, so a missing, truncated or stale file is the same
one-line SidrecError (naming the file and the command that rewrites it) wherever it is met.
Item embeddings are also written through one function (`save_embeddings`, for `sidrec
embed` and the synthetic catalogue alike), so every `embeddings.json` can be checked.

Stale means: the record a stage wrote beside its array (`embeddings.json`, `tokenizer.json`)
holds the hash of the array as written and the hashes of the inputs it was made from;
an array that is not the one recorded (an interrupted or concurrent stage), or that was
made from another catalogue, cold-start split or set of embeddings than the run's current
ones, is refused with the command that rebuilds it. Records without these hashes (written
by an older sidrec, or none at all) are not checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sidrec.errors import SidrecError
from sidrec.io import (
    hash_array,
    hash_file,
    hash_folder,
    hash_obj,
    read_json_object,
    save_npy,
    write_json,
)


def require_file(path: Path, what: str, command: str) -> None:
    """A SidrecError naming `path` and the command that writes it, unless it is a file."""
    if not path.is_file():
        raise SidrecError(f"{path}: no {what}; run `{command}` first")


def read_npy(path: Path, command: str, mmap: bool = False) -> np.ndarray:
    """`np.load(path)` (no pickles); an unreadable file is a one-line SidrecError."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SidrecError(
            f"{path}: not a readable .npy array ({first}); re-run `{command}`"
        ) from None


def read_record(path: Path, command: str) -> dict[str, Any]:
    """A stage's JSON record (`embeddings.json`, `tokenizer.json`); unreadable: a SidrecError
    saying to re-run `command`, the stage that writes it."""
    return read_json_object(path, f"re-run `{command}`")


def save_embeddings(path: Path, info: Path, vectors: np.ndarray,
                    record: dict[str, Any]) -> dict[str, Any]:
    """Write item vectors [n_items, d] to `path` (`embeddings.npy`), then their record to
    `info` (`embeddings.json`): `record` (what made them: encoder, `text_hash`, ...) plus
    their shape and the hash of the array as written. Returns the record written."""
    # The hash is of the bytes this call wrote (a concurrent writer's array never passes
    # for this one), and the record goes last: a writer killed between the two writes
    # leaves a record that no longer matches, so `load_embeddings` refuses the array and
    # `sidrec embed` never reuses it.
    written = save_npy(path, vectors)
    record = {**record, "dim": int(vectors.shape[1]), "items": len(vectors),
              "embeddings_hash": written}
    write_json(info, record)
    return record


def load_embeddings(
    path: Path,
    run: Path,
    n_items: int | None = None,
    info: Path | None = None,
    item_text: list[str] | None = None,
) -> np.ndarray:
    """Item text vectors [n_items, d] float32 from `path` (the run's `embeddings.npy`).

    Checked: the file exists, is 2-d, has `n_items` rows when given, and is finite; when
    the record `info` (`embeddings.json`) exists, the file is the one it records, and
    it embeds `item_text` (the dataset's item texts) when given.
    """
    command = f"sidrec embed {run}"
    require_file(path, "item text embeddings", command)
    if info is not None and info.is_file():
        record = read_record(info, command)
        if "embeddings_hash" in record and record["embeddings_hash"] != hash_file(path):
            raise SidrecError(
                f"{path}: not the array {info.name} describes (an interrupted or concurrent "
                f"`sidrec embed` wrote it); re-run `{command}`"
            )
        if item_text is not None and "text_hash" in record and (
                record["text_hash"] != hash_obj(list(item_text))):
            raise SidrecError(
                f"{path}: embeds another item catalogue than {run}/dataset/ (the dataset was "
                f"prepared again since); re-run `{command}`"
            )
    emb = read_npy(path, command, mmap=True)
    if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.number):
        raise SidrecError(
            f"{path}: expected a numeric 2-d array [n_items, d], got {emb.dtype} "
            f"{list(emb.shape)}; re-run `{command}`"
        )
    if n_items is not None and emb.shape[0] != n_items:
        raise SidrecError(
            f"{path}: expected shape [{n_items}, d] for the {n_items} items of the dataset, "
            f"got {list(emb.shape)}; re-run `{command}` after `sidrec data prepare`"
        )
    emb = np.array(emb, dtype=np.float32)  # a copy in memory, off the memory map
    finite = np.isfinite(emb).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        bad = "NaN" if np.isnan(emb[row]).any() else "inf"
        raise SidrecError(
            f"{path}: row {row} contains {bad} ({int((~finite).sum())} bad rows in all); "
            f"re-run `{command}`"
        )
    return emb


def load_sids(
    path: Path,
    tokenizer_info: Path,
    run: Path,
    n_items: int | None = None,
    cold: np.ndarray | None = None,
    embeddings: Path | None = None,
    command: str | None = None,
) -> tuple[np.ndarray, tuple[int, ...]]:
    """(SIDs [n_items, n_codes] int64, vocabulary size of each position) from `path`.

    The sizes are `tokenizer_info`'s `codebook_sizes` (the quantiser levels; the collision
    column's vocabulary, the most items per prefix, is appended when not listed there),
    checked against the codes; without that file, the largest code + 1 per column.
    With `tokenizer_info`, also checked: `path` is the file it records, and the SIDs were
    fitted with the cold-start mask `cold` [n_items] bool (the dataset's, when given) and on
    the `embeddings` file as it is now (when it exists). `command` rewrites them
    (default: `sidrec tokenize RUN`).
    """
    command = command or f"sidrec tokenize {run}"
    require_file(path, "semantic IDs", command)
    record = read_record(tokenizer_info, command) if tokenizer_info.is_file() else None
    if record is not None:
        _check_sid_inputs(record, path, tokenizer_info, cold, embeddings, command)
    sids = read_npy(path, command)
    if sids.ndim != 2 or not np.issubdtype(sids.dtype, np.integer) or (
        n_items is not None and sids.shape[0] != n_items
    ):
        rows = n_items if n_items is not None else "n_items"
        raise SidrecError(
            f"{path}: expected integer shape [{rows}, n_codes], got {sids.dtype} "
            f"{list(sids.shape)}; re-run `{command}`"
        )
    sids = sids.astype(np.int64, copy=False)
    if sids.size and sids.min() < 0:
        raise SidrecError(f"{path}: negative codes; re-run `{command}`")
    n_codes = sids.shape[1]
    sizes = [int(s) for s in (sids.max(axis=0, initial=-1) + 1)]
    if record is not None:
        listed = [int(s) for s in record.get("codebook_sizes", [])]
        if len(listed) == n_codes - 1:
            listed.append(sizes[-1])
        if len(listed) != n_codes or any(m > s for m, s in zip(sizes, listed, strict=True)):
            raise SidrecError(
                f"{tokenizer_info}: codebook_sizes {listed} do not match {path} "
                f"({n_codes} columns, largest codes {[s - 1 for s in sizes]}); "
                f"re-run `{command}`"
            )
        sizes = listed
    return sids, tuple(sizes)


def check_tokenizer(folder: Path, tokenizer_info: Path, run: Path) -> None:
    """`folder` (a fitted tokenizer) is the one `tokenizer_info` records, when it records
    one: an interrupted or concurrent `sidrec tokenize` may leave another there."""
    command = f"sidrec tokenize {run}"
    if not tokenizer_info.is_file():
        return
    outputs = read_record(tokenizer_info, command).get("outputs")
    recorded = outputs.get("tokenizer") if isinstance(outputs, dict) else None
    if recorded is not None and recorded != hash_folder(folder):
        raise SidrecError(f"{folder}: not the tokenizer {tokenizer_info.name} records (an "
                          f"interrupted or concurrent `{command}`?); re-run it, then retrain")


def _check_sid_inputs(
    record: dict[str, Any],
    path: Path,
    tokenizer_info: Path,
    cold: np.ndarray | None,
    embeddings: Path | None,
    command: str,
) -> None:
    outputs, inputs = record.get("outputs", {}), record.get("inputs", {})
    if "sids" in outputs and outputs["sids"] != hash_file(path):
        raise SidrecError(
            f"{path}: not the SIDs {tokenizer_info.name} describes (an interrupted or "
            f"concurrent `sidrec tokenize` wrote it); re-run `{command}`"
        )
    if cold is not None and "cold" in inputs and (
            inputs["cold"] != hash_array(np.asarray(cold, dtype=bool))):
        raise SidrecError(
            f"{path}: fitted with another cold-start split than the dataset's (it was prepared "
            f"again since, so the tokenizer saw items that are now cold); re-run `{command}`"
        )
    if embeddings is not None and embeddings.is_file() and "embeddings" in inputs and (
            inputs["embeddings"] != hash_file(embeddings)):
        raise SidrecError(
            f"{path}: fitted on other item embeddings than {embeddings.name} (embedded again "
            f"since); re-run `{command}`"
        )
