"""What every table source shares: its columns, the values a batch holds, the content
digest, the checks on the values, the scan, and the :class:`Source` base class.

The readers of each file kind are in :mod:`daskbatch.tablefiles`; :mod:`daskbatch.sources`
opens a path (a file, a Zarr store, a folder or a glob of them).

Text never gets padded: a text column reaches the kernel as a NumPy
:class:`~numpy.dtypes.StringDType` array (a Python ``str`` per sample).

The content digest (:class:`Digest`) is defined per column on the values in row
order, so it does not depend on how the rows were batched: a numeric column hashes
its values' bytes (little-endian, its dtype), a text column the UTF-8 lengths and
bytes of its strings. The table's digest combines the columns' with the number of
rows, and the digests of the first rows at a few row counts (:func:`checkpoint_rows`)
let a grown table be checked, and a changed row found, without the old rows.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SpaceError

__all__ = [
    "STRING",
    "Column",
    "Digest",
    "ScanResult",
    "Snapshot",
    "Source",
    "checkpoint_rows",
    "file_scan",
    "prefix_digests",
    "scan",
]

#: the dtype of text parameters: variable-width strings, never padded
STRING = np.dtypes.StringDType()
#: rows per batch of a scan: about this many bytes
BATCH_BYTES = 32 << 20
_NUMBER = r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$|^\s*[-+]?(inf|infinity|nan)\s*$"


def _one_line(text: Any, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


# --------------------------------------------------------------------------- columns


@dataclass(frozen=True)
class Column:
    """One column of a source: its dtype (:data:`STRING` for text) and core dims."""

    name: str
    dtype: np.dtype
    core_shape: tuple[int, ...] = ()
    core_dims: tuple[str, ...] = ()

    @property
    def is_str(self) -> bool:
        return self.dtype.kind == "T"

    @property
    def type_name(self) -> str:
        """``"str"`` for text, else the NumPy dtype's name (``"int64"``, ``"float64"``, ``"bool"``)."""
        return "str" if self.is_str else str(self.dtype)

    @property
    def width(self) -> int:
        """Values per row."""
        return int(np.prod(self.core_shape, dtype=np.int64))

    def header(self) -> bytes:
        return f"{self.name}\0{self.type_name}\0{list(self.core_shape)}\0".encode()


def _column_from_arrow(name: str, typ: Any, what: str) -> Column:
    """The column a Parquet or CSV field becomes; SpaceError for a type a parameter cannot have."""
    import pyarrow as pa

    core: tuple[int, ...] = ()
    base = typ
    if pa.types.is_fixed_size_list(typ):
        core, base = (typ.list_size,), typ.value_type
    if pa.types.is_dictionary(base):
        base = base.value_type
    if pa.types.is_string(base) or pa.types.is_large_string(base) or pa.types.is_string_view(base):
        dtype: np.dtype = STRING
    elif pa.types.is_boolean(base):
        dtype = np.dtype(bool)
    elif pa.types.is_integer(base) or pa.types.is_floating(base):
        dtype = np.dtype(base.to_pandas_dtype())
    else:
        raise SpaceError(
            f"Table: column {name!r} of {what} has type {typ}; a parameter column holds numbers, "
            "booleans or text (cast it, or leave it out with columns=[...])"
        )
    return Column(name, dtype, core, (f"{name}_dim",) if core else ())


def _numpy_of(arr: Any) -> np.ndarray:
    """An Arrow array of numbers or booleans without nulls as NumPy, from its buffers
    (``to_numpy`` imports pandas: a third of a second in every worker process)."""
    import pyarrow as pa

    typ = arr.type
    if pa.types.is_boolean(typ):
        bits = np.frombuffer(arr.buffers()[1], np.uint8)
        return np.unpackbits(bits, bitorder="little", count=arr.offset + len(arr))[arr.offset :].astype(bool)
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        dtype = np.dtype(typ.to_pandas_dtype())
        return np.frombuffer(arr.buffers()[1], dtype, count=arr.offset + len(arr))[arr.offset :]
    return arr.to_numpy(zero_copy_only=False)  # pragma: no cover - other types are cast first


