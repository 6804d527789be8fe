"""Table sources read where they are: Parquet, CSV and Zarr files, and folders or globs of them.

When a :class:`~daskbatch.Table` is made from a path, the driver reads the metadata
(schema, row count, row-group sizes) and streams the table once, in batches of
bounded size, to check its values (no NaN in numeric columns, no column mixing
numbers and text) and compute its content digest. For a CSV file the same pass
records the byte offset of every :data:`CSV_STEP`-th row, so that a block later
reads only its own bytes. No step ever holds the whole table in memory.

Each block reads its own rows, in the worker (:meth:`Source.read`): Parquet only
the row groups the block overlaps, CSV from the recorded offset before its first
row, Zarr through a lazy :func:`xarray.open_zarr` and ``isel``. A source object is
small (paths, types, row-group starts, the CSV offsets) and picklable: it travels
with the space to every block task.

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

import glob
import hashlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SpaceError

__all__ = [
    "CSV_STEP",
    "STRING",
    "Column",
    "CsvSource",
    "Digest",
    "MultiSource",
    "ParquetSource",
    "Source",
    "ZarrSource",
    "checkpoint_rows",
    "open_source",
    "scan",
]

#: the dtype of text parameters: variable-width strings, never padded
STRING = np.dtypes.StringDType()
#: a CSV source records the byte offset of every CSV_STEP-th row (at least)
CSV_STEP = 1024
#: at most this many offsets are kept (the step doubles past it): the source stays small
MAX_OFFSETS = 65_536
#: rows per batch of a scan: about this many bytes
BATCH_BYTES = 32 << 20
_PARQUET = (".parquet", ".pq")
_CSV = (".csv",)
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


def _arrow_values(arr: Any, col: Column) -> tuple[Any, np.ndarray | None]:
    """A column's values in a batch as the scan handles them: ``(values, nulls)``.

    Text: a flat ``large_string`` Arrow array (row-major over the core dims); numbers:
    a NumPy array ``(rows, *core)``. ``nulls`` marks the rows with a missing value.
    """
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    n = len(arr)
    nulls = None
    if arr.null_count:
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
    if col.core_shape:
        inner = arr.flatten() if not arr.null_count else arr.fill_null([_zero(col)] * col.width).flatten()
        if inner.null_count:
            bad = inner.is_null().to_numpy(zero_copy_only=False).reshape(n, -1).any(axis=1)
            nulls = bad if nulls is None else nulls | bad
        arr = inner
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if col.is_str:
        arr = arr.cast(pa.large_string())
        if arr.null_count:
            arr = arr.fill_null("")
        return arr, nulls
    if arr.null_count:
        arr = arr.cast(pa.float64()).fill_null(np.nan) if col.dtype.kind == "f" else arr.fill_null(_zero(col))
    values = arr.to_numpy(zero_copy_only=False).astype(col.dtype, copy=False)
    return values.reshape((n, *col.core_shape)), nulls


def _zero(col: Column) -> Any:
    return False if col.dtype.kind == "b" else 0


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
        out = np.asarray(values.to_numpy(zero_copy_only=False), dtype=STRING)
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
        _, offsets, data = values.buffers()
        offs = np.frombuffer(offsets, dtype=np.int64)[values.offset : values.offset + len(values) + 1]
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

    def update(self, row0: int, n: int, batch: Mapping[str, Any]) -> None:
        import pyarrow.compute as pc

        for name, col in self.columns.items():
            values, nulls = batch[name]
            if col.is_str:
                if nulls is not None and nulls.any() and name not in self.missing:
                    self.missing[name] = row0 + int(np.flatnonzero(nulls)[0])
                if self.text_source and name not in self.mixed and len(values):
                    numeric = pc.match_substring_regex(values, _NUMBER, ignore_case=True)
                    numeric = numeric.to_numpy(zero_copy_only=False).reshape(n, -1)
                    first = self.first_is_number.setdefault(name, bool(numeric[0, 0]))
                    odd = np.flatnonzero((numeric != first).any(axis=1))
                    if odd.size:
                        r = int(odd[0])
                        k = int(np.flatnonzero(numeric[r] != first)[0])
                        self.mixed[name] = (row0 + r, values[r * col.width + k].as_py())
                continue
            bad = nulls.copy() if nulls is not None else None
            if col.dtype.kind in "fc":
                inf = ~np.isfinite(values.reshape(n, -1)).all(axis=1)
                bad = inf if bad is None else bad | inf
            if bad is None or not bad.any():
                continue
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


def prefix_digests(source: Source, rows: Sequence[int]) -> dict[int, Snapshot]:
    """The digests of ``source``'s first rows at each of ``rows`` (one pass, stopped early)."""
    stop = max(rows)
    digest = Digest(source.columns, rows)
    for n, batch in source.batches(stop=stop):
        digest.update(n, batch)
    return digest.at


