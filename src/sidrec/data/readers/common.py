"""What every reader shares: `RawData`, streaming file access with a progress bar, id
columns that share one string object per distinct id, time parsing, and the error helpers.

Memory: a reader never holds a parsed record per line. It keeps, per interaction, two
references to pooled id strings and one float (~24 bytes plus the pooled strings), so ten
million reviews take a few hundred MB before the protocol runs.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sidrec.errors import SidrecError

PROGRESS_MIN_BYTES = 32 << 20  # a bar for files from 32 MB (on a terminal only)
CHUNK_ROWS = 1 << 20  # rows per chunk for the tables read with pandas


@dataclass
class RawData:
    interactions: pd.DataFrame  # user (str), item (str), timestamp (float); rows in file order
    items: pd.DataFrame  # item_id (str), text (str)
    source: dict[str, Any] = field(default_factory=dict)


def cache_dir() -> Path:
    return Path(os.environ.get("SIDREC_CACHE", Path.home() / ".cache" / "sidrec"))


# ---------------------------------------------------------------- streaming files


class _Counted(io.RawIOBase):
    """A raw binary file whose reads advance a progress bar (compressed bytes for .gz)."""

    def __init__(self, raw: io.BufferedReader, bar: tqdm) -> None:
        self._raw, self._bar = raw, bar

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)
        self._bar.update(n or 0)
        return n or 0

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
            self._bar.close()
        super().close()


def open_binary(path: Path) -> io.BufferedIOBase:
    """`path` as a binary stream, decompressed when it ends in .gz; a tqdm bar (stderr, on a
    terminal, cleared when done) for files of 32 MB or more."""
    if not path.is_file():
        raise SidrecError(f"{path}: file not found; check the path")
    stream: io.BufferedIOBase = open(path, "rb")  # noqa: SIM115 - the caller closes it
    size = path.stat().st_size
    if size >= PROGRESS_MIN_BYTES:
        bar = tqdm(total=size, desc=f"reading {path.name}", unit="B", unit_scale=True,
                   leave=False, disable=None)
        stream = io.BufferedReader(_Counted(stream, bar), 1 << 20)  # type: ignore[arg-type]
    if path.name.endswith(".gz"):
        stream = _GzipOwning(stream)
    return stream


class _GzipOwning(gzip.GzipFile):
    """A GzipFile that also closes the file (and progress bar) it reads from, which
    GzipFile(fileobj=...) leaves open."""

    def __init__(self, source: io.BufferedIOBase) -> None:
        super().__init__(fileobj=source, mode="rb")
        self._source = source

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._source.close()


def numbered_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, line) for every non-blank line, streamed.

    Lines are split on b"\\n" and decoded one at a time, so a byte that is not `encoding`
    is reported with its own line number; a damaged .gz names the last good line.
    """
    lineno = 0
    with open_binary(path) as f:
        try:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode(encoding)
                except UnicodeDecodeError as e:
                    raise SidrecError(decode_message(path, lineno, e, e.start)) from None
                if line.strip():
                    yield lineno, line
        except (OSError, EOFError, zlib.error) as e:
            raise SidrecError(stream_message(path, e, lineno)) from None


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The whole (decompressed) file as text; a damaged .gz or a byte that is not
    `encoding` is a SidrecError naming the file (and the line of the byte)."""
    with open_binary(path) as f:
        try:
            data = f.read()
        except (OSError, EOFError, zlib.error) as e:
            raise SidrecError(stream_message(path, e)) from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1)
        raise SidrecError(decode_message(path, lineno, e, column)) from None


def decode_message(path: Path, lineno: int, e: UnicodeDecodeError, column: int) -> str:
    """`column`: the 0-based offset of the bad byte in its line."""
    name = e.encoding.upper().replace("_", "-")
    return (f"{path}:{lineno}: byte {e.object[e.start:e.start + 1]!r} at column {column + 1} "
            f"is not {name} text ({e.reason}); re-save the file as {name}")


def stream_message(path: Path, e: BaseException, lineno: int = 0) -> str:
    """One line for a file that cannot be read to its end (mostly a damaged .gz)."""
    after = f" after line {lineno}" if lineno else ""
    if isinstance(e, gzip.BadGzipFile):
        return (f"{path}: cannot read: not gzip data{after} ({_first_line(e)}), although the "
                "name ends in .gz; decompress it, or drop the .gz from its name if it is plain "
                "text")
    if isinstance(e, EOFError):
        return (f"{path}: cannot read: the gzip stream ends early{after} (truncated file); "
                "download or copy it again")
    if isinstance(e, zlib.error):
        return f"{path}: cannot read: corrupt gzip data{after} ({e}); download it again"
    return f"{path}: cannot read{after} ({_first_line(e)}); the file may be damaged"


TABLE_ERRORS = (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError,
                EOFError, zlib.error)


def csv_chunks(
    path: Path, columns: list[str], sep: str = ","
) -> Iterator[tuple[int, pd.DataFrame]]:
    """(first line number, chunk of string columns) from a headed CSV, streamed."""
    with open_binary(path) as stream:
        try:
            reader = pd.read_csv(stream, sep=sep, usecols=columns, dtype=str,
                                 keep_default_na=False, chunksize=CHUNK_ROWS)
            first = 2
            for chunk in reader:
                yield first, chunk
                first += len(chunk)
        except TABLE_ERRORS as e:
            raise SidrecError(table_message(path, e)) from None


def read_header(path: Path, sep: str = ",") -> list[str]:
    """The column names of a headed CSV; a name given twice is an error."""
    with open_binary(path) as stream:
        try:
            # header=None: the names as written (pandas renames a repeated one `item_id.1`,
            # which would pass for another column and leave the first one read silently)
            first = pd.read_csv(stream, sep=sep, nrows=1, header=None, dtype=str,
                                keep_default_na=False)
        except TABLE_ERRORS as e:
            raise SidrecError(table_message(path, e)) from None
    unique_names([str(n) for n in first.iloc[0]] if len(first) else [], path)
    with open_binary(path) as stream:
        try:
            return list(pd.read_csv(stream, sep=sep, nrows=0, dtype=str).columns)
        except TABLE_ERRORS as e:
            raise SidrecError(table_message(path, e)) from None


def unique_names(names: list[str], where: Any) -> None:
    """A column name given twice (not blank) is a SidrecError: which one to read is not
    the reader's to pick."""
    seen: dict[str, int] = {}
    for n, name in enumerate(names, 1):
        if name.strip() and name in seen:
            raise SidrecError(
                f"{where}: column {name!r} appears twice in the header (columns {seen[name]} "
                f"and {n}); rename or drop one, so it is clear which to read"
            )
        seen.setdefault(name, n)


