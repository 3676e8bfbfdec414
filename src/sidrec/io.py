"""Atomic artifact writes, content hashes, and reading a stage's JSON record back.

Every artifact is written to a temporary file in the same directory and renamed into
place, so a crash or a user error never leaves a half-written file behind. A JSON file
that must hold an object is read through `read_json_object` (one-line error naming the
file and the fix); whether a stage may return its earlier result instead of running is
asked of `reusable_record`, the one rule every stage shares.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sidrec.errors import SidrecError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp and mkdtemp create private (0600 / 0700) paths; artifacts get the permissions
# of any other file the user writes, so a model can be served by another account.
_UMASK = _umask()
_FILE_MODE = 0o666 & ~_UMASK
_DIR_MODE = 0o777 & ~_UMASK


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(_FILE_MODE)
        _fsync(tmp_path)  # the bytes are on disk before the name points at them
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(lock_file: str | Path, what: str) -> Iterator[None]:
    """An exclusive lock across processes (flock on `lock_file`, created if missing), for
    a read-modify-write of `what`, a file that several processes update."""
    lock_file = Path(lock_file)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_file, "a+")  # noqa: SIM115 (held for the block)
    except OSError as e:
        raise SidrecError(f"{lock_file}: cannot lock {what} ({e})") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` as a whole only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(_DIR_MODE)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:  # Ctrl-C between the two moves: the old one goes back
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npy(path: str | Path, array: np.ndarray) -> str:
    """Write `array` atomically; returns the `hash_file` of the bytes written (taken
    before the rename, so a concurrent writer's file is never the one hashed)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
        return hash_file(tmp)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_json_object(path: str | Path, fix: str) -> dict[str, Any]:
    """The JSON object in `path`; anything else (missing, unreadable, not an object) is a
    one-line SidrecError naming the file and `fix`, how to repair it (e.g. "re-run
    `sidrec embed RUN`")."""
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise SidrecError(f"{path}: unreadable JSON ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise SidrecError(f"{path}: expected a JSON object; {fix}")
    return data


def reusable_record(
    record: Path,
    match: dict[str, Any],
    needs: Iterable[Path] = (),
    unchanged: Callable[[dict[str, Any]], bool] = lambda _: True,
) -> dict[str, Any] | None:
    """A stage's record (its JSON, written last) when the stage may return it instead of
    running: every file in `needs` exists, the record is a readable JSON object whose keys
    hold the values in `match` (config and input hashes), and `unchanged(record)` (the
    outputs it records are the files on disk now). Else None and the stage runs again: a
    damaged record is rebuilt, never an error."""
    if not record.is_file() or not all(p.is_file() for p in needs):
        return None
    try:
        data = read_json(record)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or any(data.get(k) != v for k, v in match.items()):
        return None
    return data if unchanged(data) else None


def hash_array(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    h = hashlib.sha256(str((array.dtype.str, array.shape)).encode())
    h.update(array.tobytes())
    return h.hexdigest()[:16]


def hash_obj(obj: Any) -> str:
    """Stable short hash of a JSON-able object (configs, lists of strings)."""
    blob = json.dumps(obj, sort_keys=True, default=_jsonable).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def hash_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def folder_stamp(folder: str | Path) -> tuple | None:
    """(relative path, size, mtime) of every file below `folder`, or None if it is no
    folder: a cheap test of whether `hash_folder` needs computing again."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                 for p in sorted(folder.rglob("*")) if p.is_file())


def hash_folder(folder: str | Path) -> str:
    """`hash_obj` of {relative path: `hash_file`} over every file below `folder`."""
    folder = Path(folder)
    return hash_obj({str(p.relative_to(folder)): hash_file(p)
                     for p in sorted(folder.rglob("*")) if p.is_file()})


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