# --------------------------------------------------------------------------- sources


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


class ParquetSource(Source):
    """A Parquet file: blocks read only the row groups they overlap."""

    kind = "parquet"

    def __init__(self, path: str) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self.size, self.mtime_ns = _stat(path)
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:
            raise SpaceError(
                f"Table: {path!r} is not a Parquet file ({_one_line(e)}); give a Parquet file, or "
                "a path ending in .csv if it is CSV text"
            ) from None
        meta = pf.metadata
        self.rows = int(meta.num_rows)
        sizes = [int(meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
        self.group_starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        byte_size = sum(int(meta.row_group(i).total_byte_size) for i in range(meta.num_row_groups))
        self.bytes_per_row = byte_size / max(1, self.rows)
        schema = pf.schema_arrow
        names = list(schema.names)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SpaceError(
                f"Table: duplicated column(s) {dup} in {path!r}; each parameter needs one column"
            )
        # the index pandas wrote beside the columns is not a column (pandas reads it back as
        # the index), unless it is named in columns=
        index = (schema.pandas_metadata or {}).get("index_columns", [])
        self._index = {c for c in index if isinstance(c, str)}
        self._all: dict[str, Column] = {}
        self._unsupported: dict[str, str] = {}
        for f in schema:
            try:
                self._all[f.name] = _column_from_arrow(f.name, f.type, repr(path))
            except SpaceError as e:
                if f.name not in self._index:
                    self._unsupported[f.name] = str(e)
        self.columns = {n: c for n, c in self._all.items() if n not in self._index}

    def select(self, names: Sequence[str]) -> None:
        for n in names:
            if n in self._unsupported:
                raise SpaceError(self._unsupported[n])
        self.columns = {**self.columns, **{n: self._all[n] for n in names if n in self._index}}
        super().select(names)
        self._unsupported = {}  # the columns left out may have any type

    def check_types(self) -> None:
        """Every column kept is one a parameter can be (called once the columns are chosen)."""
        if self._unsupported:
            raise SpaceError(next(iter(self._unsupported.values())))

    def batch_rows(self) -> int:
        return int(max(256, min(1 << 20, BATCH_BYTES // max(1.0, self.bytes_per_row))))

    def _iter(self, groups: list[int]) -> Iterator[Any]:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self.path)
        yield from pf.iter_batches(
            batch_size=self.batch_rows(), row_groups=groups, columns=list(self.columns), use_threads=False
        )

    def batches(self, stop: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        stop = self.rows if stop is None else min(stop, self.rows)
        groups = [g for g in range(len(self.group_starts) - 1) if self.group_starts[g] < stop]
        yield from _rows_of(self._iter(groups) if groups else (), stop, self.columns)

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        import pyarrow as pa

        self.check_unchanged()
        g0 = int(np.searchsorted(self.group_starts, start, side="right")) - 1
        g1 = int(np.searchsorted(self.group_starts, stop, side="left"))
        row = int(self.group_starts[g0])
        parts = []
        for batch in self._iter(list(range(g0, g1))):
            lo, hi = max(start - row, 0), min(stop - row, batch.num_rows)
            if hi > lo:
                parts.append(batch.slice(lo, hi - lo))
            row += batch.num_rows
            if row >= stop:
                break
        table = pa.Table.from_batches(parts) if parts else None
        n = stop - start
        out = {}
        for c, col in self.columns.items():
            values, _ = _arrow_values(table.column(c), col) if table is not None else (None, None)
            out[c] = _kernel_values(values, col, n)
        return out


# --------------------------------------------------------------------------- CSV


def _rows_of(
    batches: Any, stop: int | None, columns: Mapping[str, Column]
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(rows, {column: values})`` of each Arrow record batch, up to row ``stop``."""
    row = 0
    for batch in batches:
        n = batch.num_rows if stop is None else min(batch.num_rows, stop - row)
        if n <= 0:
            break
        if n < batch.num_rows:
            batch = batch.slice(0, n)
        yield n, {c: _arrow_values(batch.column(c), col) for c, col in columns.items()}
        row += n


def _csv_type(typ: Any) -> Any:
    """The type a CSV column is read as, from what the first rows suggest."""
    import pyarrow as pa

    if pa.types.is_integer(typ):
        return pa.int64()
    if pa.types.is_null(typ) or pa.types.is_floating(typ):
        return pa.float64()
    if pa.types.is_boolean(typ):
        return pa.bool_()
    return pa.large_string()


def _csv_options(names: Sequence[str] | None, types: Mapping[str, Any], include: Sequence[str], block: int):
    import pyarrow.csv as pcsv

    read = pcsv.ReadOptions(
        block_size=block, use_threads=True, column_names=list(names) if names is not None else None
    )
    parse = pcsv.ParseOptions(newlines_in_values=True)
    convert = pcsv.ConvertOptions(
        column_types=dict(types), include_columns=list(include), strings_can_be_null=False
    )
    return read, parse, convert


class CsvSource(Source):
    """A CSV file: one scan records the byte offset of every ``step``-th row; a block
    parses only the bytes from the offset before its first row to the one after its last."""

    kind = "csv"

    def __init__(self, path: str) -> None:
        import pyarrow.csv as pcsv

        self.path = path
        self.size, self.mtime_ns = _stat(path)
        self._scan_offsets()
        try:
            reader = pcsv.open_csv(
                path,
                read_options=pcsv.ReadOptions(block_size=self.block_size),
                parse_options=pcsv.ParseOptions(newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(strings_can_be_null=False),
            )
            schema = reader.schema
            reader.close()
        except Exception as e:
            raise SpaceError(f"Table: cannot parse {path!r} as CSV: {_one_line(e)}") from None
        names = list(schema.names)
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SpaceError(
                f"Table: duplicated column(s) {dup} in {path!r}; each parameter needs one column"
            )
        self.names = names
        self.types = {f.name: _csv_type(f.type) for f in schema}
        self.columns = {n: _column_from_arrow(n, t, repr(path)) for n, t in self.types.items()}

    def _scan_offsets(self) -> None:
        """Rows (non-empty lines after the header, quotes honoured), the byte offset of
        every step-th, and the longest line: one streaming pass over the bytes."""
        chunk_size = 8 << 20
        offsets: list[np.ndarray] = []
        count, quotes, pos, prev, longest = 0, 0, 0, 0, 0
        carry = False  # a line starts right after the previous chunk's last byte
        with open(self.path, "rb") as f:
            while buf := f.read(chunk_size):
                data = np.frombuffer(buf, dtype=np.uint8)
                nl = np.flatnonzero(data == 10)
                q = np.flatnonzero(data == 34)
                if q.size:  # a newline inside quotes is part of a value
                    nl = nl[((np.searchsorted(q, nl) + quotes) & 1) == 0]
                quotes = (quotes + q.size) & 1
                starts = nl + 1
                if carry:
                    starts = np.concatenate([[0], starts])
                carry = bool(starts.size) and int(starts[-1]) == data.size
                if carry:
                    starts = starts[:-1]
                if starts.size:
                    glob_starts = starts.astype(np.int64) + pos
                    longest = max(
                        longest, int(glob_starts[0]) - prev, int(np.diff(glob_starts).max(initial=0))
                    )
                    prev = int(glob_starts[-1])
                    real = glob_starts[~np.isin(data[starts], (10, 13))]  # empty lines do not count
                    if real.size:
                        idx = count + np.arange(real.size)
                        offsets.append(real[idx % CSV_STEP == 0])
                        count += int(real.size)
                pos += data.size
        longest = max(longest, self.size - prev)
        offs = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
        step = CSV_STEP
        while offs.size > MAX_OFFSETS:
            offs, step = offs[::2], step * 2
        self.offsets, self.step, self.rows = offs, step, count
        # a parse block must hold whole rows: more than twice the longest line
        self.block_size = int(max(1 << 20, min(1 << 30, 2 * longest + (1 << 16))))

    def batches(self, stop: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        read, parse, convert = _csv_options(None, self.types, list(self.columns), self.block_size)
        try:
            reader = pcsv.open_csv(self.path, read_options=read, parse_options=parse, convert_options=convert)
            yield from _rows_of(reader, stop, self.columns)
        except pa.ArrowInvalid as e:
            self._revise(e)
            raise _Retry() from None

    def _revise(self, error: Exception) -> None:
        """A value that does not fit its column's type: widen it (int → float → text)."""
        import pyarrow as pa

        text = str(error)
        m = re.search(r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to (\w+)", text)
        if m is None:
            raise SpaceError(f"Table: cannot parse {self.path!r} as CSV: {_one_line(text)}") from None
        name = self.names[int(m.group(1))]
        bad = re.search(r"invalid value '(.*)'", text)
        value = bad.group(1) if bad else ""
        old = self.types[name]
        new = pa.large_string()
        if pa.types.is_integer(old) and re.match(_NUMBER, value, re.IGNORECASE):
            new = pa.float64()
        if old == new:  # pragma: no cover - a string column does not fail to convert
            raise SpaceError(f"Table: cannot parse {self.path!r} as CSV: {_one_line(text)}")
        self.widen(name, new)

    def widen(self, name: str, typ: Any) -> None:
        self.types[name] = typ
        if name in self.columns:
            self.columns[name] = _column_from_arrow(name, typ, repr(self.path))

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        import pyarrow as pa
        import pyarrow.csv as pcsv

        self.check_unchanged()
        i0 = start // self.step
        i1 = -(-stop // self.step)
        lo = int(self.offsets[i0])
        hi = int(self.offsets[i1]) if i1 < self.offsets.size else self.size
        with open(self.path, "rb") as f:
            f.seek(lo)
            data = f.read(hi - lo)
        read, parse, convert = _csv_options(self.names, self.types, list(self.columns), self.block_size)
        read.use_threads = False
        table = pcsv.read_csv(
            pa.py_buffer(data), read_options=read, parse_options=parse, convert_options=convert
        )
        skip = start - i0 * self.step
        table = table.slice(skip, stop - start)
        n = stop - start
        if table.num_rows != n:
            raise SpaceError(
                f"Table: rows {start}-{stop - 1} of {self.path!r} are not where its scan found them; "
                "it changed since the table was read: make the Table again"
            )
        return {
            c: _kernel_values(_arrow_values(table.column(c), col)[0], col, n)
            for c, col in self.columns.items()
        }


# --------------------------------------------------------------------------- Zarr


def _zarr_dataset(path: str) -> Any:
    import warnings

    import xarray as xr

    with warnings.catch_warnings():
        # a store without consolidated metadata is fine for a table
        warnings.simplefilter("ignore", RuntimeWarning)
        return xr.open_zarr(path)


def _tree_stat(path: str) -> tuple[int, int]:
    size, mtime = 0, 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            size += int(st.st_size)
            mtime = max(mtime, int(st.st_mtime_ns))
    return size, mtime


class ZarrSource(Source):
    """A Zarr store opened lazily with xarray: a block reads its rows with ``isel``.

    The columns are its data variables and its coordinates along the sample dim
    (``sample`` if it has one, else the first dim of the first variable).
    """

    kind = "zarr"

    def __init__(self, path: str) -> None:
        self.path = path
        self.size, self.mtime_ns = _tree_stat(path)
        try:
            ds = _zarr_dataset(path)
        except Exception as e:
            raise SpaceError(f"Table: cannot open {path!r} as a Zarr store ({_one_line(e)})") from None
        if not ds.data_vars:
            raise SpaceError(f"Table: the Zarr store {path!r} has no data variables")
        first = next(iter(ds.data_vars.values()))
        if not first.dims:
            raise SpaceError(f"Table: the variables of {path!r} need a sample dim")
        self.sdim = str("sample" if "sample" in ds.dims else first.dims[0])
        self.rows = int(ds.sizes[self.sdim])
        names = [*ds.data_vars, *(c for c in ds.coords if c not in ds.dims and self.sdim in ds[c].dims)]
        self.columns = {}
        for name in names:
            var = ds[name]
            if self.sdim not in var.dims:
                raise SpaceError(
                    f"Table: variable {name!r} of {path!r} has dims {var.dims}, without the sample dim "
                    f"{self.sdim!r}"
                )
            var = var.transpose(self.sdim, ...)
            kind = var.dtype.kind
            if kind in "UTO":
                dtype: np.dtype = STRING
            elif kind in "biuf":
                dtype = var.dtype
            else:
                raise SpaceError(
                    f"Table: column {str(name)!r} of {path!r} has type {var.dtype}; a parameter column "
                    "holds numbers, booleans or text"
                )
            dims = tuple(str(d) for d in var.dims[1:])
            self.columns[str(name)] = Column(str(name), dtype, tuple(int(s) for s in var.shape[1:]), dims)
        chunks = first.chunks[first.dims.index(self.sdim)] if first.chunks else None
        self.chunk = int(chunks[0]) if chunks else 0

    def files(self) -> list[tuple[str, int, int]]:
        return [(self.path, self.size, self.mtime_ns)]

    def check_unchanged(self) -> None:  # a walk of every chunk file is too dear per block
        pass

    def _rows(self, ds: Any, start: int, stop: int) -> dict[str, np.ndarray]:
        part = ds[list(self.columns)].isel({self.sdim: slice(start, stop)})
        return {n: np.asarray(part[n].transpose(self.sdim, ...).values) for n in self.columns}

    def batches(self, stop: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        stop = self.rows if stop is None else min(stop, self.rows)
        step = self.batch_rows()
        if self.chunk:
            step = max(self.chunk, step // self.chunk * self.chunk)
        ds = _zarr_dataset(self.path)
        for lo in range(0, stop, step):
            hi = min(stop, lo + step)
            values = self._rows(ds, lo, hi)
            yield hi - lo, {n: _numpy_values(values[n], col) for n, col in self.columns.items()}

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        ds = _zarr_dataset(self.path)
        if int(ds.sizes[self.sdim]) != self.rows:
            raise SpaceError(
                f"Table: the Zarr store {self.path!r} changed since the table was read ({self.rows} "
                f"rows then, {int(ds.sizes[self.sdim])} now); make the Table again"
            )
        out = {}
        for n, v in self._rows(ds, start, stop).items():
            out[n] = (
                np.asarray(v, dtype=STRING) if self.columns[n].is_str else v.astype(self.columns[n].dtype)
            )
        return out


# --------------------------------------------------------------------------- many files


class MultiSource(Source):
    """Files of one kind read as one table, in path order (a folder or a glob)."""

    def __init__(self, path: str, sources: Sequence[Source]) -> None:
        self.path = path
        self.sources = list(sources)
        self.kind = self.sources[0].kind
        kinds = {s.kind for s in self.sources}
        if len(kinds) > 1:
            raise SpaceError(
                f"Table: {path!r} holds files of kinds {sorted(kinds)}; the files of one table "
                "must all be CSV, all Parquet or all Zarr"
            )
        self.starts = np.concatenate([[0], np.cumsum([s.rows for s in self.sources], dtype=np.int64)])
        self.rows = int(self.starts[-1])
        if self.kind == "csv":
            self._unify_csv()
        self.columns = dict(self.sources[0].columns)
        first = self.sources[0]
        for s in self.sources[1:]:
            if list(s.columns) != list(first.columns):
                raise SpaceError(
                    f"Table: {s.path!r} has columns {list(s.columns)} and {first.path!r} "
                    f"{list(first.columns)}; the files of a table need the same columns"
                )
            for n, col in s.columns.items():
                if col != first.columns[n]:
                    raise SpaceError(
                        f"Table: column {n!r} is {col.type_name} {list(col.core_shape)} in "
                        f"{s.path!r} and {first.columns[n].type_name} {list(first.columns[n].core_shape)} "
                        f"in {first.path!r}; the files of a table need the same column types"
                    )

    def _unify_csv(self) -> None:
        import pyarrow as pa

        rank = {pa.bool_(): 0, pa.int64(): 1, pa.float64(): 2, pa.large_string(): 3}
        wide: dict[str, Any] = {}
        for s in self.sources:
            for n, t in s.types.items():  # type: ignore[attr-defined]
                if n not in wide or rank.get(t, 3) > rank.get(wide[n], 3):
                    wide[n] = t
        if any(t == pa.bool_() for t in wide.values()):  # bool and numbers: text
            for n, t in wide.items():
                if t == pa.bool_() and any(s.types.get(n) != t for s in self.sources):  # type: ignore[attr-defined]
                    wide[n] = pa.large_string()
        for s in self.sources:
            for n, t in wide.items():
                if s.types.get(n) != t:  # type: ignore[attr-defined]
                    s.widen(n, t)  # type: ignore[attr-defined]

    @property
    def where(self) -> str:
        return f"{self.path!r} ({len(self.sources)} files)"

    def files(self) -> list[tuple[str, int, int]]:
        return [f for s in self.sources for f in s.files()]

    def select(self, names: Sequence[str]) -> None:
        super().select(names)
        for s in self.sources:
            s.select(names)

    def check_types(self) -> None:
        for s in self.sources:
            if isinstance(s, ParquetSource):
                s.check_types()

    def batches(self, stop: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
        stop = self.rows if stop is None else min(stop, self.rows)
        for s, start in zip(self.sources, self.starts[:-1].tolist(), strict=True):
            if start >= stop:
                break
            try:
                yield from s.batches(stop=stop - start)
            except _Retry:
                if isinstance(s, CsvSource):  # one file's column got wider: every file's does
                    for other in self.sources:
                        for n, t in s.types.items():
                            if other.types.get(n) != t:  # type: ignore[attr-defined]
                                other.widen(n, t)  # type: ignore[attr-defined]
                    self.columns = dict(s.columns)
                raise

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        parts: list[dict[str, np.ndarray]] = []
        for i, s in enumerate(self.sources):
            lo, hi = int(self.starts[i]), int(self.starts[i + 1])
            if hi <= start or lo >= stop:
                continue
            parts.append(s.read(max(start, lo) - lo, min(stop, hi) - lo))
        if len(parts) == 1:
            return parts[0]
        return {n: np.concatenate([p[n] for p in parts]) for n in self.columns}


# --------------------------------------------------------------------------- opening


def _is_zarr(p: Path) -> bool:
    return p.suffix.lower() == ".zarr" or (p / "zarr.json").exists() or (p / ".zgroup").exists()


def _one(path: Path) -> Source:
    suffix = path.suffix.lower()
    if path.is_dir():
        if _is_zarr(path):
            return ZarrSource(str(path))
        raise SpaceError(f"Table: {str(path)!r} is a folder, not a Zarr store")  # pragma: no cover
    if suffix in _CSV:
        return CsvSource(str(path))
    if suffix in _PARQUET:
        return ParquetSource(str(path))
    raise SpaceError(
        f"Table: cannot read {str(path)!r}; give a .csv, .parquet or .zarr path (or a folder or glob of them)"
    )


def _has_magic(text: str) -> bool:
    return glob.has_magic(text) if hasattr(glob, "has_magic") else bool(re.search(r"[*?[]", text))


def table_paths(data: str | os.PathLike[str]) -> tuple[str, list[Path]]:
    """The absolute path (or pattern) of a table given by path, and its files in order.

    A file or a Zarr store is one path; a folder gives its CSV, Parquet and Zarr
    entries, a glob pattern what it matches, both sorted by path.
    """
    text = os.fspath(data)
    path = Path(text).expanduser()
    absolute = os.path.abspath(path)
    if path.exists():
        if path.is_dir() and not _is_zarr(path):
            found = sorted(
                p
                for p in Path(absolute).iterdir()
                if not p.name.startswith(".")
                and (p.suffix.lower() in (*_CSV, *_PARQUET) or (p.is_dir() and _is_zarr(p)))
            )
            if not found:
                raise SpaceError(
                    f"Table: folder {absolute!r} holds no .csv, .parquet or .zarr file; give a "
                    "folder of table files, a glob such as 'data/*.parquet', or a file"
                )
            return absolute, found
        return absolute, [Path(absolute)]
    if _has_magic(text):
        matches = sorted(Path(m) for m in glob.glob(absolute, recursive="**" in text))
        found = [m for m in matches if m.is_file() or _is_zarr(m)]
        if not found:
            folder = _glob_folder(absolute)
            raise SpaceError(
                f"Table: {text!r} matches no file in {folder!r}; check the pattern and the folder"
            )
        return absolute, found
    raise SpaceError(f"Table: file {absolute!r} does not exist")


def _glob_folder(pattern: str) -> str:
    """The folder a glob pattern looks in: its leading part without wildcards."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _has_magic(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else os.getcwd()


def open_source(data: str | os.PathLike[str]) -> Source:
    """The :class:`Source` of a table file, a Zarr store, a folder or a glob of them."""
    path, files = table_paths(data)
    if len(files) == 1 and str(files[0]) == path:
        return _one(files[0])
    return MultiSource(path, [_one(f) for f in files])


@dataclass
class Opened:
    """A source with its scan: what :func:`opened` keeps per file state and columns."""

    source: Source
    result: ScanResult
    key: tuple[Any, ...] = field(default=())


_OPENED: dict[tuple[Any, ...], Opened] = {}


def opened(data: str | os.PathLike[str], columns: Sequence[str] | None) -> Opened:
    """Open, select and scan a table source, once per file state (size, mtime) and columns."""
    import copy

    source = open_source(data)
    if columns is not None:
        source.select(list(columns))
    check = getattr(source, "check_types", None)
    if check is not None:
        check()
    key = (source.kind, source.path, tuple(source.files()), tuple(source.columns))
    hit = _OPENED.get(key)
    if hit is not None:
        return replace(hit, source=copy.deepcopy(hit.source))
    result = scan(source)
    if len(_OPENED) > 32:
        _OPENED.pop(next(iter(_OPENED)))
    _OPENED[key] = Opened(copy.deepcopy(source), result, key)
    return Opened(source, result, key)


def read_whole(source: Source) -> dict[str, np.ndarray]:
    """Every row of ``source`` (a Product's table of configurations is read whole)."""
    return source.read(0, source.rows) if source.rows else {}