def table_message(path: Path, e: Exception) -> str:
    """One line for a table pandas could not read (one of `TABLE_ERRORS`)."""
    if isinstance(e, UnicodeDecodeError):
        return (f"{path}: cannot read table: not UTF-8 text ({e.reason}, byte "
                f"{e.object[e.start:e.end]!r}); re-save the file as UTF-8")
    if isinstance(e, OSError | EOFError | zlib.error):
        return stream_message(path, e)
    return f"{path}: cannot read table ({_first_line(e)})"


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ---------------------------------------------------------------- pooled id columns


class Pool:
    """One `str` object per distinct id, so a column of millions of ids holds references."""

    def __init__(self) -> None:
        self._strings: dict[str, str] = {}

    def __call__(self, value: Any) -> str:
        s = str(value)
        return self._strings.setdefault(s, s)

    def column(self, values: Iterable[Any], where: Any, first: int, name: str,
               rows: bool = False) -> np.ndarray:
        """[n] object array of pooled strings for a chunk of ids read from `where`, whose
        first value is on line `first` (`rows`: row `first`, for Parquet). A null or empty
        id is a SidrecError naming its line (or row)."""
        codes, uniques = pd.factorize(np.asarray(values, dtype=object))  # null -> code -1
        blank = [n for n, u in enumerate(uniques) if str(u).strip() == ""]
        bad = (codes < 0) | np.isin(codes, blank)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            place = f"{where}: row {first + row}" if rows else f"{where}:{first + row}"
            what = "null" if codes[row] < 0 else "empty"
            raise SidrecError(id_message(place, name, what, "row" if rows else "line"))
        pooled = np.array([self(u) for u in uniques], dtype=object)
        return pooled[codes]