def _arrow_values(arr: Any, col: Column) -> tuple[Any, np.ndarray | None]:
    """A column's values in a batch as the scan handles them: ``(values, nulls)``.

    Text: a flat ``string`` or ``large_string`` Arrow array (row-major over the core dims); numbers:
    a NumPy array ``(rows, *core)``. ``nulls`` marks the rows with a missing value.
    """
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    n = len(arr)
    nulls = None
    if arr.null_count:
        nulls = _numpy_of(arr.is_null())
    if col.core_shape:
        inner = arr.flatten() if not arr.null_count else arr.fill_null([_zero(col)] * col.width).flatten()
        if inner.null_count:
            bad = _numpy_of(inner.is_null()).reshape(n, -1).any(axis=1)
            nulls = bad if nulls is None else nulls | bad
        arr = inner
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if col.is_str:
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            arr = arr.cast(pa.large_string())
        if arr.null_count:
            arr = arr.fill_null("")
        return arr, nulls
    if arr.null_count:
        arr = arr.cast(pa.float64()).fill_null(np.nan) if col.dtype.kind == "f" else arr.fill_null(_zero(col))
    values = _numpy_of(arr).astype(col.dtype, copy=False)
    return values.reshape((n, *col.core_shape)), nulls


def _zero(col: Column) -> Any:
    return "" if col.is_str else False if col.dtype.kind == "b" else 0


def _numpy_values(values: np.ndarray, col: Column) -> tuple[Any, np.ndarray | None]:
    """A column's values read by NumPy (Zarr) as the scan handles them (see :func:`_arrow_values`)."""
    import pyarrow as pa

    if col.is_str:
        flat = np.ascontiguousarray(values).reshape(-1)
        nulls = None
        if flat.dtype.kind == "O":
            missing = np.fromiter((not isinstance(v, str) for v in flat), bool, flat.size)
            if missing.any():
                nulls = missing.reshape(values.shape[0], -1).any(axis=1)
                flat = np.where(missing, "", flat)
        return pa.array(flat.astype(STRING), type=pa.large_string()), nulls
    return np.asarray(values).astype(col.dtype, copy=False), None


def _kernel_values(values: Any, col: Column, n: int) -> np.ndarray:
    """Scan values as the kernel gets them: text as a StringDType array, never padded."""
    if col.is_str:
        out = np.array(values.to_pylist(), dtype=STRING)  # to_numpy would import pandas
        return out.reshape((n, *col.core_shape))
    return values


# --------------------------------------------------------------------------- digests


def checkpoint_rows(rows: int) -> list[int]:
    """Row counts at which a table's prefix digest is kept: 1..16, then powers of two, and ``rows``.

    Examples
    --------
    >>> checkpoint_rows(40)
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 32, 40]
    """
    out = set(range(1, min(rows, 16) + 1))
    r = 32
    while r < rows:
        out.add(r)
        r *= 2
    if rows > 0:
        out.add(rows)
    return sorted(out)