def ident(value: Any, where: Any, lineno: int, name: str) -> str:
    """`value` as an id string; None, NaN and empty (or blank) ids are a SidrecError."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise SidrecError(id_message(f"{where}:{lineno}", name, "null"))
    text = str(value)
    if not text.strip():
        raise SidrecError(id_message(f"{where}:{lineno}", name, "empty"))
    return text


def id_message(place: str, name: str, what: str, unit: str = "line") -> str:
    return (f"{place}: field {name!r} is {what}; every interaction needs a user id and an "
            f"item id (fill it in, or delete that {unit})")


def interactions_frame(users: Any, items: Any, times: Any) -> pd.DataFrame:
    return pd.DataFrame({
        "user": np.asarray(users, dtype=object),
        "item": np.asarray(items, dtype=object),
        "timestamp": np.asarray(times, dtype=np.float64),
    })


def keep_earliest(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop repeated (user, item) rows, keeping the earliest (ties: the first in the file).

    Returns the rows left, in file order, and how many were dropped.
    """
    users, _ = pd.factorize(df["user"])
    items, uniq_items = pd.factorize(df["item"])
    key = users.astype(np.int64) * max(len(uniq_items), 1) + items
    order = np.lexsort((np.arange(len(df)), df["timestamp"].to_numpy(), key))
    first = np.ones(len(df), dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    kept = np.sort(order[first])
    return df.iloc[kept].reset_index(drop=True), len(df) - len(kept)


# ---------------------------------------------------------------- values and errors


def column(names: list[str], name: str, where: Any) -> int:
    if name not in names:
        raise SidrecError(
            f"{where}: unknown column {name!r}; the file has: {', '.join(map(str, names))}"
        )
    return names.index(name)


def number(value: Any, where: Any, lineno: int, name: str) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        result = math.nan
    if not math.isfinite(result):  # "nan" parses, but would sort as the last interaction
        raise SidrecError(
            f"{where}:{lineno}: field {name!r} is not numeric ({value!r}); expected a number"
        )
    return result


def iso_date(value: Any, where: Any, lineno: int, name: str) -> float:
    """Seconds since 1970 (UTC) of an ISO date or date-time string."""
    try:
        text = str(value).strip()
        moment = (datetime.fromisoformat(text) if "T" in text or " " in text
                  else datetime.combine(date.fromisoformat(text), datetime.min.time()))
    except ValueError:
        raise SidrecError(
            f"{where}:{lineno}: field {name!r} is not a date ({value!r}); "
            "expected an ISO date such as 2017-12-17"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class TimeColumn:
    """Times of a table column, chunk by chunk: all numbers, or all ISO dates (told by the
    first value). The first bad value is an error naming the file, line and column."""

    def __init__(self, where: Any, name: str, rows: bool = False) -> None:
        self.where, self.name, self.rows = where, name, rows  # rows: Parquet row numbers
        self.dates: bool | None = None

    def __call__(self, values: pd.Series, first_line: int) -> np.ndarray:
        raw = values.astype(str).str.strip()
        if self.dates is None and len(raw):
            self.dates = not math.isfinite(pd.to_numeric(raw.iloc[0], errors="coerce"))
        if self.dates:
            moments = pd.to_datetime(raw, format="ISO8601", utc=True, errors="coerce")
            bad = moments.isna().to_numpy()
            seconds = ((moments - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1))
            out, what = seconds.to_numpy(dtype=np.float64, na_value=np.nan), "an ISO date"
        else:
            out = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            bad, what = ~np.isfinite(out), "numeric"
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            kind = "dates" if self.dates else "numbers"
            place = (f"{self.where}: row {first_line + row}" if self.rows
                     else f"{self.where}:{first_line + row}")
            raise SidrecError(
                f"{place}: column {self.name!r} is not {what} "
                f"({values.iloc[row]!r}); timestamps must be {kind} in every row"
            )
        return out