class _ColumnHash:
    """The running digest of one column: its values' bytes (and, for text, lengths)."""

    __slots__ = ("data", "lengths")

    def __init__(self, is_str: bool) -> None:
        self.data = hashlib.sha256()
        self.lengths = hashlib.sha256() if is_str else None

    def update(self, values: Any) -> None:
        if self.lengths is None:
            arr = np.ascontiguousarray(values)
            if arr.dtype.kind == "b":
                arr = arr.view(np.uint8)
            self.data.update(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
            return
        if not len(values):
            return
        import pyarrow as pa

        _, offsets, data = values.buffers()
        width = np.int32 if pa.types.is_string(values.type) else np.int64
        offs = np.frombuffer(offsets, dtype=width)[values.offset : values.offset + len(values) + 1]
        self.lengths.update(np.diff(offs).astype("<i8").tobytes())
        if data is not None:
            self.data.update(memoryview(data)[int(offs[0]) : int(offs[-1])])

    def copy(self) -> _ColumnHash:
        other = _ColumnHash.__new__(_ColumnHash)
        other.data = self.data.copy()
        other.lengths = self.lengths.copy() if self.lengths is not None else None
        return other

    def hexdigest(self, header: bytes) -> str:
        h = hashlib.sha256(header)
        if self.lengths is not None:
            h.update(self.lengths.digest())
        h.update(self.data.digest())
        return h.hexdigest()


@dataclass
class Snapshot:
    """A table's digest over its first ``rows`` rows, and each column's."""

    rows: int
    sha256: str
    columns: dict[str, str]


class Digest:
    """The content digest of a table fed in batches of rows (independent of the batching).

    ``checkpoints`` are row counts at which a :class:`Snapshot` is kept in ``at``;
    :meth:`final` is the snapshot of every row fed.
    """

    def __init__(self, columns: Mapping[str, Column], checkpoints: Sequence[int] = ()) -> None:
        self.columns = dict(columns)
        self.rows = 0
        self.hashes = {n: _ColumnHash(c.is_str) for n, c in self.columns.items()}
        self.checkpoints = sorted({int(r) for r in checkpoints if r > 0})
        self._next = 0
        self.at: dict[int, Snapshot] = {}

    def _feed(self, batch: Mapping[str, Any], lo: int, hi: int) -> None:
        if hi <= lo:
            return
        for name, col in self.columns.items():
            values = batch[name][0]
            if col.is_str:
                w = col.width
                self.hashes[name].update(values.slice(lo * w, (hi - lo) * w))
            else:
                self.hashes[name].update(values[lo:hi])

    def update(self, n: int, batch: Mapping[str, Any]) -> None:
        """Feed ``n`` rows: ``batch`` maps each column to ``(values, nulls)``."""
        pos, base = 0, self.rows
        while self._next < len(self.checkpoints) and self.checkpoints[self._next] <= base + n:
            cut = self.checkpoints[self._next] - base
            self._feed(batch, pos, cut)
            self.rows = base + cut
            pos = cut
            self.at[self.rows] = self.snapshot(self.hashes)
            self._next += 1
        self._feed(batch, pos, n)
        self.rows = base + n

    def snapshot(self, hashes: Mapping[str, _ColumnHash]) -> Snapshot:
        cols = {n: hashes[n].copy().hexdigest(c.header()) for n, c in self.columns.items()}
        h = hashlib.sha256(f"daskbatch-table\0rows={self.rows}\0".encode())
        for name in sorted(cols):
            h.update(name.encode() + b"\0" + cols[name].encode())
        return Snapshot(self.rows, h.hexdigest(), cols)

    def final(self) -> Snapshot:
        return self.at.get(self.rows) or self.snapshot(self.hashes)


# --------------------------------------------------------------------------- checks


class _Checks:
    """The values a parameter column may not hold, found while a table streams by."""

    def __init__(self, columns: Mapping[str, Column], where: str, text_source: bool) -> None:
        self.columns, self.where, self.text_source = columns, where, text_source
        self.bad: dict[str, list[Any]] = {}  # numeric: [count, first row, value]
        self.missing: dict[str, int] = {}
        self.mixed: dict[str, tuple[int, str]] = {}
        self.first_is_number: dict[str, bool] = {}
        self.seen = 0  # rows checked
        self.empty: dict[str, int] = {}  # rows without a value (null, NaN) per column

    def update(self, row0: int, n: int, batch: Mapping[str, Any]) -> None:
        import pyarrow.compute as pc

        self.seen = max(self.seen, row0 + n)

        for name, col in self.columns.items():
            values, nulls = batch[name]
            if col.is_str:
                if nulls is not None and nulls.any() and name not in self.missing:
                    self.missing[name] = row0 + int(np.flatnonzero(nulls)[0])
                if self.text_source and name not in self.mixed and len(values):
                    numeric = pc.match_substring_regex(values, _NUMBER, ignore_case=True)
                    numeric = _numpy_of(numeric).reshape(n, -1)
                    first = self.first_is_number.setdefault(name, bool(numeric[0, 0]))
                    odd = np.flatnonzero((numeric != first).any(axis=1))
                    if odd.size:
                        r = int(odd[0])
                        k = int(np.flatnonzero(numeric[r] != first)[0])
                        self.mixed[name] = (row0 + r, values[r * col.width + k].as_py())
                continue
            bad = nulls.copy() if nulls is not None else None
            empty = bad  # rows without a value (null or NaN), which inf is not
            if col.dtype.kind in "fc":
                inf = ~np.isfinite(values.reshape(n, -1)).all(axis=1)
                bad = inf if bad is None else bad | inf
                nan = np.isnan(values.reshape(n, -1)).any(axis=1)
                empty = nan if empty is None else empty | nan
            if bad is None or not bad.any():
                continue
            if empty is not None:
                self.empty[name] = self.empty.get(name, 0) + int(empty.sum())
            rows = np.flatnonzero(bad)
            entry = self.bad.setdefault(name, [0, None, None])
            if entry[1] is None:
                r = int(rows[0])
                value = values[r].tolist() if col.dtype.kind in "fc" else float("nan")
                if nulls is not None and nulls[r]:  # a missing value: shown as NaN
                    value = float("nan")
                entry[1], entry[2] = row0 + r, value
            entry[0] += int(rows.size)

    def raise_first(self) -> None:
        for name in self.columns:
            if name in self.mixed:
                row, value = self.mixed[name]
                raise SpaceError(
                    f"Table: column {name!r} of {self.where} mixes numbers and text (row {row}: "
                    f"{_short(value)}); a parameter column must be all numbers or all strings: "
                    "fix that value"
                )
            if name in self.missing:
                raise SpaceError(
                    f"Table: column {name!r} of {self.where} has a missing value (first: row "
                    f"{self.missing[name]}); fill or drop those rows before running"
                )
            if name in self.bad:
                count, row, value = self.bad[name]
                if (
                    self.empty.get(name) == self.seen
                ):  # a column left blank (notes, Excel's trailing comma, NA)
                    raise SpaceError(
                        f"Table: column {name!r} of {self.where} has no value in any of its {count} "
                        "row(s) (empty, NA or NaN); leave it out with columns=[...], or fill it"
                    )
                if self.columns[name].dtype.kind not in "fc":  # integers, booleans: a null
                    raise SpaceError(
                        f"Table: column {name!r} of {self.where} has {count} row(s) without a value "
                        f"(null; first: row {row}); drop or fill them before running"
                    )
                raise SpaceError(
                    f"Table: column {name!r} of {self.where} has {count} row(s) with NaN or inf "
                    f"(first: row {row}, value {value!r}); drop or fill them before running"
                )


class _Retry(Exception):
    """A CSV column's type was revised during a scan: scan again."""


@dataclass
class ScanResult:
    """What one pass over a source found: its digest, each column's, and prefix digests."""

    sha256: str
    columns: dict[str, str]
    prefix: list[list[Any]]
    #: the contents were left to the blocks (:func:`file_scan`): ``sha256`` digests the
    #: file's state, not its values
    by_blocks: bool = False


def scan(source: Source) -> ScanResult:
    """Stream ``source`` once: check its values and compute its digests (bounded memory).

    A CSV column whose type the first rows did not tell (an integer column with a
    decimal further down) is read again with the wider type.
    """
    for _ in range(4 * len(source.columns) + 4):
        try:
            return _scan_once(source)
        except _Retry:
            continue
    raise SpaceError(f"Table: the column types of {source.where} could not be settled")  # pragma: no cover


def _scan_once(source: Source) -> ScanResult:
    columns = source.columns
    digest = Digest(columns, checkpoint_rows(source.rows))
    checks = _Checks(columns, source.where, source.kind == "csv")
    row = 0
    for n, batch in source.batches():
        checks.update(row, n, batch)
        digest.update(n, batch)
        row += n
    if row != source.rows:
        raise SpaceError(
            f"Table: {source.where} has {row} rows but its lines say {source.rows}; it cannot be "
            "read in blocks (quoting or line ends it does not use consistently): save it as Parquet"
        )
    checks.raise_first()
    final = digest.final()
    prefix = [[r, digest.at[r].sha256[:16]] for r in sorted(digest.at)]
    return ScanResult(final.sha256, final.columns, prefix)


def file_scan(source: Source, read: Sequence[str]) -> ScanResult:
    """The scan of a table too large to read whole when it is made: only the columns
    ``read`` are read (to check their values); the others were checked from the file's
    metadata by the caller, and their contents are left to the blocks, each of which
    records the digest of the rows it reads
    (:meth:`daskbatch.tablefiles.ParquetSource.rows_digest`).

    ``sha256`` is then the digest of the file's state (path, size, modification and
    change time of every file, rows, columns and their types): it changes whenever
    the file does (and when it is moved or touched), and
    a rerun on a changed file compares the blocks' digests instead.
    """
    if read:
        part = copy.copy(source)
        part.columns = {n: source.columns[n] for n in read}
        checks = _Checks(part.columns, source.where, False)
        row = 0
        for n, batch in part.batches():
            checks.update(row, n, batch)
            row += n
        checks.raise_first()
    state = {
        # the change time too, which no tool sets back (a file rewritten with its old
        # modification time, or another file of the same size and time, differs)
        "files": [
            [os.path.realpath(path), size, mtime, os.stat(path).st_ctime_ns]
            for path, size, mtime in source.files()
        ],
        "rows": int(source.rows),
        "columns": [[n, c.type_name, list(c.core_shape)] for n, c in source.columns.items()],
    }
    h = hashlib.sha256(b"daskbatch-table-file\0" + json.dumps(state, sort_keys=True).encode())
    return ScanResult(h.hexdigest(), {}, [], by_blocks=True)


def prefix_digests(source: Source, rows: Sequence[int]) -> dict[int, Snapshot]:
    """The digests of ``source``'s first rows at each of ``rows`` (one pass, stopped early)."""
    stop = max(rows)
    digest = Digest(source.columns, rows)
    for n, batch in source.batches(stop=stop):
        digest.update(n, batch)
    return digest.at


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return int(st.st_size), int(st.st_mtime_ns)


class Source:
    """A table read where it is. Subclasses: :class:`ParquetSource`, :class:`CsvSource`,
    :class:`ZarrSource`, :class:`MultiSource`."""

    kind: str
    path: str
    rows: int
    columns: dict[str, Column]

    @property
    def where(self) -> str:
        return repr(self.path)

    def files(self) -> list[tuple[str, int, int]]:
        """``(path, size, mtime_ns)`` of every file read."""
        return [(self.path, self.size, self.mtime_ns)]  # type: ignore[attr-defined]

    def select(self, names: Sequence[str]) -> None:
        """Keep only the columns ``names`` (in that order); SpaceError naming a missing one."""
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise SpaceError(
                f"Table: column {missing[0]!r} is not in {self.where}; its columns are {list(self.columns)}"
            )
        self.columns = {n: self.columns[n] for n in names}

    def batches(self, stop: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        """The rows (up to ``stop``) in batches of bounded size: ``(n, {name: (values, nulls)})``."""
        raise NotImplementedError

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` of every column, as the kernel gets them (run in a worker)."""
        raise NotImplementedError

    def check_unchanged(self) -> None:
        for path, size, mtime in self.files():
            try:
                now = _stat(path)
            except OSError as e:
                raise SpaceError(f"Table: input file {path!r} cannot be read any more ({e})") from None
            if now != (size, mtime):
                raise SpaceError(
                    f"Table: input file {path!r} changed since the table was read (size or "
                    "modification time); make the Table again and rerun: the store goes on if the "
                    "rows it holds are unchanged"
                )

    def batch_rows(self) -> int:
        per_row = sum(max(1, c.width) * (64 if c.is_str else c.dtype.itemsize) for c in self.columns.values())
        return int(max(1024, min(1 << 20, BATCH_BYTES // max(1, per_row))))
